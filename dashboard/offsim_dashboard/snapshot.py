"""One database read shared by every browser: snapshot answers are kept for a second.

Each open page asks for its snapshot every few seconds; without sharing, the database work grows
with the number of viewers. Concurrent requests for the same answer wait on the same query; a
failed query is not kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

TTL_S = 1.0


class SnapshotCache:
    def __init__(self, ttl_s: float = TTL_S) -> None:
        self.ttl_s = ttl_s
        self.entries: dict[Hashable, tuple[float, asyncio.Task]] = {}

    async def get(self, key: Hashable, load: Callable[[], Awaitable[Any]]) -> Any:
        now = asyncio.get_running_loop().time()
        entry = self.entries.get(key)
        if entry is None or entry[0] < now or _failed(entry[1]):
            task = asyncio.ensure_future(load())
            entry = self.entries[key] = (now + self.ttl_s, task)
        # A client that goes away does not cancel the query the others wait on.
        return await asyncio.shield(entry[1])


def _failed(task: asyncio.Task) -> bool:
    return task.done() and (task.cancelled() or task.exception() is not None)
