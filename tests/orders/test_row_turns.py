"""The statements that update many orders' rows take turns across replicas.

Two of them at once (a shipped and a completed batch in two replicas) deadlocked now and then:
the order a statement locks its rows in is its plan's, and Postgres detects a deadlock only
after deadlock_timeout, a one-second stall with one batch undone. Each now waits for a turn,
a transaction advisory lock, so a turn held by another replica holds them all back.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import asyncpg
from offsim_common import migrate
from offsim_common.events import OrderEvent, OrderStatus
from offsim_etl import load
from offsim_orders import queries

from tests.conftest import eventually
from tests.helpers import register


async def waiting_for_turn(pool) -> int:
    """Sessions of this database waiting for the turn's advisory lock (a bigint key is held
    as two 32-bit ids, objsubid 1)."""
    async with pool.acquire() as conn:
        return await conn.fetchval(
            """SELECT count(*) FROM pg_locks
               WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                 AND (classid::bigint << 32) | objid::bigint = $1""",
            queries.ROW_TURN_KEY,
        )


async def placed(pool, ssd_id: int, barcodes: list[str]) -> list[int]:
    async with pool.acquire() as conn:
        return [
            await conn.fetchval(
                """INSERT INTO product_orders (ssd_id, barcode, quantity) VALUES ($1, $2, 1)
                   RETURNING id""",
                ssd_id,
                barcode,
            )
            for barcode in barcodes
        ]


def shipped(order_id: int, ssd_id: int, barcode: str) -> OrderEvent:
    now = datetime.now(UTC)
    return OrderEvent(id=order_id, ssd_id=ssd_id, barcode=barcode, quantity=1,
                      status=OrderStatus.SHIPPED, timestamp=now, created_at=now)  # fmt: skip


@contextlib.asynccontextmanager
async def turn_held_elsewhere(database_url: str):
    """Another replica's statement, holding the turn until the block ends."""
    other_replica = await asyncpg.connect(database_url)
    try:
        async with other_replica.transaction():
            await other_replica.execute("SELECT pg_advisory_xact_lock($1)", queries.ROW_TURN_KEY)
            yield
    finally:
        await other_replica.close()


async def test_row_updates_wait_for_a_turn_held_by_another_replica(
    users, pool, products, database_url
):
    ssd_id = (await register(users))["devices"][0]["id"]
    to_ship = await placed(pool, ssd_id, products[:2])
    to_mark = await placed(pool, ssd_id, products[2:4])
    events = [shipped(i, ssd_id, b) for i, b in zip(to_ship, products[:2], strict=True)]

    connections = [await asyncpg.connect(database_url) for _ in range(3)]
    statements: list[asyncio.Task] = []
    try:
        async with turn_held_elsewhere(database_url):
            statements = [
                asyncio.create_task(queries.record_shipped_many(connections[0], events)),
                asyncio.create_task(queries.mark_published(connections[1], to_mark)),
                asyncio.create_task(queries.confirm_deliveries(connections[2])),
            ]
            await eventually(lambda: _equals(waiting_for_turn(pool), 3))
            async with pool.acquire() as conn:
                rows = await conn.fetch("SELECT status, published_at FROM product_orders")
            assert [tuple(row) for row in rows] == [("pending", None)] * 4
            assert not any(task.done() for task in statements)
        # The other replica's statement committed: their turns come.
        moved, _, confirmed = await asyncio.gather(*statements)
    finally:
        for task in statements:
            task.cancel()
        for conn in connections:
            await conn.close()
    assert set(moved) == set(to_ship)
    assert confirmed == 0
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, status, published_at FROM product_orders")
    assert {row["id"] for row in rows if row["status"] == "shipped"} == set(to_ship)
    assert {row["id"] for row in rows if row["published_at"] is not None} == set(to_mark)


async def test_a_one_row_update_does_not_wait_for_the_turn(users, pool, products, database_url):
    """One row cannot be half of a deadlock; and one by one is how a failed batch is retried,
    each statement holding a pooled connection, which must not queue behind the turn."""
    ssd_id = (await register(users))["devices"][0]["id"]
    to_ship, to_mark = await placed(pool, ssd_id, products[:2])
    async with turn_held_elsewhere(database_url), pool.acquire() as conn:
        # Were they to wait, they would wait for ever: a bound, so that the test fails instead.
        async with asyncio.timeout(10):
            moved = await queries.record_shipped_many(conn, [shipped(to_ship, ssd_id, products[0])])
            await queries.mark_published(conn, [to_mark])
        rows = await conn.fetch("SELECT id, status, published_at FROM product_orders")
    assert set(moved) == {to_ship}
    assert {row["id"]: row["status"] for row in rows}[to_ship] == "shipped"
    assert {row["id"] for row in rows if row["published_at"] is not None} == {to_mark}


async def _equals(value, expected) -> bool:
    return await value == expected


def test_the_turn_is_no_other_advisory_lock():
    """Migrations and the ETL hold advisory locks for minutes; sharing one would stall every
    transition behind them."""
    assert len({queries.ROW_TURN_KEY, migrate._LOCK_KEY, load.RUN_LOCK}) == 3
