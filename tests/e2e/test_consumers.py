"""JetStream consumers: idempotent, and a bad message never stops them."""

from __future__ import annotations

from datetime import UTC, datetime

from nats.js import api
from offsim_common import bus, subjects
from offsim_common.app_keys import NC
from offsim_common.events import OrderEvent, OrderStatus
from offsim_common.logs import REQUEST_ID_HEADER

from tests.conftest import eventually
from tests.helpers import register, stored_orders


async def stock_of(pool, ssd_id: int, barcode: str) -> int | None:
    async with pool.acquire() as conn:
        return await conn.fetchval(
            "SELECT quantity FROM product_ssds WHERE ssd_id = $1 AND barcode = $2", ssd_id, barcode
        )


async def test_bad_and_duplicate_completed_events_change_stock_once(
    users, orders, nc, pool, products
):
    ssd_id = (await register(users))["devices"][0]["id"]
    async with pool.acquire() as conn:
        unwatched = await conn.fetchval(
            "SELECT barcode FROM products WHERE barcode = ANY($1::text[]) AND barcode NOT IN "
            "(SELECT barcode FROM product_ssds WHERE ssd_id = $2) LIMIT 1",
            products,
            ssd_id,
        )
    resp = await orders.post(
        "/api/orders", json={"ssd_id": ssd_id, "barcode": unwatched, "quantity": 3}
    )
    order = await resp.json()
    js = nc.jetstream()
    # Garbage first: not JSON, then JSON missing fields. Both must be skipped.
    await js.publish(subjects.ORDERS_COMPLETED, b"\xff not json")
    await js.publish(subjects.ORDERS_COMPLETED, b'{"id": "seven"}')
    event = OrderEvent(
        id=order["id"], ssd_id=ssd_id, barcode=unwatched, quantity=3,
        status=OrderStatus.COMPLETED, timestamp=datetime.now(UTC),
    )  # fmt: skip
    # Twice, with different message ids, so the server does not drop the second: the consumer
    # itself must be idempotent.
    await bus.publish(js, subjects.ORDERS_COMPLETED, event, "a")
    await bus.publish(js, subjects.ORDERS_COMPLETED, event, "b")

    async def delivered_and_recorded():
        async with pool.acquire() as conn:
            status = await conn.fetchval(
                "SELECT status FROM product_orders WHERE id = $1", order["id"]
            )
        info = await js.consumer_info(subjects.ORDERS_STREAM, subjects.USERS_RESTOCK)
        return status == "completed" and info.num_pending == 0 and info.num_ack_pending == 0

    await eventually(delivered_and_recorded)
    # A product the SSD did not watch gets a row created by the delivery, counted once.
    assert await stock_of(pool, ssd_id, unwatched) == 3


async def test_orders_published_while_down_are_republished(orders, nc, pool, users, products):
    """An order saved but never announced (NATS was down) is announced by the re-publisher."""
    ssd_id = (await register(users))["devices"][0]["id"]
    async with pool.acquire() as conn:
        order_id = await conn.fetchval(
            """INSERT INTO product_orders (ssd_id, barcode, quantity, created_at, request_id)
               VALUES ($1, $2, 1, now() - interval '1 minute', 'placed-by-42') RETURNING id""",
            ssd_id,
            products[0],
        )

    async def published():
        async with pool.acquire() as conn:
            return await conn.fetchval(
                "SELECT published_at IS NOT NULL FROM product_orders WHERE id = $1", order_id
            )

    await eventually(published)
    msg = await nc.jetstream().get_last_msg(subjects.ORDERS_STREAM, subjects.ORDERS_PENDING)
    assert OrderEvent.model_validate_json(msg.data).id == order_id
    # The request that placed it still names the order on the bus.
    assert msg.headers[REQUEST_ID_HEADER] == "placed-by-42"


async def test_order_placed_while_nats_is_down_is_kept_for_the_republisher(
    orders, users, pool, products
):
    ssd_id = (await register(users))["devices"][0]["id"]
    await orders.app[NC].close()
    resp = await orders.post(
        "/api/orders", json={"ssd_id": ssd_id, "barcode": products[0], "quantity": 1}
    )
    assert resp.status == 201  # the order stands
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT status, published_at FROM product_orders WHERE id = $1",
            (await resp.json())["id"],
        )
    assert row["status"] == "pending" and row["published_at"] is None


async def test_completed_event_for_an_unknown_order_is_dead_lettered_at_once(users, nc, pool):
    """A foreign-key violation cannot heal by retrying: no hundred tracebacks, one dead letter."""
    js = nc.jetstream()
    event = OrderEvent(
        id=424242, ssd_id=1, barcode="3017620422003", quantity=1,
        status=OrderStatus.COMPLETED, timestamp=datetime.now(UTC),
    )  # fmt: skip
    await bus.publish(js, subjects.ORDERS_COMPLETED, event, event.msg_id)
    sub = await js.subscribe(
        f"{subjects.DEAD_LETTER_PREFIX}.{subjects.USERS_RESTOCK}", ordered_consumer=True
    )
    msg = await sub.next_msg(timeout=10)
    await sub.unsubscribe()
    assert OrderEvent.model_validate_json(msg.data).id == 424242
    assert msg.headers[bus.REASON_HEADER].startswith("cannot be applied")
    info = await js.consumer_info(subjects.ORDERS_STREAM, subjects.USERS_RESTOCK)
    assert info.num_redelivered == 0


