"""Evaluation: embed -> distances -> protocol metrics (-> re-ranking).

* :mod:`~hareid.evaluate.features` - the one embedding function (:func:`extract_features`).
* :mod:`~hareid.evaluate.distance` - chunked query x gallery distances.
* :mod:`~hareid.evaluate.metrics` - CMC / mAP / mINP under the Market-1501, official and CUHK03 rules.
* :mod:`~hareid.evaluate.rerank` - k-reciprocal re-ranking.
* :mod:`~hareid.evaluate.streaming` - :func:`evaluate_features`: metrics from features, a block of
  query rows at a time (no Q x G matrix held).
* :mod:`~hareid.evaluate.pipeline` - :func:`evaluate`: all of the above for a model and two loaders.
"""

from hareid.evaluate.distance import pairwise_distance
from hareid.evaluate.features import FeatureSet, extract_features
from hareid.evaluate.metrics import PROTOCOLS, RankResult, evaluate_rank
from hareid.evaluate.pipeline import EvalResult, evaluate
from hareid.evaluate.streaming import evaluate_features

__all__ = [
    "PROTOCOLS",
    "EvalResult",
    "FeatureSet",
    "RankResult",
    "evaluate",
    "evaluate_features",
    "evaluate_rank",
    "extract_features",
    "pairwise_distance",
]
