"""Embedding: one function turns image batches into features for every caller.

:func:`embed_batch` is the single forward pass (with optional flip test-time augmentation) behind
:func:`extract_features` (evaluation, the trainer, the report), :class:`hareid.Embedder` (trackers,
services, ``hareid index``/``search``/``serve``) and ``hareid.api.embed``; they prepare the network
the same way, with :func:`hareid.models.inference.optimize_for_inference` (BatchNorm folded, channels_last,
optionally lower precision).

Flip TTA: the embedding is the mean of the image's and its horizontal mirror's embeddings, *not*
re-normalised. hareid embeddings are L2-normalised per branch and concatenated (global + local);
normalising the whole mean vector would change that per-branch weighting and a per-branch
re-normalisation is model specific. The mean of two unit vectors keeps their direction
(what cosine sees) and has norm <= 1 (euclidean distances shrink a little, ranking nearly so);
use ``metric="cosine"`` when exact scale invariance is wanted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from hareid.progress import progress as progress_bar

__all__ = ["FeatureSet", "embed_batch", "extract_features", "inference_net", "model_device"]


@dataclass
class FeatureSet:
    """Embeddings with their labels. features: (N, D) float32 cpu; pids, camids: (N,)."""

    features: torch.Tensor
    pids: np.ndarray
    camids: np.ndarray
    paths: list[str]

    def __len__(self) -> int:
        return int(self.features.shape[0])


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless module)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def inference_net(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """The network every embedding runs: ``model`` (unwrapped from DDP / ``torch.compile``) prepared by
    :func:`hareid.models.inference.optimize_for_inference`; ``model`` itself is not modified."""
    from hareid.models.inference import optimize_for_inference

    base = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    base = getattr(base, "module", base)  # DistributedDataParallel wrapper
    return optimize_for_inference(base, dtype=dtype)


@torch.inference_mode()
def embed_batch(net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, flip: bool = False) -> torch.Tensor:
    """``(B, 3, H, W)`` normalised images -> ``(B, D)`` float32 embeddings on ``x``'s device.

    ``flip``: mean of the image's and its mirror's embeddings (see the module docstring).
    """
    emb = net(x).float()  # (B, D)
    if flip:
        emb = (emb + net(torch.flip(x, dims=[3])).float()) / 2
    return emb


def _to_list(x: Any) -> list:
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return list(x)


@torch.inference_mode()
def extract_features(
    model: nn.Module,
    loader: Iterable,
    flip: bool = False,
    dtype: torch.dtype | None = None,
    *,
    progress: bool = True,
    desc: str = "features",
) -> FeatureSet:
    """Embed every batch ``(images, pids, camids, paths)`` of ``loader`` with :func:`embed_batch`.

    Runs on the model's device, in ``dtype`` (e.g. ``torch.bfloat16``; ``None`` = float32). Each
    image is embedded independently of its batch (eval mode), so results do not depend on batch size.
    """
    net = inference_net(model, dtype)
    device = model_device(model)
    feats: list[torch.Tensor] = []
    pids: list = []
    camids: list = []
    paths: list[str] = []
    total = len(loader) if hasattr(loader, "__len__") else None
    for batch in progress_bar(loader, total=total, desc=desc, leave=False, enabled=progress):
        if batch is None:  # every image of the batch was unreadable and skipped
            continue
        images, b_pids, b_camids, b_paths = batch[:4]
        feats.append(embed_batch(net, images.to(device, non_blocking=True), flip).cpu())  # (B, D)
        pids += _to_list(b_pids)
        camids += _to_list(b_camids)
        paths += [str(p) for p in b_paths]
    features = torch.cat(feats) if feats else torch.zeros(0, int(getattr(model, "embed_dim", 0)))
    return FeatureSet(features.contiguous(), np.asarray(pids, dtype=np.int64),
                      np.asarray(camids, dtype=np.int64), paths)
