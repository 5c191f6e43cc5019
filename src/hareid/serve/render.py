"""Why two people matched: one PNG strip per image from :mod:`hareid.analysis.visualize`.

Strip = the input, then per stage the soft-attention heatmap with that stage's hard-attention
regions drawn on it (``attention_panels(...)["combined"]``), upscaled for the page.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import torch
from PIL import Image

from hareid.analysis.visualize import attention_panels

GAP = 4  # pixels between panels


def _pil(t: torch.Tensor) -> Image.Image:
    return Image.fromarray(t.permute(1, 2, 0).cpu().numpy())


def attention_strips(model: torch.nn.Module, images: Sequence[torch.Tensor], scale: int = 2) -> list[bytes]:
    """Normalised images ``(3, H, W)`` -> one PNG (bytes) each: input | stage 1..S overlays."""
    device = next(model.parameters()).device
    batch = torch.stack(list(images)).to(device)  # (B, 3, H, W)
    panels = attention_panels(model, batch)
    out = []
    for i, first in enumerate(panels["input"]):
        tiles = [_pil(first), *(_pil(t) for t in panels["combined"][i])]
        w, h = tiles[0].size
        strip = Image.new("RGB", (len(tiles) * (w + GAP) - GAP, h), (255, 255, 255))
        for j, tile in enumerate(tiles):
            strip.paste(tile, (j * (w + GAP), 0))
        if scale > 1:
            strip = strip.resize((strip.width * scale, strip.height * scale), Image.Resampling.NEAREST)
        buf = io.BytesIO()
        strip.save(buf, format="PNG", optimize=False)
        out.append(buf.getvalue())
    return out
