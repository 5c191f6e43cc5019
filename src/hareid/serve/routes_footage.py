"""Routes of ``hareid serve``: "show in footage" (the frame a crop was cut from, its box drawn,
frames around it), for footage named on the command line (``--footage``)."""

# no "from __future__ import annotations": FastAPI reads these annotations at run time

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from hareid.serve.context import ServeContext
from hareid.serve.footage import MAX_CONTEXT, MAX_STEP, footage_view
from hareid.serve.gallery import MAX_ID

__all__ = ["footage_router"]

ItemId = Annotated[int, PathParam(ge=0, le=MAX_ID, description="gallery item id")]


def footage_router(ctx: ServeContext) -> APIRouter:
    """``GET /gallery/{id}/footage`` over ``ctx`` (JPEG; errors are :class:`FootageError`)."""
    router = APIRouter()

    @router.get("/gallery/{item_id}/footage", response_class=Response,
                summary="The frame a crop was cut from, with its box, and frames around it (JPEG)")
    async def item_footage(
        item_id: ItemId,
        context: int = Query(2, ge=0, le=MAX_CONTEXT, description="frames either side"),
        step: int = Query(5, ge=1, le=MAX_STEP, description="frames between two shown"),
        width: int = Query(480, ge=64, le=1280, description="pixels per frame at most"),
    ) -> Response:
        it = await run_in_threadpool(ctx.get_item, item_id)
        jpeg = await run_in_threadpool(lambda: footage_view(
            ctx.footage, it.source, it.frame, it.box, context=context, step=step, width=width,
            max_pixels=ctx.limits.max_pixels))
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    return router
