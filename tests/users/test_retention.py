"""The users service's retention: reading ids are kept as long as the same reading can come
again (the readings stream's age plus a device's re-send horizon), and no longer; old demand
buckets are folded with their sums kept exact; a late orders.completed of an order retention
deleted adds nothing to the stock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from offsim_common import bus, retention, subjects
from offsim_common.events import OrderEvent, OrderStatus, SsdReading
from offsim_common.settings import ConfigError
from offsim_orders import retention as order_retention
from offsim_users import readings
from offsim_users import retention as users_retention
from offsim_users.settings import READING_RETENTION_S, UsersSettings

from tests.conftest import eventually
from tests.helpers import register

KEPT = timedelta(seconds=READING_RETENTION_S)


@pytest.fixture
async def watched(pool: asyncpg.Pool, products: list[str]) -> tuple[int, str]:
    """An SSD with a full stock of one product, stored directly: an SSD id and its product."""
    async with pool.acquire() as conn:
        user_id = await conn.fetchval(
            """INSERT INTO users (first_name, last_name, email, password_hash)
               VALUES ('Re', 'Tention', 'readings@example.org', 'x') RETURNING id"""
        )
        ssd_id = await conn.fetchval(
            "INSERT INTO ssds (user_id, mac_address) VALUES ($1, '02:00:00:00:bb:01') RETURNING id",
            user_id,
        )
        await conn.execute(
            """INSERT INTO product_ssds (ssd_id, barcode, quantity, reorder_point, capacity)
               VALUES ($1, $2, 100, 0, 100)""",
            ssd_id,
            products[0],
        )
    return ssd_id, products[0]


async def send(pool: asyncpg.Pool, ssd_id: int, barcode: str, reading_id: str) -> str:
    """One reading of one unit, applied as the consumer applies a batch; its outcome."""
    reading = SsdReading(ssd_id=ssd_id, barcode=barcode, quantity=1, reading_id=reading_id)
    async with pool.acquire() as conn, conn.transaction():
        (outcome,) = (await readings.apply(conn, [reading])).outcomes
    return outcome


async def applied_ago(pool: asyncpg.Pool, reading_id: str, ago: timedelta) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE ssd_readings SET applied_at = now() - $2::interval WHERE reading_id = $1",
            reading_id,
            ago,
        )


async def stock(pool: asyncpg.Pool, ssd_id: int, barcode: str) -> int:
    async with pool.acquire() as conn:
        return await conn.fetchval(
            "SELECT quantity FROM product_ssds WHERE ssd_id = $1 AND barcode = $2", ssd_id, barcode
        )


def test_reading_ids_are_kept_as_long_as_a_reading_can_come_again():
    """By default from the stream, as long as it holds a reading, plus a device's re-send
    horizon of 12 hours; a setting may shorten it, but never below a redelivery's delay."""
    assert READING_RETENTION_S == bus.READINGS_MAX_AGE_S + 12 * 3600 == 24 * 3600
    assert UsersSettings.from_env({}).reading_retention == READING_RETENTION_S
    assert UsersSettings.from_env({"OFFSIM_READING_RETENTION": "10m"}).reading_retention == 600
    assert UsersSettings.from_env({"OFFSIM_READING_RETENTION": "0"}).reading_retention == 0
    with pytest.raises(ConfigError, match="OFFSIM_READING_RETENTION"):
        UsersSettings.from_env({"OFFSIM_READING_RETENTION": "30s"})


async def test_reading_ids_past_the_horizon_go_and_those_within_it_still_count(pool, watched):
    ssd_id, barcode = watched
    for reading_id in ("old", "recent", "new"):
        assert await send(pool, ssd_id, barcode, reading_id) == readings.APPLIED
    await applied_ago(pool, "old", KEPT + timedelta(minutes=1))
    await applied_ago(pool, "recent", KEPT - timedelta(hours=1))
    assert await stock(pool, ssd_id, barcode) == 97

    deleted = await retention.prune_all(
        lambda batch: users_retention.delete_reading_ids(pool, READING_RETENTION_S, batch)
    )

    assert deleted == 1
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT reading_id FROM ssd_readings")
    kept = {row["reading_id"] for row in rows}
    assert kept == {"recent", "new"}
    # Sent again within the horizon: still a no-op.
    assert await send(pool, ssd_id, barcode, "recent") == readings.DUPLICATE
    assert await send(pool, ssd_id, barcode, "new") == readings.DUPLICATE
    assert await stock(pool, ssd_id, barcode) == 97
    # Past it, the id is forgotten: the same reading would be applied again (the horizon is
    # longer than any reading can come back after).
    assert await send(pool, ssd_id, barcode, "old") == readings.APPLIED


