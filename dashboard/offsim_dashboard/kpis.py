"""The simulation's KPIs, live (offsim_common.kpis for what each means): `GET /api/kpis`, the
page's panel and the `offsim_kpi` gauges, all from one read of the database's totals
(offsim_common.kpis_db), shared like the other snapshots. The gauges are refreshed in the
background too, so that a scrape is current with no page open."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import web
from offsim_common import kpis, kpis_db
from offsim_common.app_keys import POOL, SETTINGS
from offsim_common.http import json_response, query_params
from prometheus_client import Gauge

from .app_keys import SNAPSHOTS

log = logging.getLogger(__name__)

KPI = Gauge(
    "offsim_kpi",
    "The simulation's KPIs by name (docs/kpis.md); NaN while there is nothing to measure",
    ["kpi"],
)
GAUGES_EVERY_S = 5.0


async def load(pool: asyncpg.Pool, sim_speed: float) -> dict[str, Any]:
    async with pool.acquire() as conn:
        totals = await kpis_db.lifetime(conn, sim_speed)
    values = kpis.rounded(kpis.compute(totals))
    for name, value in values.items():
        KPI.labels(name).set(math.nan if value is None else value)
    # Under `kpis`, as in a dry run's summary and a report.json (one reader reads all three),
    # and each at the top level too, for a glance (curl | jq .fill_rate).
    return {
        **values,
        "kpis": values,
        "basis": {
            "units_wanted": totals.units_wanted,
            "units_short": totals.units_short,
            "restocks": totals.restocks,
            "completed": totals.completed,
            "cancelled": totals.cancelled,
            "lead_times_of": len(totals.lead_times),
            "watched_product_days": round(totals.watched_s / kpis.DAY_S, 3),
            "ssd_days": round(totals.ssd_s / kpis.DAY_S, 3),
        },
        "at": datetime.now(UTC),
    }


async def get_kpis(request: web.Request) -> web.Response:
    query_params(request, set())
    app = request.app
    speed = app[SETTINGS].sim_speed
    return json_response(await app[SNAPSHOTS].get("kpis", lambda: load(app[POOL], speed)))


async def gauges_ctx(app: web.Application) -> AsyncIterator[None]:
    async def refresh() -> None:
        speed = app[SETTINGS].sim_speed
        while True:
            try:
                await app[SNAPSHOTS].get("kpis", lambda: load(app[POOL], speed))
            except Exception:  # any failure: refreshed again next time
                log.exception("KPIs not refreshed")
            await asyncio.sleep(GAUGES_EVERY_S)

    task = asyncio.create_task(refresh(), name="kpi-gauges")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
