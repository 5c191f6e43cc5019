"""What each step of hareid's int8 recipe buys: top-1 agreement with float32 on a labelled split and
on real crops, embedding error and speed, one row per step, measured in one run.

    python benchmarks/int8_recipe.py --checkpoint runs/demo/checkpoints/best.pt \\
        --data ~/.cache/hareid/synthetic-v1 \\
        --images footage/second/crops --calib footage/first/crops

Rows (each of 2-4 adds one change to the row above; the fourth is ``quantize_int8``'s default):

1. the first recipe: every op type ONNX Runtime can quantise (Add, Mul, Sigmoid, pooling, ...),
   the ops outside the blocks and the stem float;
2. only the convolution path quantised (:data:`hareid.deploy.quantize.QUANTIZED_OPS`);
3. each block's concatenated branches share one range (``shared_concat``);
4. bias correction of the int8 weights (``bias_correction``): the default;
5. the default with the weights rounded for each layer's output (``weight_rounding="gptq"``), an option;
6. the default with ranges averaged over calibration batches (``method="averaged"``), an option;
7. and 8. the frontier from the default: the local branch, then stage 1, kept float as well.

One draw of calibration images; ``benchmarks/int8_draws.py`` repeats the comparison of rows 4 and 5
over several draws.

Columns: top-1 agreement (the same nearest gallery image as float32; on ``--images`` each crop
queries all the others), on crops in per-tracklet folders also the agreement up to the tracklet
(the nearest crop from the same tracklet as float32's: near-duplicate frames count as one),
mean and worst 1 - cosine to the float32 embedding, and images/s at batch 32 (medians of interleaved
repeats, bf16 inference timed in the same loop). int8 is calibrated on the dataset's training
split for ``--data`` and on ``--calib`` (other crops of the same cameras) for ``--images``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from int8_parity import embed, load, topk  # noqa: E402

PREVIOUS_OPS = ("Conv", "MaxPool", "Concat", "Mul", "Add", "AveragePool", "GlobalAveragePool", "ReduceMean",
                "Relu", "Sigmoid")
PREVIOUS_KEEP = ("/Add*", "/Mul*", "/Concat*", "/stem/*")


def steps() -> dict[str, dict]:
    from hareid.deploy.quantize import KEEP_FLOAT

    return {
        "1. first recipe (all op types)": dict(op_types=PREVIOUS_OPS, keep_float=PREVIOUS_KEEP, shared_concat=False,
                                               bias_correction=False),
        "2. convolution path only": dict(shared_concat=False, bias_correction=False),
        "3. + shared concat ranges": dict(bias_correction=False),
        "4. + bias correction (default)": dict(),
        "5. default + GPTQ weight rounding (weight_rounding='gptq')": dict(weight_rounding="gptq"),
        "6. default + averaged ranges (method='averaged')": dict(method="averaged"),
        "7. default + local branch float": dict(keep_float=(*KEEP_FLOAT, "/local.*")),
        "8. default + local branch and stage 1 float": dict(keep_float=(*KEEP_FLOAT, "/local.*", "/stages.0/*")),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", help="labelled dataset root (query / gallery / train splits)")
    ap.add_argument("--images", help="folder of real crops, one subfolder per tracklet (each crop queries the others)")
    ap.add_argument("--calib", help="calibration crops for --images (other footage of the same cameras)")
    ap.add_argument("--calib-images", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    if not (args.data or args.images):
        ap.error("give --data, --images or both")

    from _machine import machine_line

    from hareid.api import list_images, load_model
    from hareid.deploy.quantize import quantize_int8
    from hareid.models.inference import optimize_for_inference

    model, info = load_model(args.checkpoint, device="cpu")
    h, w = info["height"], info["width"]
    rng = random.Random(0)
    sets = {}  # name -> (queries, gallery or None, calibration, tracklet ids or None)
    if args.data:
        from hareid.data import build_dataset, detect_dataset

        ds = build_dataset(detect_dataset(args.data), args.data, verbose=False)
        calib = [r.path for r in ds.train]
        rng.shuffle(calib)
        sets[ds.name] = (load([r.path for r in ds.query], info), load([r.path for r in ds.gallery], info),
                         load(calib[: args.calib_images], info), None)
    if args.images:
        paths = sorted(list_images(args.images))
        calib = list_images(args.calib) if args.calib else list(paths)
        rng.shuffle(calib)
        tracklets = torch.tensor([hash(str(Path(p).parent)) for p in paths])
        sets["real crops"] = (load(paths, info), None, load(calib[: args.calib_images], info), tracklets)

    ref = {}
    for name, (q, g, _, _) in sets.items():
        qf = embed(model.eval(), q)
        gf = embed(model.eval(), g) if g is not None else qf
        ref[name] = (qf, gf, topk(qf, gf, 1, exclude_self=g is None)[:, 0])

    def score(name: str, fn) -> tuple[float, float | None, float, float]:
        q, g, _, trk = sets[name]
        qf = embed(fn, q)
        gf = embed(fn, g) if g is not None else qf
        top = topk(qf, gf, 1, exclude_self=g is None)[:, 0]
        rq, rg, rtop = ref[name]
        agree = float((top == rtop).float().mean())
        same_tracklet = float((trk[top] == trk[rtop]).float().mean()) if trk is not None else None
        err = 1 - torch.nn.functional.cosine_similarity(torch.cat([qf, gf]), torch.cat([rq, rg]))
        return agree, same_tracklet, float(err.mean()), float(err.max())

    forms = {"bf16 (optimize_for_inference)": {n: optimize_for_inference(model, dtype=torch.bfloat16) for n in sets}}
    for step, kw in steps().items():
        t0 = time.perf_counter()
        forms[step] = {n: quantize_int8(model, s[2], h, w, num_calibration=args.calib_images, **kw) for n, s in sets.items()}
        print(f"  built {step} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    x = torch.randn(32, 3, h, w)
    first = next(iter(sets))
    times = {f: [] for f in forms}
    with torch.inference_mode():
        for f in forms.values():
            f[first](x)
        for _ in range(args.repeats):
            for name, f in forms.items():
                t0 = time.perf_counter()
                f[first](x)
                times[name].append(time.perf_counter() - t0)
    ips = {n: 32 / statistics.median(t) for n, t in times.items()}

    print()
    print(f"int8 recipe, step by step ({h}x{w}; checkpoint {args.checkpoint}; calibration {args.calib_images} images)")
    print(machine_line())
    print()
    cols = [c for n in sets for c in ([f"{n}: top-1 agreement"] + (["same tracklet"] if sets[n][3] is not None else [])
                                      + [f"{n}: mean 1 - cos", "worst"])]
    print("| form | " + " | ".join(cols) + " | images/s | vs bf16 |")
    print("|---|" + "---:|" * (len(cols) + 2))
    base = ips["bf16 (optimize_for_inference)"]
    for form, fns in forms.items():
        cells = []
        for n in sets:
            agree, same, err, worst = score(n, fns[n])
            cells += ([f"{100 * agree:.1f} %"] + ([f"{100 * same:.1f} %"] if same is not None else [])
                      + [f"{err:.2e}", f"{worst:.1e}"])
        print(f"| {form} | " + " | ".join(cells) + f" | {ips[form]:.0f} | {ips[form] / base:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
