"""`/api/health` and `/metrics`: one implementation, served by every long-running member."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from aiohttp import web
from nats.aio.client import Client
from pydantic import BaseModel, Field

from . import bus
from .app_keys import CONSUMERS, NC, POOL
from .http import within
from .metrics import metrics
from .openapi import doc

# Each dependency's check has this long; they run side by side, so /api/health answers well
# within 2 s whatever is down.
HEALTH_CHECK_TIMEOUT_S = 1.0


class Health(BaseModel):
    status: str = Field(description="ok, or unavailable")
    database: str | None = None
    nats: str | None = None
    details: dict[str, str] | None = Field(None, description="what failed, when unavailable")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/health", health)
    app.router.add_get("/metrics", metrics)


async def _select_one(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.fetchval("SELECT 1")


async def _database_problem(pool: asyncpg.Pool) -> str | None:
    try:
        await within(_select_one(pool), HEALTH_CHECK_TIMEOUT_S)
    except Exception as exc:  # any failure means unhealthy, whatever its kind
        return str(exc) or type(exc).__name__
    return None


async def _nats_problem(nc: Client) -> str | None:
    if not nc.is_connected:
        return "not connected"
    try:
        await within(nc.flush(), HEALTH_CHECK_TIMEOUT_S)
    except Exception as exc:
        return str(exc) or type(exc).__name__
    return None


@doc("Health: 200 only when the database and NATS answer", "health",
     responses={200: Health, 503: Health})  # fmt: skip
async def health(request: web.Request) -> web.Response:
    """200 only when every dependency this process has (database, NATS, its consumers)
    answers."""
    problems: dict[str, Any] = {}
    checks = {"nats": _nats_problem(request.app[NC])}
    if POOL in request.app:
        checks["database"] = _database_problem(request.app[POOL])
    for dependency, problem in zip(checks, await asyncio.gather(*checks.values()), strict=True):
        if problem:
            problems[dependency] = problem
    if CONSUMERS in request.app and (stopped := bus.stopped_consumers(request.app[CONSUMERS])):
        problems["consumers"] = f"stopped: {', '.join(stopped)}"
    if problems:
        return web.json_response({"status": "unavailable", "details": problems}, status=503)
    checked = {"database": "ok"} if POOL in request.app else {}
    return web.json_response({"status": "ok", **checked, "nats": "ok"})
