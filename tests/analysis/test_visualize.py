"""Unit tests for hareid.analysis.visualize: overlays, boxes, ranked lists, plots (fast, CPU, headless)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from hareid.analysis import visualize as viz
from tests.helpers.toys import TinyAttnModel, fake_boxes, write_images

# ----------------------------------------------------------------------------- stand-ins


def png_ok(path: Path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# ----------------------------------------------------------------------------- images


def test_denormalize_roundtrip() -> None:
    rgb = torch.randint(0, 256, (3, 8, 4), dtype=torch.uint8)
    mean, std = torch.tensor(viz.IMAGENET_MEAN).view(3, 1, 1), torch.tensor(viz.IMAGENET_STD).view(3, 1, 1)
    x = (rgb.float() / 255 - mean) / std
    assert torch.equal(viz.denormalize(x), rgb)
    assert torch.equal(viz.denormalize(rgb), rgb)
    with pytest.raises(ValueError, match="3, H, W"):
        viz.denormalize(torch.zeros(1, 8, 4))


def test_attention_overlay_size_and_mask_region() -> None:
    img = torch.full((3, 32, 16), 128, dtype=torch.uint8)
    mask = torch.zeros(2, 8, 4)
    mask[:, :4] = 1.0  # top half high
    out = viz.attention_overlay(img, mask)
    assert out.dtype == torch.uint8 and out.shape == img.shape
    top, bottom = out[:, 2].float().mean(1), out[:, 29].float().mean(1)
    assert top[0] > bottom[0] + 40  # jet: high -> red
    assert top[2] + 40 < bottom[2]  # low -> blue
    # a different mask gives a different overlay only where the masks differ
    mask2 = mask.clone()
    mask2[:, 6:, :] = 1.0
    out2 = viz.attention_overlay(img, mask2)
    assert torch.equal(out[:, :10], out2[:, :10])
    assert not torch.equal(out[:, 28:], out2[:, 28:])
    # (1, C, h, w) and (h, w) masks, constant mask does not divide by zero
    assert viz.attention_overlay(img, mask[None]).shape == img.shape
    assert viz.attention_overlay(img, torch.ones(8, 4)).shape == img.shape


def test_draw_regions_pixels() -> None:
    img = torch.zeros(3, 40, 20, dtype=torch.uint8)
    out = viz.draw_regions(img, torch.tensor([[2.0, 5.0, 12.0, 15.0]]), colors=[(255, 0, 0)], width=1)
    red = torch.tensor([255, 0, 0], dtype=torch.uint8)
    assert out.shape == img.shape
    for y, x in [(5, 8), (15, 8), (10, 2), (10, 12), (5, 2), (15, 12)]:  # edges and corners
        assert torch.equal(out[:, y, x], red), (y, x)
    for y, x in [(10, 7), (4, 8), (16, 8), (10, 1), (10, 13), (30, 8)]:  # inside / outside
        assert out[:, y, x].sum() == 0, (y, x)
    # regions translated past the border are clipped, labels accepted
    out = viz.draw_regions(img, torch.tensor([[-5.0, 30.0, 25.0, 60.0]]), labels=["r1"])
    assert out.shape == img.shape and out.sum() > 0


def test_plot_attention_grid_and_stages(tmp_path: Path) -> None:
    model = TinyAttnModel().train()
    x = torch.randn(3, 3, 64, 32)
    panels = viz.attention_panels(model, x, boxes_fn=fake_boxes)
    assert model.training  # mode restored
    assert len(panels["input"]) == 3 and len(panels["soft"][0]) == 3 and len(panels["regions"][2]) == 3
    assert panels["soft"][0][0].shape == (3, 64, 32)
    grid = png_ok(viz.plot_attention(model, x, tmp_path / "grid.png", boxes_fn=fake_boxes))
    one = png_ok(viz.plot_attention_stages(model, x[0], tmp_path / "one.png", boxes_fn=fake_boxes))
    assert grid.shape[0] > one.shape[0] * 0.8  # 3 rows vs 2 rows
    assert grid.shape[1] > grid.shape[0]  # 7 columns


def test_attention_overlay_fixed_value_range() -> None:
    """Min-max stretching shows a mask's floor as blue whatever its value; a fixed range (0, 1)
    shows 0.5 as jet's middle colour, so masks of different models compare."""
    import matplotlib

    img = torch.full((3, 16, 8), 128, dtype=torch.uint8)
    ramp = torch.linspace(0.5, 0.99, 4).view(4, 1).expand(4, 2)  # top row 0.5 (the floor)

    def expected(v: float) -> Tensor:  # Image.blend(img, heat, 0.5) of one pixel
        heat = np.round(np.asarray(matplotlib.colormaps["jet"](v)[:3]) * 255)
        return torch.tensor(np.floor(128 + (heat - 128) * 0.5 + 0.5))

    stretched = viz.attention_overlay(img, ramp)[:, 0, 0].float()
    fixed = viz.attention_overlay(img, ramp, value_range=(0.0, 1.0))[:, 0, 0].float()
    assert (stretched - expected(0.0)).abs().max() <= 1
    assert (fixed - expected(0.5)).abs().max() <= 1


