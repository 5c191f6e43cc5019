"""The tracklets dataset layout and the label-free time-gap protocol (hareid.data.tracklets,
hareid.footage.protocol), checked against hand-computed cases and a naive reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hareid.data import build_dataset
from hareid.data.tracklets import parse_tracklets, split_tracklet
from hareid.errors import DataError
from hareid.footage.protocol import (
    _bootstrap,
    colour_histogram,
    cooccurrence_junk,
    evaluate_features,
    evaluate_footage,
    protocol_stats,
)


def write_tracklets(root: Path, spans: list[tuple[int, int]], fps: float = 10.0,
                    colours: list[tuple[int, int, int]] | None = None,
                    identities: list[int] | None = None) -> Path:
    """A tracklets folder by hand: tracklet k is seen in frames spans[k] (inclusive), one crop a frame."""
    rng = np.random.default_rng(0)
    tracklets = []
    for k, (a, b) in enumerate(spans):
        colour = colours[k] if colours else tuple(int(v) for v in rng.integers(0, 255, 3))
        crops = []
        for f in range(a, b + 1):
            rel = f"crops/cam/{k:04d}/cam_{k:04d}_{f:06d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 16), colour).save(root / rel)
            x = 10 + 3 * (f - a)
            crops.append({"file": rel, "frame": f, "time": f / fps, "box": [x, 20, x + 10, 50],
                          "crop_box": [x, 20, x + 10, 50]})
        tracklets.append({"id": f"cam-{k:04d}", "source": "cam", "index": k,
                          "identity": identities[k] if identities else None, "first_frame": a,
                          "last_frame": b, "duration": (b - a) / fps, "end_reason": "end", "crops": crops})
    meta = {"format": "hareid-tracklets", "version": 1, "sources": [{"name": "cam", "fps": fps}],
            "tracklets": tracklets}
    (root / "tracklets.json").write_text(json.dumps(meta))
    return root


def test_split_tracklet_keeps_the_gap() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        times = np.sort(rng.uniform(0, 10, rng.integers(2, 60))).tolist()
        gap, min_part, part = rng.uniform(0, 3), rng.uniform(0.1, 1), rng.uniform(1, 2)
        split = split_tracklet(times, gap, min_part, part)
        span = times[-1] - times[0]
        if span < gap + 2 * min_part:
            assert split is None
            continue
        q, g = split
        assert q and g and not set(q) & set(g)
        assert max(times[i] for i in q) + gap <= min(times[i] for i in g) + 1e-9
        assert max(times[i] for i in q) - times[0] <= part + 1e-9


def test_tracklets_dataset_splits(tmp_path: Path) -> None:
    # 3 tracklets: 0 and 1 long (5 s), seen together; 2 short (1 s), seen alone
    root = write_tracklets(tmp_path, [(0, 50), (10, 60), (70, 80)])
    ds = build_dataset("tracklets", root, verbose=False, gap=2.0, min_part=0.5, part=1.0, per_part=4)
    assert ds.num_train_pids == 3 and len(ds.train) == 51 + 51 + 11
    assert sorted({r.pid for r in ds.query}) == [1, 2]  # the short one cannot be queried
    assert len(ds.query) == 8 and len(ds.gallery) == 12
    meta = ds.extras["crop_meta"]
    for q in ds.query:  # the camera slot holds the part: 2k for queries, 2k + 1 for gallery crops
        assert q.camid == 2 * (q.pid - 1)
        for g in ds.gallery:
            if g.pid == q.pid:
                assert g.camid == q.camid + 1
                assert meta[g.path]["time"] - meta[q.path]["time"] >= 2.0 - 1e-9
    stats = protocol_stats(ds)
    assert stats["median_gap_s"] >= 3.0 and stats["median_displacement_box_heights"] > 0.5


def test_short_tracklets_give_a_clear_error(tmp_path: Path) -> None:
    root = write_tracklets(tmp_path, [(0, 20), (5, 25)])
    with pytest.raises(DataError, match=r"no tracklet spans the 3 s .*longest: 2\.0 s"):
        build_dataset("tracklets", root, verbose=False)
    assert parse_tracklets(root, gap=1.0).query


def test_given_identities_make_other_tracklets_positives(tmp_path: Path) -> None:
    root = write_tracklets(tmp_path, [(0, 50), (60, 110), (0, 50)], identities=[7, 7, 9])
    ds = parse_tracklets(root)
    assert ds.extras["labelled"]
    assert any(r.pid == 7 and r.camid == 0 for r in ds.query)
    positives = {g.camid for g in ds.gallery if g.pid == 7}
    assert positives == {1, 3}  # its own later part and the other tracklet of person 7


def _naive(distmat, q_pids, g_pids, q_cams, g_cams, allowed):
    """Reference: per query, rank only the allowed gallery entries with np.argsort."""
    r1, aps = [], []
    for i in range(len(distmat)):
        keep = allowed[i] & ~((g_pids == q_pids[i]) & (g_cams == q_cams[i]))
        order = np.argsort(distmat[i][keep], kind="stable")
        match = (g_pids[keep] == q_pids[i])[order]
        if not match.any():
            continue
        r1.append(float(match[0]))
        hits = np.flatnonzero(match)
        aps.append(np.mean((np.arange(len(hits)) + 1) / (hits + 1)))
    return np.mean(r1), np.mean(aps)


def test_cooccurring_variant_equals_removing_the_other_tracklets(tmp_path: Path) -> None:
    spans = [(0, 50), (10, 60), (40, 95), (70, 120), (100, 150), (5, 30)]
    root = write_tracklets(tmp_path, spans)
    ds = parse_tracklets(root)
    rng = np.random.default_rng(1)
    for trial in range(5):
        qf = rng.normal(size=(len(ds.query), 6)).astype(np.float32)
        gf = rng.normal(size=(len(ds.gallery), 6)).astype(np.float32)
        q_pids = np.array([r.pid for r in ds.query])
        g_pids = np.array([r.pid for r in ds.gallery])
        q_cams = np.array([r.camid for r in ds.query])
        g_cams = np.array([r.camid for r in ds.gallery])
        d = ((qf[:, None] - gf[None]) ** 2).sum(-1)
        for variant, allowed in (("all", np.ones(d.shape, bool)), ("cooccurring", ~cooccurrence_junk(ds))):
            res = evaluate_features(ds, qf, gf, variant=variant, bootstrap=0)
            r1, mAP = _naive(d, q_pids, g_pids, q_cams, g_cams, allowed)
            assert res.rank1 == pytest.approx(r1, abs=1e-6), (trial, variant)
            assert res.mAP == pytest.approx(mAP, abs=1e-6), (trial, variant)
    junk = cooccurrence_junk(ds)
    q_track = [ds.extras["crop_meta"][r.path]["tracklet"] for r in ds.query]
    g_track = [ds.extras["crop_meta"][r.path]["tracklet"] for r in ds.gallery]
    i = q_track.index("cam-0000")
    kept = {g_track[j] for j in np.flatnonzero(~junk[i])}
    assert kept == {"cam-0000", "cam-0001", "cam-0002", "cam-0005"}  # itself + seen together


def test_bootstrap_interval() -> None:
    v = np.array([1.0, 1.0, 0.0, 0.0])
    assert _bootstrap(np.ones(4), np.array([0, 0, 1, 1]), 200, 0) == (1.0, 1.0)
    lo, hi = _bootstrap(v, np.array([0, 0, 1, 1]), 500, 0)
    assert lo == 0.0 and hi == 1.0  # two groups: all-ones or all-zeros resamples happen


def test_colour_histogram_properties(tmp_path: Path) -> None:
    paths = []
    for name, colour in (("red", (200, 20, 20)), ("red2", (200, 20, 20)), ("blue", (20, 20, 200))):
        Image.new("RGB", (16, 32), colour).save(tmp_path / f"{name}.png")
        paths.append(tmp_path / f"{name}.png")
    f = colour_histogram(paths)
    assert f.shape == (3, 6 * 8 * 4 * 4)
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, rtol=1e-6)
    assert np.allclose(f[0], f[1]) and f[0] @ f[2] < 0.01
    # a mask restricts the histogram to the person: a red figure on blue equals plain red
    im = np.zeros((32, 16, 3), np.uint8)
    im[:] = (20, 20, 200)
    im[:, 4:12] = (200, 20, 20)
    mask = np.zeros((32, 16), np.uint8)
    mask[:, 4:12] = 255
    Image.fromarray(im).save(tmp_path / "fig.png")
    Image.fromarray(mask).save(tmp_path / "fig_mask.png")
    g = colour_histogram([tmp_path / "fig.png"], masks=[tmp_path / "fig_mask.png"])
    np.testing.assert_allclose(g[0], f[0], atol=1e-6)


def test_histogram_baseline_reidentifies_distinct_colours(tmp_path: Path) -> None:
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    root = write_tracklets(tmp_path, [(0, 50), (10, 60), (40, 95), (45, 100)], colours=colours)
    rows = evaluate_footage(root, {"hist": "hist"}, bootstrap=50, progress=False)
    assert [r.variant for r in rows] == ["all", "cooccurring"]
    assert all(r.rank1 == 1.0 and r.mAP == 1.0 for r in rows)
    assert rows[0].chance_rank1 == pytest.approx(4 / 16)


def test_paired_difference(tmp_path: Path) -> None:
    from hareid.footage.protocol import paired_difference

    root = write_tracklets(tmp_path, [(0, 50), (10, 60), (40, 95), (45, 100)])
    ds = parse_tracklets(root)
    rng = np.random.default_rng(0)
    qf = rng.normal(size=(len(ds.query), 4)).astype(np.float32)
    gf = rng.normal(size=(len(ds.gallery), 4)).astype(np.float32)
    a = evaluate_features(ds, qf, gf, "a", bootstrap=0)
    same = evaluate_features(ds, qf, gf, "b", bootstrap=0)
    assert paired_difference(a, same) == (0.0, 0.0, 0.0)  # identical models: no difference at all
    q_pids, g_pids = [r.pid for r in ds.query], [r.pid for r in ds.gallery]
    qp = np.stack([np.eye(4)[sorted(set(g_pids)).index(p)] for p in q_pids]).astype(np.float32)
    perfect = np.stack([np.eye(4)[sorted(set(g_pids)).index(p)] for p in g_pids]).astype(np.float32)
    b = evaluate_features(ds, qp, perfect, "b", bootstrap=0)
    d, lo, hi = paired_difference(a, b)
    assert b.mAP == 1.0 and d == pytest.approx(1.0 - a.mAP) and lo <= d <= hi
