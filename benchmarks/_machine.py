"""One line describing the machine a benchmark ran on: CPU model, the ISA flags that matter for
bf16/int8 kernels, core count, torch version and threads. Print it with every table."""

from __future__ import annotations

import os
import platform

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [fl for fl in FLAGS if fl in have]
    except OSError:
        pass
    return []


def machine_line() -> str:
    import torch

    return (f"CPU: {cpu_model()} ({os.cpu_count()} cores; {' '.join(cpu_flags()) or 'no listed ISA flags'}); "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads"
            + (f"; GPU: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))


if __name__ == "__main__":
    print(machine_line())
