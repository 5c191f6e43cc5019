"""The Python API for people who embed hareid.

```python
from hareid.api import build_index_from_images, embed, load_model

model, info = load_model("runs/demo/checkpoints/best.pt")    # hareid or torchreid HACNN checkpoint
emb = embed(model, ["a.jpg", "b.jpg"], info)                  # (2, 1024) float32, L2-normalised per branch
index = build_index_from_images(model, gallery_paths, info)  # FAISS, exact inner product (cosine)
hits = index.search(emb, k=5)                                # per query: paths, scores, pids, camids
```

For trackers and services, :class:`hareid.Embedder` (crops or frame + boxes in, unit rows out) is
the simpler entry point; :func:`embed` here is the same forward with the evaluation's raw features.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hareid.errors import CheckpointError, DataError

__all__ = [
    "build_gallery_index",
    "build_index_from_images",
    "embed",
    "evaluate_checkpoint",
    "list_images",
    "load_images",
    "load_model",
    "search_images",
]

PathLike = str | os.PathLike


def load_model(checkpoint: PathLike, device: str | torch.device | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the network of a checkpoint and load its weights; returns ``(model.eval(), info)``.

    Reads hareid checkpoints (``ckpt["model"]`` holds the build arguments) and torchreid HACNN
    checkpoints (recognised by their keys). ``info`` has ``height``, ``width`` (the training input
    size), ``model`` (build kwargs), ``config`` (the run's config, ``{}`` if none) and ``path``.
    Never unpickles code. Raises :class:`~hareid.errors.CheckpointError` for a missing, corrupt or
    foreign file.
    """
    from hareid.checkpoint import load_checkpoint, strip_prefix
    from hareid.models import build_model, model_entry

    path = Path(checkpoint)
    ckpt = load_checkpoint(path)
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    data_cfg = config.get("data") if isinstance(config.get("data"), dict) else {}
    info: dict[str, Any] = {"config": config, "path": str(path)}
    spec = ckpt.get("model")
    if isinstance(spec, dict) and "name" in spec:
        kwargs = dict(spec)
        kwargs["region_sampling"] = {"peer": "torchreid"}.get(kwargs.get("region_sampling"),
                                                               kwargs.get("region_sampling", "direct"))
        try:
            model = build_model(kwargs.pop("name"), **kwargs)
        except (TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: cannot rebuild model {spec['name']!r} "
                                  f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                                  "was it saved by another hareid version?") from e
        state = ckpt.get("state_dict")
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: no 'state_dict' entry; not a hareid checkpoint")
        _load_exact(model, strip_prefix(state), path, spec["name"])
        info["model"] = spec
    else:
        from hareid.torchreid_compat import load_torchreid_hacnn

        try:
            model = load_torchreid_hacnn(ckpt)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: neither a hareid checkpoint (no 'model' entry with the settings to "
                                  "rebuild it: save weights with hareid.checkpoint.save_checkpoint({'state_dict': "
                                  "..., 'model': {'name': ..., 'num_classes': ...}}, PATH)) nor a torchreid HACNN "
                                  f"checkpoint ({e})") from e
        info["model"] = {"name": "hacnn", "source": "torchreid"}
    entry = model_entry(info["model"]["name"])
    info.update(height=int(data_cfg.get("height") or entry.input_size[0]),
                width=int(data_cfg.get("width") or entry.input_size[1]), mean=entry.mean, std=entry.std)
    if device is not None:
        model = model.to(device)
    return model.eval(), info


def _load_exact(model: nn.Module, state: dict, path: Path, name: str) -> None:
    """``load_state_dict(strict)`` with a one-line error naming the first clashing tensors."""
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in state
              if k in target and tuple(state[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{label} {items[:3]}" for label, items in (("missing", missing), ("unexpected", unexpected),
                                                             ("shape mismatch", shapes)) if items]
        raise CheckpointError(f"{path}: weights do not fit model {name!r} ({'; '.join(parts)}); "
                              "pass a checkpoint of this model, or start from it with model.init=PATH")
    model.load_state_dict(state)


