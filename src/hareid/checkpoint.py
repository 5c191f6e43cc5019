"""Checkpoints that lose nothing and never unpickle untrusted code.

* :func:`save_checkpoint` writes to a temporary file in the target folder, fsyncs, then renames:
  a crash mid-write leaves the previous checkpoint intact.
* :func:`load_checkpoint` uses ``torch.load(weights_only=True)``, allowing only the few extra
  types that checkpoints written by common ReID tools contain (numpy scalars and arrays), or reads
  ``.safetensors`` files. Full unpickling is never used.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hareid.errors import CheckpointError

__all__ = ["load_checkpoint", "load_state_dict", "save_checkpoint", "strip_prefix"]


def _numpy_safe_globals() -> list[Any]:
    """The numpy types that torchreid-style checkpoints pickle (e.g. ``rank1`` as ``np.float64``)."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core -> numpy._core
    allowed: list[Any] = [core.multiarray.scalar, np.dtype, core.multiarray._reconstruct, np.ndarray]
    # dtype classes such as numpy.dtypes.Float64DType appear in pickles written by numpy >= 1.25
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temp file + fsync + rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        writer = lambda f: f.write(save(tensors))  # noqa: E731
    else:
        writer = lambda f: torch.save(dict(state), f)  # noqa: E731
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely. Raises :class:`CheckpointError` with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; pass the path of a .pt/.pth/.safetensors file")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # pragma: no cover - optional dependency
            raise CheckpointError(f"{path}: reading .safetensors needs `pip install safetensors`") from e
        return {"state_dict": load_file(str(path), device=str(map_location))}
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        text = str(e)
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if unsafe:
            raise CheckpointError(
                f"{path}: cannot be loaded safely (weights_only): it pickles {unsafe.group(1)}; "
                "re-save it as a plain state_dict or .safetensors"
            ) from e
        raise CheckpointError(
            f"{path}: not a readable checkpoint (corrupt, truncated, another format, or objects a "
            "safe weights_only load refuses); pass a .pt/.pth/.safetensors file of tensors"
        ) from e
    if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    if isinstance(obj, Mapping):  # a bare state_dict
        return {"state_dict": dict(obj)}
    raise CheckpointError(f"{path}: expected a dict or a state_dict, found {type(obj).__name__}")


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Remove a DataParallel/DDP ``module.`` (or other) prefix from every key that has it."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


def load_state_dict(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint file, with any ``module.`` prefix removed."""
    ckpt = load_checkpoint(path, map_location)
    sd = ckpt.get("state_dict", ckpt.get("model"))
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{path}: no 'state_dict' or 'model' entry; keys are {sorted(ckpt)[:8]}")
    return strip_prefix(sd)
