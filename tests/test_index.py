"""GalleryIndex: exact search equals brute force; IVF is close; save/load round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("faiss")

from hareid.errors import HareidError
from hareid.index import GalleryIndex


def _data(n=500, q=20, d=32, seed=0):
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(n, d)).astype(np.float32)
    x = rng.normal(size=(q, d)).astype(np.float32)
    return g, x, [f"g/{i:04d}.jpg" for i in range(n)], rng.integers(0, 50, n), rng.integers(0, 6, n)


def _brute(g, x, k):
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = xn @ gn.T  # (Q, N)
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, top, 1), top


def test_exact_search_equals_brute_force_topk():
    g, x, paths, pids, cams = _data()
    index = GalleryIndex(dim=32)
    index.add(g[:300], paths[:300], pids[:300], cams[:300])  # two adds: metadata appended
    index.add(g[300:], paths[300:], pids[300:], cams[300:])
    assert len(index) == 500
    res = index.search(x, k=10)
    ref_s, ref_i = _brute(g, x, 10)
    for r, s, i in zip(res, ref_s, ref_i):
        np.testing.assert_allclose(r.scores, s, atol=1e-5)
        assert r.indices.tolist() == i.tolist()
        assert r.paths == [paths[j] for j in i]
        assert r.pids.tolist() == pids[i].tolist() and r.camids.tolist() == cams[i].tolist()


def test_ivf_recall_and_save_load_roundtrip(tmp_path):
    g, x, paths, pids, cams = _data(n=2000, q=30)
    index = GalleryIndex(dim=32, kind="ivf", nlist=16, nprobe=16)  # nprobe = nlist: exhaustive
    index.add(g, paths, pids, cams)
    _s, i = index.search_arrays(x, 5)
    _ref_s, ref_i = _brute(g, x, 5)
    assert (i == ref_i).mean() > 0.99
    index.nprobe = 4
    index.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta["kind"] == "ivf" and meta["ntotal"] == 2000 and meta["nprobe"] == 4
    loaded = GalleryIndex.load(tmp_path / "idx")
    assert loaded.kind == "ivf" and loaded.nprobe == 4 and len(loaded) == 2000
    s1, i1 = index.search_arrays(x, 5)
    s2, i2 = loaded.search_arrays(x, 5)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2)
    assert loaded.paths == paths and (loaded.pids == pids).all() and (loaded.camids == cams).all()
    with np.load(tmp_path / "idx" / "meta.npz", allow_pickle=False) as z:  # no pickle inside
        assert z["paths"].dtype.kind == "U"


def test_flat_save_load_and_errors(tmp_path):
    g, x, paths, pids, cams = _data(n=50, q=3, d=8)
    index = GalleryIndex(dim=8)
    index.add(g, paths, pids, cams)
    index.save(tmp_path)
    loaded = GalleryIndex.load(tmp_path)
    assert [r.paths for r in loaded.search(x, 3)] == [r.paths for r in index.search(x, 3)]
    assert len(index.search(x[:1], k=100)[0].paths) == 50  # k clipped to the gallery size
    with pytest.raises(ValueError, match="features must be"):
        index.search(np.zeros((1, 9), np.float32))
    with pytest.raises(ValueError):
        index.add(g, paths[:3])
    with pytest.raises(HareidError, match="missing"):
        GalleryIndex.load(tmp_path / "nothing")
