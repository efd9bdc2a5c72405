"""SSD readings on ssds.<id>.readings: applied by the users service in batches, each once; the
backend places one restock order per crossing of the reorder point; bad readings are counted and
skipped, never stop the consumer."""

from __future__ import annotations

import json

import pytest
from offsim_common import bus, subjects
from offsim_common.events import SsdReading
from offsim_users import readings

from tests.conftest import eventually
from tests.helpers import metric, register


def reading(ssd_id: int, barcode: str, quantity: int, reading_id: str) -> bytes:
    return (
        SsdReading(ssd_id=ssd_id, barcode=barcode, quantity=quantity, reading_id=reading_id)
        .model_dump_json()
        .encode()
    )


async def stock_of(pool, ssd_id: int, barcode: str) -> dict:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            """SELECT quantity, reorder_point, capacity, units_wanted, units_short
               FROM product_ssds WHERE ssd_id = $1 AND barcode = $2""",
            ssd_id,
            barcode,
        )
    return dict(row)


async def restock_orders(pool, ssd_id: int, barcode: str) -> list[dict]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            """SELECT id, quantity, kind, placed_by, status FROM product_orders
               WHERE ssd_id = $1 AND barcode = $2 ORDER BY id""",
            ssd_id,
            barcode,
        )
    return [dict(row) for row in rows]


async def a_device(users) -> tuple[int, str]:
    """A registered SSD and one product it watches (from the registration's answer)."""
    user = await register(users, "device@example.org")
    device = user["devices"][0]
    assert device["watched"], device
    return device["id"], device["watched"][0]


async def metrics_text(users) -> str:
    return await (await users.get("/metrics")).text()


async def test_readings_are_applied_once_each(users, pool, nc, products):
    ssd_id, barcode = await a_device(users)
    before = await stock_of(pool, ssd_id, barcode)
    page = await metrics_text(users)
    applied0 = metric(page, "offsim_ssd_readings_total", outcome="applied")
    duplicate0 = metric(page, "offsim_ssd_readings_total", outcome="duplicate")
    js = nc.jetstream()
    subject = subjects.ssd_readings(ssd_id)
    await js.publish(subject, reading(ssd_id, barcode, 1, "r-1"))
    await js.publish(subject, reading(ssd_id, barcode, 2, "r-2"))
    # Sent again (a device that lost the ack): nothing more is used.
    await js.publish(subject, reading(ssd_id, barcode, 2, "r-2"))

    async def settled() -> bool:
        page = await metrics_text(users)
        return metric(page, "offsim_ssd_readings_total") - applied0 - duplicate0 >= 3

    await eventually(settled)
    after = await stock_of(pool, ssd_id, barcode)
    assert after["quantity"] == max(before["quantity"] - 3, 0)
    assert after["units_wanted"] == 3
    page = await metrics_text(users)
    assert metric(page, "offsim_ssd_readings_total", outcome="applied") - applied0 == 2
    assert metric(page, "offsim_ssd_readings_total", outcome="duplicate") - duplicate0 == 1
    assert metric(page, "offsim_consumer_pending", consumer=subjects.USERS_APPLY_READINGS) == 0


async def test_a_batch_applies_each_reading_once_and_never_below_zero(users, pool, products):
    """The statement itself: a repeated id in one batch and a repeat of an earlier batch count
    once; demand beyond the stock is recorded as short."""
    ssd_id, barcode = await a_device(users)
    start = (await stock_of(pool, ssd_id, barcode))["quantity"]
    batch = [
        SsdReading(ssd_id=ssd_id, barcode=barcode, quantity=start, reading_id="a"),
        SsdReading(ssd_id=ssd_id, barcode=barcode, quantity=start, reading_id="a"),
        SsdReading(ssd_id=ssd_id, barcode=barcode, quantity=5, reading_id="b"),
        SsdReading(ssd_id=ssd_id + 1000, barcode=barcode, quantity=1, reading_id="c"),
        SsdReading(ssd_id=ssd_id, barcode="0000000000000", quantity=1, reading_id="d"),
    ]
    async with pool.acquire() as conn, conn.transaction():
        first = await readings.apply(conn, batch)
    assert first.outcomes == ["applied", "duplicate", "applied", "rejected", "rejected"]
    row = await stock_of(pool, ssd_id, barcode)
    assert row["quantity"] == 0
    assert (row["units_wanted"], row["units_short"]) == (start + 5, 5)
    async with pool.acquire() as conn, conn.transaction():
        again = await readings.apply(conn, batch[:3])
    assert again.outcomes == ["duplicate"] * 3
    assert again.restocks == [] and again.stock == []
    assert await stock_of(pool, ssd_id, barcode) == row
    async with pool.acquire() as conn:
        demand = await conn.fetchrow(
            "SELECT sum(readings) AS r, sum(units_wanted) AS w, sum(units_short) AS s "
            "FROM ssd_demand"
        )
    assert (demand["r"], demand["w"], demand["s"]) == (2, start + 5, 5)


