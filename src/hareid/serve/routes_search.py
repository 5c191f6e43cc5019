"""Routes of ``hareid serve``: the page, health, embedding and search."""

# no "from __future__ import annotations": FastAPI reads these annotations at run time

import base64
import json
import time
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from hareid.index import Filter
from hareid.serve.context import ServeContext
from hareid.serve.gallery import MAX_ID
from hareid.serve.limits import UploadError
from hareid.serve.schemas import EmbedOut, GroupOut, Health, Match, Query, SearchOut, Seen

STATIC = Path(__file__).parent / "static"

__all__ = ["search_router"]


def search_router(ctx: ServeContext) -> APIRouter:
    """``/``, ``/healthz``, ``POST /embed``, ``POST /search`` over ``ctx``."""
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @router.get("/healthz", response_model=Health, summary="Liveness and gallery size")
    async def healthz() -> Health:
        d = await run_in_threadpool(ctx.index.describe)
        return Health(status="ok", backend=d["backend"], kind=d["kind"], dim=d["dim"],
                      count=d["count"], batching={"embed": ctx.embed_batcher.stats(),
                                                  "attention": ctx.attn_batcher.stats()})

    @router.post("/embed", response_model=EmbedOut, summary="Embed one image")
    async def embed(
        image: Annotated[UploadFile, File(description="JPEG, PNG, WebP or BMP")],
    ) -> EmbedOut:
        t0 = time.perf_counter()
        x, _, _ = await ctx.image_tensor(image)
        v = await ctx.embed_batcher.submit(x)
        return EmbedOut(dim=int(v.shape[0]), embedding=v.tolist(),
                        took_ms=1e3 * (time.perf_counter() - t0))

    @router.post("/search", response_model=SearchOut,
              summary="Top-k gallery matches of an image, an embedding or a gallery item")
    async def search(
        image: Annotated[UploadFile | None, File(description="query image (or embedding / gallery_id)")] = None,
        embedding: Annotated[str | None, Form(description="JSON list of `dim` floats")] = None,
        gallery_id: Annotated[int | None, Form(ge=0, le=MAX_ID, description="search with a gallery item's embedding")] = None,
        k: Annotated[int, Form(ge=1, le=ctx.limits.max_k, description="matches per page")] = 10,
        offset: Annotated[int, Form(ge=0, le=ctx.limits.max_offset, description="matches to skip (pages)")] = 0,
        camera: Annotated[list[str] | None, Form(description="only these cameras (repeat the field)")] = None,
        time_min: Annotated[float | None, Form(description="only items at or after this time")] = None,
        time_max: Annotated[float | None, Form(description="only items at or before this time")] = None,
        source: Annotated[list[str] | None, Form(description="only these sources (repeat the field)")] = None,
        attention: Annotated[bool, Form(description="also return the query's attention strip")] = False,
        group: Annotated[Literal["none", "tracklet"], Form(description="tracklet: one result per "
                         "person (tracklet), ranked by its best crop; k and offset count groups")] = "none",
        depth: Annotated[int | None, Form(ge=1, le=ctx.limits.max_depth, description="group=tracklet: "
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
            x, _, name = await ctx.image_tensor(image)
            q = await ctx.embed_batcher.submit(x)
            query = Query(kind="image", name=name)
        elif embedding is not None:
            try:
                q = np.asarray(json.loads(embedding), dtype=np.float32)
            except (ValueError, TypeError, RecursionError):
                raise UploadError(422, "embedding must be a JSON list of numbers") from None
            if q.shape != (ctx.index.dim,) or not np.isfinite(q).all():
                raise UploadError(422, f"embedding must be {ctx.index.dim} finite numbers, got shape "
                                       f"{list(q.shape)}")
            query = Query(kind="embedding")
        else:
            ctx.get_item(gallery_id)  # 404 when missing
            q = (await run_in_threadpool(ctx.index.vectors, [gallery_id]))[0]
            query = Query(kind="gallery", gallery_id=gallery_id)
        groups = None
        if group == "tracklet":
            depth = depth or min(ctx.limits.max_depth, max(500, 20 * (offset + k)))
            found = (await run_in_threadpool(ctx.index.search_groups, q[None], k,
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
            res = (await run_in_threadpool(ctx.index.search, q[None], k, None if flt.empty else flt,
                                           offset))[0]
            pairs = list(zip(res.scores.tolist(), res.items))
            has_more = len(pairs) == k
        results = [Match(rank=offset + j + 1, score=float(s), distance=float(max(0.0, 2 - 2 * s)),
                         **ctx.item_out(it).model_dump())
                   for j, (s, it) in enumerate(pairs)]
        strip = None
        if attention and x is not None:
            png = await ctx.attn_batcher.submit(x)
            strip = "data:image/png;base64," + base64.b64encode(png).decode()
        return SearchOut(query=query, k=k, offset=offset, has_more=has_more, results=results,
                         group=group, groups=groups, depth=depth, query_attention=strip,
                         took_ms=1e3 * (time.perf_counter() - t0))

    return router
