"""FAISS vectors + SQLite metadata: the embedded default backend, crash-safe on disk.

A saved index is a folder::

    gallery.sqlite      SQLite (WAL): settings, items (id, path, camera, time, source, pid,
                        tracklet, frame, x1, y1, x2, y2), pending (vectors added since the last
                        snapshot), pending_deletes
    index.<gen>.faiss   the FAISS index as of snapshot <gen> (temp file, fsync, rename)
    lock                held (flock) by the one process that writes

Durability: ``add`` is one SQLite transaction (the items and their vectors in ``pending``) and only
then goes into the in-memory FAISS index; ``delete`` likewise. Opening loads the snapshot named in
``settings`` and replays ``pending`` and ``pending_deletes``. A snapshot is written when the pending
vectors reach the snapshot's size (at least ``checkpoint_min``; geometric, so each vector is
written O(1) times), on :meth:`flush` and on :meth:`close`; the new file is renamed into place
before the SQLite transaction that names it and clears ``pending`` commits. A process killed at any
instant therefore reopens with exactly the transactions it committed. Nothing is pickled.

Indexes written before items had ``tracklet``, ``frame`` and a box gain those columns (defaults:
``""``, -1, no box) when opened for writing; opened read-only, a temporary view supplies them.

Kinds: ``flat`` (exact, ``IDMap2,Flat``), ``ivf`` (``IVF{nlist},Flat``) and ``ivfpq``
(``IVF{nlist},PQ{m}x{nbits}``, 64 + 8 bytes a vector at m=64). An IVF index trains itself once
``train_size`` vectors arrived (until then they are searched exactly), or on :meth:`train`.

Filters: SQL selects the matching ids (``LIMIT prefilter_max + 1``). A selective filter
(<= ``prefilter_max`` ids) searches only those ids with a FAISS ``IDSelectorBatch`` (IVF lists
are then all visited, so the answer is exact among them); a broad one over-fetches
``k * N / prefilter_max * 2`` neighbours and keeps those SQL accepts, widening until k survive.
``benchmarks/bench_index.py --filters`` measures both strategies (``filter_strategy``).
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

from hareid.errors import HareidError
from hareid.fileio import umask_mode
from hareid.index.base import (
    Filter,
    Item,
    RWLock,
    VectorIndex,
    check_kind,
)

try:  # POSIX advisory lock: one writing process per index folder
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

FORMAT = 2
DB_NAME = "gallery.sqlite"
_CHUNK = 10_000  # ids per SQL "IN (...)" and rows per replay batch

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY, path TEXT UNIQUE, camera TEXT NOT NULL DEFAULT '', time REAL,
    source TEXT NOT NULL DEFAULT '', pid INTEGER NOT NULL DEFAULT -1);
CREATE INDEX IF NOT EXISTS items_camera_time ON items(camera, time);
CREATE INDEX IF NOT EXISTS items_time ON items(time);
CREATE INDEX IF NOT EXISTS items_source ON items(source);
CREATE TABLE IF NOT EXISTS pending (id INTEGER PRIMARY KEY, vec BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS pending_deletes (id INTEGER PRIMARY KEY);
"""

#: Footage columns (added to indexes of earlier versions when opened for writing).
_FOOTAGE_COLUMNS = {"tracklet": "TEXT NOT NULL DEFAULT ''", "frame": "INTEGER NOT NULL DEFAULT -1",
                    "x1": "REAL", "y1": "REAL", "x2": "REAL", "y2": "REAL"}
_ITEM_COLS = "id, path, camera, time, source, pid, tracklet, frame, x1, y1, x2, y2"


def _item(r: Sequence[Any]) -> Item:
    box = None if r[8] is None else (r[8], r[9], r[10], r[11])
    return Item(r[0], r[1] or "", r[2], r[3], r[4], r[5], r[6], r[7], box)


def faiss_module():
    try:
        import faiss
    except ImportError as e:
        raise HareidError("the FAISS index backend needs faiss: pip install 'hareid[faiss]'") from e
    return faiss


