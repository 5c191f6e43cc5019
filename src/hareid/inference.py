"""Inference forms of a hareid model: the embedding graph as fast as the hardware allows.

* :func:`fuse_for_inference` - deep-copied eval model with every Conv2d+BatchNorm2d (and
  Linear+BatchNorm1d) pair folded, channels_last weights, gradients off (fp32; what ONNX /
  TorchScript export write).
* :func:`optimize_for_inference` - THE embedding network (what ``hareid.evaluate.features.inference_net``
  builds for the Embedder, evaluation, index and server): for a HarmNet an :class:`InferenceModel`,
  float32 ``(B, 3, H, W)`` in, float32 ``(B, D)`` embeddings out, equal to ``model.eval()(x)`` (see
  the tolerance below), weights stored once in the run dtype and the graph rewritten for inference:

  - BatchNorm folded into the convolutions and ReLU run as the convolution's oneDNN post-op (CPU),
    so a ConvBlock is one pass over memory instead of three;
  - weights cast once (no per-call autocast casts of ~250 weight tensors);
  - the soft-attention mask factorised: its 1x1 conv acts on a rank-1 map ``S (B,1,H,W) x C (B,C)``,
    so ``W (S C) = S (W C)``; the ``C x C`` convolution over the full map becomes a ``(B, C) x (C, C)``
    product and one fused multiply-add (exact algebra, ~5 % of HA-CNN's FLOPs and two passes saved;
    the training model does the same, :meth:`hareid.blocks.ConvBlock.forward_outer`);
  - the regions of all ``T`` stripes sampled by two GEMMs (:func:`sample_stripes`) in bf16: no
    full-map cast to float32, no gather per output value;
  - the global average pool computed once per stage for channel and hard attention; the tiny
    attention heads (pooled vectors, translations, sampling grid) in float32;
  - InceptionA's average-pool stream pools the narrower of its input / output (the 1/9 folded into
    the 1x1 weights, bias and ReLU carried by the pooling convolution);
  - optionally ``torch.compile`` with Inductor freezing (constant weights, prepacked oneDNN
    convolutions with fused post-ops, generated kernels for the elementwise / pooling work), at a
    fixed batch size (ragged batches are padded, larger ones chunked: one compilation).

  Any other module gets the generic form: BN folded, autocast in the dtype, float32 out.

Why a module of its own: :mod:`hareid.export` writes files (ONNX, TorchScript); these are in-process
forms for the one embedding function (Embedder, evaluation, index, server). int8 lives in
:mod:`hareid.quantize`.

Tolerance (``tests/test_inference.py``): fp32 form vs ``model.eval()``: max |diff| <= 1e-4 on
unit-norm branch embeddings; bf16 form: per-image cosine >= 0.99 and max |diff| <= 0.03, the same
band as bf16 autocast on the original model (bf16 keeps ~3 significant digits).
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

__all__ = [
    "ConvAct",
    "InferenceModel",
    "fuse_for_inference",
    "inference_dtype",
    "optimize_for_inference",
    "sample_stripes",
]

_CL = torch.channels_last


# --------------------------------------------------------------------------------------- BN folding
def _named_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """Child-name pairs ``(conv, bn)`` that ``module.forward`` applies back to back (BN right after conv)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    from hareid.blocks import ConvBlock

    if isinstance(module, ConvBlock):
        return [("conv", "bn")]
    if isinstance(module, BasicBlock):
        return [("conv1", "bn1"), ("conv2", "bn2")]
    if isinstance(module, Bottleneck):
        return [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")]
    return []


def _foldable(first: nn.Module, bn: nn.Module) -> bool:
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_mean is None:
        return False
    if type(first) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d):
        return first.out_channels == bn.num_features
    if type(first) is nn.Linear and isinstance(bn, nn.BatchNorm1d):
        return first.out_features == bn.num_features
    return False


def _fold(first: nn.Module, bn: nn.Module) -> nn.Module:
    if isinstance(first, nn.Conv2d):
        return fuse_conv_bn_eval(first, bn)
    return fuse_linear_bn_eval(first, bn)


