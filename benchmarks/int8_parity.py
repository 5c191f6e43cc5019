"""Retrieval parity of the fast inference forms against float32: bf16 and int8 vs ``model.eval()``.

    # a labelled dataset (any layout hareid reads: synthetic, market1501, folder, csv, ...)
    python benchmarks/int8_parity.py --checkpoint runs/demo/checkpoints/best.pt --data ~/.cache/hareid/synthetic
    # any folder of crops, no labels (each image queries all the others)
    python benchmarks/int8_parity.py --checkpoint CKPT --images path/to/crops [--calib path/to/other/crops]

Embeds the query and gallery images with the float32 model (the reference), the bf16 inference
form (:func:`hareid.models.inference.optimize_for_inference`) and the int8 form
(:func:`hareid.deploy.quantize.quantize_int8`, calibrated on ``--calib-images`` images: the dataset's
training split, else ``--calib``, else the evaluated images themselves), then prints one markdown
table:

* top-1 agreement: share of queries whose nearest gallery image is the same as in float32;
* top-10 overlap: mean share of the float32 top-10 found in the form's top-10;
* Rank-1 and mAP (Market-1501 protocol) and their difference to float32, when the data has identities;
* the largest embedding difference and the smallest cosine to the float32 embedding.

Agreement and overlap use the plain ranking over the whole gallery (no same-camera filtering); the
metrics use the protocol's. Prints the CPU model with the table.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")


def embed(fn, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([fn(images[i:i + batch]).float() for i in range(0, len(images), batch)])


def load(paths: list[str], info: dict) -> torch.Tensor:
    """Decoded, resized, normalised (the model's mean/std) images ``(N, 3, H, W)``."""
    from hareid.api import load_images

    h, w, mean, std = info["height"], info["width"], info.get("mean"), info.get("std")
    return torch.cat([load_images(paths[i:i + 256], h, w, mean, std) for i in range(0, len(paths), 256)])


def crop_args(ap, images_help: str) -> None:
    """The arguments of the real-crop int8 studies: checkpoint, evaluated crops, calibration crops."""
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--images", required=True, help=images_help)
    ap.add_argument("--calib", required=True, help="calibration crops (other footage of the same cameras)")
    ap.add_argument("--calib-images", type=int, default=256)


def calibration_draw(folder: str, n: int, seed: int, info: dict) -> torch.Tensor:
    """``n`` crops of ``folder`` drawn with ``seed`` (shuffled in a fixed order), loaded as ``load`` does."""
    import random

    from hareid.api import list_images

    paths = sorted(list_images(folder))
    random.Random(seed).shuffle(paths)
    return load(paths[:n], info)


def topk(q: torch.Tensor, g: torch.Tensor, k: int, exclude_self: bool) -> torch.Tensor:
    d = torch.cdist(q, g)  # (Q, G)
    if exclude_self:
        d.fill_diagonal_(float("inf"))
    return d.topk(min(k, d.shape[1] - int(exclude_self)), dim=1, largest=False).indices


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="hareid (or torchreid HACNN) checkpoint")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="dataset root with query/gallery splits (layout auto-detected)")
    src.add_argument("--images", help="any folder of crops (recursive); no labels needed")
    ap.add_argument("--dataset", help="dataset layout name when auto-detection is not enough")
    ap.add_argument("--calib", help="folder of calibration crops (default: the dataset's train split)")
    ap.add_argument("--calib-images", type=int, default=256, help="calibration images for int8 (default 256)")
    ap.add_argument("--max-images", type=int, default=4000, help="cap on evaluated images (random subset)")
    ap.add_argument("--threads", type=int, default=0, help="torch / ONNX Runtime threads (0: torch default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from _machine import machine_line

    from hareid.api import list_images, load_model
    from hareid.deploy.quantize import quantize_int8
    from hareid.models.inference import optimize_for_inference

    model, info = load_model(args.checkpoint, device="cpu")
    h, w = info["height"], info["width"]
    rng = random.Random(args.seed)
    labelled = args.data is not None
    if labelled:
        from hareid.data import build_dataset, detect_dataset

        name = args.dataset or detect_dataset(args.data)
        if name is None:
            print(f"error: {args.data}: no known dataset layout; pass --dataset NAME or use --images", file=sys.stderr)
            return 2
        ds = build_dataset(name, args.data, verbose=False)
        query, gallery = list(ds.query), list(ds.gallery)
        calib_paths = [r.path for r in ds.train] or [r.path for r in gallery]
        what = f"{ds.name} at {args.data}: {len(query)} queries, {len(gallery)} gallery"
    else:
        paths = list_images(args.images)
        if len(paths) < 3:
            print(f"error: {args.images}: need at least 3 images", file=sys.stderr)
            return 2
        rng.shuffle(paths)
        paths = sorted(paths[: args.max_images])
        calib_paths = list(paths)
        what = f"{len(paths)} unlabelled images in {args.images} (each queries the others)"
    if args.calib:
        calib_paths = list_images(args.calib)
        what += f"; calibration from {args.calib}"
    rng.shuffle(calib_paths)
    calib = load(calib_paths[: args.calib_images], info)

    t0 = time.perf_counter()
    forms = {"fp32 (model.eval())": model.eval()}
    forms["bf16 (optimize_for_inference)"] = optimize_for_inference(model, dtype=torch.bfloat16)
    forms["int8 (quantize_int8, ONNX Runtime)"] = quantize_int8(model, calib, h, w, num_calibration=args.calib_images)
    print(f"(built the forms in {time.perf_counter() - t0:.0f} s; int8 calibrated on {len(calib)} images)",
          file=sys.stderr)

    if labelled:
        q_img, g_img = load([r.path for r in query], info), load([r.path for r in gallery], info)
    else:
        q_img = g_img = load(paths, info)
    feats = {}
    for name, fn in forms.items():
        t0 = time.perf_counter()
        qf = embed(fn, q_img)
        gf = qf if not labelled else embed(fn, g_img)
        feats[name] = (qf, gf)
        print(f"  {name}: embedded in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    ref_name = next(iter(forms))
    ref_q, ref_g = feats[ref_name]
    ref_top = topk(ref_q, ref_g, 10, exclude_self=not labelled)
    metrics = {}
    if labelled:
        from hareid.evaluate.distance import pairwise_distance
        from hareid.evaluate.metrics import evaluate_rank

        qp, qc = np.array([r.pid for r in query]), np.array([r.camid for r in query])
        gp, gc = np.array([r.pid for r in gallery]), np.array([r.camid for r in gallery])
        for name, (qf, gf) in feats.items():
            res = evaluate_rank(pairwise_distance(qf, gf), qp, gp, qc, gc)
            metrics[name] = (100 * float(res.cmc[0]), 100 * float(res.mAP))

    print()
    print(f"Retrieval parity vs float32 ({what}; {h}x{w}; checkpoint {args.checkpoint})")
    print(machine_line())
    print()
    head = "| form | top-1 agreement | top-10 overlap |"
    sep = "|---|---:|---:|"
    if labelled:
        head += " Rank-1 (%) | d Rank-1 | mAP (%) | d mAP |"
        sep += "---:|---:|---:|---:|"
    head += " max abs emb diff | min cosine |"
    sep += "---:|---:|"
    print(head)
    print(sep)
    for name, (qf, gf) in feats.items():
        top = topk(qf, gf, 10, exclude_self=not labelled)
        agree = (top[:, 0] == ref_top[:, 0]).float().mean().item()
        overlap = np.mean([len(set(a.tolist()) & set(b.tolist())) / ref_top.shape[1] for a, b in zip(top, ref_top)])
        diff = max((qf - ref_q).abs().max().item(), (gf - ref_g).abs().max().item())
        cos = min(torch.nn.functional.cosine_similarity(qf, ref_q).min().item(),
                  torch.nn.functional.cosine_similarity(gf, ref_g).min().item())
        row = f"| {name} | {100 * agree:.1f} % | {100 * overlap:.1f} % |"
        if labelled:
            r1, mp = metrics[name]
            r1_0, mp_0 = metrics[ref_name]
            row += f" {r1:.2f} | {r1 - r1_0:+.2f} | {mp:.2f} | {mp - mp_0:+.2f} |"
        row += f" {diff:.4f} | {cos:.5f} |"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
