"""The users service's retention: the applied reading ids past the horizon in which a reading
can come again, and the demand buckets older than a day (folded, not lost).

A reading id is what makes a reading sent or delivered again a no-op, so it is kept as long
as the same reading can come again (OFFSIM_READING_RETENTION, a day by default), and no longer:

- from the stream, which hands an applied reading out again when its ack was lost (a replica
  that crashed between its commit and its acks), for as long as it holds the reading:
  `bus.READINGS_MAX_AGE_S` after it was published at most;
- from its device, which sends again a reading it got no ack for: 12 hours after it first
  sent it, at most (and that copy, too, waits in the stream at most its max age).

A reading older than the horizon, sent again, is applied again. A shorter horizon suits a
city whose devices never send old readings again (the generator's do it within seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web
from offsim_common import retention
from offsim_common.app_keys import POOL, SETTINGS

from . import queries

# The dashboard reads the last minute of demand buckets and the sum of them all; a day of them
# is kept for a person's queries, older ones are folded into one.
DEMAND_BUCKETS_KEPT_S = 24 * 3600.0


async def delete_reading_ids(pool: asyncpg.Pool, kept_s: float, batch: int) -> int:
    async with pool.acquire() as conn:
        return await queries.delete_reading_ids(conn, kept_s, batch)


async def fold_demand(pool: asyncpg.Pool, batch: int) -> int:
    async with pool.acquire() as conn:
        return await queries.fold_demand(conn, DEMAND_BUCKETS_KEPT_S, batch)


async def retention_ctx(app: web.Application) -> AsyncIterator[None]:
    """The retention loop, for the app's lifetime (every replica runs one)."""
    pool = app[POOL]
    kept_s = app[SETTINGS].reading_retention
    prunes = {"ssd_demand": lambda batch: fold_demand(pool, batch)}
    if kept_s > 0:
        prunes["ssd_readings"] = lambda batch: delete_reading_ids(pool, kept_s, batch)
    task = asyncio.create_task(retention.prune_forever(prunes), name="retention")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
