"""Ranking metrics: equal to torchreid's evaluation where it is right, correct where it is not."""

from __future__ import annotations

import numpy as np
import pytest

from hareid.evaluate.metrics import _counts_in_rows, evaluate_rank
from tests.helpers.peer_rank import load_peer_cython, load_peer_rank

peer = load_peer_rank()
needs_peer = pytest.mark.skipif(peer is None, reason="torchreid (peer) not installed")


def plain_reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, official=False):
    """Per-query loop straight from the protocol definitions (stable tie order)."""
    cmcs, aps, inps = [], [], []
    for q in range(distmat.shape[0]):
        order = np.argsort(distmat[q], kind="stable")
        junk = (g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q])
        if official:
            junk |= g_pids[order] == -1
        hits = (g_pids[order] == q_pids[q])[~junk]
        if not hits.any():
            continue
        ranks = np.flatnonzero(hits) + 1
        k = np.arange(1, len(ranks) + 1)
        if official:
            prev = np.where(ranks > 1, (k - 1) / np.maximum(ranks - 1, 1), 1.0)
            aps.append(np.mean((prev + k / ranks) / 2))
        else:
            aps.append(np.mean(k / ranks))
        inps.append(len(ranks) / ranks[-1])
        cmcs.append((np.arange(1, max_rank + 1) >= ranks[0]).astype(float))
    return np.mean(cmcs, 0), np.mean(aps), np.mean(inps), np.array(aps)


def random_problem(rng, num_q=None, num_g=None, ties=True):
    num_q = num_q or int(rng.integers(1, 25))
    num_g = num_g or int(rng.integers(2, 60))
    ids, cams = int(rng.integers(1, 8)), int(rng.integers(1, 4))
    if ties:  # few distinct values: many ties between matches and non-matches
        distmat = rng.integers(0, int(rng.integers(1, 6)), (num_q, num_g)).astype(np.float32)
    else:
        distmat = rng.random((num_q, num_g), dtype=np.float32)
    return (distmat, rng.integers(0, ids, num_q), rng.integers(0, ids, num_g),
            rng.integers(0, cams, num_q), rng.integers(0, cams, num_g))


def min_kept_len(distmat, q_pids, g_pids, q_camids, g_camids):
    """Shortest junk-free gallery list among queries that have a match (peer needs >= max_rank)."""
    lens = []
    for q in range(len(q_pids)):
        keep = ~((g_pids == q_pids[q]) & (g_camids == q_camids[q]))
        if (g_pids[keep] == q_pids[q]).any():
            lens.append(int(keep.sum()))
    return min(lens) if lens else 0


@needs_peer
def test_equals_peer_python_on_random_inputs_with_ties():
    checked = 0
    for seed in range(300):
        rng = np.random.default_rng(seed)
        prob = random_problem(rng, ties=seed % 3 != 0)
        shortest = min_kept_len(*prob)
        if shortest == 0:
            with pytest.raises(ValueError, match="no query"):
                evaluate_rank(*prob)
            continue
        max_rank = int(rng.integers(1, shortest + 1))
        cmc_p, map_p = peer.evaluate_rank(*prob, max_rank=max_rank, use_cython=False)
        ours = evaluate_rank(*prob, max_rank=max_rank, chunk_rows=int(rng.integers(1, 5)))
        np.testing.assert_allclose(ours.cmc, cmc_p, atol=1e-6, err_msg=f"seed {seed}")
        assert abs(ours.mAP - map_p) < 1e-6, seed
        checked += 1
    assert checked > 200


@needs_peer
def test_equals_peer_python_medium_float_and_float64():
    rng = np.random.default_rng(1)
    num_q, num_g = 150, 2500
    q_pids, g_pids = rng.integers(0, 100, num_q), rng.integers(0, 100, num_g)
    q_cams, g_cams = rng.integers(0, 6, num_q), rng.integers(0, 6, num_g)
    for distmat in (np.round(rng.random((num_q, num_g)), 3).astype(np.float32),
                    rng.random((num_q, num_g))):
        cmc_p, map_p = peer.evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams,
                                          use_cython=False)
        for chunk_rows, threads in ((None, None), (7, 1), (64, 3)):
            ours = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, chunk_rows=chunk_rows,
                                 num_threads=threads)
            np.testing.assert_allclose(ours.cmc, cmc_p, atol=1e-6)
            assert abs(ours.mAP - map_p) < 1e-6


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_row_placement_both_paths(dtype):
    """Counting entries below each match: gathered-keys path and full-sort path agree with brute
    force, with ties, negative values and -0.0."""
    rng = np.random.default_rng(7)
    block = rng.integers(-3, 4, (9, 40)).astype(dtype)
    if dtype != np.int32:
        block = block * 0.5
        block[0, :5] = -0.0
    rows = np.repeat(np.arange(9), 3)
    vals = np.sort(block[rows, rng.integers(0, 40, len(rows))].reshape(9, 3), axis=1).ravel()
    want_lt = (block[rows] < vals[:, None]).sum(1)
    want_le = (block[rows] <= vals[:, None]).sum(1)
    for frac in (0.0, 1.0):
        lt, le = _counts_in_rows(block, rows, vals, sparse_fraction=frac)
        np.testing.assert_array_equal(lt, want_lt)
        np.testing.assert_array_equal(le, want_le)


