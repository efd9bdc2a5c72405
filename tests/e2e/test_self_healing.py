"""Self-healing: the ORDERS stream purged while orders are in flight loses no order. The
reconciler announces overdue orders again, and every order completes exactly once with the
stock exact."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from offsim_common import bus, subjects
from offsim_common.events import OrderEvent
from offsim_orders.reconciler import reconcile_once, stored_event
from prometheus_client import REGISTRY

from tests.conftest import changed, eventually
from tests.helpers import register


@pytest.fixture
def settings(settings):
    """Stages of 0.5 to 2 real seconds, so that orders are in flight when the stream is
    purged; overdue 0.5 s after a stage's longest delay, looked for every 0.2 s."""
    return changed(settings, sim_speed=120.0, reconcile_interval=0.2)


async def counts(pool: asyncpg.Pool) -> dict[str, int]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT status, count(*) FROM product_orders GROUP BY status")
        delivered = await conn.fetchval("SELECT count(*) FROM stock_deliveries")
    return {**{r["status"]: r["count"] for r in rows}, "delivered": delivered}


async def stock(pool: asyncpg.Pool) -> dict[tuple[int, str], int]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT ssd_id, barcode, quantity FROM product_ssds")
    return {(r["ssd_id"], r["barcode"]): r["quantity"] for r in rows}


async def stored(js, subject: str) -> list[OrderEvent]:
    """Every event the stream holds on `subject`."""
    sub = await js.subscribe(subject, ordered_consumer=True)
    events = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except TimeoutError:
                return events
            events.append(OrderEvent.model_validate_json(msg.data))
    finally:
        await sub.unsubscribe()


async def place(orders, ssd_id: int, barcodes: list[str], quantity: int) -> list[int]:
    ids = []
    for barcode in barcodes:
        resp = await orders.post(
            "/api/orders", json={"ssd_id": ssd_id, "barcode": barcode, "quantity": quantity}
        )
        assert resp.status == 201, await resp.text()
        ids.append((await resp.json())["id"])
    return ids


@pytest.mark.slow
async def test_orders_stream_purged_in_flight_every_order_completes_once(
    users, orders, notifications, nc, pool, products
):
    js = nc.jetstream()
    first, second = (d["id"] for d in (await register(users, devices=2))["devices"])
    before = await stock(pool)
    reannounced_before = reannounced()
    ids = await place(orders, first, products, 2)
    await eventually(lambda: _reached(pool, "shipped", 1))
    ids += await place(orders, second, products, 3)
    # Pending orders waiting on the supplier, shipped ones on the courier: all of it gone.
    await js.purge_stream(subjects.ORDERS_STREAM)
    await eventually(lambda: _reached(pool, "completed", 1), within=30)
    # Again with completions in flight: some recorded as completed, not yet added to stock.
    await js.purge_stream(subjects.ORDERS_STREAM)

    await eventually(lambda: _all_done(pool, len(ids)), within=45)

    after = await stock(pool)
    quantities = {first: 2, second: 3}
    assert after == {
        (ssd, barcode): before.get((ssd, barcode), 0) + quantities[ssd]
        for ssd in (first, second)
        for barcode in products
    }
    # Whatever the stream holds since the last purge, no order completed twice in it.
    completed = [event.id for event in await stored(js, subjects.ORDERS_COMPLETED)]
    assert len(completed) == len(set(completed)) and set(completed) <= set(ids)
    info = await js.stream_info(subjects.DEAD_LETTER_STREAM)
    assert info.state.messages == 0
    assert reannounced() > reannounced_before


def reannounced() -> float:
    return sum(
        REGISTRY.get_sample_value("offsim_order_reannouncements_total", {"status": s}) or 0.0
        for s in ("pending", "shipped", "completed")
    )


async def _reached(pool: asyncpg.Pool, status: str, n: int) -> bool:
    found = await counts(pool)
    if status == "shipped":
        return found.get("shipped", 0) + found.get("completed", 0) >= n
    return found.get(status, 0) >= n


async def _all_done(pool: asyncpg.Pool, n: int) -> bool:
    found = await counts(pool)
    return found.get("completed", 0) == n and found["delivered"] == n


