"""Micro-batching: concurrent requests share one model call.

A request puts its item on a queue and awaits a future. One task per batcher takes the first
waiting item, gathers more for up to ``max_wait_s`` (or until ``max_batch``), runs ``fn`` on the
whole list in the model thread, and resolves every future. While the model is busy new requests
queue up, so under load batches fill by themselves; alone, a request waits at most ``max_wait_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any


class MicroBatcher:
    """``await batcher.submit(item)`` -> ``fn([...items])[i]``, batched across callers."""

    def __init__(self, fn: Callable[[Sequence[Any]], Sequence[Any]], executor: Executor,
                 max_batch: int = 32, max_wait_s: float = 0.004, name: str = "model"):
        self.fn, self.executor, self.name = fn, executor, name
        self.max_batch, self.max_wait_s = int(max_batch), float(max_wait_s)
        self.calls = self.items = self.largest = 0
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def stats(self) -> dict[str, Any]:
        return {"calls": self.calls, "items": self.items, "largest_batch": self.largest,
                "mean_batch": round(self.items / self.calls, 2) if self.calls else 0.0}

    async def submit(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop, self._queue = loop, asyncio.Queue()
            self._task = loop.create_task(self._run(), name=f"batcher-{self.name}")
        fut = loop.create_future()
        await self._queue.put((item, fut))  # type: ignore[union-attr]
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        assert queue is not None
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), left))
                except asyncio.TimeoutError:
                    break
            live = [(x, f) for x, f in batch if not f.cancelled()]
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self.executor, self.fn, [x for x, _ in live])
            except Exception as e:  # every waiter gets the error
                for _, f in live:
                    if not f.done():
                        f.set_exception(e)
                continue
            self.calls += 1
            self.items += len(live)
            self.largest = max(self.largest, len(live))
            for (_, f), r in zip(live, results):
                if not f.done():
                    f.set_result(r)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._task
            self._task = None
