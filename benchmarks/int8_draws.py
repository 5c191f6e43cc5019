"""int8 parity over several draws of the calibration images: how much of a top-1 agreement figure
is the draw, and what the weight rounding buys beyond it.

    python benchmarks/int8_draws.py --checkpoint runs/demo/checkpoints/best.pt \\
        --images footage/second/crops --calib footage/first/crops --draws 5

For each draw ``d`` the calibration crops are shuffled with seed ``d`` and the first
``--calib-images`` are used; every form in ``FORMS`` is quantised from the same draw, so the forms
are compared on equal terms. Prints, per form, the top-1 agreement with float32 (each crop queries
all the others; mean, min and max over the draws), the agreement up to the tracklet (crops in
per-tracklet folders), the nearest *other* tracklet (the query's own tracklet left out of its
gallery, as the ReID protocol leaves out same-camera matches of the same person; the tracklet of
the nearest remaining crop: the decision a search grouped by tracklet or a cross-camera link
makes), and the mean and worst 1 - cosine to the float32 embedding (means over draws). The bf16
inference form is measured once (no draw).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from int8_parity import calibration_draw, crop_args, embed, load  # noqa: E402

FORMS = {
    "default (nearest rounding, bias correction)": dict(),
    "weight_rounding='gptq' (and bias correction)": dict(weight_rounding="gptq"),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    crop_args(ap, "crops in per-tracklet subfolders (each crop queries the others)")
    ap.add_argument("--draws", type=int, default=5)
    args = ap.parse_args(argv)

    from _machine import machine_line

    from hareid.api import list_images, load_model
    from hareid.deploy.quantize import quantize_int8
    from hareid.models.inference import optimize_for_inference

    model, info = load_model(args.checkpoint, device="cpu")
    h, w = info["height"], info["width"]
    paths = sorted(list_images(args.images))
    images = load(paths, info)
    tracklets = torch.tensor([hash(str(Path(p).parent)) for p in paths])
    own = tracklets[:, None] == tracklets[None, :]  # (N, N): same tracklet

    def nearest(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each crop's nearest other crop, and its nearest crop of another tracklet."""
        d = torch.cdist(feats, feats)
        d.fill_diagonal_(float("inf"))
        return d.argmin(1), d.masked_fill(own, float("inf")).argmin(1)

    ref = embed(model.eval(), images)
    ref_top, ref_other = nearest(ref)

    def score(feats: torch.Tensor) -> tuple[float, float, float, float, float]:
        top, other = nearest(feats)
        err = 1 - torch.nn.functional.cosine_similarity(feats, ref)
        return (float((top == ref_top).float().mean()), float((tracklets[top] == tracklets[ref_top]).float().mean()),
                float((tracklets[other] == tracklets[ref_other]).float().mean()), float(err.mean()), float(err.max()))

    results: dict[str, list[tuple[float, ...]]] = {"bf16 (optimize_for_inference)": [
        score(embed(optimize_for_inference(model, dtype=torch.bfloat16), images))]}
    results.update({f: [] for f in FORMS})
    for d in range(args.draws):
        calib = calibration_draw(args.calib, args.calib_images, d, info)
        for form, kw in FORMS.items():
            results[form].append(score(embed(quantize_int8(model, calib, h, w, num_calibration=args.calib_images, **kw), images)))
            print(f"  draw {d}: {form}: {100 * results[form][-1][0]:.2f} %", file=sys.stderr, flush=True)

    print()
    print(f"int8 over {args.draws} calibration draws ({len(paths)} crops of {args.images}, {args.calib_images} "
          f"calibration crops of {args.calib} per draw; checkpoint {args.checkpoint})")
    print(machine_line())
    print()
    print("| form | top-1 agreement, mean | min - max | same tracklet | nearest other tracklet, mean | min - max "
          "| mean 1 - cos | worst 1 - cos |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for form, rows in results.items():
        agree, same, other, err, worst = zip(*rows, strict=True)
        print(f"| {form} | {100 * statistics.mean(agree):.2f} % | {100 * min(agree):.1f} - {100 * max(agree):.1f} % | "
              f"{100 * statistics.mean(same):.2f} % | {100 * statistics.mean(other):.2f} % | "
              f"{100 * min(other):.1f} - {100 * max(other):.1f} % | {statistics.mean(err):.2e} | {statistics.mean(worst):.2e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
