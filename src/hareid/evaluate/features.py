"""Embedding: one function turns images into features for every caller (evaluation, index, API).

Flip TTA: the embedding is the mean of the image's and its horizontal mirror's embeddings, *not*
re-normalised. hareid embeddings are L2-normalised per branch and concatenated (global + local);
normalising the whole mean vector would change that per-branch weighting and a per-branch
re-normalisation is model specific. The mean of two unit vectors keeps their direction
(what cosine sees) and has norm <= 1 (euclidean distances shrink a little, ranking nearly so);
use ``metric="cosine"`` when exact scale invariance is wanted.
"""


from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm


@dataclass
class FeatureSet:
    """Embeddings with their labels. features: (N, D) float32 cpu; pids, camids: (N,)."""

    features: torch.Tensor
    pids: np.ndarray
    camids: np.ndarray
    paths: list[str]

    def __len__(self) -> int:
        return int(self.features.shape[0])


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _to_list(x: Any) -> list:
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return list(x)


@torch.inference_mode()
def extract_features(
    model: nn.Module,
    loader: Iterable,
    flip: bool = False,
    autocast_dtype: torch.dtype | None = None,
    *,
    amp: torch.dtype | None = None,
    progress: bool = True,
    desc: str = "features",
    fuse: bool = True,
) -> FeatureSet:
    """Embed every batch ``(images, pids, camids, paths)`` of ``loader`` with ``model.eval()``.

    Runs on the model's device; ``autocast_dtype`` (alias ``amp``), e.g. ``torch.bfloat16``, enables
    autocast. ``flip``: mean of the image's and its mirror's embeddings (see module doc). Each image
    is embedded independently of its batch (eval mode), so results do not depend on batch size.
    ``fuse``: embed with a BatchNorm-folded copy (:func:`hareid.export.fuse_for_inference`), same
    output to ~1e-6 and ~1.5x faster on CPU; the model itself is not modified.
    """
    dtype = autocast_dtype if autocast_dtype is not None else amp
    was_training = model.training
    model.eval()
    net = model
    if fuse:
        from hareid.export import fuse_for_inference

        base = getattr(model, "_orig_mod", model)  # torch.compile wrapper
        base = getattr(base, "module", base)  # DistributedDataParallel wrapper
        net = fuse_for_inference(base)
    device = _model_device(model)
    ctx = (torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None
           else nullcontext())
    feats: list[torch.Tensor] = []
    pids: list = []
    camids: list = []
    paths: list[str] = []
    total = len(loader) if hasattr(loader, "__len__") else None
    try:
        for batch in tqdm(loader, total=total, desc=desc, disable=not progress, leave=False):
            images, b_pids, b_camids, b_paths = batch[:4]
            x = images.to(device, non_blocking=True)  # (B, 3, H, W)
            with ctx:
                emb = net(x).float()  # (B, D)
                if flip:
                    emb = (emb + net(torch.flip(x, dims=[3])).float()) / 2
            feats.append(emb.cpu())
            pids += _to_list(b_pids)
            camids += _to_list(b_camids)
            paths += [str(p) for p in b_paths]
    finally:
        model.train(was_training)
    features = torch.cat(feats) if feats else torch.zeros(0, 0)
    return FeatureSet(features.contiguous(), np.asarray(pids, dtype=np.int64),
                      np.asarray(camids, dtype=np.int64), paths)


__all__ = ["FeatureSet", "extract_features"]
