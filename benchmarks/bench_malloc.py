"""Page faults of a fresh inference process, with and without ``hareid.runtime.keep_freed_memory``.

    python benchmarks/bench_malloc.py [--threads 1 2] [--batch 32 8] [--rounds 2]

Each measurement is a new Python process (as ``hareid eval``, the ``Embedder`` or ``hareid serve``
start): the bf16 inference form of a HA-CNN, 5 warm-up forwards, then 15 timed ones (median;
thread CPU time with 1 thread, wall time otherwise) and the minor page faults per forward. The
process runs once with ``HAREID_MALLOC=system`` (glibc's defaults) and once without (hareid keeps
freed buffers), alternating, ``--rounds`` times.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import machine_line  # noqa: E402

CHILD = r"""
import resource, statistics, sys, time
import torch
from hareid.models import build_model
from hareid.models.inference import optimize_for_inference
threads, batch = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
net = optimize_for_inference(build_model("hacnn", 751).eval(), dtype=torch.bfloat16)
x = torch.randn(batch, 3, 160, 64)
clock = time.thread_time if threads == 1 else time.perf_counter
with torch.inference_mode():
    for _ in range(5):
        net(x)
    f0, ts = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, []
    for _ in range(15):
        t0 = clock(); net(x); ts.append(clock() - t0)
    f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(batch / statistics.median(ts), (f1 - f0) / 15)
"""


def run(threads: int, batch: int, system: bool) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    if system:
        env["HAREID_MALLOC"] = "system"
    else:
        env.pop("HAREID_MALLOC", None)
    out = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(batch)], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 8])
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    print(machine_line())
    print("\n| threads | batch | glibc defaults: images/s | faults / forward | freed memory kept: images/s "
          "| faults / forward | speed-up |\n|---:|---:|---:|---:|---:|---:|---:|")
    for threads in args.threads:
        for batch in args.batch:
            sys_r, kept_r = [], []
            for _ in range(args.rounds):
                sys_r.append(run(threads, batch, True))
                kept_r.append(run(threads, batch, False))
            s = [sum(v) / len(v) for v in zip(*sys_r)]
            k = [sum(v) / len(v) for v in zip(*kept_r)]
            print(f"| {threads} | {batch} | {s[0]:.1f} | {s[1]:.0f} | {k[0]:.1f} | {k[1]:.0f} | {k[0] / s[0]:.2f}x |",
                  flush=True)


if __name__ == "__main__":
    main()
