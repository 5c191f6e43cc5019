"""The ``hareid serve`` application: a search page (``/``) and a JSON API (OpenAPI at ``/docs``).

Routes (all JSON unless noted):

- ``POST /embed``: image -> embedding;
- ``POST /search``: an image, an embedding or a gallery id; ``k``, ``offset`` (pages) and filters
  (``camera`` repeated, ``time_min``, ``time_max``, ``source`` repeated) -> matches best first,
  each with score, distance, camera, time, tracklet, frame, box and links to its image and
  attention strip; ``group=tracklet``: one match per person (tracklet) instead, ranked by its
  best crop, with ``groups`` (how many crops of it matched, its time span, their times);
- ``POST /gallery``: add images with metadata (searchable when the call returns);
  ``GET /gallery`` (pages of items), ``GET /gallery/facets``, ``GET /gallery/{id}``,
  ``GET /gallery/{id}/image``, ``GET /gallery/{id}/attention.png``, ``DELETE /gallery/{id}``;
- ``GET /gallery/{id}/footage``: the frame the crop was cut from with its box and a few frames
  around it (JPEG), for footage given with ``--footage`` (:mod:`hareid.serve.footage`,
  :mod:`hareid.serve.routes_footage`);
- ``GET /healthz``.

Model calls go through two :class:`~hareid.serve.batching.MicroBatcher` (embeddings, attention
strips) on one model thread; index calls run in the worker thread pool. Images are served only
by id, and only from the gallery's folder or the upload folder (resolved, symlinks included).

Parts: :mod:`hareid.serve.gallery` (the gallery), :mod:`hareid.serve.context` (what routes share),
:mod:`hareid.serve.schemas` (JSON shapes), :mod:`hareid.serve.routes_search` and
:mod:`hareid.serve.routes_gallery` (the routes, as ``APIRouter`` s); this module builds the app.
"""

# no "from __future__ import annotations": FastAPI reads these annotations at run time

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from hareid.errors import HareidError
from hareid.serve.footage import FootageAccess, FootageError
from hareid.serve.gallery import Gallery
from hareid.serve.limits import BodyLimit, Limits, OriginGuard, UploadError

STATIC = Path(__file__).parent / "static"


def _fastapi():
    try:
        import fastapi
        import python_multipart  # noqa: F401  (form uploads)
    except ImportError as e:
        raise HareidError("`hareid serve` needs fastapi, uvicorn and python-multipart: "
                          "pip install 'hareid[serve]'") from e
    return fastapi


def create_app(embedder: Any, gallery: Gallery, limits: Limits | None = None, *, max_batch: int = 32,
               max_wait_s: float = 0.004, close_gallery: bool = True, hosts: Sequence[str] = (),
               allow_origins: Sequence[str] = (), footage: FootageAccess | None = None):
    """The FastAPI app over an embedder (``embed``, ``preprocess``, ``dim``, ``model``) and a gallery.

    Requests must be addressed to a loopback name or one of ``hosts``, and come from the page
    itself or one of ``allow_origins`` (:class:`~hareid.serve.limits.OriginGuard`). ``footage``: the
    video files / frame folders the footage view may read (``--footage``)."""
    if max_batch < 1:
        raise HareidError(f"max_batch must be >= 1, got {max_batch}")
    fastapi = _fastapi()
    from fastapi.responses import JSONResponse
    from fastapi.staticfiles import StaticFiles

    from hareid.serve.context import ServeContext
    from hareid.serve.routes_footage import footage_router
    from hareid.serve.routes_gallery import gallery_router
    from hareid.serve.routes_search import search_router

    limits = limits or Limits()
    ctx = ServeContext(embedder, gallery, limits, max_batch, max_wait_s,
                       footage if footage is not None else FootageAccess())

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        yield
        await ctx.close(close_gallery)

    kwargs = dict(title="hareid", version=_version(), lifespan=lifespan,
                  description="Person re-identification search over a gallery (HA-CNN embeddings). "
                              "The page is at `/`.")
    try:
        from fastapi_offline import FastAPIOffline  # swagger / redoc assets shipped, no CDN

        app = FastAPIOffline(**kwargs)
    except ImportError:  # pragma: no cover - docs pages then load their assets from a CDN
        app = fastapi.FastAPI(**kwargs)
    one_image = limits.max_image_bytes + 2**20  # one image + form fields
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes,
                       per_path={"/search": one_image, "/embed": one_image}, timeout_s=limits.body_timeout_s)
    app.add_middleware(OriginGuard, hosts=list(hosts), origins=list(allow_origins))  # outermost
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(UploadError)
    async def _upload_error(_request: Any, e: UploadError) -> JSONResponse:
        return JSONResponse({"detail": gallery.scrub(e.message)}, status_code=e.status)

    @app.exception_handler(FootageError)
    async def _footage_error(_request: Any, e: FootageError) -> JSONResponse:
        return JSONResponse({"detail": e.message}, status_code=e.status)

    @app.exception_handler(HareidError)
    async def _user_error(_request: Any, e: HareidError) -> JSONResponse:
        return JSONResponse({"detail": gallery.scrub(str(e).splitlines()[0])}, status_code=422)

    app.include_router(search_router(ctx))
    app.include_router(gallery_router(ctx))
    app.include_router(footage_router(ctx))
    app.state.gallery, app.state.embedder, app.state.footage = gallery, embedder, ctx.footage
    app.state.batchers = {"embed": ctx.embed_batcher, "attention": ctx.attn_batcher}
    return app


def _version() -> str:
    from hareid import __version__

    return __version__
