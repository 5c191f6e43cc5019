"""Gallery indexes from image files in memory, and searching a saved index with a checkpoint
(``hareid search``, :mod:`hareid.api`). For large galleries on disk see :mod:`hareid.index.build`."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hareid.deploy.embedder import Embedder, embed
from hareid.errors import DataError
from hareid.index.faiss_store import GalleryIndex
from hareid.models.loading import load_model

__all__ = ["build_gallery_index", "build_index_from_images", "search_images"]


def build_index_from_images(model: nn.Module, paths: Sequence[str | os.PathLike], info: dict,
                            pids: Sequence[int] | None = None, camids: Sequence[int] | None = None,
                            ivf: int = 0):
    """Embed ``paths`` into an in-memory :class:`hareid.index.GalleryIndex` (exact, or IVF lists).

    For large galleries, on disk, resumable and sharded over processes, use
    :func:`hareid.index.build.index_gallery` (``hareid index``)."""
    if not paths:
        raise DataError("no gallery images to index")
    feats = embed(model, list(paths), info)
    index = GalleryIndex(feats.shape[1], kind="ivf" if ivf else "flat", nlist=ivf or 1)
    index.add(feats, [str(p) for p in paths],
              np.asarray(pids if pids is not None else [-1] * len(paths)),
              np.asarray(camids if camids is not None else [-1] * len(paths)))
    return index


def build_gallery_index(checkpoint: str | os.PathLike, root: str | os.PathLike, dataset: str | None = None,
                        split: str = "gallery", ivf: int = 0):
    """Index one split of a dataset, or every image under a plain folder (``hareid index``)."""
    from hareid.data import detect_dataset, list_images, open_dataset

    model, info = load_model(checkpoint)
    if dataset is None and Path(root).is_dir() and detect_dataset(root) is None:
        paths = list_images(root)
        if not paths:
            raise DataError(f"{root}: neither a known dataset layout nor a folder with images")
        return build_index_from_images(model, paths, info, ivf=ivf)
    records = getattr(open_dataset(root, dataset), split)
    return build_index_from_images(model, [r.path for r in records], info,
                                   [r.pid for r in records], [r.camid for r in records], ivf)


def search_images(checkpoint: str | os.PathLike, index_dir: str | os.PathLike, images: Sequence[str | os.PathLike],
                  k: int = 10, filter: Any = None, skip_bad_images: bool = False,
                  collection: str | None = None,
                  dtype: Any = "auto") -> Iterator[tuple[str, list[tuple[str, float]]]]:
    """For each query image: its top-k ``(gallery path, cosine similarity)`` from a saved index.

    Queries are embedded by :class:`hareid.Embedder` in ``dtype`` (default ``"auto"``, as
    ``hareid index`` embeds the gallery).

    ``index_dir``: a FAISS index folder, a milvus-lite ``.db`` or a Milvus URI;
    ``filter``: an optional :class:`hareid.index.Filter` (camera, time range, source);
    ``skip_bad_images``: drop unreadable query images with a ``RuntimeWarning`` naming each
    (else the first one is a :class:`DataError`); ``collection``: the Milvus collection
    (default ``hareid_gallery``).
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
    with open_index(index_dir, read_only=True, collection=collection) as index:  # a bad index fails before the model loads
        model, info = load_model(checkpoint)
        feats = torch.from_numpy(Embedder(model, info=info, dtype=dtype).embed([str(p) for p in images]))
        if feats.shape[1] != index.dim:
            raise DataError(f"{index_dir}: index holds {index.dim}-d embeddings but {checkpoint} "
                            f"gives {feats.shape[1]}-d; search with the checkpoint the index was "
                            "built with")
        results = index.search(feats, k, filter=filter)
    for path, res in zip(images, results):
        yield str(path), [(p, float(s)) for p, s in zip(res.paths, res.scores)]
