"""k-reciprocal re-ranking: agreement with a dense reference, known answers, and that it helps."""

from __future__ import annotations

import numpy as np
import pytest

from hareid.evaluate.distance import DistanceBlocks, pairwise_distance
from hareid.evaluate.metrics import evaluate_rank
from hareid.evaluate.rerank import KReciprocal, re_ranking


def dense_reference(qg, qq, gg, k1, k2, lam):
    """The algorithm written out plainly with full N x N matrices (small inputs only)."""
    Q = qg.shape[0]
    full = np.block([[qq, qg], [qg.T, gg]]).astype(np.float64) ** 2
    full = full / full.max(axis=1, keepdims=True)
    N = full.shape[0]
    rank = np.argsort(full, axis=1, kind="stable")

    def recip(i, k):
        fwd = rank[i, :k + 1]
        return np.array([j for j in fwd if i in rank[j, :k + 1]], dtype=int)

    half = int(np.around(k1 / 2.0))
    V = np.zeros((N, N))
    for i in range(N):
        R = recip(i, k1)
        expanded = list(R)
        for c in R:
            Rc = recip(c, half)
            if len(np.intersect1d(Rc, R)) > 2.0 / 3.0 * len(Rc):
                expanded.extend(Rc)
        idx = np.unique(expanded)
        w = np.exp(-full[i, idx])
        V[i, idx] = w / w.sum()
    if k2 > 1:
        V = np.stack([V[rank[i, :k2]].mean(0) for i in range(N)])
    jac = np.zeros((Q, N))
    for i in range(Q):
        t = np.minimum(V[i][None, :], V).sum(1)  # (N,) sum_k min(V[i,k], V[j,k])
        jac[i] = 1 - t / (2 - t)
    final = jac * (1 - lam) + full[:Q] * lam
    return final[:, Q:]


def _problem(seed, Q=12, G=40, D=8, ids=6):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(ids, D))
    qp, gp = rng.integers(0, ids, Q), rng.integers(0, ids, G)
    qf = centers[qp] + 0.8 * rng.normal(size=(Q, D))
    gf = centers[gp] + 0.8 * rng.normal(size=(G, D))
    return qf.astype(np.float32), gf.astype(np.float32), qp, gp


@pytest.mark.parametrize("seed,k1,k2", [(0, 20, 6), (1, 5, 3), (2, 7, 1), (3, 4, 2), (4, 50, 6)])
def test_matches_dense_reference(seed, k1, k2):
    qf, gf, _, _ = _problem(seed)
    qg, qq, gg = (pairwise_distance(a, b) for a, b in ((qf, gf), (qf, qf), (gf, gf)))
    ours = re_ranking(qg, qq, gg, k1=k1, k2=k2, lambda_value=0.3)
    ref = dense_reference(qg, qq, gg, k1, k2, 0.3)
    assert ours.shape == qg.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_chunking_does_not_change_result():
    qf, gf, _, _ = _problem(5, Q=20, G=60)
    qg, qq, gg = (pairwise_distance(a, b) for a, b in ((qf, gf), (qf, qf), (gf, gf)))
    a = re_ranking(qg, qq, gg, k1=6, k2=3)
    b = re_ranking(qg, qq, gg, k1=6, k2=3, chunk_rows=7)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_lambda_one_is_the_original_ranking():
    qf, gf, _qp, _gp = _problem(6)
    qg, qq, gg = (pairwise_distance(a, b) for a, b in ((qf, gf), (qf, qf), (gf, gf)))
    out = re_ranking(qg, qq, gg, lambda_value=1.0)
    rowmax = np.maximum(np.square(qq).max(1), np.square(qg).max(1))
    np.testing.assert_allclose(out, np.square(qg) / rowmax[:, None], rtol=1e-6)
    assert (np.argsort(out, 1, kind="stable") == np.argsort(qg, 1, kind="stable")).all()


def test_lambda_zero_is_pure_jaccard_in_unit_range():
    qf, gf, _, _ = _problem(7)
    qg, qq, gg = (pairwise_distance(a, b) for a, b in ((qf, gf), (qf, qf), (gf, gf)))
    out = re_ranking(qg, qq, gg, k1=6, k2=3, lambda_value=0.0)
    assert out.min() >= 0.0 and out.max() <= 1.0 + 1e-6


