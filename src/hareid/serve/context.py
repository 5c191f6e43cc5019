"""What the routes of ``hareid serve`` share: the embedder, the gallery, the limits, the model's
micro-batchers (one model thread) and the attention-strip cache."""

# no "from __future__ import annotations": FastAPI reads route annotations at run time

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from hareid.index import Item
from hareid.serve.batching import MicroBatcher
from hareid.serve.footage import FootageAccess
from hareid.serve.gallery import LRU, Gallery
from hareid.serve.limits import Limits, UploadError, check_filename, decode_image
from hareid.serve.schemas import ItemOut

__all__ = ["ServeContext"]


class ServeContext:
    """The shared state of one app. Model calls go through two :class:`MicroBatcher` (embeddings,
    attention strips) on one model thread."""

    def __init__(self, embedder: Any, gallery: Gallery, limits: Limits, max_batch: int, max_wait_s: float,
                 footage: FootageAccess | None = None) -> None:
        from hareid.serve.render import attention_strips

        self.embedder, self.gallery, self.limits = embedder, gallery, limits
        self.footage = footage if footage is not None else FootageAccess()  # --footage paths
        self.index = gallery.index
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hareid-model")
        self.embed_batcher = MicroBatcher(lambda xs: list(embedder.embed(torch.stack(list(xs)))), self.executor,
                                          max_batch=max_batch, max_wait_s=max_wait_s, name="embed")
        self.attn_batcher = MicroBatcher(lambda xs: attention_strips(embedder.model, xs), self.executor,
                                         max_batch=16, max_wait_s=max_wait_s, name="attention")
        self.attn_cache = LRU(512)

    async def close(self, close_gallery: bool) -> None:
        await self.embed_batcher.close()
        await self.attn_batcher.close()
        self.executor.shutdown(wait=True)
        if close_gallery:
            self.index.close()

    def item_out(self, it: Item) -> ItemOut:
        shown = it.frame >= 0 and self.footage.resolve(it.source) is not None
        return ItemOut(id=it.id, name=Path(it.path).name, path=self.gallery.relative(it.path),
                       camera=it.camera, time=it.time, source=it.source, pid=it.pid,
                       tracklet=it.tracklet, frame=it.frame,
                       box=None if it.box is None else list(it.box),
                       image_url=f"/gallery/{it.id}/image",
                       attention_url=f"/gallery/{it.id}/attention.png",
                       footage_url=f"/gallery/{it.id}/footage" if shown else None)

    async def image_tensor(self, upload: Any) -> tuple[torch.Tensor, bytes, str]:
        """An uploaded image: checked name, bounded read, decoded and resized off the event loop."""
        from fastapi.concurrency import run_in_threadpool

        name = check_filename(upload.filename)
        data = await upload.read(self.limits.max_image_bytes + 1)

        def prepare() -> torch.Tensor:  # decode (bounded) + resize: off the event loop
            return self.embedder.preprocess(decode_image(data, self.limits, name))

        return await run_in_threadpool(prepare), data, name

    def get_item(self, item_id: int) -> Item:
        it = self.index.get([item_id])[0]
        if it is None:
            raise UploadError(404, f"gallery item {item_id} not found")
        return it
