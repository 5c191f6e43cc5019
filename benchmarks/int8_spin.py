"""ONNX Runtime's spinning threads against the PyTorch work of the same process.

    python benchmarks/int8_spin.py --checkpoint runs/demo/checkpoints/best.pt

Times, interleaved (batch 32, median of ``--repeats``): the int8 model in a session whose
intra-op threads spin after each run (ONNX Runtime's default) and in one that does not (hareid's
``Int8Model``), the bf16 inference form right after each, and the bf16 form alone after a pause.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import machine_line  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    import onnxruntime as ort

    from hareid.deploy.quantize import quantize_int8
    from hareid.models.inference import optimize_for_inference
    from hareid.models.loading import load_model

    print(machine_line())
    model, info = load_model(args.checkpoint, device="cpu")
    h, w = info["height"], info["width"]
    x = torch.randn(32, 3, h, w)
    q = quantize_int8(model, torch.randn(64, 3, h, w), h, w)
    bf16 = optimize_for_inference(model, dtype=torch.bfloat16)
    sessions = {}
    for spin in ("1", "0"):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
        sessions[spin] = ort.InferenceSession(q.onnx_bytes, opts, providers=["CPUExecutionProvider"])
    feed = {sessions["1"].get_inputs()[0].name: x.numpy()}

    def int8(spin: str) -> float:
        t0 = time.perf_counter()
        sessions[spin].run(None, feed)
        return time.perf_counter() - t0

    def torch_bf16() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            bf16(x)
        return time.perf_counter() - t0

    for _ in range(2):
        int8("1"), int8("0"), torch_bf16()
    res: dict[str, list[float]] = {k: [] for k in ("int8, threads spin (ONNX Runtime's default)",
                                                   "int8, no spinning (hareid)", "bf16 right after int8 that spins",
                                                   "bf16 right after int8 without spinning", "bf16 alone")}
    keys = list(res)
    for _ in range(args.repeats):
        res[keys[0]].append(int8("1"))
        res[keys[2]].append(torch_bf16())
        res[keys[1]].append(int8("0"))
        res[keys[3]].append(torch_bf16())
        time.sleep(0.5)
        res[keys[4]].append(torch_bf16())
    print(f"\n| form | images/s (batch 32, {h}x{w}, median of {args.repeats}) |\n|---|---:|")
    for k, v in res.items():
        print(f"| {k} | {32 / statistics.median(v):.0f} |")


if __name__ == "__main__":
    main()
