"""Metrics straight from features, one block of query rows at a time (no Q x G matrix held).

:func:`evaluate_features` computes a block of query rows of the distance matrix
(:class:`~hareid.evaluate.distance.DistanceBlocks`, on the features' device), optionally
re-ranks it (:class:`~hareid.evaluate.rerank.KReciprocal`), scores it
(:class:`~hareid.evaluate.metrics.RankScorer`, the same scorer :func:`evaluate_rank` uses, split
over threads) and drops it. Blocks follow the grid of
:func:`~hareid.evaluate.distance.pairwise_distance` (same rows per GEMM), so every distance, every
tie and therefore every metric equals ``evaluate_rank(pairwise_distance(qf, gf), ...)`` exactly,
for every protocol (cuhk03 draws its samples in the same query order).

Memory beyond the features: the augmented gallery (``G * (D + 2) * 4`` bytes), one block
(``chunk_rows * G * 4``, ~256 MiB by default) and the scorer's per-thread chunks (~16 MiB each)
plus O(number of same-identity pairs). MSMT17 size (11659 x 82161, 1024-d): the full matrix
would be 3.6 GiB; streamed, the evaluation holds ~0.5 GiB beside the features.

Small problems (``Q * G * 4 <= 256 MiB``, Market-1501 included) take the full-matrix path by
default: the same numbers, and the matrix is kept for ranked-list pictures.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hareid.evaluate.distance import DistanceBlocks, pairwise_distance
from hareid.evaluate.metrics import (
    RankResult,
    RankScorer,
    _as_array,
    _default_threads,
    default_chunk_rows,
)
from hareid.progress import progress as progress_bar

STREAM_ABOVE_BYTES = 256 * 2**20  # a full float32 Q x G matrix larger than this is streamed


@dataclass
class RankedLists:
    """The ``k`` closest gallery entries of every query, raw order (entries the protocol ignores
    included), ties by gallery index: what ranked-list pictures need instead of the matrix.

    indices: (Q, k) int64 gallery indices; distances: (Q, k) float32.
    """

    indices: np.ndarray
    distances: np.ndarray
    num_gallery: int

    def row(self, q: int) -> np.ndarray:
        """A (G,) float32 distance row for query ``q``: the kept entries, +inf elsewhere."""
        out = np.full(self.num_gallery, np.inf, dtype=np.float32)
        out[self.indices[q]] = self.distances[q]
        return out


@dataclass
class FeatureScores:
    """What :func:`score_features` returns: the metrics, the matrix when it was kept, the lists."""

    rank: RankResult
    distmat: np.ndarray | None = None  # (Q, G) float32 (after re-ranking if on), small problems
    ranked: RankedLists | None = None


def _top_k(block: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, k) smallest of each row, ordered by (distance, gallery index)."""
    vals, idx = torch.topk(block, k, dim=1, largest=False, sorted=False)
    vals, idx = vals.cpu().numpy(), idx.cpu().numpy()
    order = np.lexsort((idx, vals))
    return np.take_along_axis(idx, order, 1), np.take_along_axis(vals, order, 1)


