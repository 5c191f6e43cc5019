"""Which layers cost int8 its top-1 agreement, and the speed / agreement frontier of keeping them float.

    python benchmarks/int8_sensitivity.py --checkpoint runs/demo/checkpoints/best.pt --data ~/.cache/hareid/synthetic-v1
    python benchmarks/int8_sensitivity.py --checkpoint CKPT --images path/to/crops --calib path/to/other/crops

1. Calibration: int8 with every convolution quantised, once per ``--methods`` (minmax, percentile,
   entropy: ONNX Runtime's calibrators), on ``--calib-images`` images (the dataset's training split,
   else ``--calib``, else the evaluated images).
2. Sensitivity (best method of step 1): for each group of convolutions (the stem; per stage the
   InceptionA and InceptionB blocks, the soft-attention conv and the local branch) an int8 model
   with only that group in float (also the Add / Mul / Concat nodes outside the blocks); its mean embedding error (1 - cosine to float32) against the
   all-int8 model's says how much of the int8 error the group causes.
3. Frontier: the groups kept in float greedily, most sensitive first (k = 0 .. ``--max-float``),
   each model's top-1 agreement with float32 (same nearest gallery image; the definition of
   ``int8_parity.py``), top-10 overlap, and images/s at batch 32 (timed interleaved with hareid's
   bf16 inference form, whose ratio to the peer's best is in ``bench_model.py``).

Prints the CPU line with every table; the CPU may be shared: speeds are medians of interleaved
repeats, compare them within this run only.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from int8_parity import embed, load, topk  # noqa: E402

TOP_LEVEL = "top-level Add / Mul / Concat"


def group_of(node: str) -> str:
    """Group pattern of a Conv node name: ``/stem``, ``/stages.1/stages.1.0`` (a block), ``/attn.2``,
    ``/local.0`` (hareid's inference-graph names); anything else is its own group."""
    m = re.match(r"^(/stem|/stages\.\d+/stages\.\d+\.\d+|/attn\.\d+|/local\.\d+)/", node)
    return m.group(1) if m else node


def agreement(feats: tuple[torch.Tensor, torch.Tensor], ref_top: torch.Tensor, exclude_self: bool) -> tuple[float, float]:
    top = topk(*feats, 10, exclude_self=exclude_self)
    agree = (top[:, 0] == ref_top[:, 0]).float().mean().item()
    overlap = float(np.mean([len(set(a.tolist()) & set(b.tolist())) / ref_top.shape[1] for a, b in zip(top, ref_top)]))
    return agree, overlap


def cos_err(feats: tuple[torch.Tensor, torch.Tensor], ref: tuple[torch.Tensor, torch.Tensor]) -> float:
    f, r = torch.cat(feats), torch.cat(ref)
    return float((1 - torch.nn.functional.cosine_similarity(f, r)).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="dataset root with query/gallery splits")
    src.add_argument("--images", help="any folder of crops (each queries the others)")
    ap.add_argument("--calib", help="folder of calibration crops (default: the train split)")
    ap.add_argument("--calib-images", type=int, default=256)
    ap.add_argument("--methods", nargs="+", default=["minmax", "percentile", "entropy"])
    ap.add_argument("--probe-images", type=int, default=512, help="images for the per-group sensitivity")
    ap.add_argument("--max-images", type=int, default=4000, help="cap on evaluated images of --images")
    ap.add_argument("--max-float", type=int, default=5, help="largest number of groups kept float on the frontier")
    ap.add_argument("--repeats", type=int, default=5, help="timed batches per form (median)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from _machine import machine_line

    from hareid.api import list_images, load_model
    from hareid.deploy.quantize import quantizable_nodes, quantize_int8
    from hareid.models.inference import optimize_for_inference

    model, info = load_model(args.checkpoint, device="cpu")
    h, w = info["height"], info["width"]
    rng = random.Random(args.seed)
    labelled = args.data is not None
    if labelled:
        from hareid.data import build_dataset, detect_dataset

        ds = build_dataset(detect_dataset(args.data), args.data, verbose=False)
        q_paths, g_paths = [r.path for r in ds.query], [r.path for r in ds.gallery]
        calib_paths = [r.path for r in ds.train] or list(g_paths)
        what = f"{ds.name}: {len(q_paths)} queries, {len(g_paths)} gallery"
    else:
        paths = list_images(args.images)
        rng.shuffle(paths)
        q_paths = g_paths = sorted(paths[: args.max_images])
        calib_paths = list(q_paths)
        what = f"{len(q_paths)} unlabelled crops in {args.images} (each queries the others)"
    if args.calib:
        calib_paths = list_images(args.calib)
        what += f"; calibration from {args.calib}"
    rng.shuffle(calib_paths)
    calib = load(calib_paths[: args.calib_images], info)
    q_img = load(q_paths, info)
    g_img = load(g_paths, info) if labelled else q_img
    probe = torch.cat([q_img, g_img])[torch.randperm(len(q_img) + len(g_img), generator=torch.Generator().manual_seed(0))[: args.probe_images]]

    def feats_of(fn) -> tuple[torch.Tensor, torch.Tensor]:
        qf = embed(fn, q_img)
        return qf, (embed(fn, g_img) if labelled else qf)

    ref = feats_of(model.eval())
    ref_top = topk(*ref, 10, exclude_self=not labelled)
    ref_probe = embed(model.eval(), probe)
    bf16 = optimize_for_inference(model, dtype=torch.bfloat16)
    tmp = Path(tempfile.mkdtemp(prefix="hareid-int8-sens-"))

    def build(keep: tuple[str, ...], method: str):
        return quantize_int8(model, calib, h, w, num_calibration=len(calib), method=method, keep_float=keep,
                             calibration_cache=tmp / f"{method}.json")

    print(machine_line())
    print(f"{what}; {h}x{w}; checkpoint {args.checkpoint}; calibration {len(calib)} images")
    # 1. calibration methods, everything int8
    print("\n### Calibration (every convolution int8)\n")
    print("| method | top-1 agreement | top-10 overlap | mean 1-cos | build s |")
    print("|---|---:|---:|---:|---:|")
    best, best_score = args.methods[0], -1.0
    for method in args.methods:
        t0 = time.perf_counter()
        q = build((), method)
        t_build = time.perf_counter() - t0
        f = feats_of(q)
        a, o = agreement(f, ref_top, not labelled)
        err = cos_err(f, ref)
        print(f"| {method} | {100 * a:.1f} % | {100 * o:.1f} % | {err:.2e} | {t_build:.0f} |", flush=True)
        if a - err > best_score:
            best, best_score = method, a - err
    # 2. sensitivity per group
    nodes = quantizable_nodes(model, h, w)
    # a block's convolutions by their prefix; a convolution outside the blocks by its own name
    groups = {g: ((g,) if g in nodes else (g + "/*",)) for g in dict.fromkeys(group_of(n) for n in nodes)}
    groups[TOP_LEVEL] = ("/Add*", "/Mul*", "/Concat*")  # local-branch sums, region concat (outside blocks)
    base_err = cos_err((embed(build((), best), probe),), (ref_probe,))
    sens = {}
    for g, pats in groups.items():
        q = build(pats, best)
        sens[g] = base_err - cos_err((embed(q, probe),), (ref_probe,))
    order = sorted(groups, key=sens.get, reverse=True)
    print(f"\n### Sensitivity ({best}; {len(probe)} probe images; all-int8 mean 1-cos {base_err:.2e})\n")
    print("| group kept float | share of the int8 error removed |")
    print("|---|---:|")
    for g in order:
        print(f"| {g} | {100 * sens[g] / base_err:.1f} % |")
    # 3. frontier
    forms = {"bf16 (optimize_for_inference)": bf16}
    keeps = {}
    for k in range(args.max_float + 1):
        keep = tuple(p for g in order[:k] for p in groups[g])
        name = f"int8, {k} groups float" + (f" (+{order[k - 1]})" if k else "")
        forms[name], keeps[name] = build(keep, best), keep
    x = torch.randn(32, 3, h, w)
    times = {n: [] for n in forms}
    with torch.inference_mode():
        for fn in forms.values():
            fn(x)
        for _ in range(args.repeats):
            for n, fn in forms.items():
                t0 = time.perf_counter()
                fn(x)
                times[n].append(time.perf_counter() - t0)
    ips = {n: 32 / statistics.median(t) for n, t in times.items()}
    base = ips["bf16 (optimize_for_inference)"]
    print(f"\n### Frontier ({best}; groups kept float most sensitive first; batch 32 images/s, median of "
          f"{args.repeats} interleaved)\n")
    print("| form | top-1 agreement | top-10 overlap | mean 1-cos | images/s | vs bf16 |")
    print("|---|---:|---:|---:|---:|---:|")
    for n, fn in forms.items():
        f = feats_of(fn)
        a, o = agreement(f, ref_top, not labelled)
        print(f"| {n} | {100 * a:.1f} % | {100 * o:.1f} % | {cos_err(f, ref):.2e} | {ips[n]:.0f} | {ips[n] / base:.2f}x |",
              flush=True)
    for n, keep in keeps.items():
        print(f"{n}: keep_float={list(keep)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