async def test_reading_ids_are_deleted_in_batches_by_two_replicas_each_once(pool, watched):
    ssd_id, _ = watched
    async with pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO ssd_readings (ssd_id, reading_id, applied_at)
               SELECT $1, g::text, now() - $2::interval - g * interval '1 second'
               FROM generate_series(1, 5000) g""",
            ssd_id,
            KEPT,
        )

    async def one_replica() -> int:
        return await retention.prune_all(
            lambda batch: users_retention.delete_reading_ids(pool, READING_RETENTION_S, batch),
            batch=300,
        )

    first, second = await asyncio.gather(one_replica(), one_replica())

    assert first + second == 5000
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM ssd_readings") == 0


async def test_old_demand_buckets_are_folded_and_every_sum_stays_exact(pool):
    async def sums() -> tuple[int, int, int]:
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT sum(readings), sum(units_wanted), sum(units_short) FROM ssd_demand"
            )
        return tuple(row)

    async def buckets() -> int:
        async with pool.acquire() as conn:
            return await conn.fetchval("SELECT count(*) FROM ssd_demand")

    async def bucket(ago: timedelta, readings: int) -> None:
        async with pool.acquire() as conn:
            await conn.execute(
                """INSERT INTO ssd_demand (bucket, readings, units_wanted, units_short)
                   VALUES (to_timestamp(floor(extract(epoch FROM now() - $1::interval) / 10)
                                        * 10), $2::bigint, $2 * 2, $2 - 1)""",
                ago,
                readings,
            )

    for n, ago in enumerate((timedelta(days=3), timedelta(days=2), timedelta(hours=25)), 1):
        await bucket(ago, 10 * n)
    await bucket(timedelta(hours=1), 1000)
    await bucket(timedelta(0), 5000)
    before = await sums()

    folded = await retention.prune_all(lambda batch: users_retention.fold_demand(pool, batch))

    assert folded == 3
    assert await sums() == before
    assert await buckets() == 3  # the day kept, and one row for everything before it
    async with pool.acquire() as conn:
        assert await conn.fetchval(
            "SELECT readings FROM ssd_demand WHERE bucket = '-infinity'"
        ) == 60  # fmt: skip

    # Folded again later: added to the same row.
    await bucket(timedelta(days=4), 7)
    assert await users_retention.fold_demand(pool, retention.BATCH) == 1
    assert await buckets() == 3
    assert (await sums())[0] == before[0] + 7


async def test_a_late_completed_event_of_a_deleted_order_adds_nothing(users, nc, pool, products):
    """An order completed, in stock and then deleted by retention: an orders.completed for it
    that comes afterwards (a copy the stream still held) adds nothing to the stock and is
    dead-lettered, since it describes no order the database knows."""
    device = (await register(users))["devices"][0]
    ssd_id, barcode = device["id"], device["watched"][0]
    async with pool.acquire() as conn:
        order_id = await conn.fetchval(
            """INSERT INTO product_orders (ssd_id, barcode, quantity, status, created_at,
                                           shipped_at, completed_at, delivery_confirmed)
               VALUES ($1, $2, 4, 'completed', now() - interval '9 days',
                       now() - interval '9 days', now() - interval '8 days', true)
               RETURNING id""",
            ssd_id,
            barcode,
        )
        await conn.execute("INSERT INTO stock_deliveries (order_id) VALUES ($1)", order_id)
    before = await stock(pool, ssd_id, barcode)
    assert await order_retention.delete_finished(pool, 7 * 86400, retention.BATCH) == 1

    js = nc.jetstream()
    event = OrderEvent(id=order_id, ssd_id=ssd_id, barcode=barcode, quantity=4,
                       status=OrderStatus.COMPLETED, timestamp=datetime.now(UTC))  # fmt: skip
    await bus.publish(js, subjects.ORDERS_COMPLETED, event, event.msg_id)

    async def dead_lettered() -> bool:
        info = await js.stream_info(
            subjects.DEAD_LETTER_STREAM,
            subjects_filter=f"{subjects.DEAD_LETTER_PREFIX}.{subjects.USERS_RESTOCK}",
        )
        return sum((info.state.subjects or {}).values()) == 1

    await eventually(dead_lettered)
    assert await stock(pool, ssd_id, barcode) == before
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM stock_deliveries") == 0
