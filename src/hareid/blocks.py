"""Convolutional building blocks of HA-CNN (Li, Zhu, Gong, CVPR 2018, Fig. 2 and Table 1).

* :class:`ConvBlock` - Conv2d (with bias) + BatchNorm2d + ReLU, the unit every other block uses.
* :class:`InceptionA` - four parallel streams at stride 1, concatenated (output ``C_out`` channels).
* :class:`AvgPool3x3` - InceptionA's 3x3 average pooling, as a (much faster) depthwise convolution.
* :class:`InceptionB` - three parallel streams at stride 2, concatenated (output ``C_out`` channels).
* :func:`channels_last_grad`, :func:`grad_layout` - identity whose backward hands on the gradient in
  channels_last (or a given) layout.

Every stride-2 layer uses ``kernel 3, padding 1``, so a side ``n`` becomes ``ceil(n / 2)``; all
streams of an :class:`InceptionB` therefore agree on their output size for odd ``n`` too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AvgPool3x3", "ConvBlock", "InceptionA", "InceptionB", "channels_last_grad", "conv_chain", "grad_layout"]


class _GradLayout(torch.autograd.Function):
    """Identity forward; backward returns the incoming gradient in ``memory_format``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
        ctx.memory_format = memory_format
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.contiguous(memory_format=ctx.memory_format), None