async def test_one_restock_order_per_crossing(users, pool, nc, products):
    ssd_id, barcode = await a_device(users)
    row = await stock_of(pool, ssd_id, barcode)
    above = row["quantity"] - row["reorder_point"]  # units left before the crossing
    js = nc.jetstream()
    subject = subjects.ssd_readings(ssd_id)
    for n in range(above):
        await js.publish(subject, reading(ssd_id, barcode, 1, f"up-{n}"))
    await eventually(lambda: _quantity_is(pool, ssd_id, barcode, row["reorder_point"]))
    assert await restock_orders(pool, ssd_id, barcode) == []  # at the reorder point, not below
    # The crossing: ordered back up to capacity from where it left the stock.
    await js.publish(subject, reading(ssd_id, barcode, 1, "cross"))
    await eventually(lambda: _wanted_is(pool, ssd_id, barcode, above + 1))
    orders = await restock_orders(pool, ssd_id, barcode)
    assert len(orders) == 1, orders
    first = orders[0]
    assert (first["kind"], first["placed_by"], first["status"]) == ("restock", "device", "pending")
    assert first["quantity"] == row["capacity"] - (row["reorder_point"] - 1)
    # More use while that order is on its way: no second order.
    for n in range(4):
        await js.publish(subject, reading(ssd_id, barcode, 1, f"down-{n}"))
    await eventually(lambda: _wanted_is(pool, ssd_id, barcode, above + 5))
    assert await restock_orders(pool, ssd_id, barcode) == orders


async def _quantity_is(pool, ssd_id: int, barcode: str, quantity: int) -> bool:
    return (await stock_of(pool, ssd_id, barcode))["quantity"] == quantity


async def _wanted_is(pool, ssd_id: int, barcode: str, units: int) -> bool:
    return (await stock_of(pool, ssd_id, barcode))["units_wanted"] == units


async def test_no_restock_while_any_order_is_on_its_way(users, orders, pool, products):
    ssd_id, barcode = await a_device(users)
    resp = await orders.post(
        "/api/orders", json={"ssd_id": ssd_id, "barcode": barcode, "quantity": 2}
    )
    assert resp.status == 201
    batch = [SsdReading(ssd_id=ssd_id, barcode=barcode, quantity=100, reading_id="all")]
    async with pool.acquire() as conn, conn.transaction():
        result = await readings.apply(conn, batch)
    assert result.outcomes == ["applied"] and result.restocks == []
    assert [o["kind"] for o in await restock_orders(pool, ssd_id, barcode)] == ["order"]


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b'{"ssd_id": 1}',
        json.dumps({"ssd_id": 1, "barcode": "1", "quantity": -3, "reading_id": "x"}).encode(),
        json.dumps({"ssd_id": 1, "barcode": "1", "quantity": 10**6, "reading_id": "x"}).encode(),
        json.dumps({"ssd_id": 1, "barcode": "1", "quantity": "2", "reading_id": "x"}).encode(),
        json.dumps({"ssd_id": 1, "barcode": "1", "quantity": 1, "reading_id": "a b"}).encode(),
    ],
    ids=["garbage", "missing-fields", "negative", "absurd", "string-quantity", "blank-id"],
)
async def test_a_malformed_reading_is_dead_lettered_and_the_consumer_goes_on(
    users, pool, nc, products, payload
):
    ssd_id, barcode = await a_device(users)
    before = await stock_of(pool, ssd_id, barcode)
    malformed0 = metric(await metrics_text(users), "offsim_ssd_readings_total", outcome="malformed")
    js = nc.jetstream()
    await js.publish(subjects.ssd_readings(ssd_id), payload)
    await js.publish(subjects.ssd_readings(ssd_id), reading(ssd_id, barcode, 1, "good"))
    await eventually(lambda: _wanted_is(pool, ssd_id, barcode, 1))
    assert (await stock_of(pool, ssd_id, barcode))["quantity"] == max(before["quantity"] - 1, 0)
    page = await metrics_text(users)
    assert metric(page, "offsim_ssd_readings_total", outcome="malformed") - malformed0 == 1
    dead_letters = f"{subjects.DEAD_LETTER_PREFIX}.{subjects.USERS_APPLY_READINGS}"
    dead = await js.get_last_msg(subjects.DEAD_LETTER_STREAM, dead_letters)
    assert dead.data == payload
    assert dead.headers[bus.SUBJECT_HEADER] == subjects.ssd_readings(ssd_id)


