"""The orders service's application factory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web
from offsim_common import subjects
from offsim_common.app_keys import JS, NC, POOL, SETTINGS
from offsim_common.auth import TOKENS, TokenCache
from offsim_common.endpoints import VERSION, micro_ctx
from offsim_common.http import REQUEST_DEADLINE_S
from offsim_common.openapi import setup_openapi
from offsim_common.service import base_app, consumers_ctx

from . import counters, device_orders, nats_handlers
from .app_keys import MARKS, PLACER, ROW_TURNS
from .orders import PublishedMarks, order_placer, republish_forever
from .reconciler import reconcile_forever
from .retention import retain_forever
from .routes import setup_routes
from .settings import OrdersSettings


async def placing_ctx(app: web.Application) -> AsyncIterator[None]:
    """Group commit of new orders, batched marks of published ones; both finish their work in
    flight at shutdown, before the pool closes."""
    app[MARKS] = PublishedMarks(app[POOL], app[ROW_TURNS])
    app[PLACER] = order_placer(app[POOL], app[NC], app[JS], app[MARKS])
    yield
    await app[PLACER].close()
    await app[MARKS].close()


async def background_ctx(app: web.Application) -> AsyncIterator[None]:
    """The re-publisher of unpublished orders, the reconciler of overdue ones and the announcer
    of the restock orders the backend placed on readings."""
    tasks = [
        asyncio.create_task(republish_forever(app[POOL], app[JS]), name="republisher"),
        asyncio.create_task(
            device_orders.announce_forever(
                app[POOL], app[SETTINGS].database_url, app[NC], app[JS], app[MARKS]
            ),
            name="restock-announcer",
        ),
        asyncio.create_task(
            reconcile_forever(app[POOL], app[JS], app[SETTINGS], app[ROW_TURNS]), name="reconciler"
        ),
        # Finished orders past OFFSIM_ORDER_RETENTION deleted (retention.py).
        asyncio.create_task(
            retain_forever(app[POOL], app[SETTINGS].order_retention), name="retention"
        ),
        # The order counters' ledgers kept short (counters.py).
        asyncio.create_task(counters.fold_forever(app[POOL]), name="counters-fold"),
    ]
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


def create_app(settings: OrdersSettings) -> web.Application:
    app = base_app(settings, "orders", deadline_s=REQUEST_DEADLINE_S)
    app[ROW_TURNS] = asyncio.Lock()
    app.cleanup_ctx.append(
        micro_ctx(
            "orders",
            "offsim orders and products",
            subjects.ORDERS_QUEUE,
            lambda app: {
                "random-barcode": (
                    subjects.ORDERS_RANDOM,
                    nats_handlers.random_barcode_endpoint(app[POOL]),
                )
            },
        )
    )
    app[TOKENS] = TokenCache()
    app.cleanup_ctx.append(placing_ctx)
    app.cleanup_ctx.append(
        consumers_ctx(lambda app: nats_handlers.transition_consumers(app[POOL], app[ROW_TURNS]))
    )
    app.cleanup_ctx.append(background_ctx)
    setup_routes(app)
    setup_openapi(
        app,
        "offsim orders service",
        VERSION,
        "Orders, their transitions (pending, shipped, completed or cancelled) and the Open Food "
        "Facts products.",
    )
    return app
