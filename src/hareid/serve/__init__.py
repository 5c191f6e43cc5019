"""``hareid serve``: find a person across cameras in a browser (FastAPI + uvicorn).

```python
from hareid.serve import build_app
app = build_app("runs/demo/checkpoints/best.pt", "runs/demo/index")   # any ASGI server runs it
```
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Sequence
from typing import Any

from hareid.errors import HareidError
from hareid.serve.app import create_app
from hareid.serve.gallery import Gallery, open_gallery
from hareid.serve.limits import Limits, UploadError

__all__ = ["Gallery", "Limits", "UploadError", "build_app", "check", "create_app", "open_gallery",
           "serve"]


def build_app(checkpoint: str | os.PathLike, gallery: str | os.PathLike, *,
              index: str | os.PathLike | None = None, uploads: str | os.PathLike | None = None,
              collection: str | None = None, limits: Limits | None = None, max_batch: int = 32,
              device: str | None = None, progress: bool = True, dtype: Any = "auto",
              calibration: str | os.PathLike | None = None, images: str | os.PathLike | None = None,
              host: str = "127.0.0.1", allow_origins: Sequence[str] = (),
              footage: Sequence[str | os.PathLike] = ()):
    """Load the checkpoint, open (or first index) the gallery, return the ASGI app.

    ``dtype``: embedding precision, as :class:`hareid.Embedder` (default ``"auto"``: bf16 on a CPU
    with native bf16, a half type on CUDA, else float32); ``"int8"`` runs ONNX Runtime on the CPU,
    calibrated on ``calibration`` (a folder of images; default: ``gallery`` when it is a folder).
    Files are served from ``images`` (default: the ``gallery`` folder) and the upload folder only;
    requests must name ``host`` or a loopback name, and come from the page or ``allow_origins``.
    ``footage``: video files / folders the "show in footage" view may read (``--footage``)."""
    from hareid.index.embedder import load_embedder
    from hareid.serve.footage import FootageAccess

    access = FootageAccess(footage)  # a wrong path fails before the model loads

    if max_batch < 1:
        raise HareidError(f"--max-batch must be >= 1, got {max_batch}")
    if dtype == "int8":
        if calibration is None and os.path.isdir(gallery) and not _is_index_folder(gallery):
            calibration = gallery
        device = "cpu"
    embedder = load_embedder(checkpoint, device=device, dtype=dtype, calibration=calibration)
    g = open_gallery(gallery, embedder, index=index, uploads=uploads, collection=collection,
                     progress=progress, images=images)
    bound = [] if host in ("0.0.0.0", "::", "") else [host]
    return create_app(embedder, g, limits or Limits(), max_batch=max_batch, hosts=bound,
                      allow_origins=allow_origins, footage=access)


def _is_index_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a FAISS + SQLite index folder written by ``hareid index``."""
    from pathlib import Path

    return (Path(path) / "gallery.sqlite").exists()  # hareid.index.faiss_store.DB_NAME


def check(app: Any) -> dict[str, Any]:
    """Start the app in-process (no socket), ask /healthz and search with the first gallery item."""
    import warnings

    with warnings.catch_warnings():  # starlette's notice about its future HTTP client
        warnings.simplefilter("ignore", DeprecationWarning)
        from fastapi.testclient import TestClient

    with TestClient(app, base_url="http://127.0.0.1") as client:
        health = client.get("/healthz").json()
        page = client.get("/", headers={"accept": "text/html"})
        first = client.get("/gallery", params={"limit": 1}).json()["items"]
        out: dict[str, Any] = {"health": health, "page_ok": page.status_code == 200}
        if first:
            r = client.post("/search", data={"gallery_id": first[0]["id"], "k": 5})
            r.raise_for_status()
            out["query"] = first[0]
            out["results"] = r.json()["results"]
    return out


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(app: Any, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run the app with uvicorn until interrupted."""
    try:
        import uvicorn
    except ImportError as e:
        raise HareidError("`hareid serve` needs uvicorn: pip install 'hareid[serve]'") from e
    if not _loopback(host):
        print(f"[hareid] warning: listening on {host}: the API has no authentication; anyone who "
              "can reach this port can search and change the gallery", file=sys.stderr)
    # uvicorn.Server, not uvicorn.run: run() swallows the KeyboardInterrupt that uvicorn re-raises
    # after a graceful stop, which made Ctrl-C exit 0 instead of 130
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level)).run()
