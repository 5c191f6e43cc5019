"""The harmonious-attention network core shared by every registered model.

:class:`HarmNet` is HA-CNN's wiring (Li, Zhu, Gong, CVPR 2018, Fig. 2) around any backbone that is
split into a stem and three stride-2 stages:

* global branch: ``stem -> [stage_s -> HarmAttn_s -> x * soft mask]`` for s = 1..3, then
  GAP -> Linear -> BN1d -> ReLU (``feature_dim``) -> classifier;
* local branch (cross-attention interaction): at stage s the ``T`` regions chosen by the stage's
  hard attention are sampled from the *input of stage s* (the stem output for s = 1, the attended
  output of stage s-1 after that), added to the regions' local features of stage s-1, and passed
  through the local block ``local_s`` (stride 2). All ``T`` regions travel together as one batch
  ``(B*T, C, h, w)``; the final regions are pooled and concatenated -> Linear -> BN1d -> ReLU.

BatchNorm in the local branch: because the regions are one batch, train-mode BatchNorm statistics
are pooled over the ``B*T`` region crops. torchreid's HACNN calls the local blocks once per region,
so each region is normalised with its own batch statistics while the shared running statistics are
an exponential average that weights the last (bottom) region most; at test time every region is then
normalised with those mixed statistics, unlike in training. Pooling makes training and test use the
same normalisation (the running statistics estimate exactly what training used) and it is one call
instead of ``T``. Measured on HA-CNN's first local block (random init, inputs whose statistics vary
from top to bottom as person images do, exact running averages): the train-mode vs eval-mode output
differs by 1% (relative L2) with pooled statistics and by 74% (60-88% per region) with per-region
statistics. ``tests/models/test_models.py`` checks that batching changes nothing else (eval mode equals a
per-region loop).

Memory layout (``channels_last=True``, the default): the input is made channels_last once and every
conv/pool keeps it. Ops whose backward returns NCHW gradients (means, ``grid_sample``) are wrapped
with :func:`hareid.models.layers.blocks.channels_last_grad`, and the soft mask is built channels_last, so no ReLU
backward or gradient sum sees mixed layouts (PyTorch's strided fallback for those is ~5-20x slower;
``tests/models/test_models.py::test_train_gradients_stay_channels_last`` guards this).

Inference (:func:`hareid.models.inference.optimize_for_inference`): ``_run`` is the ONLY wiring of the
network. The inference form is this same class with its parts swapped by
:func:`hareid.models.layers.blocks.fuse_blocks` for their ``fuse()`` forms (ConvBlocks -> convolutions with folded
BN and a ReLU post-op, the attention -> :class:`hareid.models.layers.attention.FusedHarmAttn`, the sampler ->
:class:`hareid.models.layers.attention.StripeSampler`, :class:`GlobalPool` -> a float32 pool, the heads ->
float32 ``Linear`` with BN folded).

Output contract (docs/architecture.md): ``train()`` -> ``{"logits": [global, local], "features":
[global, local], "soft": [per stage]}`` (features only with ``return_features=True``, the soft masks
only with ``return_attention = True``, for the attention loss); ``eval()`` -> float32 embedding
``(B, embed_dim)``: each branch L2-normalised, concatenated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_linear_bn_eval

from hareid.models.layers.attention import (
    REGION_SAMPLING_MODES,
    SOFT_MASKS,
    HarmAttn,
    RegionSampler,
    stripe_centres,
)
from hareid.models.layers.blocks import channels_last_grad

__all__ = ["REGION_SAMPLING_MODES", "EmbeddingHead", "GlobalPool", "HarmNet", "halve"]


def halve(n: int, times: int = 1) -> int:
    """Size after ``times`` stride-2 layers with kernel 3 / padding 1 (or 7/3, or 1/0): ``ceil(n/2)``."""
    for _ in range(times):
        n = (n + 1) // 2
    return n


def min_side(halvings: int) -> int:
    """Smallest side that ``halvings`` stride-2 layers each shrink (``n -> ceil(n/2)``, ``n > 1``)."""
    return 2 ** (halvings - 1) + 1


class GlobalPool(nn.Module):
    """Global average pool ``(B, C, H, W) -> (B, C)``; ``float32=True`` accumulates and returns float32.

    Training form: the mean of :func:`~hareid.models.layers.blocks.channels_last_grad` (the mean's gradient is NCHW);
    :meth:`fuse` gives the inference form, a float32 pool of the run-dtype map.
    """

    def __init__(self, float32: bool = False) -> None:
        super().__init__()
        self.float32 = float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.float32:
            return x.mean(dim=(2, 3), dtype=torch.float32)
        return channels_last_grad(x).mean(dim=(2, 3))

    def fuse(self, dtype: torch.dtype = torch.float32) -> GlobalPool:
        return GlobalPool(float32=True)


class EmbeddingHead(nn.Sequential):
    """``Linear(in_f, out_f) -> BatchNorm1d -> ReLU``: ``(B, in_f) -> (B, out_f)``, a branch's feature.

    A ``nn.Sequential`` (children ``0, 1, 2``: state_dict keys as torchreid's ``fc``). :meth:`fuse`
    gives the inference form: BatchNorm folded into the Linear, float32 (the heads are tiny).
    """

    def __init__(self, in_f: int, out_f: int) -> None:
        super().__init__(nn.Linear(in_f, out_f), nn.BatchNorm1d(out_f), nn.ReLU())

    def fuse(self, dtype: torch.dtype = torch.float32) -> nn.Sequential:
        linear, bn, act = self
        with torch.no_grad():
            if isinstance(bn, nn.BatchNorm1d):
                linear = fuse_linear_bn_eval(linear.eval(), bn.eval())
        return nn.Sequential(linear, act).float()


class HarmNet(nn.Module):
    """Global + local branches with harmonious attention after each of three stages.

    Args:
        stem: ``(B, 3, H, W) -> (B, channels[0], H0, W0)``.
        stages: three modules ``(B, channels[s], Hs, Ws) -> (B, channels[s+1], ceil(Hs/2), ceil(Ws/2))``.
        local_stages: three modules with the same channel/stride contract (used on regions).
        channels: ``(c_stem, c1, c2, c3)``.
        num_classes: identities of the classifiers.
        input_halvings: stride-2 layers on the global path (for the input-size rule).
        region_size: ``(H, W, T) -> (h1, w1)``, size of the stage-1 regions; later stages halve it.
        num_regions: ``T`` hard-attention regions.
        feature_dim: size of each branch's feature.
        local_branch: build and run the local branch (off: global branch only, 512-d embedding).
        return_features: train mode also returns the features (for metric losses).
        soft_attn: apply the soft masks (off: the global features are not re-weighted).
        soft_mask: the soft-mask variant, one of :data:`hareid.models.layers.attention.SOFT_MASKS`: ``"relu"`` (the
            released code's ``sigmoid(ReLU(.))``, default, torchreid-compatible), ``"sigmoid"``
            (full range, paper Eq. 1), ``"temperature"`` (full range, learned temperature per
            stage), ``"spatial"`` (one full-range map per stage shared by all channels).
        hard_attn: learn the region translations (off: fixed horizontal stripes).
        cross_attn: sample regions from the global stage inputs at every stage (off: only stage 1
            samples from the stem output; later local stages see no global features).
        region_sampling: ``"direct"`` or ``"torchreid"``, see :func:`hareid.models.layers.attention.sample_regions`.
        channels_last: run in channels_last memory format (faster convolutions and pooling on CPU).
        reduction: ChannelAttn reduction rate.
    """

    def __init__(
        self,
        *,
        stem: nn.Module,
        stages: Sequence[nn.Module],
        local_stages: Sequence[nn.Module] | None,
        channels: Sequence[int],
        num_classes: int,
        input_halvings: int,
        region_size: Callable[[int, int, int], tuple[int, int]],
        num_regions: int = 4,
        feature_dim: int = 512,
        local_branch: bool = True,
        return_features: bool = False,
        soft_attn: bool = True,
        soft_mask: str = "relu",
        hard_attn: bool = True,
        cross_attn: bool = True,
        region_sampling: str = "direct",
        channels_last: bool = True,
        reduction: int = 16,
    ) -> None:
        super().__init__()
        if soft_mask not in SOFT_MASKS:
            raise ValueError(f"soft_mask must be one of {SOFT_MASKS}, got {soft_mask!r}")
        region_sampling = {"peer": "torchreid"}.get(region_sampling, region_sampling)  # pre-0.2 name
        if region_sampling not in REGION_SAMPLING_MODES:
            raise ValueError(f"region_sampling must be one of {REGION_SAMPLING_MODES}, got {region_sampling!r}")
        for key, val in (("num_classes", num_classes), ("num_regions", num_regions), ("feature_dim", feature_dim)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"{key} must be a positive int, got {val!r}")
        if len(stages) != 3 or len(channels) != 4:
            raise ValueError("HarmNet needs exactly three stages and four channel widths")
        self.num_regions = num_regions
        self.feature_dim = feature_dim
        self.local_branch = local_branch
        self.return_features = return_features
        self.soft_attn, self.hard_attn, self.cross_attn = soft_attn, hard_attn, cross_attn
        self.soft_mask = soft_mask
        self.region_sampling = region_sampling
        self.channels_last = channels_last
        self.input_halvings = input_halvings
        self._region_size = region_size

        self.stem = stem
        self.stages = nn.ModuleList(stages)
        # hard attention is needed wherever regions are sampled: every stage, or stage 1 only
        needs_hard = [local_branch and hard_attn and (s == 0 or cross_attn) for s in range(3)]
        self.attn = nn.ModuleList(
            HarmAttn(channels[s + 1], num_regions, soft=soft_attn, hard=needs_hard[s], reduction=reduction,
                     soft_mask=soft_mask)
            for s in range(3)
        )
        self.fc_global = EmbeddingHead(channels[3], feature_dim)
        self.classifier_global = nn.Linear(feature_dim, num_classes)
        if local_branch:
            if local_stages is None or len(local_stages) != 3:
                raise ValueError("local_branch=True needs three local stages")
            self.local = nn.ModuleList(local_stages)
            self.fc_local = EmbeddingHead(num_regions * channels[3], feature_dim)
            self.classifier_local = nn.Linear(feature_dim, num_classes)
        self.pool = GlobalPool()
        self.sampler = RegionSampler()
        centres = torch.tensor([[0.0, c] for c in stripe_centres(num_regions)])  # (T, 2) fixed stripes
        self.register_buffer("stripes", centres, persistent=False)
        self.embed_dim = feature_dim * (2 if local_branch else 1)
        #: train mode also returns the soft masks ``"soft": [(B, C_s | 1, H_s, W_s)]`` (attention loss)
        self.return_attention = False

    # ----------------------------------------------------------------------------- input sizes
    def region_sizes(self, h: int, w: int) -> list[tuple[int, int]]:
        """Sizes ``(h_s, w_s)`` at which the regions of stages 1..3 are sampled for an ``h x w`` input."""
        rh, rw = self._region_size(h, w, self.num_regions)
        return [(halve(rh, s), halve(rw, s)) for s in range(3)]

    def input_size_ok(self, h: int, w: int) -> bool:
        """Whether an ``h x w`` input works: every stride-2 layer shrinks it (global path), and the
        stage-1 regions derived from it survive the local branch's three stride-2 stages the same way."""
        m = min_side(self.input_halvings)
        if h < m or w < m:
            return False
        if self.local_branch:
            rh, rw = self._region_size(h, w, self.num_regions)
            return min(rh, rw) >= min_side(3)
        return True

    def min_input_size(self) -> tuple[int, int]:
        """The smallest ``(H, W)`` for which :meth:`input_size_ok` holds (each side independently)."""
        big = 4096
        min_h = next(h for h in range(1, big) if self.input_size_ok(h, big))
        min_w = next(w for w in range(1, big) if self.input_size_ok(big, w))
        return min_h, min_w

    def check_input(self, x: Any) -> None:
        """Raise ``ValueError`` with a fix for anything but a float ``(B, 3, H, W)`` batch of a usable size."""
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor of shape (B, 3, H, W), got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name}: expected a 4-D batch (B, 3, H, W), got shape {tuple(x.shape)}; "
                             "add a batch dimension with x.unsqueeze(0)")
        if x.shape[1] != 3:
            raise ValueError(f"{name}: expected 3 colour channels (B, 3, H, W), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{name}: expected a floating-point image tensor, got {x.dtype}; "
                             "convert with x.float() / 255 and normalise")
        h, w = int(x.shape[2]), int(x.shape[3])
        if not self.input_size_ok(h, w):
            mh, mw = self.min_input_size()
            raise ValueError(
                f"{name}(num_regions={self.num_regions}): input {h}x{w} (HxW) is too small; any size with "
                f"H >= {mh} and W >= {mw} works (e.g. 160x64, 256x128): each of the "
                f"{self.input_halvings} stride-2 layers must shrink both sides"
                + (" and the stage-1 regions must be >= 5 px per side" if self.local_branch else "")
            )

    # ----------------------------------------------------------------------------- optimiser
    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by role: ``"backbone"`` (stem and stages: what ImageNet weights fill)
        and ``"head"`` (attention, local branch, embedding layers, classifiers: always new). Used by
        :func:`hareid.engine.optim.build_optimizer` for ``optim.backbone_lr_mult``."""
        backbone = {id(p) for m in (self.stem, self.stages) for p in m.parameters()}
        groups: dict[str, list[nn.Parameter]] = {"backbone": [], "head": []}
        for p in self.parameters():
            if p.requires_grad:
                groups["backbone" if id(p) in backbone else "head"].append(p)
        return groups

    # ----------------------------------------------------------------------------- forward
    def _run(self, x: torch.Tensor, record: dict[str, list[torch.Tensor]] | None = None):
        if not (torch.jit.is_tracing() or torch.jit.is_scripting()):
            self.check_input(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        b = x.shape[0]
        sizes = self.region_sizes(x.shape[2], x.shape[3]) if self.local_branch else []
        src = self.stem(x)  # (B, C0, H0, W0): input of stage 1
        local = None
        for s in range(3):
            y = self.stages[s](src)  # (B, C_s, H_s, W_s)
            attended, mask, t = self.attn[s].attend(y)  # y * mask, (B, C_s | 1, H_s, W_s), (B, T, 2)
            sample_here = self.local_branch and (s == 0 or self.cross_attn)
            if t is None and sample_here:
                t = self.stripes.expand(b, -1, -1)  # fixed stripes (hard_attn=False)
            if record is not None:
                if mask is not None:
                    record["soft"].append(mask)
                if t is not None:
                    record["translations"].append(t)
            if self.local_branch:
                if sample_here:
                    regions = self.sampler(src, t, sizes[s], self.region_sampling)  # (B*T, C_{s-1}, h_s, w_s)
                    local = regions if local is None else local + regions
                local = self.local[s](local)  # (B*T, C_s, h_{s+1}, w_{s+1})
            src = attended  # the input of the next stage
        g = self.fc_global(self.pool(src))  # (B, D)
        if not self.local_branch:
            return g, None
        pooled = self.pool(local).reshape(b, -1)  # (B*T, C3) -> (B, T*C3), image-major
        return g, self.fc_local(pooled)  # (B, D), (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, list[torch.Tensor]]:
        """``(B, 3, H, W)`` -> train: ``{"logits": [...], ["features": [...]]}``; eval: ``(B, embed_dim)``."""
        record: dict[str, list[torch.Tensor]] | None = None
        if self.training and self.return_attention:
            record = {"soft": [], "translations": []}
        g, loc = self._run(x, record)
        feats = [g] if loc is None else [g, loc]
        if not self.training:
            embs = [F.normalize(f.float(), dim=1) for f in feats]  # per-branch unit norm, float32
            return embs[0] if len(embs) == 1 else torch.cat(embs, dim=1)  # (B, embed_dim)
        logits = [self.classifier_global(g)]
        if loc is not None:
            logits.append(self.classifier_local(loc))
        out: dict[str, list[torch.Tensor]] = {"logits": logits}
        if self.return_features:
            out["features"] = feats
        if record is not None:
            out["soft"] = record["soft"]
        return out

    def forward_attention(self, x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """Attention for visualisation: ``{"soft": [(B, C_s | 1, H_s, W_s)] sigmoid masks per stage,
        "translations": [(B, T, 2)] (tx, ty) per stage that samples regions}``."""
        record: dict[str, list[torch.Tensor]] = {"soft": [], "translations": []}
        self._run(x, record)
        return record