@needs_peer
def test_equals_peer_python_when_matches_rank_early():
    """Distances where matches are near the front (the gathered-keys path), with ties."""
    rng = np.random.default_rng(11)
    num_q, num_g = 80, 1500
    q_pids, g_pids = rng.integers(0, 60, num_q), rng.integers(0, 60, num_g)
    q_cams, g_cams = rng.integers(0, 6, num_q), rng.integers(0, 6, num_g)
    same = q_pids[:, None] == g_pids[None, :]
    distmat = np.round(rng.random((num_q, num_g)) + np.where(same, 0.0, 0.9), 2).astype(np.float32)
    cmc_p, map_p = peer.evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, use_cython=False)
    ours = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams)
    np.testing.assert_allclose(ours.cmc, cmc_p, atol=1e-6)
    assert abs(ours.mAP - map_p) < 1e-6


def test_ap_and_minp_match_plain_reference_without_ties():
    for seed in range(60):
        rng = np.random.default_rng(1000 + seed)
        prob = random_problem(rng, ties=False)
        if min_kept_len(*prob) == 0:
            continue
        for official in (False, True):
            cmc, mAP, mINP, aps = plain_reference(*prob, max_rank=5, official=official)
            ours = evaluate_rank(*prob, max_rank=5,
                                 protocol="market1501_official" if official else "market1501")
            np.testing.assert_allclose(ours.ap, aps, atol=1e-12)
            assert abs(ours.mINP - mINP) < 1e-12
            if not official:  # official averages over all queries, reference over valid ones
                np.testing.assert_allclose(ours.cmc, cmc[: len(ours.cmc)], atol=1e-6)
                assert abs(ours.mAP - mAP) < 1e-12


def test_hand_computed_case_all_protocols():
    # one query (pid 1, cam 0); gallery in distance order:
    #   neg, pos, junk(same cam), pos, pid -1, neg, pos
    distmat = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
                        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]], dtype=np.float32)
    g_pids = np.array([2, 1, 1, 1, -1, 3, 1])
    g_cams = np.array([1, 1, 0, 2, 4, 1, 3])
    q_pids, q_cams = np.array([1, 7]), np.array([0, 0])  # second query: no match anywhere
    r = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=5)
    # torchreid: pid -1 is an ordinary non-match -> kept list N P P N N P, matches at 2, 3, 6
    assert r.num_valid == 1 and r.valid.tolist() == [True, False]
    assert r.mAP == pytest.approx((1 / 2 + 2 / 3 + 3 / 6) / 3)
    assert r.mINP == pytest.approx(3 / 6)
    np.testing.assert_allclose(r.cmc, [0, 1, 1, 1, 1])
    # official devkit: pid -1 ignored -> N P P N P (matches at 2, 3, 5); trapezoid AP:
    # 1/3 * [(0 + 1/2)/2 + (1/2 + 2/3)/2 + (2/4 + 3/5)/2] = 83/180, averaged over both queries
    o = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=5,
                      protocol="market1501_official")
    assert o.ap[0] == pytest.approx(83 / 180)
    assert o.mAP == pytest.approx(83 / 180 / 2)
    np.testing.assert_allclose(o.cmc, [0, 0.5, 0.5, 0.5, 0.5])
    # the non-interpolated AP on the same junk-free list is higher: (1/2 + 2/3 + 3/5) / 3
    assert (1 / 2 + 2 / 3 + 3 / 5) / 3 - o.ap[0] == pytest.approx(0.1278, abs=1e-4)
    # a match at rank 1 is worth a full step in both
    one = evaluate_rank(np.array([[0.0, 1.0]]), [1], [1, 2], [0], [1, 1],
                        protocol="market1501_official")
    assert one.mAP == 1.0 and one.cmc[0] == 1.0


def test_official_breaks_ties_by_gallery_order():
    distmat = np.array([[0.5, 0.5, 0.5]], dtype=np.float32)  # all tied
    r = evaluate_rank(distmat, [1], [2, 1, 3], [0], [1, 1, 1], protocol="market1501_official")
    assert r.cmc.tolist() == [0, 1, 1]  # MATLAB's stable sort: gallery order, match second
    assert r.ap[0] == pytest.approx((0 + 1 / 2) / 2)


