"""Checkpoints that lose nothing and never unpickle untrusted code.

* :func:`save_checkpoint` writes to a temporary file in the target folder, fsyncs, then renames:
  a crash mid-write leaves the previous checkpoint intact.
* :func:`load_checkpoint` uses ``torch.load(weights_only=True)``, allowing only the few extra
  types that checkpoints written by common ReID tools contain (numpy scalars and arrays), or reads
  ``.safetensors`` files. Full unpickling is never used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hareid.errors import CheckpointError
from hareid.fileio import atomic_path

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
    """Write ``state`` to ``path`` atomically (temp file + fsync + rename); returns the path.

    ``.safetensors``: the tensors of ``state["state_dict"]`` (or of ``state`` itself when it is a
    bare state_dict) with the other JSON-able entries (``model``, ``config``, ``epoch``, ...) in the
    file's metadata, so :func:`load_checkpoint` (and ``hareid.models.load_model``) can rebuild the model.
    A write that fails (a full disk, a file-size limit) raises :class:`CheckpointError` naming the
    file; the previous checkpoint at ``path`` is left as it was.
    """
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            if path.suffix == ".safetensors":
                _save_safetensors(state, tmp)
            else:
                torch.save(dict(state), tmp)
    except (OSError, RuntimeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, OSError) and e.strerror:
            reason = e.strerror
        elif "inline_container" in reason or "PytorchStreamWriter" in reason:  # torch's zip writer
            reason = "the write stopped short: disk full or file-size limit"
        raise CheckpointError(f"{path}: could not write the checkpoint ({reason}); free disk space or "
                              "choose another output folder (the previous file is unchanged)") from e
    return path


def _save_safetensors(state: Mapping[str, Any], out: Path) -> None:
    from safetensors.torch import save_file

    sd = state.get("state_dict", state)
    tensors = {k: v.detach().cpu().contiguous() for k, v in sd.items() if isinstance(v, torch.Tensor)}
    meta = {k: v for k, v in state.items() if k in _SAFETENSORS_META}
    save_file(tensors, str(out), metadata={"hareid": json.dumps(meta)} if meta else None)


#: Entries of a training checkpoint kept in a ``.safetensors`` file's metadata (JSON).
_SAFETENSORS_META = ("model", "config", "epoch", "iteration", "metrics", "init")


def _load_safetensors(path: Path, map_location: str | torch.device) -> dict:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open
    except ImportError as e:  # pragma: no cover - core dependency
        raise CheckpointError(f"{path}: reading .safetensors needs `pip install safetensors`") from e
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        out = {"state_dict": load_file(str(path), device=str(map_location))}
        if "hareid" in meta:
            out.update(json.loads(meta["hareid"]))
    except (SafetensorError, OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable .safetensors file ({reason}); re-export it or "
                              "pass another checkpoint") from e
    return out


_SAFE_MODULES = ("torch", "collections", "numpy", "_codecs", "builtins")


def _unsafe_global(path: Path) -> str | None:
    """The first ``module.name`` a pickle (raw, or torch's zip format) would import that a
    weights-only load refuses, read from its opcodes with :mod:`pickletools` (nothing is executed)."""
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                data = z.read(name) if name else b""
        else:
            data = path.read_bytes()
        strings: list[str] = []
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                found = str(arg).replace(" ", ".")
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found = f"{strings[-2]}.{strings[-1]}"
            else:
                if isinstance(arg, str):
                    strings.append(arg)
                continue
            if found.split(".")[0] not in _SAFE_MODULES:
                return found
    except Exception:  # not a pickle we can read: the caller's generic message applies
        return None
    return None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely. Raises :class:`CheckpointError` with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; pass the path of a .pt/.pth/.safetensors file")
    if path.suffix == ".safetensors":
        return _load_safetensors(path, map_location)
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        unsafe = _unsafe_global(path)
        if unsafe:
            raise CheckpointError(
                f"{path}: cannot be loaded safely (weights_only): it pickles {unsafe}, which could "
                "run code; re-save it as a plain state_dict or .safetensors"
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
