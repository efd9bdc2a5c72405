"""The dashboard in this process on the test run's real NATS and Postgres, and an SSE reader."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import ClientResponse


@pytest.fixture
async def dashboard(aiohttp_client, settings, pool, nc):
    from offsim_dashboard.app import create_app

    return await aiohttp_client(create_app(settings))


async def next_event(resp: ClientResponse, within: float = 10.0) -> tuple[str, dict]:
    """The next server-sent event on `resp` as (event, data); comments and `retry:` skipped."""

    async def read() -> tuple[str, dict]:
        event, data = "message", []
        while True:
            line = (await resp.content.readline()).decode()
            if not line:
                raise AssertionError("the event stream ended")
            line = line.rstrip("\n")
            if line == "":
                if data:
                    return event, json.loads("\n".join(data))
                event = "message"
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())

    return await asyncio.wait_for(read(), within)