def _chunks(seq: Sequence[Any], n: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _fsync_dir(path: Path) -> None:
    with suppress(OSError):  # not every filesystem lets a folder be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class FaissIndex(VectorIndex):
    """Gallery index: FAISS inner product on unit vectors, metadata and durability in SQLite.

    ``FaissIndex(dim)`` lives in memory (save it with :meth:`save`); ``FaissIndex(dim,
    path=DIR)`` creates (or reopens) a folder and keeps it durable; ``FaissIndex.open(DIR)`` opens
    an existing one (``read_only=True``: no lock, no writes, for a second process).
    """

    backend = "faiss"

    def __init__(self, dim: int | None = None, kind: str = "flat", nlist: int = 1024,
                 nprobe: int | None = None, pq_m: int = 64, pq_nbits: int = 8,
                 num_threads: int | None = None, path: str | os.PathLike | None = None, *,
                 train_size: int | None = None, checkpoint_min: int = 50_000,
                 prefilter_max: int = 20_000, read_only: bool = False):
        faiss = faiss_module()
        if num_threads:
            faiss.omp_set_num_threads(int(num_threads))
        self.prefilter_max = int(prefilter_max)
        self.filter_strategy = "auto"  # or "prefilter" / "postfilter" (benchmarks)
        self.checkpoint_min = int(checkpoint_min)
        self._lock = RWLock()
        self._ckpt_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._lockfile: Any = None
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        self.read_only = bool(read_only)
        self.durable = path is not None and not self.read_only
        if path is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="hareid-index-")
            self.path = None
            folder = Path(self._tmpdir.name)
        else:
            self.path = folder = Path(path)
        self._folder = folder
        db = folder / DB_NAME
        exists = db.is_file()
        made_folder = False
        if not exists:
            if self.read_only:
                raise HareidError(f"{folder}: not a saved GalleryIndex (no {DB_NAME}); build one "
                                  "with `hareid index`")
            if dim is None:
                raise HareidError(f"{folder}: no index there; give the embedding size (dim) to "
                                  "create one")
            check_kind(kind)  # options checked before anything is written: a refusal leaves no file
            self.dim, self.kind = int(dim), kind  # type: ignore[arg-type]
            self.nlist, self.pq_m, self.pq_nbits = int(nlist), int(pq_m), int(pq_nbits)
            self.nprobe = 16 if nprobe is None else int(nprobe)
            self._validate()
            made_folder = not folder.exists()
            folder.mkdir(parents=True, exist_ok=True)
        elif nprobe is not None and int(nprobe) < 1:
            raise HareidError(f"nprobe must be >= 1, got {nprobe}")
        self._take_lock()
        self._conn = None
        try:
            self._conn = self._connect(db, writer=True)
            if exists:
                self._load_settings(dim, kind)
                self._migrate()
            else:
                if self.durable:  # SQLite creates 0644 whatever the umask; a plain open() would not
                    os.chmod(db, umask_mode())
                self._create_schema()
            if nprobe is not None:
                self.nprobe = int(nprobe)
            default_train = 39 * self.nlist if self.kind != "flat" else 0
            if self.kind == "ivfpq":
                default_train = max(default_train, 39 * 2 ** self.pq_nbits)
            self.train_size = int(train_size or default_train)
            self._open_faiss()
        except BaseException:
            self._release()
            if not exists and self.durable:  # a failed creation leaves nothing for the rerun to trip on
                for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm", "lock"):
                    (folder / name).unlink(missing_ok=True)
                if made_folder:
                    with suppress(OSError):
                        folder.rmdir()
            raise

    # ------------------------------------------------------------------ construction
    @classmethod
    def open(cls, path: str | os.PathLike, read_only: bool = False, **kw: Any) -> FaissIndex:
        """Open an index folder written by this class (or by :meth:`save`)."""
        folder = Path(path)
        if not (folder / DB_NAME).is_file():
            old = (folder / "meta.npz").is_file()
            hint = ("written by an earlier hareid; rebuild it with `hareid index`" if old
                    else "build one with `hareid index`")
            raise HareidError(f"{folder}: not a saved GalleryIndex (no {DB_NAME}); {hint}")
        return cls(path=folder, read_only=read_only, **kw)

    load = open

    def _connect(self, db: Path, writer: bool) -> sqlite3.Connection:
        uri = f"file:{db}?mode=ro" if self.read_only else f"file:{db}"
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30,
                                   check_same_thread=False)
            if writer and not self.read_only:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'OFF'}")
            conn.execute("PRAGMA foreign_keys=OFF")
        except sqlite3.DatabaseError as e:
            raise HareidError(f"{db}: not a readable SQLite database ({e}); rebuild the index "
                              "with `hareid index`") from e
        return conn

    def _reader(self) -> sqlite3.Connection:
        """A connection of this thread's own (WAL: readers never block the writer)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect(self._folder / DB_NAME, writer=False)
            if getattr(self, "_legacy", False):
                self._legacy_view(conn)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def _take_lock(self) -> None:
        if self.read_only or self.path is None or fcntl is None:
            return
        f = open(self.path / "lock", "a+")  # noqa: SIM115 - held for the object's lifetime
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise HareidError(f"{self.path}: index is open for writing in another process (a "
                              "running `hareid serve` or `hareid index`?); stop it or open "
                              "read-only") from None
        self._lockfile = f

    def _create_schema(self) -> None:
        with self._tx():
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    self._conn.execute(stmt)
            for col, decl in _FOOTAGE_COLUMNS.items():
                self._conn.execute(f"ALTER TABLE items ADD COLUMN {col} {decl}")
            self._conn.execute("CREATE INDEX items_tracklet ON items(tracklet)")
            settings = {"format": FORMAT, "dim": self.dim, "kind": self.kind, "nlist": self.nlist,
                        "nprobe": self.nprobe, "pq_m": self.pq_m, "pq_nbits": self.pq_nbits,
                        "next_id": 0, "snapshot": 0, "root": None}
            self._conn.executemany("INSERT INTO settings VALUES (?, ?)",
                                   [(k, json.dumps(v)) for k, v in settings.items()])

    def _missing_columns(self, conn: sqlite3.Connection) -> list[str]:
        have = {r[1] for r in conn.execute("PRAGMA main.table_info(items)")}
        return [c for c in _FOOTAGE_COLUMNS if c not in have]

    def _migrate(self) -> None:
        """Add the footage columns to an index of an earlier version (one transaction)."""
        missing = self._missing_columns(self._conn)
        self._legacy = bool(missing) and self.read_only
        if not missing or self.read_only:
            if self._legacy:
                self._legacy_view(self._conn)
            return
        with self._tx() as c:
            for col in missing:
                c.execute(f"ALTER TABLE items ADD COLUMN {col} {_FOOTAGE_COLUMNS[col]}")
            c.execute("CREATE INDEX IF NOT EXISTS items_tracklet ON items(tracklet)")

    @staticmethod
    def _legacy_view(conn: sqlite3.Connection) -> None:
        """Read-only, earlier version: a temporary view named ``items`` (it shadows the table in
        this connection) gives the footage columns their defaults."""
        conn.execute("CREATE TEMP VIEW IF NOT EXISTS items AS SELECT id, path, camera, time, "
                     "source, pid, '' AS tracklet, -1 AS frame, NULL AS x1, NULL AS y1, "
                     "NULL AS x2, NULL AS y2 FROM main.items")

    def _load_settings(self, dim: int | None, kind: str) -> None:
        try:
            rows = dict(self._conn.execute("SELECT key, value FROM settings").fetchall())
        except sqlite3.DatabaseError as e:
            raise HareidError(f"{self._folder}: not a saved GalleryIndex ({e}); rebuild it with "
                              "`hareid index`") from e
        s = {k: json.loads(v) for k, v in rows.items()}
        if s.get("format") != FORMAT:
            raise HareidError(f"{self._folder}: index format {s.get('format')} (this hareid reads "
                              f"{FORMAT}); rebuild it with `hareid index`")
        self.dim, self.kind = int(s["dim"]), str(s["kind"])
        self.nlist, self.nprobe = int(s["nlist"]), int(s["nprobe"])
        self.pq_m, self.pq_nbits = int(s["pq_m"]), int(s["pq_nbits"])
        if dim is not None and int(dim) != self.dim:
            raise HareidError(f"{self._folder}: index holds {self.dim}-d embeddings, not {dim}-d; "
                              "use the checkpoint it was built with or another --out")

    def _validate(self) -> None:
        if self.dim < 1:
            raise HareidError(f"dim must be positive, got {self.dim}")
        if self.kind != "flat" and self.nlist < 1:
            raise HareidError(f"nlist must be >= 1, got {self.nlist}")
        if self.nprobe < 1:
            raise HareidError(f"nprobe must be >= 1, got {self.nprobe}")
        if self.kind == "ivfpq" and self.pq_m < 1:
            raise HareidError(f"pq_m must be >= 1, got {self.pq_m}")
        if self.kind == "ivfpq" and self.dim % self.pq_m:
            raise HareidError(f"pq_m={self.pq_m} must divide the embedding size {self.dim} "
                              "(e.g. 32, 64, 128 for 1024-d)")

    def _new_faiss(self):
        faiss = faiss_module()
        ip = faiss.METRIC_INNER_PRODUCT
        if self.kind == "flat":
            return faiss.index_factory(self.dim, "IDMap2,Flat", ip)
        spec = f"IVF{self.nlist},Flat" if self.kind == "ivf" else f"IVF{self.nlist},PQ{self.pq_m}x{self.pq_nbits}"
        base = faiss.index_factory(self.dim, spec, ip)
        index = faiss.downcast_index(base)  # IndexIVFFlat / IndexIVFPQ
        base.this.disown()
        index.this.own(True)
        if self.kind == "ivfpq":
            index.do_polysemous_training = False  # Hamming filtering is not used; costly to train
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct + remove by id
        return index

    def _snapshot_file(self, gen: int) -> Path:
        return self._folder / f"index.{gen}.faiss"

    def _open_faiss(self) -> None:
        """Snapshot + replay of pending vectors and deletes (one consistent read)."""
        faiss = faiss_module()
        self._buffer = faiss.index_factory(self.dim, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)
        conn = self._conn
        conn.execute("BEGIN")
        try:
            s = dict(conn.execute("SELECT key, value FROM settings").fetchall())
            self._gen, self._next_id = int(json.loads(s["snapshot"])), int(json.loads(s["next_id"]))
            if self._gen:
                f = self._snapshot_file(self._gen)
                if not f.is_file():
                    raise HareidError(f"{f}: snapshot named by {DB_NAME} is missing; restore it "
                                      "or rebuild the index with `hareid index`")
                self.index = faiss.read_index(str(f))
                if self.index.d != self.dim:
                    raise HareidError(f"{f}: holds {self.index.d}-d vectors, settings say {self.dim}")
            else:
                self.index = self._new_faiss()
            dels = np.asarray([r[0] for r in conn.execute("SELECT id FROM pending_deletes")],
                              dtype=np.int64)
            if len(dels):
                self.index.remove_ids(faiss.IDSelectorArray(dels))
            self._pending_n, self._pending_del_n = 0, len(dels)
            self._replaying = True
            cur = conn.execute("SELECT id, vec FROM pending ORDER BY id")
            while rows := cur.fetchmany(_CHUNK):
                ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                x = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), self.dim)
                self._add_vectors(ids, np.ascontiguousarray(x))
                self._pending_n += len(rows)
        finally:
            self._replaying = False
            conn.execute("COMMIT")
        self._snapshot_n = len(self) - self._pending_n
        if not self.read_only:
            for f in self._folder.glob("index.*.faiss*"):  # leftovers of an interrupted snapshot
                if f != self._snapshot_file(self._gen):
                    f.unlink(missing_ok=True)

    # ------------------------------------------------------------------ transactions
    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _writable(self) -> None:
        if self.read_only:
            raise HareidError(f"{self._folder}: index opened read-only; open it without "
                              "read_only to change it")

    # ------------------------------------------------------------------ writes
    def train(self, features: Any) -> None:
        """Train the IVF quantizer (k-means; PQ codebooks) on a sample; no-op when trained/flat."""
        x = self._check_features(features)
        with self._lock.write():
            if self.index.is_trained:
                return
            self.index.train(x)
            self._move_buffer()
        self._checkpoint_if(force=True)

    def _move_buffer(self) -> None:
        faiss = faiss_module()
        n = self._buffer.ntotal
        if n:
            ids = faiss.vector_to_array(self._buffer.id_map).astype(np.int64)
            x = self._buffer.index.reconstruct_n(0, n)
            self.index.add_with_ids(x, ids)
            self._buffer.reset()

    def _add_vectors(self, ids: np.ndarray, x: np.ndarray) -> bool:
        """Into the index (or the exact buffer of an untrained IVF); True when it just trained."""
        if self.index.is_trained:
            self.index.add_with_ids(x, ids)
            return False
        self._buffer.add_with_ids(x, ids)
        if self._buffer.ntotal < max(self.train_size, 1):
            return False
        self.index.train(self._buffer.index.reconstruct_n(0, self._buffer.ntotal))
        self._move_buffer()
        return True

    def add(self, features: Any, paths: Sequence[Any] | None = None, pids: Any = None,
            cameras: Any = None, times: Any = None, sources: Any = None, *,
            tracklets: Any = None, frames: Any = None, boxes: Any = None) -> np.ndarray:
        self._writable()
        x, rows, given = self._prepare_add(features, paths, pids, cameras, times, sources,
                                           tracklets, frames, boxes)
        if not len(x):
            return np.zeros(0, dtype=np.int64)
        with self._lock.write():
            ids = np.arange(self._next_id, self._next_id + len(x), dtype=np.int64)
            try:
                with self._tx() as c:
                    c.executemany(f"INSERT INTO items ({_ITEM_COLS}) VALUES "
                                  f"({', '.join('?' * 12)})",
                                  [(int(i), *r[:7], *(r[7] or (None,) * 4))
                                   for i, r in zip(ids, rows)])
                    if self.durable:
                        c.executemany("INSERT INTO pending (id, vec) VALUES (?, ?)",
                                      [(int(i), v.tobytes()) for i, v in zip(ids, x)])
                    c.execute("UPDATE settings SET value = ? WHERE key = 'next_id'",
                              (json.dumps(int(ids[-1]) + 1),))
            except sqlite3.IntegrityError:
                raise HareidError(self._duplicate_message(given)) from None
            self._next_id = int(ids[-1]) + 1
            trained = self._add_vectors(ids, x)
            self._pending_n += len(x) if self.durable else 0
        self._checkpoint_if(force=trained)
        return ids

    def _duplicate_message(self, paths: list[str]) -> str:
        c = self._reader()
        for chunk in _chunks(paths):
            row = c.execute(f"SELECT path, id FROM items WHERE path IN ({','.join('?' * len(chunk))}) "
                            "LIMIT 1", list(chunk)).fetchone()
            if row:
                return (f"{row[0]}: already in the index (id {row[1]}); delete it first, or let "
                        "`hareid index` skip indexed images")
        return "add failed: a path is already in the index"

    def delete(self, ids: Iterable[int]) -> int:
        self._writable()
        faiss = faiss_module()
        want = sorted({int(i) for i in ids})
        with self._lock.write():
            c = self._conn
            existing = [r[0] for ch in _chunks(want) for r in c.execute(
                f"SELECT id FROM items WHERE id IN ({','.join('?' * len(ch))})", list(ch))]
            if not existing:
                return 0
            pending = set()
            if self.durable:
                pending = {r[0] for ch in _chunks(existing) for r in c.execute(
                    f"SELECT id FROM pending WHERE id IN ({','.join('?' * len(ch))})", list(ch))}
            with self._tx():
                for ch in _chunks(existing):
                    marks = ",".join("?" * len(ch))
                    c.execute(f"DELETE FROM items WHERE id IN ({marks})", list(ch))
                    if self.durable:
                        c.execute(f"DELETE FROM pending WHERE id IN ({marks})", list(ch))
                if self.durable:
                    c.executemany("INSERT INTO pending_deletes (id) VALUES (?)",
                                  [(i,) for i in existing if i not in pending])
            arr = np.asarray(existing, dtype=np.int64)
            self.index.remove_ids(faiss.IDSelectorArray(arr))
            if self._buffer.ntotal:
                self._buffer.remove_ids(faiss.IDSelectorArray(arr))
            if self.durable:
                self._pending_n -= len(pending)
                self._pending_del_n += len(existing) - len(pending)
        return len(existing)

    def set_setting(self, key: str, value: Any) -> None:
        self._writable()
        with self._lock.write(), self._tx() as c:
            c.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (key, json.dumps(value)))

    # ------------------------------------------------------------------ snapshots
    def _checkpoint_if(self, force: bool = False) -> None:
        due = self._pending_n + self._pending_del_n >= max(self.checkpoint_min, self._snapshot_n)
        if self.durable and (force or due):
            self._checkpoint()

    def _checkpoint(self) -> None:
        """Write a new snapshot; searches go on meanwhile (read lock), writers wait."""
        if not self.durable:
            return
        faiss = faiss_module()
        with self._ckpt_lock, self._lock.read():
            if not self.index.is_trained or (self._pending_n == 0 and self._pending_del_n == 0):
                return  # untrained: every vector still lives in `pending`
            gen = self._gen + 1
            final = self._snapshot_file(gen)
            tmp = final.with_name(final.name + ".tmp")
            faiss.write_index(self.index, str(tmp))
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
            _fsync_dir(self._folder)
            with self._tx() as c:
                c.execute("DELETE FROM pending")
                c.execute("DELETE FROM pending_deletes")
                c.execute("UPDATE settings SET value = ? WHERE key = 'snapshot'", (json.dumps(gen),))
            self._snapshot_file(self._gen).unlink(missing_ok=True)
            self._gen, self._snapshot_n = gen, len(self)
            self._pending_n = self._pending_del_n = 0

    def flush(self) -> None:
        if self.durable:
            self._checkpoint()

    def save(self, directory: str | os.PathLike) -> Path:
        """Write this index as a folder (a full copy; an index already there is replaced)."""
        faiss = faiss_module()
        d = Path(directory)
        if self.path is not None and d.resolve() == self.path.resolve():
            self.flush()
            return d
        d.mkdir(parents=True, exist_ok=True)
        for f in [d / DB_NAME, *d.glob("index.*.faiss*"), *d.glob(DB_NAME + "-*")]:
            f.unlink(missing_ok=True)
        with self._lock.read():
            dst = sqlite3.connect(d / DB_NAME, isolation_level=None)
            try:
                self._reader().backup(dst)
                dst.execute("BEGIN")
                dst.execute("DELETE FROM pending")
                dst.execute("DELETE FROM pending_deletes")
                gen = 0
                if self.index.is_trained:
                    gen = 1
                    faiss.write_index(self.index, str(d / "index.1.faiss"))
                if self._buffer.ntotal:  # untrained IVF: its vectors stay pending in the copy
                    ids = faiss.vector_to_array(self._buffer.id_map)
                    x = self._buffer.index.reconstruct_n(0, self._buffer.ntotal)
                    dst.executemany("INSERT INTO pending (id, vec) VALUES (?, ?)",
                                    [(int(i), v.tobytes()) for i, v in zip(ids, x)])
                dst.execute("UPDATE settings SET value = ? WHERE key = 'snapshot'", (json.dumps(gen),))
                dst.execute("UPDATE settings SET value = ? WHERE key = 'nprobe'", (json.dumps(self.nprobe),))
                dst.execute("COMMIT")
                dst.execute("PRAGMA journal_mode=WAL")
            finally:
                dst.close()
        return d

    def close(self) -> None:
        if getattr(self, "_conn", None) is None:
            return
        if self.durable:
            self._checkpoint()
        self._release()

    def _release(self) -> None:
        with self._readers_lock:
            for c in self._readers:
                c.close()
            self._readers.clear()
        if self._conn is not None:
            self._conn.close()
            self._conn = None  # type: ignore[assignment]
        if self._lockfile is not None:
            self._lockfile.close()
            self._lockfile = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __del__(self) -> None:  # best effort; close() is the clean way
        with suppress(Exception):
            if getattr(self, "_conn", None) is not None and not self.durable:
                self.close()

    # ------------------------------------------------------------------ reads
    def __len__(self) -> int:
        return int(self.index.ntotal + self._buffer.ntotal)

    def _target(self):
        return self.index if self.index.is_trained else self._buffer

    def _knn(self, target: Any, x: np.ndarray, k: int, sel: Any = None,
             exhaustive: bool = False) -> tuple[np.ndarray, np.ndarray]:
        faiss = faiss_module()
        if target is self._buffer or self.kind == "flat":
            params = faiss.SearchParameters(sel=sel) if sel is not None else None
        else:
            params = faiss.SearchParametersIVF()
            params.nprobe = self.nlist if exhaustive else min(self.nprobe, self.nlist)
            if sel is not None:
                params.sel = sel
        return target.search(x, k, params=params)

    def search_arrays(self, features: Any, k: int = 10,
                      filter: Filter | None = None) -> tuple[np.ndarray, np.ndarray]:
        x = self._check_features(features)
        with self._lock.read():
            target = self._target()
            n = int(target.ntotal)
            if n == 0:
                return np.zeros((len(x), 0), np.float32), np.zeros((len(x), 0), np.int64)
            if filter is None or filter.empty:
                return self._knn(target, x, max(1, min(int(k), n)))
            return self._filtered(target, x, int(k), filter, n)

    def _filtered(self, target: Any, x: np.ndarray, k: int, flt: Filter,
                  n: int) -> tuple[np.ndarray, np.ndarray]:
        faiss = faiss_module()
        where, params = flt.sql()
        c = self._reader()
        strategy = self.filter_strategy
        if strategy != "postfilter":
            limit = "" if strategy == "prefilter" else f" LIMIT {self.prefilter_max + 1}"
            rows = c.execute(f"SELECT id FROM items WHERE {where}{limit}", params).fetchall()
            if strategy == "prefilter" or len(rows) <= self.prefilter_max:
                ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                if not len(ids):
                    return np.zeros((len(x), 0), np.float32), np.zeros((len(x), 0), np.int64)
                sel = faiss.IDSelectorBatch(ids)
                return self._knn(target, x, min(k, len(ids)), sel, exhaustive=True)
            matches = self.prefilter_max  # at least this many: a broad filter
        else:
            matches = c.execute(f"SELECT COUNT(*) FROM items WHERE {where}", params).fetchone()[0]
            if matches == 0:
                return np.zeros((len(x), 0), np.float32), np.zeros((len(x), 0), np.int64)
        fetch = min(n, max(2 * k, math.ceil(2 * k * n / max(matches, 1))))
        while True:
            s, i = self._knn(target, x, fetch)
            cand = np.unique(i[i >= 0]).tolist()
            ok: set[int] = set()
            for ch in _chunks(cand):
                ok.update(r[0] for r in c.execute(
                    f"SELECT id FROM items WHERE id IN ({','.join('?' * len(ch))}) AND {where}",
                    [*ch, *params]))
            out_s = np.full((len(x), k), -np.inf, np.float32)
            out_i = np.full((len(x), k), -1, np.int64)
            short = False
            for r in range(len(x)):
                keep = [j for j, v in enumerate(i[r]) if v in ok][:k]
                out_s[r, : len(keep)], out_i[r, : len(keep)] = s[r, keep], i[r, keep]
                short |= len(keep) < min(k, matches)
            if not short or fetch >= n:
                break
            fetch = min(n, fetch * 4)
        return out_s, out_i

    def get(self, ids: Sequence[int]) -> list[Item | None]:
        ids = [int(i) for i in ids]
        found: dict[int, Item] = {}
        c = self._reader()
        for ch in _chunks(sorted(set(ids))):
            for r in c.execute(f"SELECT {_ITEM_COLS} FROM items WHERE id IN "
                               f"({','.join('?' * len(ch))})", list(ch)):
                found[r[0]] = _item(r)
        return [found.get(i) for i in ids]

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        out = np.zeros((len(ids), self.dim), np.float32)
        with self._lock.read():
            sources = [self._buffer, self.index] if self._buffer.ntotal else [self.index]
            for j, i in enumerate(ids):
                for src in sources:
                    try:
                        out[j] = src.reconstruct(int(i))
                        break
                    except RuntimeError:
                        continue
                else:
                    raise HareidError(f"id {int(i)} is not in the index")
        return out

    def items(self, offset: int = 0, limit: int | None = None) -> list[Item]:
        rows = self._reader().execute(
            f"SELECT {_ITEM_COLS} FROM items ORDER BY id LIMIT ? OFFSET ?",
            (-1 if limit is None else int(limit), int(offset))).fetchall()
        return [_item(r) for r in rows]

    def indexed_paths(self) -> set[str]:
        return {r[0] for r in self._reader().execute("SELECT path FROM items WHERE path IS NOT NULL")}

    def facets(self) -> dict[str, Any]:
        c = self._reader()
        tmin, tmax = c.execute("SELECT MIN(time), MAX(time) FROM items").fetchone()
        return {"cameras": [r[0] for r in c.execute("SELECT DISTINCT camera FROM items ORDER BY camera")],
                "sources": [r[0] for r in c.execute("SELECT DISTINCT source FROM items ORDER BY source")],
                "time_min": tmin, "time_max": tmax,
                "tracklets": c.execute("SELECT COUNT(DISTINCT tracklet) FROM items "
                                       "WHERE tracklet != ''").fetchone()[0]}

    def get_setting(self, key: str, default: Any = None) -> Any:
        row = self._reader().execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(path=None if self.path is None else str(self.path), trained=bool(self.index.is_trained))
        if self.kind != "flat":
            d.update(nlist=self.nlist, nprobe=self.nprobe)
        if self.kind == "ivfpq":
            d.update(pq_m=self.pq_m, pq_nbits=self.pq_nbits)
        return d


#: The name earlier versions used (``GalleryIndex(dim, kind="ivf", nlist=..., nprobe=...)``).
GalleryIndex = FaissIndex