async def test_events_that_contradict_the_order_are_dead_lettered_and_change_nothing(
    users, orders, nc, pool, products
):
    """A forged or garbled event for a real order (another quantity, SSD or product) neither
    moves the order nor adds to stock: it is dead-lettered by each consumer, and the genuine
    event still applies afterwards."""
    ssd_id = (await register(users))["devices"][0]["id"]
    resp = await orders.post(
        "/api/orders", json={"ssd_id": ssd_id, "barcode": products[0], "quantity": 2}
    )
    order = await resp.json()
    before = await stock_of(pool, ssd_id, products[0]) or 0
    genuine = OrderEvent(
        id=order["id"], ssd_id=ssd_id, barcode=products[0], quantity=2,
        status=OrderStatus.COMPLETED, timestamp=datetime.now(UTC),
    )  # fmt: skip
    forged = [
        genuine.model_copy(update={"quantity": 99}),
        genuine.model_copy(update={"ssd_id": ssd_id + 1000}),
        genuine.model_copy(update={"barcode": products[1], "product_id": products[1]}),
    ]
    js = nc.jetstream()
    for n, event in enumerate(forged):
        shipped = event.advanced(OrderStatus.SHIPPED, event.timestamp)
        await bus.publish(js, subjects.ORDERS_SHIPPED, shipped, f"s{n}")
        await bus.publish(js, subjects.ORDERS_COMPLETED, event, f"c{n}")

    async def dead(durable: str) -> int:
        info = await js.stream_info(
            subjects.DEAD_LETTER_STREAM, subjects_filter=f"{subjects.DEAD_LETTER_PREFIX}.{durable}"
        )
        return sum((info.state.subjects or {}).values())

    for durable in (subjects.ORDERS_RECORD_SHIPPED, subjects.ORDERS_RECORD_COMPLETED,
                    subjects.USERS_RESTOCK):  # fmt: skip

        async def all_dead(durable: str = durable) -> bool:
            return await dead(durable) == len(forged)

        await eventually(all_dead)
    async with pool.acquire() as conn:
        assert await conn.fetchval(
            "SELECT status FROM product_orders WHERE id = $1", order["id"]
        ) == "pending"  # fmt: skip
    assert (await stock_of(pool, ssd_id, products[0]) or 0) == before

    await bus.publish(js, subjects.ORDERS_COMPLETED, genuine, genuine.msg_id)

    async def applied() -> bool:
        return await stock_of(pool, ssd_id, products[0]) == before + 2

    await eventually(applied)


async def test_batch_with_one_contradicting_event_dead_letters_only_it(
    aiohttp_client, settings, users, nc, pool, products
):
    """Events fetched together are applied in one transaction; one that describes no order
    undoes that transaction, and then each is handled alone: the others apply and only it is
    dead-lettered."""
    from offsim_orders.app import create_app

    ssd_id = (await register(users))["devices"][0]["id"]
    ids = await stored_orders(pool, ssd_id, products[:5])
    js = nc.jetstream()
    dead_subject = f"{subjects.DEAD_LETTER_PREFIX}.{subjects.ORDERS_RECORD_SHIPPED}"
    before = await dead_letters(js, dead_subject)
    dead = await js.subscribe(
        dead_subject, ordered_consumer=True, deliver_policy=api.DeliverPolicy.NEW
    )
    now = datetime.now(UTC)
    events = [
        OrderEvent(id=order_id, ssd_id=ssd_id, barcode=barcode, quantity=1,
                   status=OrderStatus.SHIPPED, timestamp=now)
        for order_id, barcode in zip(ids, products, strict=False)
    ]  # fmt: skip
    forged = events[2].model_copy(update={"quantity": 99})
    # Stored before the orders service starts, so its consumer fetches them together.
    for n, event in enumerate([*events[:3], forged, *events[3:]]):
        await bus.publish(js, subjects.ORDERS_SHIPPED, event, f"batch-{n}")
    await aiohttp_client(create_app(settings))

    async def all_shipped() -> bool:
        async with pool.acquire() as conn:
            return await conn.fetchval(
                "SELECT count(*) FROM product_orders WHERE id = ANY($1) AND status = 'shipped'",
                ids,
            ) == len(ids)  # fmt: skip

    await eventually(all_shipped)
    msg = await dead.next_msg(timeout=10)
    assert OrderEvent.model_validate_json(msg.data).quantity == 99
    assert await dead_letters(js, dead_subject) == before + 1
    await dead.unsubscribe()


async def dead_letters(js, subject: str) -> int:
    info = await js.stream_info(subjects.DEAD_LETTER_STREAM, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())
