"""Does soft attention look at the person? Checkpoints scored on person masks, side by side.

    python benchmarks/bench_attention_real.py --tracklets runs/footage/second \\
        --synthetic ~/.cache/hareid/synthetic-v2 \\
        --checkpoint "demo v1=runs/demo/checkpoints/best.pt" --checkpoint "demo v2=runs/demo_v2/checkpoints/best.pt"

Two sets of images with masks: real pedestrian crops of a ``hareid tracklets`` folder (masks =
the background model's foreground inside each box, see docs/footage.md) and the synthetic
benchmark's query/gallery images (masks drawn with the person). For every checkpoint, trained
and untrained (same architecture, seed 0), prints per stage the soft attention's
``contrast_lift``: the share of the mask's mass above its own minimum that lies on the person,
divided by the person's share of the image (1.0 = no preference; issue 14's target: >= 1.5 at
stages 2 and 3), and the hard regions' share of pixels on the person.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _machine import machine_line

from hareid.analysis.attention_score import _load_masks, score_model
from hareid.api import load_images, load_model
from hareid.models import build_model


def real_set(root: str, n: int, hw: tuple[int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    from hareid.footage.masks import crop_mask_pairs

    pairs = crop_mask_pairs(root)
    if not pairs:
        raise SystemExit(f"{root}: no crop has a mask; write the tracklets with --masks")
    rng = np.random.default_rng(seed)
    pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), size=min(n, len(pairs)), replace=False))]
    images = load_images([c for c, _ in pairs], *hw)
    masks = torch.stack([torch.from_numpy(np.asarray(Image.open(m).convert("L").resize((hw[1], hw[0]), Image.NEAREST)) > 127)
                         for _, m in pairs]).float()
    return images, masks


def synthetic_set(root: str, n: int, hw: tuple[int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from pathlib import Path

    from hareid.data.synthetic import load_annotations

    ann = load_annotations(root)
    rels = sorted(r for r, v in ann["images"].items() if v["split"] in ("query", "gallery") and v["pid"] > 0)
    rng = np.random.default_rng(seed)
    rels = [rels[i] for i in sorted(rng.choice(len(rels), size=min(n, len(rels)), replace=False))]
    return load_images([Path(root) / r for r in rels], *hw), _load_masks(Path(root), ann, rels, hw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", action="append", required=True, metavar="NAME=PATH")
    ap.add_argument("--tracklets", help="a hareid tracklets folder written with masks")
    ap.add_argument("--synthetic", help="a synthetic benchmark folder (either version)")
    ap.add_argument("--num-images", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(machine_line())
    sets = [(name, root) for name, root in (("real crops", a.tracklets), ("synthetic", a.synthetic)) if root]
    print("| model | images | person share | soft contrast lift, stage 1 / 2 / 3 | soft lift | hard on person, 1 / 2 / 3 |")
    print("|---|---|---:|---|---|---|")
    for item in a.checkpoint:
        name, _, path = item.partition("=")
        trained, info = load_model(path)
        spec = dict(info["model"])
        torch.manual_seed(a.seed)
        untrained = build_model(spec.pop("name"), **spec).eval()
        hw = (int(info["height"]), int(info["width"]))
        for set_name, root in sets:
            images, masks = (real_set if set_name == "real crops" else synthetic_set)(root, a.num_images, hw, a.seed)
            for label, model in (("untrained", untrained), ("trained", trained)):
                with torch.no_grad():
                    r = score_model(model, images, masks, [{} for _ in range(len(images))])
                soft = r["soft"]
                cl = " / ".join(f"{soft[k]['contrast_lift']:.2f}" for k in sorted(soft)) or "-"
                lift = " / ".join(f"{soft[k]['lift']:.2f}" for k in sorted(soft)) or "-"
                hard = " / ".join(f"{v['on_person']:.2f}" for _, v in sorted(r["hard"].items())) or "-"
                print(f"| {name} ({label}) | {set_name} ({len(images)}) | {r['mask_share']:.3f} | {cl} | {lift} | {hard} |",
                      flush=True)


if __name__ == "__main__":
    main()
