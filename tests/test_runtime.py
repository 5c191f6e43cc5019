"""hareid.runtime: the one compute-dtype policy every entry point shares, and the CPU count."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from hareid import runtime
from hareid.errors import ConfigError
from hareid.runtime import auto_dtype, resolve_amp, resolve_dtype, usable_cpus


@pytest.mark.parametrize("native", [True, False])
def test_auto_on_cpu_follows_native_bf16(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: native)
    want = torch.bfloat16 if native else torch.float32
    assert auto_dtype("cpu") == resolve_dtype("auto", "cpu") == want
    assert resolve_amp("auto", torch.device("cpu")) == (torch.bfloat16 if native else None)


@pytest.mark.parametrize("bf16", [True, False])
def test_auto_on_cuda_is_a_half_type(monkeypatch, bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    want = torch.bfloat16 if bf16 else torch.float16
    assert auto_dtype("cuda") == auto_dtype(torch.device("cuda:1")) == want
    assert resolve_amp("auto", torch.device("cuda")) == want


def test_every_entry_point_asks_the_same_policy(monkeypatch) -> None:
    """Training amp, evaluation, the inference graph and the Embedder: one answer to "auto"."""
    from hareid.models.inference import inference_dtype
    from hareid.runtime import resolve_amp as engine_amp  # the old import path

    for native in (True, False):
        monkeypatch.setattr(runtime, "cpu_has_bf16", lambda n=native: n)
        cpu = torch.device("cpu")
        want = auto_dtype(cpu)
        assert inference_dtype(cpu) == want
        assert (engine_amp("auto", cpu) or torch.float32) == want
        assert (resolve_amp("auto", cpu, "eval.amp") or torch.float32) == want


@pytest.mark.parametrize("spec, want", [
    (None, torch.float32), ("none", torch.float32), ("fp32", torch.float32), ("float32", torch.float32),
    ("bf16", torch.bfloat16), ("BFloat16", torch.bfloat16), (torch.bfloat16, torch.bfloat16),
    (torch.float32, torch.float32),
])
def test_spellings(spec, want) -> None:
    assert resolve_dtype(spec, "cpu") == want


def test_refusals_name_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"train\.amp=fp16 needs CUDA"):
        resolve_amp("fp16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="Embedder dtype: unknown value 'fp8'"):
        resolve_dtype("fp8", "cpu", "Embedder dtype")
    with pytest.raises(ConfigError, match="not a compute dtype"):
        resolve_dtype(torch.int8, "cpu")


def test_usable_cpus_reads_affinity_and_cgroup_quota(monkeypatch, tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    quota = tmp_path / "cpu.max"
    monkeypatch.setattr(runtime, "CGROUP_CPU_MAX", quota)
    assert usable_cpus() == affinity  # no quota file
    quota.write_text("max 100000\n")
    assert usable_cpus() == affinity
    quota.write_text("150000 100000\n")  # 1.5 CPUs of quota: 2 threads can use it
    assert usable_cpus() == min(affinity, 2)
    quota.write_text("50000 100000\n")
    assert usable_cpus() == 1
    quota.write_text("garbage")
    assert usable_cpus() == affinity


_FAULTS = """
import resource, sys, torch
from hareid.runtime import keep_freed_memory

def faults():
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.empty(16 << 20, dtype=torch.float32).fill_(1.0)  # 64 MiB, freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0

before = faults()
applied = keep_freed_memory()
assert keep_freed_memory() == applied  # once, idempotent
faults(), faults()  # the heap grows to hold the buffers once, then they are reused
print(applied, before, faults())
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator")
def test_keep_freed_memory_stops_the_page_faults_of_reused_buffers() -> None:
    import platform
    import subprocess

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, check=True).stdout.split()
    applied, before, after = out[0] == "True", int(out[1]), int(out[2])
    assert applied and before > 5 * 16000 * 0.9  # 5 x 64 MiB of 4 KiB pages, faulted in anew each time
    assert after < before / 50
    env = {**os.environ, "HAREID_MALLOC": "system"}
    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, check=True, env=env).stdout.split()
    assert out[0] == "False" and int(out[2]) > 5 * 16000 * 0.9
