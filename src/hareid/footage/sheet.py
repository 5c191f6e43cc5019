"""The contact sheet: one row per tracklet, its crops spread over its life, to check tracks by eye.

A row holds the tracklet's id, frame range and crop count, then up to ``per_row`` crops taken at
evenly spaced times, each scaled into a ``cell`` (height x width) box. A tracklet that holds two
people, or something that is not a person, shows at a glance.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["contact_sheet", "identity_sheet"]


def _paste(sheet: Image.Image, path: str | os.PathLike, x: int, y: int, cell: tuple[int, int]) -> None:
    """The image at ``path``, scaled to fit the ``cell`` (height, width) at ``(x, y)``, centred."""
    ch, cw = cell
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((cw, ch))
        sheet.paste(im, (x + (cw - im.width) // 2, y + (ch - im.height) // 2))


def contact_sheet(root: str | os.PathLike, meta: dict[str, Any], out: str | os.PathLike,
                  per_row: int = 12, cell: tuple[int, int] = (96, 40), label_width: int = 150,
                  max_rows: int = 400) -> Path:
    """Write the sheet of the tracklets in ``meta`` (crops relative to ``root``) to ``out`` (JPEG/PNG)."""
    root, out = Path(root), Path(out)
    rows = meta["tracklets"][:max_rows]
    ch, cw = cell
    pad = 4
    width = label_width + per_row * (cw + pad) + pad
    height = max(1, len(rows)) * (ch + pad) + pad + (16 if len(meta["tracklets"]) > max_rows else 0)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, t in enumerate(rows):
        y = pad + r * (ch + pad)
        crops = t["crops"]
        pick = np.unique(np.linspace(0, len(crops) - 1, min(per_row, len(crops))).round().astype(int))
        draw.text((4, y + 4), t["id"], fill=(0, 0, 0))
        draw.text((4, y + 20), f"frames {t['first_frame']}-{t['last_frame']}", fill=(60, 60, 60))
        draw.text((4, y + 36), f"{len(crops)} crops, {t['duration']:.1f} s", fill=(60, 60, 60))
        for k, i in enumerate(pick):
            _paste(sheet, root / crops[i]["file"], label_width + k * (cw + pad), y, cell)
    if len(meta["tracklets"]) > max_rows:
        draw.text((4, height - 14), f"... {len(meta['tracklets']) - max_rows} more tracklets not shown",
                  fill=(160, 0, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, quality=90)
    return out


def identity_sheet(rows: list[tuple[str, list[tuple[str, str]]]], out: str | os.PathLike,
                   cell: tuple[int, int] = (96, 40), label_width: int = 90, max_rows: int = 200) -> Path:
    """One row per identity: its label, then one crop per tracklet with a caption under it (lines
    split at ``"\n"``; ``rows = [(label, [(crop path, caption), ...]), ...]``); to check
    cross-camera links by eye."""
    out = Path(out)
    ch, cw = cell
    pad = 4
    cap = 12 * max([c.count("\n") + 1 for _, crops in rows[:max_rows] for _, c in crops] + [1])
    shown = rows[:max_rows]
    per_row = max([len(r[1]) for r in shown] + [1])
    width = label_width + per_row * (cw + pad) + pad
    height = max(1, len(shown)) * (ch + cap + pad) + pad
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (label, crops) in enumerate(shown):
        y = pad + r * (ch + cap + pad)
        draw.text((4, y + 4), label, fill=(0, 0, 0))
        for k, (path, caption) in enumerate(crops):
            x = label_width + k * (cw + pad)
            _paste(sheet, path, x, y, cell)
            for k_line, line in enumerate(caption.split("\n")):
                draw.text((x, y + ch + 12 * k_line), line[: max(1, cw // 6)], fill=(60, 60, 60))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, quality=90)
    return out
