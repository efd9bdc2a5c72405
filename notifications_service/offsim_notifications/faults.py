"""The faults this replica applies, kept current from NATS KV, and shown at `GET /api/faults`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web
from offsim_common.app_keys import JS
from offsim_common.faults import FaultsView
from offsim_common.http import json_response

FAULTS = web.AppKey("faults", FaultsView)
# Starting waits this long for the stored faults; past it the replica starts with none and
# applies them when the watch delivers them.
READY_TIMEOUT_S = 10.0


async def faults_ctx(app: web.Application) -> AsyncIterator[None]:
    """Watch the faults for the app's lifetime; entered before the consumers, so the stored
    faults are read before the first order is handled."""
    view = app[FAULTS] = FaultsView()
    ready = asyncio.Event()
    task = asyncio.create_task(view.follow(app[JS], ready.set), name="faults")
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def get_faults(request: web.Request) -> web.Response:
    return json_response(request.app[FAULTS].current.model_dump())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/faults", get_faults)
