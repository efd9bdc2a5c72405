"""The orders service on NATS: its orders.random answer and the transitions it records."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

import asyncpg
from nats.aio.msg import Msg
from nats.micro import Request
from offsim_common import bus, subjects, tracing
from offsim_common.errors import Invalid, NotFound
from offsim_common.events import OrderEvent, RandomBarcodeReply, RandomOrderRequest
from offsim_common.http import validation_details
from offsim_common.metrics import ORDER_TRANSITION_SECONDS, ORDER_TRANSITIONS
from pydantic import ValidationError

from . import queries

log = logging.getLogger(__name__)


def random_barcode_endpoint(pool: asyncpg.Pool):
    """orders.random: answer the scatter-gather with a product (one the SSD watches, if the
    request names an SSD)."""

    async def handle(request: Request) -> None:
        try:
            body = RandomOrderRequest.model_validate_json(request.data or b"{}")
        except ValidationError as exc:
            raise Invalid("invalid request", validation_details(exc)) from None
        async with pool.acquire() as conn:
            barcode = await queries.random_barcode(conn, body.ssd_id)
        if barcode is None:
            raise NotFound("no product loaded yet")
        await request.respond(RandomBarcodeReply(barcode=barcode).model_dump_json().encode())

    return handle


# Records a transition; returns when the previous one happened, or None if nothing changed.
Recorder = Callable[[asyncpg.Connection, OrderEvent], Awaitable[datetime | None]]
# The same for a batch, in one statement: {order id: when the previous transition happened} for
# those it moved, or None (and nothing moved) if an event of the batch describes no order.
BatchRecorder = Callable[
    [asyncpg.Connection, list[OrderEvent]], Awaitable[dict[int, datetime] | None]
]


def _recorded(event: OrderEvent, previous: datetime, transition: str) -> None:
    log.debug("order %s %s", event.id, event.status)
    ORDER_TRANSITIONS.labels(event.status.value).inc()
    ORDER_TRANSITION_SECONDS.labels(transition).observe(
        max((event.timestamp - previous).total_seconds(), 0.0)
    )


def transition_consumer(
    pool: asyncpg.Pool,
    subject: str,
    durable: str,
    record: Recorder,
    record_many: BatchRecorder,
    transition: str,
    turns: asyncio.Lock,
) -> bus.ConsumerSpec[OrderEvent]:
    """A batch takes `turns` (app_keys.ROW_TURNS) for its statement, which then takes its
    turn across replicas (queries.ROW_TURN_KEY): the shipped and the completed batches move the
    same orders at nearly the same time, and two such statements at once deadlocked. Each is
    one short statement, so taking turns costs little."""

    async def handle(event: OrderEvent, msg: Msg) -> None:
        tracing.annotate({"offsim.order.id": event.id})
        async with pool.acquire() as conn:
            previous = await record(conn, event)
            if previous is None and not await queries.describes_order(conn, event):
                raise bus.Contradiction(f"order {event.id}: no such order with this SSD, "
                                        "product and quantity")  # fmt: skip
        if previous is not None:
            _recorded(event, previous, transition)
        else:
            log.debug("order %s: %s changed nothing (duplicate or late)", event.id, subject)

    async def handle_many(batch: list[tuple[OrderEvent, Msg]]) -> None:
        """The batch in one statement; an event that describes no order leaves it all undone
        (then each is handled alone, and only that one is dead-lettered)."""
        events = [event for event, _ in batch]
        async with turns, pool.acquire() as conn:
            moved = await record_many(conn, events)
        if moved is None:
            raise bus.Contradiction("an event of the batch describes no order")
        for event in events:
            if (previous := moved.pop(event.id, None)) is not None:  # once per order
                _recorded(event, previous, transition)

    return bus.ConsumerSpec(
        stream=subjects.ORDERS_STREAM,
        durable=durable,
        subject=subject,
        model=OrderEvent,
        handler=handle,
        batch_handler=handle_many,
    )


def transition_consumers(pool: asyncpg.Pool, turns: asyncio.Lock) -> list[bus.ConsumerSpec]:
    return [
        transition_consumer(pool, subjects.ORDERS_SHIPPED, subjects.ORDERS_RECORD_SHIPPED,
                            queries.record_shipped, queries.record_shipped_many,
                            "pending_to_shipped", turns),
        transition_consumer(pool, subjects.ORDERS_COMPLETED, subjects.ORDERS_RECORD_COMPLETED,
                            queries.record_completed, queries.record_completed_many,
                            "shipped_to_completed", turns),
        transition_consumer(pool, subjects.ORDERS_CANCELLED, subjects.ORDERS_RECORD_CANCELLED,
                            queries.record_cancelled, queries.record_cancelled_many,
                            "pending_to_cancelled", turns),
    ]  # fmt: skip