def _eval_transform(info: dict):
    from hareid.data.transforms import build_transforms

    kw = {k: info[k] for k in ("mean", "std") if info.get(k) is not None}
    return build_transforms(info["height"], info["width"], **kw)[1]


def load_images(paths: Sequence[PathLike], height: int, width: int, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None) -> torch.Tensor:
    """Decode, resize and normalise image files into a ``(N, 3, height, width)`` batch (the
    evaluation transform; ImageNet mean/std unless given)."""
    from hareid.data.loader import read_image

    tf = _eval_transform({"height": height, "width": width, "mean": mean, "std": std})
    out = []
    for p in paths:
        if not Path(p).is_file():
            raise DataError(f"{p}: image not found; pass existing image files")
        out.append(tf(read_image(str(p))))
    if not out:
        raise DataError("no images given")
    return torch.stack(out)


def list_images(folder: PathLike) -> list[str]:
    """Every image file (jpg, jpeg, png, bmp) under ``folder``, recursively, sorted."""
    from hareid.data.datasets import IMAGE_EXTENSIONS

    root = Path(folder)
    return sorted(str(p) for p in root.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file())


def embed(
    model: nn.Module,
    images: torch.Tensor | Sequence[PathLike],
    info: dict | None = None,
    batch_size: int = 64,
    flip: bool = False,
) -> torch.Tensor:
    """The evaluation's embeddings ``(N, D)`` float32 on the CPU (global and local parts each of unit
    length), through the same forward as :class:`hareid.Embedder` and ``hareid eval``.

    ``images``: a normalised batch tensor ``(N, 3, H, W)`` (as :func:`load_images` returns) or a
    list of image files, resized to the model's input size (``info`` of :func:`load_model`).
    ``flip``: average with the horizontally mirrored image (flip test-time augmentation).
    """
    from hareid.embedder import Embedder

    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if isinstance(images, torch.Tensor) and (images.dim() != 4 or images.shape[1] != 3):
        raise DataError(f"expected an image batch (N, 3, H, W), got shape {tuple(images.shape)}")
    emb = Embedder(model, info=info, batch_size=batch_size, flip=flip, dtype=None,  # float32, as eval
                   input_size=None if info else tuple(images.shape[2:]) if isinstance(images, torch.Tensor) else None)
    batch = images if isinstance(images, torch.Tensor) else emb.preprocess(list(images))
    return emb.embed_tensor(batch, normalize=False)


def _dataset(root: PathLike, name: str | None):
    from hareid.data import build_dataset, detect_dataset

    if not Path(root).exists():
        raise DataError(f"{root}: dataset folder not found; pass the folder that holds the dataset")
    name = name or detect_dataset(root)
    if name is None:
        raise DataError(f"{root}: no known dataset layout found; pass --dataset NAME "
                        "(market1501, dukemtmcreid, cuhk03, msmt17, folder, csv, synthetic, tracklets)")
    return build_dataset(name, root, verbose=False)


def evaluate_checkpoint(
    checkpoint: PathLike,
    root: PathLike,
    dataset: str | None = None,
    flip: bool = False,
    rerank: bool = False,
    metric: str = "euclidean",
    protocol: str = "market1501",
    batch_size: int = 64,
    workers: int = 2,
    skip_bad_images: bool = False,
    amp: str = "none",
    junk: str = "auto",
):
    """Evaluate a checkpoint on a dataset's query/gallery split; returns an ``EvalResult``.

    ``amp``: embedding precision as ``eval.amp`` (``none``, ``bf16``, ``fp16``, ``auto``).
    ``junk``: which same-identity gallery entries are ignored (``hareid.evaluate.junk``): ``camera``
    (Market-1501), ``tracklet``, ``none``, or ``auto`` (camera with 2+ cameras, else tracklet)."""
    from dataclasses import replace

    from hareid.data.loader import build_eval_loaders
    from hareid.engine.runtime import resolve_amp
    from hareid.evaluate import evaluate
    from hareid.evaluate.features import model_device
    from hareid.evaluate.junk import apply_junk_rule, resolve_junk_rule

    model, info = load_model(checkpoint, device="cuda" if torch.cuda.is_available() else None)
    ds = _dataset(root, dataset)
    query, gallery = apply_junk_rule(ds.query, ds.gallery, resolve_junk_rule(ds, junk), ds.extras.get("tracklet"))
    loaders = build_eval_loaders(replace(ds, query=query, gallery=gallery), info["height"], info["width"],
                                 batch_size, workers, skip_bad_images, info["mean"], info["std"])
    return evaluate(model, *loaders, metric=metric, flip=flip, rerank=rerank, protocol=protocol,
                    dtype=resolve_amp(amp, model_device(model), "--amp"))


