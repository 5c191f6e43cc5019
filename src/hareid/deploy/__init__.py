"""Shipping a trained model: int8, exported files and the :class:`Embedder`.

The fast float forms (:func:`hareid.models.inference.optimize_for_inference`: the model's own
wiring with fused blocks, fp32 / bf16, eager or compiled) live with the models, below evaluation.

* :mod:`~hareid.deploy.quantize` - :func:`quantize_int8`: static int8 through ONNX Runtime.
* :mod:`~hareid.deploy.export` - ONNX / TorchScript files checked against eager.
* :mod:`~hareid.deploy.embedder` - :class:`Embedder`: crops (or a frame and boxes) in, unit rows out.

Nothing is imported until asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"Embedder": "embedder", "embed": "embedder", "quantize_int8": "quantize", "export_onnx": "export",
          "export_torchscript": "export"}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"hareid.deploy.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'hareid.deploy' has no attribute {name!r}")
