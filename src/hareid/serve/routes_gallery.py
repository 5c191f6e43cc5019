"""Routes of ``hareid serve``: the gallery (facets, pages, add, items, images, attention, delete)."""

# no "from __future__ import annotations": FastAPI reads these annotations at run time

import asyncio
import mimetypes
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response

from hareid.errors import HareidError
from hareid.serve.context import ServeContext
from hareid.serve.gallery import FACETS_TTL_S, MAX_ID, store_upload
from hareid.serve.limits import UploadError, decode_image
from hareid.serve.schemas import AddOut, Facets, ItemOut, Page

__all__ = ["gallery_router"]

ItemId = Annotated[int, PathParam(ge=0, le=MAX_ID, description="gallery item id")]


def gallery_router(ctx: ServeContext) -> APIRouter:
    """``/gallery...`` over ``ctx``."""
    router = APIRouter()

    @router.get("/gallery/facets", response_model=Facets, summary="Cameras, sources, time range")
    async def facets() -> Facets:
        with ctx.gallery.lock:
            f = dict(ctx.gallery.facets)
            stale = time.monotonic() - ctx.gallery.facets_at > FACETS_TTL_S
        if stale:  # another process may have added to a shared collection
            f = await run_in_threadpool(ctx.gallery.refresh_facets)
        return Facets(count=len(ctx.index), **f)

    @router.get("/gallery", response_model=Page, summary="Gallery items in id order, a page at a time")
    async def gallery_page(offset: int = Query(0, ge=0, le=10**9),
                           limit: int = Query(48, ge=1, le=500)) -> Page:
        items = await run_in_threadpool(ctx.index.items, offset, limit)
        return Page(items=[ctx.item_out(it) for it in items], offset=offset, limit=limit,
                    count=len(ctx.index))

    @router.post("/gallery", response_model=AddOut,
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
        if n > ctx.limits.max_files:
            raise UploadError(413, f"{n} images in one request; the limit is {ctx.limits.max_files}")

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
        prepared = [await ctx.image_tensor(f) for f in images]  # every file checked before any is kept
        vecs = await asyncio.gather(*[ctx.embed_batcher.submit(x) for x, _, _ in prepared])

        def store_and_add() -> np.ndarray:
            # one writer at a time: a request that loses (409) removes only files it created while
            # holding the lock, so never the file of the request that won
            with ctx.gallery.write_lock:
                saved: list[tuple[Path, bool]] = []
                try:
                    for _, data, _ in prepared:
                        saved.append(store_upload(ctx.gallery.uploads, data))
                    return ctx.index.add(np.stack(vecs), [str(p) for p, _ in saved], pids, cams, times, srcs)
                except (HareidError, ValueError, OverflowError) as e:
                    for p, created in saved:  # keep no file the index does not hold
                        if created:
                            p.unlink(missing_ok=True)
                    raise UploadError(409 if "already in the index" in str(e) else 422,
                                      str(e).splitlines()[0]) from None

        ids = await run_in_threadpool(store_and_add)
        ctx.gallery.note_added(cams, srcs, times)
        items = await run_in_threadpool(ctx.index.get, ids.tolist())
        return AddOut(ids=ids.tolist(), items=[ctx.item_out(it) for it in items if it], count=len(ctx.index))

    @router.get("/gallery/{item_id}", response_model=ItemOut, summary="One gallery item")
    async def item(item_id: ItemId) -> ItemOut:
        return ctx.item_out(await run_in_threadpool(ctx.get_item, item_id))

    @router.get("/gallery/{item_id}/image", summary="A gallery item's image file",
             response_class=FileResponse)
    async def item_image(item_id: ItemId) -> FileResponse:
        it = await run_in_threadpool(ctx.get_item, item_id)
        real = ctx.gallery.resolve(it.path)
        if real is None:
            raise UploadError(404, f"image of gallery item {item_id} is not in the gallery folder")
        return FileResponse(real, media_type=mimetypes.guess_type(real.name)[0] or "image/jpeg",
                            headers={"Cache-Control": "max-age=3600"})

    @router.get("/gallery/{item_id}/attention.png", summary="Soft attention + hard regions per stage",
             response_class=Response)
    async def item_attention(item_id: ItemId) -> Response:
        png = ctx.attn_cache.get(item_id)
        if png is None:
            it = await run_in_threadpool(ctx.get_item, item_id)
            real = ctx.gallery.resolve(it.path)
            if real is None:
                raise UploadError(404, f"image of gallery item {item_id} is not in the gallery folder")
            data = await run_in_threadpool(real.read_bytes)
            x = await run_in_threadpool(lambda: ctx.embedder.preprocess(decode_image(data, ctx.limits, real.name)))
            png = await ctx.attn_batcher.submit(x)
            ctx.attn_cache.put(item_id, png)
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @router.delete("/gallery/{item_id}", summary="Remove an item (and its uploaded file)")
    async def delete(item_id: ItemId) -> dict[str, int]:
        it = await run_in_threadpool(ctx.get_item, item_id)

        def delete_and_unlink() -> bool:
            with ctx.gallery.write_lock:  # an add of the same image waits: it never loses its new file
                if not ctx.index.delete([item_id]):
                    return False
                real = ctx.gallery.resolve(it.path)
                if real is not None and real.is_relative_to(ctx.gallery.uploads_real):
                    real.unlink(missing_ok=True)
                return True

        if not await run_in_threadpool(delete_and_unlink):
            raise UploadError(404, f"gallery item {item_id} not found")
        ctx.attn_cache.drop(item_id)
        return {"deleted": item_id, "count": len(ctx.index)}

    return router
