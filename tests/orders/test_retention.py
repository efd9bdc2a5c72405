"""Retention of finished orders: only orders completed (and in stock) or cancelled more than
OFFSIM_ORDER_RETENTION ago are deleted, with their deliveries; open orders and deliveries not in
stock yet stay whatever their age; 0 keeps everything; replicas deleting at once delete each
order once; the lifetime counts do not move."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import pytest
from offsim_common import retention as common_retention
from offsim_orders import retention
from offsim_orders.settings import OrdersSettings

from tests.conftest import changed, eventually

KEEP_S = 7 * 86400.0
OLD = timedelta(days=8)  # finished before the limit
RECENT = timedelta(days=1)  # finished within it


@pytest.fixture
async def ssd_id(pool: asyncpg.Pool) -> int:
    """An SSD, stored directly: these tests need its id, not the users service."""
    async with pool.acquire() as conn:
        user_id = await conn.fetchval(
            """INSERT INTO users (first_name, last_name, email, password_hash)
               VALUES ('Re', 'Tention', 'retention@example.org', 'x') RETURNING id"""
        )
        return await conn.fetchval(
            "INSERT INTO ssds (user_id, mac_address) VALUES ($1, '02:00:00:00:aa:01') RETURNING id",
            user_id,
        )


async def an_order(
    conn: asyncpg.Connection,
    ssd_id: int,
    barcode: str,
    status: str,
    age: timedelta,
    *,
    in_stock: bool = False,
    confirmed: bool = False,
) -> int:
    """An order stored as its transitions leave it: placed `age` + 10 minutes ago and, when
    finished, finished `age` ago; `in_stock`: its delivery recorded by the users service;
    `confirmed`: noted by the reconciler."""
    order_id = await conn.fetchval(
        """INSERT INTO product_orders (ssd_id, barcode, quantity, created_at, published_at)
           VALUES ($1, $2, 1, now() - $3::interval - interval '10 minutes',
                   now() - $3::interval - interval '10 minutes')
           RETURNING id""",
        ssd_id,
        barcode,
        age,
    )
    if status != "pending":
        await conn.execute(
            """UPDATE product_orders SET status = $2,
                   shipped_at = CASE WHEN $2 <> 'cancelled' THEN now() - $3::interval END,
                   completed_at = CASE WHEN $2 = 'completed' THEN now() - $3::interval END,
                   cancelled_at = CASE WHEN $2 = 'cancelled' THEN now() - $3::interval END,
                   delivery_confirmed = $4
               WHERE id = $1""",
            order_id,
            status,
            age,
            confirmed,
        )
    if in_stock:
        await conn.execute(
            """INSERT INTO stock_deliveries (order_id, delivered_at)
               VALUES ($1, now() - $2::interval)""",
            order_id,
            age,
        )
    return order_id


async def stored_ids(pool: asyncpg.Pool, table: str = "product_orders", column: str = "id"):
    async with pool.acquire() as conn:
        return {row[0] for row in await conn.fetch(f"SELECT {column} FROM {table}")}


async def counts(pool: asyncpg.Pool) -> dict[str, tuple[int, int]]:
    """The orders' counters (migration 014): {status: (stored, lifetime)}."""
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT status, stored, lifetime FROM order_totals")
    return {row["status"]: (row["stored"], row["lifetime"]) for row in rows}


async def remove(pool: asyncpg.Pool, keep_s: float = KEEP_S, batch: int = 5000) -> int:
    """One retention round: batch after batch until caught up."""
    return await common_retention.prune_all(
        lambda size: retention.delete_finished(pool, keep_s, size), batch
    )