def test_k_reciprocal_neighbour_pulls_true_match_up():
    """1-D toy (k1=3: top-4 lists incl. self). Query q0=0 has a second view q1=-0.45; the true
    match m=-1.0 (with a2=-1.1) is farther from q0 than the distractor x=0.9, whose own cluster
    (1.4, 1.5, 1.6) fills x's top-4. So q0 is among m's 4 nearest (m, a2, q1, q0) but not among
    x's: m is a k-reciprocal neighbour of q0, x is not, and re-ranking puts m first."""
    q = np.array([0.0, -0.45])
    g = np.array([0.9, -1.0, -1.1, 1.4, 1.5, 1.6])  # x, m, a2, x's cluster
    qg, qq, gg = (np.abs(a[:, None] - b[None, :]).astype(np.float32)
                  for a, b in ((q, g), (q, q), (g, g)))
    assert np.argmin(qg[0]) == 0  # before: the distractor is first
    out = re_ranking(qg, qq, gg, k1=3, k2=1, lambda_value=0.3)
    assert np.argmin(out[0]) == 1  # after: the true match is first
    np.testing.assert_allclose(out, dense_reference(qg, qq, gg, 3, 1, 0.3), atol=1e-6)


def test_does_not_hurt_and_usually_helps_on_clustered_features():
    gains = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        ids, D = 40, 16
        centers = rng.normal(size=(ids, D))
        gp = np.repeat(np.arange(ids), 6)
        gc = np.tile(np.arange(6), ids)
        qp, qc = np.arange(ids), np.full(ids, 6)
        gf = centers[gp] + 0.9 * rng.normal(size=(len(gp), D))
        qf = centers[qp] + 0.9 * rng.normal(size=(ids, D))
        qg, qq, gg = (pairwise_distance(a, b) for a, b in ((qf, gf), (qf, qf), (gf, gf)))
        before = evaluate_rank(qg, qp, gp, qc, gc).mAP
        after = evaluate_rank(re_ranking(qg, qq, gg), qp, gp, qc, gc).mAP
        gains.append(after - before)
    assert min(gains) > -0.01 and np.mean(gains) > 0.02, gains


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("seed,k1,k2", [(0, 20, 6), (1, 5, 3), (2, 7, 1), (4, 50, 6)])
def test_from_features_equals_matrix_version(seed, k1, k2, metric):
    """KReciprocal (features, no N x N matrix) vs re_ranking on the three matrices and the dense
    reference: equal to float32 rounding (1e-5; the distances it looks up are computed in other
    GEMM blocks or as single dot products, ~1e-7 apart)."""
    qf, gf, qp, gp = _problem(seed)
    qg, qq, gg = (pairwise_distance(a, b, metric) for a, b in ((qf, gf), (qf, qf), (gf, gf)))
    ours = KReciprocal(qf, gf, metric, k1=k1, k2=k2, lambda_value=0.3).rows(0, len(qf), qg)
    np.testing.assert_allclose(ours, re_ranking(qg, qq, gg, k1=k1, k2=k2), atol=1e-5)
    np.testing.assert_allclose(ours, dense_reference(qg, qq, gg, k1, k2, 0.3), atol=2e-5)
    cams = (np.zeros(len(qp), int), np.ones(len(gp), int))
    a = evaluate_rank(ours, qp, gp, *cams)
    b = evaluate_rank(re_ranking(qg, qq, gg, k1=k1, k2=k2), qp, gp, *cams)
    np.testing.assert_allclose(a.cmc, b.cmc, atol=1e-6)
    assert abs(a.mAP - b.mAP) < 1e-6


def test_from_features_holds_one_block_of_rows(monkeypatch):
    """The neighbour pass computes the joint (N, N) rows a bounded block at a time, each once."""
    qf, gf, _, _ = _problem(3, Q=20, G=70)
    seen = []
    call = DistanceBlocks.__call__

    def spy(self, r0, r1, out=None):
        block = call(self, r0, r1, out)
        seen.append(block.shape)
        return block

    monkeypatch.setattr(DistanceBlocks, "__call__", spy)
    kr = KReciprocal(qf, gf, k1=6, k2=3, block_rows=8)
    assert max(s[0] for s in seen) <= 8 and {s[1] for s in seen} == {90}
    assert sum(s[0] for s in seen) == 90  # every joint row once
    qg = pairwise_distance(qf, gf)
    np.testing.assert_allclose(kr.rows(5, 12, qg[5:12]), kr.rows(0, 20, qg)[5:12], atol=0)


def test_shape_errors():
    with pytest.raises(ValueError):
        re_ranking(np.zeros((2, 3)), np.zeros((2, 2)), np.zeros((2, 2)))
