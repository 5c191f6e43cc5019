"""The Python API for people who embed hareid.

```python
from hareid.api import load_model, embed, build_index_from_images

model, info = load_model("runs/demo/checkpoints/best.pt")   # any hareid or torchreid HACNN checkpoint
emb = embed(model, ["a.jpg", "b.jpg"], info)                 # (2, 1024) L2-normalised per branch
index = build_index_from_images(model, gallery_paths, info)  # FAISS, exact inner product
hits = index.search(emb, k=5)                                # paths + scores per query
```
"""

from __future__ import annotations

import os
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
    "load_images",
    "load_model",
    "search_images",
]

PathLike = str | os.PathLike


def load_model(checkpoint: PathLike, device: str | torch.device | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the network of a checkpoint and load its weights; returns ``(model.eval(), info)``.

    Reads hareid checkpoints (``ckpt["model"]`` holds the build arguments) and torchreid HACNN
    checkpoints (recognised by their keys). ``info`` has ``height``, ``width``, ``mean``, ``std``,
    ``model`` (build kwargs) and the checkpoint's ``config`` when present. Never unpickles code.
    """
    from hareid.checkpoint import load_checkpoint, strip_prefix
    from hareid.models import build_model

    path = Path(checkpoint)
    ckpt = load_checkpoint(path)
    config = ckpt.get("config") or {}
    data_cfg = config.get("data", {}) if isinstance(config, dict) else {}
    info: dict[str, Any] = {
        "height": int(data_cfg.get("height", 160)),
        "width": int(data_cfg.get("width", 64)),
        "config": config,
        "path": str(path),
    }
    spec = ckpt.get("model")
    if isinstance(spec, dict) and "name" in spec:
        kwargs = dict(spec)
        model = build_model(kwargs.pop("name"), **kwargs)
        state = strip_prefix(ckpt.get("state_dict", {}))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{path}: weights do not fit model {spec['name']!r} (missing {list(missing)[:3]}, "
                f"unexpected {list(unexpected)[:3]}); was it saved by another hareid version?"
            )
        info["model"] = spec
    else:
        from hareid.torchreid_compat import load_torchreid_hacnn

        model = load_torchreid_hacnn(ckpt)
        info["model"] = {"name": "hacnn", "source": "torchreid"}
    if device is not None:
        model = model.to(device)
    return model.eval(), info


def _eval_transform(height: int, width: int):
    from hareid.data.transforms import build_transforms

    return build_transforms(height, width)[1]


def load_images(paths: Sequence[PathLike], height: int, width: int) -> torch.Tensor:
    """Decode, resize and normalise image files into a ``(N, 3, height, width)`` batch."""
    from hareid.data.loader import read_image

    tf = _eval_transform(height, width)
    out = []
    for p in paths:
        if not Path(p).is_file():
            raise DataError(f"{p}: image not found; pass existing image files")
        out.append(tf(read_image(str(p))))
    return torch.stack(out)


@torch.inference_mode()
def embed(
    model: nn.Module,
    images: torch.Tensor | Sequence[PathLike],
    info: dict | None = None,
    batch_size: int = 64,
    flip: bool = False,
) -> torch.Tensor:
    """Embeddings ``(N, D)`` float32 on the CPU for an image batch tensor or a list of image files."""
    info = info or {"height": 160, "width": 64}
    model.eval()
    device = next(model.parameters()).device
    feats = []
    n = len(images)
    for i in range(0, n, batch_size):
        chunk = images[i : i + batch_size]
        x = chunk if isinstance(chunk, torch.Tensor) else load_images(chunk, info["height"], info["width"])
        x = x.to(device)  # (b, 3, H, W)
        f = model(x).float()
        if flip:
            f = (f + model(torch.flip(x, dims=[3])).float()) / 2
        feats.append(f.cpu())
    return torch.cat(feats) if feats else torch.zeros(0, getattr(model, "embed_dim", 0))


def _dataset(root: PathLike, name: str | None):
    from hareid.data import build_dataset, detect_dataset

    name = name or detect_dataset(root)
    if name is None:
        raise DataError(f"{root}: no known dataset layout found; pass --dataset NAME "
                        "(market1501, dukemtmcreid, cuhk03, msmt17, folder, csv, synthetic)")
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
):
    """Evaluate a checkpoint on a dataset's query/gallery split; returns an ``EvalResult``."""
    from torch.utils.data import DataLoader

    from hareid.data.loader import ImageDataset
    from hareid.evaluate import evaluate

    model, info = load_model(checkpoint)
    ds = _dataset(root, dataset)
    tf = _eval_transform(info["height"], info["width"])
    q_loader, g_loader = (DataLoader(ImageDataset(recs, tf), batch_size=batch_size, num_workers=workers)
                          for recs in (ds.query, ds.gallery))
    return evaluate(model, q_loader, g_loader, metric=metric, flip=flip, rerank=rerank,
                    protocol=protocol)


def build_index_from_images(model: nn.Module, paths: Sequence[PathLike], info: dict,
                            pids: Sequence[int] | None = None, camids: Sequence[int] | None = None,
                            ivf: int = 0):
    """Embed ``paths`` and put them in a :class:`hareid.index.GalleryIndex` (exact, or IVF)."""
    from hareid.index import GalleryIndex

    feats = embed(model, list(paths), info)
    index = GalleryIndex(feats.shape[1], kind="ivf" if ivf else "flat", nlist=ivf or 1)
    index.add(feats, [str(p) for p in paths],
              np.asarray(pids if pids is not None else [-1] * len(paths)),
              np.asarray(camids if camids is not None else [-1] * len(paths)))
    return index


def build_gallery_index(checkpoint: PathLike, root: PathLike, dataset: str | None = None,
                        split: str = "gallery", ivf: int = 0):
    """Index one split of a dataset (``hareid index``)."""
    model, info = load_model(checkpoint)
    records = getattr(_dataset(root, dataset), split)
    return build_index_from_images(model, [r.path for r in records], info,
                                   [r.pid for r in records], [r.camid for r in records], ivf)


def search_images(checkpoint: PathLike, index_dir: PathLike, images: Sequence[PathLike],
                  k: int = 10) -> Iterator[tuple[str, list[tuple[str, float]]]]:
    """For each query image: its top-k ``(gallery path, similarity)`` from a saved index."""
    from hareid.index import GalleryIndex

    model, info = load_model(checkpoint)
    index = GalleryIndex.load(index_dir)
    feats = embed(model, list(images), info)
    for path, res in zip(images, index.search(feats, k)):
        yield str(path), [(p, float(s)) for p, s in zip(res.paths, res.scores)]
