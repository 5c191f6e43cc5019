"""Shared by the server tests: a tiny gallery index, an app over it, a real uvicorn on a free port."""

from __future__ import annotations

import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any

from hareid.index.build import index_gallery
from hareid.index.embedder import load_embedder
from hareid.serve import Limits, create_app, open_gallery
from tests.helpers.tiny import Tiny

_EMBEDDERS: dict[str, Any] = {}


def embedder_for(tiny: Tiny):
    key = str(tiny.checkpoint)
    if key not in _EMBEDDERS:
        _EMBEDDERS[key] = load_embedder(tiny.checkpoint, device="cpu", dtype="fp32")
    return _EMBEDDERS[key]


def make_app(tiny: Tiny, tmp: Path, limits: Limits | None = None, backend: str = "faiss", **kw: Any):
    """Index the tiny gallery (into ``tmp``) and return the app over it."""
    emb = embedder_for(tiny)
    location = tmp / ("idx" if backend == "faiss" else "gallery.db")
    index_gallery(None, tiny.data, location, embedder=emb, workers=0, progress=False)
    return create_app(emb, open_gallery(location, emb, uploads=tmp / "uploads", images=tiny.data),
                      limits or Limits(), **kw)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` pixels but carries almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


class LiveServer:
    """uvicorn on 127.0.0.1 and a free port, in a thread; ``stop()`` ends it."""

    def __init__(self, app: Any):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
