"""Placing an order and announcing it: the logic behind POST /api/orders.

The order is committed first, then published on orders.pending with a de-duplication id. If the
publish fails (NATS down), the row keeps `published_at IS NULL` and the re-publisher sends it
later, so no order is ever stuck in pending as in the original. No pooled connection is held
while waiting on NATS: a slow or absent NATS never starves the pool.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from nats.aio.client import Client
from nats.js import JetStreamContext
from offsim_common import bus, idempotency, subjects, tracing
from offsim_common.errors import Conflict, NotFound
from offsim_common.events import OrderEvent, OrderStatus
from offsim_common.logs import request_id
from offsim_common.metrics import ORDER_TRANSITIONS
from offsim_common.requests import OrderRequest

from . import queries

log = logging.getLogger(__name__)

REPUBLISH_AFTER_S = 5.0


def pending_event(row: asyncpg.Record) -> OrderEvent:
    return OrderEvent(
        id=row["id"],
        ssd_id=row["ssd_id"],
        barcode=row["barcode"],
        quantity=row["quantity"],
        status=OrderStatus.PENDING,
        timestamp=row["created_at"],
        created_at=row["created_at"],
    )


async def insert_order(conn: asyncpg.Connection, order: OrderRequest) -> asyncpg.Record:
    """Store the order (the caller owns the transaction), or raise the error to answer."""
    try:
        return await queries.insert_order(conn, order, request_id.get())
    except asyncpg.ForeignKeyViolationError as exc:
        if exc.constraint_name == "product_orders_ssd_id_fkey":
            raise NotFound(f"SSD {order.ssd_id} not found", {"ssd_id": "unknown SSD"}) from None
        raise NotFound(
            f"product {order.barcode} not found", {"barcode": "unknown product"}
        ) from None
    except asyncpg.UniqueViolationError:  # only restock orders are one open at a time
        raise Conflict(
            f"SSD {order.ssd_id} already has an open restock order for {order.barcode}",
            {"barcode": "a restock order for this product is already open"},
        ) from None


async def announce_order(
    pool: asyncpg.Pool, nc: Client, js: JetStreamContext, row: asyncpg.Record
) -> None:
    """Publish a committed order on orders.pending, then mark it published. A failure leaves it
    to the re-publisher; no connection is held while publishing."""
    ORDER_TRANSITIONS.labels(OrderStatus.PENDING.value).inc()
    tracing.annotate({"offsim.order.id": row["id"]})
    event = pending_event(row)
    try:
        await bus.announce(nc, js, subjects.ORDERS_PENDING, event, event.msg_id)
    except Exception as exc:  # the order stands; the re-publisher will announce it
        log.warning("order %s saved but not yet published: %r", row["id"], exc)
        return
    try:
        async with pool.acquire() as conn:
            await queries.mark_published(conn, [row["id"]])
    except Exception as exc:  # published all the same; a re-publish is de-duplicated
        log.warning("order %s published but not marked so: %r", row["id"], exc)


# How long a replica's claim on unpublished orders lasts: it publishes them within it.
CLAIM_S = 30.0


async def republish_once(pool: asyncpg.Pool, js: JetStreamContext) -> int:
    """Announce the orders whose publish failed; return how many were announced. Replicas share
    the work by claiming rows for CLAIM_S; no connection is held while publishing."""
    async with pool.acquire() as conn:
        rows = await queries.claim_unpublished(conn, REPUBLISH_AFTER_S, CLAIM_S)
    published = []
    try:
        for row in rows:
            event = pending_event(row)
            token = request_id.set(row["request_id"])  # the placing request's
            try:
                await bus.publish(js, subjects.ORDERS_PENDING, event, event.msg_id)
            finally:
                request_id.reset(token)
            published.append(row["id"])
            log.info("order %s re-published", row["id"])
    finally:
        if published:
            async with pool.acquire() as conn:
                await queries.mark_published(conn, published)
    return len(published)


async def republish_forever(pool: asyncpg.Pool, js: JetStreamContext, every_s: float = 5.0) -> None:
    """Announce orders whose publish failed, every `every_s` seconds; forget expired
    idempotency keys on the way. The poll itself is not traced; each re-publish is a trace of
    its own."""
    while True:
        try:
            with tracing.untraced():
                await republish_once(pool, js)
                async with pool.acquire() as conn:
                    await idempotency.purge_expired(conn)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("re-publishing pending orders failed: %r", exc)
        await asyncio.sleep(every_s)
