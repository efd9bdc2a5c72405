"""The dashboard's application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from offsim_common.app_keys import NC, POOL
from offsim_common.service import base_app

from . import events, kpis
from .app_keys import HTTP, HUB, SNAPSHOTS
from .control_auth import control_guard
from .routes import setup_routes
from .settings import DashboardSettings
from .snapshot import SnapshotCache

# The services' health is a glance, not a wait: a slow one shows as unreachable.
HEALTH_TIMEOUT_S = 2.0


async def events_ctx(app: web.Application) -> AsyncIterator[None]:
    """Subscribe to the events once NATS is open; unsubscribe before it drains."""
    subs = await events.subscribe(app[NC], app[HUB], app[POOL])
    yield
    for sub in subs:
        if not app[NC].is_closed:
            await sub.unsubscribe()


async def http_ctx(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)
    ) as session:
        app[HTTP] = session
        yield


async def close_streams(app: web.Application) -> None:
    app[HUB].close()


def create_app(settings: DashboardSettings) -> web.Application:
    app = base_app(settings, "dashboard")
    # Inside the shared error middleware, which turns a refusal into the JSON 401.
    app.middlewares.append(control_guard(settings))
    app[HUB] = events.EventHub()
    app[SNAPSHOTS] = SnapshotCache()
    app.cleanup_ctx.append(events_ctx)
    app.cleanup_ctx.append(http_ctx)
    app.cleanup_ctx.append(kpis.gauges_ctx)
    # Open event streams would hold up the shutdown; end them first.
    app.on_shutdown.append(close_streams)
    setup_routes(app)
    return app
