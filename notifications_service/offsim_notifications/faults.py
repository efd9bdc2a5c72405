"""The faults this replica applies, kept current from NATS KV, and shown at `GET /api/faults`."""

from __future__ import annotations

import asyncio

from aiohttp import web
from nats.js import JetStreamContext
from offsim_common.faults import FaultsView
from offsim_common.http import json_response

FAULTS = web.AppKey("faults", FaultsView)
# Starting waits this long for the stored faults; past it the replica starts with none and
# applies them when the watch delivers them.
READY_TIMEOUT_S = 10.0


async def follow_faults(js: JetStreamContext) -> tuple[FaultsView, asyncio.Task]:
    """Start watching the faults; return once the stored ones are read (before the first order
    is handled), with the watching task."""
    view = FaultsView()
    ready = asyncio.Event()
    task = asyncio.create_task(view.follow(js, ready.set), name="faults")
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    return view, task


async def get_faults(request: web.Request) -> web.Response:
    return json_response(request.app[FAULTS].current.model_dump())


def add_routes(view: FaultsView):
    def add(app: web.Application) -> None:
        app[FAULTS] = view
        app.router.add_get("/api/faults", get_faults)

    return add
