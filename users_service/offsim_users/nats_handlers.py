"""The users service on NATS: its orders.random answer, its orders.completed consumer and its
consumer of the SSDs' readings."""

from __future__ import annotations

import logging

import asyncpg
from nats.aio.msg import Msg
from nats.micro import Request
from offsim_common import bus, subjects, tracing
from offsim_common.errors import NotFound
from offsim_common.events import OrderEvent, RandomSsdReply, SsdReading
from offsim_common.metrics import SSD_READINGS

from . import queries, readings

log = logging.getLogger(__name__)


def random_ssd_endpoint(pool: asyncpg.Pool):
    """orders.random: answer the scatter-gather with a random SSD."""

    async def handle(request: Request) -> None:
        async with pool.acquire() as conn:
            ssd_id = await queries.random_ssd_id(conn)
        if ssd_id is None:
            raise NotFound("no SSD registered yet")
        await request.respond(RandomSsdReply(ssd_id=ssd_id).model_dump_json().encode())

    return handle


def restock_consumer(pool: asyncpg.Pool) -> bus.ConsumerSpec[OrderEvent]:
    """orders.completed: the delivered quantity joins the SSD's stock, exactly once per order."""

    async def handle(event: OrderEvent, msg: Msg) -> None:
        tracing.annotate({"offsim.order.id": event.id})
        async with pool.acquire() as conn, conn.transaction():
            added = await queries.record_delivery(
                conn, event.id, event.ssd_id, event.barcode, event.quantity
            )
            if not added and not await queries.delivery_recorded(conn, event.id):
                # Not a duplicate: the event describes no order (a forged or garbled one).
                raise bus.Contradiction(f"order {event.id}: no such order with this SSD, "
                                        "product and quantity")  # fmt: skip
        if added:
            log.debug(
                "order %s delivered: +%s of %s to SSD %s",
                event.id,
                event.quantity,
                event.barcode,
                event.ssd_id,
            )
        else:
            log.debug("order %s already delivered; duplicate ignored", event.id)

    async def handle_many(batch: list[tuple[OrderEvent, Msg]]) -> None:
        """The batch in one transaction; an event that describes no order undoes it all (then
        each is handled alone, and only that one is dead-lettered)."""
        events = [event for event, _ in batch]
        async with pool.acquire() as conn, conn.transaction():
            added = await queries.record_deliveries(
                conn,
                [e.id for e in events],
                [e.ssd_id for e in events],
                [e.barcode for e in events],
                [e.quantity for e in events],
            )
            missing = {e.id for e in events} - added
            if missing and missing - await queries.deliveries_recorded(conn, list(missing)):
                raise bus.Contradiction("an event of the batch describes no order")
        for event in events:
            if event.id in added:
                added.discard(event.id)
                log.debug("order %s delivered: +%s of %s to SSD %s",
                         event.id, event.quantity, event.barcode, event.ssd_id)  # fmt: skip

    return bus.ConsumerSpec(
        stream=subjects.ORDERS_STREAM,
        durable=subjects.USERS_RESTOCK,
        subject=subjects.ORDERS_COMPLETED,
        model=OrderEvent,
        handler=handle,
        batch_handler=handle_many,
    )


# Readings a fetch takes at most: a busy city sends thousands a second, each batch one statement.
READINGS_BATCH = 500


def readings_consumer(pool: asyncpg.Pool) -> bus.ConsumerSpec[SsdReading]:
    """ssds.*.readings: the SSDs' readings applied to their stock, a batch in one statement,
    each reading once (see readings.py). A reading on a subject that names another SSD is
    rejected (a device publishes only for itself); a malformed one is dead-lettered."""

    async def handle_many(batch: list[tuple[SsdReading, Msg]]) -> None:
        own, strays = [], []
        for reading, msg in batch:
            if subjects.ssd_of_readings_subject(msg.subject) == reading.ssd_id:
                own.append(reading)
            else:
                strays.append((reading, msg.subject))
        async with pool.acquire() as conn, conn.transaction():
            result = await readings.apply(conn, own)
        readings.count(result)
        readings.report(own, result)
        for reading, subject in strays:
            SSD_READINGS.labels(readings.REJECTED).inc()
            readings.BAD_READINGS.warn("subject", "reading %s on %s names SSD %s; rejected",
                                       reading.reading_id, subject, reading.ssd_id)  # fmt: skip

    async def handle(reading: SsdReading, msg: Msg) -> None:
        await handle_many([(reading, msg)])

    return bus.ConsumerSpec(
        stream=subjects.READINGS_STREAM,
        durable=subjects.USERS_APPLY_READINGS,
        subject=subjects.SSD_READINGS_WILDCARD,
        model=SsdReading,
        handler=handle,
        batch_handler=handle_many,
        batch=READINGS_BATCH,
        # The same as the durable made with the stream (bus.STANDING_DURABLES).
        ack_wait_s=bus.READINGS_ACK_WAIT_S,
        on_invalid=lambda msg: SSD_READINGS.labels(readings.MALFORMED).inc(),
    )
