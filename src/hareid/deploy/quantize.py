"""int8 inference on CPU: static quantisation of the hareid inference graph with ONNX Runtime.

:func:`quantize_int8` exports the float32 inference graph of :func:`hareid.models.inference.optimize_for_inference`
(BN folded, factorised soft attention, regions sampled by two matrix products) to ONNX, calibrates
activation ranges on a few hundred images, and quantises it (QDQ format, per-channel int8 weights,
uint8 activations; ONNX Runtime fuses the pairs into ``QLinearConv`` etc. with VNNI kernels). Only
the convolution path is int8 (:data:`QUANTIZED_OPS`); the branches of a block share one range, and
the int8 weights are bias-corrected (GPTQ rounding is an option): 98.5-99.1 % of nearest neighbours
as in float32 (docs/performance.md). The hard-attention path (pooled vector, translations, sampling
matrices) and the sampling products stay float32: region positions keep sub-pixel precision. The
result, an :class:`Int8Model`, maps float32 ``(B, 3, H, W)`` normalised CPU images to float32
``(B, D)`` embeddings and saves as a plain ``.onnx`` file.

Why ONNX Runtime rather than PyTorch's PT2E x86 quantizer (torchao + Inductor): both were measured
(README, Benchmarks); ONNX Runtime needs no compilation (quantising takes seconds, not minutes, and
any batch size runs), no extra dependency beyond the ``onnx`` extra, and gives ~1.5x hareid's bf16
eager speed on an AVX512-VNNI CPU (~1.8x the compiled torchreid model).

Needs ``pip install 'hareid[onnx]'`` (onnx, onnxruntime).
"""

from __future__ import annotations

import fnmatch
import importlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hareid.deploy.export import METADATA_KEY, export_metadata, ort_session
from hareid.errors import HareidError
from hareid.fileio import atomic_write_text

__all__ = ["KEEP_FLOAT", "QUANTIZED_OPS", "WEIGHT_ROUNDINGS", "Int8Model", "cpu_has_vnni", "gptq_weights",
           "int8_weights", "load_int8", "quantizable_nodes", "quantize_int8"]

#: Operator types quantised (activations uint8, weights int8): the convolutions and what passes
#: uint8 values between them unchanged (ReLU folds into the convolution, max-pool and concatenation
#: move bytes). The soft-attention arithmetic (ReduceMean, Sigmoid, Mul, Add), the pooled vectors
#: and the Gemm / MatMul heads stay float: quantising them added a rounding at every step for no
#: speed (``benchmarks/int8_recipe.py``; docs/performance.md, "int8 at parity").
QUANTIZED_OPS = ("Conv", "MaxPool", "Relu", "Concat")
#: Nodes :func:`quantize_int8` leaves in float by default (``fnmatch`` patterns over the exported
#: graph's node names): HA-CNN's stem, whose error every later layer carries, and the Concat nodes
#: outside the blocks (pooled vectors, region features), at no measurable cost in speed
#: (docs/performance.md, "int8 at parity"). A default pattern that matches no node of another model
#: is skipped.
KEEP_FLOAT: tuple[str, ...] = ("/Concat*", "/stem/*")
#: How :func:`quantize_int8` rounds the int8 weights (``weight_rounding``).
WEIGHT_ROUNDINGS = ("nearest", "gptq")
_HINT = "pip install 'hareid[onnx]'"
_META = "hareid."


def _ort() -> Any:
    try:
        return importlib.import_module("onnxruntime")
    except ImportError:
        raise HareidError(f"int8 inference needs onnxruntime: {_HINT}") from None


