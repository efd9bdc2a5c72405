"""Group commit: concurrent calls gathered into one batch, each caller answered with its own result.

No timer: while `concurrency` batches are in flight, new items wait and leave together in the
next batch as soon as a slot frees. Under light load an item goes alone at once (nothing waits
for company); under heavy load batches grow by themselves, so one statement and one commit serve
many requests and the database's round trips stop being the limit.

An optional second stage (`after`) runs once the batch is committed and its slot is free again:
the next batch commits while this one is announced, and callers are answered after both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Runs one batch: one result per item, in order; an exception in the list fails only its item.
RunBatch = Callable[[list[T]], Awaitable[list[R | Exception]]]
# Follows a committed batch, outside the commit slots (publishing it); its results replace the
# batch's (an exception in the list fails only its item).
AfterBatch = Callable[[list[T], list[R | Exception]], Awaitable[list[R | Exception]]]


class GroupCommit(Generic[T, R]):
    def __init__(
        self,
        run: RunBatch,
        *,
        after: AfterBatch | None = None,
        max_batch: int = 256,
        concurrency: int = 2,
        observe: Callable[[int], None] | None = None,
    ) -> None:
        self._run = run
        self._observe = observe  # told each batch's size (a metric)
        self._after = after
        self._stages: set[asyncio.Task] = set()
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
            if self._observe is not None:
                self._observe(len(batch))
            task = asyncio.create_task(self._flush(batch))
            self._running.add(task)

    async def _flush(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        task = asyncio.current_task()
        items = [item for item, _ in batch]
        try:
            try:
                results: list[R | Exception] = await self._run(items)
            except Exception as exc:  # the whole batch failed: every caller gets why
                results = [exc] * len(batch)
            if self._after is not None:
                # The commit slot is free for the next batch while this one goes on.
                self._running.discard(task)
                self._stages.add(task)
                self._start()
                try:
                    results = await self._after(items, results)
                except Exception as exc:
                    results = [exc] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():  # its caller gave up (a deadline); the result stands anyway
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            self._stages.discard(task)
            if task in self._running:
                self._running.discard(task)
                self._start()

    async def close(self) -> None:
        """Wait for the batches in flight and those still waiting."""
        while self._running or self._stages:
            await asyncio.gather(*self._running, *self._stages, return_exceptions=True)
