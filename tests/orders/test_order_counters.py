"""The order counters (migration 014): kept by triggers as the orders are written, exact across
transitions, retention's deletes and a restart, folded without counting anything twice."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from offsim_common import bus, subjects
from offsim_common.events import OrderEvent, OrderStatus
from offsim_common.migrate import migration_files
from offsim_orders import counters, queries

from tests.conftest import AS_SERVICE, eventually
from tests.helpers import register

COUNTERS_VERSION = 14


async def ledger(pool) -> dict[str, tuple[int, int]]:
    """{status: (stored, lifetime)} from the counters, statuses counting nothing left out."""
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT status, stored, lifetime FROM order_totals")
    return {r["status"]: (r["stored"], r["lifetime"]) for r in rows if r["stored"] or r["lifetime"]}


async def counted(pool) -> dict[str, int]:
    """What the counters stand for, counted over the table: orders stored, by status."""
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT status, count(*) AS n FROM product_orders GROUP BY 1")
    return {row["status"]: row["n"] for row in rows}


async def minutes(pool) -> tuple[int, int]:
    """Orders placed and completed over every minute the counters keep."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT coalesce(sum(placed), 0) AS p, coalesce(sum(completed), 0) AS c "
            "FROM orders_per_minute"
        )
    return row["p"], row["c"]


async def api_totals(orders) -> dict[str, int]:
    """GET /api/orders's `total`, unfiltered ("all") and for each status."""
    totals = {}
    for status in ("all", *OrderStatus):
        query = "" if status == "all" else f"&status={status}"
        totals[status] = (await (await orders.get(f"/api/orders?limit=1{query}")).json())["total"]
    return totals


async def statuses(pool, ids: list[int]) -> list[str]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT status FROM product_orders WHERE id = ANY($1::bigint[]) ORDER BY id", ids
        )
    return [row["status"] for row in rows]


async def announce(js, order: dict, status: OrderStatus) -> None:
    """The notifications service's event for an order's next status, on its subject."""
    subject = {OrderStatus.SHIPPED: subjects.ORDERS_SHIPPED,
               OrderStatus.COMPLETED: subjects.ORDERS_COMPLETED,
               OrderStatus.CANCELLED: subjects.ORDERS_CANCELLED}[status]  # fmt: skip
    event = OrderEvent(
        id=order["id"], ssd_id=order["ssd_id"], barcode=order["barcode"],
        quantity=order["quantity"], status=status, timestamp=datetime.now(UTC),
        created_at=datetime.fromisoformat(order["created_at"]),
    )  # fmt: skip
    await bus.publish(js, subject, event, event.msg_id)


async def test_counts_stay_exact_across_transitions_retention_and_a_restart(
    aiohttp_client, settings, orders, users, pool, nc, products, database_url
):
    ssd_id = (await register(users))["devices"][0]["id"]
    placed = []
    for barcode in products:
        body = {"ssd_id": ssd_id, "barcode": barcode, "quantity": 2}
        placed.append(await (await orders.post("/api/orders", json=body)).json())
    ids = [order["id"] for order in placed]
    assert await ledger(pool) == {"pending": (5, 5)}
    assert await minutes(pool) == (5, 0)

    # pending -> shipped -> completed for two, shipped for one, cancelled for one, through the
    # service's own consumers.
    js = nc.jetstream()
    for order in placed[:3]:
        await announce(js, order, OrderStatus.SHIPPED)
    await announce(js, placed[3], OrderStatus.CANCELLED)
    await eventually(lambda: _equals(statuses(pool, ids[:4]), ["shipped"] * 3 + ["cancelled"]))
    for order in placed[:2]:
        await announce(js, order, OrderStatus.COMPLETED)
    after = ["completed"] * 2 + ["shipped", "cancelled", "pending"]
    await eventually(lambda: _equals(statuses(pool, ids), after))

    now = {"pending": 1, "shipped": 1, "completed": 2, "cancelled": 1}
    assert await counted(pool) == now
    assert await ledger(pool) == {status: (n, n) for status, n in now.items()}
    assert await api_totals(orders) == {"all": 5, **now}
    assert await minutes(pool) == (5, 2)

    # Retention deletes the finished orders: no longer stored, still counted for life.
    async with pool.acquire() as conn:
        await conn.execute("DELETE FROM stock_deliveries WHERE order_id = ANY($1::bigint[])", ids)
        await conn.execute("DELETE FROM product_orders WHERE status IN ('completed', 'cancelled')")
    stored = {"pending": 1, "shipped": 1, "completed": 0, "cancelled": 0}
    lifetime = {status: (stored[status], n) for status, n in now.items()}
    assert await ledger(pool) == lifetime
    assert await api_totals(orders) == {"all": 2, **stored}
    assert await minutes(pool) == (5, 2)

    # A restart: a new orders service and a new pool read the same counts back; its fold
    # leaves one row a status, with the same sums.
    await orders.close()
    again = await aiohttp_client(create_orders_app(settings), headers=AS_SERVICE)
    fresh = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        await eventually(lambda: _equals(ledger_rows(fresh), len(now)))
        assert await ledger(fresh) == lifetime
        assert await api_totals(again) == {"all": 2, **stored}
        assert await minutes(fresh) == (5, 2)
    finally:
        await fresh.close()


