"""Placing an order and announcing it: the logic behind POST /api/orders.

The order is committed first, then published on orders.pending with a de-duplication id. If the
publish fails (NATS down), the row keeps `published_at IS NULL` and the re-publisher sends it
later, so no order is ever stuck in pending as in the original.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
from nats.js import JetStreamContext
from offsim_common import bus, subjects, tracing
from offsim_common.http import Conflict, NotFound
from offsim_common.logs import request_id
from offsim_common.messages import OrderEvent, OrderRequest, OrderStatus
from offsim_common.metrics import ORDER_TRANSITIONS

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


async def create_order(
    pool: asyncpg.Pool, js: JetStreamContext, order: OrderRequest
) -> dict[str, Any]:
    async with pool.acquire() as conn:
        try:
            row = await queries.insert_order(conn, order, request_id.get())
        except asyncpg.ForeignKeyViolationError as exc:
            if exc.constraint_name == "product_orders_ssd_id_fkey":
                raise NotFound(f"SSD {order.ssd_id} not found", {"ssd_id": "unknown SSD"}) from None
            raise NotFound(
                f"product {order.barcode} not found", {"barcode": "unknown product"}
            ) from None
        except asyncpg.UniqueViolationError:
            raise Conflict(
                f"SSD {order.ssd_id} already has an open order for {order.barcode}",
                {"barcode": "an order for this product is already open"},
            ) from None
        ORDER_TRANSITIONS.labels(OrderStatus.PENDING.value).inc()
        tracing.annotate({"offsim.order.id": row["id"]})
        event = pending_event(row)
        try:
            await bus.publish(js, subjects.ORDERS_PENDING, event, event.msg_id)
        except Exception as exc:  # the order stands; the re-publisher will announce it
            log.warning("order %s saved but not yet published: %s", row["id"], exc)
        else:
            await queries.mark_published(conn, row["id"])
    return dict(row)


async def republish_forever(pool: asyncpg.Pool, js: JetStreamContext, every_s: float = 5.0) -> None:
    """Announce orders whose publish failed. Replicas share the work through SKIP LOCKED. The
    poll itself is not traced; each re-publish is a trace of its own."""
    while True:
        try:
            with tracing.untraced():
                await _republish(pool, js)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("re-publishing pending orders failed: %s", exc)
        await asyncio.sleep(every_s)


async def _republish(pool: asyncpg.Pool, js: JetStreamContext) -> None:
    async with pool.acquire() as conn, conn.transaction():
        for row in await queries.unpublished_orders(conn, REPUBLISH_AFTER_S):
            event = pending_event(row)
            token = request_id.set(row["request_id"])  # the placing request's
            try:
                await bus.publish(js, subjects.ORDERS_PENDING, event, event.msg_id)
            finally:
                request_id.reset(token)
            await queries.mark_published(conn, row["id"])
            log.info("order %s re-published", row["id"])
