"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), in bounded memory.

Same algorithm and conventions as the authors' reference (distances squared, each row divided
by its maximum, k-reciprocal sets with the 2/3 expansion rule on k1/2 neighbours, Gaussian-kernel
weights, local query expansion over k2 neighbours, Jaccard distance
``1 - sum(min) / (2 - sum(min))``, final ``(1 - lambda) * jaccard + lambda * original``), but:

- no N x N argsort, V or Jaccard matrix (N = Q + G): only the top ``max(k1+1, k2)`` neighbours per
  row (int32), the sparse encodings V (about ``k1 * 1.5`` non-zeros a row, float32) and one chunk of
  rows at a time. Beyond the inputs, memory is O(N * k1 * k2) plus the (Q, G) float32 output.
- everything float32 (the reference keeps the Jaccard term in float16).
- ties between equal distances are broken by index (a stable order).

The three input matrices are assumed symmetric where they should be (q_q, g_g). With
``lambda_value=1`` the result is ``q_g**2 / rowmax`` (rowmax over the query's row of the joint
(Q+G) matrix): a per-query monotone map of the input, so rankings and metrics are unchanged.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

_CHUNK_BYTES = 32 * 2**20
_PAIR_BUDGET = 2_000_000  # Jaccard terms (and output cells) per query chunk


def _f32(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


class _Rows:
    """Rows of the joint (N, N) matrix [[q_q, q_g], [q_g^T, g_g]], squared and row-normalised."""

    def __init__(self, qg: np.ndarray, qq: np.ndarray, gg: np.ndarray):
        self.qg, self.qq, self.gg = qg, qq, gg
        self.Q, self.G = qg.shape
        self.rowmax: np.ndarray | None = None

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
        block = np.square(block, dtype=np.float32)
        if self.rowmax is not None:
            block /= self.rowmax[r0:r1, None]
        return block


def _reciprocal(nn: np.ndarray, k: int, chunk: int) -> np.ndarray:
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
    qg, qq, gg = _f32(q_g_dist), _f32(q_q_dist), _f32(g_g_dist)
    Q, G = qg.shape
    if qq.shape != (Q, Q) or gg.shape != (G, G):
        raise ValueError(f"expected q_q {(Q, Q)} and g_g {(G, G)}, got {qq.shape}, {gg.shape}")
    if k1 < 1 or k2 < 1 or not 0.0 <= lambda_value <= 1.0:
        raise ValueError("need k1 >= 1, k2 >= 1 and 0 <= lambda_value <= 1")
    N = Q + G
    k1 = min(k1, N - 1)
    half = int(np.around(k1 / 2.0))
    K = min(N, max(k1 + 1, k2))
    chunk = chunk_rows or max(1, _CHUNK_BYTES // (4 * N))
    rows = _Rows(qg, qq, gg)

    # pass 1: row maxima and the K nearest neighbours of every row (stable order)
    rowmax = np.empty(N, dtype=np.float32)
    nn = np.empty((N, K), dtype=np.int64)
    for r0 in range(0, N, chunk):
        b = rows.get(r0, min(N, r0 + chunk))  # (c, N)
        m = b.max(1)
        m[m <= 0] = 1.0
        rowmax[r0:r0 + len(b)] = m
        b /= m[:, None]
        part = np.argpartition(b, K - 1, axis=1)[:, :K] if K < N else np.tile(np.arange(N), (len(b), 1))
        vals = np.take_along_axis(b, part, 1)
        nn[r0:r0 + len(b)] = np.take_along_axis(part, np.lexsort((part, vals)), 1)
    rows.rowmax = rowmax

    # k-reciprocal sets R(i, k1) and R(i, k1/2) as masks over the neighbour lists
    recip = _reciprocal(nn, k1, chunk)  # (N, k1+1)
    recip_half = _reciprocal(nn, half, chunk)  # (N, half+1)

    # pass 2: expanded sets and Gaussian weights -> sparse V (CSR triplets)
    trip_r, trip_c, trip_v = [], [], []
    small = max(1, min(chunk, 1024))
    for r0 in range(0, N, small):
        r1 = min(N, r0 + small)
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
        d = rows.get(r0, r1)  # (c, N)
        w = np.where(keep, np.exp(-np.take_along_axis(d, np.maximum(members, 0), 1)), 0.0)
        w /= w.sum(1, keepdims=True)
        rr, cc = np.nonzero(keep)
        trip_r.append(rr + r0)
        trip_c.append(members[rr, cc])
        trip_v.append(w[rr, cc].astype(np.float32))
    v_ptr, v_idx, v_val = _combine(np.concatenate(trip_r), np.concatenate(trip_c),
                                   np.concatenate(trip_v), N)

    # local query expansion: V_qe[i] = mean of V over i's k2 nearest neighbours
    if k2 > 1:
        nb = nn[:, :k2].reshape(-1)  # (N*k2,)
        owner, flat = _expand_rows(v_ptr, nb)
        v_ptr, v_idx, v_val = _combine(owner // k2, v_idx[flat], v_val[flat] / k2, N)

    # inverted index restricted to gallery rows: for each column, (gallery row, value)
    g_nz = np.arange(v_ptr[Q], v_ptr[N])
    g_row = np.repeat(np.arange(Q, N), np.diff(v_ptr[Q:])) - Q
    col_order = np.argsort(v_idx[g_nz], kind="stable")
    inv_row, inv_val = g_row[col_order], v_val[g_nz][col_order]
    inv_ptr = np.zeros(N + 1, dtype=np.int64)
    np.cumsum(np.bincount(v_idx[g_nz], minlength=N), out=inv_ptr[1:])

    # Jaccard distance, query rows x gallery columns, in chunks of queries
    out = np.empty((Q, G), dtype=np.float32)
    # chunk queries by output size and by the number of (query, column, gallery) terms they expand to
    inv_len = np.diff(inv_ptr)
    q_owner = np.repeat(np.arange(Q), np.diff(v_ptr[: Q + 1]))
    cost = np.bincount(q_owner, weights=inv_len[v_idx[: v_ptr[Q]]], minlength=Q) + G
    budget = max(_PAIR_BUDGET, float(cost.max()))
    cuts = [0]
    acc = 0.0
    for q, c in enumerate(cost):
        if acc + c > budget and q > cuts[-1]:
            cuts.append(q)
            acc = 0.0
        acc += c
    cuts.append(Q)
    for r0, r1 in itertools.pairwise(cuts):
        owner, flat = _expand_rows(v_ptr, np.arange(r0, r1))  # query non-zeros
        cols, qv = v_idx[flat], v_val[flat]
        o2, pos = _expand_rows(inv_ptr, cols)  # gallery rows sharing each column
        mins = np.minimum(qv[o2], inv_val[pos])
        t = np.bincount(owner[o2] * G + inv_row[pos], weights=mins,
                        minlength=(r1 - r0) * G).reshape(r1 - r0, G).astype(np.float32)
        jac = 1.0 - t / (2.0 - t)
        orig = np.square(qg[r0:r1], dtype=np.float32) / rowmax[r0:r1, None]
        out[r0:r1] = jac * (1.0 - lambda_value) + orig * lambda_value
    return out


__all__ = ["re_ranking"]
