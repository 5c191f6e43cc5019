"""Gallery indexes: one interface (:class:`VectorIndex`), two backends, one way to open them.

```python
from hareid.index import Filter, open_index

index = open_index("runs/demo/index", dim=1024, create=True)   # FAISS + SQLite folder
# open_index("gallery.db", dim=1024, create=True)               # milvus-lite file
# open_index("http://milvus:19530", collection="cams")          # Milvus server / cluster
ids = index.add(features, paths, pids, cameras=["c1", ...], times=[...], sources="upload")
hits = index.search(query, k=10, filter=Filter(cameras=["c1"], time_min=0, time_max=60))
index.delete(ids[:2]); index.close()
```
"""

from __future__ import annotations

import os
from typing import Any

from hareid.index.base import Filter, Item, SearchResult, VectorIndex
from hareid.index.faiss_store import FaissIndex, GalleryIndex
from hareid.index.milvus_store import MilvusIndex, is_milvus_uri

__all__ = [
    "FaissIndex",
    "Filter",
    "GalleryIndex",
    "Item",
    "MilvusIndex",
    "SearchResult",
    "VectorIndex",
    "detect_backend",
    "open_index",
]


def detect_backend(location: str | os.PathLike) -> str:
    """``"milvus"`` for a ``.db`` file or a server URI (http://, tcp://...), else ``"faiss"``."""
    return "milvus" if is_milvus_uri(location) else "faiss"


def open_index(location: str | os.PathLike, dim: int | None = None, *, backend: str | None = None,
               create: bool = False, read_only: bool = False, kind: str = "flat",
               nlist: int = 1024, nprobe: int | None = None, pq_m: int = 64,
               collection: str | None = None, token: str | None = None,
               **kw: Any) -> VectorIndex:
    """Open the gallery index at ``location``; with ``create=True`` make it when absent.

    ``location``: a folder (FAISS + SQLite), a ``*.db`` file (milvus-lite) or a Milvus URI.
    ``kind``, ``nlist``, ``pq_m`` apply when creating; ``nprobe`` overrides the stored value.
    """
    backend = backend or detect_backend(location)
    if backend == "faiss":
        if not create:
            return FaissIndex.open(location, read_only=read_only, nprobe=nprobe, **kw)
        return FaissIndex(dim, kind=kind, nlist=nlist, nprobe=nprobe, pq_m=pq_m, path=location, **kw)
    if backend == "milvus":
        return MilvusIndex(location, dim, kind=kind, nlist=nlist, nprobe=nprobe, pq_m=pq_m,
                           collection=collection, token=token, create=create)
    from hareid.errors import HareidError

    raise HareidError(f"unknown index backend {backend!r}; choose faiss or milvus")