def _fuse_(model: nn.Module) -> int:
    """Fold BN into the preceding layer in place (model in eval mode); returns the number folded."""
    count = 0
    for module in list(model.modules()):
        for conv_name, bn_name in _named_pairs(module):
            conv, bn = getattr(module, conv_name), getattr(module, bn_name)
            if _foldable(conv, bn):
                setattr(module, conv_name, _fold(conv, bn))
                setattr(module, bn_name, nn.Identity())
                count += 1
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in itertools.pairwise(names):
                first, bn = module._modules[a], module._modules[b]
                if first is not None and bn is not None and _foldable(first, bn):
                    module._modules[a] = _fold(first, bn)
                    module._modules[b] = nn.Identity()
                    count += 1
    return count


def fuse_for_inference(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """A deep-copied eval-mode model with BatchNorm folded into the preceding Conv2d / Linear.

    Folds every ``ConvBlock`` (``conv``, ``bn``), torchvision ResNet block (``convN``, ``bnN``) and
    adjacent ``Conv2d -> BatchNorm2d`` / ``Linear -> BatchNorm1d`` pair of an ``nn.Sequential`` with
    :func:`torch.nn.utils.fusion.fuse_conv_bn_eval` / ``fuse_linear_bn_eval``; the BN becomes
    ``nn.Identity``. Weights are moved to channels_last (``channels_last=True``) and
    ``requires_grad`` is switched off. The eval output equals the original's (fp32, ~1e-6); use it
    under ``torch.inference_mode()``. The number of folded pairs is stored as ``model.fused_bn``.
    The input model is not modified.
    """
    fused = copy.deepcopy(model).eval()
    count = _fuse_(fused)
    if channels_last:
        fused = fused.to(memory_format=_CL)
    for p in fused.parameters():
        p.requires_grad_(False)
    fused.fused_bn = count
    return fused


# --------------------------------------------------------------------------------------- building blocks
def _use_onednn(x: torch.Tensor) -> bool:
    """Whether the oneDNN fused-post-op convolution applies: eager, CPU, fp32/bf16, oneDNN built in."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():  # first: keeps dynamo from breaking the graph
        return False
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and torch.backends.mkldnn.is_available()


class ConvAct(nn.Module):
    """``Conv2d`` (BatchNorm already folded) and an optional ReLU: ``(B, Cin, H, W) -> (B, Cout, H', W')``.

    Weight and bias are buffers stored in the run dtype, channels_last. On CPU (eager) the ReLU is a
    post-op of the oneDNN convolution (``torch.ops.mkldnn._convolution_pointwise``, the kernel
    Inductor emits for the same fusion), so the output is written once; elsewhere (CUDA, under
    ``torch.compile``, where Inductor fuses it itself) it is ``conv2d`` then an in-place ReLU.
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

    @classmethod
    def from_conv(
        cls, conv: nn.Conv2d, relu: bool, dtype: torch.dtype, scale: float = 1.0, with_bias: bool = True
    ) -> ConvAct:
        """From a (BN-folded) ``nn.Conv2d``; ``scale`` multiplies the weight (not the bias)."""
        if conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"ConvAct: unsupported convolution {conv}")
        bias = conv.bias if with_bias else None
        return cls(conv.weight * scale, bias, conv.stride, conv.padding, conv.groups, relu, dtype)

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


def _conv_block(block: nn.Module, dtype: torch.dtype) -> ConvAct:
    """A BN-folded :class:`hareid.blocks.ConvBlock` as one :class:`ConvAct` (conv + ReLU)."""
    if not isinstance(block.bn, nn.Identity):
        raise ValueError("internal: ConvBlock must be BN-folded first (fuse_for_inference)")
    return ConvAct.from_conv(block.conv, relu=True, dtype=dtype)


def _chain(blocks: nn.Sequential, dtype: torch.dtype) -> nn.Sequential:
    return nn.Sequential(*[_conv_block(b, dtype) for b in blocks])


