"""Group commit: concurrent calls gathered into one batch, each caller answered with its own result.

No timer: while `concurrency` batches are in flight, new items wait and leave together in the
next batch as soon as a slot frees. Under light load an item goes alone at once (nothing waits
for company); under heavy load batches grow by themselves, so one statement and one commit serve
many requests and the database's round trips stop being the limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Runs one batch: one result per item, in order; an exception in the list fails only its item.
RunBatch = Callable[[list[T]], Awaitable[list[R | Exception]]]


class GroupCommit(Generic[T, R]):
    def __init__(self, run: RunBatch, *, max_batch: int = 256, concurrency: int = 2) -> None:
        self._run = run
        self._max_batch = max_batch
        self._concurrency = concurrency
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._running: set[asyncio.Task] = set()

    async def submit(self, item: T) -> R:
        """The item's own result, once its batch is done (committed)."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        self._start()
        return await future

    def _start(self) -> None:
        while self._waiting and len(self._running) < self._concurrency:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
            task = asyncio.create_task(self._flush(batch))
            self._running.add(task)

    async def _flush(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            try:
                results: list[R | Exception] = await self._run([item for item, _ in batch])
            except Exception as exc:  # the whole batch failed: every caller gets why
                results = [exc] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():  # its caller gave up (a deadline); the result stands anyway
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            self._running.discard(asyncio.current_task())
            self._start()

    async def close(self) -> None:
        """Wait for the batches in flight and those still waiting."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
