"""Restock orders the backend placed on an SSD's reading (`placed_by = 'device'`), announced on
orders.pending as soon as their transaction commits.

The users service places them with `place_restock_orders` (migration 013), in the transaction
that applies the readings; the function NOTIFYs CHANNEL, which Postgres delivers at commit. This
loop LISTENs on a connection of its own and, at each notification (and every POLL_S, should one
be missed while the listener reconnects), claims the unannounced device orders with `FOR UPDATE
SKIP LOCKED` for CLAIM_S (replicas share them), publishes them together and marks them
published. One whose publish fails stays unannounced: its claim lapses and a later round sends
it (or the re-publisher, which sends every order left unpublished).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from nats.aio.client import Client
from nats.js import JetStreamContext
from offsim_common import bus, subjects
from offsim_common.db import CONNECT_TIMEOUT_S
from offsim_common.events import OrderStatus
from offsim_common.logs import REQUEST_ID_HEADER
from offsim_common.metrics import ORDER_TRANSITIONS

from . import queries
from .orders import CLAIM_S, PublishedMarks, pending_event

log = logging.getLogger(__name__)

CHANNEL = "offsim_device_orders"
POLL_S = 1.0
# Orders claimed and published at once: a round of a busy city's restocks.
BATCH = 1000


async def announce_once(
    pool: asyncpg.Pool, nc: Client, js: JetStreamContext, marks: PublishedMarks
) -> int:
    """Claim and announce one batch of device orders; return how many were claimed."""
    async with pool.acquire() as conn:
        rows = await queries.claim_device_orders(conn, CLAIM_S, BATCH)
    if not rows:
        return 0
    messages = []
    for row in rows:
        event = pending_event(row)
        headers = {"Nats-Msg-Id": event.msg_id}
        if row["request_id"]:
            headers[REQUEST_ID_HEADER] = row["request_id"]
        messages.append((event.model_dump_json().encode(), headers))
    outcomes = await bus.publish_many(nc, js, subjects.ORDERS_PENDING, messages)
    for row, outcome in zip(rows, outcomes, strict=True):
        if outcome is None:
            marks.add(row["id"])
    announced = outcomes.count(None)
    ORDER_TRANSITIONS.labels(OrderStatus.PENDING.value).inc(announced)
    if announced < len(rows):
        log.warning("%d restock orders not yet announced: %r", len(rows) - announced,
                    next(o for o in outcomes if o is not None))  # fmt: skip
    return len(rows)


async def announce_forever(
    pool: asyncpg.Pool, dsn: str, nc: Client, js: JetStreamContext, marks: PublishedMarks
) -> None:
    woken = asyncio.Event()
    listener: asyncpg.Connection | None = None
    try:
        while True:
            try:
                if listener is None or listener.is_closed():
                    listener = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
                    await listener.add_listener(CHANNEL, lambda *_: woken.set())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), POLL_S)
                woken.clear()
                while await announce_once(pool, nc, js, marks) == BATCH:
                    pass  # a backlog: the next batch at once
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("announcing restock orders failed: %r", exc)
                if listener is not None:
                    listener.terminate()
                    listener = None
                await asyncio.sleep(POLL_S)
    finally:
        if listener is not None:
            listener.terminate()
