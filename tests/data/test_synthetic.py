"""The synthetic benchmark: layout the Market parser reads, annotations, determinism, caching,
versions (v1 and v2 share the writer; they differ in the renderer)."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hareid.cli import main
from hareid.data import build_dataset, detect_dataset, parse_market1501
from hareid.data.synthetic import (
    _plan,
    default_root,
    load_annotations,
    load_synthetic,
    renderer,
    save_sample_grid,
    synthetic_params,
    write_synthetic,
)
from hareid.errors import DataError

TINY = {"num_train_ids": 6, "num_test_ids": 6, "images_per_id": 4, "num_cams": 3,
        "height": 64, "width": 32, "num_distractors": 2, "num_junk": 2, "hard_negative_frac": 0.5,
        "workers": 0, "progress": False}


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != ".complete":
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("syn") / "s", seed=3, **TINY)


def test_market_parser_reads_it(tiny):
    assert detect_dataset(tiny) == "synthetic"
    ds = parse_market1501(tiny)
    assert ds.num_train_pids == 6 and sorted({r.pid for r in ds.train}) == list(range(6))
    test_pids = {r.pid for r in ds.query}
    assert test_pids <= set(range(7, 13))
    gallery_pids = {r.pid for r in ds.gallery}
    assert 0 in gallery_pids and -1 not in gallery_pids  # distractors kept, junk dropped
    assert len([p for p in (tiny / "bounding_box_test").iterdir() if p.name.startswith("-1_")]) == 2
    for r in ds.train + ds.query + ds.gallery:
        with Image.open(r.path) as im:
            assert im.size == (32, 64)
    # every query has a same-identity gallery image from another camera (Market protocol)
    g = defaultdict(set)
    for r in ds.gallery:
        g[r.pid].add(r.camid)
    assert all(g[q.pid] - {q.camid} for q in ds.query)
    qkeys = [(q.pid, q.camid) for q in ds.query]
    assert len(qkeys) == len(set(qkeys))  # one query per (identity, camera)
    built = build_dataset("synthetic", tiny, verbose=False)  # reuses the tree as it is
    assert built.name == "synthetic" and Path(built.extras["annotations"]).is_file()
    assert len(built.train) == len(ds.train)


def test_annotations_documented_format(tiny):
    ann = load_annotations(tiny)
    assert ann["image_size"] == [64, 32] and ann["format"] == "hareid-synthetic"
    files = sorted(p.relative_to(tiny).as_posix() for d in ("bounding_box_train", "bounding_box_test",
                   "query") for p in (tiny / d).iterdir())
    assert sorted(ann["images"]) == files
    for rel, a in ann["images"].items():
        mask = np.asarray(Image.open(tiny / a["mask"]))
        assert mask.shape == (64, 32) and set(np.unique(mask)) <= {0, 255}
        if a["pid"] > 0:
            assert {"head", "torso", "legs", "feet"} <= set(a["boxes"]) and 0 <= a["occlusion"] <= 1
            assert mask.sum() > 0
            name = Path(rel).name
            assert int(name[:4]) == a["pid"] and int(name.split("_c")[1][0]) - 1 == a["camid"]
        for x1, y1, x2, y2 in a["boxes"].values():
            assert 0 <= x1 < x2 <= 32 and 0 <= y1 < y2 <= 64
        if a["pid"] > 0 and "head" in a["boxes"]:  # head above feet
            assert a["boxes"]["head"][1] < a["boxes"]["feet"][1]
    idents = ann["identities"]
    pairs = [(int(p), v["hard_negative_of"], v["differs_in"]) for p, v in idents.items()
             if "hard_negative_of" in v]
    assert pairs, "hard-negative pairs expected with hard_negative_frac=0.5"
    keys = {"shoes": ["shoes"], "bag": ["bag", "bag_color"], "logo": ["logo", "logo_color"],
            "hat": ["hat"]}
    for p, q, detail in pairs:
        a, b = idents[str(p)], idents[str(q)]
        assert a["split"] == b["split"]
        diff = {k for k in a if k not in ("hard_negative_of", "split") and a[k] != b.get(k)}
        assert diff and diff <= set(keys[detail])
    assert len(ann["cameras"]) == 3


def test_deterministic_and_cached(tiny, tmp_path):
    a = write_synthetic(tmp_path / "a", seed=3, **TINY)
    assert _digest(a) == _digest(tiny)
    marker = (a / ".complete").stat().st_mtime_ns
    stamp = (a / "annotations.json").stat().st_mtime_ns
    write_synthetic(a, seed=3, **TINY)  # identical parameters: reused, nothing rewritten
    assert (a / "annotations.json").stat().st_mtime_ns == stamp
    assert (a / ".complete").stat().st_mtime_ns == marker
    b = write_synthetic(tmp_path / "b", seed=4, **TINY)
    assert _digest(b) != _digest(a)
    (a / ".complete").unlink()  # half-written tree: rebuilt
    write_synthetic(a, seed=3, **TINY)
    assert _digest(a) == _digest(tiny)
    par = write_synthetic(tmp_path / "par", seed=3, **{**TINY, "workers": 2})  # process pool
    assert _digest(par) == _digest(tiny)
    write_synthetic(a, seed=5, **TINY)  # other parameters: replaced
    assert json.loads((a / "synthetic.json").read_text())["seed"] == 5
    assert _digest(a) != _digest(tiny)


def test_refuses_foreign_folder_and_cli(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        write_synthetic(tmp_path / "mine", **TINY)
    rc = main(["synthetic", str(tmp_path / "c"), "--train-ids", "3", "--test-ids", "3",
               "--images-per-id", "4", "--num-cams", "2", "--height", "48", "--width", "24",
               "--workers", "0", "--quiet", "--version", "2", "--grid", str(tmp_path / "grid.png")])
    assert rc == 0 and "gallery" in capsys.readouterr().out
    assert json.loads((tmp_path / "c" / "synthetic.json").read_text())["generator_version"] == 2
    with Image.open(tmp_path / "grid.png") as im:
        assert im.width > 24 * 4


def test_sample_grid(tiny, tmp_path):
    out = save_sample_grid(tiny, tmp_path / "g.png", num_ids=4, per_id=3)
    with Image.open(out) as im:
        assert im.size == (3 * 34 + 2, 5 * 66 + 2)  # 4 identity rows + 1 mask row, 2 px padding


# ------------------------------------------------------------------------------------------- versions
@pytest.fixture(scope="module")
def tiny2(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("syn2") / "s", seed=3, version=2, **TINY)


def test_v2_layout_and_annotations(tiny2):
    ds = load_synthetic(tiny2, version=2)
    assert ds.num_train_pids == 6 and ds.query and ds.gallery
    ann = load_annotations(tiny2)
    assert ann["version"] == 2 and ann["image_size"] == [64, 32] and len(ann["cameras"]) == 3
    files = sorted(p.relative_to(tiny2).as_posix() for d in ("bounding_box_train", "bounding_box_test",
                   "query") for p in (tiny2 / d).iterdir())
    assert sorted(ann["images"]) == files
    views = set()
    for a in ann["images"].values():
        mask = np.asarray(Image.open(tiny2 / a["mask"]))
        assert mask.shape == (64, 32) and set(np.unique(mask)) <= {0, 255}
        for x1, y1, x2, y2 in a["boxes"].values():
            assert 0 <= x1 < x2 <= 32 and 0 <= y1 < y2 <= 64
        if a["pid"] > 0:
            views.add(a["view"])
            assert a["cut"] in ("none", "head", "feet") and 0 <= a["occlusion"] <= 1 and mask.sum() > 0
            if a["cut"] == "none":
                assert {"head", "torso", "legs", "feet"} <= set(a["boxes"])
                assert a["boxes"]["head"][1] < a["boxes"]["torso"][1] < a["boxes"]["feet"][1]
    assert len(views) >= 3  # front / back / side views all occur
    keys = renderer(2).DETAIL_KEYS
    pairs = [(v, ann["identities"][str(v["hard_negative_of"])]) for v in ann["identities"].values()
             if "hard_negative_of" in v]
    assert pairs
    for a, b in pairs:  # twins differ in the keys of their one detail, and nowhere else
        diff = {k for k in a if k not in ("hard_negative_of", "split") and a[k] != b.get(k)}
        assert diff and diff <= set(keys[a["differs_in"]])


def test_v2_deterministic_and_cache_keyed_by_version(tiny2, tiny, tmp_path):
    again = write_synthetic(tmp_path / "a", seed=3, version=2, **{**TINY, "workers": 2})  # process pool
    assert _digest(again) == _digest(tiny2)
    assert _digest(tiny2) != _digest(tiny)  # v1 and v2 are different sets
    stamp = (again / ".complete").stat().st_mtime_ns
    write_synthetic(again, seed=3, version=2, **TINY)  # same version and parameters: reused
    assert (again / ".complete").stat().st_mtime_ns == stamp
    write_synthetic(again, seed=3, version=1, **TINY)  # other version: replaced by it
    assert _digest(again) == _digest(tiny)
    assert default_root(1) != default_root(2) != default_root(2, seed=1)
    assert default_root(2, cache_dir=tmp_path) == tmp_path / "synthetic-v2"
    assert synthetic_params(1)["generator_version"] == 1 and synthetic_params(2)["generator_version"] == 2
    with pytest.raises(DataError, match="version 3"):
        write_synthetic(tmp_path / "x", version=3, **TINY)


def test_reading_checks_the_version(tiny):
    with pytest.raises(DataError, match="holds synthetic version 1, not the 2"):
        build_dataset("synthetic", tiny, version=2, verbose=False)
    assert build_dataset("synthetic", tiny, version=1, verbose=False).name == "synthetic"


def test_v2_mask_covers_exactly_what_was_drawn():
    """Rendering the same image with and without the person (same random draws): the pixels that
    change are the mask's; outside it (away from the edge that blur, motion blur and low resolution
    spread, and from thin occluders half covering the person) almost nothing changes."""
    from scipy.ndimage import binary_dilation

    v2 = renderer(2)
    params = synthetic_params(2, seed=5, num_train_ids=4, num_test_ids=4, images_per_id=6,
                              height=128, width=64)
    jobs, world = _plan(params, v2)
    checked = 0
    for job in jobs[:24]:
        ident = world.identities.get(job.pid)
        if ident is None:
            continue
        rgb, mask = v2.render(ident, job, world)[:2]
        empty = v2.render(ident, job, world, draw_target=False)[0]
        diff = np.abs(np.asarray(rgb, np.float32) - np.asarray(empty, np.float32)).sum(-1)  # (H, W)
        m = np.asarray(mask) > 0
        if m.sum() < 50:
            continue
        ring = binary_dilation(m, iterations=5)
        assert (diff[~ring] > 12).mean() < 0.005, "pixels changed visibly outside the mask"
        assert (diff[m] > 0).mean() > 0.95, "mask pixels where nothing was drawn"
        checked += 1
    assert checked >= 10


def test_reading_never_writes(tmp_path):
    """Only `write_synthetic` generates data: reading a missing or half-written set is an error
    that names the folder and the command that writes it, and leaves the folder as it was."""
    from hareid.data import build_dataset

    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="hareid synthetic"):
        build_dataset("synthetic", missing, verbose=False)
    assert not missing.exists()
    half = tmp_path / "half"
    write_synthetic(half, **TINY)
    (half / ".complete").unlink()  # as if the writer had been killed
    before = sorted(p.name for p in half.rglob("*"))
    with pytest.raises(DataError, match="no complete synthetic set"):
        build_dataset("synthetic", half, verbose=False)
    assert sorted(p.name for p in half.rglob("*")) == before
