"""Ranking metrics for re-identification: CMC, mAP, mINP under the standard protocols.

Protocols (``evaluate_rank(..., protocol=...)``):

- ``"market1501"``: for each query, gallery entries with the same pid *and* the same camera are
  dropped; CMC counts the first correct match; AP is the mean of the precisions at each correct
  match (non-interpolated); queries without any valid match are skipped (and counted).
  Equal to torchreid's ``evaluate_rank`` (``eval_market1501``), including its tie order.
- ``"market1501_official"``: the Market-1501 MATLAB devkit. Gallery entries with pid ``-1`` are
  junk (ignored) for every query; AP uses the devkit's trapezoid rule between recall points
  (``(recall - old_recall) * (old_precision + precision) / 2``), which gives slightly lower values;
  ties are broken by gallery order (MATLAB's stable sort); mAP and CMC are averaged over *all*
  queries (a query without a match counts 0, as the devkit's ``ap(isnan(ap)) = 0`` does).
- ``"cuhk03"``: classic single-gallery-shot CMC: per query and repeat, one gallery image per
  identity is sampled (``np.random.RandomState(seed)``, ``num_repeats`` times, drawing in the same
  order as torchreid's ``eval_cuhk03`` so that a global ``np.random.seed(seed)`` there gives the same
  numbers); AP and mINP over the full (junk-free) ranked list.

mINP (Ye et al., "Deep Learning for Person Re-identification: A Survey and Outlook", TPAMI 2021):
INP = (number of correct matches) / (rank of the hardest correct match), averaged over valid queries.

Speed: the Market-1501 path never argsorts the distance matrix. The rank of a correct match is
``#kept non-matches closer + #correct matches closer + 1``, so per chunk of query rows it only
has to place the (few) correct matches among the row's values: entries farther than the row's
hardest match cannot matter, so when the rest are few (a good model) they are gathered and
sorted as packed (row, float32) integer keys, else whole rows are value-sorted (SIMD sort, ~5x
faster than argsort here) and searched with a vectorised binary search. Chunks run in threads. Rows where a correct match ties with a kept
negative (the only case where tie order changes a metric) are recomputed exactly with
``np.argsort`` of that row, which reproduces torchreid's tie order (or the stable order of the
official protocol). Memory beyond the input is one chunk of sorted rows plus O(#same-pid pairs).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PROTOCOLS = ("market1501", "market1501_official", "cuhk03")

_CHUNK_BYTES = 16 * 2**20  # sorted rows held at once


@dataclass
class RankResult:
    """Metrics of one evaluation.

    cmc: (max_rank,) fraction of (valid) queries matched within rank k+1.
    ap: (num_valid,) average precision of each valid query, in query order.
    inp: (num_valid,) inverse negative penalty of each valid query.
    valid: (num_q,) bool, query has at least one correct match in its gallery.
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    ap: np.ndarray
    valid: np.ndarray
    num_valid: int
    protocol: str = "market1501"
    inp: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def num_query(self) -> int:
        return int(self.valid.shape[0])

    def rank(self, k: int) -> float:
        """CMC at rank k (1-based); the last value if the curve is shorter than k."""
        return float(self.cmc[min(k, len(self.cmc)) - 1])

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary: rank1/5/10, mAP, mINP, counts and the CMC curve."""
        return {
            "protocol": self.protocol,
            "rank1": self.rank(1),
            "rank5": self.rank(5),
            "rank10": self.rank(10),
            "mAP": float(self.mAP),
            "mINP": float(self.mINP),
            "num_query": self.num_query,
            "num_valid": int(self.num_valid),
            "cmc": [float(x) for x in self.cmc],
        }

    def table(self) -> str:
        """A small printable metrics table."""
        rows = [
            ("protocol", self.protocol),
            ("queries (valid/all)", f"{self.num_valid}/{self.num_query}"),
            ("mAP", f"{100 * self.mAP:.2f}"),
            ("mINP", f"{100 * self.mINP:.2f}"),
        ]
        rows += [(f"rank-{k}", f"{100 * self.rank(k):.2f}") for k in (1, 5, 10, 20)]
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"{name:<{width}}  {value:>9}" for name, value in rows)


# --------------------------------------------------------------------------------------------
# helpers


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_inputs(distmat, q_pids, g_pids, q_camids, g_camids):
    distmat = _as_array(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got shape {distmat.shape}")
    if not np.issubdtype(distmat.dtype, np.number):
        raise ValueError(f"distmat must be numeric, got dtype {distmat.dtype}")
    num_q, num_g = distmat.shape
    arrays = [_as_array(a).reshape(-1) for a in (q_pids, g_pids, q_camids, g_camids)]
    for name, arr, n in zip(("q_pids", "g_pids", "q_camids", "g_camids"), arrays,
                            (num_q, num_g, num_q, num_g)):
        if arr.shape[0] != n:
            raise ValueError(f"{name} has {arr.shape[0]} entries, distmat implies {n}")
    return (distmat, *arrays)


def _same_pid_pairs(q_pids: np.ndarray, g_pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (query, gallery) index pairs with equal pid, grouped by query (ascending)."""
    g_order = np.argsort(g_pids, kind="stable")
    g_sorted = g_pids[g_order]
    lo = np.searchsorted(g_sorted, q_pids, side="left")
    counts = np.searchsorted(g_sorted, q_pids, side="right") - lo
    total = int(counts.sum())
    qi = np.repeat(np.arange(len(q_pids)), counts)  # (P,)
    within = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    gi = g_order[np.repeat(lo, counts) + within]  # (P,)
    return qi, gi


