"""The embedding path of the index builder and the server: :class:`hareid.Embedder`, plus the
eager model for attention pictures.

:func:`load_embedder` loads a checkpoint once and gives ``embed`` (unit-length float32 rows, the
Embedder's), ``preprocess`` (one image -> the normalised ``(3, H, W)`` input), ``dim``,
``input_size``, ``device`` and ``model`` (the eager network, for ``forward_attention``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from hareid.deploy.embedder import Embedder


class ModelEmbedder:
    """A checkpoint's :class:`hareid.Embedder` and its eager model."""

    def __init__(self, model: nn.Module, info: dict, dtype: Any = "auto", calibration: Any = None):
        self.model = model.eval()  # eager: forward_attention for the attention strips
        self.embedder = Embedder(model, info=info, dtype=dtype, calibration=calibration)  # optimised copy
        self.info = self.embedder.info
        self.input_size = self.embedder.input_size
        self.dim = self.embedder.dim

    @property
    def device(self) -> torch.device:
        return self.embedder.device

    def preprocess(self, image: Any) -> torch.Tensor:
        """One image (PIL, H x W x 3 uint8 RGB array, or a file) -> normalised ``(3, H, W)``."""
        return self.embedder.preprocess([image])[0]

    def embed(self, images: torch.Tensor | Sequence[Any]) -> np.ndarray:
        """Images or a normalised batch ``(N, 3, H, W)`` -> ``(N, D)`` float32 with unit rows."""
        return self.embedder.embed(images)


def load_embedder(checkpoint: str | os.PathLike, device: str | torch.device | None = None,
                  dtype: Any = "auto", calibration: Any = None) -> ModelEmbedder:
    """The embedder of a checkpoint; ``device`` defaults to CUDA when available, else the CPU;
    ``dtype`` / ``calibration`` as :class:`hareid.Embedder` (``"auto"``: the runtime policy)."""
    from hareid.models.loading import load_model

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, info = load_model(checkpoint, device=device)
    return ModelEmbedder(model, info, dtype, calibration)
