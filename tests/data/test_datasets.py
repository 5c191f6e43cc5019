"""Dataset parsers on hand-built trees in each dataset's exact layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hareid.data import (
    ImageRecord,
    build_dataset,
    detect_dataset,
    parse_csv,
    parse_folder,
    parse_market1501,
    parse_msmt17,
)
from hareid.errors import DataError


def _img(path: Path, color: tuple[int, int, int] = (120, 30, 200), size=(8, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _market_tree(root: Path, cams: int = 6) -> Path:
    base = root / "Market-1501-v15.09.15"
    for name in ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s1_000101_01.jpg",
                 "0011_c6s2_000101_01.jpg", "0011_c1s1_000001_02.jpg"]:
        _img(base / "bounding_box_train" / name)
    (base / "bounding_box_train" / "Thumbs.db").write_bytes(b"junk")  # unknown file: ignored
    for name in ["0003_c1s1_000001_01.jpg", "0005_c2s1_000001_01.jpg"]:
        _img(base / "query" / name)
    for name in ["0003_c2s1_000001_01.jpg", "0003_c4s1_000002_01.jpg", "0005_c1s1_000003_01.jpg",
                 "0000_c3s1_000004_01.jpg", "0000_c5s1_000004_01.jpg",  # distractors: kept
                 "-1_c1s1_000005_01.jpg", "-1_c2s1_000006_01.jpg"]:  # junk: dropped
        _img(base / "bounding_box_test" / name)
    (base / "bounding_box_test" / "readme.txt").write_text("not an image")
    if cams > 6:
        _img(base / "query" / f"0005_c{cams}_f0001.jpg")
    return base


def test_market_counts_relabel_junk_distractors(tmp_path):
    _market_tree(tmp_path)
    ds = build_dataset("market1501", tmp_path, verbose=False)  # root = folder above the dataset
    assert ds.name == "market1501" and ds.root.name == "Market-1501-v15.09.15"
    assert sorted({r.pid for r in ds.train}) == [0, 1, 2] and ds.num_train_pids == 3
    by_name = {Path(r.path).name: r for r in ds.train}
    assert by_name["0002_c1s1_000451_03.jpg"] == ImageRecord(
        by_name["0002_c1s1_000451_03.jpg"].path, 0, 0, "train")
    assert by_name["0007_c3s1_000101_01.jpg"].pid == 1 and by_name["0011_c6s2_000101_01.jpg"].camid == 5
    assert ds.num_train_cams == 4 and len(ds.train) == 5
    assert [(r.pid, r.camid) for r in ds.query] == [(3, 0), (5, 1)]
    g = sorted((r.pid, r.camid) for r in ds.gallery)
    assert g == [(0, 2), (0, 4), (3, 1), (3, 3), (5, 0)]  # junk gone, distractors kept
    assert all(Path(r.path).is_absolute() and Path(r.path).is_file() for r in ds.gallery)
    assert ds.stats() == {"train": (3, 5, 4), "query": (2, 2, 2), "gallery": (3, 5, 5)}
    table = ds.summary()
    assert "train" in table and "gallery" in table and "# ids" in table


def test_market_extra_gallery_and_summary_printed(tmp_path, capsys):
    base = _market_tree(tmp_path)
    _img(base / "images" / "0000_c1s1_900001_01.jpg")
    ds = build_dataset("market", base, extra_gallery=True)
    assert len(ds.gallery) == 6
    assert "market1501" in capsys.readouterr().out


def test_market_errors_are_one_line_and_name_the_path(tmp_path):
    with pytest.raises(DataError) as e:
        parse_market1501(tmp_path / "nope")
    assert "nope" in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="bounding_box_train"):
        parse_market1501(tmp_path / "empty")
    base = _market_tree(tmp_path / "bad")
    _img(base / "query" / "holiday_photo.jpg")
    with pytest.raises(DataError) as e:
        parse_market1501(base)
    assert "holiday_photo.jpg" in str(e.value) and "0002_c1s1_000451_03.jpg" in str(e.value)
    assert "\n" not in str(e.value)


def test_duke_eight_cameras_and_market_rejects_them(tmp_path):
    base = _market_tree(tmp_path / "DukeMTMC-reID", cams=8)
    ds = build_dataset("dukemtmcreid", tmp_path, verbose=False)
    assert ds.name == "dukemtmcreid" and max(r.camid for r in ds.query) == 7
    with pytest.raises(DataError, match="c8"):
        parse_market1501(base)
    assert detect_dataset(tmp_path) == "dukemtmcreid"


@pytest.mark.parametrize("version", ["MSMT17_V1", "MSMT17_V2"])
def test_msmt17_v1_v2_train_val_merged(tmp_path, version):
    base = tmp_path / version
    train_dir, test_dir = {"MSMT17_V1": ("train", "test"),
                           "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}[version]
    lists = {
        "list_train.txt": (train_dir, [("0000/0000_000_01_0303morning_0015_0.jpg", 0),
                                       ("0000/0000_001_05_0303morning_0016_0.jpg", 0),
                                       ("0004/0004_000_15_0303noon_0100_1.jpg", 4)]),
        "list_val.txt": (train_dir, [("0002/0002_003_03_0303noon_0001_0.jpg", 2)]),
        "list_query.txt": (test_dir, [("0100/0100_000_02_0303morning_0001_0.jpg", 100)]),
        "list_gallery.txt": (test_dir, [("0100/0100_004_07_0303morning_0002_0.jpg", 100),
                                        ("0101/0101_000_09_0303afternoon_0003_0.jpg", 101)]),
    }
    for fname, (d, rows) in lists.items():
        for rel, _ in rows:
            _img(base / d / rel)
        (base / fname).write_text("".join(f"{rel} {pid}\n" for rel, pid in rows) + "\n")
    ds = build_dataset("msmt17", tmp_path, verbose=False)
    assert [(r.pid, r.camid) for r in ds.train] == [(0, 0), (0, 4), (2, 14), (1, 2)]
    assert [(r.pid, r.camid) for r in ds.query] == [(100, 1)]
    assert [(r.pid, r.camid) for r in ds.gallery] == [(100, 6), (101, 8)]
    assert len(parse_msmt17(tmp_path, combine_val=False).train) == 3
    assert detect_dataset(tmp_path) == "msmt17"
    (base / "list_query.txt").write_text("garbage-line\n")
    with pytest.raises(DataError, match=r"list_query.txt:1"):
        parse_msmt17(tmp_path)


def _folder_tree(root: Path) -> Path:
    for rel in ["train/alice/c1_0001.jpg", "train/alice/c2_0002.jpg", "train/bob/cam3_x.png",
                "train/-1/c1_junk.jpg",
                "query/7/c1_q.jpg", "query/9/c2_q.jpg",
                "gallery/7/c2_g.jpg", "gallery/9/c3_g.jpg", "gallery/0/c1_d.jpg"]:
        _img(root / rel)
    (root / "gallery" / "notes.txt").write_text("ignored")
    return root


def test_folder_layout(tmp_path):
    _folder_tree(tmp_path / "mine")
    assert detect_dataset(tmp_path / "mine") == "folder"
    ds = build_dataset("folder", tmp_path / "mine", verbose=False)
    assert sorted((r.pid, r.camid) for r in ds.train) == [(0, 0), (0, 1), (1, 2)]
    assert [(r.pid, r.camid) for r in ds.query] == [(7, 0), (9, 1)]
    assert sorted((r.pid, r.camid) for r in ds.gallery) == [(0, 0), (7, 1), (9, 2)]
    _img(tmp_path / "mine" / "query" / "7" / "nocamera.jpg")
    with pytest.raises(DataError, match=r"nocamera\.jpg"):
        parse_folder(tmp_path / "mine")
    with pytest.raises(DataError, match="query"):
        parse_folder(tmp_path / "mine" / "train")


def test_csv_manifest(tmp_path):
    for n in "abcde":
        _img(tmp_path / "imgs" / f"{n}.jpg")
    (tmp_path / "manifest.csv").write_text(
        "path,pid,camid,split\n"
        "imgs/a.jpg,15,1,train\nimgs/b.jpg,15,2,train\nimgs/c.jpg,3,2,train\n"
        f"{tmp_path / 'imgs/d.jpg'},42,1,query\nimgs/e.jpg,42,3,gallery\n")
    assert detect_dataset(tmp_path) == "csv" and detect_dataset(tmp_path / "manifest.csv") == "csv"
    ds = build_dataset("csv", tmp_path / "manifest.csv", verbose=False)
    assert [(r.pid, r.camid) for r in ds.train] == [(1, 0), (1, 1), (0, 1)]
    assert [(r.pid, r.camid, r.split) for r in ds.query + ds.gallery] == [
        (42, 0, "query"), (42, 2, "gallery")]
    (tmp_path / "bad.csv").write_text("path,pid,camid,split\nimgs/zzz.jpg,1,1,query\n")
    with pytest.raises(DataError, match=r"zzz\.jpg"):
        parse_csv(tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("file,id\nimgs/a.jpg,1\n")
    with pytest.raises(DataError, match="header"):
        parse_csv(tmp_path / "bad2.csv")


def test_unknown_name_suggests_and_verify_images(tmp_path):
    with pytest.raises(DataError, match="market1501"):
        build_dataset("market1502", tmp_path)
    base = _market_tree(tmp_path)
    (base / "query" / "0003_c1s1_000001_01.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    build_dataset("market1501", base, verbose=False)  # names are fine; images not opened
    with pytest.raises(DataError, match=r"0003_c1s1_000001_01\.jpg"):
        build_dataset("market1501", base, verbose=False, verify_images=True)
    assert detect_dataset(base) == "market1501" and detect_dataset(tmp_path / "nothing") is None


def _write_fake_cuhk03(root: Path) -> dict[str, list]:
    """A tiny cuhk-03.mat (MATLAB v7.3 as h5py writes it: arrays transposed, cells = references)
    with 2 camera pairs x 3 persons, plus the two new-protocol split files."""
    h5py = pytest.importorskip("h5py")
    sio = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(0)
    (root / "cuhk03_release").mkdir(parents=True)
    names: dict[str, list] = {"labeled": [], "detected": []}
    with h5py.File(root / "cuhk03_release" / "cuhk-03.mat", "w") as f:
        g = f.create_group("#refs#")
        for variant in ("labeled", "detected"):
            pair_refs = []
            for pair in range(2):
                grid = np.empty((10, 3), dtype=h5py.ref_dtype)  # MATLAB 3x10 cell, transposed
                for pid in range(3):
                    for n in range(10):
                        key = f"{variant}_{pair}_{pid}_{n}"
                        if n in (4, 9) or (pid == 2 and n == 3):  # empty cells
                            ds = g.create_dataset(key, data=np.zeros(2, dtype=np.uint64))
                        else:
                            h, w = 12 + n, 6 + pid
                            img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
                            ds = g.create_dataset(key, data=img.T)  # h5py sees (3, W, H)
                            names[variant].append(f"{pair + 1}_{pid + 1:03d}_{1 if n < 5 else 2}_{n + 1:02d}.png")
                        grid[n, pid] = ds.ref
                pair_refs.append(g.create_dataset(f"{variant}_pair{pair}", data=grid).ref)
            f.create_dataset(variant, data=np.array([pair_refs], dtype=h5py.ref_dtype))
    for variant in ("labeled", "detected"):
        files = names[variant]
        labels = [int(n.split("_")[0]) * 10 + int(n.split("_")[1]) for n in files]  # 11..23
        train = [i for i, lab in enumerate(labels) if lab in (11, 12, 21)]
        test = [i for i, lab in enumerate(labels) if lab not in (11, 12, 21)]
        query = [i for i in test if files[i].split("_")[3] in ("01.png", "06.png")]
        gallery = [i for i in test if i not in query]
        cell = np.empty((len(files), 1), dtype=object)
        for i, n in enumerate(files):
            cell[i, 0] = n
        sio.savemat(root / f"cuhk03_new_protocol_config_{variant}.mat", {
            "filelist": cell, "labels": np.array(labels, float)[:, None],
            "train_idx": np.array(train)[:, None] + 1, "query_idx": np.array(query)[:, None] + 1,
            "gallery_idx": np.array(gallery)[:, None] + 1})
    return names


@pytest.mark.parametrize("variant", ["labeled", "detected"])
def test_cuhk03_new_protocol_extracts_once(tmp_path, variant):
    names = _write_fake_cuhk03(tmp_path)
    assert detect_dataset(tmp_path) == "cuhk03"
    ds = build_dataset("cuhk03", tmp_path, variant=variant, verbose=False, progress=False)
    assert ds.name == f"cuhk03-{variant}"
    n_img = len(names[variant])
    assert n_img == 2 * 3 * 8 - 2  # 8 filled cells per person, minus two extra empty ones
    assert len(ds.train) + len(ds.query) + len(ds.gallery) == n_img
    assert sorted({r.pid for r in ds.train}) == [0, 1, 2]
    assert {r.pid for r in ds.query} == {13, 22, 23} and {r.camid for r in ds.query} == {0, 1}
    assert all(r.camid == (0 if int(Path(r.path).stem.split("_")[3]) <= 5 else 1) for r in ds.gallery)
    one = next(r for r in ds.train if Path(r.path).name == "1_002_1_03.png")
    with Image.open(one.path) as im:
        assert im.size == (7, 14)  # W x H restored from the transposed HDF5 array
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / f"images_{variant}").iterdir()}
    ds2 = build_dataset("cuhk03", tmp_path, labeled=(variant == "labeled"), verbose=False)
    assert ds2.train == ds.train
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / f"images_{variant}").iterdir()} == stamp


def test_cuhk03_missing_split_file(tmp_path):
    pytest.importorskip("scipy.io")
    (tmp_path / "cuhk03_release").mkdir()
    with pytest.raises(DataError, match=r"cuhk03_new_protocol_config_detected\.mat"):
        build_dataset("cuhk03", tmp_path, verbose=False)
