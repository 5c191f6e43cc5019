"""Milvus backend: the same :class:`VectorIndex` on milvus-lite (a local ``.db``) or a Milvus server.

``MilvusIndex("gallery.db")`` runs milvus-lite inside this process (tests, laptops);
``MilvusIndex("http://host:19530", token=...)`` talks to a Milvus server or cluster with the same
code (a server's token from ``token=`` or ``$HAREID_MILVUS_TOKEN``). One collection (default
``hareid_gallery``) holds ``id`` (auto), ``vec`` (unit float32, inner product), ``path``,
``camera``, ``time`` + ``has_time``, ``source``, ``pid``, ``tracklet``, ``frame`` and ``box``
(``""`` or ``"x1,y1,x2,y2"``); filters become Milvus boolean expressions evaluated by the database;
every read is ``Strong``-consistent, so an ``add`` is searchable once it returns.

No field is nullable (nullable fields need Milvus 2.5): an item without a time stores ``time = 0``
and ``has_time = false``, so the schema works on every server from **Milvus 2.3** (tested against
the ``milvus`` PyPI package's embedded 2.3.5 standalone server) and on milvus-lite. Collections
written by hareid 0.2 (settings format 1: a nullable ``time``, no footage fields) still open, read
and take new items; their items have no tracklet, frame or box. Durability and crash recovery are Milvus's own (lite keeps a
write-ahead log in the ``.db`` folder). Index kinds map to ``FLAT``, ``IVF_FLAT`` and ``IVF_PQ``
(``IVF_PQ`` needs a server; milvus-lite has no PQ).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hareid.errors import HareidError
from hareid.index.base import (
    MAX_CAMERA,
    MAX_PATH,
    MAX_SOURCE,
    MAX_TRACKLET,
    Filter,
    Item,
    Row,
    SearchResult,
    VectorIndex,
    check_kind,
    milvus_literal,
)

DEFAULT_COLLECTION = "hareid_gallery"
_FIELDS_V1 = ["id", "path", "camera", "time", "source", "pid"]
_FIELDS = [*_FIELDS_V1, "has_time", "tracklet", "frame", "box"]
FORMAT = 2  # 1: hareid 0.2 (nullable time, no footage fields)
_MAX_BOX = 128
_MAX_TOPK = 16384  # Milvus's limit on limit + offset
_INSERT_ROWS = 4096  # rows per insert call (~16 MiB of 1024-d vectors: under gRPC's 64 MiB)
_SERVER_PREFIXES = ("http://", "https://", "tcp://", "grpc://", "unix:")
_FLUSH_ROWS = 10_000  # milvus-lite searches unflushed rows without an index: flush this often


def _pymilvus():
    try:
        import pymilvus
    except ImportError as e:
        raise HareidError("the Milvus index backend needs pymilvus: pip install 'hareid[milvus]'") from e
    return pymilvus


def is_milvus_uri(location: str | os.PathLike) -> bool:
    s = str(location)
    return s.startswith(_SERVER_PREFIXES) or s.endswith(".db")


class MilvusIndex(VectorIndex):
    """Gallery index in a Milvus collection (milvus-lite ``.db`` path or server URI)."""

    backend = "milvus"

    def __init__(self, uri: str | os.PathLike, dim: int | None = None, kind: str = "flat",
                 nlist: int = 1024, nprobe: int | None = None, pq_m: int = 64, pq_nbits: int = 8,
                 collection: str | None = None, token: str | None = None, create: bool = True):
        pm = _pymilvus()
        self.uri = str(uri)
        self.collection = collection or DEFAULT_COLLECTION
        self.lite = not self.uri.startswith(_SERVER_PREFIXES)
        self._unflushed = 0
        self._write_lock = threading.Lock()
        if self.lite:
            Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
        try:
            token = token if token is not None else os.environ.get("HAREID_MILVUS_TOKEN", "")
            self._client = pm.MilvusClient(uri=self.uri, token=token)
        except Exception as e:
            hint = ("is it open in another process (a running `hareid serve`?), or not a milvus-lite "
                    "file (damaged: rebuild it with `hareid index`)" if self.lite
                    else "is the server running and the URI right?")
            raise HareidError(f"{self.uri}: cannot open Milvus ({str(e).splitlines()[0][:200]}); "
                              f"{hint}") from e
        c = self._client
        if c.has_collection(self.collection):
            props = c.describe_collection(self.collection).get("properties") or {}
            if "hareid.settings" not in props:
                raise HareidError(f"{self.uri}: collection {self.collection!r} was not made by "
                                  "hareid; pass another --collection")
            s = json.loads(props["hareid.settings"])
            self.format = int(s.get("format", 1))
            if self.format > FORMAT:
                raise HareidError(f"{self.uri}: collection {self.collection!r} has format "
                                  f"{self.format} (this hareid reads up to {FORMAT}); upgrade hareid")
            self.dim, self.kind, self.nlist = int(s["dim"]), s["kind"], int(s["nlist"])
            self.pq_m, self.pq_nbits = int(s["pq_m"]), int(s["pq_nbits"])
            self.nprobe = int(nprobe if nprobe is not None else s["nprobe"])
            if dim is not None and int(dim) != self.dim:
                raise HareidError(f"{self.uri}: collection holds {self.dim}-d embeddings, not "
                                  f"{dim}-d; use the checkpoint it was built with")
        else:
            if not create:
                raise HareidError(f"{self.uri}: no collection {self.collection!r}; build one with "
                                  "`hareid index`")
            if dim is None:
                raise HareidError(f"{self.uri}: no index there; give the embedding size (dim)")
            self.dim, self.kind, self.nlist = int(dim), check_kind(kind), int(nlist)
            self.pq_m, self.pq_nbits = int(pq_m), int(pq_nbits)
            self.format = FORMAT
            self.nprobe = 16 if nprobe is None else int(nprobe)
            if self.kind == "ivfpq" and self.lite:
                raise HareidError("milvus-lite has no IVF_PQ index; use --kind ivf or flat, or a "
                                  "Milvus server URI")
            self._create(pm)
        self._fields = _FIELDS if self.format >= 2 else _FIELDS_V1
        c.load_collection(self.collection)

    def _create(self, pm: Any) -> None:
        c, dt = self._client, pm.DataType
        schema = c.create_schema(auto_id=True, enable_dynamic_field=False)
        schema.add_field("id", dt.INT64, is_primary=True)
        schema.add_field("vec", dt.FLOAT_VECTOR, dim=self.dim)
        schema.add_field("path", dt.VARCHAR, max_length=MAX_PATH)
        schema.add_field("camera", dt.VARCHAR, max_length=MAX_CAMERA)
        schema.add_field("time", dt.DOUBLE)  # 0 when has_time is false (no nullable fields)
        schema.add_field("has_time", dt.BOOL)
        schema.add_field("source", dt.VARCHAR, max_length=MAX_SOURCE)
        schema.add_field("pid", dt.INT64)
        schema.add_field("tracklet", dt.VARCHAR, max_length=MAX_TRACKLET)
        schema.add_field("frame", dt.INT64)
        schema.add_field("box", dt.VARCHAR, max_length=_MAX_BOX)
        params = c.prepare_index_params()
        vector_index = {"flat": ("FLAT", {}), "ivf": ("IVF_FLAT", {"nlist": self.nlist}),
                        "ivfpq": ("IVF_PQ", {"nlist": self.nlist, "m": self.pq_m,
                                             "nbits": self.pq_nbits})}[self.kind]
        params.add_index("vec", index_type=vector_index[0], metric_type="IP", params=vector_index[1])
        settings = {"format": FORMAT, "dim": self.dim, "kind": self.kind, "nlist": self.nlist,
                    "nprobe": self.nprobe, "pq_m": self.pq_m, "pq_nbits": self.pq_nbits}
        c.create_collection(self.collection, schema=schema, index_params=params,
                            consistency_level="Strong",
                            properties={"hareid.settings": json.dumps(settings)})

    # ------------------------------------------------------------------ writes
    def add(self, features: Any, paths: Sequence[Any] | None = None, pids: Any = None,
            cameras: Any = None, times: Any = None, sources: Any = None, *,
            tracklets: Any = None, frames: Any = None, boxes: Any = None) -> np.ndarray:
        # one writer at a time in this process: the unique-path check and the insert must not
        # interleave with another add (two concurrent uploads of one image would both pass the check)
        with self._write_lock:
            x, rows, given = self._prepare_add(features, paths, pids, cameras, times, sources,
                                               tracklets, frames, boxes)
            return self._add(x, rows, given)

    def _row(self, v: np.ndarray, r: Row) -> dict[str, Any]:
        p, c, t, s, pid, tr, f, b = r
        if self.format < 2:
            if tr or f != -1 or b is not None:
                raise HareidError(f"{self.uri}: collection {self.collection!r} was made by hareid "
                                  "0.2 and has no tracklet, frame or box fields; index footage "
                                  "crops into a new --collection")
            return {"vec": v, "path": p or "", "camera": c, "time": t, "source": s, "pid": pid}
        return {"vec": v, "path": p or "", "camera": c, "time": 0.0 if t is None else t,
                "has_time": t is not None, "source": s, "pid": pid, "tracklet": tr, "frame": f,
                "box": "" if b is None else ",".join(repr(float(z)) for z in b)}

    def _add(self, x: np.ndarray, rows: list[Row], given: list[str]) -> np.ndarray:
        for i in range(0, len(given), 1000):  # unique paths, checked in the database
            chunk = given[i : i + 1000]
            hit = self._client.query(self.collection, filter=f"path in [{', '.join(milvus_literal(p) for p in chunk)}]",
                                     output_fields=["id", "path"], limit=1)
            if hit:
                raise HareidError(f"{hit[0]['path']}: already in the index (id {hit[0]['id']}); "
                                  "delete it first, or let `hareid index` skip indexed images")
        ids: list[int] = []
        for i in range(0, len(x), _INSERT_ROWS):
            data = [self._row(v, r) for v, r in zip(x[i : i + _INSERT_ROWS],
                                                    rows[i : i + _INSERT_ROWS])]
            res = self._client.insert(self.collection, data)
            ids += [int(j) for j in res["ids"]]
        self._unflushed += len(ids)
        if self._unflushed >= _FLUSH_ROWS:
            self.flush()
        return np.asarray(ids, dtype=np.int64)

    def delete(self, ids: Iterable[int]) -> int:
        want = sorted({int(i) for i in ids})
        if not want:
            return 0
        existing = [it.id for it in self.get(want) if it is not None]
        if existing:
            self._client.delete(self.collection, ids=existing)
        return len(existing)

    def flush(self) -> None:
        self._client.flush(self.collection)
        self._unflushed = 0

    def close(self) -> None:
        if getattr(self, "_client", None) is None:
            return
        try:
            self._client.flush(self.collection)
        finally:
            self._client.close()
            self._client = None

    def set_setting(self, key: str, value: Any) -> None:
        self._client.alter_collection_properties(self.collection,
                                                 properties={f"hareid.{key}": json.dumps(value)})

    def get_setting(self, key: str, default: Any = None) -> Any:
        props = self._client.describe_collection(self.collection).get("properties") or {}
        v = props.get(f"hareid.{key}")
        return default if v is None else json.loads(v)

    # ------------------------------------------------------------------ reads
    def __len__(self) -> int:
        res = self._client.query(self.collection, filter="", output_fields=["count(*)"],
                                 consistency_level="Strong")
        return int(res[0]["count(*)"])

    def _raw_search(self, x: np.ndarray, k: int, filter: Filter | None,
                    fields: list[str]) -> list[list[dict]]:
        if k > _MAX_TOPK:
            raise HareidError(f"k + offset = {k} exceeds Milvus's limit of {_MAX_TOPK}")
        params: dict[str, Any] = {"metric_type": "IP", "params": {}}
        if self.kind != "flat":
            params["params"]["nprobe"] = min(self.nprobe, self.nlist)
        expr = "" if filter is None or filter.empty else self._expr(filter)
        try:
            return self._client.search(self.collection, data=[v for v in x], limit=k, filter=expr,
                                       output_fields=fields, search_params=params,
                                       consistency_level="Strong")
        except _pymilvus().MilvusException as e:  # one line naming the index, not a traceback
            raise HareidError(f"{self.uri}: Milvus refused the search ({str(e).splitlines()[0][:200]})") from e

    def _expr(self, flt: Filter) -> str:
        if self.format < 2 and flt.tracklets:
            raise HareidError(f"{self.uri}: collection {self.collection!r} was made by hareid 0.2 "
                              "and holds no tracklets; filter by camera, time or source")
        if self.format < 2 and flt.tracklets is not None:  # () allows nothing
            flt = Filter(cameras=(), time_min=flt.time_min, time_max=flt.time_max)
        return flt.milvus(has_time_field=self.format >= 2)

    def search_arrays(self, features: Any, k: int = 10,
                      filter: Filter | None = None) -> tuple[np.ndarray, np.ndarray]:
        x = self._check_features(features)
        hits = self._raw_search(x, int(k), filter, [])
        width = max((len(h) for h in hits), default=0)
        scores = np.full((len(x), width), -np.inf, np.float32)
        ids = np.full((len(x), width), -1, np.int64)
        for r, h in enumerate(hits):
            for j, hit in enumerate(h):
                scores[r, j], ids[r, j] = hit["distance"], hit["id"]
        return scores, ids

    def search(self, features: Any, k: int = 10, filter: Filter | None = None,
               offset: int = 0) -> list[SearchResult]:
        """One round trip: matches come back with their metadata."""
        if k < 1 or offset < 0:
            raise ValueError(f"k must be >= 1 and offset >= 0, got k={k}, offset={offset}")
        x = self._check_features(features)
        out = []
        for h in self._raw_search(x, k + offset, filter, self._fields[1:]):
            h = list(h)[offset:]
            items = [self._item(hit["id"], hit["entity"]) for hit in h]
            out.append(SearchResult(np.asarray([it.id for it in items], np.int64),
                                    np.asarray([hit["distance"] for hit in h], np.float32), items))
        return out

    @staticmethod
    def _item(i: int, e: dict) -> Item:
        t = e.get("time")
        if "has_time" in e and not e["has_time"]:
            t = None
        box = e.get("box") or ""
        return Item(int(i), e.get("path") or "", e.get("camera") or "", t,
                    e.get("source") or "", int(e.get("pid", -1)), e.get("tracklet") or "",
                    int(e.get("frame", -1)),
                    tuple(float(z) for z in box.split(",")) if box else None)  # type: ignore[arg-type]

    def get(self, ids: Sequence[int]) -> list[Item | None]:
        ids = [int(i) for i in ids]
        found: dict[int, Item] = {}
        for i in range(0, len(ids), 1000):
            for e in self._client.get(self.collection, ids=ids[i : i + 1000],
                                      output_fields=self._fields):
                found[int(e["id"])] = self._item(e["id"], e)
        return [found.get(i) for i in ids]

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        ids = [int(i) for i in ids]
        rows = {int(e["id"]): e["vec"] for e in
                self._client.get(self.collection, ids=ids, output_fields=["vec"])}
        missing = [i for i in ids if i not in rows]
        if missing:
            raise HareidError(f"id {missing[0]} is not in the index")
        return np.asarray([rows[i] for i in ids], dtype=np.float32).reshape(len(ids), self.dim)

    def _iterate(self, fields: list[str], batch: int = 10_000) -> Iterable[dict]:
        """Every row's ``fields``: one query on milvus-lite (it has no query iterator), a query
        iterator on a server (its results are capped at 16384 rows per query)."""
        if self.lite:
            yield from self._client.query(self.collection, filter="id >= 0", output_fields=fields)
            return
        it = self._client.query_iterator(self.collection, batch_size=batch, filter="",
                                         output_fields=fields)
        try:
            while rows := it.next():
                yield from rows
        finally:
            it.close()

    def items(self, offset: int = 0, limit: int | None = None) -> list[Item]:
        if limit is not None and (self.lite or offset + limit <= _MAX_TOPK):
            rows = self._client.query(self.collection, filter="id >= 0",
                                      output_fields=self._fields, offset=int(offset),
                                      limit=int(limit))
        else:
            rows = list(self._iterate(self._fields))
            rows = rows[offset:] if limit is None else rows[offset : offset + limit]
        return sorted((self._item(e["id"], e) for e in rows), key=lambda it: it.id)

    def indexed_paths(self) -> set[str]:
        return {e["path"] for e in self._iterate(["path"]) if e.get("path")}

    def facets(self) -> dict[str, Any]:
        """One scan of the scalar columns (cache it: it is O(gallery) on Milvus)."""
        cams, srcs, tracklets, tmin, tmax = set(), set(), set(), None, None
        fields = ["camera", "source", "time", *(["has_time", "tracklet"] if self.format >= 2 else [])]
        for e in self._iterate(fields):
            cams.add(e.get("camera") or "")
            srcs.add(e.get("source") or "")
            if e.get("tracklet"):
                tracklets.add(e["tracklet"])
            t = e.get("time") if e.get("has_time", True) else None
            if t is not None:
                tmin = t if tmin is None else min(tmin, t)
                tmax = t if tmax is None else max(tmax, t)
        return {"cameras": sorted(cams), "sources": sorted(srcs), "time_min": tmin,
                "time_max": tmax, "tracklets": len(tracklets)}

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(uri=self.uri, collection=self.collection, lite=self.lite)
        if self.kind != "flat":
            d.update(nlist=self.nlist, nprobe=self.nprobe)
        return d