def grad_layout(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """``x`` itself, but gradients flowing back through the result arrive in ``memory_format``.

    A no-op unless ``x`` is a 4-D tensor that needs a gradient (so eval, tracing and export never
    see the autograd Function). See :func:`channels_last_grad` for why layouts matter.
    """
    if (
        torch.is_grad_enabled()
        and x.requires_grad
        and x.dim() == 4
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
    ):
        return _GradLayout.apply(x, memory_format)
    return x


def channels_last_grad(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself, but gradients flowing back through the result arrive in channels_last layout.

    The backward of spatial/channel means (``x.mean(dim=...)``) and of ``grid_sample`` produces
    NCHW-contiguous gradients even for a channels_last ``x``. Summed with the channels_last gradients
    of the convolutions, and fed to ReLU backward, such mixed layouts take PyTorch's slow strided
    paths (several times slower; `benchmarks/_model_profile.py --profile` shows them). Wrapping the input of those consumers converts their
    summed gradient once (one copy). A no-op unless ``x`` is channels_last (and see :func:`grad_layout`).
    """
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return grad_layout(x, torch.channels_last)
    return x


class ConvBlock(nn.Module):
    """Conv2d (with bias) -> BatchNorm2d -> ReLU (``act=False``: no ReLU).

    Shapes: ``(B, in_c, H, W) -> (B, out_c, H', W')`` with ``H' = (H + 2p - k) // s + 1``.
    Sub-modules are named ``conv`` and ``bn`` so BN folding for export can find the pairs.

    In eval mode BatchNorm is a fixed per-channel affine map, so the forward folds it into the
    convolution's weight and bias (``O(weights)`` work per call) instead of making a pass over the
    output: same result up to float rounding, one memory pass less per block (~10% of a bf16
    eval forward of HA-CNN on CPU). Train mode, and a ``bn`` already replaced by export's folding
    (an ``nn.Identity``), run conv -> bn -> ReLU as written.
    """

    def __init__(self, in_c: int, out_c: int, k: int = 1, s: int = 1, p: int = 0, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, k, stride=s, padding=p, bias=True)
        self.bn = nn.BatchNorm2d(out_c)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self.conv, self.bn
        if self.training or not isinstance(bn, nn.BatchNorm2d) or bn.running_var is None or not bn.affine:
            y = bn(conv(x))
        else:
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)  # (out_c,)
            weight = conv.weight * scale.view(-1, 1, 1, 1)  # (out_c, in_c, k, k)
            bias = bn.bias - bn.running_mean * scale
            if conv.bias is not None:
                bias = bias + conv.bias * scale
            y = conv._conv_forward(x, weight, bias)
        return F.relu(y, inplace=True) if self.act else y

    def forward_outer(self, s: torch.Tensor, c: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
        """This 1x1 block applied to the rank-1 map ``s * c`` without building it.

        ``s (B, 1, H, W)``, ``c (B, in_c)`` -> ``ReLU(BN(conv(s * c)))`` (no ReLU when ``act=False``) of shape ``(B, out_c, H, W)``.
        A 1x1 convolution of ``s[b, h, w] * c[b, i]`` is ``s[b, h, w] * (W c[b])[o] + bias[o]``: a
        ``(B, in_c) x (in_c, out_c)`` product and one multiply-add over the map replace the ``in_c x
        out_c`` convolution over every pixel (same values up to float rounding, forward and backward).
        The result has ``s``'s dtype (what the convolution would return, also under autocast) and is
        channels_last when ``channels_last`` (built in that layout, no copy).
        """
        conv, bn = self.conv, self.bn
        if conv.kernel_size != (1, 1) or conv.groups != 1:
            raise ValueError("ConvBlock.forward_outer needs a 1x1 convolution without groups")
        b, _, h, w = s.shape
        v = F.linear(c, conv.weight.flatten(1))  # (B, out_c)
        bias = conv.bias if conv.bias is not None else v.new_zeros(v.shape[1])
        fold = not self.training and isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None and bn.affine
        if fold:  # eval: the BN affine map folds into v and the bias, as in forward()
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            v = v * scale
            bias = bn.bias + (bias - bn.running_mean) * scale
        out_c = v.shape[1]
        v, bias = v.to(s.dtype), bias.to(s.dtype)
        if channels_last:
            # (B, H, W, out_c) contiguous, viewed as (B, out_c, H, W): channels_last without a copy
            z = torch.addcmul(bias.view(1, 1, 1, out_c), s.reshape(b, h, w, 1), v.view(b, 1, 1, out_c))
            z = z.permute(0, 3, 1, 2)
        else:
            z = torch.addcmul(bias.view(1, out_c, 1, 1), s, v.view(b, out_c, 1, 1))  # (B, out_c, H, W)
        if not fold:
            z = bn(z)
        return F.relu(z, inplace=True) if self.act else z


class AvgPool3x3(nn.Module):
    """``nn.AvgPool2d(3, stride=1, padding=1)`` (zero padding counted, so always ``sum / 9``) as a
    depthwise convolution with a ones kernel, then ``* 1/9``: ``(B, C, H, W) -> (B, C, H, W)``.

    Same values (up to float rounding; the kernel of ones is exact in bfloat16, unlike 1/9), but
    oneDNN's depthwise convolution is much faster than PyTorch's CPU average pooling in bfloat16
    channels_last, forward and backward (timed by ``benchmarks/_model_profile.py``).
    The kernel is a non-persistent buffer: state_dicts are unchanged.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("kernel", torch.ones(channels, 1, 3, 3), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        box_sum = F.conv2d(x, self.kernel.to(x.dtype), None, 1, 1, 1, x.shape[1])  # (B, C, H, W)
        return box_sum.mul_(1.0 / 9.0)  # in place: the conv saves only its input for backward


def conv_chain(in_c: int, layers: Sequence[tuple[int, int, int]]) -> nn.Sequential:
    """A ``nn.Sequential`` of ConvBlocks from ``(out_c, kernel, stride)`` triples (padding k // 2)."""
    blocks = []
    for out_c, k, s in layers:
        blocks.append(ConvBlock(in_c, out_c, k, s=s, p=k // 2))
        in_c = out_c
    return nn.Sequential(*blocks)


class _Streams(nn.Module):
    """Parallel streams on one input, concatenated along channels: ``(B, C, H, W) -> (B, sum c_i, H', W')``."""

    streams: nn.ModuleList

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([stream(x) for stream in self.streams], dim=1)


class InceptionA(_Streams):
    """Inception-A (stride 1): ``(B, in_c, H, W) -> (B, out_c, H, W)``.

    Streams (``m = out_c // 4`` channels each): ``1x1 -> 3x3`` three times, and
    ``3x3 avg-pool -> 1x1``.
    """

    def __init__(self, in_c: int, out_c: int) -> None:
        super().__init__()
        m = out_c // 4
        streams: list[nn.Module] = [conv_chain(in_c, [(m, 1, 1), (m, 3, 1)]) for _ in range(3)]
        streams.append(nn.Sequential(AvgPool3x3(in_c), ConvBlock(in_c, m, 1)))
        self.streams = nn.ModuleList(streams)


class InceptionB(_Streams):
    """Inception-B (stride 2): ``(B, in_c, H, W) -> (B, out_c, ceil(H/2), ceil(W/2))``.

    Streams (``m = out_c // 4``): ``1x1 -> 3x3/2`` (m), ``1x1 -> 3x3 -> 3x3/2`` (m), and
    ``3x3/2 max-pool -> 1x1`` (2m).
    """

    def __init__(self, in_c: int, out_c: int) -> None:
        super().__init__()
        m = out_c // 4
        conv_specs = ([(m, 1, 1), (m, 3, 2)], [(m, 1, 1), (m, 3, 1), (m, 3, 2)])
        streams: list[nn.Module] = [conv_chain(in_c, spec) for spec in conv_specs]
        streams.append(nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), ConvBlock(in_c, 2 * m, 1)))
        self.streams = nn.ModuleList(streams)
