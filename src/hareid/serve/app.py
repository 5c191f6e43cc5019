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
  around it (JPEG), for footage given with ``--footage`` (:mod:`hareid.serve.footage`);
- ``GET /healthz``.

Model calls go through two :class:`~hareid.serve.batching.MicroBatcher` (embeddings, attention
strips) on one model thread; index calls run in the worker thread pool. Images are served only
by id, and only from the gallery's folder or the upload folder (resolved, symlinks included).
"""

# no "from __future__ import annotations": FastAPI reads these annotations at run time

import asyncio
import base64
import contextlib
import hashlib
import json
import mimetypes
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch

from hareid.errors import HareidError
from hareid.index import Filter, Item, VectorIndex
from hareid.serve.batching import MicroBatcher
from hareid.serve.footage import FootageAccess, FootageError, footage_view
from hareid.serve.limits import BodyLimit, Limits, UploadError, check_filename, decode_image

STATIC = Path(__file__).parent / "static"
_EXT = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp"}


def _fastapi():
    try:
        import fastapi
        import python_multipart  # noqa: F401  (form uploads)
    except ImportError as e:
        raise HareidError("`hareid serve` needs fastapi, uvicorn and python-multipart: "
                          "pip install 'hareid[serve]'") from e
    return fastapi


@dataclass
class Gallery:
    """An opened gallery: its index, the folders images may be served from, the upload folder."""

    index: VectorIndex
    roots: list[Path]
    uploads: Path
    facets: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    facets_at: float = 0.0  # monotonic time of the last full facets scan

    def resolve(self, path: str) -> Path | None:
        """The real file of a stored path if it lies under a gallery root, else None."""
        try:
            real = Path(path).resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        ok = real.is_file() and any(real.is_relative_to(r) for r in self.roots)
        return real if ok else None

    def relative(self, path: str) -> str:
        p = Path(path)
        for r in self.roots:
            with contextlib.suppress(ValueError):
                return p.resolve().relative_to(r).as_posix()
        return p.name

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
                 progress: bool = True) -> Gallery:
    """``--gallery``: an index (FAISS folder, ``.db``, Milvus URI) or a folder of images / dataset,
    which is indexed first (into ``index``, default ``GALLERY/.hareid-index``; resumable)."""
    from hareid.index import open_index
    from hareid.index.build import index_gallery
    from hareid.index.faiss_store import DB_NAME
    from hareid.index.milvus_store import is_milvus_uri

    g = str(gallery)
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
    root = idx.get_setting("root")
    roots = [Path(root).resolve()] if root else []
    roots.append(up.resolve())
    out = Gallery(idx, roots, up)
    out.refresh_facets()
    return out


class _LRU:
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


#: largest gallery id (SQLite's signed 64-bit integer): larger ids are a 422, not a database error
MAX_ID = 2**63 - 1


#: seconds a facets scan is reused (other processes may add to a shared Milvus collection)
FACETS_TTL_S = 30.0


def create_app(embedder: Any, gallery: Gallery, limits: Limits | None = None, *, max_batch: int = 32,
               max_wait_s: float = 0.004, close_gallery: bool = True,
               footage: FootageAccess | None = None):
    """The FastAPI app over an embedder (``embed``, ``preprocess``, ``dim``, ``model``) and a gallery.

    ``footage``: the video files / frame folders the footage view may read (``--footage``)."""
    fastapi = _fastapi()
    limits = limits or Limits()
    footage = footage if footage is not None else FootageAccess()
    from fastapi import File, Form, UploadFile
    from fastapi import Path as PathParam
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, Field

    from hareid.serve.render import attention_strips

    ItemId = Annotated[int, PathParam(ge=0, le=MAX_ID, description="gallery item id")]

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hareid-model")
    embed_batcher = MicroBatcher(lambda xs: list(embedder.embed(torch.stack(list(xs)))), executor,
                                 max_batch=max_batch, max_wait_s=max_wait_s, name="embed")
    attn_batcher = MicroBatcher(lambda xs: attention_strips(embedder.model, xs), executor,
                                max_batch=16, max_wait_s=max_wait_s, name="attention")
    attn_cache = _LRU(512)
    index = gallery.index

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        yield
        await embed_batcher.close()
        await attn_batcher.close()
        executor.shutdown(wait=True)
        if close_gallery:
            index.close()

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
                       per_path={"/search": one_image, "/embed": one_image})
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(UploadError)
    async def _upload_error(_request: Any, e: UploadError) -> JSONResponse:
        return JSONResponse({"detail": e.message}, status_code=e.status)

    @app.exception_handler(FootageError)
    async def _footage_error(_request: Any, e: FootageError) -> JSONResponse:
        return JSONResponse({"detail": e.message}, status_code=e.status)

    @app.exception_handler(HareidError)
    async def _user_error(_request: Any, e: HareidError) -> JSONResponse:
        return JSONResponse({"detail": str(e).splitlines()[0]}, status_code=422)

    # ----------------------------------------------------------------- schemas
    class ItemOut(BaseModel):
        id: int
        name: str
        path: str = Field(description="relative to the gallery folder")
        camera: str
        time: float | None
        source: str
        pid: int
        tracklet: str = Field("", description="global tracklet key; '' for a plain image")
        frame: int = Field(-1, description="0-based frame in its source footage; -1: none")
        box: list[float] | None = Field(None, description="x1, y1, x2, y2 in frame pixels")
        image_url: str
        attention_url: str
        footage_url: str | None = Field(None, description="the frame with the box (JPEG), when "
                                                          "the server may read its footage")

    class Match(ItemOut):
        rank: int = Field(description="1-based rank over all pages")
        score: float = Field(description="cosine similarity of the unit embeddings")
        distance: float = Field(description="squared euclidean distance = 2 - 2 * score")

    class Seen(BaseModel):
        id: int
        camera: str
        time: float | None
        frame: int
        score: float

    class GroupOut(BaseModel):
        rank: int = Field(description="1-based rank of the group over all pages")
        tracklet: str = Field(description="'' for a plain image (a group of one)")
        best_id: int = Field(description="its best crop: the match in `results` at this rank")
        camera: str
        score: float
        count: int = Field(description="its crops among the top `depth` crops of the query")
        time_min: float | None
        time_max: float | None
        seen: list[Seen] = Field(description="those crops, best first")

    class Query(BaseModel):
        kind: Literal["image", "embedding", "gallery"]
        gallery_id: int | None = None
        name: str | None = None

    class SearchOut(BaseModel):
        query: Query
        k: int
        offset: int
        has_more: bool = Field(description="a next page may hold more matches")
        results: list[Match]
        group: Literal["none", "tracklet"] = "none"
        groups: list[GroupOut] | None = Field(None, description="with group=tracklet: one per "
                                                                "result, same order")
        depth: int | None = Field(None, description="crops searched to form the groups")
        query_attention: str | None = Field(None, description="PNG data URL (with attention=true)")
        took_ms: float

    class EmbedOut(BaseModel):
        dim: int
        embedding: list[float] = Field(description="unit-length embedding")
        took_ms: float


    class AddOut(BaseModel):
        ids: list[int]
        items: list[ItemOut]
        count: int = Field(description="gallery size after the add")

    class Page(BaseModel):
        items: list[ItemOut]
        offset: int
        limit: int
        count: int

    class Facets(BaseModel):
        cameras: list[str]
        sources: list[str]
        time_min: float | None
        time_max: float | None
        count: int
        tracklets: int = Field(0, description="distinct tracklets in the gallery")

    class Health(BaseModel):
        status: str
        backend: str
        kind: str
        dim: int
        count: int
        batching: dict[str, dict[str, float]]

    def item_out(it: Item) -> ItemOut:
        shown = it.frame >= 0 and footage.resolve(it.source) is not None
        return ItemOut(id=it.id, name=Path(it.path).name, path=gallery.relative(it.path),
                       camera=it.camera, time=it.time, source=it.source, pid=it.pid,
                       tracklet=it.tracklet, frame=it.frame,
                       box=None if it.box is None else list(it.box),
                       image_url=f"/gallery/{it.id}/image",
                       attention_url=f"/gallery/{it.id}/attention.png",
                       footage_url=f"/gallery/{it.id}/footage" if shown else None)

    async def image_tensor(upload: UploadFile) -> tuple[torch.Tensor, bytes, str]:
        name = check_filename(upload.filename)
        data = await upload.read(limits.max_image_bytes + 1)

        def prepare() -> torch.Tensor:  # decode (bounded) + resize: off the event loop
            return embedder.preprocess(decode_image(data, limits, name))

        return await run_in_threadpool(prepare), data, name

    def get_item(item_id: ItemId) -> Item:
        it = index.get([item_id])[0]
        if it is None:
            raise UploadError(404, f"gallery item {item_id} not found")
        return it

    # ----------------------------------------------------------------- page
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/healthz", response_model=Health, summary="Liveness and gallery size")
    async def healthz() -> Health:
        d = await run_in_threadpool(index.describe)
        return Health(status="ok", backend=d["backend"], kind=d["kind"], dim=d["dim"],
                      count=d["count"], batching={"embed": embed_batcher.stats(),
                                                  "attention": attn_batcher.stats()})

    # ----------------------------------------------------------------- model
    @app.post("/embed", response_model=EmbedOut, summary="Embed one image")
    async def embed(
        image: Annotated[UploadFile, File(description="JPEG, PNG, WebP or BMP")],
    ) -> EmbedOut:
        t0 = time.perf_counter()
        x, _, _ = await image_tensor(image)
        v = await embed_batcher.submit(x)
        return EmbedOut(dim=int(v.shape[0]), embedding=v.tolist(),
                        took_ms=1e3 * (time.perf_counter() - t0))

    @app.post("/search", response_model=SearchOut,
              summary="Top-k gallery matches of an image, an embedding or a gallery item")
    async def search(
        image: Annotated[UploadFile | None, File(description="query image (or embedding / gallery_id)")] = None,
        embedding: Annotated[str | None, Form(description="JSON list of `dim` floats")] = None,
        gallery_id: Annotated[int | None, Form(ge=0, le=MAX_ID, description="search with a gallery item's embedding")] = None,
        k: Annotated[int, Form(ge=1, le=limits.max_k, description="matches per page")] = 10,
        offset: Annotated[int, Form(ge=0, le=limits.max_offset, description="matches to skip (pages)")] = 0,
        camera: Annotated[list[str] | None, Form(description="only these cameras (repeat the field)")] = None,
        time_min: Annotated[float | None, Form(description="only items at or after this time")] = None,
        time_max: Annotated[float | None, Form(description="only items at or before this time")] = None,
        source: Annotated[list[str] | None, Form(description="only these sources (repeat the field)")] = None,
        attention: Annotated[bool, Form(description="also return the query's attention strip")] = False,
        group: Annotated[Literal["none", "tracklet"], Form(description="tracklet: one result per "
                         "person (tracklet), ranked by its best crop; k and offset count groups")] = "none",
        depth: Annotated[int | None, Form(ge=1, le=limits.max_depth, description="group=tracklet: "
                         "crops searched to form the groups (default max(500, 20 x (offset + k)))")] = None,
    ) -> SearchOut:
        t0 = time.perf_counter()
        given = [image is not None and bool(image.filename or image.size),
                 embedding is not None, gallery_id is not None]
        if sum(given) != 1:
            raise UploadError(422, "send exactly one of: image (file), embedding (JSON list), "
                                   "gallery_id")
        flt = Filter(cameras=camera, time_min=time_min, time_max=time_max, sources=source)
        x = None
        if image is not None and given[0]:
            x, _, name = await image_tensor(image)
            q = await embed_batcher.submit(x)
            query = Query(kind="image", name=name)
        elif embedding is not None:
            try:
                q = np.asarray(json.loads(embedding), dtype=np.float32)
            except (ValueError, TypeError, RecursionError):
                raise UploadError(422, "embedding must be a JSON list of numbers") from None
            if q.shape != (index.dim,) or not np.isfinite(q).all():
                raise UploadError(422, f"embedding must be {index.dim} finite numbers, got shape "
                                       f"{list(q.shape)}")
            query = Query(kind="embedding")
        else:
            get_item(gallery_id)  # 404 when missing
            q = (await run_in_threadpool(index.vectors, [gallery_id]))[0]
            query = Query(kind="gallery", gallery_id=gallery_id)
        groups, has_more = None, False
        if group == "tracklet":
            depth = depth or min(limits.max_depth, max(500, 20 * (offset + k)))
            found = (await run_in_threadpool(index.search_groups, q[None], k,
                                             None if flt.empty else flt, offset, depth))[0]
            pairs = [(g.score, g.best) for g in found.groups]
            groups = [GroupOut(rank=offset + j + 1, tracklet=g.tracklet, best_id=g.best.id,
                               camera=g.best.camera, score=g.score, count=g.count,
                               time_min=g.time_span[0], time_max=g.time_span[1],
                               seen=[Seen(id=it.id, camera=it.camera, time=it.time, frame=it.frame,
                                          score=s) for it, s in zip(g.items, g.scores)])
                      for j, g in enumerate(found.groups)]
            has_more = found.has_more
        else:
            depth = None
            res = (await run_in_threadpool(index.search, q[None], k, None if flt.empty else flt,
                                           offset))[0]
            pairs = list(zip(res.scores.tolist(), res.items))
            has_more = len(pairs) == k
        results = [Match(rank=offset + j + 1, score=float(s), distance=float(max(0.0, 2 - 2 * s)),
                         **item_out(it).model_dump())
                   for j, (s, it) in enumerate(pairs)]
        strip = None
        if attention and x is not None:
            png = await attn_batcher.submit(x)
            strip = "data:image/png;base64," + base64.b64encode(png).decode()
        return SearchOut(query=query, k=k, offset=offset, has_more=has_more, results=results,
                         group=group, groups=groups, depth=depth, query_attention=strip,
                         took_ms=1e3 * (time.perf_counter() - t0))

    # ----------------------------------------------------------------- gallery
    @app.get("/gallery/facets", response_model=Facets, summary="Cameras, sources, time range")
    async def facets() -> Facets:
        with gallery.lock:
            f, stale = dict(gallery.facets), time.monotonic() - gallery.facets_at > FACETS_TTL_S
        if stale:  # another process may have added to a shared collection
            f = await run_in_threadpool(gallery.refresh_facets)
        return Facets(count=len(index), **f)

    @app.get("/gallery", response_model=Page, summary="Gallery items in id order, a page at a time")
    async def gallery_page(offset: int = fastapi.Query(0, ge=0, le=10**9),
                           limit: int = fastapi.Query(48, ge=1, le=500)) -> Page:
        items = await run_in_threadpool(index.items, offset, limit)
        return Page(items=[item_out(it) for it in items], offset=offset, limit=limit,
                    count=len(index))

    @app.post("/gallery", response_model=AddOut,
              summary="Add images with metadata; searchable when the call returns")
    async def add(
        images: Annotated[list[UploadFile], File(description="one or more images")],
        camera: Annotated[list[str] | None, Form(description="one value for all, or one per image")] = None,
        times: Annotated[list[float] | None,
                         Form(alias="time", description="seconds; one for all, or one per image")] = None,
        source: Annotated[list[str] | None, Form(description="default 'upload'")] = None,
        pid: Annotated[list[int] | None, Form(description="identity, if known")] = None,
    ) -> AddOut:
        n = len(images)
        if n > limits.max_files:
            raise UploadError(413, f"{n} images in one request; the limit is {limits.max_files}")

        def per_image(values: list[Any] | None, name: str, default: Any) -> list[Any]:
            if not values:
                return [default] * n
            if len(values) == 1:
                return values * n
            if len(values) != n:
                raise UploadError(422, f"{len(values)} {name} values for {n} images; send one for "
                                       "all or one per image")
            return values

        cams, times = per_image(camera, "camera", ""), per_image(times, "time", None)
        srcs, pids = per_image(source, "source", "upload"), per_image(pid, "pid", -1)
        prepared = [await image_tensor(f) for f in images]  # every file checked before any is kept
        vecs = await asyncio.gather(*[embed_batcher.submit(x) for x, _, _ in prepared])
        saved: list[tuple[Path, bool]] = []
        try:
            for _, data, _ in prepared:
                saved.append(await run_in_threadpool(_store, gallery.uploads, data))
            ids = await run_in_threadpool(index.add, np.stack(vecs), [str(p) for p, _ in saved],
                                          pids, cams, times, srcs)
        except (HareidError, ValueError, OverflowError) as e:
            for p, created in saved:  # keep no file the index does not hold
                if created:
                    p.unlink(missing_ok=True)
            raise UploadError(409 if "already in the index" in str(e) else 422,
                              str(e).splitlines()[0]) from None
        gallery.note_added(cams, srcs, times)
        items = await run_in_threadpool(index.get, ids.tolist())
        return AddOut(ids=ids.tolist(), items=[item_out(it) for it in items if it], count=len(index))

    @app.get("/gallery/{item_id}", response_model=ItemOut, summary="One gallery item")
    async def item(item_id: ItemId) -> ItemOut:
        return item_out(await run_in_threadpool(get_item, item_id))

    @app.get("/gallery/{item_id}/image", summary="A gallery item's image file",
             response_class=FileResponse)
    async def item_image(item_id: ItemId) -> FileResponse:
        it = await run_in_threadpool(get_item, item_id)
        real = gallery.resolve(it.path)
        if real is None:
            raise UploadError(404, f"image of gallery item {item_id} is not in the gallery folder")
        return FileResponse(real, media_type=mimetypes.guess_type(real.name)[0] or "image/jpeg",
                            headers={"Cache-Control": "max-age=3600"})

    @app.get("/gallery/{item_id}/attention.png", summary="Soft attention + hard regions per stage",
             response_class=Response)
    async def item_attention(item_id: ItemId) -> Response:
        png = attn_cache.get(item_id)
        if png is None:
            it = await run_in_threadpool(get_item, item_id)
            real = gallery.resolve(it.path)
            if real is None:
                raise UploadError(404, f"image of gallery item {item_id} is not in the gallery folder")
            data = await run_in_threadpool(real.read_bytes)
            x = await run_in_threadpool(lambda: embedder.preprocess(decode_image(data, limits, real.name)))
            png = await attn_batcher.submit(x)
            attn_cache.put(item_id, png)
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.get("/gallery/{item_id}/footage", summary="The frame a crop was cut from, with its box, "
             "and frames around it (JPEG)", response_class=Response)
    async def item_footage(
        item_id: ItemId,
        context: int = fastapi.Query(2, ge=0, le=4, description="frames either side"),
        step: int = fastapi.Query(5, ge=1, le=250, description="frames between two shown"),
        width: int = fastapi.Query(480, ge=64, le=1280, description="pixels per frame at most"),
    ) -> Response:
        it = await run_in_threadpool(get_item, item_id)
        jpeg = await run_in_threadpool(lambda: footage_view(
            footage, it.source, it.frame, it.box, context=context, step=step, width=width,
            max_pixels=limits.max_pixels))
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.delete("/gallery/{item_id}", summary="Remove an item (and its uploaded file)")
    async def delete(item_id: ItemId) -> dict[str, int]:
        it = await run_in_threadpool(get_item, item_id)
        if not await run_in_threadpool(index.delete, [item_id]):
            raise UploadError(404, f"gallery item {item_id} not found")
        attn_cache.drop(item_id)
        real = gallery.resolve(it.path)
        if real is not None and real.is_relative_to(gallery.uploads.resolve()):
            real.unlink(missing_ok=True)
        return {"deleted": item_id, "count": len(index)}

    app.state.gallery, app.state.embedder, app.state.footage = gallery, embedder, footage
    app.state.batchers = {"embed": embed_batcher, "attention": attn_batcher}
    return app


def _store(folder: Path, data: bytes) -> tuple[Path, bool]:
    """Write an upload under its content hash (atomic: temp file + rename); the client's name is
    never used as a path. Returns the path and whether this call created it."""
    from hareid.serve.limits import sniff

    name = hashlib.sha256(data).hexdigest()[:24] + _EXT.get(sniff(data) or "", ".img")
    dest = folder / name
    if dest.exists():
        return dest, False
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, dest)
    return dest, True


def _version() -> str:
    from hareid import __version__

    return __version__
