"""The snapshot cache: one database read a second, shared by every open page."""

from __future__ import annotations

import asyncio

import pytest
from offsim_dashboard.snapshot import SnapshotCache


async def test_snapshot_concurrent_requests_share_one_load():
    loads = 0
    release = asyncio.Event()

    async def load():
        nonlocal loads
        loads += 1
        await release.wait()
        return {"n": loads}

    cache = SnapshotCache(ttl_s=60)
    waiting = [asyncio.create_task(cache.get("summary", load)) for _ in range(20)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiting) == [{"n": 1}] * 20
    assert await cache.get("summary", load) == {"n": 1}
    assert await cache.get(("recent", 12), load) == {"n": 2}  # another key, another read
    assert loads == 2


async def test_snapshot_expired_entry_is_read_again():
    values = iter([1, 2])

    async def load():
        return next(values)

    cache = SnapshotCache(ttl_s=0.01)
    assert await cache.get("k", load) == 1
    await asyncio.sleep(0.02)
    assert await cache.get("k", load) == 2


async def test_snapshot_failed_read_is_not_kept():
    calls = 0

    async def load():
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database down")
        return "ok"

    cache = SnapshotCache(ttl_s=60)
    with pytest.raises(ConnectionError):
        await cache.get("k", load)
    assert await cache.get("k", load) == "ok"


async def test_snapshot_client_gone_does_not_cancel_the_shared_read():
    release = asyncio.Event()

    async def load():
        await release.wait()
        return "done"

    cache = SnapshotCache(ttl_s=60)
    first = asyncio.create_task(cache.get("k", load))
    second = asyncio.create_task(cache.get("k", load))
    await asyncio.sleep(0)
    first.cancel()
    release.set()
    assert await second == "done"
