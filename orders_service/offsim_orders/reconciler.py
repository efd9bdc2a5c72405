"""The reconciler: a lost message costs delay, never an order.

Every order's next step is bounded in time: the supplier ships within its longest delay, the
courier delivers within its own, and the users service adds a delivery to stock at once. An
order past that bound plus a margin (scaled by SIM_SPEED) is announced again: the event its next
stage waits for, with the de-duplication id of the original. If the original is still in the
stream the server drops the copy; if it was lost, the copy takes its place (bus.publish stores
it under a derived id when the server still remembers the original's). Every consumer is
idempotent, so a copy that arrives after all changes nothing.

Replicas share the work by claiming rows with FOR UPDATE SKIP LOCKED for one stage period; no
pooled connection is held while publishing. A round reads only the orders in flight and the
completed ones whose delivery it has not yet seen in stock (noted once seen), never the whole
table: its cost follows the orders in flight, not the orders ever placed.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from nats.js import JetStreamContext
from offsim_common import bus, subjects
from offsim_common.events import OrderEvent, OrderStatus
from offsim_common.logs import request_id
from offsim_common.metrics import ORDER_REANNOUNCEMENTS

from . import queries
from .settings import OrdersSettings

log = logging.getLogger(__name__)

BATCH = 100
# A completed order whose delivery is still not in stock a week on is no longer announced
# again: something a person must look at (retention never deletes it). Not tied to the stream's
# age: an announcement the stream no longer holds is published anew.
HORIZON_S = 7 * 24 * 3600.0

# The subject each status is announced on, and the time its event carries.
ANNOUNCED = {
    OrderStatus.PENDING: (subjects.ORDERS_PENDING, "created_at"),
    OrderStatus.SHIPPED: (subjects.ORDERS_SHIPPED, "shipped_at"),
    OrderStatus.COMPLETED: (subjects.ORDERS_COMPLETED, "completed_at"),
}


def stored_event(row: asyncpg.Record) -> tuple[str, OrderEvent]:
    """The event that announced the order's current status, as its publisher sent it."""
    status = OrderStatus(row["status"])
    subject, at = ANNOUNCED[status]
    event = OrderEvent(
        id=row["id"],
        ssd_id=row["ssd_id"],
        barcode=row["barcode"],
        quantity=row["quantity"],
        status=status,
        timestamp=row[at],
        created_at=row["created_at"],
    )
    return subject, event


async def reconcile_once(
    pool: asyncpg.Pool,
    js: JetStreamContext,
    settings: OrdersSettings,
    turns: asyncio.Lock | None = None,
) -> int:
    """Announce again one batch of overdue orders; return how many were announced. Deliveries
    seen in stock are noted first, in `turns` (app_keys.ROW_TURNS)."""
    async with turns or asyncio.Lock(), pool.acquire() as conn:
        await queries.confirm_deliveries(conn)
        rows = await queries.claim_overdue(
            conn,
            settings.overdue_after(settings.supplier_delay),
            settings.overdue_after(settings.delivery_delay),
            settings.simulated(settings.reconcile_margin),
            HORIZON_S,
            BATCH,
        )
    for row in rows:
        subject, event = stored_event(row)
        token = request_id.set(row["request_id"])  # the placing request's
        try:
            await bus.publish(js, subject, event, event.msg_id)
        finally:
            request_id.reset(token)
        ORDER_REANNOUNCEMENTS.labels(event.status.value).inc()
        log.info("order %s overdue: %s announced again", row["id"], subject)
    return len(rows)


async def reconcile_forever(
    pool: asyncpg.Pool,
    js: JetStreamContext,
    settings: OrdersSettings,
    turns: asyncio.Lock | None = None,
) -> None:
    """Every `reconcile_interval` seconds, announce again the orders that are overdue (batch
    after batch while there are more)."""
    while True:
        try:
            while await reconcile_once(pool, js, settings, turns) == BATCH:
                pass
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # NATS or Postgres away: the claims lapse, the next round retries
            log.warning("reconciling overdue orders failed: %r", exc)
        await asyncio.sleep(settings.reconcile_interval)
