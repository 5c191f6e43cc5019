"""Train / eval transforms (torchvision.transforms.v2).

Both accept a PIL image or a ``uint8`` tensor ``[3, H, W]`` and return a float tensor
``[3, height, width]`` normalised with ``mean``/``std`` (ImageNet by default).

Train: resize -> random horizontal flip -> pad + random crop -> colour jitter -> to float ->
normalise -> random erasing. Eval: resize -> to float -> normalise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "build_transforms"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transforms(
    height: int = 160,
    width: int = 64,
    flip: float = 0.5,
    pad: int = 10,
    erasing: float = 0.5,
    color_jitter: float = 0.0,
    color_jitter_p: float = 0.8,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[v2.Compose, v2.Compose]:
    """``(train_tf, eval_tf)``.

    ``flip``: horizontal-flip probability; ``pad``: pixels of zero padding before a random crop back to
    ``height x width`` (0 disables); ``erasing``: random-erasing probability; ``color_jitter``:
    brightness/contrast/saturation strength (hue = strength/4), applied with ``color_jitter_p``
    (0 disables).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    size = (int(height), int(width))
    train: list[v2.Transform] = [v2.ToImage(), v2.Resize(size, antialias=True)]
    if flip > 0:
        train.append(v2.RandomHorizontalFlip(p=flip))
    if pad > 0:
        train += [v2.Pad(pad), v2.RandomCrop(size)]
    if color_jitter > 0:
        cj = v2.ColorJitter(brightness=color_jitter, contrast=color_jitter,
                            saturation=color_jitter, hue=min(0.5, color_jitter / 4))
        train.append(v2.RandomApply([cj], p=color_jitter_p))
    tail: list[v2.Transform] = [v2.ToDtype(torch.float32, scale=True),
                                v2.Normalize(mean=list(mean), std=list(std))]
    train += tail
    if erasing > 0:
        train.append(v2.RandomErasing(p=erasing, value=0))
    evals = [v2.ToImage(), v2.Resize(size, antialias=True), *tail]
    return v2.Compose(train), v2.Compose(evals)