def create_orders_app(settings):
    from offsim_orders.app import create_app

    return create_app(settings)


async def ledger_rows(pool) -> int:
    async with pool.acquire() as conn:
        return await conn.fetchval("SELECT count(*) FROM order_counts")


async def _equals(value, expected) -> bool:
    return await value == expected


async def one_statement_each(pool, ssd_id: int, products: list[str]) -> None:
    """Fifteen orders inserted and moved one statement at a time (four shipped, four completed,
    seven left pending): many delta rows a status."""
    async with pool.acquire() as conn:
        for barcode in products * 3:
            await conn.execute(
                "INSERT INTO product_orders (ssd_id, barcode, quantity) VALUES ($1, $2, 1)",
                ssd_id,
                barcode,
            )
        for status, at in (("shipped", "shipped_at"), ("completed", "completed_at")):
            for _ in range(4):
                await conn.execute(
                    f"""UPDATE product_orders SET status = '{status}', {at} = now()
                        WHERE id = (SELECT min(id) FROM product_orders WHERE status = 'pending')"""
                )


async def test_the_fold_keeps_the_sums_in_one_row_a_key(users, pool, products):
    ssd_id = (await register(users))["devices"][0]["id"]
    await one_statement_each(pool, ssd_id, products)
    before, placed_completed = await ledger(pool), await minutes(pool)
    assert await ledger_rows(pool) > 4

    assert await counters.fold_once(pool) > 0
    assert await ledger(pool) == before
    assert await minutes(pool) == placed_completed == (15, 4)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) = count(DISTINCT status) FROM order_counts"), (
            "one row a status"
        )
        assert await conn.fetchval("SELECT count(*) = count(DISTINCT minute) FROM order_minutes")
    assert await counters.fold_once(pool) == 0  # nothing left to fold
    assert (
        await ledger(pool)
        == before
        == {status: (n, n) for status, n in (await counted(pool)).items()}
    )


async def test_two_folds_at_once_count_nothing_twice(users, pool, products, database_url):
    ssd_id = (await register(users))["devices"][0]["id"]
    await one_statement_each(pool, ssd_id, products)
    first, second = [await asyncpg.connect(database_url) for _ in range(2)]
    try:
        # One replica's fold, not yet committed, holds the rows it folds ...
        tx = first.transaction()
        await tx.start()
        await queries.fold_order_counts(first)
        await queries.fold_order_minutes(first, counters.MINUTES_KEPT_S)
        # ... an order arrives meanwhile ...
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO product_orders (ssd_id, barcode, quantity) VALUES ($1, $2, 1)",
                ssd_id,
                products[0],
            )
        # ... and the other replica's fold waits for those rows, then skips them.
        other = asyncio.create_task(fold_in_transaction(second))
        await eventually(lambda: waiting_for_a_lock(pool))
        await tx.commit()
        await other
    finally:
        await first.close()
        await second.close()
    now = await counted(pool)
    assert now == {"pending": 8, "shipped": 4, "completed": 4}
    assert await ledger(pool) == {status: (n, n) for status, n in now.items()}
    assert await minutes(pool) == (16, 4)


async def fold_in_transaction(conn: asyncpg.Connection) -> None:
    async with conn.transaction():
        await queries.fold_order_counts(conn)
        await queries.fold_order_minutes(conn, counters.MINUTES_KEPT_S)


async def waiting_for_a_lock(pool) -> bool:
    async with pool.acquire() as conn:
        return await conn.fetchval(
            """SELECT count(*) > 0 FROM pg_stat_activity
               WHERE datname = current_database() AND wait_event_type = 'Lock'
                 AND query LIKE '%DELETE FROM order_counts%'"""
        )


async def test_the_migration_counts_the_orders_stored_before_it(database_url):
    """A database that held orders before migration 014: its counters start from them."""
    name = f"counters_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    conn = await asyncpg.connect(urlunsplit(urlsplit(database_url)._replace(path=f"/{name}")))
    try:
        files = migration_files()
        for version, _, sql in files:
            if version < COUNTERS_VERSION:
                await conn.execute(sql)
        await conn.execute(
            """INSERT INTO products (barcode, name) VALUES ('1', 'one');
               INSERT INTO users (first_name, last_name, email, password_hash)
                   VALUES ('a', 'b', 'c@example.org', 'x');
               INSERT INTO ssds (user_id, mac_address) VALUES (1, '02:00:00:00:00:01');
               INSERT INTO product_orders (ssd_id, barcode, quantity, status, completed_at)
               SELECT 1, '1', 1, s, CASE WHEN s = 'completed' THEN now() END
               FROM unnest('{pending,shipped,completed,completed,cancelled}'::text[]) AS s"""
        )
        await conn.execute(next(sql for v, _, sql in files if v == COUNTERS_VERSION))
        rows = await conn.fetch("SELECT status, stored, lifetime FROM order_totals")
        assert {r["status"]: (r["stored"], r["lifetime"]) for r in rows} == {
            "pending": (1, 1), "shipped": (1, 1), "completed": (2, 2), "cancelled": (1, 1),
        }  # fmt: skip
        assert tuple(
            await conn.fetchrow("SELECT sum(placed), sum(completed) FROM orders_per_minute")
        ) == (5, 2)
    finally:
        await conn.close()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
