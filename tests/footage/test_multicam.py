"""Several cameras end to end on a tiny synthetic 2-camera sequence (hareid.data.synthetic_video):
ground truth, multi-source tracklets, index records of footage, cross-camera linking."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from hareid.cli import main  # noqa: E402
from hareid.data.synthetic_video import Walker, make_world, render_frame, write_synthetic_video  # noqa: E402
from hareid.errors import DataError, HareidError  # noqa: E402
from hareid.footage import ExtractConfig, extract_tracklets  # noqa: E402
from hareid.footage.link import link_folders, load_tracks  # noqa: E402
from hareid.footage.readers import parse_mot_file  # noqa: E402
from hareid.index.build import footage_records, gallery_records  # noqa: E402

H, W, N = 144, 256, 40
# person 1 crosses both views; 2 is seen only in cam0 (with 1), 3 only in cam1 (with 1)
WALKERS = [Walker(1, -0.4, -1.0, 1, 2.5, 0.8, 1.4), Walker(2, 0.0, 12.0, -1, 2.0, 0.2, 1.4),
           Walker(3, 3.0, 18.0, -1, 2.0, 0.5, 1.4)]
KW = {"seed": 0, "num_cams": 2, "frames": N, "height": H, "width": W, "walkers": WALKERS}


@pytest.fixture(scope="module")
def seq(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("mc") / "seq"
    return root, write_synthetic_video(root, progress=False, **KW)


@pytest.fixture(scope="module")
def tracklets(seq, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root, meta = seq
    out = tmp_path_factory.mktemp("mctrk") / "trk"
    cfg = ExtractConfig(cameras=[c["name"] for c in meta["cameras"]],
                        start_times=[c["start_time_iso"] for c in meta["cameras"]], min_frames=4)
    return out, extract_tracklets([root / c["sequence"] for c in meta["cameras"]], out, cfg, progress=False)


def test_ground_truth_boxes_are_what_was_drawn(seq) -> None:
    root, meta = seq
    world = make_world(num_people=3, fps=10.0, **KW)
    checked = 0
    for k, cam in enumerate(meta["cameras"]):
        gt = parse_mot_file(root / cam["gt"], "gt")
        assert len(list((root / cam["path"]).glob("*.jpg"))) == N
        assert cam["start_time"] == 1714550400.0 + 3 * k
        for f in range(0, N, 3):
            _, boxes = render_frame(world, k, f)
            empty, _ = render_frame(world, k, f, people=False)
            assert {b.track for b in gt.get(f, [])} == set(boxes)  # global ids, as written
            for pid, (box, _vis) in boxes.items():
                alone, _ = render_frame(world, k, f, people={pid})
                diff = np.abs(alone.astype(int) - empty.astype(int)).max(axis=2) > 25
                ys, xs = np.nonzero(diff)
                drawn = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
                assert np.abs(np.subtract(drawn, box)).max() <= 2, (k, f, pid, drawn, box)
                given = next(b.box for b in gt[f] if b.track == pid)
                assert given == tuple(float(v) for v in box)
                checked += 1
    seen = {k: set(c["people"]) for k, c in enumerate(meta["cameras"])}
    assert seen == {0: {1, 2}, 1: {1, 3}} and checked > 20


def test_synthetic_video_cli_and_bad_input(tmp_path: Path, capsys) -> None:
    assert main(["synthetic", str(tmp_path / "v"), "--video", "--num-cams", "2", "--people", "2",
                 "--frames", "6", "--height", "72", "--width", "128", "--format", "video", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "--camera cam0 --camera cam1 --start-time 2024-05-01T08:00:00+00:00" in out
    cap = cv2.VideoCapture(str(tmp_path / "v" / "cam1" / "cam1.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    cap.release()
    assert main(["synthetic", str(tmp_path / "v"), "--video", "--frames", "6", "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_multi_source_tracklets_keep_cameras_and_times(seq, tracklets) -> None:
    root, _ = seq
    _, meta = tracklets
    assert [(s["camera"], s["start_time"], s["start_time_from"]) for s in meta["sources"]] == [
        ("cam0", 1714550400.0, "--start-time"), ("cam1", 1714550403.0, "--start-time")]
    ids = {(t["camera"], t["identity"]) for t in meta["tracklets"]}
    assert ids == {("cam0", 1), ("cam0", 2), ("cam1", 1), ("cam1", 3)}  # gt boxes keep global ids
    for t in meta["tracklets"]:
        start = 1714550400.0 + 3 * (t["camera"] == "cam1")
        for c in t["crops"]:
            assert c["abs_time"] == pytest.approx(start + c["frame"] / 10)
            assert c["source_path"] == str(root / t["camera"] / "img1")
            assert c["tracklet"] == t["key"] == f"{t['camera']}/{t['index']:04d}"
    # the same person in both cameras at once (overlapping views), by absolute time
    one = [t for t in meta["tracklets"] if t["identity"] == 1]
    assert max(t["start_time"] for t in one) < min(t["end_time"] for t in one)


def test_tracklets_cli_says_where_each_start_time_came_from(seq, tmp_path: Path, capsys) -> None:
    root, _ = seq
    argv = ["tracklets", str(root / "cam0"), str(root / "cam1" / "img1"), "--camera", "east",
            "--camera", "west", "--start-time", "2024-05-01T10:00:00+02:00", "--start-time", "0",
            "--out", str(tmp_path / "t"), "--min-frames", "4", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"camera east: {root / 'cam0'}, starts 2024-05-01T08:00:00+00:00 (from --start-time)" in out
    assert "camera west:" in out and "starts 1970-01-01T00:00:00+00:00 (from --start-time)" in out
    assert main(argv[:5] + argv[7:]) == 2  # one --camera for two sources
    assert "1 --camera values for 2 footage sources" in capsys.readouterr().err


def test_index_records_of_a_tracklets_folder_are_footage(tracklets, tmp_path: Path) -> None:
    out, meta = tracklets
    recs = footage_records(out)
    assert recs == gallery_records(out)  # not the evaluation protocol's gallery split
    assert len(recs) == sum(len(t["crops"]) for t in meta["tracklets"])
    by_path = {r.path: r for r in recs}
    for t in meta["tracklets"]:
        for c in t["crops"]:
            r = by_path[str((out / c["file"]).resolve())]
            assert (r.camera, r.time, r.frame, r.tracklet, r.pid) == (t["camera"], c["abs_time"], c["frame"],
                                                                     t["key"], t["identity"])
            assert r.source == c["source_path"] and r.box == tuple(c["box"])


class _Colour:
    """A stand-in embedder: mean colour of the upper body (no checkpoint needed)."""

    dim, input_size = 8, (32, 16)

    def preprocess(self, path: str):
        import torch

        img = cv2.resize(cv2.imread(path), (16, 32)).astype(np.float32) / 255
        return torch.from_numpy(img).permute(2, 0, 1)

    def embed(self, x) -> np.ndarray:
        top = x[:, :, 8:18].mean(dim=(2, 3)).numpy()
        return np.concatenate([top, top[:, :2] * 0 + 0.1, top[:, :3] * 0 + 0.1], 1).astype(np.float32)


def test_index_a_tracklets_folder_every_crop_and_per_tracklet(tracklets, tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    from hareid.index import open_index
    from hareid.index.build import index_gallery

    out, meta = tracklets
    res = index_gallery(None, out, tmp_path / "idx", embedder=_Colour(), workers=0, progress=False)
    assert res["added"] == sum(len(t["crops"]) for t in meta["tracklets"])
    with open_index(tmp_path / "idx") as index:
        items = index.items()
        assert {it.camera for it in items} == {"cam0", "cam1"}
        assert min(it.time for it in items) >= 1714550400.0
        assert {it.source for it in items} == {s["frames_path"] for s in meta["sources"]}
        if hasattr(items[0], "tracklet"):  # the index schema with footage fields
            assert {it.tracklet for it in items} == {t["key"] for t in meta["tracklets"]}
    res = index_gallery(None, out, tmp_path / "per", embedder=_Colour(), workers=0, progress=False,
                        per_tracklet=True)
    assert res["added"] == res["total"] == len(meta["tracklets"])
    with open_index(tmp_path / "per") as index:
        items = index.items()
        assert len(items) == len(meta["tracklets"])
        emb = _Colour()
        t = next(t for t in meta["tracklets"] if t["key"] == "cam0/" + f"{meta['tracklets'][0]['index']:04d}")
        import torch

        f = emb.embed(torch.stack([emb.preprocess(str(out / c["file"])) for c in t["crops"]]))
        f /= np.linalg.norm(f, axis=1, keepdims=True)
        mean = f.mean(0) / np.linalg.norm(f.mean(0))
        row = next(i for i, it in enumerate(items) if Path(it.path).parent.name == f"{t['index']:04d}"
                   and it.camera == t["camera"])
        np.testing.assert_allclose(index.vectors([items[row].id])[0], mean, atol=1e-5)
    # linking from the crop vectors of the index gives the same identities as embedding again
    a = link_folders([out], tmp_path / "l1", index=tmp_path / "idx", threshold=0.02, progress=False)
    b = link_folders([out], tmp_path / "l2", embed=_colour_embed, threshold=0.02, progress=False)
    assert a["identities"] == b["identities"]
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "a.jpg"), np.zeros((32, 16, 3), np.uint8))
    with pytest.raises(DataError, match="--per-tracklet needs a tracklets folder"):
        index_gallery(None, tmp_path / "imgs", tmp_path / "x", embedder=_Colour(), per_tracklet=True,
                      progress=False)


def _colour_embed(paths: list[str]) -> np.ndarray:
    import torch

    e = _Colour()
    return e.embed(torch.stack([e.preprocess(p) for p in paths]))


def _truth_embed(meta: dict, out: Path, noise: float = 0.05):
    """Embeddings that know the person (one-hot of the gt identity, plus noise)."""
    who = {str(out / c["file"]): t["identity"] for t in meta["tracklets"] for c in t["crops"]}
    rng = np.random.default_rng(0)

    def embed(paths: list[str]) -> np.ndarray:
        x = np.eye(8, dtype=np.float32)[[who[p] for p in paths]]
        return x + noise * rng.standard_normal(x.shape).astype(np.float32)

    return embed


def test_link_writes_global_ids_per_camera(tracklets, tmp_path: Path) -> None:
    out, meta = tracklets
    doc = link_folders([out], tmp_path / "links", embed=_truth_embed(meta, out), threshold=0.5,
                       progress=False)
    key_id = {t["key"]: t["identity"] for t in meta["tracklets"]}
    groups = [{key_id[x["tracklet"]] for x in v} for v in doc["identities"].values()]
    assert sorted(map(sorted, groups)) == [[1], [2], [3]]  # person 1 joined across the cameras
    gid = {x["tracklet"]: int(k) for k, v in doc["identities"].items() for x in v}
    for cam in ("cam0", "cam1"):
        lines = (tmp_path / "links" / f"{cam}.txt").read_text().splitlines()
        crops = [(t, c) for t in meta["tracklets"] if t["camera"] == cam for c in t["crops"]]
        assert len(lines) == len(crops)
        fields = lines[0].split(",")
        assert len(fields) == 10 and fields[6:] == ["1", "-1", "-1", "-1"]
        rows = {(int(r.split(",")[0]), int(r.split(",")[1])) for r in lines}
        assert rows == {(c["frame"] + 1, gid[t["key"]]) for t, c in crops}
    saved = json.loads((tmp_path / "links" / "identities.json").read_text())
    assert saved["identities"] == doc["identities"]
    # the sheet to check links by eye: one row per identity seen by several cameras (person 1)
    from PIL import Image

    with Image.open(tmp_path / "links" / "identities.jpg") as im:
        multi = [v for v in doc["identities"].values() if len({x["camera"] for x in v}) > 1]
        assert len(multi) == 1 and im.height == 1 * (96 + 2 * 12 + 4) + 4  # caption: camera, time
        assert im.width == 90 + len(multi[0]) * (40 + 4) + 4


def test_link_never_joins_people_seen_together(tracklets, tmp_path: Path) -> None:
    """Identical embeddings for everyone: only the cannot-links keep people apart."""
    out, _ = tracklets
    doc = link_folders([out], tmp_path / "links", embed=lambda p: np.ones((len(p), 4), np.float32),
                       threshold=1.0, progress=False)
    tracks = {t.key: t for t in load_tracks([out])}
    for v in doc["identities"].values():
        ks = [x["tracklet"] for x in v]
        for i, a in enumerate(ks):
            for b in ks[i + 1:]:
                ta, tb = tracks[a], tracks[b]
                assert ta.camera != tb.camera or ta.end < tb.start or tb.end < ta.start


def test_link_bad_input(tracklets, tmp_path: Path, capsys) -> None:
    out, _ = tracklets
    with pytest.raises(HareidError, match="overlaps the input"):
        link_folders([out], out / "links", embed=_colour_embed, progress=False)
    with pytest.raises(DataError, match="no camera 'gate'"):
        link_folders([out], tmp_path / "l", embed=_colour_embed, travel=["gate:cam0:1:5"], progress=False)
    assert not (tmp_path / "l").exists()
    for argv, msg in ((["--index", str(tmp_path / "none")], "none: not a saved"),
                      (["--index", str(tmp_path), "--threshold", "far"], "--threshold 'far'"),
                      (["--index", str(tmp_path), "--travel", "cam0:cam1"], "CAM_A:CAM_B:MIN_S:MAX_S")):
        assert main(["link", str(out), "--out", str(tmp_path / "l"), "--quiet", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "l").exists()
    # camera names must be unique across folders
    with pytest.raises(DataError, match="camera 'cam0' is in both"):
        import shutil

        shutil.copytree(out, tmp_path / "copy")
        link_folders([out, tmp_path / "copy"], tmp_path / "l", embed=_colour_embed, progress=False)
