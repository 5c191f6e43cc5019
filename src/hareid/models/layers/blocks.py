"""Convolutional building blocks of HA-CNN (Li, Zhu, Gong, CVPR 2018, Fig. 2 and Table 1).

* :class:`ConvBlock` - Conv2d (with bias) + BatchNorm2d + ReLU, the unit every other block uses.
* :class:`InceptionA` - four parallel streams at stride 1, concatenated (output ``C_out`` channels).
* :class:`AvgPool3x3` - InceptionA's 3x3 average pooling, as a (much faster) depthwise convolution.
* :class:`InceptionB` - three parallel streams at stride 2, concatenated (output ``C_out`` channels).
* :func:`channels_last_grad`, :func:`grad_layout` - identity whose backward hands on the gradient in
  channels_last (or a given) layout.

Inference forms live beside the blocks (as timm keeps a block's deploy form beside it): a block with a
``fuse(dtype)`` method returns its inference form, and :func:`fuse_blocks` walks a model once,
swapping every such block for its form (:class:`ConvBlock` -> :class:`ConvAct`, InceptionA's pooling
stream -> :class:`BoxPoolAct`; the attention modules and heads of :mod:`hareid.models.layers.attention` and
:mod:`hareid.models.core` do the same). The model's own wiring then runs the fused modules: there is
no second copy of the network.

Every stride-2 layer uses ``kernel 3, padding 1``, so a side ``n`` becomes ``ceil(n / 2)``; all
streams of an :class:`InceptionB` therefore agree on their output size for odd ``n`` too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AvgPool3x3",
    "BoxPoolAct",
    "ConvAct",
    "ConvBlock",
    "InceptionA",
    "InceptionB",
    "PoolProject",
    "Streams",
    "channels_last_grad",
    "conv_chain",
    "fuse_blocks",
    "grad_layout",
]

_CL = torch.channels_last


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
    convolution's weight and bias (:meth:`folded`, ``O(weights)`` work per call) instead of making a
    pass over the output: same result up to float rounding, one memory pass less per block (~10% of a
    bf16 eval forward of HA-CNN on CPU). Train mode, and a ``bn`` already replaced by export's folding
    (an ``nn.Identity``), run conv -> bn -> ReLU as written. :meth:`fuse` gives the inference form.
    """

    def __init__(self, in_c: int, out_c: int, k: int = 1, s: int = 1, p: int = 0, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, k, stride=s, padding=p, bias=True)
        self.bn = nn.BatchNorm2d(out_c)
        self.act = act

    def _bn_folds(self) -> bool:
        """Whether ``bn`` is an eval-mode BatchNorm2d with statistics (foldable into the conv)."""
        bn = self.bn
        return not self.training and isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None and bn.affine

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight (out_c, in_c, k, k), bias (out_c,))`` of the conv with the eval BatchNorm folded in
        (or as they stand when ``bn`` was already folded away into an ``nn.Identity``)."""
        conv, bn = self.conv, self.bn
        bias = conv.bias if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)
        if isinstance(bn, nn.Identity):
            return conv.weight, bias
        if not isinstance(bn, nn.BatchNorm2d) or bn.running_var is None or not bn.affine:
            raise ValueError("ConvBlock.folded needs an affine BatchNorm2d with running statistics")
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)  # (out_c,)
        return conv.weight * scale.view(-1, 1, 1, 1), bn.bias + (bias - bn.running_mean) * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._bn_folds():
            weight, bias = self.folded()
            y = self.conv._conv_forward(x, weight, bias)
        else:
            y = self.bn(self.conv(x))
        return F.relu(y, inplace=True) if self.act else y

    def fuse(self, dtype: torch.dtype = torch.float32) -> ConvAct:
        """Inference form: one :class:`ConvAct` (BatchNorm folded, ReLU as the conv's post-op) in ``dtype``."""
        conv = self.conv
        if conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"ConvBlock.fuse: unsupported convolution {conv}")
        with torch.no_grad():
            weight, bias = self.folded()
        return ConvAct(weight, bias, conv.stride, conv.padding, conv.groups, relu=self.act, dtype=dtype)

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
        fold = self._bn_folds()
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


class Streams(nn.Module):
    """Parallel streams on one input, concatenated along channels: ``(B, C, H, W) -> (B, sum c_i, H', W')``."""

    def __init__(self, streams: Sequence[nn.Module]) -> None:
        super().__init__()
        self.streams = nn.ModuleList(streams)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([stream(x) for stream in self.streams], dim=1)


class PoolProject(nn.Sequential):
    """InceptionA's fourth stream: ``AvgPool3x3 -> ConvBlock 1x1``, ``(B, in_c, H, W) -> (B, out_c, H, W)``.

    A ``nn.Sequential`` (children ``0``, ``1``), so state_dict keys are those of the plain stream;
    :meth:`fuse` gives :class:`BoxPoolAct`.
    """

    def __init__(self, in_c: int, out_c: int) -> None:
        super().__init__(AvgPool3x3(in_c), ConvBlock(in_c, out_c, 1))

    def fuse(self, dtype: torch.dtype = torch.float32) -> BoxPoolAct:
        return BoxPoolAct(self[1], dtype)


