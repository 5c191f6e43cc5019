"""``Embedder``: person crops in, unit-length embeddings out - the contract trackers and services use.

```python
from hareid import Embedder

emb = Embedder("runs/demo/checkpoints/best.pt")            # or model.onnx / model.ts (exported)
feats = emb.embed([crop_rgb_uint8, "a.jpg", pil_image])     # (N, D) float32, rows of unit length
feats = emb.embed_boxes(frame_bgr, boxes_xyxy, bgr=True)    # OpenCV frame + (N, 4) boxes -> (N, D)
```

Backends: a hareid or torchreid checkpoint (``.pt`` / ``.pth`` / ``.safetensors``) or a model
object runs in PyTorch (:func:`hareid.deploy.export.optimize_for_inference`, on the model's device, in
``dtype``: by default ``"auto"``, :func:`hareid.runtime.auto_dtype`: bf16 on a CPU with native bf16,
a half type on CUDA, else float32; ``dtype=None`` for float32), or as int8 in ONNX Runtime
(``dtype="int8"`` with ``calibration=`` images: :func:`hareid.deploy.quantize.quantize_int8`); an
exported ``.onnx`` file runs in ONNX Runtime (``hareid[onnx]``), a
TorchScript file (``.ts``, ``.torchscript``) in ``torch.jit``. All three share the preprocessing
(the evaluation transform of :mod:`hareid.data.transforms`: resize to the model's input size,
ImageNet normalisation) and the forward of :func:`hareid.evaluate.features.embed_batch`, so for the
same images they agree with each other within ``BACKEND_ATOL`` (float32; tested) and with the
features ``hareid eval`` computes, up to the row normalisation: an eval feature is the model's raw
output (global and local parts each of unit length), an Embedder row is that vector divided by its
norm.

Accepted images: numpy ``H x W x 3`` ``uint8`` arrays (RGB; ``bgr=True`` for OpenCV), also
``H x W`` grayscale (replicated to 3 channels), ``H x W x 4`` (alpha dropped) and float arrays with
values in ``[0, 1]``; PIL images; file paths; or a ready ``(N, 3, H, W)`` normalised tensor.
Anything else is refused with one line naming the item.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hareid.deploy.export import METADATA_KEY, ort_session
from hareid.errors import ConfigError, DataError, HareidError

__all__ = ["BACKEND_ATOL", "Embedder"]

#: Largest difference between the eager, TorchScript and ONNX backends' embeddings (float32).
BACKEND_ATOL = 1e-4
_TORCHSCRIPT_SUFFIXES = (".ts", ".torchscript", ".jit")
class Embedder:
    """Embed person crops with a hareid model (see the module docstring).

    Args:
        model: a checkpoint path, an exported ``.onnx`` / TorchScript path, or an ``nn.Module``.
        device: where a PyTorch backend runs (default: the module's device; for a path, CUDA when
            available, else CPU).
        dtype: compute dtype of a checkpoint or module: ``"auto"`` (default; the one policy,
            :func:`hareid.runtime.auto_dtype`: bf16 on CPUs with native bf16, a half type on CUDA,
            else float32), ``None`` / ``"fp32"`` (float32), ``torch.bfloat16`` / ``"bf16"``,
            ``torch.float16`` / ``"fp16"`` (CUDA), or ``"int8"`` (CPU, ONNX Runtime; needs
            ``calibration``).
        calibration: for ``dtype="int8"``: a few hundred images of the target domain (a folder, a
            list of images as :meth:`embed` takes them, or a normalised ``(N, 3, H, W)`` tensor);
            at most ``num_calibration`` are used.
        batch_size: images per forward pass.
        flip: average each image's embedding with its mirror's (test-time augmentation).
        input_size: ``(H, W)``; default: the model's training size (checkpoint config, registry
            entry, or the exported file's fixed size).
        info: for a module: the ``info`` dict of :func:`hareid.models.load_model` (input size, config).
    """

    def __init__(
        self,
        model: str | os.PathLike | nn.Module,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = "auto",
        batch_size: int = 64,
        flip: bool = False,
        input_size: tuple[int, int] | None = None,
        info: dict | None = None,
        calibration: Any = None,
        num_calibration: int = 256,
    ) -> None:
        if batch_size < 1:
            raise HareidError(f"Embedder: batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.flip = int(batch_size), flip
        self.info: dict[str, Any] = dict(info or {})
        if isinstance(model, nn.Module):
            self.backend = "torch"
            self._init_torch(model, device, dtype)
        else:
            path = Path(model)
            if path.suffix == ".onnx":
                self.backend = "onnx"
                self._init_onnx(path)
            elif path.suffix in _TORCHSCRIPT_SUFFIXES:
                self.backend = "torchscript"
                self._init_torchscript(path)
            else:
                from hareid.models.loading import load_model

                module, self.info = load_model(path)
                self.backend = "torch"
                self._init_torch(module, device or ("cuda" if torch.cuda.is_available() else "cpu"), dtype)
        fixed = self.info.get("fixed_size")
        if input_size is not None and fixed and tuple(input_size) != tuple(fixed):
            raise HareidError(f"{model}: takes {fixed[0]}x{fixed[1]} inputs (the size it was exported at), "
                              f"not {input_size[0]}x{input_size[1]}; drop input_size or re-export at that size")
        h, w = input_size or (self.info.get("height"), self.info.get("width"))
        if not h or not w:
            raise HareidError(f"{model}: input size unknown; pass input_size=(H, W)")
        self.input_size = (int(h), int(w))
        from hareid.data.transforms import build_transforms
        from hareid.models.registry import IMAGENET_MEAN, IMAGENET_STD

        self._transform = build_transforms(*self.input_size, mean=self.info.get("mean") or IMAGENET_MEAN,
                                           std=self.info.get("std") or IMAGENET_STD)[1]
        if self.backend == "torch" and self.dtype == "int8":
            self._init_int8(calibration, num_calibration)
        elif calibration is not None:
            raise HareidError("Embedder: calibration images are used only with dtype='int8'")

    # ------------------------------------------------------------------------------ backends
    def _init_torch(self, model: nn.Module, device: str | torch.device | None, dtype: Any) -> None:
        from hareid.evaluate.features import inference_net, model_device
        from hareid.models import model_entry
        from hareid.runtime import resolve_dtype

        model = model.eval()
        if device is not None:
            model = model.to(device)
        self.device = model_device(model)
        if isinstance(dtype, str) and dtype.lower() == "int8":
            if self.device.type != "cpu":
                raise HareidError(f"Embedder: dtype='int8' runs on the CPU (ONNX Runtime), the model is on "
                                  f"{self.device}; use device='cpu' or dtype='auto'")
            self.dtype, self._model = "int8", model  # quantised once the input size is known
        else:
            try:
                self.dtype = resolve_dtype(dtype, self.device, "Embedder dtype")
            except ConfigError as e:
                raise HareidError(f"{e}; or dtype='int8' (CPU)") from None
            self._net = inference_net(model, self.dtype)
        self.dim = int(getattr(model, "embed_dim", 0))
        spec = self.info.get("model") or {}
        if spec.get("name") and "mean" not in self.info:
            try:
                entry = model_entry(spec["name"])
                self.info.update(mean=entry.mean, std=entry.std)
                self.info.setdefault("height", entry.input_size[0])
                self.info.setdefault("width", entry.input_size[1])
            except ValueError:
                pass

    def _init_int8(self, calibration: Any, limit: int) -> None:
        """Quantise the module to int8 (ONNX Runtime) on ``calibration`` images."""
        from hareid.deploy.quantize import quantize_int8

        if calibration is None:
            raise HareidError("Embedder: dtype='int8' needs calibration images (calibration=FOLDER, a list of "
                              "images or a normalised tensor; --calib FOLDER on the command line): a few "
                              "hundred crops of the target domain")
        if isinstance(calibration, (str, os.PathLike)) and Path(calibration).is_dir():
            from hareid.data.registry import list_images

            paths = list_images(calibration)
            if not paths:
                raise DataError(f"{calibration}: no images to calibrate int8 on")
            step = max(1, len(paths) // limit)  # spread over the folder, not its first files
            calibration = paths[::step][:limit]
        if not isinstance(calibration, torch.Tensor):
            calibration = self.preprocess(list(calibration)[:limit])
        self._net = quantize_int8(self._model, calibration, *self.input_size, num_calibration=limit)
        del self._model

    def _init_onnx(self, path: Path) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise HareidError(f"{path}: running ONNX files needs onnxruntime: pip install 'hareid[onnx]'") from None
        try:
            sess = ort_session(path)
        except Exception as e:
            raise HareidError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0][:200]})") from None
        inp = sess.get_inputs()[0]
        meta = json.loads(sess.get_modelmeta().custom_metadata_map.get(METADATA_KEY, "{}"))
        shape = inp.shape  # e.g. ["batch", 3, 160, 64]
        if len(shape) != 4 or shape[1] != 3:
            raise HareidError(f"{path}: expected an image model with input (B, 3, H, W), found {shape}")
        fixed = [int(shape[2]), int(shape[3])] if all(isinstance(s, int) for s in shape[2:]) else None
        self.info.update(meta, fixed_size=fixed, path=str(path))
        if fixed:
            self.info.update(height=fixed[0], width=fixed[1])
        name = inp.name
        self.device, self.dtype = torch.device("cpu"), None
        self._net = lambda x: torch.from_numpy(sess.run(None, {name: x.cpu().numpy()})[0])
        self.dim = int(sess.get_outputs()[0].shape[-1]) if isinstance(sess.get_outputs()[0].shape[-1], int) \
            else int(meta.get("embed_dim", 0))

    def _init_torchscript(self, path: Path) -> None:
        import warnings

        extra = {METADATA_KEY: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as e:
            raise HareidError(f"{path}: not a readable TorchScript file ({str(e).splitlines()[0][:200]})") from None
        meta = json.loads(extra[METADATA_KEY] or "{}")
        size = meta.get("input_size")
        self.info.update(meta, fixed_size=size, path=str(path))
        if size:
            self.info.update(height=size[0], width=size[1])
        self.device, self.dtype = torch.device("cpu"), None
        self._net = module.eval()
        self.dim = int(meta.get("embed_dim", 0))

    # ---------------------------------------------------------------------------- preprocessing
    def _to_tensor(self, item: Any, i: int, bgr: bool = False) -> torch.Tensor:
        """One image -> ``(3, H, W)`` float normalised tensor at the model's input size (``bgr``: an
        array's channels are B, G, R)."""
        from PIL import Image

        from hareid.data.loader import read_image

        if isinstance(item, (str, os.PathLike)):
            if not Path(item).is_file():
                raise DataError(f"{item}: image not found (item {i}); pass existing image files")
            return self._transform(read_image(str(item)))
        if isinstance(item, Image.Image):
            return self._transform(item.convert("RGB"))
        if isinstance(item, np.ndarray):
            return self._transform(self._array_to_chw(item, i, bgr))
        raise DataError(f"image {i}: expected a numpy array, PIL image or file path, got {type(item).__name__}")

    @staticmethod
    def _array_to_chw(a: np.ndarray, i: int, bgr: bool = False) -> torch.Tensor:
        """An ``H x W (x 1|3|4)`` uint8 / [0, 1] float array -> ``(3, H, W)`` RGB image tensor."""
        if a.ndim == 2:
            a = a[:, :, None]
        if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
            raise DataError(f"image {i}: expected an H x W x 3 array (or H x W, H x W x 4), got shape {a.shape}")
        if a.shape[0] == 0 or a.shape[1] == 0:
            raise DataError(f"image {i}: empty crop (shape {a.shape}); drop zero-area boxes")
        if a.shape[2] == 4:
            a = a[:, :, :3]  # alpha dropped
        elif a.shape[2] == 1:
            a = np.repeat(a, 3, axis=2)  # grayscale -> 3 channels
        elif bgr:
            a = a[:, :, ::-1]
        if a.dtype == np.uint8:
            t = torch.from_numpy(np.require(a, requirements=["C", "W"])).permute(2, 0, 1)  # (3, H, W) uint8
        elif np.issubdtype(a.dtype, np.floating):
            lo, hi = float(a.min()), float(a.max())
            if lo < 0.0 or hi > 1.0 or not np.isfinite([lo, hi]).all():
                raise DataError(f"image {i}: float array with values in [{lo:.3g}, {hi:.3g}]; pass uint8 "
                                "(0-255) or floats scaled to [0, 1]")
            t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(2, 0, 1)
        else:
            raise DataError(f"image {i}: unsupported array dtype {a.dtype}; pass uint8 (0-255) or floats in [0, 1]")
        from torchvision import tv_tensors

        return tv_tensors.Image(t)

    def preprocess(self, images: Sequence[Any], bgr: bool = False) -> torch.Tensor:
        """Images -> ``(N, 3, H, W)`` normalised batch (the evaluation transform). Keeps no state:
        safe to call from several threads at once (the server does)."""
        if not len(images):
            raise DataError("no images given")
        return torch.stack([self._to_tensor(x, i, bgr) for i, x in enumerate(images)])

    # -------------------------------------------------------------------------------- embedding
    def embed_tensor(self, batch: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``(N, 3, H, W)`` normalised images -> ``(N, D)`` float32 on the CPU, batched internally.

        ``normalize=False`` returns the model's raw embeddings (as evaluation uses them)."""
        from hareid.evaluate.features import embed_batch

        if batch.dim() != 4 or batch.shape[1] != 3:
            raise DataError(f"expected an image batch (N, 3, H, W), got shape {tuple(batch.shape)}")
        fixed = self.info.get("fixed_size")
        if fixed and list(batch.shape[2:]) != [int(v) for v in fixed]:  # an exported file of one input size
            raise DataError(f"{self.info.get('path', 'model')}: exported for {fixed[0]}x{fixed[1]} inputs, got "
                            f"{batch.shape[2]}x{batch.shape[3]}; resize the batch (Embedder.preprocess does) "
                            "or export again at that size")
        if batch.is_floating_point() and not torch.isfinite(batch).all():  # as numpy input is refused
            bad = sorted({int(i) for i in (~torch.isfinite(batch)).flatten(1).any(1).nonzero().flatten()})
            raise DataError(f"image {bad[0]}: holds NaN or inf values ({len(bad)} such images in the batch); "
                            "pass finite, normalised images")
        out = []
        for i in range(0, batch.shape[0], self.batch_size):
            x = batch[i:i + self.batch_size].to(self.device)
            out.append(embed_batch(self._net, x, self.flip).cpu())
        feats = torch.cat(out) if out else torch.zeros(0, self.dim)
        return torch.nn.functional.normalize(feats, dim=1) if normalize else feats

    def embed(self, images: Sequence[Any] | torch.Tensor, bgr: bool = False) -> np.ndarray:
        """Images (see the module docstring) -> ``(N, D)`` float32 rows of unit length."""
        if isinstance(images, torch.Tensor):
            return self.embed_tensor(images).numpy()
        if isinstance(images, (str, os.PathLike, np.ndarray)) and not (isinstance(images, np.ndarray) and images.ndim == 4):
            images = [images]
        feats = [self.embed_tensor(self.preprocess(list(images[i:i + self.batch_size]), bgr))
                 for i in range(0, len(images), self.batch_size)]
        if not feats:
            return np.zeros((0, self.dim), dtype=np.float32)
        return torch.cat(feats).numpy()

    def embed_boxes(self, frame: np.ndarray, boxes_xyxy: Any, bgr: bool = False) -> np.ndarray:
        """Crop ``boxes_xyxy`` ``(N, 4)`` (pixels; clipped to the frame) from ``frame`` (H x W x 3)
        and embed them -> ``(N, D)``. A box with no area inside the frame is an error naming it."""
        if not isinstance(frame, np.ndarray) or frame.ndim not in (2, 3):
            raise DataError(f"frame: expected an H x W x 3 numpy array, got {getattr(frame, 'shape', type(frame))}")
        try:
            boxes = np.asarray(boxes_xyxy, dtype=np.float64) if len(boxes_xyxy) else np.zeros((0, 4))
        except (TypeError, ValueError):
            raise DataError("boxes: expected an (N, 4) array of x1, y1, x2, y2 pixels") from None
        if boxes.ndim == 1 and boxes.shape == (4,):
            boxes = boxes[None]
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise DataError(f"boxes: expected an (N, 4) array of x1, y1, x2, y2 pixels, got shape {boxes.shape}")
        h, w = frame.shape[:2]
        crops = []
        for i, (x1, y1, x2, y2) in enumerate(boxes):
            if not np.isfinite([x1, y1, x2, y2]).all():
                raise DataError(f"box {i}: non-finite coordinates {[x1, y1, x2, y2]}")
            cx1, cy1 = int(np.clip(np.floor(x1), 0, w)), int(np.clip(np.floor(y1), 0, h))
            cx2, cy2 = int(np.clip(np.ceil(x2), 0, w)), int(np.clip(np.ceil(y2), 0, h))
            if cx2 <= cx1 or cy2 <= cy1:
                raise DataError(f"box {i}: {[float(x1), float(y1), float(x2), float(y2)]} has no area inside "
                                f"the {w}x{h} frame; drop it before embedding")
            crops.append(frame[cy1:cy2, cx1:cx2])
        if not crops:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed(crops, bgr=bgr)

    def __repr__(self) -> str:
        return (f"Embedder(backend={self.backend}, input_size={self.input_size}, dim={self.dim}, "
                f"device={self.device}, dtype={self.dtype}, flip={self.flip})")


def embed(
    model: nn.Module,
    images: torch.Tensor | Sequence[str | os.PathLike],
    info: dict | None = None,
    batch_size: int = 64,
    flip: bool = False,
) -> torch.Tensor:
    """The evaluation's embeddings ``(N, D)`` float32 on the CPU (global and local parts each of unit
    length), through the same forward as :class:`hareid.Embedder` and ``hareid eval``.

    ``images``: a normalised batch tensor ``(N, 3, H, W)`` (as :func:`hareid.data.loader.load_images` returns) or a
    list of image files, resized to the model's input size (``info`` of :func:`hareid.models.load_model`).
    ``flip``: average with the horizontally mirrored image (flip test-time augmentation).
    """
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if isinstance(images, torch.Tensor) and (images.dim() != 4 or images.shape[1] != 3):
        raise DataError(f"expected an image batch (N, 3, H, W), got shape {tuple(images.shape)}")
    emb = Embedder(model, info=info, batch_size=batch_size, flip=flip, dtype=None,  # float32, as eval
                   input_size=None if info else tuple(images.shape[2:]) if isinstance(images, torch.Tensor) else None)
    batch = images if isinstance(images, torch.Tensor) else emb.preprocess(list(images))
    return emb.embed_tensor(batch, normalize=False)
