"""Where the int8 graph's time goes, and how far its convolutions are from the int8 convolution ceiling.

    python benchmarks/int8_profile.py [--checkpoint runs/demo/checkpoints/best.pt] [--threads 1]

Builds ``quantize_int8``'s default model (from ``--checkpoint``, else a random HA-CNN; speed does
not depend on the weights), runs it under ONNX Runtime's profiler at batch ``--batch`` and prints:

1. each operator type's share of the kernel time;
2. the quantised convolutions (``QLinearConv``) grouped by kernel size: time and GMAC/s
   (multiply-accumulates from the shapes the profiler records);
3. the **int8 convolution ceiling**: a 3x3 128->128 convolution on ``(batch, 128, 80, 32)``,
   quantised the same way and timed alone (the int8 twin of ``bench_model.py``'s bf16 ceiling),
   and what the whole graph would reach if every convolution ran at that speed and the rest stayed.

Kernel times include the profiler's per-node overhead (a few %); read shares and ratios.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _profiled_session(model: bytes, threads: int, profile_dir: str):
    """hareid's ONNX Runtime session settings (:func:`hareid.deploy.export.ort_session`) plus the profiler."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(profile_dir) / "int8")
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def ceiling(batch: int, threads: int, repeats: int) -> float:
    """GMAC/s of a 3x3 128->128 int8 convolution on (batch, 128, 80, 32), QDQ-quantised as hareid does."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from hareid.deploy.export import ort_session

    conv = torch.nn.Sequential(torch.nn.Conv2d(128, 128, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.relu(torch.randn(batch, 128, 80, 32))
    with tempfile.TemporaryDirectory() as tmp:
        fp32, q8 = f"{tmp}/conv.onnx", f"{tmp}/conv8.onnx"
        torch.onnx.export(conv, (x,), fp32, dynamo=False, opset_version=17, input_names=["x"])

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.left = [{"x": x.numpy()}]

            def get_next(self):
                return self.left.pop() if self.left else None

        quantize_static(fp32, q8, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["Conv", "Relu"])
        sess = ort_session(q8, threads)
        feed = {"x": x.numpy()}
        ms = _median_ms(lambda: sess.run(None, feed), repeats)
    return batch * 80 * 32 * 128 * 128 * 9 / ms / 1e6


def conv_weights(onnx_bytes: bytes) -> dict[str, tuple[int, ...]]:
    """Weight shape ``(O, C/g, kh, kw)`` of every Conv node of a QDQ model, by node name (ONNX Runtime
    names the fused ``QLinearConv`` after it, plus a ``_token_N`` suffix)."""
    import onnx

    graph = onnx.load_from_string(onnx_bytes).graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    out = {}
    for node in graph.node:
        if node.op_type == "Conv":
            w = node.input[1]
            src = producer.get(w)
            name = src.input[0] if src is not None and src.op_type == "DequantizeLinear" else w
            if name in shapes:
                out[node.name] = shapes[name]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=12, help="profiled runs (the first quarter is dropped)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from _machine import machine_line

    from hareid.deploy.quantize import quantize_int8

    if args.checkpoint:
        from hareid.api import load_model

        model, info = load_model(args.checkpoint, device="cpu")
        h, w = info["height"], info["width"]
    else:
        from hareid.models import build_model

        model, (h, w) = build_model("hacnn", num_classes=751).eval(), (160, 64)
    q = quantize_int8(model, torch.randn(64, 3, h, w), h, w, num_calibration=64, threads=args.threads)
    x = np.random.default_rng(0).normal(size=(args.batch, 3, h, w)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        sess = _profiled_session(q.onnx_bytes, args.threads, tmp)
        for _ in range(args.runs):
            sess.run(None, {"images": x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    kernels = kernels[len(kernels) // 4:]  # drop the first runs (warm-up)
    weights = conv_weights(q.onnx_bytes)
    runs = args.runs - args.runs // 4
    by_type: collections.Counter[str] = collections.Counter()
    convs: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])  # kernel -> [us, MACs]
    for e in kernels:
        op = e["args"]["op_name"]
        by_type[op] += e["dur"]
        if op == "QLinearConv":
            weight = weights.get(re.sub(r"_token_\d+$", "", e["name"][: -len("_kernel_time")]))
            if weight is None:
                continue  # not traceable to a Conv of the file: left out of the GMAC/s
            out = next(iter(e["args"]["output_type_shape"][0].values()))  # (B, H, W, O)
            key = f"{weight[2]}x{weight[3]}"
            convs[key][0] += e["dur"]
            convs[key][1] += float(np.prod(out)) * float(np.prod(weight[1:]))
    total_us = sum(by_type.values())
    ms = total_us / 1e3 / runs
    print()
    print(f"int8 graph ({h}x{w}, batch {args.batch}; {'checkpoint ' + args.checkpoint if args.checkpoint else 'random HA-CNN'}): "
          f"{ms:.1f} ms per batch in the profiler, {args.batch / ms * 1e3:.1f} images/s")
    print(machine_line())
    print()
    print("| operator | share of kernel time |")
    print("|---|---:|")
    for op, us in by_type.most_common(12):
        print(f"| {op} | {100 * us / total_us:.1f} % |")
    conv_us = sum(v[0] for v in convs.values())
    conv_macs = sum(v[1] for v in convs.values())
    print()
    print("| QLinearConv kernel | share of kernel time | GMAC/s |")
    print("|---|---:|---:|")
    for key, (us, macs) in sorted(convs.items(), key=lambda kv: -kv[1][0]):
        print(f"| {key} | {100 * us / total_us:.1f} % | {macs / us / 1e3:.0f} |")
    print(f"| all | {100 * conv_us / total_us:.1f} % | {conv_macs / conv_us / 1e3:.0f} |")
    top = ceiling(args.batch, args.threads, repeats=7)
    conv_at_ceiling_ms = conv_macs / runs / (top * 1e9) * 1e3
    rest_ms = (total_us - conv_us) / 1e3 / runs
    print()
    print(f"int8 convolution ceiling (3x3 128->128 on ({args.batch}, 128, 80, 32), alone): {top:.0f} GMAC/s; "
          f"the graph's convolutions run at {100 * conv_macs / conv_us / 1e3 / top:.0f} % of it")
    print(f"every convolution at the ceiling, the rest as measured: {conv_at_ceiling_ms + rest_ms:.1f} ms per batch "
          f"({args.batch / (conv_at_ceiling_ms + rest_ms) * 1e3:.1f} images/s, {ms / (conv_at_ceiling_ms + rest_ms):.2f}x "
          f"the graph as it runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
