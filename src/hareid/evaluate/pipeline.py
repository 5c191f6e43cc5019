"""The evaluation pipeline: embed query and gallery, distances (optionally re-ranked), protocol metrics."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from hareid.evaluate.distance import pairwise_distance
from hareid.evaluate.features import FeatureSet, extract_features
from hareid.evaluate.metrics import RankResult, evaluate_rank


@dataclass
class EvalResult:
    """A full evaluation: metrics, the features behind them and the (query, gallery) distances."""

    rank: RankResult
    query: FeatureSet
    gallery: FeatureSet
    distmat: np.ndarray  # (Q, G) float32, after re-ranking if it was on
    metric: str = "euclidean"
    flip: bool = False
    rerank: bool = False

    @property
    def mAP(self) -> float:
        return self.rank.mAP

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: rank1, rank5, rank10, mAP, mINP, num_valid, cmc list and the settings."""
        d = self.rank.to_dict()
        d.update(metric=self.metric, flip=self.flip, rerank=self.rerank,
                 num_gallery=len(self.gallery))
        return d

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)

    def table(self) -> str:
        """Printable metrics table (with the settings that produced it)."""
        head = (f"metric={self.metric} flip={self.flip} rerank={self.rerank} "
                f"query={len(self.query)} gallery={len(self.gallery)}")
        return head + "\n" + self.rank.table()


def evaluate(
    model: nn.Module,
    query_loader: Iterable,
    gallery_loader: Iterable,
    metric: str = "euclidean",
    flip: bool = False,
    rerank: bool = False,
    protocol: str = "market1501",
    *,
    max_rank: int = 50,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    rerank_kwargs: dict[str, Any] | None = None,
    distributed: bool = False,
) -> EvalResult | None:
    """Embed query and gallery (:func:`~hareid.evaluate.features.extract_features`), compute their
    distances (optionally k-reciprocal re-ranked) and the protocol's metrics.

    ``distributed``: under ``torchrun`` each process embeds a strided shard of both loaders, rank 0
    gathers the features and scores them (and returns the result); the other ranks return ``None``.
    In a single process it changes nothing.
    """
    from hareid import distributed as hdist

    sets = []
    for name, loader in (("query", query_loader), ("gallery", gallery_loader)):
        if distributed:
            fs = extract_features(model, hdist.shard_loader(loader), flip, dtype,
                                  progress=progress and hdist.is_main_process(), desc=name)
            sets.append(hdist.gather_feature_set(fs, total=len(loader.dataset)))
        else:
            sets.append(extract_features(model, loader, flip, dtype, progress=progress, desc=name))
    if distributed and not hdist.is_main_process():
        return None
    qs, gs = sets
    distmat = pairwise_distance(qs.features, gs.features, metric)
    if rerank:
        from hareid.evaluate.rerank import re_ranking

        q_q = pairwise_distance(qs.features, qs.features, metric)
        g_g = pairwise_distance(gs.features, gs.features, metric)
        distmat = re_ranking(distmat, q_q, g_g, **(rerank_kwargs or {}))
    result = evaluate_rank(distmat, qs.pids, gs.pids, qs.camids, gs.camids, max_rank=max_rank,
                           protocol=protocol)
    return EvalResult(result, qs, gs, distmat, metric, flip, rerank)


__all__ = ["EvalResult", "evaluate"]