def score_features(
    qf: Any,
    gf: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    metric: str = "euclidean",
    protocol: str = "market1501",
    max_rank: int = 50,
    *,
    rerank: bool | dict[str, Any] | None = None,
    top_k: int = 0,
    stream: bool | None = None,
    keep_distmat: bool | None = None,
    chunk_rows: int | None = None,
    num_threads: int | None = None,
    num_repeats: int = 10,
    seed: int = 0,
    progress: bool = False,
) -> FeatureScores:
    """:func:`evaluate_features` with what the evaluation pipeline keeps besides the metrics.

    rerank: ``True`` or a dict of :class:`~hareid.evaluate.rerank.KReciprocal` options (k1, k2,
    lambda_value) to score k-reciprocal re-ranked distances. top_k: also return each query's
    ``top_k`` closest gallery entries (:class:`RankedLists`). stream: ``None`` = automatic
    (stream when the float32 matrix exceeds 256 MiB). keep_distmat: return the (Q, G) matrix
    (default: when not streaming). chunk_rows: query rows per block (default
    :func:`~hareid.evaluate.distance.block_rows`); memory holds one block.
    """
    blocks = DistanceBlocks(qf, gf, metric)
    num_q, num_g = blocks.num_q, blocks.num_g
    labels = [_as_array(a).reshape(-1) for a in (q_pids, g_pids, q_camids, g_camids)]
    for name, arr, n in zip(("q_pids", "g_pids", "q_camids", "g_camids"), labels,
                            (num_q, num_g, num_q, num_g)):
        if arr.shape[0] != n:
            raise ValueError(f"{name} has {arr.shape[0]} entries, the features {n}")
    scorer = RankScorer(*labels, protocol, max_rank, num_repeats=num_repeats, seed=seed)
    if stream is None:
        stream = 4 * num_q * num_g > STREAM_ABOVE_BYTES
    if keep_distmat is None:
        keep_distmat = not stream
    reranker = None
    if rerank:
        from hareid.evaluate.rerank import KReciprocal

        opts = rerank if isinstance(rerank, dict) else {}
        reranker = KReciprocal(qf, gf, metric, **opts, progress=progress)
    top_k = min(int(top_k), num_g)
    ranked = (RankedLists(np.zeros((num_q, top_k), np.int64),
                          np.zeros((num_q, top_k), np.float32), num_g) if top_k > 0 else None)
    distmat = None
    if not stream:
        distmat = pairwise_distance(qf, gf, metric, chunk_size=chunk_rows)
        if reranker is not None:
            for r0, r1 in blocks.grid(chunk_rows):
                distmat[r0:r1] = reranker.rows(r0, r1, distmat[r0:r1])
        scorer.add_rows(distmat, 0, num_threads=num_threads)
        if ranked is not None:
            for r0, r1 in blocks.grid(chunk_rows):
                ranked.indices[r0:r1], ranked.distances[r0:r1] = _top_k(
                    torch.from_numpy(distmat[r0:r1]), top_k)
        return FeatureScores(scorer.result(), distmat if keep_distmat else None, ranked)

    if keep_distmat:
        distmat = np.empty((num_q, num_g), dtype=np.float32)
    threads = num_threads or _default_threads()
    sub_rows = default_chunk_rows(num_g)
    on_cpu = blocks.device.type == "cpu"
    grid = blocks.grid(chunk_rows)
    buf = torch.empty(grid[0][1] - grid[0][0] if grid else 0, num_g) if on_cpu else None
    pool = ThreadPoolExecutor(threads) if threads > 1 and protocol != "cuhk03" else None
    try:
        for r0, r1 in progress_bar(grid, enabled=progress, desc="evaluate", leave=False):
            block = blocks(r0, r1, out=buf[:r1 - r0] if on_cpu else None)  # (c, G)
            if reranker is not None:
                block = torch.from_numpy(reranker.rows(r0, r1, block.cpu().numpy()))
            if ranked is not None:
                ranked.indices[r0:r1], ranked.distances[r0:r1] = _top_k(block, top_k)
            rows = block.cpu().numpy()  # shares memory on the CPU
            scorer.add_rows(rows, r0, sub_rows, threads, pool=pool)
            if distmat is not None:
                distmat[r0:r1] = rows
    finally:
        if pool is not None:
            pool.shutdown()
    return FeatureScores(scorer.result(), distmat, ranked)


def evaluate_features(
    qf: Any,
    gf: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    metric: str = "euclidean",
    protocol: str = "market1501",
    max_rank: int = 50,
    **kwargs: Any,
) -> RankResult:
    """CMC, mAP and mINP of query features (Q, D) against gallery features (G, D).

    Equal to ``evaluate_rank(pairwise_distance(qf, gf, metric), q_pids, g_pids, q_camids,
    g_camids, max_rank, protocol)`` (same distances, same tie rule) without holding the (Q, G)
    matrix when it is large: blocks of query rows are computed on the features' device, scored
    and dropped. Options (keyword): ``rerank`` (True or KReciprocal options), ``stream``
    (None = automatic), ``chunk_rows``, ``num_threads``, ``num_repeats``/``seed`` (cuhk03),
    ``progress``; see :func:`score_features`. Raises ``ValueError`` for bad shapes, an unknown
    metric or protocol, or when no query has a match.
    """
    kwargs.pop("top_k", None)
    kwargs.setdefault("keep_distmat", False)
    return score_features(qf, gf, q_pids, g_pids, q_camids, g_camids, metric, protocol, max_rank,
                          **kwargs).rank


__all__ = ["STREAM_ABOVE_BYTES", "FeatureScores", "RankedLists", "evaluate_features",
           "score_features"]