async def test_replicas_reannounce_each_overdue_order_once(
    users, nc, pool, products, settings, database_url
):
    """Two replicas reconciling at once: each overdue order is announced by one of them, on the
    subject its next stage waits for, with the time and de-duplication id of the original;
    then it is claimed for a stage period. Orders that are not overdue are left alone, and a
    completed order seen in stock is noted as delivered."""
    js = nc.jetstream()
    await js.purge_stream(subjects.ORDERS_STREAM)
    ssd_id = (await register(users))["devices"][0]["id"]
    overdue: dict[int, asyncpg.Record] = {}
    async with pool.acquire() as conn:
        for status, barcodes in (("pending", products[:2]), ("shipped", products[2:4]),
                                 ("completed", products[4:])):  # fmt: skip
            for barcode in barcodes:
                row = await conn.fetchrow(
                    """INSERT INTO product_orders (ssd_id, barcode, quantity, status, created_at,
                           shipped_at, completed_at, published_at)
                       VALUES ($1, $2, 1, $3, now() - interval '1 hour',
                               CASE WHEN $3 <> 'pending' THEN now() - interval '50 minutes' END,
                               CASE WHEN $3 = 'completed' THEN now() - interval '40 minutes' END,
                               now() - interval '1 hour')
                       RETURNING *""",
                    ssd_id, barcode, status,
                )  # fmt: skip
                overdue[row["id"]] = row
        # Not overdue: just placed; never announced (the re-publisher's); delivered to stock.
        await conn.execute(
            """INSERT INTO product_orders (ssd_id, barcode, quantity, published_at)
               VALUES ($1, $2, 1, now()), ($1, $2, 1, NULL)""",
            ssd_id, products[0],
        )  # fmt: skip
        delivered = await conn.fetchval(
            """INSERT INTO product_orders (ssd_id, barcode, quantity, status, created_at,
                   shipped_at, completed_at, published_at)
               VALUES ($1, $2, 1, 'completed', now() - interval '1 hour',
                       now() - interval '1 hour', now() - interval '1 hour', now())
               RETURNING id""",
            ssd_id, products[1],
        )  # fmt: skip
        await conn.execute("INSERT INTO stock_deliveries (order_id) VALUES ($1)", delivered)

    replicas = [await asyncpg.create_pool(database_url, min_size=1, max_size=2) for _ in "ab"]
    try:
        done = await asyncio.gather(*(reconcile_once(p, js, settings) for p in replicas))
        assert sum(done) == len(overdue) == 5
        again = await asyncio.gather(*(reconcile_once(p, js, settings) for p in replicas))
        assert again == [0, 0]  # claimed for a stage period
    finally:
        await asyncio.gather(*(p.close() for p in replicas))
    # The delivery seen in stock is noted, so that order is never looked at again; the
    # overdue completed ones stay watched.
    completed = [i for i, row in overdue.items() if row["status"] == "completed"]
    async with pool.acquire() as conn:
        confirmed = await conn.fetch(
            "SELECT id, delivery_confirmed FROM product_orders WHERE id = ANY($1)",
            [delivered, *completed],
        )
    assert dict(map(tuple, confirmed)) == {delivered: True, **dict.fromkeys(completed, False)}

    announced = [
        ("pending", subjects.ORDERS_PENDING, "created_at"),
        ("shipped", subjects.ORDERS_SHIPPED, "shipped_at"),
        ("completed", subjects.ORDERS_COMPLETED, "completed_at"),
    ]
    for status, subject, at in announced:
        events = await stored(js, subject)
        assert sorted(e.id for e in events) == sorted(
            i for i, row in overdue.items() if row["status"] == status
        )
        for event in events:
            row = overdue[event.id]
            assert (event.status, event.timestamp, event.created_at) == (
                status,
                row[at],
                row["created_at"],
            )


async def test_reannounced_order_already_past_its_stage_changes_nothing(
    users, orders, notifications, nc, pool, products
):
    """A re-announcement that comes late (the reconciler read the order just before it moved
    on), after the stream lost the order's events: the supplier and courier act on it again,
    their events are stored under derived ids, and every consumer ignores them."""
    js = nc.jetstream()
    ssd_id = (await register(users))["devices"][0]["id"]
    [order_id] = await place(orders, ssd_id, products[:1], 4)
    await eventually(lambda: _all_done(pool, 1), within=30)
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM product_orders WHERE id = $1", order_id)
    before = await stock(pool)
    await js.purge_stream(subjects.ORDERS_STREAM)

    subject, event = stored_event({**row, "status": "pending"})
    await bus.publish(js, subject, event, event.msg_id)

    async def delivered_again() -> bool:
        return [e.id for e in await stored(js, subjects.ORDERS_COMPLETED)] == [order_id]

    await eventually(delivered_again, within=30)
    for durable in (subjects.ORDERS_RECORD_COMPLETED, subjects.USERS_RESTOCK):

        async def handled(durable: str = durable) -> bool:
            info = await js.consumer_info(subjects.ORDERS_STREAM, durable)
            return info.num_pending == 0 and info.num_ack_pending == 0

        await eventually(handled)
    async with pool.acquire() as conn:
        after_row = await conn.fetchrow("SELECT * FROM product_orders WHERE id = $1", order_id)
    assert (after_row["shipped_at"], after_row["completed_at"]) == (
        row["shipped_at"], row["completed_at"]
    )  # fmt: skip
    assert await stock(pool) == before
    assert (await js.stream_info(subjects.DEAD_LETTER_STREAM)).state.messages == 0
