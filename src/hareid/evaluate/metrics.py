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
hardest match cannot matter, so in rows where the rest are few (a good model) they are gathered
and sorted as packed (row, float32) integer keys, and rows with many are value-sorted whole (SIMD
sort, ~5x faster than argsort here) and searched with a vectorised binary search. Chunks run in
threads. Rows where a correct match ties with a kept negative (the only case where tie order
changes a metric) are recomputed exactly with ``np.argsort`` of that row, which reproduces
torchreid's tie order (or the stable order of the official protocol). Memory beyond the input is
one chunk of sorted rows per thread plus O(#same-pid pairs).

One implementation: :class:`RankScorer` scores any block of query rows and keeps per-query
results; :func:`evaluate_rank` feeds it the rows of a matrix, the streaming evaluation
(:func:`hareid.evaluate.evaluate_features`) blocks computed from features, so both give the same
numbers from the same distances.
"""

from __future__ import annotations

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
                    sparse_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Per (row, val): #entries of block[row] < val and <= val.

    block: (R, G) unsorted; rows: (P,) ascending; vals: (P,) ascending within each row.
    Only entries <= the row's largest val matter; in rows where those are few (a good model
    ranks its matches early) they are gathered, keyed (float32) and sorted; rows with many
    (more than ``sparse_fraction`` of the row) are sorted whole.
    """
    num_rows, width = block.shape
    lt = np.zeros(len(rows), dtype=np.int64)
    le = np.zeros(len(rows), dtype=np.int64)
    if len(rows) == 0 or width == 0:
        return lt, le
    dense_rows = np.arange(num_rows)
    if block.dtype == np.float32:
        last = np.r_[rows[1:] != rows[:-1], True]
        tmax = np.full(num_rows, -np.inf, dtype=np.float32)
        tmax[rows[last]] = vals[last]
        near = block <= tmax[:, None]  # (R, G) entries that can matter
        if np.count_nonzero(near) <= sparse_fraction * block.size:
            dense_rows = dense_rows[:0]
        else:  # a few far matches: sort those rows whole, key the others
            dense = near.sum(1) > sparse_fraction * width  # (R,)
            dense_rows = np.flatnonzero(dense)
            near[dense_rows] = False
        sel = ~np.isin(rows, dense_rows) if len(dense_rows) else slice(None)
        idx = np.flatnonzero(near)  # (M,)
        keys = _float32_keys(idx // width, block.ravel()[idx])
        keys.sort()
        r, v = rows[sel], vals[sel]
        row0 = np.searchsorted(keys, r.astype(np.uint64) << np.uint64(32))
        pk = _float32_keys(r, v)
        lt[sel] = np.searchsorted(keys, pk, side="left") - row0
        le[sel] = np.searchsorted(keys, pk, side="right") - row0
        if len(dense_rows) == 0:
            return lt, le
    if len(dense_rows) == num_rows:
        sel, local, flat = slice(None), rows, np.sort(block, axis=1).ravel()  # (R * G,)
    else:
        sel = np.isin(rows, dense_rows)
        local = np.searchsorted(dense_rows, rows[sel])  # row index within the sorted subset
        flat = np.sort(block[dense_rows], axis=1).ravel()  # (R' * G,)
    lt[sel] = _count_before(flat, width, local, vals[sel], strict=True)
    le[sel] = _count_before(flat, width, local, vals[sel], strict=False)
    return lt, le


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
# the chunk scorer: every protocol, one block of query rows at a time


def default_chunk_rows(num_g: int, itemsize: int = 4) -> int:
    """Rows scored at once by one thread (~16 MiB of distances)."""
    return max(1, _CHUNK_BYTES // max(1, num_g * itemsize))


class RankScorer:
    """Scores query rows of a distance matrix block by block; the one metric implementation.

    ``add(block, r0)`` scores rows ``r0 .. r0 + len(block)`` of the (num_query, num_gallery)
    matrix (the full gallery, junk columns included); ``result()`` returns the
    :class:`RankResult`. Market protocols accept blocks in any order and from several threads at
    once (each block writes only its own queries' entries); ``"cuhk03"`` draws its random gallery
    samples query by query, so its blocks must come in query order from one thread.
    :func:`evaluate_rank` feeds it the rows of a matrix, :func:`hareid.evaluate.evaluate_features`
    blocks computed from features and dropped after scoring.
    """

    def __init__(self, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any,
                 protocol: str = "market1501", max_rank: int = 50, *, num_repeats: int = 10,
                 seed: int = 0):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        q_pids, g_pids, q_camids, g_camids = (_as_array(a).reshape(-1)
                                              for a in (q_pids, g_pids, q_camids, g_camids))
        for name, a, b in (("q_camids", q_camids, q_pids), ("g_camids", g_camids, g_pids)):
            if len(a) != len(b):
                raise ValueError(f"{name} has {len(a)} entries, the pids {len(b)}")
        self.protocol, self.num_repeats = protocol, num_repeats
        self.num_gallery = len(g_pids)  # columns of the blocks given to add()
        self.keep: np.ndarray | None = None  # official devkit: pid -1 gallery images are junk
        if protocol == "market1501_official" and (g_pids == -1).any():
            self.keep = g_pids != -1
            g_pids, g_camids = g_pids[self.keep], g_camids[self.keep]
        self.q_pids, self.g_pids, self.q_camids, self.g_camids = q_pids, g_pids, q_camids, g_camids
        num_q = len(q_pids)
        self.max_rank = max(1, min(int(max_rank), len(g_pids)))
        self.valid = np.zeros(num_q, dtype=bool)
        self.ap = np.zeros(num_q)
        self.inp = np.zeros(num_q)
        self.first = np.zeros(num_q, dtype=np.int64)  # 1-based rank of the first match
        if protocol == "cuhk03":
            self._rs = np.random.RandomState(seed)
            self._cmc_sum = np.zeros(self.max_rank)
            self._next_row = 0
        else:
            qi, gi = _same_pid_pairs(q_pids, g_pids)  # grouped by query, ascending
            self._qi, self._gi = qi, gi
            self._junk = g_camids[gi] == q_camids[qi]  # same pid and camera: dropped

    @property
    def num_query(self) -> int:
        return len(self.q_pids)

    def add(self, block: Any, r0: int) -> None:
        """Score query rows r0 .. r0 + len(block); block: (rows, num_gallery) distances."""
        block = _as_array(block)
        if block.ndim != 2 or block.shape[1] != self.num_gallery or r0 < 0 \
                or r0 + block.shape[0] > self.num_query:
            raise ValueError(f"block of shape {block.shape} at row {r0} does not fit a "
                             f"({self.num_query}, {self.num_gallery}) distance matrix")
        if self.keep is not None:
            block = block[:, self.keep]
        if self.protocol == "cuhk03":
            if r0 != self._next_row:
                raise ValueError(f"cuhk03 scores rows in order: expected row {self._next_row}, "
                                 f"got {r0}")
            self._cuhk03_rows(block, r0)
            self._next_row = r0 + len(block)
        else:
            self._market_rows(block, r0)

    def add_rows(self, block: Any, r0: int = 0, chunk_rows: int | None = None,
                 num_threads: int | None = None, pool: ThreadPoolExecutor | None = None) -> None:
        """:meth:`add` in chunks of ``chunk_rows`` rows (default ~16 MiB each), several threads
        at once for the Market protocols (numpy's sorts and compares release the GIL)."""
        block = _as_array(block)
        rows = chunk_rows or default_chunk_rows(self.num_gallery, block.dtype.itemsize)
        starts = range(0, block.shape[0], rows)
        if self.protocol == "cuhk03":
            for s in starts:
                self.add(block[s:s + rows], r0 + s)
            return

        def one(s: int) -> None:
            self.add(block[s:s + rows], r0 + s)

        workers = min(len(starts), num_threads or _default_threads())
        if pool is not None and len(starts) > 1:
            list(pool.map(one, starts))
        elif workers > 1:
            with ThreadPoolExecutor(workers) as own:
                list(own.map(one, starts))
        else:
            for s in starts:
                one(s)

    def _market_rows(self, block: np.ndarray, r0: int) -> None:
        r1 = r0 + block.shape[0]
        p0, p1 = np.searchsorted(self._qi, (r0, r1))
        if p0 == p1:
            return  # no query of these rows has a same-pid gallery entry
        official = self.protocol == "market1501_official"
        qi, gi, junk = self._qi[p0:p1] - r0, self._gi[p0:p1], self._junk[p0:p1]  # local rows
        d = block[qi, gi]  # (P,) their distances
        order = np.lexsort((d, qi))  # pairs by (query, distance)
        qi, junk, d = qi[order], junk[order], d[order]
        run_start, run_end = _run_bounds(qi, d)
        grp_start = _group_starts(qi)
        pos = ~junk  # only correct matches need a place in their row
        qp, dp = qi[pos], d[pos]
        same_lt = (run_start - grp_start)[pos]  # same-pid entries strictly closer
        same_le = (run_end - grp_start)[pos]  # same-pid entries closer or equal (incl. itself)
        n_lt, n_le = _counts_in_rows(block, qp, dp)
        neg_lt = n_lt - same_lt  # kept non-matches strictly closer
        neg_eq = (n_le - n_lt) - (same_le - same_lt)  # kept non-matches at the same distance
        k = np.arange(len(qp)) - _group_starts(qp) + 1  # 1-based index among correct matches
        rank = neg_lt + k  # 1-based rank in the junk-free list

        rows = r1 - r0
        num_pos = np.bincount(qp, minlength=rows)
        ap_sum = np.bincount(qp, weights=_ap_terms(k, rank, official), minlength=rows)
        first = np.zeros(rows, dtype=np.int64)
        last = np.zeros(rows, dtype=np.int64)
        if len(qp):
            is_first = np.ones(len(qp), dtype=bool)
            is_first[1:] = qp[1:] != qp[:-1]
            first[qp[is_first]] = rank[is_first]
            is_last = np.append(is_first[1:], True)
            last[qp[is_last]] = rank[is_last]
        # rows where a correct match ties with a kept negative: the tie order matters -> exact
        for q in np.unique(qp[neg_eq > 0]):
            ranks = _exact_ranks(block[q], self.g_pids, self.g_camids, self.q_pids[r0 + q],
                                 self.q_camids[r0 + q], stable=official)
            kk = np.arange(1, len(ranks) + 1)
            ap_sum[q] = _ap_terms(kk, ranks, official).sum()
            first[q], last[q] = ranks[0], ranks[-1]
        valid = num_pos > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            self.ap[r0:r1] = np.where(valid, ap_sum / np.maximum(num_pos, 1), 0.0)
            self.inp[r0:r1] = np.where(valid, num_pos / np.maximum(last, 1), 0.0)
        self.valid[r0:r1] = valid
        self.first[r0:r1] = first

    def _cuhk03_rows(self, block: np.ndarray, r0: int) -> None:
        g_pids, g_camids = self.g_pids, self.g_camids
        for i in range(block.shape[0]):
            q = r0 + i
            order = np.argsort(block[i])  # same tie order as torchreid
            gp, gc = g_pids[order], g_camids[order]
            kept = gp[~((gp == self.q_pids[q]) & (gc == self.q_camids[q]))]  # junk-free pids
            match = np.flatnonzero(kept == self.q_pids[q])
            if len(match) == 0:
                continue
            self.valid[q] = True
            ranks = match + 1
            kk = np.arange(1, len(ranks) + 1)
            self.ap[q] = _ap_terms(kk, ranks, official=False).mean()
            self.inp[q] = len(ranks) / ranks[-1]
            self.first[q] = ranks[0]
            # identities in order of first appearance; their positions ascending within each group
            uniq, first_pos, inverse = np.unique(kept, return_index=True, return_inverse=True)
            by_group = np.argsort(inverse, kind="stable")  # positions grouped by identity
            counts = np.bincount(inverse)
            starts = np.cumsum(counts) - counts
            appear = np.argsort(first_pos)  # group ids in order of first appearance
            own = int(np.flatnonzero(uniq[appear] == self.q_pids[q])[0])
            for _ in range(self.num_repeats):
                pick = self._rs.randint(0, counts[appear])  # one image per identity, peer's draws
                chosen = by_group[starts[appear] + pick]  # (num_ids,) positions in the list
                hit = int((chosen < chosen[own]).sum())  # 0-based rank of the true match
                if hit < self.max_rank:
                    self._cmc_sum[hit:] += 1.0

    def result(self) -> RankResult:
        """The metrics of every row added so far (all rows, for the evaluation's numbers).

        Raises ``ValueError`` when no query has a correct match."""
        valid, ap = self.valid, self.ap
        num_valid = int(valid.sum())
        if num_valid == 0:
            raise ValueError("no query has a correct match in the gallery (check pids and camids)")
        if self.protocol == "cuhk03":
            cmc = (self._cmc_sum / self.num_repeats / num_valid).astype(np.float32)
            mAP = float(ap[valid].mean())
        elif self.protocol == "market1501_official":
            denom = self.num_query  # the devkit averages over all queries (no match -> AP 0)
            cmc = _cmc_from_first(self.first, valid, self.max_rank, denom)
            mAP = float(ap.sum() / denom)
        else:
            cmc = _cmc_from_first(self.first, valid, self.max_rank, num_valid)
            mAP = float(ap[valid].mean())
        return RankResult(cmc=cmc, mAP=mAP, mINP=float(self.inp[valid].mean()), ap=ap[valid].copy(),
                          valid=valid.copy(), num_valid=num_valid, protocol=self.protocol,
                          inp=self.inp[valid].copy())


def _default_threads() -> int:
    """Threads that sort chunks at once: the CPUs this process may use (affinity and cgroup quota,
    not the host's count: threads beyond the quota are throttled), at most 8."""
    from hareid.runtime import usable_cpus

    return min(8, usable_cpus())


def _cmc_from_first(first: np.ndarray, valid: np.ndarray, max_rank: int, denom: int) -> np.ndarray:
    hist = np.bincount(np.minimum(first[valid] - 1, max_rank), minlength=max_rank + 1)[:max_rank]
    return (np.cumsum(hist) / max(denom, 1)).astype(np.float32)


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
    is live); ``num_threads`` (default: usable CPUs, at most 8) sorts chunks in parallel.
    Raises ``ValueError`` for bad shapes, an unknown protocol, or when no query has a match.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    distmat, q_pids, g_pids, q_camids, g_camids = _check_inputs(
        distmat, q_pids, g_pids, q_camids, g_camids)
    scorer = RankScorer(q_pids, g_pids, q_camids, g_camids, protocol, max_rank,
                        num_repeats=num_repeats, seed=seed)
    scorer.add_rows(distmat, 0, chunk_rows, num_threads)
    return scorer.result()


__all__ = ["PROTOCOLS", "RankResult", "RankScorer", "count_valid_queries", "evaluate_rank"]


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
