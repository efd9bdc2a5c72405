"""The one runner of every service."""

from __future__ import annotations

import asyncio
import gc

from aiohttp import web
from offsim_common import service
from offsim_common.app_keys import NAME, STOP

from tests.conftest import eventually


async def test_run_freezes_what_start_up_made_and_stops_on_its_event():
    """Once the app is up, the objects start-up made are out of the collector's reach (a full
    collection walking them paused a service for tens of milliseconds); STOP ends the run."""
    gc.unfreeze()
    app = web.Application()
    app[NAME] = "test"
    app[STOP] = asyncio.Event()
    running = asyncio.create_task(service.run(app, 0))
    try:

        async def frozen() -> int:
            return gc.get_freeze_count()

        assert await eventually(frozen, within=10) > 0
        app[STOP].set()
        await asyncio.wait_for(running, 10)
    finally:
        running.cancel()
        gc.unfreeze()
