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


def test_cross_entropy_over_competing_classes_equals_the_sub_softmax() -> None:
    """With ``allowed``, each row is the library cross-entropy over its allowed classes alone."""
    torch.manual_seed(0)
    logits, targets = torch.randn(5, 6), torch.tensor([0, 1, 4, 5, 2])
    allowed = torch.zeros(5, 6, dtype=torch.bool)
    allowed[:, :3] = True  # rows 0, 1, 4: classes 0-2
    allowed[2:4] = False
    allowed[2:4, 3:] = True  # rows 2, 3: classes 3-5
    ce = CrossEntropyLabelSmooth(epsilon=0.1)
    ref = []
    for row, t, ok in zip(logits, targets, allowed):
        idx = ok.nonzero().squeeze(1)
        ref.append(torch.nn.functional.cross_entropy(row[idx][None], (idx == t).nonzero()[0], label_smoothing=0.1))
    assert ce(logits, targets, allowed).item() == pytest.approx(torch.stack(ref).mean().item(), rel=1e-6)
    assert ce(logits, targets, torch.ones(5, 6, dtype=torch.bool)).item() == pytest.approx(ce(logits, targets).item())


def test_triplet_ignores_pairs_that_are_not_comparable() -> None:
    # ids 0 and 1 in camera A, id 2 in camera B; sample 4 (id 2) lies right on top of sample 0
    f = torch.tensor([[0.0, 0.0], [0.0, 1.0], [3.0, 0.0], [3.0, 1.0], [0.0, 0.1]])
    t = torch.tensor([0, 0, 1, 1, 2])
    cam = torch.tensor([0, 0, 0, 0, 1])
    comparable = cam[:, None] == cam[None, :]
    loss = TripletLoss(margin=0.3)
    # comparable only: anchors 0-3 as without sample 4: d_ap = 1, d_an = 3 -> relu(1 - 3 + .3) = 0;
    # sample 4 has no comparable negative and is left out
    assert loss(f, t, comparable).item() == pytest.approx(0.0)
    # all pairs: sample 4 is anchor 0's nearest negative (0.1): relu(1 - 0.1 + 0.3) = 1.2 for anchors 0;
    # anchor 1: d_an = min(3.16, 0.9) = 0.9 -> 0.4; anchor 4: d_ap = 0 (itself), d_an = 0.1 -> 0.2
    assert loss(f, t).item() == pytest.approx((1.2 + 0.4 + 0 + 0 + 0.2) / 5, abs=1e-4)


def test_reid_loss_compete_matrix_limits_both_terms() -> None:
    torch.manual_seed(1)
    feats, logits = torch.randn(8, 4), torch.randn(8, 4)
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    fn = ReIDLoss(ce_weight=1.0, triplet_weight=1.0)
    out = {"logits": [logits], "features": [feats]}
    everyone, _ = fn(out, targets)
    fn.compete = torch.ones(4, 4, dtype=torch.bool)
    assert fn(out, targets)[0].item() == pytest.approx(everyone.item())  # all compete: the usual loss
    fn.compete = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    cams = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    allowed = fn.compete[targets]
    ce = CrossEntropyLabelSmooth(epsilon=0.1)(logits, targets, allowed)
    tri = TripletLoss(0.3)(feats, targets, cams[:, None] == cams[None, :])
    assert fn(out, targets)[0].item() == pytest.approx((ce + tri).item(), rel=1e-6)
