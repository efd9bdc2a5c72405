"""The stock's share of time at zero (the `stockout_share` KPI, offsim_common.kpis), sampled:
every OFFSIM_KPI_SAMPLE_S, one replica counts the watched products at zero, every watched
product and every SSD, and adds each count times the simulated time since the previous sample
to the current demand bucket (queries.sample_stock). One pass over the stock table a period:
its cost follows the city, not its history, and stays off the readings' path (a clock per
product, kept by each reading, would add a write to every one)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web
from offsim_common.app_keys import POOL, SETTINGS

from . import queries

log = logging.getLogger(__name__)


async def sample_forever(pool: asyncpg.Pool, every_s: float, sim_speed: float) -> None:
    while True:
        try:
            async with pool.acquire() as conn:
                await queries.sample_stock(conn, sim_speed, every_s)
        except Exception:  # any failure: the next sample counts the time since
            log.exception("stock sample failed")
        await asyncio.sleep(every_s)


async def stock_samples_ctx(app: web.Application) -> AsyncIterator[None]:
    """The sampling loop, for the app's lifetime (every replica runs one; one samples at a
    time); none with OFFSIM_KPI_SAMPLE_S=0."""
    settings = app[SETTINGS]
    task = None
    if settings.kpi_sample_s > 0:
        task = asyncio.create_task(
            sample_forever(app[POOL], settings.kpi_sample_s, settings.sim_speed),
            name="stock-samples",
        )
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
