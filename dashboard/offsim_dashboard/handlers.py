"""HTTP views: the page, its JSON snapshot and the event stream.

The snapshot answers are read once a second at most, whatever the number of open pages (see
`snapshot.py`); the `load_*` functions are those reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from offsim_common.app_keys import POOL, SETTINGS
from offsim_common.errors import Unavailable
from offsim_common.events import OrderStatus
from offsim_common.http import int_param, json_response, query_params

from . import events, queries
from .app_keys import HTTP, HUB, SNAPSHOTS
from .settings import DashboardSettings

STATIC = Path(__file__).parent / "static"
KEEPALIVE_S = 15.0
# Tells the browser how soon to reconnect a dropped stream.
RETRY_MS = 2000


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def load_summary(pool: asyncpg.Pool) -> dict[str, Any]:
    async with pool.acquire() as conn:
        counts = await queries.count_entities(conn)
        by_status = await queries.count_orders_by_status(conn)
        stage_seconds = await queries.stage_seconds(conn)
        demand = await queries.demand(conn)
    orders = {status.value: by_status.get(status.value, 0) for status in OrderStatus}
    return {
        **counts,
        "orders": {"total": sum(orders.values()), **orders},
        # Over the newest orders: seconds pending, shipped, and from placed to completed.
        "stage_seconds": stage_seconds,
        "demand": demand_figures(demand),
        "at": datetime.now(UTC),
    }


def short_share(units_short: int, units_wanted: int) -> float | None:
    """The share of the units wanted that found no stock; None (not 0) before any was wanted,
    so that "nothing asked yet" never reads as "every demand met"."""
    return units_short / units_wanted if units_wanted else None


def demand_figures(row: dict[str, Any]) -> dict[str, Any]:
    """The SSDs' demand as the page shows it: the headline figures (readings a second over the
    last minute, the lifetime share that found no stock), then what they are made of."""
    window = (row["until"] - row["since"]).total_seconds()
    return {
        "readings_per_second": row["minute_readings"] / window,
        "short_share": short_share(row["units_short"], row["units_wanted"]),
        "last_minute": {
            "since": row["since"],
            "until": row["until"],
            "readings": row["minute_readings"],
            "units_wanted": row["minute_units_wanted"],
            "units_short": row["minute_units_short"],
            "short_share": short_share(row["minute_units_short"], row["minute_units_wanted"]),
        },
        "lifetime": {
            "readings": row["readings"],
            "units_wanted": row["units_wanted"],
            "units_short": row["units_short"],
            "short_share": short_share(row["units_short"], row["units_wanted"]),
        },
    }


async def load_recent(pool: asyncpg.Pool, limit: int) -> dict[str, Any]:
    async with pool.acquire() as conn:
        orders = await queries.recent_orders(conn, limit)
        transitions = await queries.recent_transitions(conn, limit)
    return {"orders": orders, "transitions": transitions}


async def load_ssds(pool: asyncpg.Pool, limit: int) -> dict[str, Any]:
    async with pool.acquire() as conn:
        ssds = await queries.active_ssds(conn, limit)
        stock = await queries.stock_of(conn, [ssd["id"] for ssd in ssds])
    by_ssd: dict[int, list[dict[str, Any]]] = {ssd["id"]: [] for ssd in ssds}
    for item in stock:
        ssd_id = item.pop("ssd_id")
        item["below_reorder_point"] = item["quantity"] < item["reorder_point"]
        by_ssd[ssd_id].append(item)
    return {
        "ssds": [
            {
                "id": ssd["id"],
                "mac_address": ssd["mac_address"],
                "owner": f"{ssd['first_name']} {ssd['last_name'][:1]}.",
                "stock": by_ssd[ssd["id"]],
            }
            for ssd in ssds
        ]
    }


async def load_throughput(pool: asyncpg.Pool, minutes: int) -> dict[str, Any]:
    async with pool.acquire() as conn:
        series = await queries.throughput(conn, minutes)
    return {"minutes": minutes, "series": series}


async def _health(http: aiohttp.ClientSession, url: str) -> str:
    try:
        async with http.get(f"{url}/api/health") as resp:
            return "ok" if resp.status == 200 else "unavailable"
    except (aiohttp.ClientError, TimeoutError):
        return "unreachable"


async def load_services(http: aiohttp.ClientSession, settings: DashboardSettings) -> dict[str, Any]:
    services = {"users": settings.users_url, "orders": settings.orders_url}
    statuses = await asyncio.gather(*(_health(http, url) for url in services.values()))
    return {
        "services": [
            {"name": name, "url": url, "status": status}
            for (name, url), status in zip(services.items(), statuses, strict=True)
        ]
    }


async def snapshot(
    request: web.Request, key: Hashable, load: Callable[[asyncpg.Pool], Awaitable[dict]]
) -> web.Response:
    """Answer from the shared snapshot for `key`, read from the database at most once a second
    whatever the number of open pages."""
    pool = request.app[POOL]
    return json_response(await request.app[SNAPSHOTS].get(key, lambda: load(pool)))


async def get_summary(request: web.Request) -> web.Response:
    query_params(request, set())
    return await snapshot(request, "summary", load_summary)


async def get_recent(request: web.Request) -> web.Response:
    query = query_params(request, {"limit"})
    limit = int_param(query.get("limit"), "limit", default=12, minimum=1, maximum=100)
    return await snapshot(request, ("recent", limit), lambda pool: load_recent(pool, limit))


async def list_ssds(request: web.Request) -> web.Response:
    query = query_params(request, {"limit"})
    limit = int_param(query.get("limit"), "limit", default=4, minimum=1, maximum=24)
    return await snapshot(request, ("ssds", limit), lambda pool: load_ssds(pool, limit))


async def get_throughput(request: web.Request) -> web.Response:
    query = query_params(request, {"minutes"})
    minutes = int_param(query.get("minutes"), "minutes", default=15, minimum=1, maximum=120)
    return await snapshot(
        request, ("throughput", minutes), lambda pool: load_throughput(pool, minutes)
    )


async def get_services(request: web.Request) -> web.Response:
    """The health of the services the dashboard shows (USERS_URL, ORDERS_URL)."""
    query_params(request, set())
    app = request.app
    body = await app[SNAPSHOTS].get("services", lambda: load_services(app[HTTP], app[SETTINGS]))
    return json_response(body)


async def generator_control(request: web.Request) -> web.Response:
    """GET and PUT /api/generator: the generator's `/api/control` (GENERATOR_URL), through the
    dashboard, so the page needs no other origin. A PUT's body goes as it came; the generator's
    answer, 4xx included, comes back as it is. Reading is open; a PUT reaches this handler only
    with a control token (control_auth.py). That token is the dashboard's to check and is not
    passed on: the generator's control API takes no credential, it listens on the private
    network the simulation runs on."""
    query_params(request, set())
    app = request.app
    url = f"{app[SETTINGS].generator_url}/api/control"
    headers = {"Content-Type": "application/json"}
    data = await request.read() if request.method == "PUT" else None
    try:
        async with app[HTTP].request(request.method, url, data=data, headers=headers) as resp:
            body = await resp.read()
            return web.Response(body=body, status=resp.status, content_type="application/json")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise Unavailable(
            f"the generator at {app[SETTINGS].generator_url} does not answer",
            {"generator": str(exc) or type(exc).__name__},
        ) from None


async def stream_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: `order` and `user`, as they happen, until the client leaves."""
    query_params(request, set())
    response = web.StreamResponse(headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response.content_type = "text/event-stream"
    # Registered before the headers go out: once a client sees the response, it gets every event.
    with request.app[HUB].client() as queue:
        await response.prepare(request)
        try:
            await response.write(f"retry: {RETRY_MS}\n\n".encode())
            async for frame in events.stream(queue, KEEPALIVE_S):
                await response.write(frame)
        except ConnectionResetError:
            pass  # the browser went away
    return response
