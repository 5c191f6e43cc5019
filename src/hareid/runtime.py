"""Where and how hareid computes: device, compute dtype, CPU threads, seeds. The one policy.

Every entry point that picks a precision asks :func:`resolve_dtype` (training autocast, evaluation,
:class:`hareid.Embedder`, ``hareid serve`` / ``index``, :func:`hareid.models.inference.optimize_for_inference`),
so ``"auto"`` means the same everywhere:

* CPU with native bfloat16 (oneDNN reports it: ``avx512_bf16`` or AMX; else the CPU flags are read):
  ``torch.bfloat16``; convolutions run ~3x faster than float32 and top-1 retrieval agrees with
  float32 on ~99 % of queries (``benchmarks/int8_parity.py``; docs/performance.md);
* CUDA: a half type, ``torch.bfloat16`` where the GPU supports it (no loss scaling needed), else
  ``torch.float16`` (training adds a grad scaler);
* anywhere else (a CPU without bf16, MPS, ...): ``torch.float32``.

Nothing here imports the rest of hareid (it sits at the bottom of the package).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hareid.errors import ConfigError

__all__ = ["DTYPE_NAMES", "auto_dtype", "cpu_flags", "cpu_has_bf16", "keep_freed_memory", "resolve_amp",
           "resolve_device", "resolve_dtype", "set_seed", "usable_cpus"]

#: cgroup v2 CPU quota of this process's container (read by :func:`usable_cpus`).
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")

#: Spellings accepted for a compute dtype (CLI flags, configs, ``Embedder(dtype=...)``).
DTYPE_NAMES: dict[str, torch.dtype | None] = {
    "none": None, "fp32": None, "float32": None, "float": None,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}


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


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (avx512_bf16 / AMX): oneDNN's own check, else
    the CPU flags. Without it bf16 is emulated and slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def auto_dtype(device: torch.device | str = "cpu") -> torch.dtype:
    """The ``"auto"`` compute dtype on ``device`` (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return torch.float32


def resolve_dtype(spec: Any, device: torch.device | str = "cpu", key: str = "dtype") -> torch.dtype:
    """A compute dtype from a spelling (``auto``, ``none``/``fp32``, ``bf16``, ``fp16``, a
    ``torch.dtype`` or ``None`` = float32) on ``device``; refuses what the device cannot run.
    ``key`` names the setting in error messages."""
    device = torch.device(device)
    if spec is None:
        return torch.float32
    if isinstance(spec, str):
        name = spec.lower()
        if name == "auto":
            return auto_dtype(device)
        if name not in DTYPE_NAMES:
            raise ConfigError(f"{key}: unknown value {spec!r}; use auto, none (float32), bf16 or fp16")
        spec = DTYPE_NAMES[name] or torch.float32
    if spec not in (torch.float32, torch.bfloat16, torch.float16):
        raise ConfigError(f"{key}: {spec} is not a compute dtype; use float32, bfloat16 or float16")
    if spec == torch.float16 and device.type == "cpu":
        raise ConfigError(f"{key}=fp16 needs CUDA; use {key}=bf16 (or none) on CPU")
    if spec == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{key}=bf16: this GPU has no bfloat16 support; use {key}=fp16")
    return spec


def resolve_amp(amp: Any, device: torch.device, key: str = "train.amp") -> torch.dtype | None:
    """The autocast dtype of an ``amp`` mode (``none | bf16 | fp16 | auto``), ``None`` for float32
    (autocast off): :func:`resolve_dtype` in the form the trainer and evaluation use."""
    dtype = resolve_dtype(amp, device, key)
    return None if dtype == torch.float32 else dtype


def usable_cpus() -> int:
    """CPUs this process may actually use: its affinity mask, capped by a cgroup CPU quota
    (``cpu.max``); ``os.cpu_count()`` counts the host's CPUs, which in a container can be many more
    than it is allowed to run on (threads beyond the quota are throttled, not parallel)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    try:  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            n = min(n, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_freed_memory_kept: bool | None = None


def keep_freed_memory(mmap_threshold: int = 256 << 20, trim_threshold: int = 512 << 20) -> bool:
    """Let glibc keep large freed buffers in the process instead of handing them back to the OS.

    CPU tensors come from ``malloc``; glibc serves large ones with ``mmap`` and unmaps them on free,
    so every forward pass faults its activations in anew and the kernel zeroes each page: 14-20k
    page faults per batch-32 HA-CNN forward (docs/performance.md). Raising glibc's mmap and trim
    thresholds keeps those pages mapped for the next batch. Process-wide and applied once; Linux
    with glibc only. ``HAREID_MALLOC=system`` leaves the allocator alone. Returns whether it applied.
    """
    global _freed_memory_kept
    if _freed_memory_kept is None:
        _freed_memory_kept = False
        import platform

        if os.environ.get("HAREID_MALLOC", "").lower() != "system" and platform.system() == "Linux" \
                and platform.libc_ver()[0] == "glibc":
            import ctypes

            try:
                libc = ctypes.CDLL("libc.so.6")
                _freed_memory_kept = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(
                    libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))
            except (OSError, AttributeError):
                pass
    return _freed_memory_kept