class InceptionA(Streams):
    """Inception-A (stride 1): ``(B, in_c, H, W) -> (B, out_c, H, W)``.

    Streams (``m = out_c // 4`` channels each): ``1x1 -> 3x3`` three times, and
    ``3x3 avg-pool -> 1x1`` (:class:`PoolProject`).
    """

    def __init__(self, in_c: int, out_c: int) -> None:
        m = out_c // 4
        streams: list[nn.Module] = [conv_chain(in_c, [(m, 1, 1), (m, 3, 1)]) for _ in range(3)]
        super().__init__([*streams, PoolProject(in_c, m)])


class InceptionB(Streams):
    """Inception-B (stride 2): ``(B, in_c, H, W) -> (B, out_c, ceil(H/2), ceil(W/2))``.

    Streams (``m = out_c // 4``): ``1x1 -> 3x3/2`` (m), ``1x1 -> 3x3 -> 3x3/2`` (m), and
    ``3x3/2 max-pool -> 1x1`` (2m).
    """

    def __init__(self, in_c: int, out_c: int) -> None:
        m = out_c // 4
        conv_specs = ([(m, 1, 1), (m, 3, 2)], [(m, 1, 1), (m, 3, 1), (m, 3, 2)])
        streams: list[nn.Module] = [conv_chain(in_c, spec) for spec in conv_specs]
        streams.append(nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), ConvBlock(in_c, 2 * m, 1)))
        super().__init__(streams)


# --------------------------------------------------------------------------------------- inference forms
def _use_onednn(x: torch.Tensor) -> bool:
    """Whether the oneDNN fused-post-op convolution applies: eager, CPU, fp32/bf16, oneDNN built in."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():  # first: keeps dynamo from breaking the graph
        return False
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and torch.backends.mkldnn.is_available()


class ConvAct(nn.Module):
    """Inference form of :class:`ConvBlock`: ``Conv2d`` (BatchNorm folded) and an optional ReLU,
    ``(B, Cin, H, W) -> (B, Cout, H', W')``.

    Weight and bias are buffers stored in the run dtype, channels_last. On CPU (eager) the ReLU is a
    post-op of the oneDNN convolution (``torch.ops.mkldnn._convolution_pointwise``, the kernel
    Inductor emits for the same fusion), so the output is written once; elsewhere (CUDA, under
    ``torch.compile``, where Inductor fuses it itself, under tracing) it is ``conv2d`` then an
    in-place ReLU.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        groups: int = 1,
        relu: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().to(dtype).contiguous(memory_format=_CL))
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype).contiguous())
        self.stride = list(nn.modules.utils._pair(stride))
        self.padding = list(nn.modules.utils._pair(padding))
        self.groups = groups
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _use_onednn(x):
            attr = "relu" if self.relu else "none"
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.weight, self.bias, self.padding, self.stride, [1, 1], self.groups, attr, [], ""
            )
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups)
        return F.relu(y, inplace=True) if self.relu else y

    def extra_repr(self) -> str:
        o, i, kh, kw = self.weight.shape
        return (f"{i * self.groups}, {o}, kernel=({kh}, {kw}), stride={tuple(self.stride)}, "
                f"padding={tuple(self.padding)}, groups={self.groups}, relu={self.relu}, dtype={self.weight.dtype}")


class BoxPoolAct(nn.Module):
    """Inference form of :class:`PoolProject`, ``ReLU(W AvgPool3x3(x) + b)``, pooling the narrower side.

    The zero-padded 3x3 average pool is linear and channel-wise, so it commutes with the 1x1
    projection: ``W box(x) / 9 == box(W x / 9)``. With ``out_c < in_c`` the 1x1 runs first (no
    bias, no ReLU) and the pool (a depthwise convolution with a ones kernel, exact in bf16) carries
    the bias and the ReLU; else the pool runs first and the 1x1 carries them. The 1/9 lives in the
    1x1 weights either way. ``(B, in_c, H, W) -> (B, out_c, H, W)``.
    """

    def __init__(self, proj: ConvBlock, dtype: torch.dtype) -> None:
        super().__init__()
        with torch.no_grad():
            weight, bias = proj.folded()  # (out_c, in_c, 1, 1), (out_c,)
        out_c, in_c = weight.shape[:2]
        self.project_first = out_c < in_c
        pool_c = out_c if self.project_first else in_c
        ones = torch.ones(pool_c, 1, 3, 3, device=weight.device)
        if self.project_first:
            self.first = ConvAct(weight / 9, None, relu=False, dtype=dtype)
            self.second = ConvAct(ones, bias, 1, 1, groups=pool_c, relu=True, dtype=dtype)
        else:
            self.first = ConvAct(ones, None, 1, 1, groups=pool_c, relu=False, dtype=dtype)
            self.second = ConvAct(weight / 9, bias, relu=True, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


def fuse_blocks(module: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Swap, in place, every sub-module of ``module`` that has a ``fuse(dtype)`` method for its
    inference form (not descending into it), and cast the tensors of every other sub-module to
    ``dtype``; returns ``module``. One walk, top-down; ``module``'s own tensors are left as they are.

    Use it on an eval-mode copy (see :func:`hareid.models.inference.optimize_for_inference`).
    """
    for name, child in module.named_children():
        fuse = getattr(child, "fuse", None)
        if callable(fuse):
            module._modules[name] = fuse(dtype)
            continue
        fuse_blocks(child, dtype)
        for key, p in child._parameters.items():
            if p is not None and p.is_floating_point():
                child._parameters[key] = nn.Parameter(p.detach().to(dtype), requires_grad=False)
        for key, buf in child._buffers.items():
            if buf is not None and buf.is_floating_point():
                child._buffers[key] = buf.to(dtype)
    return module
