"""Where and how a run computes: kept as an import path; the policy lives in :mod:`hareid.runtime`."""

from __future__ import annotations

from hareid.runtime import (
    auto_dtype,
    cpu_has_bf16,
    resolve_amp,
    resolve_device,
    resolve_dtype,
    set_seed,
    usable_cpus,
)

__all__ = ["auto_dtype", "cpu_has_bf16", "resolve_amp", "resolve_device", "resolve_dtype", "set_seed",
           "usable_cpus"]
