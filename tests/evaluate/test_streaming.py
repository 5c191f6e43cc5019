"""Streaming evaluation from features: identical to evaluate_rank on the full matrix, bounded blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hareid.evaluate.streaming as streaming
from hareid.evaluate import evaluate_features, evaluate_rank, pairwise_distance
from hareid.evaluate.distance import DistanceBlocks, block_rows
from hareid.evaluate.metrics import PROTOCOLS
from hareid.evaluate.streaming import score_features
from tests.helpers.peer_rank import load_peer_rank

peer = load_peer_rank()


def assert_same(a, b, msg=""):
    """Two RankResults with bit-identical numbers."""
    np.testing.assert_array_equal(a.cmc, b.cmc, err_msg=msg)
    np.testing.assert_array_equal(a.ap, b.ap, err_msg=msg)
    np.testing.assert_array_equal(a.inp, b.inp, err_msg=msg)
    np.testing.assert_array_equal(a.valid, b.valid, err_msg=msg)
    assert (a.mAP, a.mINP, a.num_valid, a.protocol) == (b.mAP, b.mINP, b.num_valid, b.protocol), msg


def tie_problem(seed, num_q=23, num_g=61, dim=6):
    """Small-integer features: every distance is an exact integer whatever the summation order, so
    ties are everywhere; plus duplicated gallery rows, queries copied into the gallery and pid -1
    (junk for the official protocol) entries."""
    rng = np.random.default_rng(seed)
    ids, cams = int(rng.integers(2, 7)), int(rng.integers(2, 4))
    qf = rng.integers(-2, 3, (num_q, dim)).astype(np.float32)
    gf = rng.integers(-2, 3, (num_g, dim)).astype(np.float32)
    q_pids, g_pids = rng.integers(0, ids, num_q), rng.integers(0, ids, num_g)
    q_cams, g_cams = rng.integers(0, cams, num_q), rng.integers(0, cams, num_g)
    gf[1:8] = gf[0]  # duplicates with mixed identities
    gf[10:15], g_pids[10:15] = qf[:5], q_pids[:5]  # exact copies of queries (distance 0)
    g_pids[20:23] = -1
    return qf, gf, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_stream_equals_full_matrix_with_ties_and_duplicates(protocol, metric):
    checked = 0
    for seed in range(8):
        qf, gf, *labels = tie_problem(seed)
        for chunk in (1, 7, 100):  # 7 does not divide 23 queries
            dist = pairwise_distance(qf, gf, metric, chunk_size=chunk)
            try:
                full = evaluate_rank(dist, *labels, max_rank=10, protocol=protocol, seed=seed)
            except ValueError:
                with pytest.raises(ValueError, match="no query"):
                    evaluate_features(qf, gf, *labels, metric, protocol, 10, seed=seed,
                                      stream=True, chunk_rows=chunk)
                continue
            streamed = evaluate_features(qf, gf, *labels, metric, protocol, 10, seed=seed,
                                         stream=True, chunk_rows=chunk, num_threads=2)
            assert_same(streamed, full, f"seed {seed} chunk {chunk}")
            checked += 1
    assert checked >= 18


def test_tie_problem_really_has_ties():
    qf, gf, *_ = tie_problem(0)
    dist = pairwise_distance(qf, gf)
    assert np.all(dist == np.round(dist))  # integer distances: exact
    assert (dist[:5, 10:15].diagonal() == 0).all()
    assert np.mean([len(np.unique(r)) for r in dist]) < dist.shape[1] / 2  # ties everywhere


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_stream_equals_full_on_real_valued_features(protocol):
    """Real-valued features, identity structure, duplicated images; default blocks and odd ones."""
    rng = np.random.default_rng(5)
    ids, dim = 30, 32
    centres = rng.normal(size=(ids, dim))
    q_pids, g_pids = rng.integers(0, ids, 97), rng.integers(0, ids, 700)
    qf = (centres[q_pids] + 0.9 * rng.normal(size=(97, dim))).astype(np.float32)
    gf = (centres[g_pids] + 0.9 * rng.normal(size=(700, dim))).astype(np.float32)
    gf[100:110] = gf[99]
    gf[200:205], g_pids[200:205] = qf[:5], q_pids[:5]
    g_pids[300:320] = -1
    q_cams, g_cams = rng.integers(0, 6, 97), rng.integers(0, 6, 700)
    labels = (q_pids, g_pids, q_cams, g_cams)
    for chunk in (None, 13):
        full = evaluate_rank(pairwise_distance(qf, gf, chunk_size=chunk), *labels,
                             protocol=protocol, seed=3)
        streamed = evaluate_features(torch.from_numpy(qf), gf, *labels, protocol=protocol,
                                     seed=3, stream=True, chunk_rows=chunk)
        assert_same(streamed, full, f"chunk {chunk}")
    # the automatic choice (full matrix here) gives the same numbers
    assert_same(evaluate_features(qf, gf, *labels, protocol=protocol, seed=3), streamed)


@pytest.mark.skipif(peer is None, reason="torchreid (peer) not installed")
def test_stream_equals_peer_with_ties():
    qf, gf, q_pids, g_pids, q_cams, g_cams = tie_problem(1, num_q=30, num_g=200)
    g_pids = np.where(g_pids == -1, 0, g_pids)
    cmc_p, map_p = peer.evaluate_rank(pairwise_distance(qf, gf), q_pids, g_pids, q_cams, g_cams,
                                      max_rank=20, use_cython=False)
    ours = evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, max_rank=20, stream=True,
                             chunk_rows=7)
    np.testing.assert_allclose(ours.cmc, cmc_p, atol=1e-6)
    assert abs(ours.mAP - map_p) < 1e-6


def test_blocks_are_the_rows_of_pairwise_distance():
    """Both paths compute each row inside the same GEMM block, so values agree bit for bit."""
    rng = np.random.default_rng(2)
    qf, gf = rng.normal(size=(50, 40)).astype(np.float32), rng.normal(size=(90, 40)).astype(np.float32)
    for metric in ("euclidean", "cosine"):
        blocks = DistanceBlocks(qf, gf, metric)
        for chunk in (None, 3, 16):
            full = pairwise_distance(qf, gf, metric, chunk_size=chunk)
            stacked = np.vstack([blocks(r0, r1).numpy() for r0, r1 in blocks.grid(chunk)])
            np.testing.assert_array_equal(stacked, full)
            out = torch.empty(64, 90)  # a reused buffer (what streaming does) changes nothing
            for r0, r1 in blocks.grid(chunk):
                np.testing.assert_array_equal(blocks(r0, r1, out=out[:r1 - r0]).numpy(), full[r0:r1])
        memmap_like = np.lib.stride_tricks.as_strided(np.empty(50 * 91, np.float32), (50, 90),
                                                      (91 * 4, 4))  # not contiguous: copied in
        np.testing.assert_array_equal(pairwise_distance(qf, gf, metric, out=memmap_like),
                                      pairwise_distance(qf, gf, metric))
    assert block_rows(82161) * 82161 * 4 <= 256 * 2**20 and block_rows(10**9) == 1


def test_chunk_rows_bound_every_block(monkeypatch):
    """Memory: no block larger than chunk_rows rows, every query row scored exactly once, and no
    full matrix built on the streaming path."""
    qf, gf, *labels = tie_problem(3, num_q=40, num_g=50)
    seen = []
    call = DistanceBlocks.__call__

    def spy(self, r0, r1, out=None):
        seen.append((r0, r1))
        return call(self, r0, r1, out)

    def no_matrix(*a, **k):
        raise AssertionError("the streaming path must not build the full matrix")

    monkeypatch.setattr(DistanceBlocks, "__call__", spy)
    monkeypatch.setattr(streaming, "pairwise_distance", no_matrix)
    monkeypatch.setattr(streaming, "STREAM_ABOVE_BYTES", 0)  # automatic choice: stream
    evaluate_features(qf, gf, *labels, chunk_rows=9)
    assert max(r1 - r0 for r0, r1 in seen) <= 9
    rows = np.concatenate([np.arange(r0, r1) for r0, r1 in seen])
    np.testing.assert_array_equal(np.sort(rows), np.arange(40))


def test_invalid_and_empty_inputs():
    qf, gf, q_pids, g_pids, q_cams, g_cams = tie_problem(4)
    # some queries without a match: same valid mask as the full path
    q_pids = q_pids.copy()
    q_pids[:3] = 99
    full = evaluate_rank(pairwise_distance(qf, gf), q_pids, g_pids, q_cams, g_cams)
    ours = evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, stream=True, chunk_rows=5)
    assert_same(ours, full)
    assert not ours.valid[:3].any() and ours.num_valid < len(q_pids)
    for stream in (True, False):
        with pytest.raises(ValueError, match="no query"):  # nothing matches
            evaluate_features(qf, gf, np.full(len(qf), 99), g_pids, q_cams, g_cams, stream=stream)
        with pytest.raises(ValueError, match="no query"):  # no queries
            evaluate_features(qf[:0], gf, q_pids[:0], g_pids, q_cams[:0], g_cams, stream=stream)
        with pytest.raises(ValueError, match="no query"):  # empty gallery
            evaluate_features(qf, gf[:0], q_pids, g_pids[:0], q_cams, g_cams[:0], stream=stream)
    with pytest.raises(ValueError, match="g_pids"):
        evaluate_features(qf, gf, q_pids, g_pids[:-1], q_cams, g_cams)
    with pytest.raises(ValueError, match="features"):
        evaluate_features(qf, gf[:, :3], q_pids, g_pids, q_cams, g_cams)
    with pytest.raises(ValueError, match="metric"):
        evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, metric="l1")
    with pytest.raises(ValueError, match="protocol"):
        evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, protocol="duke")
    # a gallery shorter than max_rank: clipped as evaluate_rank does
    one = evaluate_features(qf[:1], gf[10:12], q_pids[:1], np.array([q_pids[0], 7]), [0], [1, 1],
                            max_rank=50, stream=True)
    assert len(one.cmc) == 2 and one.cmc[-1] == 1.0


def test_ranked_lists_are_the_closest_entries():
    rng = np.random.default_rng(8)
    qf, gf = rng.normal(size=(31, 16)).astype(np.float32), rng.normal(size=(120, 16)).astype(np.float32)
    labels = (rng.integers(0, 5, 31), rng.integers(0, 5, 120), rng.integers(0, 3, 31),
              rng.integers(0, 3, 120))
    dist = pairwise_distance(qf, gf, chunk_size=8)  # the grid of the blocks below
    want = np.argsort(dist, axis=1, kind="stable")[:, :10]
    for stream in (True, False):
        res = score_features(qf, gf, *labels, top_k=10, stream=stream, chunk_rows=8)
        np.testing.assert_array_equal(res.ranked.indices, want)
        np.testing.assert_array_equal(res.ranked.distances, np.take_along_axis(dist, want, 1))
        assert (res.distmat is None) == stream
        row = res.ranked.row(4)
        assert row.shape == (120,) and np.isinf(row).sum() == 110
        np.testing.assert_array_equal(np.argsort(row, kind="stable")[:10], want[4])


def test_rerank_stream_equals_full_and_matrix_reranking():
    from hareid.evaluate.rerank import re_ranking

    rng = np.random.default_rng(9)
    ids, dim = 12, 16
    centres = rng.normal(size=(ids, dim))
    q_pids, g_pids = rng.integers(0, ids, 25), rng.integers(0, ids, 150)
    qf = (centres[q_pids] + 0.8 * rng.normal(size=(25, dim))).astype(np.float32)
    gf = (centres[g_pids] + 0.8 * rng.normal(size=(150, dim))).astype(np.float32)
    labels = (q_pids, g_pids, rng.integers(0, 4, 25), rng.integers(0, 4, 150))
    opts = {"k1": 8, "k2": 3, "lambda_value": 0.3}
    streamed = score_features(qf, gf, *labels, rerank=opts, stream=True, chunk_rows=6,
                              keep_distmat=True)
    full = score_features(qf, gf, *labels, rerank=opts, stream=False, chunk_rows=6)
    np.testing.assert_array_equal(streamed.distmat, full.distmat)  # same blocks, same values
    assert_same(streamed.rank, full.rank)
    mats = [pairwise_distance(a, b) for a, b in ((qf, gf), (qf, qf), (gf, gf))]
    classic = re_ranking(*mats, **opts)
    np.testing.assert_allclose(full.distmat, classic, atol=1e-5)
    ref = evaluate_rank(classic, *labels)
    np.testing.assert_allclose(full.rank.cmc, ref.cmc, atol=1e-6)
    assert abs(full.rank.mAP - ref.mAP) < 1e-6
    plain = evaluate_features(qf, gf, *labels)
    assert full.rank.mAP != plain.mAP  # re-ranking was applied


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_features_follow_the_device():
    qf, gf, *labels = tie_problem(6, num_q=40, num_g=300, dim=16)
    rng = np.random.default_rng(6)
    qf = qf + rng.normal(size=qf.shape).astype(np.float32) * 0.1
    q, g = torch.from_numpy(qf).cuda(), torch.from_numpy(gf).cuda()
    for protocol in PROTOCOLS:
        full = evaluate_rank(pairwise_distance(q, g), *labels, protocol=protocol)
        streamed = evaluate_features(q, g, *labels, protocol=protocol, stream=True)
        assert_same(streamed, full)
    assert DistanceBlocks(q, g)(0, 5).is_cuda
