"""Inference forms of a hareid model: the embedding graph as fast as the hardware allows.

* :func:`fuse_for_inference` - deep-copied eval model with every Conv2d+BatchNorm2d (and
  Linear+BatchNorm1d) pair folded, channels_last weights, gradients off (fp32; what ONNX /
  TorchScript export write).
* :func:`optimize_for_inference` - THE embedding network (what ``hareid.evaluate.features.inference_net``
  builds for the Embedder, evaluation, index and server): for a HarmNet an :class:`InferenceModel`,
  float32 ``(B, 3, H, W)`` in, float32 ``(B, D)`` embeddings out, equal to ``model.eval()(x)`` (see
  the tolerance below), weights stored once in the run dtype. There is no second graph: the
  model's own wiring (``HarmNet._run``) runs with its blocks swapped for their inference forms, each
  kept beside its block (``fuse()`` methods, walked once by :func:`hareid.models.layers.blocks.fuse_blocks`):

  - BatchNorm folded into the convolutions and ReLU run as the convolution's oneDNN post-op (CPU),
    so a ConvBlock is one pass over memory instead of three;
  - weights cast once (no per-call autocast casts of ~250 weight tensors);
  - the soft-attention mask factorised: its 1x1 conv acts on a rank-1 map ``S (B,1,H,W) x C (B,C)``,
    so ``W (S C) = S (W C)``; the ``C x C`` convolution over the full map becomes a ``(B, C) x (C, C)``
    product and one fused multiply-add (exact algebra, ~5 % of HA-CNN's FLOPs and two passes saved;
    the training model does the same, :meth:`hareid.models.layers.blocks.ConvBlock.forward_outer`);
  - the regions of all ``T`` stripes sampled by two GEMMs (:func:`sample_stripes`, the
    :class:`hareid.models.layers.attention.StripeSampler`) in bf16: no full-map cast to float32, no gather per
    output value;
  - the global average pool computed once per stage for channel and hard attention; the tiny
    attention heads (pooled vectors, translations, sampling grid) in float32;
  - InceptionA's average-pool stream pools the narrower of its input / output (the 1/9 folded into
    the 1x1 weights, bias and ReLU carried by the pooling convolution);
  - optionally ``torch.compile`` with Inductor freezing (constant weights, prepacked oneDNN
    convolutions with fused post-ops, generated kernels for the elementwise / pooling work), at a
    fixed batch size (ragged batches are padded, larger ones chunked: one compilation).

  Any other module gets the generic form: BN folded, autocast in the dtype, float32 out.

Why a module of its own: :mod:`hareid.deploy.export` writes files (ONNX, TorchScript); these are in-process
forms for the one embedding function (Embedder, evaluation, index, server). int8 lives in
:mod:`hareid.deploy.quantize`.

Tolerance (``tests/models/test_inference.py``): fp32 form vs ``model.eval()``: max |diff| <= 1e-4 on
unit-norm branch embeddings; bf16 form: per-image cosine >= 0.99 and max |diff| <= 0.03, the same
band as bf16 autocast on the original model (bf16 keeps ~3 significant digits).
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from hareid.models.layers.attention import sample_stripes
from hareid.models.layers.blocks import ConvAct, ConvBlock, fuse_blocks

__all__ = [
    "ConvAct",
    "InferenceModel",
    "fuse_for_inference",
    "fuse_harmnet",
    "inference_dtype",
    "optimize_for_inference",
    "sample_stripes",
]

_CL = torch.channels_last


# --------------------------------------------------------------------------------------- BN folding
def _named_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """Child-name pairs ``(conv, bn)`` that ``module.forward`` applies back to back (BN right after conv)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

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


# --------------------------------------------------------------------------------------- the model
def fuse_harmnet(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The inference form of a :class:`hareid.models.core.HarmNet`: an eval copy (BN folded, frozen,
    channels_last) whose blocks are swapped for their ``fuse()`` forms by
    :func:`hareid.models.layers.blocks.fuse_blocks`, weights in ``dtype`` (the attention heads, pooled vectors and
    embedding heads float32). The copy runs the model's own wiring; ``model`` is not modified.
    """
    return fuse_blocks(fuse_for_inference(model), dtype)


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
        self.graph = fuse_harmnet(net, dtype)
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
        self.graph.check_input(x)
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

    On Linux it also lets glibc keep freed activation buffers in the process
    (:func:`hareid.runtime.keep_freed_memory`; ``HAREID_MALLOC=system`` opts out): without that,
    every batch pays thousands of page faults for memory it just gave back.
    """
    from hareid.models.core import HarmNet
    from hareid.runtime import keep_freed_memory

    keep_freed_memory()

    if dtype is None:
        dtype = torch.float32
    if dtype == "auto":
        dtype = inference_dtype(next(model.parameters()).device)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"optimize_for_inference: dtype must be torch.float32, torch.bfloat16, torch.float16 "
                         f"or 'auto', got {dtype}; for int8 use hareid.deploy.quantize.quantize_int8")
    with torch.no_grad():
        if isinstance(model, HarmNet):
            return InferenceModel(model, dtype, compile=compile, compile_batch=compile_batch, **compile_kwargs).eval()
        generic: nn.Module = _InDtype(fuse_for_inference(model), dtype).eval()
    if compile:
        compile_kwargs.setdefault("dynamic", False)
        return torch.compile(generic, **compile_kwargs)
    return generic
