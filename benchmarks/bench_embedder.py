"""Crops per second through ``hareid.Embedder``, per backend, at batch 1 and 32.

    python benchmarks/bench_embedder.py [--repeats 7] [--size 160x64] [--checkpoint CKPT | --model NAME ...]

Backends: PyTorch eager (float32 and, where the CPU has it, bfloat16), TorchScript and ONNX Runtime
(both exported from the same model). Each call embeds a list of uint8 crops (HxWx3, 128x48 as a
detector would give them), so preprocessing (resize, normalise) is included, as a tracker sees it.
Contenders are timed interleaved in rotating order, median of ``--repeats``; compare ratios within
one run. Prints whether the default (``dtype="auto"``) is within 10 % of the fastest float form at batch 1. Without
``--checkpoint`` a randomly initialised model of each ``--model`` (default ``hacnn``) is used (speed
does not depend on the weights); several ``--model`` are timed interleaved in one table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_line

from hareid import Embedder
from hareid.checkpoint import save_checkpoint
from hareid.cli import main as hareid_main
from hareid.models import build_model
from hareid.runtime import cpu_has_bf16


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--size", default="160x64", help="model input HxW")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--model", action="append", default=None,
                    help="registered model, randomly initialised (repeatable; default hacnn)")
    args = ap.parse_args(argv)
    h, w = (int(v) for v in args.size.split("x"))
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (128, 48, 3), dtype=np.uint8) for _ in range(32)]
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint:
            ckpts = {"": Path(args.checkpoint)}
        else:
            ckpts = {}
            for name in args.model or ["hacnn"]:
                torch.manual_seed(0)
                model = build_model(name, num_classes=10)
                cfg = {"data": {"height": h, "width": w}}
                ckpts[name] = Path(tmp) / f"{name}.pt"
                save_checkpoint({"state_dict": model.state_dict(), "model": {"name": name, "num_classes": 10},
                                 "config": cfg}, ckpts[name])
        backends: dict[str, Embedder] = {}
        for name, ckpt in ckpts.items():
            backends.update(_backends(name + " " * bool(name), ckpt, Path(tmp) / (name or "model"), crops))
        print(machine_line())
        print(f"input {h}x{w}, crops 128x48 uint8, median of {args.repeats} interleaved calls\n")
        print("| backend | batch 1 (crops/s) | batch 32 (crops/s) | ms per crop at 32 |")
        print("|---|---:|---:|---:|")
        times: dict[tuple[str, int], list[float]] = {(b, n): [] for b in backends for n in (1, 32)}
        for emb in backends.values():  # warm up (first calls allocate, JIT, plan)
            emb.embed(crops[:1])
            emb.embed(crops)
        keys = list(times)
        for r in range(args.repeats):
            for name, n in keys[r % len(keys):] + keys[: r % len(keys)]:  # rotating order
                t0 = time.perf_counter()
                backends[name].embed(crops[:n])
                times[(name, n)].append(time.perf_counter() - t0)
        for name in backends:
            one, many = (statistics.median(times[(name, n)]) for n in (1, 32))
            print(f"| {name} | {1 / one:.1f} | {32 / many:.1f} | {1000 * many / 32:.2f} |")
        print()
        for prefix in ckpts:  # the target: the default within 10 % of the fastest float form at batch 1
            p = prefix + " " * bool(prefix)
            rate = {n: 1 / statistics.median(times[(n, 1)]) for n in backends if n.startswith(p) and "int8" not in n}
            default = rate[f"{p}default (dtype='auto')"]
            for what, pool in (("of the checkpoint (PyTorch fp32 / bf16)", [n for n in rate if "eager" in n]),
                               ("of any float backend (exports included)", [n for n in rate if "default" not in n])):
                best = max(pool, key=rate.get)
                verdict = "met" if default >= 0.9 * rate[best] else "NOT met"
                print(f"{p}default at batch 1: {default:.1f} crops/s = {100 * default / rate[best]:.0f} % of the fastest "
                      f"float form {what}: {best.removeprefix(p)}, {rate[best]:.1f}; target >= 90 %: {verdict}")
    return 0


def _backends(prefix: str, ckpt: Path, tmp: Path, crops: list[np.ndarray]) -> dict[str, Embedder]:
    """The Embedder backends of one checkpoint, named ``prefix + backend``."""
    tmp.mkdir(parents=True, exist_ok=True)
    backends: dict[str, Embedder] = {f"{prefix}default (dtype='auto')": Embedder(ckpt, device="cpu"),
                                     f"{prefix}eager fp32": Embedder(ckpt, device="cpu", dtype=torch.float32)}
    if cpu_has_bf16():
        backends[f"{prefix}eager bf16"] = Embedder(ckpt, device="cpu", dtype=torch.bfloat16)
    for fmt, suffix in (("torchscript", ".ts"), ("onnx", ".onnx")):
        out = tmp / f"model{suffix}"
        if hareid_main(["export", str(ckpt), "--format", fmt, "--out", str(out)]) == 0:
            backends[f"{prefix}{fmt}"] = Embedder(out)
    try:  # int8 through ONNX Runtime, calibrated on the crops themselves (speed only)
        from hareid.api import load_model
        from hareid.deploy.quantize import quantize_int8

        model, _ = load_model(ckpt)
        calib = backends[f"{prefix}eager fp32"].preprocess(crops)
        out = quantize_int8(model, calib, num_calibration=32).save(tmp / "model.int8.onnx")
        backends[f"{prefix}onnx int8"] = Embedder(out)
    except Exception as e:  # onnx extra missing: the table says so
        print(f"({prefix}int8 skipped: {type(e).__name__}: {e})")
    return backends


if __name__ == "__main__":
    sys.exit(main())
