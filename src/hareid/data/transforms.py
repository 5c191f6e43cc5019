"""Train / eval transforms (torchvision.transforms.v2).

Both accept a PIL image or a ``uint8`` tensor ``[3, H, W]`` and return a float tensor
``[3, height, width]`` normalised with ``mean``/``std`` (ImageNet by default).

Train: resize -> random horizontal flip -> pad + random crop -> colour jitter -> to float ->
normalise -> random erasing. Eval: resize -> to float -> normalise.

Person masks travel with their images: call the train transform as ``tf(image, Mask(m))`` (a
``torchvision.tv_tensors.Mask``) and every geometric step (resize with nearest neighbours, flip,
pad with 0, crop) moves the mask exactly as the image, with the same random draws as without a
mask; colour steps leave it alone; random erasing also clears the erased rectangle from the mask
(the person is not visible there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "RandomErasingWithMask", "build_transforms"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomErasingWithMask(v2.RandomErasing):
    """``v2.RandomErasing`` that also sets the erased rectangle of a ``Mask`` to 0 (torchvision
    passes masks through unchanged); images are erased exactly as by the parent class."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            if params["v"] is None:
                return inpt
            i, j, h, w = params["i"], params["j"], params["h"], params["w"]
            out = inpt.as_subclass(torch.Tensor).clone()
            out[..., i:i + h, j:j + w] = 0
            return tv_tensors.wrap(out, like=inpt)
        return super().transform(inpt, params)


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
        train.append(RandomErasingWithMask(p=erasing, value=0))
    evals = [v2.ToImage(), v2.Resize(size, antialias=True), *tail]
    return v2.Compose(train), v2.Compose(evals)
