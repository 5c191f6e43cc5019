"""Harmonious attention (Li, Zhu, Gong, "Harmonious Attention Network for Person
Re-Identification", CVPR 2018, Sec. 3.1), usable on any CNN feature map ``(B, C, H, W)``.

Paper <-> code (equation numbers as in the paper):

* Eq. (1) soft attention ``A = S x C`` -> :class:`SoftAttn` (spatial map times channel vector,
  followed by a 1x1 ConvBlock and a sigmoid).
* Eq. (2) spatial attention input, cross-channel mean ``S_in = 1/c sum_i X[:, :, i]``, then a 3x3
  conv (stride 2), bilinear resizing and a 1x1 "scaling" conv -> :class:`SpatialAttn`.
* Eq. (3)-(4) channel attention, squeeze ``C_in = 1/(h w) sum_ij X[i, j, :]`` and excitation
  ``ReLU(W2 ReLU(W1 C_in))`` -> :class:`ChannelAttn`.
* Eq. (5) hard regional attention, the affine transform ``[[s_h, 0, t_x], [0, s_w, t_y]]`` with fixed
  scales and learned translations -> :class:`HardAttn` (predicts ``tanh(t)``) and
  :func:`translations_to_theta` (builds the matrix in ``grid_sample`` convention).
* :class:`HarmAttn` = soft + hard attention of one stage; :meth:`HarmAttn.fuse` gives its inference
  form :class:`FusedHarmAttn` (factorised soft mask, float32 heads, one pooling).
* :class:`RegionSampler` cuts the regions out (:func:`sample_regions`); its inference form
  :class:`StripeSampler` samples axis-aligned regions by two GEMMs (:func:`sample_stripes`).

Soft-mask variants (``SoftAttn(mask=...)``, model option ``soft_mask``; :data:`SOFT_MASKS`):

* ``"relu"`` (default): the released code's ``sigmoid(ReLU(BN(conv(S * C))))``, in ``[0.5, 1)``:
  it can never suppress a feature by more than half. Keeps torchreid checkpoints importable exactly.
* ``"sigmoid"``: ``sigmoid(BN(conv(S * C)))``, the paper's Eq. (1) read literally, in ``(0, 1)``.
* ``"temperature"``: ``sigmoid(BN(conv(S * C)) / T)`` with one learned temperature ``T = exp(tau)``
  per stage (initially 1): a single scalar that can sharpen or flatten the whole stage's mask.
* ``"spatial"``: a spatial-only mask ``(B, 1, H, W)`` shared by all channels,
  ``sigmoid(BN(conv3x3(ReLU(BN(conv1x1(X))))))`` with a learned ``C -> C/r`` projection instead of
  the channel mean of Eq. (2): it tests whether the cross-channel mean is what keeps the paper's
  spatial attention from finding the person.

Coordinate convention: ``theta`` maps normalised output coordinates to normalised input coordinates,
``(x, y)`` in ``[-1, 1]`` with ``-1``/``1`` the outer edges of the map (``align_corners=False``).
Region ``i`` with translation ``(tx, ty)`` and vertical scale ``s`` covers ``x in [tx-1, tx+1]`` and
``y in [ty-s, ty+s]``: a full-width horizontal stripe of height ``s`` of the map.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hareid.models.layers.blocks import ConvBlock, channels_last_grad, grad_layout

__all__ = [
    "REGION_SAMPLING_MODES",
    "SOFT_MASKS",
    "ChannelAttn",
    "FusedHarmAttn",
    "HardAttn",
    "HarmAttn",
    "RegionSampler",
    "SoftAttn",
    "SpatialAttn",
    "StripeSampler",
    "affine_grid",
    "sample_regions",
    "sample_stripes",
    "stripe_centres",
    "translations_to_boxes",
    "translations_to_theta",
]


#: How :func:`sample_regions` cuts regions out: at their target size, or as torchreid's HACNN does.
REGION_SAMPLING_MODES = ("direct", "torchreid")


class SpatialAttn(nn.Module):
    """Spatial attention, paper Eq. (2): one map shared by all channels.

    ``(B, C, H, W) -> (B, 1, H, W)``: cross-channel mean -> ConvBlock 3x3/2 -> bilinear resize
    (``align_corners=True``) back to the input's own ``(H, W)`` -> ConvBlock 1x1. Resizing to the
    input size (not "x2") keeps odd feature maps working; for even sizes the two are identical.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = ConvBlock(1, 1, 3, s=2, p=1)
        self.conv2 = ConvBlock(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        s = x.mean(dim=1, keepdim=True)  # (B, 1, H, W)   Eq. (2)
        s = self.conv1(s)  # (B, 1, ceil(H/2), ceil(W/2))
        s = F.interpolate(s, size=size, mode="bilinear", align_corners=True)  # (B, 1, H, W)
        return self.conv2(s)  # (B, 1, H, W)


class ChannelAttn(nn.Module):
    """Channel attention, paper Eq. (3)-(4): squeeze-and-excitation.

    ``(B, C, H, W) -> (B, C, 1, 1)``: global average pool -> ConvBlock 1x1 ``C -> C/r`` ->
    ConvBlock 1x1 ``C/r -> C`` (each ConvBlock ends in the ReLU of Eq. (4)).
    """

    def __init__(self, in_channels: int, reduction: int = 16) -> None:
        super().__init__()
        if in_channels % reduction:
            raise ValueError(f"ChannelAttn: in_channels={in_channels} must be divisible by reduction={reduction}")
        self.conv1 = ConvBlock(in_channels, in_channels // reduction, 1)
        self.conv2 = ConvBlock(in_channels // reduction, in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)   Eq. (3)
        return self.conv2(self.conv1(c))  # (B, C, 1, 1)   Eq. (4)


SOFT_MASKS = ("relu", "sigmoid", "temperature", "spatial")


class SoftAttn(nn.Module):
    """Soft (pixel-level) attention, paper Eq. (1): ``A = sigmoid(ConvBlock1x1(S * C))``.

    ``(B, C, H, W) -> (B, C, H, W)`` mask (``mask="spatial"``: ``(B, 1, H, W)``, broadcast over
    channels). ``S * C`` broadcasts ``(B, 1, H, W) * (B, C, 1, 1)``; the 1x1 ConvBlock lets channels
    and positions interact. Because ``S * C`` has rank 1 per image, the 1x1 convolution is computed
    as ``S * (W C) + b`` (:meth:`hareid.models.layers.blocks.ConvBlock.forward_outer`): same values, ~5 % of HA-CNN's
    FLOPs and one full-size tensor less. With ``mask="relu"`` (the default, as in the paper's released
    code) the ConvBlock ends in a ReLU, so the mask is ``sigmoid(ReLU(.))`` and lies in ``[0.5, 1)``: it
    re-weights features but never suppresses one by more than half. The other variants are listed
    in the module docstring.
    """

    def __init__(self, in_channels: int, reduction: int = 16, mask: str = "relu") -> None:
        super().__init__()
        if mask not in SOFT_MASKS:
            raise ValueError(f"soft_mask must be one of {SOFT_MASKS}, got {mask!r}")
        if in_channels % reduction:
            raise ValueError(f"SoftAttn: in_channels={in_channels} must be divisible by reduction={reduction}")
        self.mask = mask
        if mask == "spatial":
            self.project = ConvBlock(in_channels, in_channels // reduction, 1)
            self.where = ConvBlock(in_channels // reduction, 1, 3, p=1, act=False)
            return
        self.spatial = SpatialAttn()
        self.channel = ChannelAttn(in_channels, reduction)
        self.conv = ConvBlock(in_channels, in_channels, 1, act=mask == "relu")
        if mask == "temperature":
            self.log_temperature = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mask == "spatial":
            return torch.sigmoid(self.where(self.project(x)))  # (B, 1, H, W) in (0, 1)
        s = self.spatial(x)  # (B, 1, H, W)
        c = self.channel(x).flatten(1)  # (B, C)
        # ConvBlock1x1(s * c) without building the rank-1 map s * c: s * (W c) + b (see forward_outer);
        # the mask comes out in x's layout (channels_last: the 1x1 output, `y * mask` and their backward)
        channels_last = x.is_contiguous(memory_format=torch.channels_last)
        z = self.conv.forward_outer(s, c, channels_last)  # (B, C, H, W); >= 0 for "relu"
        if self.mask == "temperature":
            z = z * torch.exp(-self.log_temperature).to(z.dtype)
        return torch.sigmoid(z)  # (B, C, H, W): [0.5, 1) for "relu", else (0, 1)


def stripe_centres(num_regions: int) -> list[float]:
    """Vertical centres (normalised) of ``T`` equal horizontal stripes tiling ``[-1, 1]``."""
    return [-1.0 + (2 * i + 1) / num_regions for i in range(num_regions)]


class HardAttn(nn.Module):
    """Hard (region-level) attention, paper Eq. (5): the translations of ``T`` regions.

    ``(B, C, H, W) -> (B, T, 2)`` holding ``(tx, ty) = tanh(fc(GAP(x)))`` per region; the scales are
    fixed (width 1, height ``1/T``), see :func:`translations_to_theta`.

    Initialisation: ``fc.weight = 0`` and ``fc.bias = atanh(stripe centres)``, so the initial regions
    are exactly the ``T`` horizontal stripes tiling the map. (The paper's released code sets the bias
    to the centres themselves, so after ``tanh`` its initial stripes sit at ``+-tanh(0.75) = +-0.64``
    and overlap; loading its checkpoints restores its values.)

    The projection ``C -> 2T`` is computed in float32 with elementwise ops, also under autocast, so
    region coordinates keep full precision in bfloat16 runs (it costs ``B * 2T * C`` multiply-adds).
    """

    def __init__(self, in_channels: int, num_regions: int = 4) -> None:
        super().__init__()
        self.num_regions = num_regions
        self.fc = nn.Linear(in_channels, 2 * num_regions)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.fc.weight)
        bias = torch.zeros(self.num_regions, 2)
        bias[:, 1] = torch.tensor([math.atanh(c) for c in stripe_centres(self.num_regions)])
        with torch.no_grad():
            self.fc.bias.copy_(bias.flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3)).float()  # (B, C)
        w = self.fc.weight.float()  # (2T, C)
        t = (pooled.unsqueeze(1) * w).sum(dim=-1) + self.fc.bias.float()  # (B, 2T), float32
        return torch.tanh(t).view(-1, self.num_regions, 2)  # (B, T, 2)


class HarmAttn(nn.Module):
    """Harmonious attention of one stage: soft mask and hard-region translations.

    ``(B, C, H, W) -> (mask (B, C | 1, H, W) | None, translations (B, T, 2) | None)``; ``soft=False``
    or ``hard=False`` leaves that part out (``None``), for ablations; ``soft_mask`` picks the
    :class:`SoftAttn` variant.
    """

    def __init__(
        self, in_channels: int, num_regions: int = 4, soft: bool = True, hard: bool = True, reduction: int = 16,
        soft_mask: str = "relu",
    ) -> None:
        super().__init__()
        self.soft = SoftAttn(in_channels, reduction, soft_mask) if soft else None
        self.hard = HardAttn(in_channels, num_regions) if hard else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x = channels_last_grad(x)  # the means below return NCHW gradients; sum them, convert once
        mask = self.soft(x) if self.soft is not None else None
        t = self.hard(x) if self.hard is not None else None
        return mask, t

    def attend(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``x (B, C, H, W)`` -> ``(x * mask | x, mask | None, translations (B, T, 2) | None)``."""
        mask, t = self(x)
        return (x * mask if mask is not None else x), mask, t

    def fuse(self, dtype: torch.dtype = torch.float32) -> FusedHarmAttn:
        """Inference form (eval statistics): :class:`FusedHarmAttn`."""
        return FusedHarmAttn(self)


def _vec(block: ConvBlock) -> tuple[torch.Tensor, torch.Tensor]:
    """A (BN-folded) 1x1 ConvBlock on ``(B, C, 1, 1)`` as a linear map: ``(out, in)``, ``(out,)``, float32."""
    w, b = block.folded()
    return w.detach().float().flatten(1), b.detach().float()


class FusedHarmAttn(nn.Module):
    """Inference form of :class:`HarmAttn`; :meth:`attend` re-weights ``y`` in place.

    One global average pool (float32) feeds both the channel attention and the hard attention. The
    soft mask (``relu`` variant) is ``sigmoid(ReLU(Wc (s * c) + bc))`` with ``s (B, 1, H, W)`` the
    spatial and ``c (B, C)`` the channel attention; since ``Wc`` is a 1x1 conv on a rank-1 map,
    ``Wc (s * c) = s * (Wc c)``: one ``(B, C) x (C, C)`` product and one fused multiply-add over the map
    replace the convolution (as :meth:`hareid.models.layers.blocks.ConvBlock.forward_outer` does in training).
    ``sigmoid`` drops the ReLU, ``temperature`` folds ``1/T`` into the mix weights, ``spatial`` runs
    its small conv head as trained, in float32. Spatial and channel attention and the translations
    run in float32 on their small tensors.
    """

    def __init__(self, attn: HarmAttn) -> None:
        super().__init__()
        self.soft = attn.soft is not None
        self.hard = attn.hard is not None
        self.mask_kind = attn.soft.mask if attn.soft is not None else "relu"
        self.spatial_head = attn.soft.float() if self.mask_kind == "spatial" else None
        with torch.no_grad():
            if self.soft and self.spatial_head is None:
                sp, ch = attn.soft.spatial, attn.soft.channel
                w1, b1 = sp.conv1.folded()
                self.register_buffer("sp1_w", w1.detach().float().contiguous())  # (1, 1, 3, 3)
                self.register_buffer("sp1_b", b1.detach().float())
                self.sp1_args = (sp.conv1.conv.stride, sp.conv1.conv.padding)
                w2, b2 = _vec(sp.conv2)  # (1, 1), (1,)
                self.register_buffer("sp2", torch.cat([w2.flatten(), b2]))  # scale, shift
                for name, block in (("ch1", ch.conv1), ("ch2", ch.conv2), ("mix", attn.soft.conv)):
                    w, b = _vec(block)
                    self.register_buffer(f"{name}_w", w)
                    self.register_buffer(f"{name}_b", b)
                if self.mask_kind == "temperature":
                    inv_t = torch.exp(-attn.soft.log_temperature.detach().float())
                    self.mix_w.mul_(inv_t)
                    self.mix_b.mul_(inv_t)
            if self.hard:
                self.num_regions = attn.hard.num_regions
                self.register_buffer("hard_w", attn.hard.fc.weight.detach().float())
                self.register_buffer("hard_b", attn.hard.fc.bias.detach().float())

    def _mask(self, y: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """The soft mask ``(B, C, H, W)`` in ``y``'s dtype and layout, from ``pooled (B, C)`` float32."""
        b, c, h, w = y.shape
        s = y.mean(dim=1, keepdim=True, dtype=torch.float32)  # (B, 1, H, W)   Eq. (2)
        s = F.relu(F.conv2d(s, self.sp1_w, self.sp1_b, *self.sp1_args))  # (B, 1, H/2, W/2)
        s = F.interpolate(s, size=(h, w), mode="bilinear", align_corners=True)  # (B, 1, H, W)
        s = F.relu(s * self.sp2[0] + self.sp2[1])
        ch = F.relu(F.linear(pooled, self.ch1_w, self.ch1_b))  # (B, C/r)
        ch = F.relu(F.linear(ch, self.ch2_w, self.ch2_b))  # (B, C)   Eq. (3)-(4)
        v = F.linear(ch, self.mix_w).to(y.dtype)  # (B, C) = Wc c
        bias, s = self.mix_b.to(y.dtype), s.to(y.dtype)
        if y.is_contiguous(memory_format=torch.channels_last):  # (B, H, W, C): channels_last, no copy
            mask = torch.addcmul(bias.view(1, 1, 1, c), s.view(b, h, w, 1), v.view(b, 1, 1, c)).permute(0, 3, 1, 2)
        else:
            mask = torch.addcmul(bias.view(1, c, 1, 1), s, v.view(b, c, 1, 1))  # (B, C, H, W)
        if self.mask_kind == "relu":
            mask = mask.relu_()
        return mask.sigmoid_()

    def attend(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``y (B, C, H, W)`` -> ``(y * mask, mask, translations (B, T, 2) float32)``; ``y`` is overwritten."""
        pooled = y.mean(dim=(2, 3), dtype=torch.float32)  # (B, C), shared by channel and hard attention
        t = None
        if self.hard:
            t = torch.tanh(F.linear(pooled, self.hard_w, self.hard_b)).view(y.shape[0], self.num_regions, 2)
        if not self.soft:
            return y, None, t
        if self.spatial_head is not None:  # "spatial": a small conv head, float32 as trained
            mask = self.spatial_head(y.float()).to(y.dtype)  # (B, 1, H, W)
        else:
            mask = self._mask(y, pooled)
        return y.mul_(mask), mask, t

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """As :meth:`HarmAttn.forward`: ``(mask | None, translations | None)``; ``y`` is left as it is."""
        _, mask, t = self.attend(y.clone())
        return mask, t


def translations_to_theta(t: torch.Tensor, scale_h: float | None = None) -> torch.Tensor:
    """``(B, T, 2)`` translations -> ``(B, T, 2, 3)`` affine matrices ``[[1, 0, tx], [0, scale_h, ty]]``.

    ``scale_h`` defaults to ``1 / T``. Built with tensor ops on ``t``'s device and dtype.
    """
    scale = 1.0 / t.shape[1] if scale_h is None else scale_h
    tx, ty = t.unbind(dim=-1)  # (B, T) each
    one = torch.ones_like(tx)
    zero = torch.zeros_like(tx)
    rows = (one, zero, tx, zero, one * scale, ty)
    return torch.stack(rows, dim=-1).view(*t.shape[:-1], 2, 3)  # (B, T, 2, 3)


def translations_to_boxes(
    t: torch.Tensor, image_hw: tuple[int, int], scale_h: float | None = None
) -> torch.Tensor:
    """``(B, T, 2)`` translations -> ``(B, T, 4)`` boxes ``(x1, y1, x2, y2)`` in pixels of an image of
    size ``image_hw`` (the region in normalised coordinates, mapped to the full image extent).
    """
    h, w = image_hw
    scale = 1.0 / t.shape[1] if scale_h is None else scale_h
    tx, ty = t.unbind(dim=-1)  # (B, T)
    x1, x2 = (tx - 1.0 + 1.0) * (w / 2), (tx + 1.0 + 1.0) * (w / 2)
    y1, y2 = (ty - scale + 1.0) * (h / 2), (ty + scale + 1.0) * (h / 2)
    return torch.stack((x1, y1, x2, y2), dim=-1)  # (B, T, 4)


def affine_grid(theta: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Sampling grid of ``T`` regions per image, stacked along the grid height.

    ``theta (B, T, 2, 3)`` -> ``(B, T * h, w, 2)``: rows ``t*h .. t*h + h - 1`` are region ``t``.
    Same values as ``F.affine_grid(theta_t, (B, C, h, w), align_corners=False)`` per region, but made
    with elementwise ops in ``theta``'s dtype (``F.affine_grid`` uses a matmul that autocast would run
    in bfloat16, losing sub-pixel precision).
    """
    b, t = theta.shape[:2]
    h, w = out_hw
    xs = (torch.arange(w, device=theta.device, dtype=theta.dtype) * 2 + 1) / w - 1  # (w,) pixel centres
    ys = (torch.arange(h, device=theta.device, dtype=theta.dtype) * 2 + 1) / h - 1  # (h,)
    a = theta[..., None, None]  # (B, T, 2, 3, 1, 1)
    grid = a[:, :, :, 0] * xs.view(1, w) + a[:, :, :, 1] * ys.view(h, 1) + a[:, :, :, 2]  # (B, T, 2, h, w)
    return grid.permute(0, 1, 3, 4, 2).reshape(b, t * h, w, 2)


def sample_regions(
    x: torch.Tensor, theta: torch.Tensor, out_hw: tuple[int, int], mode: str = "direct"
) -> torch.Tensor:
    """Sample ``T`` regions of every image with ONE ``grid_sample`` call.

    Args:
        x: ``(B, C, H, W)`` source feature map.
        theta: ``(B, T, 2, 3)`` affine matrices (see :func:`translations_to_theta`).
        out_hw: ``(h, w)`` size of each sampled region.
        mode: ``"direct"`` samples each region once at ``(h, w)`` (bilinear, zero padding,
            ``align_corners=False``). ``"torchreid"`` reproduces torchreid's HACNN: sample at the full
            source size ``(H, W)``, then resize bilinearly (``align_corners=True``) to ``(h, w)``.

    Returns:
        ``(B * T, C, h, w)`` regions, image-major (row ``b * T + t``), in ``x``'s dtype and, when
        ``x`` is channels_last, in channels_last layout.

    The grids of all regions are stacked along the grid height, so one ``grid_sample`` on ``x``
    (no copy of ``x`` per region) returns ``(B, C, T*h, w)``, which is then re-laid out once.
    The grid is float32 (from float32 ``theta``); a bfloat16 ``x`` is sampled in float32, exactly
    what autocast does for ``grid_sample``.
    """
    if mode not in REGION_SAMPLING_MODES:
        raise ValueError(f"sample_regions: mode must be one of {REGION_SAMPLING_MODES}, got {mode!r}")
    b, c, src_h, src_w = x.shape
    t = theta.shape[1]
    h, w = out_hw
    gh, gw = (h, w) if mode == "direct" else (src_h, src_w)
    grid = affine_grid(theta, (gh, gw))  # (B, T*gh, gw, 2)
    src = channels_last_grad(x if x.dtype == grid.dtype else x.to(grid.dtype))  # grid_sample's grad is NCHW
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (B, C, T*gh, gw)
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    if mode == "torchreid":
        out = out.view(b, c, t, gh, gw).transpose(1, 2).reshape(b * t, c, gh, gw)  # (B*T, C, H, W)
        out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=True)  # (B*T, C, h, w)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return out.to(dtype=x.dtype, memory_format=fmt)
    if channels_last:
        # NCHW (B, C, T*h, w) -> channels_last, whose memory (B, T*h, w, C) == (B, T, h, w, C) is
        # exactly a channels_last (B*T, C, h, w): the reshapes below are views. Cast first (a
        # contiguous, vectorised pass), then transpose in the narrower dtype: cheaper than one fused
        # cast+transpose copy or a 5-D permute(...).contiguous() (see benchmarks/_model_profile.py).
        # grad_layout: grid_sample's backward is faster with an NCHW gradient, so the gradient
        # is transposed back here, in x's (narrower) dtype, before the cast to float32.
        out = grad_layout(out.to(x.dtype), torch.contiguous_format)
        out = out.contiguous(memory_format=torch.channels_last)  # (B, C, T*h, w)
        return out.view(b, c, t, h, w).transpose(1, 2).reshape(b * t, c, h, w)  # (B*T, C, h, w) views
    return out.view(b, c, t, h, w).transpose(1, 2).reshape(b * t, c, h, w).to(x.dtype)


class RegionSampler(nn.Module):
    """Cuts the ``T`` regions out of a stage input: ``x (B, C, H, W)``, ``t (B, T, 2)`` translations ->
    ``(B*T, C, h, w)``.

    ``mode="direct"`` on a bfloat16 map (training under autocast, bf16 inference) or while tracing
    for export: two GEMMs (:func:`sample_stripes`), the same bilinear values and gradients (for ``x``
    and the translations) as ``grid_sample`` up to bf16 rounding, forward + backward ~1.9x faster
    on CPU (``benchmarks/_model_profile.py --sampler``), and in the int8 ONNX graph every max-pool
    stays on ONNX Runtime's fast NHWC int8 path. Otherwise :func:`translations_to_theta` (height
    ``1/T``) and :func:`sample_regions`. No weights; :meth:`fuse` gives the inference form.
    """

    def forward(self, x: torch.Tensor, t: torch.Tensor, out_hw: tuple[int, int], mode: str = "direct") -> torch.Tensor:
        if mode == "direct" and (x.dtype == torch.bfloat16 or torch.jit.is_tracing()):
            return sample_stripes(x, t, 1.0 / t.shape[1], out_hw)  # (B*T, C, h, w)
        theta = translations_to_theta(t, 1.0 / t.shape[1])  # (B, T, 2, 3)
        return sample_regions(x, theta, out_hw, mode)  # (B*T, C, h, w)

    def fuse(self, dtype: torch.dtype = torch.float32) -> StripeSampler:
        return StripeSampler()


class StripeSampler(RegionSampler):
    """Inference form of :class:`RegionSampler` (the same computation; kept as the fused module's type)."""


def _tent(p: torch.Tensor, n: int) -> torch.Tensor:
    """Bilinear weights of source pixels ``0..n-1`` for sample coordinates ``p (...,)`` (pixel units):
    ``(..., n)`` with ``max(0, 1 - |p - r|)``; pixels outside the map simply get no weight (zero padding)."""
    r = torch.arange(n, dtype=p.dtype, device=p.device)
    return (1 - (p.unsqueeze(-1) - r).abs()).clamp_min(0)


def sample_stripes(x: torch.Tensor, t: torch.Tensor, scale_h: float, out_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear sampling of ``T`` axis-aligned regions per image as two matrix products.

    ``x (B, C, H, W)`` (channels_last preferred), ``t (B, T, 2)`` translations ``(tx, ty)`` of
    the affine maps ``[[1, 0, tx], [0, scale_h, ty]]`` -> ``(B*T, C, h, w)`` channels_last in
    ``x``'s dtype. Same values as :func:`sample_regions` (``mode="direct"``: zero padding,
    ``align_corners=False``) up to rounding: the grid of such a map is the outer product
    of a row grid (``ty``) and a column grid (``tx``), so the bilinear weights factor into a
    ``(T*h, H)`` row matrix and a ``(w, W)`` column matrix per region. Rows are sampled by one batched
    GEMM on the channels_last map ``(B, H, W*C)``, columns by a second one; no full-map cast, no
    re-layout. Costs ~3 % of HA-CNN's FLOPs at GEMM speed instead of a gather per output value
    (~1.7x faster than ``grid_sample`` in bf16 on CPU, measured). The weights are computed in float32.
    """
    b, c, big_h, big_w = x.shape
    n_reg = t.shape[1]
    h, w = out_hw
    f32 = torch.float32
    ys = (torch.arange(h, device=t.device, dtype=f32) * 2 + 1) / h - 1  # (h,) normalised pixel centres
    xs = (torch.arange(w, device=t.device, dtype=f32) * 2 + 1) / w - 1  # (w,)
    tx, ty = t.float().unbind(dim=-1)  # (B, T)
    py = ((ys * scale_h + ty.unsqueeze(-1) + 1) * big_h - 1) / 2  # (B, T, h) source row coordinates
    px = ((xs + tx.unsqueeze(-1) + 1) * big_w - 1) / 2  # (B, T, w) source column coordinates
    rows = _tent(py, big_h).to(x.dtype).view(b, n_reg * h, big_h)  # (B, T*h, H)
    cols = _tent(px, big_w).to(x.dtype).view(b * n_reg, 1, w, big_w)  # (B*T, 1, w, W)
    src = x.permute(0, 2, 3, 1).reshape(b, big_h, big_w * c)  # (B, H, W*C): a view when channels_last
    sampled_rows = torch.bmm(rows, src).view(b * n_reg, h, big_w, c)  # (B*T, h, W, C)
    out = torch.matmul(cols, sampled_rows)  # (B*T, h, w, C)
    return out.permute(0, 3, 1, 2)  # (B*T, C, h, w), channels_last
