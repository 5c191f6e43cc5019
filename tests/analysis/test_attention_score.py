"""Attention-quality scores on hand-made cases (a stand-in model with known attention)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hareid.analysis.ablation import DEFAULT_VARIANTS, VARIANTS, format_ablation
from hareid.analysis.attention_score import _box_mask, score_model


class _Known(nn.Module):
    """forward_attention returns a fixed soft mask and fixed translations (T=2)."""

    def __init__(self, soft: torch.Tensor, t: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.soft, self.t = soft, t

    def forward_attention(self, x):
        b = x.shape[0]
        return {"soft": [self.soft.expand(b, 3, -1, -1)], "translations": [self.t.expand(b, -1, -1)]}


def test_scores_match_hand_computed_values():
    h, w = 8, 4
    mask = torch.zeros(1, h, w)
    mask[:, :4, :] = 1  # the person fills the top half: mask share 0.5
    soft = torch.full((1, 1, h, w), 0.25)
    soft[..., :4, :] = 0.75  # 3x more attention on the person
    t = torch.tensor([[[0.0, -0.5], [0.0, 0.5]]])  # two stripes: top half and bottom half
    parts = [{"head": torch.tensor([0.0, 0.0, 4.0, 4.0]), "legs": torch.tensor([0.0, 4.0, 4.0, 8.0])}]
    res = score_model(_Known(soft, t), torch.zeros(1, 3, h, w), mask, parts)
    assert res["mask_share"] == pytest.approx(0.5)
    s = res["soft"]["stage1"]
    assert s["mass_in"] == pytest.approx(0.75)  # 16*0.75 / (16*0.75 + 16*0.25)
    assert s["lift"] == pytest.approx(1.5)
    assert s["contrast_mass_in"] == pytest.approx(1.0)  # above the floor, all mass is on the person
    hard = res["hard"]["stage1"]
    assert hard["person_cover"] == pytest.approx(1.0)
    assert hard["on_person"] == pytest.approx(0.5)
    assert hard["regions"][0] == {"part": "head", "iou": pytest.approx(1.0)}
    assert hard["regions"][1] == {"part": "legs", "iou": pytest.approx(1.0)}


def test_box_mask_counts_pixel_centres():
    m = _box_mask(torch.tensor([[1.0, 2.0, 3.0, 5.0]]), (6, 4))
    assert m.sum() == 2 * 3 and m[0, 2:5, 1:3].all()


def test_ablation_table_mean_and_sample_std():
    rows = [{"variant": "full", "seed": s, "rank1": r, "mAP": m}
            for s, (r, m) in enumerate([(0.5, 0.3), (0.7, 0.5)])]
    table = format_ablation(rows)
    assert "| full | 2 | 60.0 ± 14.1 | 40.0 ± 14.1 |" in table
    assert set(DEFAULT_VARIANTS) == {"none", "soft", "hard", "full", "no_cross"} and set(DEFAULT_VARIANTS) < set(VARIANTS)


def test_constant_soft_map_scores_as_uniform():
    h, w = 6, 4
    mask = torch.zeros(1, h, w)
    mask[:, :2] = 1
    soft = torch.full((1, 1, h, w), 0.5)
    t = torch.tensor([[[0.0, -0.5], [0.0, 0.5]]])
    res = score_model(_Known(soft, t), torch.zeros(1, 3, h, w), mask, [{"head": torch.zeros(4)}])
    assert res["soft"]["stage1"]["contrast_lift"] == pytest.approx(1.0)
    assert res["soft"]["stage1"]["lift"] == pytest.approx(1.0)
