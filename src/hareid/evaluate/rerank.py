"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), in bounded memory, from distance matrices or straight from features.

Same algorithm and conventions as the authors' reference (distances squared, each row divided
by its maximum, k-reciprocal sets with the 2/3 expansion rule on k1/2 neighbours, Gaussian-kernel
weights, local query expansion over k2 neighbours, Jaccard distance
``1 - sum(min) / (2 - sum(min))``, final ``(1 - lambda) * jaccard + lambda * original``), but:

- no N x N argsort, V or Jaccard matrix (N = Q + G): one pass over the rows of the joint
  matrix keeps each row's maximum and its ``max(k1+1, k2)`` nearest neighbours; the encodings V
  are sparse (about ``k1 * 1.5`` non-zeros a row, float32); the Gaussian weights need only the
  distances to each row's few candidates, looked up (matrices) or computed from the two feature
  vectors (features). Re-ranked rows are produced a block of queries at a time.
- everything float32 (the reference keeps the Jaccard term in float16).
- ties between equal distances are broken by index (a stable order), except that which of
  several entries tied at the K-th nearest place enters the list is unspecified (as in the
  reference's argsort).

Two entry points, one implementation:

- :func:`re_ranking` (q_g, q_q, g_g matrices) -> the (Q, G) re-ranked matrix; the inputs hold
  the dense (G, G) gallery distances (1 GiB for Market-1501, 25 GiB for MSMT17).
- :class:`KReciprocal` (query and gallery features): the joint rows come from GEMM blocks of
  :class:`~hareid.evaluate.distance.DistanceBlocks` and are dropped after the neighbour pass;
  ``rows(r0, r1, q_g_rows)`` re-ranks a block of query rows (the streaming evaluation's unit).
  Memory: the features + an augmented copy + one block + O(N * k1 * k2). Its values agree with
  :func:`re_ranking` on the matrices of :func:`~hareid.evaluate.distance.pairwise_distance` to
  float32 rounding (tested: 1e-5 on the re-ranked distances).

With ``lambda_value=1`` the result is ``q_g**2 / rowmax`` (rowmax over the query's row of the
joint (Q+G) matrix): a per-query monotone map of the input, so rankings and metrics are unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from hareid.evaluate.distance import (
    METRICS,
    DistanceBlocks,
    _as_tensor,
    _norms,
    as_f32,
    features_device,
)
from hareid.progress import progress as progress_bar

_CHUNK_BYTES = 32 * 2**20
_PAIR_BUDGET = 2_000_000  # Jaccard terms (and output cells) per query chunk
_PAIR_BATCH = 8192  # feature pairs whose distance is computed at once

Blocks = Iterable[tuple[int, int, Any]]  # (r0, r1, squared joint rows r0..r1) in row order
PairValues = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _check_params(k1: int, k2: int, lambda_value: float) -> None:
    if k1 < 1 or k2 < 1 or not 0.0 <= lambda_value <= 1.0:
        raise ValueError("need k1 >= 1, k2 >= 1 and 0 <= lambda_value <= 1")


# --------------------------------------------------------------------------------------------
# the algorithm, on any source of joint rows


def _neighbours(blocks: Blocks, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pass 1: per joint row its maximum (N,) and its k nearest neighbours (N, k), in (value,
    index) order of the row divided by its maximum. blocks: squared rows (numpy or torch; their
    memory is reused)."""
    rowmax = np.empty(n, dtype=np.float32)
    nn = np.empty((n, k), dtype=np.int64)
    for r0, r1, b in blocks:
        b = torch.as_tensor(b)  # (c, N) numpy shares memory; stays on its device
        m = b.amax(1)
        m[m <= 0] = 1.0
        b /= m[:, None]
        vals, idx = torch.topk(b, k, dim=1, largest=False, sorted=False)  # (c, k)
        vals, idx = vals.cpu().numpy(), idx.cpu().numpy()
        nn[r0:r1] = np.take_along_axis(idx, np.lexsort((idx, vals)), 1)
        rowmax[r0:r1] = m.cpu().numpy()
    return rowmax, nn


def _reciprocal(nn: np.ndarray, k: int, chunk: int = 4096) -> np.ndarray:
    """(N, k+1) bool: nn[i, j] (among i's k+1 nearest) has i among its own k+1 nearest."""
    n = nn.shape[0]
    out = np.empty((n, k + 1), dtype=bool)
    for r0 in range(0, n, chunk):
        f = nn[r0:r0 + chunk, :k + 1]  # (c, k+1)
        back = nn[f, :k + 1]  # (c, k+1, k+1)
        me = np.arange(r0, r0 + f.shape[0])[:, None, None]
        out[r0:r0 + chunk] = (back == me).any(-1)
    return out


def _combine(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n: int):
    """Sum duplicate (row, col) triplets -> CSR (indptr (n+1,), indices, data), rows sorted."""
    key = rows.astype(np.int64) * n + cols
    order = np.argsort(key, kind="stable")
    key, vals = key[order], vals[order]
    if len(key):
        start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        data = np.add.reduceat(vals, start).astype(np.float32)
        key = key[start]
    else:
        data = vals.astype(np.float32)
    r, c = np.divmod(key, n)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=n), out=indptr[1:])
    return indptr, c.astype(np.int64), data


def _expand_rows(indptr: np.ndarray, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For CSR rows ``sel`` (M,): (which entry of sel, flat position in indices/data) per non-zero."""
    lengths = indptr[sel + 1] - indptr[sel]
    owner = np.repeat(np.arange(len(sel)), lengths)
    pos = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return owner, indptr[sel][owner] + pos


def _encode(nn: np.ndarray, rowmax: np.ndarray, pair_values: PairValues, k1: int, k2: int):
    """Pass 2: expanded k-reciprocal sets, Gaussian weights -> sparse V; local query expansion.

    pair_values(i, j, rowmax) -> squared distances of joint rows i to columns j divided by
    rowmax[i], float32. Returns V as CSR (indptr, indices, data)."""
    n = nn.shape[0]
    half = int(np.around(k1 / 2.0))
    recip = _reciprocal(nn, k1)  # (N, k1+1)
    recip_half = _reciprocal(nn, half)  # (N, half+1)
    trip_r, trip_c, trip_v = [], [], []
    for r0 in range(0, n, 1024):
        r1 = min(n, r0 + 1024)
        f = nn[r0:r1, :k1 + 1]  # (c, k1+1)
        fm = recip[r0:r1]  # (c, k1+1)
        ch = nn[f, :half + 1]  # (c, k1+1, half+1) candidates' half-neighbours
        chm = recip_half[f]  # (c, k1+1, half+1)
        in_r = ((ch[..., None] == f[:, None, None, :]) & fm[:, None, None, :]).any(-1) & chm
        accept = fm & (in_r.sum(-1) > (2.0 / 3.0) * chm.sum(-1))  # (c, k1+1)
        members = np.concatenate(
            [np.where(fm, f, -1), np.where(accept[..., None] & chm, ch, -1).reshape(len(f), -1)],
            axis=1)
        members.sort(axis=1)
        keep = members >= 0
        keep[:, 1:] &= members[:, 1:] != members[:, :-1]  # unique per row
        rr, cc = np.nonzero(keep)
        w = np.zeros(members.shape, dtype=np.float32)
        w[rr, cc] = np.exp(-pair_values(rr + r0, members[rr, cc], rowmax))
        w /= w.sum(1, keepdims=True)
        trip_r.append(rr + r0)
        trip_c.append(members[rr, cc])
        trip_v.append(w[rr, cc])
    v_ptr, v_idx, v_val = _combine(np.concatenate(trip_r), np.concatenate(trip_c),
                                   np.concatenate(trip_v), n)
    if k2 > 1:  # local query expansion: V_qe[i] = mean of V over i's k2 nearest neighbours
        nb = nn[:, :k2].reshape(-1)  # (N*k2,)
        owner, flat = _expand_rows(v_ptr, nb)
        v_ptr, v_idx, v_val = _combine(owner // k2, v_idx[flat], v_val[flat] / k2, n)
    return v_ptr, v_idx, v_val


class _Jaccard:
    """The final step: re-ranked distances for blocks of query rows, from the sparse V."""

    def __init__(self, num_q: int, num_g: int, rowmax: np.ndarray, v: tuple, lambda_value: float):
        v_ptr, v_idx, v_val = v
        n = num_q + num_g
        self.num_q, self.num_g, self.rowmax, self.lam = num_q, num_g, rowmax, lambda_value
        self.v_ptr, self.v_idx, self.v_val = v_ptr, v_idx, v_val
        # inverted index restricted to gallery rows: for each column, (gallery row, value)
        g_nz = np.arange(v_ptr[num_q], v_ptr[n])
        g_row = np.repeat(np.arange(num_q, n), np.diff(v_ptr[num_q:])) - num_q
        col_order = np.argsort(v_idx[g_nz], kind="stable")
        self.inv_row, self.inv_val = g_row[col_order], v_val[g_nz][col_order]
        self.inv_ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(v_idx[g_nz], minlength=n), out=self.inv_ptr[1:])
        # per query: output cells + (query, column, gallery) terms it expands to
        q_owner = np.repeat(np.arange(num_q), np.diff(v_ptr[: num_q + 1]))
        inv_len = np.diff(self.inv_ptr)
        self.cost = np.bincount(q_owner, weights=inv_len[v_idx[: v_ptr[num_q]]],
                                minlength=num_q) + num_g

    def rows(self, r0: int, r1: int, q_g_rows: Any) -> np.ndarray:
        """Re-ranked (r1 - r0, G) float32 from the original q_g distances of those rows."""
        qg = as_f32(q_g_rows)
        G = self.num_g
        if qg.shape != (r1 - r0, G):
            raise ValueError(f"q_g rows must be {(r1 - r0, G)}, got {qg.shape}")
        out = np.empty((r1 - r0, G), dtype=np.float32)
        budget = max(_PAIR_BUDGET, float(self.cost[r0:r1].max(initial=0)))
        cuts, acc = [r0], 0.0
        for q in range(r0, r1):  # chunks of queries by the number of terms they expand to
            if acc + self.cost[q] > budget and q > cuts[-1]:
                cuts.append(q)
                acc = 0.0
            acc += self.cost[q]
        cuts.append(r1)
        for a, b in itertools.pairwise(cuts):
            owner, flat = _expand_rows(self.v_ptr, np.arange(a, b))  # query non-zeros
            cols, qv = self.v_idx[flat], self.v_val[flat]
            o2, pos = _expand_rows(self.inv_ptr, cols)  # gallery rows sharing each column
            mins = np.minimum(qv[o2], self.inv_val[pos])
            t = np.bincount(owner[o2] * G + self.inv_row[pos], weights=mins,
                            minlength=(b - a) * G).reshape(b - a, G).astype(np.float32)
            jac = 1.0 - t / (2.0 - t)
            orig = np.square(qg[a - r0:b - r0], dtype=np.float32) / self.rowmax[a:b, None]
            out[a - r0:b - r0] = jac * (1.0 - self.lam) + orig * self.lam
        return out


def _sizes(num_q: int, num_g: int, k1: int, k2: int) -> tuple[int, int]:
    n = num_q + num_g
    k1 = max(1, min(k1, n - 1))
    return k1, min(n, max(k1 + 1, k2))


# --------------------------------------------------------------------------------------------
# from matrices


class _Rows:
    """Rows of the joint (N, N) matrix [[q_q, q_g], [q_g^T, g_g]], squared."""

    def __init__(self, qg: np.ndarray, qq: np.ndarray, gg: np.ndarray):
        self.qg, self.qq, self.gg = qg, qq, gg
        self.Q, self.G = qg.shape

    def get(self, r0: int, r1: int) -> np.ndarray:
        Q = self.Q
        parts = []
        if r0 < Q:
            a = slice(r0, min(r1, Q))
            parts.append(np.hstack([self.qq[a], self.qg[a]]))
        if r1 > Q:
            b = slice(max(r0, Q) - Q, r1 - Q)
            parts.append(np.hstack([self.qg[:, b].T, self.gg[b]]))
        block = np.vstack(parts) if len(parts) > 1 else parts[0]  # (r1 - r0, N)
        return np.square(block, dtype=np.float32)

    def blocks(self, chunk: int) -> Iterator[tuple[int, int, np.ndarray]]:
        n = self.Q + self.G
        for r0 in range(0, n, chunk):
            yield r0, min(n, r0 + chunk), self.get(r0, min(n, r0 + chunk))

    def pairs(self, i: np.ndarray, j: np.ndarray, rowmax: np.ndarray) -> np.ndarray:
        """Entries (i, j) of the joint matrix, squared and divided by rowmax[i]."""
        Q = self.Q
        v = np.empty(len(i), dtype=np.float32)
        iq, jq = i < Q, j < Q
        for m, src, a, b in ((iq & jq, self.qq, i, j), (iq & ~jq, self.qg, i, j - Q),
                             (~iq & jq, self.qg, j, i - Q), (~iq & ~jq, self.gg, i - Q, j - Q)):
            v[m] = src[a[m], b[m]]
        v = np.square(v, dtype=np.float32)
        v /= rowmax[i]
        return v


def re_ranking(
    q_g_dist: Any,
    q_q_dist: Any,
    g_g_dist: Any,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    chunk_rows: int | None = None,
) -> np.ndarray:
    """Re-ranked (Q, G) float32 distances from q_g (Q, G), q_q (Q, Q) and g_g (G, G) distances."""
    qg, qq, gg = as_f32(q_g_dist), as_f32(q_q_dist), as_f32(g_g_dist)
    Q, G = qg.shape
    if qq.shape != (Q, Q) or gg.shape != (G, G):
        raise ValueError(f"expected q_q {(Q, Q)} and g_g {(G, G)}, got {qq.shape}, {gg.shape}")
    _check_params(k1, k2, lambda_value)
    k1, K = _sizes(Q, G, k1, k2)
    rows = _Rows(qg, qq, gg)
    chunk = chunk_rows or max(1, _CHUNK_BYTES // (4 * (Q + G)))
    rowmax, nn = _neighbours(rows.blocks(chunk), Q + G, K)
    v = _encode(nn, rowmax, rows.pairs, k1, k2)
    return _Jaccard(Q, G, rowmax, v, lambda_value).rows(0, Q, qg)


# --------------------------------------------------------------------------------------------
# from features


class KReciprocal:
    """k-reciprocal re-ranking built from features, never holding an N x N matrix (N = Q + G).

    ``KReciprocal(qf, gf, metric, k1, k2, lambda_value)`` runs the neighbour pass (one GEMM pass
    over the joint set, on the features' device) and builds the sparse encodings;
    ``rows(r0, r1, q_g_rows)`` re-ranks query rows r0..r1 given their original distances
    (from :class:`~hareid.evaluate.distance.DistanceBlocks` with the same metric).
    """

    def __init__(self, qf: Any, gf: Any, metric: str = "euclidean", k1: int = 20, k2: int = 6,
                 lambda_value: float = 0.3, *, block_rows: int | None = None,
                 progress: bool = False):
        _check_params(k1, k2, lambda_value)
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
        device = features_device(qf, gf)
        q, g = _as_tensor(qf, device), _as_tensor(gf, device)
        Q, G = q.shape[0], g.shape[0]
        self.num_q, self.num_g = Q, G
        k1, K = _sizes(Q, G, k1, k2)
        joint = DistanceBlocks(q, [q, g], metric)  # query rows x (queries, gallery) columns
        parts = ((0, joint), (Q, joint.with_queries(g)))
        grids = [(o, b, r0, r1) for o, b in parts for r0, r1 in b.grid(block_rows)]

        def blocks() -> Iterator[tuple[int, int, torch.Tensor]]:
            for o, b, r0, r1 in progress_bar(grids, enabled=progress, leave=False,
                                             desc="re-ranking neighbours"):
                yield o + r0, o + r1, b(r0, r1).square_()

        rowmax, nn = _neighbours(blocks(), Q + G, K)
        del joint, parts
        self._q, self._g, self._metric = q, g, metric
        norm = _norms if metric == "cosine" else (lambda x: x.pow(2).sum(1))
        self._norm = torch.cat([norm(q), norm(g)])  # (N,) norms (cosine) or squared norms
        v = _encode(nn, rowmax, self._pairs, k1, k2)
        self._jaccard = _Jaccard(Q, G, rowmax, v, lambda_value)
        del self._q, self._g, self._norm  # the features are only needed for the encodings

    def _pairs(self, i: np.ndarray, j: np.ndarray, rowmax: np.ndarray) -> np.ndarray:
        """Squared distances of joint items i to j divided by rowmax[i], from their features."""
        out = np.empty(len(i), dtype=np.float32)
        Q = self.num_q
        dev = self._q.device
        for s in range(0, len(i), _PAIR_BATCH):
            a = torch.from_numpy(i[s:s + _PAIR_BATCH]).to(dev)
            b = torch.from_numpy(j[s:s + _PAIR_BATCH]).to(dev)
            fa, fb = self._gather(a, Q), self._gather(b, Q)  # (p, D)
            dot = (fa * fb).sum(1)
            if self._metric == "cosine":
                d = 1.0 - dot / (self._norm[a] * self._norm[b])
            else:
                d = (self._norm[a] + self._norm[b] - 2.0 * dot).clamp_(min=0.0)
            out[s:s + _PAIR_BATCH] = d.square_().cpu().numpy()
        out /= rowmax[i]
        return out

    def _gather(self, idx: torch.Tensor, num_q: int) -> torch.Tensor:
        is_q = idx < num_q
        f = self._q.new_empty(len(idx), self._q.shape[1])
        f[is_q] = self._q[idx[is_q]]
        f[~is_q] = self._g[idx[~is_q] - num_q]
        return f

    def rows(self, r0: int, r1: int, q_g_rows: Any) -> np.ndarray:
        """Re-ranked distances (r1 - r0, G) float32 of queries r0..r1 from their q_g rows."""
        return self._jaccard.rows(r0, r1, q_g_rows)


__all__ = ["KReciprocal", "re_ranking"]