async def test_unknown_ssd_product_or_a_foreign_subject_is_rejected(users, pool, nc, products):
    ssd_id, barcode = await a_device(users)
    other = await register(users, "other@example.org")
    other_id, other_barcode = other["devices"][0]["id"], other["devices"][0]["watched"][0]
    before = await stock_of(pool, other_id, other_barcode)
    rejected0 = metric(await metrics_text(users), "offsim_ssd_readings_total", outcome="rejected")
    js = nc.jetstream()
    await js.publish(subjects.ssd_readings(99_999), reading(99_999, barcode, 1, "x1"))
    await js.publish(subjects.ssd_readings(ssd_id), reading(ssd_id, "0000000000000", 1, "x2"))
    # A device publishing for another SSD on its own subject.
    await js.publish(subjects.ssd_readings(ssd_id), reading(other_id, other_barcode, 1, "x3"))
    await js.publish(subjects.ssd_readings(ssd_id), reading(ssd_id, barcode, 1, "ok"))
    await eventually(lambda: _wanted_is(pool, ssd_id, barcode, 1))

    async def counted() -> float:
        page = await metrics_text(users)
        return metric(page, "offsim_ssd_readings_total", outcome="rejected") - rejected0 == 3

    await eventually(counted)
    assert await stock_of(pool, other_id, other_barcode) == before


async def test_the_orders_service_announces_a_restock_order_at_once(
    users, orders, pool, nc, products
):
    ssd_id, barcode = await a_device(users)
    js = nc.jetstream()
    await js.publish(subjects.ssd_readings(ssd_id), reading(ssd_id, barcode, 100, "empty"))
    placed = await eventually(lambda: restock_orders(pool, ssd_id, barcode))
    order_id = placed[0]["id"]

    async def announced() -> bool:
        async with pool.acquire() as conn:
            return await conn.fetchval(
                "SELECT published_at IS NOT NULL FROM product_orders WHERE id = $1", order_id
            )

    # Within the re-publisher's delay (REPUBLISH_AFTER_S, 5 s): told at commit, not polled.
    await eventually(announced, within=4.0)
    stored = await js.get_last_msg(subjects.ORDERS_STREAM, subjects.ORDERS_PENDING)
    event = json.loads(stored.data)
    assert (event["id"], event["ssd_id"], event["barcode"]) == (order_id, ssd_id, barcode)
    assert stored.headers["X-Request-Id"] == f"ssd-{ssd_id}-reading-empty"


async def test_the_users_answer_shows_the_demand_that_found_no_stock(users, pool, products):
    user = await register(users, "short@example.org")
    ssd_id, barcode = user["devices"][0]["id"], user["devices"][0]["watched"][0]
    start = (await stock_of(pool, ssd_id, barcode))["quantity"]
    reading = SsdReading(ssd_id=ssd_id, barcode=barcode, quantity=start + 4, reading_id="big")
    async with pool.acquire() as conn, conn.transaction():
        await readings.apply(conn, [reading])
    detail = await (await users.get(f"/api/users/{user['id']}")).json()
    [item] = [s for s in detail["ssds"][0]["stock"] if s["barcode"] == barcode]
    assert (item["quantity"], item["units_wanted"], item["units_short"]) == (0, start + 4, 4)


def test_a_readings_subject_names_an_ssd_in_ascii_digits_only():
    assert subjects.ssd_of_readings_subject("ssds.42.readings") == 42
    too_long = "ssds." + "9" * 20 + ".readings"
    for subject in ("ssds.².readings", "ssds.-1.readings", "ssds.4 2.readings",
                    "ssds.1.readings.x", "users.1.readings", too_long):  # fmt: skip
        assert subjects.ssd_of_readings_subject(subject) is None, subject


async def test_no_restock_while_a_completed_order_is_not_yet_in_stock(users, pool, products):
    """Between the orders service recording `completed` and the users service adding the
    delivery, the order is still on its way: a reading then places no second restock."""
    ssd_id, barcode = await a_device(users)
    async with pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO product_orders (ssd_id, barcode, quantity, kind, status, completed_at,
                                           published_at)
               VALUES ($1, $2, 5, 'restock', 'completed', now(), now())""",
            ssd_id,
            barcode,
        )
    batch = [SsdReading(ssd_id=ssd_id, barcode=barcode, quantity=100, reading_id="gone")]
    async with pool.acquire() as conn, conn.transaction():
        result = await readings.apply(conn, batch)
    assert result.outcomes == ["applied"] and result.restocks == []
    # Once the delivery is in the stock, the next reading below the point restocks again.
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO stock_deliveries (order_id) SELECT id FROM product_orders "
            "WHERE ssd_id = $1",
            ssd_id,
        )
    batch = [SsdReading(ssd_id=ssd_id, barcode=barcode, quantity=1, reading_id="next")]
    async with pool.acquire() as conn, conn.transaction():
        result = await readings.apply(conn, batch)
    assert [r["barcode"] for r in result.restocks] == [barcode]