def test_short_gallery_lists_keep_cmc_at_one():
    """A query left with fewer than max_rank junk-free entries: CMC stays 1 after its match."""
    # q0 (pid 0) finds its match last; q1 (pid 5, cam 0) loses 9 same-camera entries and keeps 3
    g_pids = np.array([5] * 9 + [5, 0, 9])
    g_cams = np.array([0] * 9 + [1, 1, 1])
    distmat = np.stack([np.r_[np.arange(10), 11, 10], np.r_[np.arange(9) + 5, 0, 1, 2]])
    distmat = distmat.astype(np.float32)
    r = evaluate_rank(distmat, np.array([0, 5]), g_pids, np.array([0, 0]), g_cams, max_rank=10)
    np.testing.assert_allclose(r.cmc, [0.5] * 10)
    cy = load_peer_cython()
    if cy is not None:  # the peer's Cython path reads the previous query's stale buffer
        cmc_cy, _ = cy.evaluate_cy(distmat, np.array([0, 5]), g_pids, np.array([0, 0]), g_cams, 10)
        np.testing.assert_allclose(cmc_cy, [0.5] * 3 + [0.0] * 7)
    if peer is not None:  # and its python path cannot stack the ragged CMC rows at all
        with pytest.raises(ValueError):
            peer.evaluate_rank(distmat, np.array([0, 5]), g_pids, np.array([0, 0]), g_cams,
                               max_rank=10, use_cython=False)


@pytest.mark.skipif(load_peer_cython() is None,
                    reason="peer Cython not buildable (set HAREID_PEER_RANK_CY=path/rank_cy.pyx)")
def test_equals_peer_cython_where_lists_are_long():
    rng = np.random.default_rng(3)
    prob = (rng.random((200, 3000), dtype=np.float32), rng.integers(0, 50, 200),
            rng.integers(0, 50, 3000), rng.integers(0, 6, 200), rng.integers(0, 6, 3000))
    cmc_cy, map_cy = load_peer_cython().evaluate_cy(*prob, 50)
    ours = evaluate_rank(*prob)
    np.testing.assert_allclose(ours.cmc, cmc_cy, atol=1e-5)
    assert abs(ours.mAP - map_cy) < 1e-5  # the Cython path accumulates in float32


def _cuhk03_problem(seed):
    rng = np.random.default_rng(seed)
    ids = 12
    g_pids = np.repeat(np.arange(ids), 5)
    g_cams = rng.integers(0, 2, len(g_pids))
    q_pids = rng.integers(0, ids, 20)
    q_cams = rng.integers(0, 2, 20)
    distmat = np.round(rng.random((20, len(g_pids))), 2).astype(np.float32)  # with ties
    return distmat, q_pids, g_pids, q_cams, g_cams


@needs_peer
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cuhk03_equals_peer_with_same_rng(seed):
    prob = _cuhk03_problem(seed)
    np.random.seed(100 + seed)
    cmc_p, map_p = peer.evaluate_rank(*prob, max_rank=10, use_metric_cuhk03=True,
                                      use_cython=False)
    ours = evaluate_rank(*prob, max_rank=10, protocol="cuhk03", seed=100 + seed)
    np.testing.assert_allclose(ours.cmc, cmc_p, atol=1e-6)
    assert abs(ours.mAP - map_p) < 1e-6
    again = evaluate_rank(*prob, max_rank=10, protocol="cuhk03", seed=100 + seed)
    np.testing.assert_array_equal(again.cmc, ours.cmc)  # seeded: reproducible


def test_cuhk03_hand_computed():
    # gallery pids in distance order: 2, 1, 2, 3 (query pid 1, other camera everywhere).
    # With one image per identity sampled, pid 2 is either its first (rank 1) or third image;
    # the match (only image of pid 1) is second in distance, so it ranks 1st when pid 2's
    # third-ranked image is drawn (p = 1/2), else 2nd.
    distmat = np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    r = evaluate_rank(distmat, [1], [2, 1, 2, 3], [0], [1, 1, 1, 1], max_rank=3,
                      protocol="cuhk03", num_repeats=2000, seed=0)
    assert r.cmc[0] == pytest.approx(0.5, abs=0.05)
    assert r.cmc[1] == 1.0 and r.cmc[2] == 1.0
    assert r.mAP == pytest.approx(1 / 2)  # AP over the full list: match at rank 2


def test_result_dict_and_errors():
    r = evaluate_rank(np.array([[0.2, 0.1]]), [1], [1, 2], [0], [1, 1], max_rank=50)
    assert len(r.cmc) == 2  # clipped to the gallery size, as torchreid does
    d = r.to_dict()
    assert d["rank1"] == 0.0 and d["rank5"] == 1.0 and d["num_valid"] == 1
    assert "mAP" in r.table()
    with pytest.raises(ValueError, match="protocol"):
        evaluate_rank(np.zeros((1, 2)), [1], [1, 2], [0], [1], protocol="duke")
    with pytest.raises(ValueError, match="g_pids"):
        evaluate_rank(np.zeros((1, 2)), [1], [1], [0], [1, 2])
    with pytest.raises(ValueError, match="no query"):
        evaluate_rank(np.zeros((1, 2)), [1], [2, 3], [0], [1, 1])
