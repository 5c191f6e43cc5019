"""The one gallery-index interface: :class:`VectorIndex`, its records, filters and results.

Two backends implement it: :class:`hareid.index.FaissIndex` (FAISS vectors, SQLite metadata; the
embedded default) and :class:`hareid.index.MilvusIndex` (milvus-lite file or a Milvus server).
Vectors are L2-normalised on the way in, so a score is a cosine similarity (higher = closer) and
``distance = 2 - 2 * score`` is the squared euclidean distance between unit vectors.

Every gallery item carries ``path, camera, time, source, pid``; a :class:`Filter` on camera, time
range and source runs inside the database.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hareid.errors import HareidError
from hareid.evaluate.distance import as_f32

#: Longest accepted text fields (Milvus VARCHAR limits; the FAISS backend checks the same).
MAX_PATH, MAX_CAMERA, MAX_SOURCE = 4096, 256, 1024


@dataclass(frozen=True)
class Item:
    """One gallery entry: its id in the index and its metadata."""

    id: int
    path: str = ""
    camera: str = ""
    time: float | None = None  # seconds (unix time, or frame index / seconds within a sequence)
    source: str = ""  # where it came from: a dataset split, "upload", a camera feed...
    pid: int = -1  # identity when known (datasets), else -1

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "camera": self.camera, "time": self.time,
                "source": self.source, "pid": self.pid}


def _texts(values: Iterable[Any] | str | None) -> tuple[str, ...] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    return tuple(str(v) for v in values)


@dataclass(frozen=True)
class Filter:
    """Which gallery items a search may return. ``None`` fields do not filter.

    ``cameras`` / ``sources``: allowed values (an empty tuple allows nothing); ``time_min`` /
    ``time_max``: inclusive bounds (items without a time never match a time bound).
    """

    cameras: tuple[str, ...] | None = None
    time_min: float | None = None
    time_max: float | None = None
    sources: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "cameras", _texts(self.cameras))
        object.__setattr__(self, "sources", _texts(self.sources))
        for key in ("time_min", "time_max"):
            v = getattr(self, key)
            if v is not None:
                v = float(v)
                if not math.isfinite(v):
                    raise HareidError(f"filter {key}={v}: must be a finite number of seconds")
                object.__setattr__(self, key, v)
        if self.time_min is not None and self.time_max is not None and self.time_min > self.time_max:
            raise HareidError(f"filter time_min {self.time_min} > time_max {self.time_max}; swap them")

    @property
    def empty(self) -> bool:
        return self.cameras is None and self.sources is None and self.time_min is None \
            and self.time_max is None

    def matches(self, item: Item) -> bool:
        """The filter evaluated in Python (reference for tests)."""
        if self.cameras is not None and item.camera not in self.cameras:
            return False
        if self.sources is not None and item.source not in self.sources:
            return False
        if (self.time_min is not None or self.time_max is not None) and item.time is None:
            return False
        if self.time_min is not None and item.time < self.time_min:
            return False
        return not (self.time_max is not None and item.time > self.time_max)

    def sql(self) -> tuple[str, list[Any]]:
        """A parameterised SQL ``WHERE`` clause over the ``items`` table and its parameters."""
        parts, params = ["1"], []
        for col, values in (("camera", self.cameras), ("source", self.sources)):
            if values is not None:
                parts.append(f"{col} IN ({','.join('?' * len(values))})" if values else "0")
                params += list(values)
        if self.time_min is not None:
            parts.append("time >= ?")
            params.append(self.time_min)
        if self.time_max is not None:
            parts.append("time <= ?")
            params.append(self.time_max)
        return " AND ".join(parts), params

    def milvus(self) -> str:
        """A Milvus boolean expression (string literals quoted by :func:`milvus_literal`)."""
        parts = []
        for col, values in (("camera", self.cameras), ("source", self.sources)):
            if values is not None:
                parts.append(f"{col} in [{', '.join(milvus_literal(v) for v in values)}]"
                             if values else "id < 0")
        if self.time_min is not None or self.time_max is not None:
            parts.append("time is not null")
        if self.time_min is not None:
            parts.append(f"time >= {self.time_min!r}")
        if self.time_max is not None:
            parts.append(f"time <= {self.time_max!r}")
        return " and ".join(parts)


def milvus_literal(value: str) -> str:
    """``value`` as a Milvus string literal: double quotes, with only backslash, quote and line
    breaks escaped. Not JSON: Milvus rejects JSON's ``\\uXXXX`` escapes, so a camera called 门口
    or a path with accents must stay as it is."""
    out = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return '"' + out.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'


@dataclass
class SearchResult:
    """Top-k matches of one query, best first."""

    ids: np.ndarray  # (k,) int64 gallery ids
    scores: np.ndarray  # (k,) float32 cosine similarity
    items: list[Item] = field(default_factory=list)

    @property
    def indices(self) -> np.ndarray:
        return self.ids

    @property
    def distances(self) -> np.ndarray:
        """Squared euclidean distance between the unit embeddings: ``2 - 2 * score``."""
        return (2.0 - 2.0 * self.scores).clip(min=0.0)

    @property
    def paths(self) -> list[str]:
        return [it.path for it in self.items]

    @property
    def cameras(self) -> list[str]:
        return [it.camera for it in self.items]

    @property
    def times(self) -> list[float | None]:
        return [it.time for it in self.items]

    @property
    def pids(self) -> np.ndarray:
        return np.asarray([it.pid for it in self.items], dtype=np.int64)

    @property
    def camids(self) -> np.ndarray:
        """Cameras as integers (dataset indexes store the 0-based camid); -1 for named cameras."""
        return np.asarray([camid(it.camera) for it in self.items], dtype=np.int64)


def camid(camera: str) -> int:
    """``"3"`` -> 3; a named camera (``"lobby"``) -> -1."""
    try:
        return int(camera)
    except ValueError:
        return -1


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    return np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12),
                                dtype=np.float32)


def metadata_rows(n: int, paths: Sequence[Any] | None, pids: Any, cameras: Any, times: Any,
                  sources: Any) -> list[tuple[str | None, str, float | None, str, int]]:
    """Per-item ``(path or None, camera, time, source, pid)``; a scalar applies to all ``n``."""

    def column(values: Any, name: str) -> list[Any]:
        if values is None:
            return [None] * n
        if isinstance(values, (str, bytes, int, float, np.integer, np.floating)):
            return [values] * n
        out = list(np.asarray(values).reshape(-1)) if isinstance(values, np.ndarray) else list(values)
        if len(out) != n:
            raise ValueError(f"{n} features but {len(out)} {name}")
        return out

    rows = []
    for p, c, t, s, i in zip(column(paths, "paths"), column(cameras, "cameras"),
                             column(times, "times"), column(sources, "sources"),
                             column(pids, "pids")):
        p = None if p is None or str(p) == "" else str(p)
        c = "" if c is None else str(c.item() if isinstance(c, np.generic) else c)
        s = "" if s is None else str(s)
        t = None if t is None or (isinstance(t, float) and math.isnan(t)) else float(t)
        if t is not None and not math.isfinite(t):
            raise HareidError(f"time {t} is not finite; give times as finite seconds")
        for name, v, limit in (("path", p or "", MAX_PATH), ("camera", c, MAX_CAMERA),
                               ("source", s, MAX_SOURCE)):
            if len(v) > limit:
                raise HareidError(f"{name} {v[:40]!r}... is {len(v)} characters; the limit is {limit}")
        i = -1 if i is None else int(i)
        if not -(2**63) <= i < 2**63:
            raise HareidError(f"pid {i} does not fit in 64 bits; give pids as 64-bit integers")
        rows.append((p, c, t, s, i))
    return rows


class RWLock:
    """Many readers or one writer (writers are not starved: new readers wait for a queued writer)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class VectorIndex(ABC):
    """A persistent gallery of unit embeddings with metadata; top-k search with filters.

    Implementations are thread-safe: searches run concurrently, writes one at a time, and an
    ``add`` is searchable as soon as it returns.
    """

    backend: str = ""
    dim: int
    kind: str

    # ------------------------------------------------------------------ writes
    @abstractmethod
    def add(self, features: Any, paths: Sequence[Any] | None = None, pids: Any = None,
            cameras: Any = None, times: Any = None, sources: Any = None) -> np.ndarray:
        """Add ``features (N, D)`` with their metadata (one transaction); returns the new ids.

        Paths are unique: adding a path the index already holds raises :class:`HareidError`.
        """

    @abstractmethod
    def delete(self, ids: Iterable[int]) -> int:
        """Remove items by id; returns how many existed."""

    @abstractmethod
    def flush(self) -> None:
        """Make everything added so far durable in the backend's compact form."""

    @abstractmethod
    def close(self) -> None:
        """Flush and release files / connections."""

    # ------------------------------------------------------------------ reads
    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def search_arrays(self, features: Any, k: int = 10,
                      filter: Filter | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Raw top-k: ``(scores (Q, k) float32, ids (Q, k) int64)``, -1 ids where fewer match."""

    @abstractmethod
    def get(self, ids: Sequence[int]) -> list[Item | None]:
        """Metadata of ``ids`` in order (``None`` for an id not in the index)."""

    @abstractmethod
    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """Stored unit embeddings ``(N, D)`` of ``ids`` (approximate for PQ indexes)."""

    @abstractmethod
    def items(self, offset: int = 0, limit: int | None = None) -> list[Item]:
        """Items in id order, a page at a time."""

    @abstractmethod
    def indexed_paths(self) -> set[str]:
        """Every stored path (to skip already-indexed images)."""

    @abstractmethod
    def facets(self) -> dict[str, Any]:
        """``{"cameras": [...], "sources": [...], "time_min": t|None, "time_max": t|None}``."""

    @abstractmethod
    def get_setting(self, key: str, default: Any = None) -> Any: ...

    @abstractmethod
    def set_setting(self, key: str, value: Any) -> None: ...

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "kind": self.kind, "dim": self.dim, "count": len(self)}

    def search(self, features: Any, k: int = 10, filter: Filter | None = None,
               offset: int = 0) -> list[SearchResult]:
        """Top-k matches of each query row (skipping the first ``offset``), best first."""
        if k < 1 or offset < 0:
            raise ValueError(f"k must be >= 1 and offset >= 0, got k={k}, offset={offset}")
        scores, ids = self.search_arrays(features, k + offset, filter)
        out = []
        for s, i in zip(scores, ids):
            keep = i >= 0
            s, i = s[keep][offset:], i[keep][offset:]
            items = self.get(i.tolist())
            present = [j for j, it in enumerate(items) if it is not None]  # deleted meanwhile
            out.append(SearchResult(i[present], s[present], [items[j] for j in present]))
        return out

    # whole columns, in id order (small galleries, tests, the Python API of earlier versions)
    @property
    def paths(self) -> list[str]:
        return [it.path for it in self.items()]

    @property
    def pids(self) -> np.ndarray:
        return np.asarray([it.pid for it in self.items()], dtype=np.int64)

    @property
    def camids(self) -> np.ndarray:
        return np.asarray([camid(it.camera) for it in self.items()], dtype=np.int64)

    def _check_features(self, features: Any) -> np.ndarray:
        x = as_f32(features)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must be (N, {self.dim}), got {tuple(x.shape)}")
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or infinity")
        return unit_rows(x)

    def _prepare_add(self, features: Any, paths: Any, pids: Any, cameras: Any, times: Any,
                     sources: Any) -> tuple[np.ndarray, list[tuple], list[str]]:
        """What every backend's ``add`` starts with: unit rows, checked metadata rows, and the
        given paths (a path twice in one call is refused)."""
        x = self._check_features(features)
        rows = metadata_rows(len(x), paths, pids, cameras, times, sources)
        given = [r[0] for r in rows if r[0] is not None]
        if len(set(given)) != len(given):
            dup = next(p for p in given if given.count(p) > 1)
            raise HareidError(f"{dup}: given twice in one add; each path is indexed once")
        return x, rows, given

    def __enter__(self) -> VectorIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


KINDS = ("flat", "ivf", "ivfpq")


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise HareidError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
    return kind
