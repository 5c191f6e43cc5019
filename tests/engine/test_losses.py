"""Losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from hareid.engine.losses import CrossEntropyLabelSmooth, ReIDLoss, TripletLoss


def test_label_smoothing_cross_entropy_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    eps, k = 0.1, 3
    logz = math.log(math.exp(2.0) + math.exp(0.0) + math.exp(-1.0))
    logp = [2.0 - logz, 0.0 - logz, -1.0 - logz]
    # target class 0: q = (1 - eps) * one_hot + eps / K
    q = [1 - eps + eps / k, eps / k, eps / k]
    expected = -sum(qi * lp for qi, lp in zip(q, logp))
    got = CrossEntropyLabelSmooth(num_classes=3, epsilon=eps)(logits, torch.tensor([0]))
    assert got.item() == pytest.approx(expected, abs=1e-6)
    plain = CrossEntropyLabelSmooth(epsilon=0.0)(logits, torch.tensor([0]))
    assert plain.item() == pytest.approx(-logp[0], abs=1e-6)
    with pytest.raises(ValueError):
        CrossEntropyLabelSmooth(num_classes=4)(logits, torch.tensor([0]))


def test_batch_hard_triplet_by_hand() -> None:
    # 1-D points: id 0 at 0 and 1, id 1 at 3 and 7
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]], requires_grad=True)
    y = torch.tensor([0, 0, 1, 1])
    # anchor 0: d_ap = 1, d_an = 3 -> relu(1 - 3 + .3) = 0
    # anchor 1: d_ap = 1, d_an = 2 -> 0
    # anchor 2: d_ap = 4, d_an = 2 -> 2.3
    # anchor 3: d_ap = 4, d_an = 6 -> 0
    loss = TripletLoss(margin=0.3)(x, y)
    assert loss.item() == pytest.approx(2.3 / 4, abs=1e-5)
    loss.backward()
    assert torch.isfinite(x.grad).all()  # sqrt at zero self-distance stays finite
    # only one identity: no negatives -> 0 with a graph
    z = TripletLoss()(x, torch.zeros(4, dtype=torch.long))
    assert z.item() == 0.0 and z.requires_grad


def test_reid_loss_averages_branches_and_weights() -> None:
    torch.manual_seed(0)
    logits = [torch.randn(4, 5), torch.randn(4, 5)]
    feats = [torch.randn(4, 8), torch.randn(4, 8)]
    y = torch.tensor([0, 0, 1, 1])
    ce = CrossEntropyLabelSmooth(epsilon=0.1)
    tri = TripletLoss(0.3)
    want_ce = (ce(logits[0], y) + ce(logits[1], y)) / 2
    want_tri = (tri(feats[0], y) + tri(feats[1], y)) / 2
    crit = ReIDLoss(ce_weight=0.5, label_smooth=0.1, triplet_weight=2.0, margin=0.3)
    total, parts = crit({"logits": logits, "features": feats}, y)
    assert total.item() == pytest.approx(0.5 * want_ce.item() + 2.0 * want_tri.item(), abs=1e-6)
    assert parts["ce"].item() == pytest.approx(want_ce.item(), abs=1e-6)
    assert crit.needs_features
    only_ce, _ = ReIDLoss()(logits[0], y)  # a bare logits tensor works too
    assert only_ce.item() == pytest.approx(ce(logits[0], y).item(), abs=1e-6)
    with pytest.raises(ValueError, match="return_features"):
        crit({"logits": logits}, y)
