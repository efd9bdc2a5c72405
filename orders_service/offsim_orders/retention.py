"""Retention of finished orders: an order completed (and in its SSD's stock) or cancelled more
than OFFSIM_ORDER_RETENTION ago is deleted, in the background, with its delivery's row.

Only finished orders go. An open order (pending, shipped) stays however old it is: the
reconciler still owes it its next step. A completed order whose delivery has not reached the
stock yet stays too: its restock guard (`place_restock_orders`) and the reconciler, which
announces its completion again, both read it. Everything else an order leaves behind goes with
it or has its own end: its `stock_deliveries` row by the foreign key's cascade (migration 015),
its idempotency key at its own expiry (`idempotency.KEEP`, purged by the re-publisher), its
lifetime count nowhere (the counters' ledger, migration 014, takes a deletion off the stored
count only).

The statement locks the rows it deletes with SKIP LOCKED: replicas running it at once delete
disjoint rows, and it never waits for a row another statement holds (a transition, a claim, a
delivery's key check). docs/retention.md says why the table is not partitioned by time instead.
The statement lives here rather than in queries.py: it is the one this module exists for.
"""

from __future__ import annotations

import asyncpg
from offsim_common import retention

# Up to `$2` of each kind of finished order past `$1` seconds, oldest first, each by its own
# index on the time it finished (product_orders_completed_at, product_orders_cancelled_at).
_DELETE_FINISHED = """
    WITH completed AS (
        SELECT id FROM product_orders o
        WHERE o.completed_at < now() - make_interval(secs => $1) AND o.status = 'completed'
          AND (o.delivery_confirmed
               OR EXISTS (SELECT 1 FROM delivered_orders d WHERE d.order_id = o.id))
        ORDER BY o.completed_at LIMIT $2
        FOR UPDATE SKIP LOCKED),
    cancelled AS (
        SELECT id FROM product_orders
        WHERE cancelled_at < now() - make_interval(secs => $1) AND status = 'cancelled'
        ORDER BY cancelled_at LIMIT $2
        FOR UPDATE SKIP LOCKED)
    DELETE FROM product_orders
    WHERE id IN (SELECT id FROM completed UNION ALL SELECT id FROM cancelled)"""


async def delete_finished(pool: asyncpg.Pool, keep_s: float, batch: int) -> int:
    """Delete up to `batch` completed and up to `batch` cancelled orders that finished more than
    `keep_s` seconds ago; return how many. 0 keeps every order."""
    if keep_s <= 0:
        return 0
    async with pool.acquire() as conn:
        status = await conn.execute(_DELETE_FINISHED, keep_s, batch)
    return int(status.split()[-1])


async def retain_forever(pool: asyncpg.Pool, keep_s: float) -> None:
    """Delete the finished orders past `keep_s` seconds, every retention.EVERY_S, in batches."""

    async def finished(batch: int) -> int:
        return await delete_finished(pool, keep_s, batch)

    await retention.prune_forever({"product_orders": finished})
