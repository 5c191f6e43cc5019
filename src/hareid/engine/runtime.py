"""Where and how a run computes: device, mixed-precision dtype, seeds."""

from __future__ import annotations

import random

import numpy as np
import torch

from hareid.errors import ConfigError

__all__ = ["cpu_has_bf16", "resolve_amp", "resolve_device", "set_seed"]


def resolve_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        spec = f"cuda:{local_rank}"
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"train.device={spec}: not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={spec}: CUDA is not available here; use train.device=cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"train.device={spec}: this machine has {torch.cuda.device_count()} CUDA devices "
                          f"(cuda:0 to cuda:{torch.cuda.device_count() - 1}); pick one of them or auto")
    return dev


def cpu_has_bf16() -> bool:
    """Whether oneDNN has native bfloat16 kernels on this CPU (avx512_bf16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def resolve_amp(amp: str, device: torch.device, key: str = "train.amp") -> torch.dtype | None:
    """The autocast dtype of an ``amp`` mode (``none | bf16 | fp16 | auto``) on ``device``.

    ``auto``: fp16 (with a grad scaler) on CUDA; bf16 on a CPU with native bf16 support, where
    convolutions run several times faster than fp32; else ``None`` (full precision). ``key`` names
    the config key in error messages.
    """
    if amp == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_has_bf16() else None
    if amp == "none":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError(f"{key}=fp16 needs CUDA; use {key}=bf16 (or none) on CPU")
        return torch.float16
    if amp == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"{key}=bf16: this GPU has no bfloat16 support; use {key}=fp16")
        return torch.bfloat16
    raise ConfigError(f"{key}: unknown value {amp!r}; use none, bf16, fp16 or auto")


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
