"""The live feed `offsim up` prints: registrations, orders and their transitions, with counts.

It follows the streams the services write (ordered consumers from now on), so it shows what
really crossed the bus, once. Each line ends with the counts and, read from the generator's
`GET /api/control` (GENERATOR_URL) every few seconds, the scenario's phase and the generator's
event rate.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from datetime import datetime
from typing import TextIO

import aiohttp
import asyncpg
from nats.aio.client import Client
from nats.aio.msg import Msg
from offsim_common import bus, subjects
from offsim_common.db import create_pool
from offsim_common.events import OrderEvent, UserRegistered
from offsim_common.products import ProductNames
from offsim_common.settings import GeneratorUrl, ServiceSettings
from pydantic import BaseModel, ValidationError

MARKS = {"pending": "⋯", "shipped": "→", "completed": "✓", "cancelled": "✗"}
# Real seconds between two reads of the generator's phase and rate.
GENERATOR_EVERY_S = 2.0


async def follow(
    settings: ServiceSettings, stop: asyncio.Event, generator_url: str | None = None
) -> None:
    """`offsim feed`: the live feed of a simulation running elsewhere (compose, Kubernetes),
    from its NATS_URL and DATABASE_URL, until `stop`."""
    pool = await create_pool(settings.database_url, max_size=2)
    nc = await bus.connect(
        settings.nats_url, "offsim-feed", settings.nats_user, settings.nats_password
    )
    try:
        # As a viewer (the dashboard's user: docs/security.md) it may not make streams; it
        # follows those the services made. Anonymous, it makes them as a member would.
        if not settings.nats_user:
            await bus.ensure_streams(nc.jetstream(), settings.stream_replicas)
        feed = Feed(pool)
        await feed.subscribe(nc)
        feed.say(f"following {settings.nats_url}")
        watching = asyncio.create_task(
            feed.follow_generator(generator_url or GeneratorUrl().generator_url)
        )
        await stop.wait()
        watching.cancel()
    finally:
        await nc.close()
        await pool.close()


class GeneratorState(BaseModel):
    """What the feed reads of the generator's GET /api/control (only what it shows)."""

    scenario: str | None = None
    phase: str
    paused: bool = False
    event_rate: float = 0.0


class Feed:
    def __init__(self, pool: asyncpg.Pool, out: TextIO | None = None) -> None:
        self.names = ProductNames(pool)
        self.out = out  # None: whatever sys.stdout is when a line is printed
        # Events seen since start: orders placed, shipped, completed, cancelled.
        self.counts: Counter[str] = Counter()
        # The generator's phase and event rate, once read.
        self.generator: str = ""

    async def subscribe(self, nc: Client) -> None:
        js = nc.jetstream()
        await bus.watch(js, [subjects.USERS_REGISTERED], self._on_user)
        await bus.watch(js, list(subjects.ORDERS_STREAM_SUBJECTS), self._on_order)

    def say(self, text: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        totals = (
            f"users {self.counts['users']} · orders {self.counts['pending']} · "
            f"shipped {self.counts['shipped']} · completed {self.counts['completed']}"
        )
        if self.counts["cancelled"]:
            totals += f" · cancelled {self.counts['cancelled']}"
        if self.generator:
            totals += f" · {self.generator}"
        print(f"{stamp}  {text:<70} [{totals}]", file=self.out or sys.stdout, flush=True)

    async def follow_generator(self, url: str, every_s: float = GENERATOR_EVERY_S) -> None:
        """Keep `generator` current ("phase steady · 12.5 ev/s") until cancelled; a line says
        when the phase changes. A generator not answering shows nothing."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            phase = None
            while True:
                try:
                    async with http.get(f"{url}/api/control") as resp:
                        body = await resp.read() if resp.status == 200 else None
                    state = GeneratorState.model_validate_json(body) if body else None
                except (aiohttp.ClientError, TimeoutError, ValidationError):
                    state = None
                if state is not None:
                    paused = " (paused)" if state.paused else ""
                    self.generator = f"phase {state.phase}{paused} · {state.event_rate:.1f} ev/s"
                    if state.phase != phase:
                        phase = state.phase
                        self.say(f"◆ scenario {state.scenario}: phase {phase}")
                else:
                    self.generator = ""
                await asyncio.sleep(every_s)

    async def _on_user(self, msg: Msg) -> None:
        try:
            user = UserRegistered.model_validate_json(msg.data)
        except ValidationError:
            self.say(f"? unreadable registration event: {msg.data[:60]!r}")
            return
        self.counts["users"] += 1
        self.say(
            f"+ user {user.id} {user.first_name} {user.last_name} with {len(user.devices)} SSD(s)"
        )

    async def _on_order(self, msg: Msg) -> None:
        try:
            order = OrderEvent.model_validate_json(msg.data)
        except ValidationError:
            self.say(f"? unreadable order event: {msg.data[:60]!r}")
            return
        name = await self.names.get(order.barcode) or order.barcode
        status = order.status.value
        self.counts[status] += 1
        self.say(
            f"{MARKS.get(status, '?')} order {order.id} {status:<9} SSD {order.ssd_id}: "
            f"{order.quantity} x {name[:28]}"
        )
