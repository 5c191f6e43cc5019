"""The one gallery-index interface: :class:`VectorIndex`, its records, filters and results.

Two backends implement it: :class:`hareid.index.FaissIndex` (FAISS vectors, SQLite metadata; the
embedded default) and :class:`hareid.index.MilvusIndex` (milvus-lite file or a Milvus server).
Vectors are L2-normalised on the way in, so a score is a cosine similarity (higher = closer) and
``distance = 2 - 2 * score`` is the squared euclidean distance between unit vectors.

Every gallery item carries ``path, camera, time, source, pid`` and, for crops cut from footage,
``tracklet`` (a global key such as ``"<camera>/<tracklet id>"``), ``frame`` (0-based index in its
source) and ``box`` (x1, y1, x2, y2 in frame pixels); a :class:`Filter` on camera, time range,
source and tracklet runs inside the database. :func:`group_by_tracklet` turns ranked crops into
ranked people (one group per tracklet).
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
MAX_PATH, MAX_CAMERA, MAX_SOURCE, MAX_TRACKLET = 4096, 256, 1024, 512

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Item:
    """One gallery entry: its id in the index and its metadata."""

    id: int
    path: str = ""
    camera: str = ""
    time: float | None = None  # seconds (unix time, or frame index / seconds within a sequence)
    source: str = ""  # where it came from: a dataset split, "upload", a camera feed...
    pid: int = -1  # identity when known (datasets), else -1
    tracklet: str = ""  # global tracklet key ("<camera>/<tracklet id>"), "" for a plain image
    frame: int = -1  # 0-based frame index in ``source`` (footage), else -1
    box: Box | None = None  # x1, y1, x2, y2 in frame pixels (footage), else None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "camera": self.camera, "time": self.time,
                "source": self.source, "pid": self.pid, "tracklet": self.tracklet,
                "frame": self.frame, "box": None if self.box is None else list(self.box)}


def _texts(values: Iterable[Any] | str | None) -> tuple[str, ...] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    return tuple(str(v) for v in values)


@dataclass(frozen=True)
class Filter:
    """Which gallery items a search may return. ``None`` fields do not filter.

    ``cameras`` / ``sources`` / ``tracklets``: allowed values (an empty tuple allows nothing);
    ``time_min`` / ``time_max``: inclusive bounds (items without a time never match a time bound).
    """

    cameras: tuple[str, ...] | None = None
    time_min: float | None = None
    time_max: float | None = None
    sources: tuple[str, ...] | None = None
    tracklets: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for key in ("cameras", "sources", "tracklets"):
            object.__setattr__(self, key, _texts(getattr(self, key)))
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
        return self.cameras is None and self.sources is None and self.tracklets is None \
            and self.time_min is None and self.time_max is None

    def _sets(self) -> tuple[tuple[str, tuple[str, ...] | None], ...]:
        return (("camera", self.cameras), ("source", self.sources), ("tracklet", self.tracklets))

    def matches(self, item: Item) -> bool:
        """The filter evaluated in Python (reference for tests)."""
        for col, values in self._sets():
            if values is not None and getattr(item, col) not in values:
                return False
        if (self.time_min is not None or self.time_max is not None) and item.time is None:
            return False
        if self.time_min is not None and item.time < self.time_min:
            return False
        return not (self.time_max is not None and item.time > self.time_max)

    def sql(self) -> tuple[str, list[Any]]:
        """A parameterised SQL ``WHERE`` clause over the ``items`` table and its parameters."""
        parts, params = ["1"], []
        for col, values in self._sets():
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

    def milvus(self, has_time_field: bool = True) -> str:
        """A Milvus boolean expression (string literals quoted by :func:`milvus_literal`, so any
        name is safe).

        ``has_time_field``: the collection marks items with a time in a ``has_time`` flag (every
        server version); ``False``: ``time`` is a nullable field (collections of hareid < 0.3).
        """
        parts = []
        for col, values in self._sets():
            if values is not None:
                parts.append(f"{col} in [{', '.join(milvus_literal(v) for v in values)}]"
                             if values else "id < 0")
        if self.time_min is not None or self.time_max is not None:
            parts.append("has_time == true" if has_time_field else "time is not null")
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


@dataclass
class Group:
    """Matches of one tracklet (or one plain item) in a ranked list, best first."""

    tracklet: str  # "" for a plain item (a group of one)
    items: list[Item]
    scores: list[float]

    @property
    def best(self) -> Item:
        return self.items[0]

    @property
    def score(self) -> float:
        return self.scores[0]

    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def time_span(self) -> tuple[float | None, float | None]:
        ts = [it.time for it in self.items if it.time is not None]
        return (min(ts), max(ts)) if ts else (None, None)


@dataclass
class GroupedResult:
    """Top groups of one query (a page of them) and how deep the crop search went."""

    groups: list[Group]
    depth: int  # crops searched (top-``depth``) to form the groups
    hits: int  # crops found within that depth (fewer when the filter leaves fewer)
    has_more: bool  # a next page may hold more groups


def group_by_tracklet(result: SearchResult) -> list[Group]:
    """Ranked crops -> ranked groups: one per tracklet (ranked by its best crop), items without
    a tracklet stay groups of one. Members keep the crops' order (best first)."""
    groups: dict[str, Group] = {}
    for it, s in zip(result.items, result.scores.tolist()):
        key = f"t:{it.tracklet}" if it.tracklet else f"i:{it.id}"
        g = groups.get(key)
        if g is None:
            groups[key] = Group(it.tracklet, [it], [s])
        else:
            g.items.append(it)
            g.scores.append(s)
    return list(groups.values())  # dicts keep insertion order: best crop first


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


