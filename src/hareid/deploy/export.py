"""Exported files of a hareid model: ONNX and TorchScript, checked against the eager model.

The in-process inference forms (BN folding, the bf16 graph, compilation) live in
:mod:`hareid.models.inference` (int8 in :mod:`hareid.deploy.quantize`); :func:`fuse_for_inference` and
:func:`optimize_for_inference` are re-exported here for existing callers.

* :func:`export_onnx` / :func:`export_torchscript` - write the fused eval model (atomic: temp file in
  the target folder, then rename); :func:`export_model` also runs the file (onnxruntime /
  ``torch.jit.load``) against the eager model on random input and raises
  :class:`~hareid.errors.HareidError` if they differ by more than ``atol`` (1e-4).

ONNX exporter choice (torch 2.14): ``exporter="auto"`` uses the TorchScript-based exporter
(``torch.onnx.export(..., dynamo=False)``): on HA-CNN it honours the requested opset (16/17) exactly,
handles a dynamic batch through ``dynamic_axes``, and takes ~2 s. The dynamo exporter
(``dynamo=True``, needs onnxscript) also matches the eager model to ~1e-7 but takes ~4x longer, has
no opset-17 implementation (it emits opset 18 and its down-conversion fails on this graph) and prints
progress lines; "auto" falls back to it only when the legacy exporter is unavailable or fails.
Pick one explicitly with ``exporter="legacy"`` or ``exporter="dynamo"``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import json
import os
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from hareid.errors import HareidError
from hareid.fileio import atomic_path, ensure_disjoint
from hareid.models.inference import fuse_for_inference, optimize_for_inference

__all__ = [
    "METADATA_KEY",
    "export_metadata",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "fuse_for_inference",
    "optimize_for_inference",
    "ort_session",
]

ATOL = 1e-4
#: Key of hareid's metadata in an export (ONNX ``metadata_props``; TorchScript extra file): JSON with
#: the input size, mean/std and embedding size, so :class:`hareid.Embedder` preprocesses like the source.
METADATA_KEY = "hareid.json"
_ONNX_HINT = "pip install 'hareid[onnx]'"


# --------------------------------------------------------------------------------------- metadata
def export_metadata(model: nn.Module, height: int, width: int, model_name: str | None = None) -> dict[str, Any]:
    """The metadata an export carries (see ``METADATA_KEY``): input size, mean/std, embedding size."""
    from hareid.models.registry import IMAGENET_MEAN, IMAGENET_STD, model_entry

    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if model_name:
        entry = model_entry(model_name)
        mean, std = entry.mean, entry.std
    return {"input_size": [int(height), int(width)], "mean": list(mean), "std": list(std),
            "embed_dim": int(getattr(model, "embed_dim", 0)), "model": model_name}


# --------------------------------------------------------------------------------------- helpers
#: Largest input an export is traced at (a 2048x2048 crop); 100000-pixel sides would need 100+ GB.
MAX_EXPORT_PIXELS = 2048 * 2048


def check_output(model: nn.Module, path: str | os.PathLike, option: str = "--out") -> Path:
    """``path`` absolute, refused (one line) when it is or holds the checkpoint ``model`` was loaded
    from (:func:`hareid.api.load_model` records it); an existing folder gets ``<checkpoint stem><suffix>``
    written inside it by the caller, never a temporary name."""
    return ensure_disjoint(path, [getattr(model, "hareid_source", None)], option=option)


def _check_size(model: nn.Module, height: int, width: int) -> None:
    if max(height, width) > 4096 or height * width > MAX_EXPORT_PIXELS:
        raise HareidError(f"export: input size {height}x{width} is more than hareid exports "
                          f"({MAX_EXPORT_PIXELS} pixels, 4096 a side); pass a smaller --height/--width")
    ok = getattr(model, "input_size_ok", None)
    if ok is not None and not ok(height, width):
        mins = getattr(model, "min_input_size", lambda: None)()
        hint = f"; use H >= {mins[0]} and W >= {mins[1]}" if mins else ""
        raise HareidError(f"export: input size {height}x{width} does not work for this model{hint}")


def _newest_opset() -> int:
    try:
        return int(importlib.import_module("onnx").defs.onnx_opset_version())
    except ImportError:
        return 10**6  # _require_onnx names the missing package


def _require_onnx() -> tuple[ModuleType, ModuleType]:
    try:
        onnx = importlib.import_module("onnx")
        ort = importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise HareidError(f"ONNX export needs onnx and onnxruntime ({exc.name or exc} missing): {_ONNX_HINT}") from None
    return onnx, ort


def ort_session(model: str | os.PathLike | bytes, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session as hareid runs every ONNX file (a path or the model's bytes).

    Intra-op threads as PyTorch's (``threads`` overrides), every graph optimisation, and no
    busy-waiting between calls: by default ONNX Runtime's threads spin after each run, and on a
    small CPU they take the cores from the PyTorch work of the same process (measured on 2 cores: a
    batch-1 bf16 Embedder call right after an ONNX Runtime call took 26-33 ms instead of 13 ms).
    """
    _, ort = _require_onnx()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def _example(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, height, width, generator=gen)