def build_index_from_images(model: nn.Module, paths: Sequence[PathLike], info: dict,
                            pids: Sequence[int] | None = None, camids: Sequence[int] | None = None,
                            ivf: int = 0):
    """Embed ``paths`` into an in-memory :class:`hareid.index.GalleryIndex` (exact, or IVF lists).

    For large galleries, on disk, resumable and sharded over processes, use
    :func:`hareid.index.build.index_gallery` (``hareid index``)."""
    from hareid.index import GalleryIndex

    if not paths:
        raise DataError("no gallery images to index")
    feats = embed(model, list(paths), info)
    index = GalleryIndex(feats.shape[1], kind="ivf" if ivf else "flat", nlist=ivf or 1)
    index.add(feats, [str(p) for p in paths],
              np.asarray(pids if pids is not None else [-1] * len(paths)),
              np.asarray(camids if camids is not None else [-1] * len(paths)))
    return index


def build_gallery_index(checkpoint: PathLike, root: PathLike, dataset: str | None = None,
                        split: str = "gallery", ivf: int = 0):
    """Index one split of a dataset, or every image under a plain folder (``hareid index``)."""
    from hareid.data import detect_dataset

    model, info = load_model(checkpoint)
    if dataset is None and Path(root).is_dir() and detect_dataset(root) is None:
        paths = list_images(root)
        if not paths:
            raise DataError(f"{root}: neither a known dataset layout nor a folder with images")
        return build_index_from_images(model, paths, info, ivf=ivf)
    records = getattr(_dataset(root, dataset), split)
    return build_index_from_images(model, [r.path for r in records], info,
                                   [r.pid for r in records], [r.camid for r in records], ivf)


def search_images(checkpoint: PathLike, index_dir: PathLike, images: Sequence[PathLike],
                  k: int = 10, filter: Any = None,
                  skip_bad_images: bool = False,
                  dtype: Any = "auto") -> Iterator[tuple[str, list[tuple[str, float]]]]:
    """For each query image: its top-k ``(gallery path, cosine similarity)`` from a saved index.

    Queries are embedded by :class:`hareid.Embedder` in ``dtype`` (default ``"auto"``, as
    ``hareid index`` embeds the gallery).

    ``index_dir``: a FAISS index folder, a milvus-lite ``.db`` or a Milvus URI;
    ``filter``: an optional :class:`hareid.index.Filter` (camera, time range, source);
    ``skip_bad_images``: drop unreadable query images with a ``RuntimeWarning`` naming each
    (else the first one is a :class:`DataError`).
    """
    from hareid.data.loader import read_image
    from hareid.index import open_index

    if skip_bad_images:
        readable = []
        for p in images:
            try:
                read_image(str(p))
                readable.append(p)
            except DataError as e:
                warnings.warn(f"{e}; skipped", RuntimeWarning, stacklevel=2)
        if not readable:
            raise DataError("no readable query image left; pass readable image files")
        images = readable
    with open_index(index_dir, read_only=True) as index:  # a bad index fails before the model loads
        from hareid.embedder import Embedder

        model, info = load_model(checkpoint)
        feats = torch.from_numpy(Embedder(model, info=info, dtype=dtype).embed([str(p) for p in images]))
        if feats.shape[1] != index.dim:
            raise DataError(f"{index_dir}: index holds {index.dim}-d embeddings but {checkpoint} "
                            f"gives {feats.shape[1]}-d; search with the checkpoint the index was "
                            "built with")
        results = index.search(feats, k, filter=filter)
    for path, res in zip(images, results):
        yield str(path), [(p, float(s)) for p, s in zip(res.paths, res.scores)]
