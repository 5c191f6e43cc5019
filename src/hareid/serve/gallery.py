"""The gallery behind ``hareid serve``: an opened index, the folders its images may be served from,
the upload folder; uploads stored under their content hash."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hareid.errors import HareidError
from hareid.fileio import umask_mode
from hareid.index import VectorIndex

__all__ = ["FACETS_TTL_S", "LRU", "MAX_ID", "Gallery", "default_uploads", "open_gallery", "store_upload"]

_EXT = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp"}


@dataclass
class Gallery:
    """An opened gallery: its index, the folders images may be served from, the upload folder."""

    index: VectorIndex
    roots: list[Path]  # from the command line only: the --gallery (or --images) folder, the uploads
    uploads: Path
    facets: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    facets_at: float = 0.0  # monotonic time of the last full facets scan
    #: the folder the index says it was built from: only a prefix to re-root stored paths onto
    #: ``roots`` (a moved or copied gallery serves its own files), never a folder files are served from
    stored_root: str | None = None
    #: serialises the writes (store + add, delete + unlink) so that a loser never touches the winner's file
    write_lock: threading.Lock = field(default_factory=threading.Lock)

    def _candidates(self, path: str) -> list[Path]:
        p = Path(path)
        out = []
        if self.stored_root and p.is_absolute():
            with contextlib.suppress(ValueError):
                rel = p.relative_to(self.stored_root)
                if ".." not in rel.parts:
                    out += [r / rel for r in self.roots if r != self.uploads_real]
        return [*out, p]

    @property
    def uploads_real(self) -> Path:
        return self.uploads.resolve()

    def resolve(self, path: str) -> Path | None:
        """The real file of a stored path if it lies under a root given on the command line, else None."""
        for cand in self._candidates(path):
            try:
                real = cand.resolve(strict=True)
            except (OSError, RuntimeError):
                continue
            if real.is_file() and any(real.is_relative_to(r) for r in self.roots):
                return real
        return None

    def relative(self, path: str) -> str:
        real = self.resolve(path)
        for r in self.roots if real is not None else []:
            with contextlib.suppress(ValueError):
                return real.relative_to(r).as_posix()
        if self.stored_root:
            with contextlib.suppress(ValueError):
                return Path(path).relative_to(self.stored_root).as_posix()
        return Path(path).name

    def scrub(self, text: str) -> str:
        """``text`` without the server's absolute folders (error details name files relative to them)."""
        for folder in sorted({*(str(r) for r in self.roots), str(self.uploads), self.stored_root or ""},
                             key=len, reverse=True):
            if len(folder) > 1:
                text = text.replace(folder.rstrip("/") + "/", "").replace(folder, ".")
        return text

    def refresh_facets(self) -> dict[str, Any]:
        f = self.index.facets()
        with self.lock:
            self.facets, self.facets_at = f, time.monotonic()
        return f

    def note_added(self, cameras: list[str], sources: list[str], times: list[float | None]) -> None:
        with self.lock:
            f = dict(self.facets or {"cameras": [], "sources": [], "time_min": None, "time_max": None})
            f["cameras"] = sorted({*f["cameras"], *cameras})
            f["sources"] = sorted({*f["sources"], *sources})
            ts = [t for t in times if t is not None]
            if ts:
                f["time_min"] = min(ts) if f["time_min"] is None else min(f["time_min"], *ts)
                f["time_max"] = max(ts) if f["time_max"] is None else max(f["time_max"], *ts)
            self.facets = f


def default_uploads(location: str | os.PathLike) -> Path:
    s = str(location)
    if s.startswith(("http://", "https://", "tcp://", "grpc://", "unix:")):
        return Path("hareid-uploads")
    return Path(s + ".uploads") if s.endswith(".db") else Path(s) / "uploads"


def open_gallery(gallery: str | os.PathLike, embedder: Any, *, index: str | os.PathLike | None = None,
                 uploads: str | os.PathLike | None = None, collection: str | None = None,
                 progress: bool = True, images: str | os.PathLike | None = None) -> Gallery:
    """``--gallery``: an index (FAISS folder, ``.db``, Milvus URI) or a folder of images / dataset,
    which is indexed first (into ``index``, default ``GALLERY/.hareid-index``; resumable).

    Files are served only from the folders the caller names: ``images`` (default: the gallery
    folder; an index alone serves no gallery file) and the upload folder. The index's stored
    settings never widen that: a crafted or copied index cannot make the server read elsewhere."""
    from hareid.index import open_index
    from hareid.index.build import index_gallery
    from hareid.index.faiss_store import DB_NAME
    from hareid.index.milvus_store import is_milvus_uri

    g = str(gallery)
    folder: Path | None = None
    if is_milvus_uri(g) or (Path(g) / DB_NAME).is_file():
        location: str | os.PathLike = g
    else:
        folder = Path(g)
        if not folder.exists():
            raise HareidError(f"{g}: no such gallery folder or index; pass a folder of images, a "
                              "dataset, or an index written by `hareid index`")
        location = index or folder / ".hareid-index"
        index_gallery(None, folder, location, embedder=embedder, workers=0, progress=progress,
                      collection=collection)
    idx = open_index(location, collection=collection)
    if idx.dim != embedder.dim:
        idx.close()
        raise HareidError(f"{location}: index holds {idx.dim}-d embeddings but the checkpoint gives "
                          f"{embedder.dim}-d; serve it with the checkpoint it was built with")
    up = Path(uploads) if uploads else default_uploads(location)
    up.mkdir(parents=True, exist_ok=True)
    served = images if images is not None else folder
    if served is not None and not Path(served).is_dir():
        idx.close()
        raise HareidError(f"{served}: --images is not a folder; pass the folder the gallery images are in")
    roots = [Path(served).resolve()] if served is not None else []
    roots.append(up.resolve())
    stored = idx.get_setting("root")
    out = Gallery(idx, roots, up, stored_root=str(stored) if isinstance(stored, str) and stored else None)
    out.refresh_facets()
    return out


class LRU:
    """A small thread-safe least-recently-used cache."""


    def __init__(self, size: int):
        self.size, self._d, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        return None

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)

    def drop(self, key: Any) -> None:
        with self._lock:
            self._d.pop(key, None)


#: seconds a facets scan is reused (other processes may add to a shared Milvus collection)
FACETS_TTL_S = 30.0

#: largest gallery id (SQLite's signed 64-bit integer): larger ids are a 422, not a database error
MAX_ID = 2**63 - 1


def store_upload(folder: Path, data: bytes) -> tuple[Path, bool]:
    """Write an upload under its content hash (atomic: temp file + rename); the client's name is
    never used as a path. Returns the path and whether this call created it."""
    from hareid.serve.limits import sniff

    name = hashlib.sha256(data).hexdigest()[:24] + _EXT.get(sniff(data) or "", ".img")
    dest = folder / name
    if dest.exists():
        return dest, False
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, umask_mode())
        try:  # link, not replace: of two writers (even two processes) only one creates the file
            os.link(tmp, dest)
        except FileExistsError:
            return dest, False
    finally:
        os.unlink(tmp)
    return dest, True
