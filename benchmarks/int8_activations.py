"""Where int8's remaining error comes from: groups of activation tensors raised to 16 bits.

    python benchmarks/int8_activations.py --checkpoint runs/demo/checkpoints/best.pt \\
        --images footage/second/crops --calib footage/first/crops

A diagnostic, not a deployable form: each row quantises the model as ``quantize_int8`` does (its
defaults, one calibration draw, seed 0) except that one group of activation tensors is stored in 16
bits (ONNX Runtime's ``TensorQuantOverrides``; with no 16-bit convolution kernel, ONNX Runtime runs
the convolutions reading them in float, so only the error column means anything). Groups, by the
node that produces the tensor in the exported graph: inside the Inception streams (a convolution
or ReLU output read only by convolutions), the block outputs and their inputs (Concat), the tensors
made by float ops (the attended stage inputs, the sampled regions), and everything (once more with
``weight_rounding="gptq"``: what is left is mostly the weights' error). Prints the top-1 agreement
with float32 (each crop queries all the others) and the mean and worst 1 - cosine.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import torch

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from int8_parity import calibration_draw, crop_args, embed, load, topk  # noqa: E402

Select = Callable[[Any, list[Any]], bool]  # (producer node or None, consumer nodes) -> 16 bits?

_ALL: Select = lambda p, cs: True  # noqa: E731
#: (row, which tensors get 16 bits, quantize_int8 options); the last row repeats "all" with GPTQ-rounded
#: weights, leaving (nearly) only the weights' error
ROWS: list[tuple[str, Select, dict[str, Any]]] = [
    ("none (the default int8 model)", lambda p, cs: False, {}),
    ("inside the streams (conv / ReLU outputs read by convs)", lambda p, cs: (
        p is not None and p.op_type in ("Conv", "Relu") and bool(cs) and all(c.op_type in ("Conv", "Relu") for c in cs)), {}),
    ("block outputs and their inputs (Concat)", lambda p, cs: (
        (p is not None and p.op_type == "Concat") or any(c.op_type == "Concat" for c in cs)), {}),
    ("made by float ops (stage inputs, regions)", lambda p, cs: (
        p is not None and p.op_type not in ("Conv", "Concat", "MaxPool", "Relu")), {}),
    ("all", _ALL, {}),
    ("all, weights rounded by GPTQ", _ALL, {"weight_rounding": "gptq"}),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    crop_args(ap, "crops (each crop queries the others)")
    args = ap.parse_args(argv)

    from _machine import machine_line
    from onnxruntime.quantization import QuantType

    import hareid.deploy.quantize as quantize
    from hareid.api import list_images, load_model

    model, info = load_model(args.checkpoint, device="cpu")
    h, w = info["height"], info["width"]
    images = load(sorted(list_images(args.images)), info)
    calib = calibration_draw(args.calib, args.calib_images, 0, info)
    ref = embed(model.eval(), images)
    ref_top = topk(ref, ref, 1, exclude_self=True)[:, 0]
    shared = quantize._shared_concat_ranges

    rows = []
    for group, select, options in ROWS:
        chosen: list[str] = []

        def overrides(graph: Any, ranges: dict, excluded: set, select: Select = select, chosen: list = chosen) -> dict:
            out = shared(graph, ranges, excluded)
            producer = {o: n for n in graph.node for o in n.output}
            consumers: dict[str, list[Any]] = {}
            for n in graph.node:
                for i in n.input:
                    consumers.setdefault(i, []).append(n)
            for t in ranges:
                if select(producer.get(t), consumers.get(t, [])):
                    chosen.append(t)
                    out[t] = [{**out.get(t, [{}])[0], "quant_type": QuantType.QUInt16}]
            return out

        with mock.patch.object(quantize, "_shared_concat_ranges", overrides):
            q = quantize.quantize_int8(model, calib, h, w, num_calibration=args.calib_images, **options)
        feats = embed(q, images)
        err = 1 - torch.nn.functional.cosine_similarity(feats, ref)
        agree = float((topk(feats, feats, 1, exclude_self=True)[:, 0] == ref_top).float().mean())
        rows.append((group, len(chosen), agree, float(err.mean()), float(err.max())))
        print(f"  {group}: {100 * agree:.2f} %", file=sys.stderr, flush=True)

    print()
    print(f"int8 with activation groups in 16 bits ({len(images)} crops of {args.images}; calibration "
          f"{args.calib_images} crops of {args.calib}; checkpoint {args.checkpoint})")
    print(machine_line())
    print()
    print("| activations in 16 bits | tensors | top-1 agreement | mean 1 - cos | worst 1 - cos |")
    print("|---|---:|---:|---:|---:|")
    for group, n, agree, err, worst in rows:
        print(f"| {group} | {n} | {100 * agree:.2f} % | {err:.2e} | {worst:.2e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
