"""A gallery index for galleries too large for a distance matrix (FAISS, inner product).

Features are L2-normalised on the way in (``normalize=True``), so scores are cosine similarities
(higher = closer). ``kind="flat"`` is exact (``IndexFlatIP``); ``kind="ivf"`` is
``IndexIVFFlat`` (``nlist`` k-means cells, ``nprobe`` visited per query; trained on the first
``add``). ``save(dir)`` writes ``index.faiss`` + ``meta.json`` (settings) + ``meta.npz``
(pids, camids, paths): no pickle anywhere, loads with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hareid.errors import HareidError

_FORMAT = 1


def _faiss():
    try:
        import faiss
    except ImportError as e:
        raise HareidError("GalleryIndex needs FAISS: pip install hareid[faiss]") from e
    return faiss


def _f32(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


@dataclass
class SearchResult:
    """Top-k matches of one query, best first."""

    paths: list[str]
    scores: np.ndarray  # (k,) float32 similarity
    pids: np.ndarray  # (k,)
    camids: np.ndarray  # (k,)
    indices: np.ndarray  # (k,) rows of the gallery


class GalleryIndex:
    """FAISS inner-product index over gallery embeddings plus their paths, pids and camids."""

    def __init__(self, dim: int, kind: str = "flat", nlist: int = 1024, nprobe: int = 16,
                 normalize: bool = True, num_threads: int | None = None):
        if kind not in ("flat", "ivf"):
            raise ValueError(f"unknown index kind {kind!r}; choose 'flat' or 'ivf'")
        faiss = _faiss()
        if num_threads:
            faiss.omp_set_num_threads(num_threads)
        self.dim, self.kind, self.nlist, self.nprobe = int(dim), kind, int(nlist), int(nprobe)
        self.normalize = normalize
        if kind == "flat":
            self.index = faiss.IndexFlatIP(self.dim)
        else:
            self._quantizer = faiss.IndexFlatIP(self.dim)
            self.index = faiss.IndexIVFFlat(self._quantizer, self.dim, self.nlist,
                                            faiss.METRIC_INNER_PRODUCT)
            self.index.nprobe = self.nprobe
        self.paths: list[str] = []
        self.pids = np.zeros(0, dtype=np.int64)
        self.camids = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def _prep(self, x: Any) -> np.ndarray:
        x = _f32(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must be (N, {self.dim}), got {x.shape}")
        if self.normalize:
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(x, dtype=np.float32)

    def train(self, features: Any) -> None:
        """Train the IVF coarse quantizer (k-means); a no-op for the flat index."""
        if self.kind == "ivf" and not self.index.is_trained:
            self.index.train(self._prep(features))

    def add(self, features: Any, paths: list[str] | None = None, pids: Any = None,
            camids: Any = None) -> None:
        """Append gallery features (N, D) with their metadata (defaults: "", -1, -1)."""
        x = self._prep(features)
        n = x.shape[0]
        paths = [str(p) for p in paths] if paths is not None else [""] * n
        pids = np.full(n, -1) if pids is None else np.asarray(pids).reshape(-1)
        camids = np.full(n, -1) if camids is None else np.asarray(camids).reshape(-1)
        if not len(paths) == len(pids) == len(camids) == n:
            raise ValueError(f"{n} features but {len(paths)} paths, {len(pids)} pids, "
                             f"{len(camids)} camids")
        if self.kind == "ivf" and not self.index.is_trained:
            self.index.train(x)
        self.index.add(x)
        self.paths += paths
        self.pids = np.concatenate([self.pids, pids.astype(np.int64)])
        self.camids = np.concatenate([self.camids, camids.astype(np.int64)])

    def search_arrays(self, features: Any, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Raw top-k: (scores (Q, k) float32, indices (Q, k) int64; -1 where fewer than k)."""
        x = self._prep(features)
        k = max(1, min(int(k), len(self))) if len(self) else 1
        if self.kind == "ivf":
            self.index.nprobe = self.nprobe
        scores, idx = self.index.search(x, k)
        return scores, idx

    def search(self, features: Any, k: int = 10) -> list[SearchResult]:
        """Top-k gallery matches of each query row, best (highest cosine) first."""
        scores, idx = self.search_arrays(features, k)
        out = []
        for s, i in zip(scores, idx):
            i = i[i >= 0]
            out.append(SearchResult([self.paths[j] for j in i], s[: len(i)], self.pids[i],
                                    self.camids[i], i))
        return out

    def save(self, directory: str | Path) -> Path:
        """Write ``index.faiss``, ``meta.json`` and ``meta.npz`` into ``directory``."""
        faiss = _faiss()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(d / "index.faiss"))
        meta = {"format": _FORMAT, "dim": self.dim, "kind": self.kind, "nlist": self.nlist,
                "nprobe": self.nprobe, "normalize": self.normalize, "ntotal": len(self)}
        (d / "meta.json").write_text(json.dumps(meta, indent=2))
        np.savez(d / "meta.npz", pids=self.pids, camids=self.camids,
                 paths=np.asarray(self.paths, dtype=str))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> GalleryIndex:
        """Load an index written by :meth:`save` (metadata without pickle)."""
        faiss = _faiss()
        d = Path(directory)
        files = [d / "index.faiss", d / "meta.json", d / "meta.npz"]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise HareidError(f"{d}: not a saved GalleryIndex (missing {', '.join(missing)}); "
                              "build one with GalleryIndex.save")
        meta = json.loads(files[1].read_text())
        obj = cls.__new__(cls)
        obj.dim, obj.kind = int(meta["dim"]), meta["kind"]
        obj.nlist, obj.nprobe = int(meta["nlist"]), int(meta["nprobe"])
        obj.normalize = bool(meta["normalize"])
        obj.index = faiss.read_index(str(files[0]))
        with np.load(files[2], allow_pickle=False) as z:
            obj.pids, obj.camids = z["pids"].astype(np.int64), z["camids"].astype(np.int64)
            obj.paths = [str(p) for p in z["paths"]]
        if len(obj.paths) != obj.index.ntotal:
            raise HareidError(f"{d}: index has {obj.index.ntotal} vectors but metadata "
                              f"{len(obj.paths)}; re-save the index")
        return obj


__all__ = ["GalleryIndex", "SearchResult"]
