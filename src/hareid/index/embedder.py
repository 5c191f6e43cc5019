"""The one place the index builder and the server turn images into embeddings.

:func:`load_embedder` wraps :func:`hareid.api.load_model` + the model's eval forward; it returns
unit-length float32 rows, as ``hareid.Embedder`` will. When that class is on ``main`` this module
becomes a thin adapter over it (the rest of ``hareid.index`` / ``hareid.serve`` only uses
``embed``, ``preprocess``, ``dim``, ``input_size``, ``model`` and ``device``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from hareid.errors import DataError


class ModelEmbedder:
    """Checkpoint -> embeddings ``(N, D)`` float32 with unit rows, on the model's device."""

    def __init__(self, model: nn.Module, info: dict):
        from hareid.data.transforms import build_transforms
        from hareid.export import fuse_for_inference

        self.model = model.eval()  # eager model: attention maps (forward_attention)
        self.info = info
        self.input_size = (int(info["height"]), int(info["width"]))
        self._fast = fuse_for_inference(model, channels_last=self.device.type == "cpu")
        self._tf = build_transforms(*self.input_size)[1]
        self.dim = int(getattr(model, "embed_dim", 0)) or int(
            self.embed(torch.zeros(1, 3, *self.input_size)).shape[1])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess(self, image: Image.Image | np.ndarray | str | os.PathLike) -> torch.Tensor:
        """One RGB image (PIL, HxWx3 uint8 array or a file) -> normalised ``(3, H, W)``."""
        if isinstance(image, (str, os.PathLike)):
            from hareid.data.loader import read_image

            return self._tf(read_image(str(image)))
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise DataError(f"expected an HxWx3 uint8 RGB array, got {image.shape} {image.dtype}")
            image = Image.fromarray(image)
        return self._tf(image.convert("RGB"))

    @torch.inference_mode()
    def embed(self, images: torch.Tensor | Sequence[Any], batch_size: int = 64) -> np.ndarray:
        """Images (see :meth:`preprocess`) or a normalised batch ``(N, 3, H, W)`` -> ``(N, D)``."""
        if not isinstance(images, torch.Tensor):
            if not len(images):
                return np.zeros((0, self.dim), np.float32)
            images = torch.stack([self.preprocess(im) for im in images])
        if images.dim() != 4 or images.shape[1] != 3:
            raise DataError(f"expected an image batch (N, 3, H, W), got {tuple(images.shape)}")
        out = []
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].to(self.device)  # (b, 3, H, W)
            if self.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            f = self._fast(x).float()  # (b, D)
            out.append(torch.nn.functional.normalize(f, dim=1).cpu())
        return torch.cat(out).numpy()

    @torch.inference_mode()
    def attention(self, images: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """``model.forward_attention`` of a normalised batch ``(N, 3, H, W)`` (on the CPU)."""
        out = self.model.forward_attention(images.to(self.device))
        return {k: [t.float().cpu() for t in v] for k, v in out.items()}


def load_embedder(checkpoint: str | os.PathLike, device: str | torch.device | None = None) -> ModelEmbedder:
    """The embedder of a checkpoint; ``device`` defaults to CUDA when available, else the CPU."""
    from hareid.api import load_model

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, info = load_model(checkpoint, device=device)
    return ModelEmbedder(model, info)
