"""Evaluate a checkpoint file on a dataset in one call (``hareid eval``, :mod:`hareid.api`)."""

from __future__ import annotations

import os

import torch

__all__ = ["evaluate_checkpoint"]


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    root: str | os.PathLike,
    dataset: str | None = None,
    flip: bool = False,
    rerank: bool = False,
    metric: str = "euclidean",
    protocol: str = "market1501",
    batch_size: int = 64,
    workers: int = 2,
    skip_bad_images: bool = False,
    amp: str = "none",
    junk: str = "auto",
):
    """Evaluate a checkpoint on a dataset's query/gallery split; returns an ``EvalResult``.

    ``amp``: embedding precision as ``eval.amp`` (``none``, ``bf16``, ``fp16``, ``auto``).
    ``junk``: which same-identity gallery entries are ignored (``hareid.evaluate.junk``): ``camera``
    (Market-1501), ``tracklet``, ``none``, or ``auto`` (camera with 2+ cameras, else tracklet)."""
    from dataclasses import replace

    from hareid.data import open_dataset
    from hareid.data.loader import build_eval_loaders
    from hareid.evaluate.features import model_device
    from hareid.evaluate.junk import apply_junk_rule, resolve_junk_rule
    from hareid.evaluate.pipeline import evaluate
    from hareid.models.loading import load_model
    from hareid.runtime import resolve_amp

    model, info = load_model(checkpoint, device="cuda" if torch.cuda.is_available() else None)
    ds = open_dataset(root, dataset)
    query, gallery = apply_junk_rule(ds.query, ds.gallery, resolve_junk_rule(ds, junk), ds.extras.get("tracklet"))
    loaders = build_eval_loaders(replace(ds, query=query, gallery=gallery), info["height"], info["width"],
                                 batch_size, workers, skip_bad_images, info["mean"], info["std"])
    return evaluate(model, *loaders, metric=metric, flip=flip, rerank=rerank, protocol=protocol,
                    dtype=resolve_amp(amp, model_device(model), "--amp"))
