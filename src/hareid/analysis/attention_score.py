"""Does attention attend? Scores against the synthetic benchmark's ground truth.

For each image the synthetic benchmark knows the person's visible mask and the boxes of the body
parts (``annotations.json``, see :mod:`hareid.data.synthetic`). From those:

* **soft-attention mass on the person** (per stage): the channel-mean soft mask, resized to the
  image, as a distribution over pixels; ``mass_in = sum(a * mask) / sum(a)``. Compared with the
  mask's share of the image (``mask_share``, what a uniform map would score); ``lift = mass_in /
  mask_share`` (> 1: attention concentrates on the person). Soft masks are sigmoids that rarely reach 0,
  so we also score the *contrast* map ``a - min(a)`` per image, which shows where the
  mass above the floor goes (a constant map scores as uniform, lift 1).
* **hard-attention regions** (per stage that predicts them): ``person_cover`` = share of the
  person's mask inside the union of the T regions; ``on_person`` = share of region pixels on the
  person; and per region index, the body part with the best IoU and that IoU (mean over images).

:func:`score_model` scores any model with ``forward_attention``; :func:`score_run` scores a run
folder's best checkpoint against the same architecture untrained (same seed), writes
``RUN/attention_score.json`` and returns a printable table.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hareid.errors import DataError
from hareid.fileio import atomic_write_text

__all__ = ["format_scores", "score_model", "score_run"]


def _load_masks(root: Path, ann: dict[str, Any], rel_paths: Sequence[str], hw: tuple[int, int]) -> torch.Tensor:
    """Foreground masks ``(N, H, W)`` in {0, 1}, resized (nearest) to the model's input size."""
    from PIL import Image

    out = []
    for rel in rel_paths:
        m = Image.open(root / ann["images"][rel]["mask"]).convert("L").resize((hw[1], hw[0]), Image.NEAREST)
        out.append(torch.from_numpy(np.asarray(m) > 127))
    return torch.stack(out).float()


def _part_boxes(ann: dict[str, Any], rel_paths: Sequence[str], image_hw: tuple[int, int],
                hw: tuple[int, int]) -> list[dict[str, torch.Tensor]]:
    """Part boxes per image, rescaled from the stored image size to the model's input size."""
    sy, sx = hw[0] / image_hw[0], hw[1] / image_hw[1]
    scale = torch.tensor([sx, sy, sx, sy])
    return [{k: torch.tensor(v, dtype=torch.float32) * scale for k, v in ann["images"][r]["boxes"].items()}
            for r in rel_paths]