def _eager_eval(model: nn.Module) -> nn.Module:
    return model if not model.training else copy.deepcopy(model).eval()


# --------------------------------------------------------------------------------------- export
def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    height: int,
    width: int,
    opset: int = 17,
    dynamic_batch: bool = True,
    exporter: str = "auto",
    batch: int = 2,
    fuse: bool = True,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the eval model (BN folded if ``fuse``) as ONNX: input ``images (B, 3, H, W)`` float32,
    output ``embeddings (B, D)``; batch dynamic if ``dynamic_batch``.

    ``exporter``: ``"auto"`` (legacy TorchScript exporter, dynamo as fallback), ``"legacy"`` or
    ``"dynamo"``. Returns ``{"path", "format", "opset", "exporter", "input_shape", "seconds"}``.
    Raises :class:`HareidError` for opset < 16, a bad size, or missing onnx/onnxruntime.
    """
    if opset < 16:
        raise HareidError(f"export: opset {opset} is too old; HA-CNN needs GridSample, use opset >= 16")
    newest = _newest_opset()
    if opset > newest:
        raise HareidError(f"export: --opset {opset} is newer than the installed onnx supports ({newest}); "
                          f"use an opset from 16 to {newest}")
    if exporter not in ("auto", "legacy", "dynamo"):
        raise HareidError(f"export: exporter must be 'auto', 'legacy' or 'dynamo', got {exporter!r}")
    _check_size(model, height, width)
    onnx, _ = _require_onnx()
    path = check_output(model, path)
    net = fuse_for_inference(model, channels_last=False) if fuse else _eager_eval(model)
    x = _example(batch, height, width)
    t0 = time.perf_counter()
    tries = ["legacy", "dynamo"] if exporter == "auto" else [exporter]
    errors: list[str] = []
    with atomic_path(path) as tmp:
        for kind in tries:
            try:
                used_opset = _onnx_export(net, x, tmp, opset, dynamic_batch, kind)
                proto = onnx.load(str(tmp))
                entry = proto.metadata_props.add()
                entry.key, entry.value = METADATA_KEY, json.dumps(metadata or export_metadata(model, height, width))
                onnx.save(proto, str(tmp))
                onnx.checker.check_model(str(tmp))
                break
            except Exception as exc:  # try the next exporter; report all if none works
                errors.append(f"{kind}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        else:
            raise HareidError(f"ONNX export of {type(model).__name__} to {path} failed ({'; '.join(errors)})")
    return {
        "path": str(path), "format": "onnx", "opset": used_opset, "exporter": kind,
        "input_shape": [batch, 3, height, width], "dynamic_batch": dynamic_batch,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _onnx_export(net: nn.Module, x: torch.Tensor, out: Path, opset: int, dynamic_batch: bool, kind: str) -> int:
    names = {"input_names": ["images"], "output_names": ["embeddings"]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if kind == "legacy":
            axes = {"images": {0: "batch"}, "embeddings": {0: "batch"}} if dynamic_batch else None
            torch.onnx.export(net, (x,), str(out), dynamo=False, opset_version=opset, dynamic_axes=axes, **names)
            return opset
        opset = max(opset, 18)  # the dynamo exporter implements opset >= 18 only
        shapes = {"x": {0: torch.export.Dim("batch", min=1, max=65536)}} if dynamic_batch else None
        with contextlib.redirect_stdout(io.StringIO()):
            prog = torch.onnx.export(net, (x,), dynamo=True, opset_version=opset, dynamic_shapes=shapes,
                                     verbose=False, **names)
            prog.save(str(out))
        return opset


def export_torchscript(
    model: nn.Module, path: str | os.PathLike, height: int, width: int, batch: int = 2, fuse: bool = True,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Trace the eval model (BN folded if ``fuse``) at ``(batch, 3, height, width)`` and save it.

    The trace keeps the batch size free; the spatial size is fixed at ``height x width``.
    Returns ``{"path", "format", "input_shape", "seconds"}``.
    """
    _check_size(model, height, width)
    path = check_output(model, path)
    net = fuse_for_inference(model, channels_last=False) if fuse else _eager_eval(model)
    x = _example(batch, height, width)
    t0 = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, (x,), check_trace=False)
        with atomic_path(path) as tmp:
            torch.jit.save(traced, str(tmp), _extra_files={
                METADATA_KEY: json.dumps(metadata or export_metadata(model, height, width))})
    return {"path": str(path), "format": "torchscript", "input_shape": [batch, 3, height, width],
            "seconds": round(time.perf_counter() - t0, 3)}


