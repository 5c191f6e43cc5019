"""`hareid tracklets`: readers, detection, tracking and the written folder, on a synthetic video
whose figures' boxes are known (tests/helpers/footage.py)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from hareid.cli import main  # noqa: E402
from hareid.data import build_dataset, detect_dataset  # noqa: E402
from hareid.errors import DataError, HareidError  # noqa: E402
from hareid.footage import ExtractConfig, extract_tracklets, open_footage  # noqa: E402
from hareid.footage.masks import crop_mask_pairs, mask_stats, person_mask, read_mask  # noqa: E402
from hareid.footage.readers import parse_mot_file  # noqa: E402
from hareid.footage.track import box_iou  # noqa: E402
from tests.helpers.footage import FIGURES, background, dominant, make_frames, make_mot, make_video  # noqa: E402


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("video") / "street.avi"
    return path, make_video(path)


@pytest.fixture(scope="module")
def extracted(video, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    path, truth = video
    out = tmp_path_factory.mktemp("trk") / "tracklets"
    meta = extract_tracklets([path], out, progress=False)
    return out, meta, truth


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_video_reader_gives_every_frame_with_times(video) -> None:
    path, _ = video
    src = open_footage(path)
    assert (src.num_frames, src.fps, src.name) == (100, 10.0, "street")
    frames = list(src.frames(start=10, stop=20, step=3))
    assert [f.index for f in frames] == [10, 13, 16, 19]
    assert frames[1].time == pytest.approx(1.3)
    assert frames[0].image.shape == (240, 320, 3) and frames[0].image.dtype == np.uint8


def test_frame_folder_is_read_in_natural_order(tmp_path: Path) -> None:
    for i in (1, 2, 10):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), np.full((8, 8, 3), i, np.uint8))
    src = open_footage(tmp_path, fps=5)
    assert [int(f.image[0, 0, 0]) for f in src.frames()] == [1, 2, 10]
    assert [f.time for f in src.frames()] == [0.0, 0.2, 0.4]


def test_tracklets_follow_the_figures(extracted) -> None:
    """Every kept tracklet holds one figure (its crops' coat colour), its boxes overlap that
    figure's true box, and every figure is found for most of the frames it is visible."""
    out, meta, truth = extracted
    assert meta["format"] == "hareid-tracklets"
    covered: dict[str, int] = {f.name: 0 for f in FIGURES}
    for t in meta["tracklets"]:
        names = {dominant(cv2.imread(str(out / c["file"]))) for c in t["crops"]}
        assert len(names) == 1, f"{t['id']} holds {names}"
        (name,) = names
        for c in t["crops"]:
            true = np.array(truth[c["frame"]][name], np.float64)
            assert box_iou(np.array(c["box"])[None], true[None])[0, 0] > 0.6
            assert c["time"] == pytest.approx(c["frame"] / 10)
        covered[name] += len(t["crops"])
    for f in FIGURES:
        assert covered[f.name] >= 0.6 * (f.last - f.first + 1), f"figure {f.name} mostly missed"


def test_folder_layout_json_and_pictures(extracted) -> None:
    out, meta, _ = extracted
    t = meta["tracklets"][0]
    c = t["crops"][0]
    assert c["file"] == f"crops/street/{t['index']:04d}/street_{t['index']:04d}_{c['frame']:06d}.jpg"
    x1, y1, x2, y2 = c["crop_box"]
    assert cv2.imread(str(out / c["file"])).shape[:2] == (y2 - y1, x2 - x1)
    assert json.loads((out / "tracklets.json").read_text()) == meta
    sheet = cv2.imread(str(out / "contact_sheet.jpg"))
    assert sheet.shape[0] == 4 + len(meta["tracklets"]) * (96 + 4)  # one row per tracklet
    summary = (out / "summary.txt").read_text()
    assert all(t["id"] in summary for t in meta["tracklets"])
    leftovers = [p for p in out.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [], "temporary folders left behind"
    written = {p.relative_to(out).as_posix() for p in out.rglob("*.jpg")} - {"contact_sheet.jpg"}
    listed = {c["file"] for t in meta["tracklets"] for c in t["crops"]}
    assert written == listed, "crops on disk and in tracklets.json differ"


def test_masks_cover_the_figure_not_the_background(extracted) -> None:
    out, meta, truth = extracted
    pairs = crop_mask_pairs(out)
    assert len(pairs) == sum(len(t["crops"]) for t in meta["tracklets"])
    for t in meta["tracklets"][:3]:
        for c in t["crops"][::5]:
            mask = read_mask(out / c["mask"])
            x1, y1 = c["crop_box"][:2]
            name = dominant(cv2.imread(str(out / c["file"])))
            bx1, by1, bx2, by2 = truth[c["frame"]][name]
            inside = np.zeros_like(mask)
            inside[max(0, by1 - y1):by2 - y1, max(0, bx1 - x1):bx2 - x1] = True
            assert (mask & inside).sum() / max(mask.sum(), 1) > 0.85  # precision on the figure
            assert (mask & inside).sum() / inside.sum() > 0.6  # most of the figure
    assert 0.3 < mask_stats(out)["median"] < 0.95


def test_person_mask_keeps_only_the_persons_blob() -> None:
    fg = np.zeros((50, 50), np.uint8)
    fg[10:40, 10:20] = 255  # the person
    fg[10:40, 40:48] = 255  # a neighbour, partly in the crop
    m = person_mask(fg, (5, 5, 45, 45), np.array([10, 10, 20, 40]))
    assert m.shape == (40, 40)
    assert m[5:35, 5:15].all() and not m[:, 35:].any()


def test_tracklets_folder_is_a_dataset(extracted, capsys) -> None:
    out, meta, _ = extracted
    assert detect_dataset(out) == "tracklets"
    ds = build_dataset("tracklets", out, verbose=False)
    assert ds.num_train_pids == len(meta["tracklets"])
    assert len(ds.train) == sum(len(t["crops"]) for t in meta["tracklets"])
    assert ds.query and ds.gallery
    assert main(["datasets", str(out)]) == 0
    assert "tracklets" in capsys.readouterr().out


def test_footage_is_never_modified(video, tmp_path: Path) -> None:
    path, _ = video
    before, mtime = _sha(path), path.stat().st_mtime_ns
    extract_tracklets([path], tmp_path / "t", progress=False)
    assert _sha(path) == before and path.stat().st_mtime_ns == mtime


def test_mot_ground_truth_boxes_are_used_as_given(tmp_path: Path) -> None:
    seq = tmp_path / "MOT-syn"
    truth = make_mot(seq, n=60, kind="gt")
    meta = extract_tracklets([seq], tmp_path / "out", progress=False)
    src = meta["sources"][0]
    assert src["boxes"] == "gt" and src["fps"] == 10.0
    assert {t["identity"] for t in meta["tracklets"]} == {1, 2}  # A and B (C, D start after frame 54)
    for t in meta["tracklets"]:
        name = FIGURES[t["identity"] - 1].name
        for c in t["crops"]:
            assert c["box"] == [float(v) for v in truth[c["frame"]][name]]


def test_mot_detections_are_associated(tmp_path: Path) -> None:
    seq = tmp_path / "MOT-det"
    make_mot(seq, n=60, kind="det")
    meta = extract_tracklets([seq], tmp_path / "out", progress=False)
    assert meta["sources"][0]["boxes"] == "det"
    for t in meta["tracklets"]:
        assert len({dominant(cv2.imread(str(tmp_path / "out" / c["file"]))) for c in t["crops"]}) == 1
    assert len(meta["tracklets"]) >= 2


# ------------------------------------------------------------------------------------- bad input
def test_unreadable_video_names_the_file_and_the_fix(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    with pytest.raises(DataError, match=r"broken\.mp4: cannot decode.*hareid\[video\]"):
        open_footage(bad)
    assert main(["tracklets", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.mp4" in err[0]
    assert not (tmp_path / "o").exists()


def test_malformed_mot_line_is_named(tmp_path: Path) -> None:
    f = tmp_path / "det.txt"
    f.write_text("1,-1,10,10,20,50,0.9\n2,-1,10,ten,20,50,0.9\n")
    with pytest.raises(DataError, match=r"det\.txt:2: malformed line"):
        parse_mot_file(f, "det")
    f.write_text("1,-1,10,10,0,50,0.9\n")
    with pytest.raises(DataError, match=r"det\.txt:1:"):
        parse_mot_file(f, "det")


def test_footage_without_people_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "empty.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (320, 240))
    bg = background()
    for _ in range(30):
        writer.write(bg)
    writer.release()
    with pytest.raises(DataError, match=r"no person found.*nothing written"):
        extract_tracklets([path], tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.avi"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_output_folder(video, tmp_path: Path) -> None:
    path, _ = video
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(HareidError, match="not writable"):
            extract_tracklets([path], ro / "out", progress=False)
    finally:
        ro.chmod(stat.S_IRWXU)


def test_read_only_output_is_refused_before_any_work(video, tmp_path: Path, monkeypatch) -> None:
    """The writability check runs first (also where root bypasses permissions, simulated here)."""
    path, _ = video
    monkeypatch.setattr(os, "access", lambda p, mode: False)
    with pytest.raises(HareidError, match=r"not writable \(read-only\)"):
        extract_tracklets([path], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(extracted, video) -> None:
    out, _, _ = extracted
    with pytest.raises(HareidError, match="--overwrite"):
        extract_tracklets([video[0]], out, progress=False)


def test_frames_folder_and_range(tmp_path: Path) -> None:
    make_frames(tmp_path / "frames", n=100)
    meta = extract_tracklets([tmp_path / "frames"], tmp_path / "out", ExtractConfig(fps=10, start=50),
                             progress=False)
    assert meta["sources"][0]["start"] == 50
    assert all(c["frame"] >= 50 for t in meta["tracklets"] for c in t["crops"])
    assert {dominant(cv2.imread(str(tmp_path / "out" / t["crops"][0]["file"]))) for t in meta["tracklets"]} == {"C", "D"}


def test_missing_opencv_names_the_extra(monkeypatch, tmp_path: Path) -> None:
    import sys

    from hareid.footage.readers import import_cv2

    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` now raises ImportError
    with pytest.raises(DataError, match=r"pip install 'hareid\[video\]'"):
        import_cv2()


def test_hog_detector_or_a_clear_error() -> None:
    from hareid.footage.detect import build_detector

    if not hasattr(cv2, "HOGDescriptor"):  # OpenCV 5 moved HOG out of the main package
        with pytest.raises(DataError, match="opencv-python-headless<5"):
            build_detector("hog")
        return
    boxes, fg = build_detector("hog")(background())
    assert boxes.shape[1] == 4 and fg is None


def test_several_sources_are_cameras(video, tmp_path: Path) -> None:
    """Two files with one name clash (one clear line, nothing written); --camera names them."""
    path, _ = video
    for d in ("cam1", "cam2"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "street.avi").write_bytes(path.read_bytes())
    two = [tmp_path / "cam1" / "street.avi", tmp_path / "cam2" / "street.avi"]
    with pytest.raises(DataError, match=r"camera name 'street' given to both .*--camera NAME"):
        extract_tracklets(two, tmp_path / "out", ExtractConfig(stop=50), progress=False)
    assert not (tmp_path / "out").exists()
    cfg = ExtractConfig(stop=50, cameras=["east", "west"], start_times=["2024-05-01T08:00:00Z", "1714550460"])
    meta = extract_tracklets(two, tmp_path / "out", cfg, progress=False)
    assert [(s["name"], s["start_time"], s["start_time_from"]) for s in meta["sources"]] == [
        ("east", 1714550400.0, "--start-time"), ("west", 1714550460.0, "--start-time")]
    assert {t["camera"] for t in meta["tracklets"]} == {"east", "west"}
    for t in meta["tracklets"]:
        start = 1714550400.0 if t["camera"] == "east" else 1714550460.0
        assert t["key"] == f"{t['camera']}/{t['index']:04d}"
        for c in t["crops"]:
            assert (c["camera"], c["tracklet"], c["source_path"]) == (t["camera"], t["key"], str(two[t["camera"] == "west"]))
            assert c["abs_time"] == pytest.approx(start + c["frame"] / 10)
    ds = build_dataset("tracklets", tmp_path / "out", verbose=False, gap=1.0)
    assert ds.num_train_cams == 2


def test_camera_and_start_time_errors(video, tmp_path: Path, capsys) -> None:
    path, _ = video
    for argv, msg in (
        (["--camera", "a", "--camera", "b"], "2 --camera values for 1 footage sources"),
        (["--camera", "a/b"], "--camera 'a/b': a camera name is"),
        (["--start-time", "yesterday"], "--start-time 'yesterday': not a time; give ISO 8601"),
    ):
        assert main(["tracklets", str(path), "--out", str(tmp_path / "o"), "--quiet", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "o").exists()


def test_start_time_from_an_mp4_creation_time(tmp_path: Path) -> None:
    from hareid.footage.readers import container_creation_time, parse_start_time

    def box(kind: bytes, payload: bytes) -> bytes:
        return (8 + len(payload)).to_bytes(4, "big") + kind + payload

    t = 1714550400  # 2024-05-01T08:00:00Z
    mvhd = box(b"mvhd", bytes(4) + (t + 2082844800).to_bytes(4, "big") + bytes(92))
    f = tmp_path / "clip.mp4"
    f.write_bytes(box(b"ftyp", b"isom" + bytes(4)) + box(b"free", bytes(5)) + box(b"moov", mvhd))
    assert container_creation_time(f) == t
    mvhd1 = box(b"mvhd", b"\x01" + bytes(3) + (t + 2082844800).to_bytes(8, "big") + bytes(100))
    f.write_bytes(box(b"moov", mvhd1))
    assert container_creation_time(f) == t
    f.write_bytes(box(b"moov", box(b"mvhd", bytes(100))))  # zero: not set
    assert container_creation_time(f) is None
    f.write_bytes(b"\x00\x00")
    assert container_creation_time(f) is None
    assert parse_start_time("2024-05-01T10:00:00+02:00") == t == parse_start_time("2024-05-01 08:00:00")


def test_not_a_video(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    with pytest.raises(DataError, match=r"notes\.txt: not a video file"):
        open_footage(f)
    with pytest.raises(DataError, match="no such file"):
        open_footage(tmp_path / "missing.mp4")