Row = tuple[str | None, str, float | None, str, int, str, int, Box | None]


def _box(b: Any) -> Box | None:
    """``None`` or four finite numbers x1 <= x2, y1 <= y2 (frame pixels)."""
    if b is None:
        return None
    try:
        v = tuple(float(c) for c in (b.tolist() if isinstance(b, np.ndarray) else b))
    except (TypeError, ValueError):
        raise HareidError(f"box {b!r} is not four numbers x1, y1, x2, y2") from None
    if len(v) != 4 or not all(math.isfinite(c) for c in v) or v[2] < v[0] or v[3] < v[1]:
        raise HareidError(f"box {b!r}: give four finite numbers x1, y1, x2, y2 with x1 <= x2 "
                          "and y1 <= y2 (frame pixels)")
    return v  # type: ignore[return-value]


def metadata_rows(n: int, paths: Sequence[Any] | None, pids: Any, cameras: Any, times: Any,
                  sources: Any, tracklets: Any = None, frames: Any = None,
                  boxes: Any = None) -> list[Row]:
    """Per-item ``(path or None, camera, time, source, pid, tracklet, frame, box)``; a scalar
    applies to all ``n`` (a single box too: four numbers)."""

    def column(values: Any, name: str) -> list[Any]:
        if values is None:
            return [None] * n
        if isinstance(values, (str, bytes, int, float, np.integer, np.floating)):
            return [values] * n
        if name == "boxes":  # (N, 4) array or a list of boxes / None
            out = list(values)
            if len(out) == 4 and all(isinstance(v, (int, float, np.integer, np.floating))
                                     for v in out):
                return [out] * n
            if len(out) != n:
                raise ValueError(f"{n} features but {len(out)} {name}")
            return out
        out = list(np.asarray(values).reshape(-1)) if isinstance(values, np.ndarray) else list(values)
        if len(out) != n:
            raise ValueError(f"{n} features but {len(out)} {name}")
        return out

    rows: list[Row] = []
    for p, c, t, s, i, tr, f, b in zip(column(paths, "paths"), column(cameras, "cameras"),
                                       column(times, "times"), column(sources, "sources"),
                                       column(pids, "pids"), column(tracklets, "tracklets"),
                                       column(frames, "frames"), column(boxes, "boxes")):
        p = None if p is None or str(p) == "" else str(p)
        c = "" if c is None else str(c.item() if isinstance(c, np.generic) else c)
        s = "" if s is None else str(s)
        tr = "" if tr is None else str(tr.item() if isinstance(tr, np.generic) else tr)
        t = None if t is None or (isinstance(t, float) and math.isnan(t)) else float(t)
        if t is not None and not math.isfinite(t):
            raise HareidError(f"time {t} is not finite; give times as finite seconds")
        for name, v, limit in (("path", p or "", MAX_PATH), ("camera", c, MAX_CAMERA),
                               ("source", s, MAX_SOURCE), ("tracklet", tr, MAX_TRACKLET)):
            if len(v) > limit:
                raise HareidError(f"{name} {v[:40]!r}... is {len(v)} characters; the limit is {limit}")
        i = -1 if i is None else int(i)
        f = -1 if f is None else int(f)
        for name, v in (("pid", i), ("frame", f)):
            if not -(2**63) <= v < 2**63:
                raise HareidError(f"{name} {v} does not fit in 64 bits; give {name}s as 64-bit "
                                  "integers")
        rows.append((p, c, t, s, i, tr, f, _box(b)))
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
            cameras: Any = None, times: Any = None, sources: Any = None, *,
            tracklets: Any = None, frames: Any = None, boxes: Any = None) -> np.ndarray:
        """Add ``features (N, D)`` with their metadata (one transaction); returns the new ids.

        Each metadata argument is one value per row or one value for all (``boxes``: ``(N, 4)``
        or one box). Paths are unique: adding a path the index already holds raises
        :class:`HareidError`.
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
        """``{"cameras": [...], "sources": [...], "time_min": t|None, "time_max": t|None,
        "tracklets": number of distinct tracklets}``."""

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

    def search_groups(self, features: Any, k: int = 10, filter: Filter | None = None,
                      offset: int = 0, depth: int = 1000) -> list[GroupedResult]:
        """Top-k *tracklets* of each query row: the best ``depth`` crops grouped by tracklet
        (:func:`group_by_tracklet`), groups ``offset .. offset + k``. A group's count is its
        crops among those ``depth``; a deeper search finds more groups and more crops each."""
        if k < 1 or offset < 0 or depth < 1:
            raise ValueError(f"k, depth must be >= 1 and offset >= 0, got k={k}, "
                             f"offset={offset}, depth={depth}")
        out = []
        for res in self.search(features, depth, filter):
            groups = group_by_tracklet(res)
            more = len(groups) > offset + k or (len(res.ids) >= depth and depth < len(self))
            out.append(GroupedResult(groups[offset : offset + k], depth, len(res.ids), more))
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
                     sources: Any, tracklets: Any = None, frames: Any = None,
                     boxes: Any = None) -> tuple[np.ndarray, list[Row], list[str]]:
        """What every backend's ``add`` starts with: unit rows, checked metadata rows, and the
        given paths (a path twice in one call is refused)."""
        x = self._check_features(features)
        rows = metadata_rows(len(x), paths, pids, cameras, times, sources, tracklets, frames, boxes)
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


def mean_unit(features: np.ndarray, keys: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Rows of ``features`` scaled to unit length, averaged per key and re-normalised.

    Returns the keys in first-seen order and their ``(K, D)`` float32 unit vectors."""
    x = np.asarray(features, np.float32).reshape(len(keys), -1)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    order: dict[str, int] = {}
    for k in keys:
        order.setdefault(k, len(order))
    idx = np.fromiter((order[k] for k in keys), np.int64, len(keys))
    out = np.zeros((len(order), x.shape[1]), np.float32)
    np.add.at(out, idx, x)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return list(order), out