def _run_export(fmt: str, path: Path, x: torch.Tensor) -> torch.Tensor:
    if fmt == "onnx":
        sess = ort_session(path)
        out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        return torch.from_numpy(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path), map_location="cpu")
    # the profiling executor's first calls take seconds; one plain run is all the check needs
    with torch.no_grad(), torch.jit.optimized_execution(False):
        return loaded(x)


def export_model(
    model: nn.Module,
    path: str | os.PathLike,
    fmt: str = "onnx",
    height: int = 160,
    width: int = 64,
    opset: int = 17,
    atol: float = ATOL,
    **kwargs: Any,
) -> dict[str, Any]:
    """Export (``fmt`` ``"onnx"`` or ``"torchscript"``) and check the file against the eager model.

    The exported file is run on a random batch of a different size than the traced one (3 vs 2,
    so the dynamic batch is exercised) and compared with ``model`` in eval mode, fp32.
    Returns the exporter's dict plus ``max_abs_diff``, ``check_batch`` and ``embed_dim``.
    Raises :class:`HareidError` if the difference exceeds ``atol`` (the file is kept for inspection),
    for an unknown format, or when onnx/onnxruntime are missing (``pip install 'hareid[onnx]'``).
    """
    if fmt in ("ts", "jit"):
        fmt = "torchscript"
    if fmt not in ("onnx", "torchscript"):
        raise HareidError(f"export: format must be 'onnx' or 'torchscript', got {fmt!r}")
    path = Path(path)
    if path.is_dir():  # a folder: the file goes inside it under the model's name, never a temp name
        stem = Path(getattr(model, "hareid_source", "") or "model").stem
        path = path / (stem + (".onnx" if fmt == "onnx" else ".ts"))
    check_output(model, path)
    if fmt == "onnx":
        info = export_onnx(model, path, height, width, opset=opset, **kwargs)
    else:
        info = export_torchscript(model, path, height, width, **kwargs)
    batch = 3 if kwargs.get("dynamic_batch", True) else int(info["input_shape"][0])
    x = _example(batch, height, width, seed=1)
    with torch.no_grad():
        ref = _eager_eval(model)(x).float()
    got = _run_export(fmt, path, x).float()
    if got.shape != ref.shape:
        raise HareidError(f"export check: {path} returned shape {tuple(got.shape)}, eager model {tuple(ref.shape)}")
    diff = float((got - ref).abs().max())
    info.update(max_abs_diff=diff, check_batch=batch, embed_dim=int(ref.shape[1]))
    if not diff <= atol:
        raise HareidError(f"export check: {path} differs from the eager model by {diff:.2e} > {atol:.0e}; "
                          "re-export with fmt='torchscript' or report the model and torch version")
    return info