def test_plot_attention_compare(tmp_path: Path) -> None:
    from hareid.models import build_model

    torch.manual_seed(0)
    models = {"relu": build_model("hacnn", 3), "spatial": build_model("hacnn", 3, soft_mask="spatial")}
    x = torch.randn(2, 3, 64, 32)
    one = png_ok(viz.plot_attention_compare({"relu": models["relu"]}, x, tmp_path / "one.png"))
    two = png_ok(viz.plot_attention_compare(models, x, tmp_path / "two.png"))
    assert two.shape[1] > one.shape[1] * 1.5  # 1 + 6 columns vs 1 + 3
    assert all(m.training for m in models.values())  # modes restored


def test_plot_attention_with_real_translations_to_boxes(tmp_path: Path) -> None:
    pytest.importorskip("hareid.models.layers.attention", reason="hareid.models.layers.attention not written yet")
    png_ok(viz.plot_attention(TinyAttnModel(), torch.randn(2, 3, 64, 32), tmp_path / "g.png"))


# ----------------------------------------------------------------------------- ranked lists

G_PIDS = np.array([1, 2, 1, -1, 1, 3])
G_CAMS = np.array([0, 1, 1, 2, 2, 0])
DIST = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])


def test_rank_gallery_kinds() -> None:
    items = viz.rank_gallery(DIST, 1, 0, G_PIDS, G_CAMS, k=6)
    assert [i.kind for i in items] == ["same_cam", "wrong", "match", "junk", "match", "wrong"]
    assert [i.rank for i in items] == [None, 1, 2, None, 3, 4]
    items = viz.rank_gallery(DIST, 1, 0, G_PIDS, G_CAMS, k=3, show_ignored=False)
    assert [(i.gallery_index, i.kind, i.rank) for i in items] == [
        (1, "wrong", 1), (2, "match", 2), (4, "match", 3)]


def test_border_colors() -> None:
    tile = Image.new("RGB", (10, 20), (255, 255, 255))
    for kind, color in [("match", (0, 170, 0)), ("wrong", (220, 0, 0)), ("junk", (150, 150, 150)),
                        ("same_cam", (150, 150, 150))]:
        b = np.asarray(viz.bordered(tile, kind, width=3))
        assert b.shape == (26, 16, 3)
        assert tuple(b[0, 0]) == color and tuple(b[13, 2]) == color and tuple(b[13, 8]) == (255,) * 3


def test_plot_ranked_lists_colors(tmp_path: Path) -> None:
    white = (255, 255, 255)
    q = write_images(tmp_path / "q", [white])
    g = write_images(tmp_path / "g", [white] * 6)
    arr = png_ok(viz.plot_ranked_lists(q, g, DIST[None], np.array([1]), G_PIDS, np.array([0]),
                                       G_CAMS, [0], k=6, out_path=tmp_path / "r.png"))
    colors = {tuple(c) for c in arr.reshape(-1, 3)}
    for c in viz.KIND_COLORS.values():
        assert c in colors
    # only wrong matches: no green border anywhere
    arr = png_ok(viz.plot_ranked_lists(q, g, DIST[None], np.array([7]), G_PIDS, np.array([0]),
                                       G_CAMS, [0], k=3, out_path=tmp_path / "w.png",
                                       show_ignored=False))
    colors = {tuple(c) for c in arr.reshape(-1, 3)}
    assert viz.KIND_COLORS["wrong"] in colors and viz.KIND_COLORS["match"] not in colors


# ----------------------------------------------------------------------------- plots


def test_plot_cmc(tmp_path: Path) -> None:
    cmc_a = np.linspace(0.6, 1.0, 50)
    png_ok(viz.plot_cmc({"a": cmc_a, "b <x>": list(cmc_a * 0.9)}, tmp_path / "cmc.png"))
    with pytest.raises(ValueError):
        viz.plot_cmc({}, tmp_path / "none.png")


def test_plot_training_curves(tmp_path: Path) -> None:
    lines = [json.dumps({"epoch": e, "iteration": 10 * e, "loss": 5.0 / e, "acc": 0.2 * e,
                         "lr": 3e-4, "images_per_s": 100.0}) for e in range(1, 4)]
    lines.append(json.dumps({"epoch": 3, "rank1": 0.5, "rank5": 0.7, "mAP": 0.3, "mINP": 0.1}))
    lines.append('{"epoch": 4, "loss"')  # torn last line
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(lines))
    train, evals = viz.read_metrics(path)
    assert len(train) == 3 and len(evals) == 1
    png_ok(viz.plot_training_curves(path, tmp_path / "curves.png"))
    path.write_text("")  # empty log still plots ("no data" panels)
    png_ok(viz.plot_training_curves(path, tmp_path / "empty.png"))