class BoxPoolAct(nn.Module):
    """InceptionA's 4th stream, ``ReLU(W AvgPool3x3(x) + b)``, pooling the narrower side.

    The zero-padded 3x3 average pool is linear and channel-wise, so it commutes with the 1x1
    projection: ``W box(x) / 9 == box(W x / 9)``. With ``out_c < in_c`` the 1x1 runs first (no
    bias, no ReLU) and the pool (a depthwise convolution with a ones kernel, exact in bf16) carries
    the bias and the ReLU; else the pool runs first and the 1x1 carries them. The 1/9 lives in the
    1x1 weights either way. ``(B, in_c, H, W) -> (B, out_c, H, W)``.
    """

    def __init__(self, proj: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        conv = proj.conv
        in_c, out_c = conv.in_channels, conv.out_channels
        self.project_first = out_c < in_c
        pool_c = out_c if self.project_first else in_c
        ones = torch.ones(pool_c, 1, 3, 3, device=conv.weight.device)
        if self.project_first:
            self.first = ConvAct.from_conv(conv, relu=False, dtype=dtype, scale=1 / 9, with_bias=False)
            self.second = ConvAct(ones, conv.bias, 1, 1, groups=pool_c, relu=True, dtype=dtype)
        else:
            self.first = ConvAct(ones, None, 1, 1, groups=pool_c, relu=False, dtype=dtype)
            self.second = ConvAct.from_conv(conv, relu=True, dtype=dtype, scale=1 / 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


class InceptionAInfer(nn.Module):
    """Inference form of :class:`hareid.blocks.InceptionA`: ``(B, in_c, H, W) -> (B, out_c, H, W)``."""

    def __init__(self, block: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        streams = list(block.streams)
        self.chains = nn.ModuleList(_chain(s, dtype) for s in streams[:3])
        self.pool = BoxPoolAct(streams[3][1], dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([*(c(x) for c in self.chains), self.pool(x)], dim=1)


class InceptionBInfer(nn.Module):
    """Inference form of :class:`hareid.blocks.InceptionB`: ``(B, in_c, H, W) -> (B, out_c, H/2, W/2)``."""

    def __init__(self, block: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        streams = list(block.streams)
        self.chains = nn.ModuleList(_chain(s, dtype) for s in streams[:2])
        pool = streams[2][0]
        self.pool_args = (pool.kernel_size, pool.stride, pool.padding)
        self.proj = _conv_block(streams[2][1], dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.max_pool2d(x, *self.pool_args)
        return torch.cat([*(c(x) for c in self.chains), self.proj(pooled)], dim=1)


def _vec(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A 1x1 conv on ``(B, C, 1, 1)`` as a linear map: weight ``(out, in)``, bias ``(out,)``, float32."""
    w = conv.weight.detach().float().flatten(1)
    b = conv.bias.detach().float() if conv.bias is not None else torch.zeros(w.shape[0], device=w.device)
    return w, b


class HarmAttnInfer(nn.Module):
    """Inference form of :class:`hareid.attention.HarmAttn`, applied: ``y -> (y * mask, translations)``.

    ``y (B, C, H, W)`` is re-weighted in place. One global average pool (float32) feeds both the
    channel attention and the hard attention. The soft mask is (default ``relu`` variant)
    ``sigmoid(ReLU(Wc (s * c) + bc))`` with ``s (B, 1, H, W)`` the spatial and ``c (B, C)`` the
    channel attention; since ``Wc`` is a 1x1 conv on a rank-1 map, ``Wc (s * c) = s * (Wc c)``:
    one ``(B, C) x (C, C)`` product and one fused multiply-add over the map replace the convolution.
    Spatial and channel attention run in float32 on their small tensors.
    """

    def __init__(self, attn: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.soft = attn.soft is not None
        self.hard = attn.hard is not None
        # soft-mask variant (hareid.attention.SOFT_MASKS): "relu" sigmoid(ReLU(z)), "sigmoid" sigmoid(z),
        # "temperature" sigmoid(z / T) with 1/T folded into the mix weights, "spatial" run as is
        self.mask_kind = getattr(attn.soft, "mask", "relu") if self.soft else "relu"
        self.soft_module = attn.soft if self.mask_kind == "spatial" else None
        if self.soft and self.soft_module is None:
            sp, ch = attn.soft.spatial, attn.soft.channel
            self.register_buffer("sp1_w", sp.conv1.conv.weight.detach().float().contiguous())
            self.register_buffer("sp1_b", sp.conv1.conv.bias.detach().float())
            self.sp1_args = (sp.conv1.conv.stride, sp.conv1.conv.padding)
            w2, b2 = _vec(sp.conv2.conv)  # (1, 1), (1,)
            self.register_buffer("sp2", torch.cat([w2.flatten(), b2]))  # scale, shift
            for name, block in (("ch1", ch.conv1), ("ch2", ch.conv2), ("mix", attn.soft.conv)):
                w, b = _vec(block.conv)
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

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, c, h, w = y.shape
        pooled = y.mean(dim=(2, 3), dtype=torch.float32)  # (B, C)
        t = None
        if self.hard:
            t = torch.tanh(F.linear(pooled, self.hard_w, self.hard_b)).view(b, self.num_regions, 2)  # (B, T, 2)
        if not self.soft:
            return y, t
        if self.soft_module is not None:  # "spatial": a small conv head, run in float32 as trained
            return y.mul_(self.soft_module(y.float()).to(y.dtype)), t
        s = y.mean(dim=1, keepdim=True, dtype=torch.float32)  # (B, 1, H, W)   Eq. (2)
        s = F.relu(F.conv2d(s, self.sp1_w, self.sp1_b, *self.sp1_args))  # (B, 1, H/2, W/2)
        s = F.interpolate(s, size=(h, w), mode="bilinear", align_corners=True)  # (B, 1, H, W)
        s = F.relu(s * self.sp2[0] + self.sp2[1])
        ch = F.relu(F.linear(pooled, self.ch1_w, self.ch1_b))  # (B, C/r)
        ch = F.relu(F.linear(ch, self.ch2_w, self.ch2_b))  # (B, C)   Eq. (3)-(4)
        v = F.linear(ch, self.mix_w).to(y.dtype)  # (B, C) = Wc c
        bias, s = self.mix_b.to(y.dtype), s.to(y.dtype)
        if y.is_contiguous(memory_format=_CL):  # build the mask as (B, H, W, C): channels_last, no copy
            mask = torch.addcmul(bias.view(1, 1, 1, c), s.view(b, h, w, 1), v.view(b, 1, 1, c)).permute(0, 3, 1, 2)
        else:
            mask = torch.addcmul(bias.view(1, c, 1, 1), s, v.view(b, c, 1, 1))  # (B, C, H, W)
        if self.mask_kind == "relu":
            mask = mask.relu_()
        return y.mul_(mask.sigmoid_()), t


def _tent(p: torch.Tensor, n: int) -> torch.Tensor:
    """Bilinear weights of source pixels ``0..n-1`` for sample coordinates ``p (...,)`` (pixel units):
    ``(..., n)`` with ``max(0, 1 - |p - r|)``; pixels outside the map simply get no weight (zero padding)."""
    r = torch.arange(n, dtype=p.dtype, device=p.device)
    return (1 - (p.unsqueeze(-1) - r).abs()).clamp_min(0)


def sample_stripes(x: torch.Tensor, t: torch.Tensor, scale_h: float, out_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear sampling of ``T`` axis-aligned regions per image as two matrix products.

    ``x (B, C, H, W)`` (channels_last preferred), ``t (B, T, 2)`` float32 translations ``(tx, ty)`` of
    the affine maps ``[[1, 0, tx], [0, scale_h, ty]]`` -> ``(B*T, C, h, w)`` channels_last in
    ``x``'s dtype. Same values as :func:`hareid.attention.sample_regions` (``mode="direct"``:
    zero padding, ``align_corners=False``) up to rounding: the grid of such a map is the outer product
    of a row grid (``ty``) and a column grid (``tx``), so the bilinear weights factor into a
    ``(T*h, H)`` row matrix and a ``(w, W)`` column matrix per region. Rows are sampled by one batched
    GEMM on the channels_last map ``(B, H, W*C)``, columns by a second one; no full-map cast, no
    re-layout. Costs ~3 % of HA-CNN's FLOPs at GEMM speed instead of a gather per output value
    (~1.7x faster than ``grid_sample`` in bf16 on CPU, measured).
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


def _linear_relu(seq: nn.Sequential) -> nn.Sequential:
    """``Linear -> (folded BN) -> ReLU`` heads stay float32 modules (tiny)."""
    return nn.Sequential(*[m for m in seq if not isinstance(m, nn.Identity)]).float()


# --------------------------------------------------------------------------------------- the model
def _convert(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Inference form of a backbone piece: known blocks rewritten, anything else cast to ``dtype``."""
    from hareid.blocks import ConvBlock, InceptionA, InceptionB

    if isinstance(module, ConvBlock):
        return _conv_block(module, dtype)
    if isinstance(module, InceptionA):
        return InceptionAInfer(module, dtype)
    if isinstance(module, InceptionB):
        return InceptionBInfer(module, dtype)
    if isinstance(module, nn.Sequential) and any(isinstance(m, (ConvBlock, InceptionA, InceptionB)) for m in module):
        return nn.Sequential(*[_convert(m, dtype) for m in module])
    return module.to(dtype)  # e.g. torchvision ResNet blocks: plain modules, weights in dtype


class _ShapeSpec:
    """The input-size rules of a HarmNet (``check_input``, ``region_sizes``) without its weights: the
    network object is kept with its modules, parameters and buffers dropped (its size methods only
    read plain attributes). Not an ``nn.Module``, so it is neither registered nor moved."""

    def __init__(self, net: nn.Module) -> None:
        spec = copy.copy(net)
        spec._modules, spec._parameters, spec._buffers = {}, {}, {}
        self.check_input = spec.check_input
        self.region_sizes = spec.region_sizes


class _Graph(nn.Module):
    """The rewritten embedding graph of a :class:`hareid.models.core.HarmNet` (what gets compiled).

    Input: ``(B, 3, H, W)`` already in the run dtype and channels_last; output: float32 ``(B, D)``.
    The wiring mirrors ``HarmNet._run`` in eval mode (``tests/test_inference.py`` checks every option).
    """

    def __init__(self, net: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.num_regions = net.num_regions
        self.local_branch = net.local_branch
        self.cross_attn = net.cross_attn
        self.region_sampling = net.region_sampling
        self.stem = _convert(net.stem, dtype)
        self.stages = nn.ModuleList(_convert(s, dtype) for s in net.stages)
        self.attn = nn.ModuleList(HarmAttnInfer(a, dtype) for a in net.attn)
        self.fc_global = _linear_relu(net.fc_global)
        if self.local_branch:
            self.local = nn.ModuleList(_convert(s, dtype) for s in net.local)
            self.fc_local = _linear_relu(net.fc_local)
        self.register_buffer("stripes", net.stripes.detach().float().clone())
        self.spec = _ShapeSpec(net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from hareid.attention import sample_regions, translations_to_theta

        b = x.shape[0]
        sizes = self.spec.region_sizes(x.shape[2], x.shape[3]) if self.local_branch else []
        src = self.stem(x)  # (B, C0, H0, W0)
        local = None
        for s in range(3):
            y = self.stages[s](src)  # (B, C_s, H_s, W_s)
            attended, t = self.attn[s](y)
            if self.local_branch:
                if s == 0 or self.cross_attn:
                    if t is None:
                        t = self.stripes.expand(b, -1, -1)  # (B, T, 2) fixed stripes
                    # two GEMMs instead of grid_sample: faster in bf16, and in the int8 ONNX graph (traced)
                    # it keeps every max-pool on ONNX Runtime's fast NHWC int8 path (+26 %, measured)
                    if self.region_sampling == "direct" and (src.dtype == torch.bfloat16 or torch.jit.is_tracing()):
                        regions = sample_stripes(src, t, 1.0 / self.num_regions, sizes[s])  # (B*T, C, h, w)
                    else:
                        theta = translations_to_theta(t, 1.0 / self.num_regions)  # (B, T, 2, 3) float32
                        regions = sample_regions(src, theta, sizes[s], self.region_sampling)  # (B*T, C, h, w)
                    local = regions if local is None else local + regions
                local = self.local[s](local)  # (B*T, C_s, h_{s+1}, w_{s+1})
            src = attended
        g = F.normalize(self.fc_global(src.mean(dim=(2, 3), dtype=torch.float32)), dim=1)  # (B, D)
        if not self.local_branch:
            return g
        pooled = local.mean(dim=(2, 3), dtype=torch.float32).reshape(b, -1)  # (B, T*C3), image-major
        return torch.cat([g, F.normalize(self.fc_local(pooled), dim=1)], dim=1)  # (B, 2D)


def _freezing() -> Any:
    import torch._inductor.config as inductor_config

    return inductor_config.patch(freezing=True)


class InferenceModel(nn.Module):
    """Embedding model for inference: float32 ``(B, 3, H, W)`` -> float32 ``(B, embed_dim)``.

    Built by :func:`optimize_for_inference`; runs under ``torch.inference_mode`` by itself, on the
    device of its weights (the input must be there). Attributes: ``dtype`` (run dtype),
    ``embed_dim``, ``compiled``, ``compile_batch`` (the fixed batch a compiled graph runs at).
    """

    def __init__(self, net: nn.Module, dtype: torch.dtype, compile: bool = False, compile_batch: int | None = None,
                 **compile_kwargs: Any) -> None:
        super().__init__()
        self.dtype = dtype
        self.embed_dim = net.embed_dim
        self.graph = _Graph(net, dtype)
        self.compiled = bool(compile)
        self.compile_batch = compile_batch
        self._run = self.graph
        if compile:
            compile_kwargs.setdefault("dynamic", False)
            self._run = torch.compile(self.graph, **compile_kwargs)

    @property
    def device(self) -> torch.device:
        return self.graph.stripes.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.graph.spec.check_input(x)
        if x.device != self.device:
            raise ValueError(f"InferenceModel: input on {x.device}, model on {self.device}; move one of them")
        with torch.inference_mode():
            x = x.to(dtype=self.dtype, memory_format=_CL)  # one pass: cast + layout
            if not self.compiled:
                return self._run(x).float()
            return self._run_fixed(x)

    def _run_fixed(self, x: torch.Tensor) -> torch.Tensor:
        """Run a compiled graph at one batch size: chunk larger batches, zero-pad the last one.

        Images are independent in eval mode (BN folded), so padding changes no embedding.
        """
        n = x.shape[0]
        if self.compile_batch is None:
            self.compile_batch = n
        size = self.compile_batch
        outs = []
        for i in range(0, n, size):
            part = x[i:i + size]
            k = part.shape[0]
            if k < size:
                pad = part.new_zeros((size - k, *part.shape[1:])).contiguous(memory_format=_CL)
                part = torch.cat([part, pad]).contiguous(memory_format=_CL)
            # Inductor freezing (weights as constants: prepacked oneDNN convolutions with fused
            # post-ops) is read from the global config at compile time; `options={"freezing": True}`
            # does not reach it (torch 2.14, checked), so patch it around the calls
            with _freezing():
                outs.append(self._run(part)[:k].float())
        return outs[0] if len(outs) == 1 else torch.cat(outs)


def inference_dtype(device: torch.device | str = "cpu") -> torch.dtype:
    """The ``"auto"`` run dtype on ``device``: :func:`hareid.runtime.auto_dtype`, the one policy."""
    from hareid.runtime import auto_dtype  # (perf: one dtype policy for every entry point)

    return auto_dtype(device)


class _InDtype(nn.Module):
    """Any other module: runs ``net`` (BN-folded) under autocast in ``dtype``, returns float32."""

    def __init__(self, net: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.net, self.dtype = net, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device_type=x.device.type, dtype=self.dtype,
                                                    enabled=self.dtype != torch.float32):
            return self.net(x).float()


def optimize_for_inference(
    model: nn.Module,
    dtype: torch.dtype | str | None = None,
    compile: bool = False,
    compile_batch: int | None = None,
    **compile_kwargs: Any,
) -> nn.Module:
    """The network every hareid embedding runs: float32 ``(B, 3, H, W)`` -> float32 ``(B, D)``.

    ``model`` itself is not modified.

    Args:
        model: a :class:`hareid.models.core.HarmNet` (``hacnn``, ``resnet*_harm``), any mode/device:
            rewritten into an :class:`InferenceModel`. Any other module gets the generic form
            (BN folded by :func:`fuse_for_inference`, autocast in ``dtype``).
        dtype: run dtype: ``None`` / ``torch.float32``, ``torch.bfloat16`` (CPUs with native bf16,
            CUDA), ``torch.float16`` (CUDA), or ``"auto"`` (:func:`inference_dtype` of the model's
            device). A HarmNet's weights are stored in it once.
        compile: ``torch.compile`` the graph (Inductor with freezing; ~1-3 minutes on a CPU at the
            first call, then the fastest form). A HarmNet's graph runs at one batch size,
            ``compile_batch`` (default: the first call's): larger batches are chunked, smaller ones
            zero-padded.
        **compile_kwargs: passed to ``torch.compile``.

    Returns:
        an :class:`InferenceModel` for a HarmNet (equal to ``model.eval()(x)`` within the module's
        stated tolerance, any input size the model accepts), else the generic module.
    """
    from hareid.models.core import HarmNet

    if dtype is None:
        dtype = torch.float32
    if dtype == "auto":
        dtype = inference_dtype(next(model.parameters()).device)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"optimize_for_inference: dtype must be torch.float32, torch.bfloat16, torch.float16 "
                         f"or 'auto', got {dtype}; for int8 use hareid.quantize.quantize_int8")
    with torch.no_grad():
        if isinstance(model, HarmNet):
            net = fuse_for_inference(model)
            return InferenceModel(net, dtype, compile=compile, compile_batch=compile_batch, **compile_kwargs).eval()
        generic: nn.Module = _InDtype(fuse_for_inference(model), dtype).eval()
    if compile:
        compile_kwargs.setdefault("dynamic", False)
        return torch.compile(generic, **compile_kwargs)
    return generic
