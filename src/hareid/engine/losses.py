"""ReID losses: label-smoothed cross-entropy, batch-hard triplet, the attention (person-mask) loss,
and their per-branch combination.

Cross-entropy uses ``torch.nn.functional.cross_entropy(label_smoothing=eps)``: its target is
``(1 - eps) * one_hot + eps / K``, the label-smoothing regulariser of Szegedy et al. that ReID
papers use, so the well-kept library kernel is used rather than a hand-written one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ATTN_FORMS", "AttentionMaskLoss", "CrossEntropyLabelSmooth", "ReIDLoss", "TripletLoss",
           "attention_distribution", "pairwise_euclidean"]


class CrossEntropyLabelSmooth(nn.Module):
    """Cross-entropy against ``(1 - epsilon) * one_hot + epsilon / K`` targets, mean over the batch."""

    def __init__(self, num_classes: int | None = None, epsilon: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
        self.num_classes = num_classes
        self.epsilon = epsilon

    def forward(self, logits: Tensor, targets: Tensor, allowed: Tensor | None = None) -> Tensor:
        """``allowed``: optional ``(B, K)`` bool, the classes each sample's target competes with
        (its own included): the softmax and the smoothing run over those classes only."""
        if self.num_classes is not None and logits.shape[-1] != self.num_classes:
            raise ValueError(f"expected logits with {self.num_classes} classes, got {logits.shape[-1]}")
        if allowed is None:
            return F.cross_entropy(logits.float(), targets, label_smoothing=self.epsilon)
        logp = F.log_softmax(logits.float().masked_fill(~allowed, float("-inf")), dim=1)  # (B, K)
        logp = logp.masked_fill(~allowed, 0.0)
        nll = -logp.gather(1, targets[:, None]).squeeze(1)  # (B,)
        smooth = -logp.sum(1) / allowed.sum(1)  # mean over the allowed classes
        return ((1 - self.epsilon) * nll + self.epsilon * smooth).mean()


def pairwise_euclidean(x: Tensor) -> Tensor:
    """``(B, D) -> (B, B)`` Euclidean distances; clamped before the sqrt so gradients stay finite."""
    sq = x.pow(2).sum(dim=1, keepdim=True)
    d2 = sq + sq.t() - 2.0 * (x @ x.t())
    return d2.clamp_min(1e-12).sqrt()


class TripletLoss(nn.Module):
    """Batch-hard triplet loss (Hermans et al. 2017) with a hinge ``margin``.

    For each anchor, the farthest same-identity sample and the nearest other-identity sample in the
    batch give ``relu(d(a, p) - d(a, n) + margin)``; the mean is over anchors that have a negative.
    An anchor without another positive uses itself (distance ~0).
    """

    def __init__(self, margin: float = 0.3) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, features: Tensor, targets: Tensor, comparable: Tensor | None = None) -> Tensor:
        """``comparable``: optional ``(B, B)`` bool; a pair that is not comparable is neither a
        positive nor a negative (e.g. tracklets of two cameras, which may be one person)."""
        dist = pairwise_euclidean(features.float())
        same = targets.unsqueeze(0) == targets.unsqueeze(1)
        other = ~same if comparable is None else ~same & comparable
        d_ap = dist.masked_fill(~same, float("-inf")).amax(dim=1)
        d_an = dist.masked_fill(~other, float("inf")).amin(dim=1)
        valid = torch.isfinite(d_an)
        if not bool(valid.any()):
            return features.sum() * 0.0  # one identity in the batch: no triplet, keep the graph
        return F.relu(d_ap[valid] - d_an[valid] + self.margin).mean()


#: Forms of :class:`AttentionMaskLoss`.
ATTN_FORMS = ("kl", "mass")


def attention_distribution(soft: Tensor, tau: float = 1e-3) -> Tensor:
    """Where a soft mask puts its weight: ``(B, C | 1, h, w) -> (B, h*w)`` rows summing to 1.

    The channel-mean map minus its per-image minimum (the mass above the mask's floor, whatever the
    soft-mask variant; a constant map has none), plus ``tau`` everywhere so a flat map is a uniform
    distribution with finite gradients (``tau`` is ~1 % of a typical contrast). The attention
    benchmark (``hareid attention-score``) scores this same contrast map.
    """
    m = soft.float().mean(1).flatten(1)  # (B, h*w)
    d = m - m.amin(1, keepdim=True) + tau  # (B, h*w) > 0
    return d / d.sum(1, keepdim=True)


class AttentionMaskLoss(nn.Module):
    """Teaches soft attention where the person is, one term per stage, averaged over stages.

    ``p`` = :func:`attention_distribution` of the stage's soft mask; ``q`` = the person mask
    averaged over each cell of the stage's grid (the share of the cell that is person), so the
    target is pixel-exact at any resolution.

    * ``form="kl"``: ``KL(q / sum q || p)``. Its minimum spreads the attention over the whole visible
      person and leaves none on the background (contrast lift ``1 / person share``). It is
      scale-free in the map: only *where* the mask's weight goes counts, not how strong the mask
      is, so it does not fight the re-ID loss over the mask's range; the channel vector stays free.
    * ``form="mass"``: ``-log(sum p * q)``, the log of the share of attention on the person; any
      distribution inside the person is optimal (the map may focus on parts).

    ``person``: ``(B, 1, H, W)`` in ``[0, 1]`` at the input's size. Images whose mask is empty (the
    person erased or cropped away) do not count; with none left the loss is 0 (graph kept).
    """

    def __init__(self, form: str = "kl") -> None:
        super().__init__()
        if form not in ATTN_FORMS:
            raise ValueError(f"attention loss form must be one of {ATTN_FORMS}, got {form!r}")
        self.form = form

    def forward(self, soft: Sequence[Tensor], person: Tensor) -> Tensor:
        terms = []
        for a in soft:  # (B, C | 1, h, w) per stage
            p = attention_distribution(a)  # (B, h*w)
            q = F.adaptive_avg_pool2d(person.float(), a.shape[-2:]).flatten(1)  # (B, h*w) in [0, 1]
            mass = q.sum(1)  # (B,)
            valid = mass > 0
            if self.form == "kl":
                qn = q / mass.clamp_min(1e-12)[:, None]
                per_image = (torch.xlogy(qn, qn) - qn * p.log()).sum(1)  # KL(qn || p)
            else:
                per_image = -(p * q).sum(1).clamp_min(1e-12).log()
            terms.append(per_image[valid].mean() if bool(valid.any()) else p.sum() * 0.0)
        if not terms:
            raise ValueError("the attention loss needs soft masks, but the model returned none "
                             "(soft attention off: model.soft_attn=false)")
        return torch.stack(terms).mean()


class ReIDLoss(nn.Module):
    """``ce_weight * mean_b CE(logits_b) + triplet_weight * mean_b Triplet(features_b)
    + attn_weight * AttentionMaskLoss(soft masks, person masks)``.

    ``compete``: optional ``(K, K)`` bool over the classes, which classes a sample's class is
    told apart from (set by ``hareid adapt`` on footage of several cameras: tracklets compete only
    with tracklets of their own camera, since two cameras' tracklets may be one person). The
    cross-entropy's softmax then runs over the competing classes, and the triplet's negatives are
    samples of competing classes. ``None``: every class competes with every other (the usual).

    ``outputs`` is the model's training output ``{"logits": [per branch], "features": [per branch],
    "soft": [per stage]}`` (a bare logits tensor or list is accepted too). Branch losses are
    averaged, so the weights do not depend on the number of branches. The attention term is added
    when ``person`` masks are given. Returns ``(total, parts)`` with detached parts for logging.
    """

    def __init__(
        self,
        ce_weight: float = 1.0,
        label_smooth: float = 0.1,
        triplet_weight: float = 0.0,
        margin: float = 0.3,
        attn_weight: float = 0.0,
        attn_form: str = "kl",
    ) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.triplet_weight = triplet_weight
        self.attn_weight = attn_weight
        self.ce = CrossEntropyLabelSmooth(epsilon=label_smooth)
        self.triplet = TripletLoss(margin=margin)
        self.attn = AttentionMaskLoss(attn_form)
        self.compete: Tensor | None = None

    @property
    def needs_features(self) -> bool:
        """Whether the model must be built with ``return_features=True``."""
        return self.triplet_weight > 0

    @property
    def needs_attention(self) -> bool:
        """Whether the model must return its soft masks in training (``model.return_attention``)."""
        return self.attn_weight > 0

    @staticmethod
    def _as_list(x: Tensor | Sequence[Tensor] | None) -> list[Tensor]:
        if x is None:
            return []
        return [x] if isinstance(x, Tensor) else list(x)

    def forward(
        self, outputs: Mapping[str, Sequence[Tensor]] | Tensor | Sequence[Tensor], targets: Tensor,
        person: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if isinstance(outputs, Mapping):
            logits = self._as_list(outputs.get("logits"))
            features = self._as_list(outputs.get("features"))
        else:
            logits, features = self._as_list(outputs), []
        parts: dict[str, Tensor] = {}
        total: Tensor | None = None
        allowed = comparable = None
        if self.compete is not None:
            rows = self.compete.to(targets.device)[targets]  # (B, K)
            allowed, comparable = rows, rows[:, targets]  # (B, K), (B, B)
        if self.ce_weight > 0:
            if not logits:
                raise ValueError("cross-entropy weight > 0 but the model returned no logits")
            ce = torch.stack([self.ce(lg, targets, allowed) for lg in logits]).mean()
            parts["ce"] = ce.detach()
            total = self.ce_weight * ce
        if self.triplet_weight > 0:
            if not features:
                raise ValueError(
                    "triplet weight > 0 but the model returned no features; build it with return_features=True"
                )
            tri = torch.stack([self.triplet(f, targets, comparable) for f in features]).mean()
            parts["triplet"] = tri.detach()
            total = self.triplet_weight * tri if total is None else total + self.triplet_weight * tri
        if total is None:
            raise ValueError("all loss weights are 0")
        if self.attn_weight > 0 and person is not None:
            soft = self._as_list(outputs.get("soft")) if isinstance(outputs, Mapping) else []
            attn = self.attn(soft, person)
            parts["attn"] = attn.detach()
            total = total + self.attn_weight * attn
        return total, parts
