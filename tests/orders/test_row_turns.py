"""The statements that update many orders' rows take turns across replicas.

Two of them at once (a shipped and a completed batch in two replicas) deadlocked now and then:
the order a statement locks its rows in is its plan's, and Postgres detects a deadlock only
after deadlock_timeout, a one-second stall with one batch undone. Each now waits for a turn,
a transaction advisory lock, so a turn held by another replica holds them all back.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
from offsim_common import migrate
from offsim_common.events import OrderEvent, OrderStatus
from offsim_etl import load
from offsim_orders import queries

from tests.conftest import eventually
from tests.helpers import register


async def waiting_for_turn(pool) -> int:
    """Sessions waiting for the turn's advisory lock (its key is split into two 32-bit ids)."""
    async with pool.acquire() as conn:
        return await conn.fetchval(
            """SELECT count(*) FROM pg_locks
               WHERE locktype = 'advisory' AND NOT granted
                 AND (classid::bigint << 32) | objid::bigint = $1""",
            queries.ROW_TURN_KEY,
        )


async def test_row_updates_wait_for_a_turn_held_by_another_replica(
    users, pool, products, database_url
):
    ssd_id = (await register(users))["devices"][0]["id"]
    async with pool.acquire() as conn:
        to_ship, to_mark = [
            await conn.fetchval(
                """INSERT INTO product_orders (ssd_id, barcode, quantity) VALUES ($1, $2, 1)
                   RETURNING id""",
                ssd_id,
                barcode,
            )
            for barcode in products[:2]
        ]
    now = datetime.now(UTC)
    shipped = OrderEvent(id=to_ship, ssd_id=ssd_id, barcode=products[0], quantity=1,
                         status=OrderStatus.SHIPPED, timestamp=now, created_at=now)  # fmt: skip

    other_replica = await asyncpg.connect(database_url)
    connections = [await asyncpg.connect(database_url) for _ in range(3)]
    try:
        holding = other_replica.transaction()
        await holding.start()
        await other_replica.execute("SELECT pg_advisory_xact_lock($1)", queries.ROW_TURN_KEY)
        statements = [
            asyncio.create_task(queries.record_shipped_many(connections[0], [shipped])),
            asyncio.create_task(queries.mark_published(connections[1], [to_mark])),
            asyncio.create_task(queries.confirm_deliveries(connections[2])),
        ]
        await eventually(lambda: _equals(waiting_for_turn(pool), 3))
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, status, published_at FROM product_orders ORDER BY id"
            )
        assert [(r["status"], r["published_at"]) for r in rows] == [("pending", None)] * 2
        assert not any(task.done() for task in statements)

        await holding.commit()  # the other replica's statement is done: their turns come
        moved, _, confirmed = await asyncio.gather(*statements)
    finally:
        for conn in [other_replica, *connections]:
            await conn.close()
    assert set(moved) == {to_ship}
    assert confirmed == 0
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, status, published_at FROM product_orders ORDER BY id")
    assert rows[0]["status"] == "shipped"
    assert rows[1]["published_at"] is not None


async def _equals(value, expected) -> bool:
    return await value == expected


def test_the_turn_is_no_other_advisory_lock():
    """Migrations and the ETL hold advisory locks for minutes; sharing one would stall every
    transition behind them."""
    assert len({queries.ROW_TURN_KEY, migrate._LOCK_KEY, load.RUN_LOCK}) == 3