def _box_mask(boxes: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Binary masks ``(..., H, W)`` of pixel boxes ``(..., 4)`` (x1, y1, x2, y2; pixel centres inside)."""
    ys = torch.arange(hw[0], dtype=torch.float32) + 0.5  # (H,)
    xs = torch.arange(hw[1], dtype=torch.float32) + 0.5  # (W,)
    x1, y1, x2, y2 = (boxes[..., i, None, None] for i in range(4))
    inside_y = (ys[:, None] >= y1) & (ys[:, None] < y2)  # (..., H, 1)
    inside_x = (xs[None, :] >= x1) & (xs[None, :] < x2)  # (..., 1, W)
    return (inside_y & inside_x).float()


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes ``a (..., 4)`` and ``b (..., 4)`` (broadcast)."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda z: (z[..., 2:] - z[..., :2]).clamp(min=0).prod(-1)  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp(min=1e-6)


@torch.inference_mode()
def score_model(model: nn.Module, images: torch.Tensor, masks: torch.Tensor,
                parts: list[dict[str, torch.Tensor]], batch_size: int = 32) -> dict[str, Any]:
    """Attention-quality figures for ``images (N, 3, H, W)`` with ``masks (N, H, W)`` and part boxes."""
    from hareid.models.layers.attention import translations_to_boxes

    model.eval()
    device = next(model.parameters()).device
    hw = tuple(images.shape[-2:])
    soft_acc: dict[int, list[torch.Tensor]] = {}
    hard_acc: dict[int, list[torch.Tensor]] = {}
    for i in range(0, len(images), batch_size):
        out = model.forward_attention(images[i : i + batch_size].to(device))
        for s, soft in enumerate(out.get("soft") or []):
            if soft is None:
                continue
            a = F.interpolate(soft.float().mean(1, keepdim=True), size=hw, mode="bilinear",
                              align_corners=False)[:, 0].cpu()  # (b, H, W)
            soft_acc.setdefault(s, []).append(a)
        for s, t in enumerate(out.get("translations") or []):
            if t is None:
                continue
            hard_acc.setdefault(s, []).append(translations_to_boxes(t.float().cpu(), hw))  # (b, T, 4)
    share = masks.flatten(1).mean(1)  # (N,)
    result: dict[str, Any] = {"num_images": len(images), "mask_share": float(share.mean()), "soft": {}, "hard": {}}
    for s, chunks in sorted(soft_acc.items()):
        a = torch.cat(chunks)  # (N, H, W)
        contrast = a - a.flatten(1).min(1).values[:, None, None]
        flat = contrast.flatten(1).sum(1) <= 0  # a constant map has no contrast: score it as uniform
        contrast[flat] = 1.0
        mass = lambda m: ((m * masks).flatten(1).sum(1) / m.flatten(1).sum(1).clamp(min=1e-12))  # noqa: E731
        mass_in, mass_c = mass(a), mass(contrast)
        result["soft"][f"stage{s + 1}"] = {
            "mass_in": float(mass_in.mean()), "lift": float((mass_in / share).mean()),
            "contrast_mass_in": float(mass_c.mean()), "contrast_lift": float((mass_c / share).mean()),
        }
    names = sorted({k for p in parts for k in p})
    for s, chunks in sorted(hard_acc.items()):
        boxes = torch.cat(chunks)  # (N, T, 4)
        regions = _box_mask(boxes, hw)  # (N, T, H, W)
        union = regions.amax(1)  # (N, H, W)
        cover = (union * masks).flatten(1).sum(1) / masks.flatten(1).sum(1).clamp(min=1)
        on_person = (union * masks).flatten(1).sum(1) / union.flatten(1).sum(1).clamp(min=1)
        per_region = []
        for r in range(boxes.shape[1] if names else 0):  # part boxes: synthetic data only
            ious = torch.stack([
                torch.tensor([float(_iou(boxes[n, r], p[k])) if k in p else 0.0 for n, p in enumerate(parts)])
                for k in names
            ])  # (parts, N)
            mean_iou = ious.mean(1)
            best = int(mean_iou.argmax())
            per_region.append({"part": names[best], "iou": float(mean_iou[best])})
        result["hard"][f"stage{s + 1}"] = {
            "person_cover": float(cover.mean()), "on_person": float(on_person.mean()), "regions": per_region,
        }
    return result


def format_scores(scores: dict[str, dict[str, Any]]) -> str:
    """A markdown table per measure, one column per scored model (e.g. untrained / trained)."""
    models = list(scores)
    first = scores[models[0]]
    lines = [f"mask share of the image (uniform attention scores this): {first['mask_share']:.3f}", ""]
    lines += ["| soft attention | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for stage in first["soft"]:
        for key in ("mass_in", "lift", "contrast_mass_in", "contrast_lift"):
            vals = " | ".join(f"{scores[m]['soft'].get(stage, {}).get(key, float('nan')):.3f}" for m in models)
            lines.append(f"| {stage} {key} | {vals} |")
    if first["hard"]:
        lines += ["", "| hard regions | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
        for stage in first["hard"]:
            for key in ("person_cover", "on_person"):
                vals = " | ".join(f"{scores[m]['hard'][stage][key]:.3f}" for m in models)
                lines.append(f"| {stage} {key} | {vals} |")
            for r in range(len(first["hard"][stage]["regions"])):
                vals = " | ".join(
                    "{part} IoU {iou:.2f}".format(**scores[m]["hard"][stage]["regions"][r]) for m in models
                )
                lines.append(f"| {stage} region {r + 1} best part | {vals} |")
    return "\n".join(lines)


def score_run(run_dir: Path, num_images: int = 200, seed: int = 0) -> str:
    """Score a run's best checkpoint and the same model untrained; write ``attention_score.json``."""
    from hareid.data.loader import load_images
    from hareid.data.synthetic import load_annotations
    from hareid.models import build_model
    from hareid.models.loading import load_model

    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoints" / "best.pt"
    if not ckpt.is_file():
        ckpt = run_dir / "checkpoints" / "last.pt"
    trained, info = load_model(ckpt)
    data_cfg = (info.get("config") or {}).get("data", {})
    if data_cfg.get("name") != "synthetic":
        raise DataError(f"{run_dir}: attention scores need the synthetic benchmark's masks; "
                        f"this run used dataset {data_cfg.get('name')!r}")
    root = Path(data_cfg["root"])
    ann = load_annotations(root)
    rels = sorted(r for r, v in ann["images"].items() if v["split"] in ("query", "gallery") and v["pid"] > 0)
    rng = np.random.default_rng(seed)
    rels = [rels[i] for i in sorted(rng.choice(len(rels), size=min(num_images, len(rels)), replace=False))]
    hw = (info["height"], info["width"])
    images = load_images([root / r for r in rels], *hw)
    masks = _load_masks(root, ann, rels, hw)
    parts = _part_boxes(ann, rels, tuple(ann["image_size"]), hw)

    spec = dict(info["model"])
    torch.manual_seed(seed)
    untrained = build_model(spec.pop("name"), **spec).eval()
    scores = {"untrained": score_model(untrained, images, masks, parts),
              "trained": score_model(trained, images, masks, parts)}
    atomic_write_text(run_dir / "attention_score.json", json.dumps(scores, indent=2))
    return format_scores(scores)