def _count_before(sorted_flat: np.ndarray, width: int, rows: np.ndarray, vals: np.ndarray,
                  strict: bool) -> np.ndarray:
    """Vectorised binary search: per (row, val), #entries of the sorted row < val (<= if not strict).

    sorted_flat: (R * width,) rows sorted ascending, flattened; rows: (P,) row index; vals: (P,).
    """
    pos = np.zeros(len(rows), dtype=np.int64)
    if width == 0 or len(rows) == 0:
        return pos
    base = rows.astype(np.int64) * width
    step = 1 << (width.bit_length() - 1)
    while step:
        cand = pos + step  # candidate count
        ok = cand <= width
        probe = sorted_flat[base + np.minimum(cand, width) - 1]
        ok &= (probe < vals) if strict else (probe <= vals)
        pos = np.where(ok, cand, pos)
        step >>= 1
    return pos


def _float32_keys(rows: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """uint64 keys ordered like (row, value) for float32 values: row in the high 32 bits, the
    value's bits mapped to an order-preserving unsigned int in the low 32 (-0.0 == +0.0)."""
    b = (vals.astype(np.float32) + np.float32(0.0)).view(np.uint32)
    u = np.where(b >> np.uint32(31), ~b, b | np.uint32(0x80000000))
    return (rows.astype(np.uint64) << np.uint64(32)) | u.astype(np.uint64)


def _counts_in_rows(block: np.ndarray, rows: np.ndarray, vals: np.ndarray,
                    sparse_fraction: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Per (row, val): #entries of block[row] < val and <= val.

    block: (R, G) unsorted; rows: (P,) ascending; vals: (P,) ascending within each row.
    Only entries <= the row's largest val matter; when those are few (a good model ranks its
    matches early) they are gathered, keyed (float32) and sorted, else whole rows are sorted.
    """
    num_rows, width = block.shape
    if block.dtype == np.float32 and len(rows):
        last = np.r_[rows[1:] != rows[:-1], True]
        tmax = np.full(num_rows, -np.inf, dtype=np.float32)
        tmax[rows[last]] = vals[last]
        near = block <= tmax[:, None]  # (R, G) entries that can matter
        if np.count_nonzero(near) <= sparse_fraction * block.size:
            idx = np.flatnonzero(near)  # (M,)
            keys = _float32_keys(idx // width, block.ravel()[idx])
            keys.sort()
            row0 = np.searchsorted(keys, rows.astype(np.uint64) << np.uint64(32))
            pk = _float32_keys(rows, vals)
            return (np.searchsorted(keys, pk, side="left") - row0,
                    np.searchsorted(keys, pk, side="right") - row0)
    flat = np.sort(block, axis=1).ravel()  # (R * G,)
    return (_count_before(flat, width, rows, vals, strict=True),
            _count_before(flat, width, rows, vals, strict=False))


def _group_starts(keys: np.ndarray) -> np.ndarray:
    """For a sorted key array: index of the first element of each element's run of equal keys."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    new = np.ones(n, dtype=bool)
    new[1:] = keys[1:] != keys[:-1]
    return np.maximum.accumulate(np.where(new, np.arange(n), 0))


def _run_bounds(qi: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For pairs sorted by (qi, d): start and end (exclusive) of each element's (qi, d) run."""
    n = len(qi)
    new = np.ones(n, dtype=bool)
    if n > 1:
        new[1:] = (qi[1:] != qi[:-1]) | (d[1:] != d[:-1])
    idx = np.arange(n)
    start = np.maximum.accumulate(np.where(new, idx, 0))
    end_marks = np.append(new[1:], True)  # last element of a run
    end = np.minimum.accumulate(np.where(end_marks, idx + 1, n)[::-1])[::-1]
    return start, end


def _ap_terms(k: np.ndarray, rank: np.ndarray, official: bool) -> np.ndarray:
    """Per correct match: its precision term. k: 1-based index among matches, rank: 1-based."""
    k = k.astype(np.float64)
    rank = rank.astype(np.float64)
    precision = k / rank
    if not official:
        return precision
    # devkit: (recall step) * (precision at previous list position + precision here) / 2
    prev = np.where(rank > 1, (k - 1) / np.maximum(rank - 1, 1), 1.0)
    return (prev + precision) / 2


def _exact_ranks(row: np.ndarray, g_pids: np.ndarray, g_camids: np.ndarray, q_pid: Any,
                 q_camid: Any, stable: bool, junk_extra: np.ndarray | None = None) -> np.ndarray:
    """1-based ranks (in the junk-free list) of the correct matches of one query, via argsort."""
    order = np.argsort(row, kind="stable" if stable else None)
    gp, gc = g_pids[order], g_camids[order]
    keep = ~((gp == q_pid) & (gc == q_camid))
    if junk_extra is not None:
        keep &= ~junk_extra[order]
    return np.flatnonzero(gp[keep] == q_pid) + 1


# --------------------------------------------------------------------------------------------
# Market-1501 (torchreid and official)


def _market(distmat: np.ndarray, q_pids, g_pids, q_camids, g_camids, official: bool,
            chunk_rows: int | None, num_threads: int | None):
    """Returns (valid (Q,), ap (Q,), inp (Q,), first_rank (Q,)) for every query (0 where invalid)."""
    num_q, num_g = distmat.shape
    qi, gi = _same_pid_pairs(q_pids, g_pids)
    junk = g_camids[gi] == q_camids[qi]  # (P,) same pid and camera: dropped
    d = distmat[qi, gi]  # (P,)
    # sort pairs by (query, distance)
    order = np.lexsort((d, qi))
    qi, gi, junk, d = qi[order], gi[order], junk[order], d[order]
    run_start, run_end = _run_bounds(qi, d)
    grp_start = _group_starts(qi)
    same_lt = run_start - grp_start  # same-pid entries strictly closer
    same_le = run_end - grp_start  # same-pid entries closer or equal (incl. itself)

    pos = ~junk  # only correct matches need a place in their row
    qp, dp, sp_lt, sp_le = qi[pos], d[pos], same_lt[pos], same_le[pos]
    neg_lt = np.empty(len(qp), dtype=np.int64)  # kept non-matches strictly closer
    neg_eq = np.empty(len(qp), dtype=np.int64)  # kept non-matches at exactly the same distance
    if chunk_rows is None:
        chunk_rows = max(1, _CHUNK_BYTES // max(1, num_g * distmat.dtype.itemsize))
    starts = list(range(0, num_q, chunk_rows))
    bounds = np.searchsorted(qp, np.arange(0, num_q + chunk_rows, chunk_rows))

    def place(c: int) -> None:  # one chunk of rows: place its correct matches among all entries
        p0, p1 = bounds[c], bounds[c + 1]
        if p0 == p1:
            return
        r0 = starts[c]
        n_lt, n_le = _counts_in_rows(distmat[r0:r0 + chunk_rows], qp[p0:p1] - r0, dp[p0:p1])
        lt, le = sp_lt[p0:p1], sp_le[p0:p1]
        neg_lt[p0:p1] = n_lt - lt
        neg_eq[p0:p1] = (n_le - n_lt) - (le - lt)

    workers = min(len(starts), num_threads or min(8, os.cpu_count() or 1))
    if workers > 1:  # numpy's sort and compares release the GIL: chunks run in parallel
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(place, range(len(starts))))
    else:
        for c in range(len(starts)):
            place(c)

    k = np.arange(len(qp)) - _group_starts(qp) + 1  # 1-based index among correct matches
    rank = neg_lt + k  # 1-based rank in the junk-free list

    valid = np.zeros(num_q, dtype=bool)
    valid[qp] = True
    num_pos = np.bincount(qp, minlength=num_q)
    ap_sum = np.bincount(qp, weights=_ap_terms(k, rank, official), minlength=num_q)
    first = np.zeros(num_q, dtype=np.int64)
    last = np.zeros(num_q, dtype=np.int64)
    if len(qp):
        is_first = np.ones(len(qp), dtype=bool)
        is_first[1:] = qp[1:] != qp[:-1]
        first[qp[is_first]] = rank[is_first]
        is_last = np.append(is_first[1:], True)
        last[qp[is_last]] = rank[is_last]

    # rows where a correct match ties with a kept negative: the tie order matters -> exact
    for q in np.unique(qp[neg_eq > 0]):
        ranks = _exact_ranks(distmat[q], g_pids, g_camids, q_pids[q], q_camids[q], stable=official)
        kk = np.arange(1, len(ranks) + 1)
        ap_sum[q] = _ap_terms(kk, ranks, official).sum()
        first[q], last[q] = ranks[0], ranks[-1]

    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(valid, ap_sum / np.maximum(num_pos, 1), 0.0)
        inp = np.where(valid, num_pos / np.maximum(last, 1), 0.0)
    return valid, ap, inp, first


def _cmc_from_first(first: np.ndarray, valid: np.ndarray, max_rank: int, denom: int) -> np.ndarray:
    hist = np.bincount(np.minimum(first[valid] - 1, max_rank), minlength=max_rank + 1)[:max_rank]
    return (np.cumsum(hist) / max(denom, 1)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# CUHK03 classic


def _cuhk03(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, num_repeats, seed):
    num_q = distmat.shape[0]
    rs = np.random.RandomState(seed)
    valid = np.zeros(num_q, dtype=bool)
    ap = np.zeros(num_q)
    inp = np.zeros(num_q)
    cmc_sum = np.zeros(max_rank)
    for q in range(num_q):
        order = np.argsort(distmat[q])  # same tie order as torchreid
        gp, gc = g_pids[order], g_camids[order]
        kept = gp[~((gp == q_pids[q]) & (gc == q_camids[q]))]  # junk-free ranked pids
        match = np.flatnonzero(kept == q_pids[q])
        if len(match) == 0:
            continue
        valid[q] = True
        ranks = match + 1
        kk = np.arange(1, len(ranks) + 1)
        ap[q] = _ap_terms(kk, ranks, official=False).mean()
        inp[q] = len(ranks) / ranks[-1]
        # identities in order of first appearance; their positions ascending within each group
        uniq, first_pos, inverse = np.unique(kept, return_index=True, return_inverse=True)
        by_group = np.argsort(inverse, kind="stable")  # positions grouped by identity
        counts = np.bincount(inverse)
        starts = np.cumsum(counts) - counts
        appear = np.argsort(first_pos)  # group ids in order of first appearance
        own = int(np.flatnonzero(uniq[appear] == q_pids[q])[0])
        for _ in range(num_repeats):
            pick = rs.randint(0, counts[appear])  # one image per identity, same draws as peer
            chosen = by_group[starts[appear] + pick]  # (num_ids,) positions in the ranked list
            hit = int((chosen < chosen[own]).sum())  # 0-based rank of the true match
            if hit < max_rank:
                cmc_sum[hit:] += 1.0
    num_valid = int(valid.sum())
    cmc = (cmc_sum / num_repeats / max(num_valid, 1)).astype(np.float32)
    return valid, ap, inp, cmc


# --------------------------------------------------------------------------------------------
# public entry point


def evaluate_rank(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 50,
    protocol: str = "market1501",
    *,
    num_repeats: int = 10,
    seed: int = 0,
    chunk_rows: int | None = None,
    num_threads: int | None = None,
) -> RankResult:
    """CMC, mAP and mINP of a (num_query, num_gallery) distance matrix (smaller = closer).

    ``max_rank`` is clipped to the gallery size (as torchreid does). A query whose junk-free list
    is shorter than ``max_rank`` keeps its CMC at 1 after its first match (torchreid's Cython path
    reads stale memory there). ``num_repeats``/``seed`` apply to ``protocol="cuhk03"``;
    ``chunk_rows`` bounds the rows sorted at once (default: ~16 MiB worth; one chunk per thread
    is live); ``num_threads`` (default: CPU count, at most 8) sorts chunks in parallel.
    Raises ``ValueError`` for bad shapes, an unknown protocol, or when no query has a match.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    distmat, q_pids, g_pids, q_camids, g_camids = _check_inputs(
        distmat, q_pids, g_pids, q_camids, g_camids)
    if protocol == "market1501_official":
        keep = g_pids != -1  # devkit: pid -1 gallery images are junk for every query
        if not keep.all():
            distmat, g_pids, g_camids = distmat[:, keep], g_pids[keep], g_camids[keep]
    num_q, num_g = distmat.shape
    max_rank = max(1, min(int(max_rank), num_g))

    if protocol == "cuhk03":
        valid, ap, inp, cmc = _cuhk03(distmat, q_pids, g_pids, q_camids, g_camids, max_rank,
                                      num_repeats, seed)
    else:
        official = protocol == "market1501_official"
        valid, ap, inp, first = _market(distmat, q_pids, g_pids, q_camids, g_camids, official,
                                        chunk_rows, num_threads)
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError("no query has a correct match in the gallery (check pids and camids)")
    if protocol == "market1501_official":
        denom = num_q  # the devkit averages over all queries (no match -> AP 0)
        cmc = _cmc_from_first(first, valid, max_rank, denom)
        mAP = float(ap.sum() / denom)
    else:
        if protocol == "market1501":
            cmc = _cmc_from_first(first, valid, max_rank, num_valid)
        mAP = float(ap[valid].mean())
    return RankResult(
        cmc=cmc,
        mAP=mAP,
        mINP=float(inp[valid].mean()),
        ap=ap[valid],
        valid=valid,
        num_valid=num_valid,
        protocol=protocol,
        inp=inp[valid],
    )


__all__ = ["PROTOCOLS", "RankResult", "count_valid_queries", "evaluate_rank"]


def count_valid_queries(q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any) -> int:
    """How many queries have a correct match under the protocols' junk rule (same identity in
    another camera, gallery identity ``-1`` never a match), from the labels alone: whether a
    query/gallery split can be evaluated at all, checked before any image is embedded."""
    cams: dict[int, set[int]] = {}
    for pid, cam in zip(np.asarray(g_pids).tolist(), np.asarray(g_camids).tolist()):
        if pid != -1:
            cams.setdefault(pid, set()).add(cam)
    return sum(1 for pid, cam in zip(np.asarray(q_pids).tolist(), np.asarray(q_camids).tolist())
               if cams.get(pid, set()) - {cam})
