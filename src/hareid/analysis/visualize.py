"""Pictures of what the model does: attention overlays, hard-attention boxes, ranked lists, plots.

Everything here is headless (``matplotlib.figure.Figure`` rendered by Agg, never pyplot, so the
global backend is left alone) and draws with well-kept libraries:
``torchvision.utils.draw_bounding_boxes`` for boxes, matplotlib colormaps and figures for heatmaps
and plots, Pillow for loading, resizing, blending and borders.

Images crossing this module are ``uint8`` tensors ``(3, H, W)`` (torchvision's drawing format);
model inputs are float tensors normalised with ``mean``/``std`` (ImageNet by default).

Ranked lists follow the Market-1501 protocol: gallery entries with the query's identity *and*
camera, and junk entries (pid -1), do not count. By default they are **shown** in their raw rank
position with a grey border and an "ignored" label (so a reader sees why a visually perfect top
hit does not count), without a protocol rank number; pass ``show_ignored=False`` to skip them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageOps
from torch import Tensor, nn
from torchvision.utils import draw_bounding_boxes

from hareid.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "KIND_COLORS",
    "RankedItem",
    "attention_overlay",
    "attention_panels",
    "bordered",
    "denormalize",
    "draw_regions",
    "load_tile",
    "plot_attention",
    "plot_attention_compare",
    "plot_attention_stages",
    "plot_cmc",
    "plot_ranked_lists",
    "plot_training_curves",
    "rank_gallery",
    "read_metrics",
]


#: Border colour per ranked-list entry kind.
KIND_COLORS: dict[str, tuple[int, int, int]] = {
    "match": (0, 170, 0),
    "wrong": (220, 0, 0),
    "same_cam": (150, 150, 150),
    "junk": (150, 150, 150),
}
_KIND_LABELS = {"match": "", "wrong": "", "same_cam": "same cam", "junk": "junk"}

#: One colour per hard-attention region (cycled when T is larger).
REGION_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 60, 60),
    (255, 200, 0),
    (60, 220, 60),
    (60, 160, 255),
    (230, 80, 255),
    (0, 230, 230),
)

BoxesFn = Callable[[Tensor, tuple[int, int], float], Tensor]


# ----------------------------------------------------------------------------- images


def denormalize(
    image: Tensor,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
) -> Tensor:
    """Turn a model input ``(3, H, W)`` back into a ``uint8`` image.

    ``uint8`` input is returned unchanged; float input is un-normalised with ``mean``/``std``
    (pass ``mean=None`` for float images already in [0, 1]).
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image tensor (3, H, W), got shape {tuple(image.shape)}")
    image = image.detach().cpu()
    if image.dtype == torch.uint8:
        return image
    x = image.float()
    if mean is not None and std is not None:
        x = x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _to_pil(image: Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def _from_pil(image: Image.Image) -> Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


def attention_overlay(
    image: Tensor,
    mask: Tensor,
    *,
    alpha: float = 0.5,
    cmap: str = "jet",
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
    value_range: tuple[float, float] | None = None,
) -> Tensor:
    """Overlay a soft-attention mask on an image as a heatmap.

    Args:
        image: ``(3, H, W)`` model input (normalised float) or ``uint8`` image.
        mask: ``(C, h, w)``, ``(1, C, h, w)`` or ``(h, w)`` attention; averaged over channels,
            bilinearly upsampled to ``(H, W)`` and min-max normalised (``value_range=(lo, hi)``:
            mapped from that fixed range instead, so masks of different models compare).
        alpha: heatmap weight in the blend.
    Returns:
        ``uint8`` tensor ``(3, H, W)``.
    """
    rgb = denormalize(image, mean, std)
    h, w = rgb.shape[1:]
    m = mask.detach().cpu().float()
    if m.dim() == 4:
        m = m[0]
    if m.dim() == 3:
        m = m.mean(dim=0)
    if m.dim() != 2:
        raise ValueError(f"expected a mask (C, h, w) or (h, w), got shape {tuple(mask.shape)}")
    m = F.interpolate(m[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    lo, hi = value_range or (float(m.min()), float(m.max()))
    m = ((m - lo) / (hi - lo)).clamp(0, 1) if hi - lo > 1e-8 else torch.zeros_like(m)
    heat = matplotlib.colormaps[cmap](m.numpy())[..., :3]
    heat_img = Image.fromarray((heat * 255).round().astype(np.uint8))
    return _from_pil(Image.blend(_to_pil(rgb), heat_img, alpha))


def draw_regions(
    image: Tensor,
    boxes: Tensor,
    labels: Sequence[str] | None = None,
    *,
    colors: Sequence[tuple[int, int, int]] | None = None,
    width: int = 2,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
) -> Tensor:
    """Draw hard-attention regions ``boxes`` ``(T, 4)`` (x1, y1, x2, y2 pixels) on an image.

    Boxes are clipped to the image (a region translated past the border is drawn up to the edge).
    Returns a ``uint8`` tensor ``(3, H, W)``.
    """
    rgb = denormalize(image, mean, std)
    h, w = rgb.shape[1:]
    b = boxes.detach().cpu().float().reshape(-1, 4).clone()
    b[:, 0::2] = b[:, 0::2].clamp(0, w - 1)
    b[:, 1::2] = b[:, 1::2].clamp(0, h - 1)
    if colors is None:
        colors = [REGION_COLORS[i % len(REGION_COLORS)] for i in range(len(b))]
    return draw_bounding_boxes(
        rgb, b, labels=list(labels) if labels is not None else None, colors=list(colors), width=width
    )


def load_tile(path: str | os.PathLike, size_hw: tuple[int, int] = (128, 64)) -> Image.Image:
    """Load an image as RGB resized to ``size_hw``; a grey "missing" tile when it can't be read."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB").resize((size_hw[1], size_hw[0]), Image.Resampling.BILINEAR)
    except (OSError, ValueError):
        return Image.new("RGB", (size_hw[1], size_hw[0]), (200, 200, 200))


def bordered(image: Image.Image, kind: str, width: int = 4) -> Image.Image:
    """Add a border coloured by ranked-list ``kind`` (see :data:`KIND_COLORS`)."""
    return ImageOps.expand(image, border=width, fill=KIND_COLORS[kind])


# ----------------------------------------------------------------------------- attention


def _boxes_fn_default() -> BoxesFn:
    from hareid.models.layers.attention import (
        translations_to_boxes,  # lazy: keeps this module light
    )

    return lambda t, hw, scale_h: translations_to_boxes(t, hw, scale_h=scale_h)


@torch.no_grad()
def attention_panels(
    model: nn.Module,
    images: Tensor,
    *,
    boxes_fn: BoxesFn | None = None,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
) -> dict[str, list]:
    """Run ``model.forward_attention`` and render its masks and regions.

    Returns ``{"input": [img per image], "soft": [[img per stage] per image],
    "regions": [[img per stage] per image], "combined": [[img per stage] per image]}`` with every
    img a ``uint8`` tensor ``(3, H, W)``. ``boxes_fn(t, (H, W), scale_h)`` defaults to
    :func:`hareid.models.layers.attention.translations_to_boxes`.
    """
    if images.dim() == 3:
        images = images[None]
    boxes_fn = boxes_fn or _boxes_fn_default()
    was_training = model.training
    model.eval()
    try:
        out = model.forward_attention(images)
    finally:
        model.train(was_training)
    h, w = images.shape[-2:]
    soft, trans = list(out["soft"]), list(out["translations"])
    boxes = [boxes_fn(t.float().cpu(), (h, w), 1.0 / t.shape[1]) for t in trans]
    panels: dict[str, list] = {"input": [], "soft": [], "regions": [], "combined": []}
    for i in range(images.shape[0]):
        rgb = denormalize(images[i], mean, std)
        panels["input"].append(rgb)
        s_imgs = [attention_overlay(rgb, m[i]) for m in soft]
        panels["soft"].append(s_imgs)
        panels["regions"].append([draw_regions(rgb, b[i]) for b in boxes])
        panels["combined"].append([draw_regions(s, b[i]) for s, b in zip(s_imgs, boxes)])
    return panels


def _show(ax: Axes, image: Tensor | Image.Image, title: str | None = None, **kw) -> None:
    arr = image.permute(1, 2, 0).numpy() if isinstance(image, Tensor) else np.asarray(image)
    ax.imshow(arr, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=kw.pop("fontsize", 8), **kw)


def _figure(size: tuple[float, float]) -> Figure:
    return Figure(figsize=size, facecolor="white")


def _save(fig: Figure, out_path: str | os.PathLike, dpi: int = 100) -> Path:
    from hareid.fileio import atomic_path

    out = Path(out_path)
    with atomic_path(out) as tmp:  # the format follows the target's suffix, not the temp file's
        fig.savefig(tmp, format=out.suffix.lstrip(".").lower() or "png", dpi=dpi, bbox_inches="tight",
                    facecolor="white")
    return out


def _panel_size(h: int, w: int, width_in: float = 1.1) -> tuple[float, float]:
    return width_in, width_in * h / w + 0.25


def plot_attention(
    model: nn.Module,
    images: Tensor,
    out_path: str | os.PathLike,
    *,
    boxes_fn: BoxesFn | None = None,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
    dpi: int = 100,
) -> Path:
    """Grid for a batch ``(B, 3, H, W)``: rows = images, columns = input | soft attention per
    stage | hard-attention regions per stage. Writes a PNG and returns its path."""
    p = attention_panels(model, images, boxes_fn=boxes_fn, mean=mean, std=std)
    n, s = len(p["input"]), len(p["soft"][0])
    h, w = p["input"][0].shape[1:]
    pw, ph = _panel_size(h, w)
    fig = _figure((pw * (1 + 2 * s), ph * n))
    axes = fig.subplots(n, 1 + 2 * s, squeeze=False)
    for i in range(n):
        top = i == 0
        _show(axes[i, 0], p["input"][i], "input" if top else None)
        for j in range(s):
            _show(axes[i, 1 + j], p["soft"][i][j], f"soft {j + 1}" if top else None)
            _show(axes[i, 1 + s + j], p["regions"][i][j], f"regions {j + 1}" if top else None)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return _save(fig, out_path, dpi)


def plot_attention_stages(
    model: nn.Module,
    image: Tensor,
    out_path: str | os.PathLike,
    *,
    boxes_fn: BoxesFn | None = None,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
    dpi: int = 100,
) -> Path:
    """One image ``(3, H, W)``, all stages side by side: top row soft attention, bottom row
    hard-attention regions, with the input in the first column. Writes a PNG."""
    p = attention_panels(model, image, boxes_fn=boxes_fn, mean=mean, std=std)
    s = len(p["soft"][0])
    h, w = p["input"][0].shape[1:]
    pw, ph = _panel_size(h, w, 1.3)
    fig = _figure((pw * (1 + s), ph * 2))
    axes = fig.subplots(2, 1 + s, squeeze=False)
    for r in range(2):
        _show(axes[r, 0], p["input"][0], "input")
    for j in range(s):
        _show(axes[0, 1 + j], p["soft"][0][j], f"stage {j + 1}\nsoft attention")
        _show(axes[1, 1 + j], p["regions"][0][j], f"stage {j + 1}\nhard regions")
    fig.subplots_adjust(wspace=0.08, hspace=0.15)
    return _save(fig, out_path, dpi)


def plot_attention_compare(
    models: Mapping[str, nn.Module],
    images: Tensor,
    out_path: str | os.PathLike,
    *,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
    dpi: int = 100,
) -> Path:
    """Soft attention of several models on the same images ``(B, 3, H, W)``, on one fixed colour
    scale (mask value 0 = blue ... 1 = red, channel mean), so a mask confined to [0.5, 1) looks it.

    Rows = images; columns = the input, then per model (in ``models`` order, titled by its key) the
    soft attention of each stage. Writes a PNG and returns its path.
    """
    if images.dim() == 3:
        images = images[None]
    columns: list[tuple[str, list[Tensor]]] = []  # (title, one overlay per image)
    for name, model in models.items():
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                soft = model.forward_attention(images.to(next(model.parameters()).device))["soft"]
        finally:
            model.train(was_training)
        for s, m in enumerate(soft):
            overlays = [attention_overlay(denormalize(images[i], mean, std), m[i], value_range=(0.0, 1.0))
                        for i in range(images.shape[0])]
            columns.append((f"{name}\nstage {s + 1}", overlays))
    n = images.shape[0]
    h, w = images.shape[-2:]
    pw, ph = _panel_size(h, w)
    fig = _figure((pw * (1 + len(columns)), ph * n + 0.3))
    axes = fig.subplots(n, 1 + len(columns), squeeze=False)
    for i in range(n):
        _show(axes[i, 0], denormalize(images[i], mean, std), "input" if i == 0 else None)
        for j, (title, overlays) in enumerate(columns):
            _show(axes[i, 1 + j], overlays[i], title if i == 0 else None, fontsize=7)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return _save(fig, out_path, dpi)


# ----------------------------------------------------------------------------- ranked lists


@dataclass(frozen=True)
class RankedItem:
    """One gallery entry in a query's ranked list."""

    gallery_index: int
    kind: str  #: "match" | "wrong" | "same_cam" | "junk"
    rank: int | None  #: 1-based protocol rank; None for ignored entries
    distance: float


def rank_gallery(
    distances: np.ndarray,
    q_pid: int,
    q_camid: int,
    g_pids: np.ndarray,
    g_camids: np.ndarray,
    k: int = 10,
    *,
    show_ignored: bool = True,
) -> list[RankedItem]:
    """The first ``k`` gallery entries by distance, labelled by kind.

    With ``show_ignored`` the list is the raw top-``k`` (ignored entries included, unranked);
    without, it is the top-``k`` entries that the protocol counts.
    """
    order = np.argsort(np.asarray(distances), kind="stable")
    g_pids, g_camids = np.asarray(g_pids), np.asarray(g_camids)
    items: list[RankedItem] = []
    rank = 0
    for g in order:
        if g_pids[g] == -1:
            kind = "junk"
        elif g_pids[g] == q_pid and g_camids[g] == q_camid:
            kind = "same_cam"
        else:
            kind = "match" if g_pids[g] == q_pid else "wrong"
        counted = kind in ("match", "wrong")
        if not counted and not show_ignored:
            continue
        if counted:
            rank += 1
        items.append(RankedItem(int(g), kind, rank if counted else None, float(distances[g])))
        if len(items) >= k:
            break
    return items


def plot_ranked_lists(
    query_paths: Sequence[str],
    gallery_paths: Sequence[str],
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    indices: Sequence[int],
    k: int = 10,
    *,
    out_path: str | os.PathLike,
    show_ignored: bool = True,
    titles: Sequence[str] | None = None,
    tile_hw: tuple[int, int] = (128, 64),
    dpi: int = 100,
) -> Path:
    """Rows = the queries ``indices``; each shows the query then its top-``k`` gallery images.

    Borders: green = same identity, red = different identity, grey = ignored by the protocol
    (same identity seen by the same camera, or junk pid -1; labelled, unranked). ``titles`` adds a
    line above each query (e.g. its AP). Writes a PNG and returns its path.
    """
    distmat = np.asarray(distmat)
    rows = [int(i) for i in indices]
    if not rows:
        raise ValueError("plot_ranked_lists: no query indices given")
    pw, ph = _panel_size(*tile_hw, 1.1)
    fig = _figure((pw * (k + 1.3), (ph + 0.45) * len(rows)))
    axes = fig.subplots(len(rows), k + 1, squeeze=False,
                        gridspec_kw={"width_ratios": [1.3] + [1.0] * k})
    for r, q in enumerate(rows):
        qt = ImageOps.expand(load_tile(query_paths[q], tile_hw), border=4, fill=(255, 255, 255))
        head = f"query\npid {int(q_pids[q])} cam {int(q_camids[q])}"
        head = f"{titles[r] if titles is not None else ''}\n{head}"
        _show(axes[r, 0], qt, head, fontweight="bold")
        items = rank_gallery(
            distmat[q], q_pids[q], q_camids[q], g_pids, g_camids, k, show_ignored=show_ignored
        )
        for c in range(k):
            ax = axes[r, 1 + c]
            if c >= len(items):
                ax.axis("off")
                continue
            it = items[c]
            tile = bordered(load_tile(gallery_paths[it.gallery_index], tile_hw), it.kind)
            top = f"#{it.rank}" if it.rank is not None else f"ignored: {_KIND_LABELS[it.kind]}"
            ident = f"pid {int(g_pids[it.gallery_index])} cam {int(g_camids[it.gallery_index])}"
            label = f"{top}\n{ident}\nd={it.distance:.3g}"
            color = np.array(KIND_COLORS[it.kind]) / 255
            _show(ax, tile, label, color=color if it.kind != "wrong" else (0.75, 0, 0), fontsize=7.5)
    fig.subplots_adjust(wspace=0.06, hspace=0.45)
    return _save(fig, out_path, dpi)


# ----------------------------------------------------------------------------- plots


def _as_percent(values: np.ndarray) -> np.ndarray:
    """Metrics are fractions in [0, 1] by contract; values already above 1 are taken as %."""
    v = np.asarray(values, dtype=float)
    return v if np.nanmax(v, initial=0.0) > 1.0 else v * 100


def plot_cmc(
    results: Mapping[str, Sequence[float] | np.ndarray],
    out_path: str | os.PathLike,
    *,
    max_rank: int | None = 50,
    dpi: int = 100,
) -> Path:
    """CMC curves of several runs (``name -> cmc``; cmc[r-1] = rank-r rate) on one plot."""
    if not results:
        raise ValueError("plot_cmc: no results given")
    fig = _figure((5.5, 3.8))
    ax = fig.subplots()
    for name, cmc in results.items():
        y = _as_percent(np.asarray(cmc, dtype=float))[: max_rank or None]
        x = np.arange(1, len(y) + 1)
        ax.plot(x, y, marker="o" if len(y) <= 20 else None, ms=3, lw=1.5,
                label=f"{name} (R1 {y[0]:.1f}%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_title("CMC")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(fig, out_path, dpi)


def read_metrics(path: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """Read ``metrics.jsonl`` into (training rows with "loss", evaluation rows with "rank1").

    Lines that are not JSON objects are skipped (a run killed mid-write leaves a torn last line).
    """
    train, evals = [], []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict):
            continue
        if "rank1" in row or "mAP" in row:
            evals.append(row)
        if "loss" in row:
            train.append(row)
    return train, evals


def plot_training_curves(
    metrics_jsonl_path: str | os.PathLike, out_path: str | os.PathLike, *, dpi: int = 100
) -> Path:
    """Loss, accuracy, learning rate, and Rank-1/mAP over epochs from ``metrics.jsonl``."""
    train, evals = read_metrics(metrics_jsonl_path)
    fig = _figure((11, 2.8))
    axes = fig.subplots(1, 4)

    def series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
        pts = [(r.get("epoch", i), r[key]) for i, r in enumerate(rows) if r.get(key) is not None]
        return [p[0] for p in pts], [float(p[1]) for p in pts]

    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], "acc", "train accuracy"),
                           (axes[2], "lr", "learning rate")):
        x, y = series(train, key)
        ax.set_title(title, fontsize=10)
        if not y:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            continue
        if key == "acc":
            y = list(_as_percent(np.array(y)))
            ax.set_ylabel("%")
        ax.plot(x, y, marker="o", ms=3)
        if key == "lr" and min(y) > 0 and max(y) / min(y) > 20:
            ax.set_yscale("log")
        elif key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax = axes[3]
    ax.set_title("evaluation", fontsize=10)
    plotted = False
    for key, label in (("rank1", "Rank-1"), ("mAP", "mAP")):
        x, y = series(evals, key)
        if y:
            ax.plot(x, _as_percent(np.array(y)), marker="o", ms=3, label=label)
            plotted = True
    if plotted:
        ax.set_ylabel("%")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out_path, dpi)