async def test_retention_removes_only_finished_orders_past_the_limit(pool, products, ssd_id):
    async with pool.acquire() as conn:
        month = timedelta(days=30)
        stays = {
            "pending for a month": await an_order(conn, ssd_id, products[0], "pending", month),
            "shipped for a month": await an_order(conn, ssd_id, products[1], "shipped", month),
            # Its delivery has not reached the stock: the reconciler still announces it.
            "completed, not in stock": await an_order(conn, ssd_id, products[2], "completed", OLD),
            "completed recently": await an_order(
                conn, ssd_id, products[3], "completed", RECENT, in_stock=True, confirmed=True
            ),
            "cancelled recently": await an_order(conn, ssd_id, products[4], "cancelled", RECENT),
        }
        goes = {
            "completed, in stock": await an_order(
                conn, ssd_id, products[0], "completed", OLD, in_stock=True
            ),
            "completed, confirmed": await an_order(
                conn, ssd_id, products[1], "completed", OLD, in_stock=True, confirmed=True
            ),
            "cancelled": await an_order(conn, ssd_id, products[2], "cancelled", OLD),
        }
    before = await counts(pool)

    assert await remove(pool) == len(goes)

    assert await stored_ids(pool) == set(stays.values())
    # Deliveries go with their orders; the recent one stays with its order.
    assert await stored_ids(pool, "stock_deliveries", "order_id") == {stays["completed recently"]}
    after = await counts(pool)
    # The lifetime counts do not move; the stored ones lose exactly what was deleted.
    assert {s: lifetime for s, (_, lifetime) in after.items()} == {
        s: lifetime for s, (_, lifetime) in before.items()
    }
    assert after["completed"][0] == before["completed"][0] - 2
    assert after["cancelled"][0] == before["cancelled"][0] - 1
    assert after["pending"][0] == before["pending"][0] == 1
    assert after["shipped"][0] == before["shipped"][0] == 1
    # Caught up: a second round finds nothing.
    assert await remove(pool) == 0


async def test_zero_keeps_every_order(pool, products, ssd_id):
    assert OrdersSettings.from_env({"OFFSIM_ORDER_RETENTION": "0"}).order_retention == 0
    async with pool.acquire() as conn:
        ids = {
            await an_order(conn, ssd_id, products[0], "cancelled", timedelta(days=3650)),
            await an_order(conn, ssd_id, products[1], "completed", OLD, in_stock=True),
        }
    assert await remove(pool, keep_s=0) == 0
    assert await stored_ids(pool) == ids


async def test_two_replicas_at_once_delete_each_order_once(pool, products, ssd_id):
    """Finished orders in thousands, deleted by two rounds at once in small batches: between
    them every order is deleted, and each once (SKIP LOCKED: they never take the same row)."""
    per_status = 3000
    async with pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO product_orders (ssd_id, barcode, quantity, status, created_at,
                                           shipped_at, completed_at, cancelled_at,
                                           delivery_confirmed)
               SELECT $1, $2, 1, s.status, now() - interval '9 days', now() - interval '9 days',
                      CASE WHEN s.status = 'completed' THEN now() - interval '8 days' END,
                      CASE WHEN s.status = 'cancelled' THEN now() - interval '8 days' END,
                      s.status = 'completed'
               FROM generate_series(1, $3) g
               CROSS JOIN (VALUES ('completed'), ('cancelled')) s(status)""",
            ssd_id,
            products[0],
            per_status,
        )
        await conn.execute(
            """INSERT INTO stock_deliveries (order_id)
               SELECT id FROM product_orders WHERE status = 'completed'"""
        )

    first, second = await asyncio.gather(remove(pool, batch=400), remove(pool, batch=400))

    assert first + second == 2 * per_status
    assert first > 0 and second > 0
    assert await stored_ids(pool) == set()
    assert await stored_ids(pool, "stock_deliveries", "order_id") == set()
    assert await counts(pool) == {
        "completed": (0, per_status),
        "cancelled": (0, per_status),
    }


async def test_the_orders_service_removes_finished_orders_in_the_background(
    aiohttp_client, settings, pool, nc, products, ssd_id
):
    from offsim_orders.app import create_app

    async with pool.acquire() as conn:
        old = await an_order(conn, ssd_id, products[0], "cancelled", timedelta(minutes=2))
        kept = await an_order(conn, ssd_id, products[1], "cancelled", timedelta(seconds=1))
    await aiohttp_client(create_app(changed(settings, order_retention=60.0)))

    async def removed() -> bool:
        return old not in await stored_ids(pool)

    await eventually(removed)
    assert kept in await stored_ids(pool)