def cpu_has_vnni() -> bool:
    """Whether this x86 CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX-INT8).

    Without them ONNX Runtime's u8s8 kernels can saturate, so :func:`quantize_int8` then quantises
    weights to 7 bits (``reduce_range``), as ONNX Runtime recommends.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def _batches(calibration: torch.Tensor | Iterable[Any], batch_size: int, limit: int) -> Iterator[np.ndarray]:
    """Float32 numpy batches ``(b, 3, H, W)`` from a tensor or an iterable of tensors / loader batches."""
    seen = 0
    if isinstance(calibration, torch.Tensor):
        calibration = calibration.split(batch_size)
    for item in calibration:
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
            raise HareidError("quantize_int8: calibration must yield image batches (B, 3, H, W) "
                              "(a tensor, or a loader of (images, ...) tuples)")
        x = x[: limit - seen].detach().float().cpu().contiguous()
        if not torch.isfinite(x).all():
            raise HareidError("quantize_int8: calibration images hold NaN or inf values; pass finite, "
                              "normalised images")
        if len(x):
            yield x.numpy()
        seen += len(x)
        if seen >= limit:
            return


def _float_only_nodes(graph: Any) -> list[str]:
    """Names of the nodes computing the region sampling weights (back to the pooled features), which
    must stay float32: region coordinates quantised to 8 bits would move regions by a third of a pixel.

    The sampling is ``MatMul(rows, map)`` then ``MatMul(cols, .)`` (see
    :func:`hareid.models.inference.sample_stripes`; ``GridSample`` with ``region_sampling="torchreid"``): the
    weight operand of each and everything it is computed from are kept float."""
    producer = {out: node for node in graph.node for out in node.output}
    keep: set[str] = set()
    stack = [node.input[1] for node in graph.node if node.op_type == "GridSample"]
    stack += [node.input[0] for node in graph.node if node.op_type == "MatMul"]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in keep:
            continue
        keep.add(node.name)
        # boundaries: the pooled vector (the features the translations come from), and Shape, which
        # reads only sizes (walking into its input would mark the whole backbone float)
        if node.op_type not in ("ReduceMean", "GlobalAveragePool", "Shape"):
            stack.extend(node.input)
    return sorted(keep)


def _matching_nodes(graph: Any, patterns: Sequence[str], strict: bool) -> list[str]:
    """Names of the graph's nodes matching any pattern (exact name or ``fnmatch``); with ``strict``
    a pattern that matches nothing is an error (a misspelt layer would silently stay int8)."""
    names = [n.name for n in graph.node]
    out: list[str] = []
    for pat in patterns:
        hit = [n for n in names if n == pat or fnmatch.fnmatchcase(n, pat)]
        if not hit and strict:
            raise HareidError(f"quantize_int8: keep_float pattern {pat!r} matches no node of the graph; "
                              "hareid.deploy.quantize.quantizable_nodes(model) lists them")
        out += hit
    return out


def _calibration_methods() -> dict[str, Any]:
    """hareid's calibration method names -> ONNX Runtime's calibrator kinds (``"averaged"`` is MinMax
    with per-batch extremes averaged)."""
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "averaged": CalibrationMethod.MinMax,
            "percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}


#: Images per calibration batch of ``method="averaged"``: each batch's min / max are averaged.
AVERAGED_BATCH = 64


def _calibrate(path: Path, batches: list[np.ndarray], method: str, op_types: Sequence[str], cache: Path,
               tmp: Path) -> dict[str, tuple[float, float]]:
    """Activation ranges ``{tensor: (lo, hi)}`` of the float graph at ``path``: read from ``cache`` when
    it exists, else measured with ONNX Runtime's calibrator on ``batches`` and written to ``cache``
    (ONNX Runtime's JSON, plus the hareid method name, checked when the cache is read again).

    ``method``: ``"minmax"`` (the extremes over all images), ``"averaged"`` (the mean over batches of
    :data:`AVERAGED_BATCH` images of each batch's extremes: ONNX Runtime's ``moving_average``; a rare
    outlier no longer sets a tensor's step), ``"percentile"`` (99.999th) or ``"entropy"``."""
    from onnxruntime.quantization.calibrate import (
        CalibrationDataReader,
        create_calibrator,
        load_tensors_data,
        save_tensors_data,
    )

    kind = _calibration_methods()[method]
    if method == "averaged":  # re-batched: the averaged extremes depend on the batch size, fixed here
        images = np.concatenate(batches)
        batches = [images[i:i + AVERAGED_BATCH] for i in range(0, len(images), AVERAGED_BATCH)]
    if not cache.is_file():
        class _Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._it = iter(batches)

            def get_next(self) -> dict[str, np.ndarray] | None:
                b = next(self._it, None)
                return None if b is None else {"images": b}

        calibrator = create_calibrator(path, list(op_types), augmented_model_path=str(tmp / "augmented.onnx"),
                                       calibrate_method=kind, extra_options={"moving_average": method == "averaged"})
        calibrator.collect_data(_Reader())
        save_tensors_data(calibrator.compute_data(), cache)
        raw = json.loads(cache.read_text())
        raw[_META + "method"] = method
        atomic_write_text(cache, json.dumps(raw))
    try:
        written = json.loads(cache.read_text()).get(_META + "method")
        data = load_tensors_data(cache)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # JSONDecodeError is a ValueError
        raise HareidError(f"{cache}: not a calibration cache written by quantize_int8 ({type(exc).__name__}: "
                          f"{exc}); delete it to calibrate again") from None
    if written != method:
        raise HareidError(f"{cache}: calibration cache written with method {written or 'unknown'!r}, not {method!r}; "
                          "delete it or pass the method it was written with")
    return {name: (float(np.min(r.range_value[0])), float(np.max(r.range_value[1]))) for name, r in data.data.items()}


def _shared_concat_ranges(graph: Any, ranges: dict[str, tuple[float, float]], excluded: set[str]) -> dict[str, Any]:
    """``TensorQuantOverrides`` giving every input of a quantised Concat the Concat's own range.

    A block's branches end in convolutions whose outputs are concatenated; quantised each with its
    own range, they are rounded twice (at the convolution's output, again to the concatenation's
    scale). With one shared range the concatenation only copies bytes: one rounding."""
    out: dict[str, Any] = {}
    for node in graph.node:
        if node.op_type != "Concat" or node.name in excluded or node.output[0] not in ranges:
            continue
        lo, hi = ranges[node.output[0]]
        for name in node.input:
            if name in ranges:
                out[name] = [{"rmin": np.float32(lo), "rmax": np.float32(hi)}]
    return out


def _conv_geometry(m: nn.Module) -> tuple[list[int], list[int]] | None:
    """``(stride, padding)`` of a plain convolution module (a fused ``ConvAct`` or a zero-padded,
    undilated ``nn.Conv2d``, one group) whose input is the convolution's input; else None."""
    from hareid.models.layers.blocks import ConvAct

    if isinstance(m, ConvAct) and m.groups == 1:
        return list(m.stride), list(m.padding)
    if (isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros" and not isinstance(m.padding, str)
            and tuple(m.dilation) == (1, 1)):
        return list(m.stride), list(m.padding)
    return None


#: Input patches per calibration batch and convolution that enter :func:`gptq_weights`' second
#: moments: a random subset, enough for the <= 864 inputs of a HA-CNN convolution (the errors
#: measured with every patch and with this subset differ by noise) and several times faster.
HESSIAN_PATCHES = 4096


def _input_stats(net: nn.Module, batches: list[np.ndarray], hessians: bool) -> dict[str, dict[str, torch.Tensor]]:
    """What the calibration images feed every convolution module (a module with a 4-D ``weight``),
    keyed by the name of its weight (``"<module>.weight"``, the initializer's name in the exported
    graph): ``"mean"``, the per-channel mean of its input ``(C,)``; with ``hessians``, for the plain
    convolutions (:func:`_conv_geometry`) also ``"hessian"``, the second moment ``E[u u^T]`` of its
    input patches ``u`` (``C*kh*kw``, the order of ``weight.reshape(O, -1)``; zero padding included;
    at most :data:`HESSIAN_PATCHES` random patches per batch)."""
    sums: dict[str, torch.Tensor] = {}
    count: dict[str, int] = {}
    second: dict[str, torch.Tensor] = {}
    patches: dict[str, int] = {}
    pick = torch.Generator().manual_seed(0)  # which patches enter the second moments: fixed, so reproducible

    def hook(name: str, geometry: tuple[list[int], list[int]] | None):
        def record(mod: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].float()  # (B, C, H, W)
            sums[name] = sums.get(name, 0) + x.sum(dim=(0, 2, 3))
            count[name] = count.get(name, 0) + x.numel() // x.shape[1]
            if geometry is not None:
                stride, padding = geometry
                u = torch.nn.functional.unfold(x, mod.weight.shape[2:], padding=padding, stride=stride)  # (B, N, L)
                b, _, positions = u.shape
                if b * positions > HESSIAN_PATCHES:  # a random subset of the B*L patches
                    at = torch.randperm(b * positions, generator=pick)[:HESSIAN_PATCHES]
                    u = u[at // positions, :, at % positions]  # (HESSIAN_PATCHES, N)
                else:
                    u = u.transpose(1, 2).reshape(-1, u.shape[1])  # (B*L, N): one row per output position
                second[name] = second.get(name, 0) + (u.T @ u).double()  # (N, N)
                patches[name] = patches.get(name, 0) + u.shape[0]
        return record

    handles = [m.register_forward_pre_hook(hook(n + ".weight", _conv_geometry(m) if hessians else None))
               for n, m in net.named_modules()
               if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 4]
    try:
        with torch.inference_mode():
            for b in batches:
                net(torch.from_numpy(b))
    finally:
        for h in handles:
            h.remove()
    return {k: {"mean": sums[k] / count[k], **({"hessian": second[k] / patches[k]} if k in second else {})}
            for k in sums}


def int8_weights(w: np.ndarray, per_channel: bool = True, reduce_range: bool = False) -> np.ndarray:
    """``w`` ``(O, ...)`` rounded as ONNX Runtime's QDQ quantiser stores int8 weights, dequantised:
    symmetric, one scale per output channel (``per_channel``) or for the whole tensor, integers in
    [-127, 127] ([-64, 64] with ``reduce_range``), scale ``max|w| / 127`` and division in float32."""
    w = np.asarray(w, dtype=np.float32)
    qmax = 64.0 if reduce_range else 127.0
    flat = np.abs(w).reshape(len(w), -1).astype(np.float64)
    absmax = flat.max(1) if per_channel else np.full(len(w), flat.max())
    scale = (absmax / qmax).astype(np.float32).reshape(-1, *([1] * (w.ndim - 1)))
    q = np.clip(np.rint(w / np.where(scale > 0, scale, np.float32(1))), -qmax, qmax)  # float32, as ORT divides
    return q.astype(np.float64) * scale.astype(np.float64)


def gptq_weights(w: np.ndarray, hessian: np.ndarray, reduce_range: bool = False, damp: float = 0.01) -> np.ndarray:
    """``w`` ``(O, N)`` rounded to int8 so that the layer's output, not each weight, stays closest to float.

    GPTQ (Frantar et al., *GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
    Transformers*, ICLR 2023): the columns are rounded one at a time, and each column's rounding
    error is pushed onto the columns not yet rounded, weighted by the inverse of ``hessian``
    ``(N, N)``, the second moment of the layer's inputs (damped by ``damp`` times its mean diagonal).
    The grid is ONNX Runtime's (:func:`int8_weights`: per row, scale ``max|w| / 127``, integers in
    [-127, 127]), and each row's largest weight is pinned to +-127, so ONNX Runtime, which recomputes
    the scale from the stored weights, keeps every integer chosen here. With uncorrelated inputs
    (a diagonal ``hessian``) nothing is pushed: plain rounding. Returns the dequantised weights
    ``(O, N)`` (float64; store them as float32).
    """
    qmax = 64.0 if reduce_range else 127.0
    w = np.array(w, dtype=np.float64)  # a working copy: columns not yet rounded absorb the errors
    rows, n = w.shape
    absmax = np.abs(w.astype(np.float32)).astype(np.float64).max(1)  # as int8_weights: the stored float32 weights
    scale = (absmax / qmax).astype(np.float32).astype(np.float64)
    safe = np.where(scale > 0, scale, 1.0)
    pinned = np.zeros_like(w, dtype=bool)
    pinned[np.arange(rows), np.abs(w).argmax(1)] = True
    h = np.array(hessian, dtype=np.float64)
    dead = np.diag(h) <= 0  # inputs that are always zero: any value works, keep them well-posed
    h[dead, dead] = 1.0
    h[np.diag_indices(n)] += damp * np.mean(np.diag(h))
    # upper Cholesky factor of H^-1: row i holds how column i's error spreads over columns i+1..
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    q = np.zeros_like(w)
    for i in range(n):
        col = w[:, i]
        qi = np.where(pinned[:, i], np.sign(col) * qmax, np.clip(np.rint(col / safe), -qmax, qmax))
        q[:, i] = qi
        err = (col - qi * scale) / u[i, i]  # (O,)
        w[:, i + 1:] -= np.outer(err, u[i, i + 1:])
    return q * scale[:, None]


def _round_weights(graph: Any, stats: dict[str, dict[str, torch.Tensor]], excluded: set[str],
                   reduce_range: bool) -> dict[str, np.ndarray]:
    """Replace, in place, the weights of every quantised plain convolution (those with a ``"hessian"``
    in ``stats``) by their :func:`gptq_weights` rounding; returns the float weights replaced, by name
    (bias correction measures the shift against them)."""
    from onnx import numpy_helper

    originals: dict[str, np.ndarray] = {}
    for node, init, _bias in _own_convolutions(graph, stats, excluded):
        if "hessian" not in stats[node.input[1]]:
            continue
        w = numpy_helper.to_array(init).astype(np.float64)  # (O, C, kh, kw)
        rounded = gptq_weights(w.reshape(len(w), -1), stats[node.input[1]]["hessian"].numpy(), reduce_range)
        init.CopyFrom(numpy_helper.from_array(rounded.reshape(w.shape).astype(np.float32), init.name))
        originals[init.name] = w
    return originals


def _own_convolutions(graph: Any, stats: dict[str, Any], excluded: set[str]) -> Iterator[tuple[Any, Any, Any]]:
    """``(node, weight initializer, bias initializer or None)`` of every quantised Conv whose weight
    (and bias) belong to it alone and whose input statistics were measured."""
    inits = {t.name: t for t in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for node in list(graph.node):
        if (node.op_type != "Conv" or node.name in excluded or node.input[1] not in stats
                or node.input[1] not in inits or uses[node.input[1]] > 1):  # a shared weight sees several inputs
            continue
        bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias_name is not None and (bias_name not in inits or uses[bias_name] > 1):
            continue  # a bias computed in the graph or shared with another node: not this node's to change
        yield node, inits[node.input[1]], inits[bias_name] if bias_name else None


def _correct_bias(graph: Any, means: dict[str, torch.Tensor], excluded: set[str], per_channel: bool,
                  reduce_range: bool, reference: dict[str, np.ndarray] | None = None) -> int:
    """Bias correction of weight quantisation (Nagel et al., "Data-Free Quantization", 2019), in place.

    Rounding a convolution's weights to int8 shifts each output channel's mean by
    ``sum_c sum_k (W_q - W)[o, c, k] * E[x_c]``; subtracting that from the bias removes the shift
    (``E[x_c]``: the calibration images' mean of input channel ``c``, zero padding ignored). ``W_q``
    is :func:`int8_weights`, ONNX Runtime's rounding of the stored weights; ``W`` the float weights,
    from ``reference`` where the stored ones were already rounded (:func:`_round_weights`). Returns
    the number of convolutions corrected."""
    from onnx import numpy_helper

    done = 0
    for node, init, bias_init in _own_convolutions(graph, means, excluded):
        stored = numpy_helper.to_array(init).astype(np.float64)  # (O, C/g, kh, kw)
        w = (reference or {}).get(init.name, stored)
        wq = int8_weights(stored, per_channel, reduce_range)
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        mu = means[node.input[1]].double().numpy().reshape(groups, -1)  # (g, C/g)
        shift = ((wq - w).sum(axis=(2, 3)) * np.repeat(mu, len(w) // groups, axis=0)).sum(1)  # (O,)
        if bias_init is None:  # no bias yet: add one holding the correction
            bias_name = node.input[1] + ".corrected_bias"
            graph.initializer.append(numpy_helper.from_array(np.zeros(len(w), np.float32), bias_name))
            bias_init = graph.initializer[-1]
            del node.input[2:]
            node.input.append(bias_name)
        bias = numpy_helper.to_array(bias_init).astype(np.float64)
        bias_init.CopyFrom(numpy_helper.from_array((bias - shift).astype(np.float32), bias_init.name))
        done += 1
    return done


def quantizable_nodes(model: nn.Module, height: int, width: int, op_types: Sequence[str] = ("Conv",)) -> list[str]:
    """Names of the nodes of ``op_types`` in ``model``'s exported inference graph, in graph order:
    what ``keep_float`` of :func:`quantize_int8` names."""
    import onnx

    from hareid.models.inference import optimize_for_inference

    inference = optimize_for_inference(model, dtype=torch.float32).cpu()
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(inference.graph, (torch.zeros(1, 3, height, width),), buf, dynamo=False,
                          opset_version=17, input_names=["images"], output_names=["embeddings"])
    return [n.name for n in onnx.load_from_string(buf.getvalue()).graph.node if n.op_type in op_types]


class Int8Model(nn.Module):
    """An int8 ONNX Runtime session behind the :class:`~hareid.models.inference.InferenceModel` contract:
    float32 ``(B, 3, H, W)`` CPU images (``H x W`` as quantised) -> float32 ``(B, embed_dim)``.

    ``onnx_bytes`` is the quantised model; :meth:`save` writes it as an ``.onnx`` file (any ONNX
    Runtime reads it; :func:`load_int8` restores an ``Int8Model``).
    """

    def __init__(self, onnx_bytes: bytes, threads: int | None = None) -> None:
        super().__init__()
        _ort()
        self.onnx_bytes = onnx_bytes
        self.session = ort_session(onnx_bytes, threads)  # no busy-waiting threads between calls
        meta = self.session.get_modelmeta().custom_metadata_map
        self.input_size = (int(meta.get(_META + "height", 0)), int(meta.get(_META + "width", 0)))
        self.embed_dim = int(meta.get(_META + "embed_dim", 0))
        self.dtype = torch.int8
        self._input = self.session.get_inputs()[0].name

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"Int8Model: expected a float image batch (B, 3, H, W), got {got}")
        if tuple(x.shape[2:]) != self.input_size:
            h, w = self.input_size
            raise ValueError(f"Int8Model: quantised for {h}x{w} inputs, got {x.shape[2]}x{x.shape[3]}; "
                             f"resize the images or quantise again with height/width {x.shape[2]}/{x.shape[3]}")
        if x.device.type != "cpu":
            raise ValueError(f"Int8Model runs on the CPU (ONNX Runtime); got input on {x.device}: use x.cpu()")
        arr = x.detach().float().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self._input: arr})[0])

    #: the files this model was made from (its checkpoint, or the .onnx it was loaded from): never written
    sources: tuple[str, ...] = ()

    def save(self, path: str | os.PathLike) -> Path:
        """Write the quantised model to ``path`` (atomic: temp file in the same folder, then rename);
        refused when ``path`` is (or holds) the checkpoint or file this model was made from."""
        from hareid.fileio import atomic_path, ensure_disjoint

        path = Path(path)
        ensure_disjoint(path, self.sources, option="path")
        with atomic_path(path) as tmp:
            tmp.write_bytes(self.onnx_bytes)
        return path


def load_int8(path: str | os.PathLike, threads: int | None = None) -> Int8Model:
    """An :class:`Int8Model` from a file written by :meth:`Int8Model.save`."""
    path = Path(path)
    if not path.is_file():
        raise HareidError(f"{path}: int8 model not found; write one with quantize_int8(...).save(path)")
    model = Int8Model(path.read_bytes(), threads=threads)
    model.sources = (str(path),)
    return model


def quantize_int8(
    model: nn.Module,
    calibration: torch.Tensor | Iterable[Any],
    height: int | None = None,
    width: int | None = None,
    num_calibration: int = 512,
    batch_size: int = 32,
    per_channel: bool = True,
    method: str = "minmax",
    threads: int | None = None,
    keep_float: Sequence[str] | None = None,
    op_types: Sequence[str] = QUANTIZED_OPS,
    calibration_cache: str | os.PathLike | None = None,
    bias_correction: bool = True,
    shared_concat: bool = True,
    weight_rounding: str = "nearest",
) -> Int8Model:
    """Statically quantise ``model``'s embedding graph to int8 for CPU inference.

    Args:
        model: a hareid HarmNet (e.g. ``hacnn``); not modified.
        calibration: normalised float32 images ``(N, 3, H, W)`` or an iterable of such batches (a
            DataLoader of ``(images, pids, ...)`` works); the first ``num_calibration`` images are used
            (a few hundred images of the target domain suffice).
        height, width: input size to quantise for (default: the calibration images' size).
        per_channel: per-output-channel weight scales (more accurate, same speed).
        method: activation range calibration: ``"minmax"`` (over all images), ``"averaged"`` (each
            tensor's min / max averaged over batches of 64 images: a third less mean error, a worse
            worst image; docs/performance.md), ``"percentile"`` (99.999th) or ``"entropy"`` (ONNX
            Runtime's calibrators; see :func:`_calibrate`).
        threads: ONNX Runtime intra-op threads (default ``torch.get_num_threads()``).
        keep_float: nodes of the exported graph left in float: ONNX node names or ``fnmatch``
            patterns (e.g. ``"/stem/*"``, ``"/attn.*"``; :func:`quantizable_nodes` lists them).
            Default :data:`KEEP_FLOAT`, the layers whose int8 error moved nearest neighbours most
            (``benchmarks/int8_sensitivity.py``); ``()`` quantises every convolution.
        op_types: ONNX operator types quantised (default :data:`QUANTIZED_OPS`).
        calibration_cache: a JSON file of activation ranges: written by the first call, read (no
            calibration pass) by later ones with the same model, images and ``method``, e.g. when
            trying several ``keep_float`` sets.
        bias_correction: subtract from each quantised convolution's bias the mean shift its int8
            weights cause on the calibration images (see :func:`_correct_bias`).
        shared_concat: quantise the inputs of each quantised Concat with its output's range, so the
            concatenation copies bytes instead of rounding again (see :func:`_shared_concat_ranges`).
        weight_rounding: ``"nearest"`` (default): each weight to its nearest int8 value, as ONNX
            Runtime rounds; ``"gptq"``: each convolution's int8 weights chosen so that its output on the
            calibration images stays closest to float (:func:`gptq_weights`, needs ``per_channel``):
            16 % less mean embedding error, but no better top-1 agreement (docs/performance.md).
            ``bias_correction`` and ``shared_concat`` are on by default; switching them off is for
            ablations (``benchmarks/int8_recipe.py``).

    Returns an :class:`Int8Model`. Raises :class:`HareidError` when onnx/onnxruntime are missing or
    the calibration data is unusable.
    """
    _ort()
    try:
        import onnx
        from onnxruntime.quantization import (
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise HareidError(f"int8 quantisation needs onnx and onnxruntime ({exc.name or exc} missing): {_HINT}") from None
    from hareid.models.inference import optimize_for_inference

    if weight_rounding not in WEIGHT_ROUNDINGS:
        raise HareidError(f"quantize_int8: weight_rounding must be one of {', '.join(WEIGHT_ROUNDINGS)}, "
                          f"got {weight_rounding!r}")
    if weight_rounding == "gptq" and not per_channel:
        raise HareidError("quantize_int8: weight_rounding='gptq' rounds per output channel; pass per_channel=True "
                          "or weight_rounding='nearest'")
    methods = _calibration_methods()
    if method not in methods:
        raise HareidError(f"quantize_int8: method must be one of {', '.join(methods)}, got {method!r}")
    batches = list(_batches(calibration, batch_size, num_calibration))
    if not batches:
        raise HareidError("quantize_int8: no calibration images; pass a few hundred normalised images")
    h, w = (height or batches[0].shape[2]), (width or batches[0].shape[3])
    if any(b.shape[2:] != (h, w) for b in batches):
        raise HareidError(f"quantize_int8: calibration images must all be {h}x{w} (HxW), as the model is quantised")
    inference = optimize_for_inference(model, dtype=torch.float32).cpu()  # a copy; model stays put
    inference.graph.check_input(torch.empty(1, 3, h, w))

    keep = list(KEEP_FLOAT if keep_float is None else keep_float)
    reduce_range = not cpu_has_vnni()
    with tempfile.TemporaryDirectory(prefix="hareid-int8-") as tmp:
        fp32, pre, out = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        example = torch.from_numpy(batches[0][:2])
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(inference.graph, (example,), str(fp32), dynamo=False, opset_version=17,
                              input_names=["images"], output_names=["embeddings"],
                              dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}})
            quant_pre_process(str(fp32), str(pre))
            proto = onnx.load(str(pre))
            excluded = set(_float_only_nodes(proto.graph) + _matching_nodes(proto.graph, keep, keep_float is not None))
            cache = Path(calibration_cache) if calibration_cache is not None else Path(tmp) / "ranges.json"
            hessians = weight_rounding == "gptq"
            if bias_correction or hessians:
                stats = _input_stats(inference.graph, batches, hessians)
                originals = _round_weights(proto.graph, stats, excluded, reduce_range) if hessians else {}
                if bias_correction:
                    means = {k: v["mean"] for k, v in stats.items()}
                    _correct_bias(proto.graph, means, excluded, per_channel, reduce_range, originals)
                onnx.save(proto, str(pre))
            ranges = _calibrate(pre, batches, method, op_types, cache, Path(tmp))
            quantize_static(
                str(pre), str(out), None, quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                reduce_range=reduce_range, op_types_to_quantize=list(op_types),
                nodes_to_exclude=sorted(excluded), calibrate_method=methods[method], calibration_cache_path=str(cache),
                extra_options={"TensorQuantOverrides": _shared_concat_ranges(proto.graph, ranges, excluded)
                               if shared_concat else {}},
            )
        q = onnx.load(str(out))
    for key, value in (("height", h), ("width", w), ("embed_dim", inference.embed_dim), ("format", "int8-qdq")):
        entry = q.metadata_props.add()
        entry.key, entry.value = _META + key, str(value)
    entry = q.metadata_props.add()  # what every hareid export carries: hareid.Embedder reads the file like one
    entry.key, entry.value = METADATA_KEY, json.dumps({**export_metadata(model, h, w), "format": "int8-qdq"})
    buf = io.BytesIO()
    onnx.save(q, buf)
    out = Int8Model(buf.getvalue(), threads=threads)
    out.sources = tuple(s for s in (getattr(model, "hareid_source", None),) if s)
    return out

