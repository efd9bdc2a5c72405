"""Faults inside the notifications service, end to end on real NATS and Postgres: a rejected
order ends `cancelled` once, and a fault set through the generator's control API reaches every
replica without a restart."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import aiohttp
from offsim_common import bus, faults, subjects
from offsim_common.events import OrderEvent, OrderStatus
from offsim_common.faults import Faults, hits
from offsim_common.logs import REQUEST_ID_HEADER, request_id
from offsim_common.service import serving
from offsim_generator.__main__ import run
from offsim_launcher.embedded import free_port
from offsim_notifications.app import create_app

from tests.conftest import against, changed, eventually
from tests.helpers import register, stored_orders


@asynccontextmanager
async def replica(settings, port: int = 0):
    """One notifications replica in this process, for the length of the block."""
    async with serving(create_app(settings), port) as listening:
        yield listening


async def restock(users, orders, ssd_id: int, token: str) -> tuple[str, int, dict]:
    """Use up a watched product: the backend places its restock order."""
    resp = await users.get(f"/api/users/{ssd_id}")
    stock = (await resp.json())["ssds"][0]["stock"][0]
    resp = await users.post(
        f"/api/ssds/{ssd_id}/consume",
        json={"barcode": stock["barcode"], "quantity": stock["quantity"]},
        headers={"Authorization": f"Bearer {token}"},
    )
    body = await resp.json()
    [placed] = body["restock"]
    return placed["barcode"], placed["order_id"], body


async def rejected_restock(users, orders, settings, js) -> tuple[dict, int, str, int]:
    """A registered user whose restock order the supplier will reject (every order is):
    (user, SSD id, product, order id)."""
    await faults.put(js, Faults(reject=1.0, seed=3))
    user = await register(users)
    ssd_id = user["devices"][0]["id"]
    barcode, order_id, _ = await restock(users, orders, ssd_id, user["token"])
    return user, ssd_id, barcode, order_id


async def test_rejected_order_ends_cancelled_once_and_the_ssd_orders_again(
    users, orders, pool, products, settings, nc
):
    js = nc.jetstream()
    user, ssd_id, barcode, order_id = await rejected_restock(users, orders, settings, js)
    async with replica(settings):

        async def status() -> str | None:
            resp = await orders.get(f"/api/orders/{order_id}")
            order = await resp.json()
            return order if order["status"] == "cancelled" else None

        order = await eventually(status)
    assert [t["status"] for t in order["transitions"]] == ["pending", "cancelled"]
    assert order["shipped_at"] is None and order["completed_at"] is None
    info = await js.stream_info(subjects.ORDERS_STREAM, subjects_filter="orders.>")
    assert info.state.subjects == {subjects.ORDERS_PENDING: 1, subjects.ORDERS_CANCELLED: 1}

    # The same event again (under another id, so the server keeps it): nothing changes.
    stored = await js.get_last_msg(subjects.ORDERS_STREAM, subjects.ORDERS_CANCELLED)
    ack = await js.publish(subjects.ORDERS_CANCELLED, stored.data, headers={"Nats-Msg-Id": "again"})

    async def handled_again() -> bool:
        info = await js.consumer_info(subjects.ORDERS_STREAM, subjects.ORDERS_RECORD_CANCELLED)
        return info.delivered.stream_seq >= ack.seq and info.num_ack_pending == 0

    await eventually(handled_again)
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT status, cancelled_at FROM product_orders WHERE id = $1", order_id
        )
        quantity = await conn.fetchval(
            "SELECT quantity FROM product_ssds WHERE ssd_id = $1 AND barcode = $2", ssd_id, barcode
        )
        delivered = await conn.fetchval("SELECT count(*) FROM stock_deliveries")
    assert row["status"] == "cancelled"
    assert row["cancelled_at"].isoformat() == order["transitions"][1]["at"].replace("Z", "+00:00")
    # The stock is as the consumption left it: nothing was delivered.
    assert quantity == 0 and delivered == 0

    # No longer open: the SSD's next report makes the backend order it again.
    resp = await users.post(
        f"/api/ssds/{ssd_id}/consume", json={"barcode": barcode, "quantity": 1},
        headers={"Authorization": f"Bearer {user['token']}"},
    )  # fmt: skip
    body = await resp.json()
    [again] = body["restock"]
    assert again["barcode"] == barcode and again["order_id"] != order_id
    assert body["stock"][0]["on_order"] is True
    resp = await orders.get(f"/api/orders/{again['order_id']}")
    assert (await resp.json())["kind"] == "restock"


async def test_fault_set_through_control_reaches_two_replicas_without_restart(
    users, orders, pool, products, settings, nc
):
    ports = [free_port(), free_port()]
    generator_port = free_port()
    # Next to no traffic: this test is about the faults.
    quiet = against(settings, users, orders, seed=5, tick_seconds=10**6)
    async with replica(settings, ports[0]), replica(settings, ports[1]):
        stop = asyncio.Event()
        running = asyncio.create_task(run(quiet, stop, probe_port=generator_port))
        try:
            async with aiohttp.ClientSession() as http:

                async def call(method: str, url: str, body: dict | None = None):
                    try:
                        async with http.request(method, url, json=body) as resp:
                            return resp.status, await resp.json()
                    except aiohttp.ClientConnectionError:
                        return None  # not listening yet

                async def seen(port: int) -> dict:
                    answer = await call("GET", f"http://127.0.0.1:{port}/api/faults")
                    return answer[1] if answer else {}

                control = f"http://127.0.0.1:{generator_port}/api/control"
                await eventually(lambda: call("GET", control), within=30)
                change = {"faults": {"reject": 0.25, "supplier_delay": 3, "courier_spike": 0.5}}
                status, state = await call("PUT", control, change)
                assert status == 200 and state["faults"]["reject"] == 0.25
                for port in ports:
                    await eventually(lambda p=port: _matches(seen(p), reject=0.25, seed=5,
                                                             supplier_delay=3.0,
                                                             courier_spike=0.5))  # fmt: skip

                status, _ = await call("PUT", control, {"faults": {"reject": None}})
                assert status == 200
                for port in ports:
                    await eventually(lambda p=port: _matches(seen(p), reject=0.0,
                                                             supplier_delay=3.0))  # fmt: skip
        finally:
            stop.set()
            await running
        # The run is over: it leaves no fault behind.
        for port in ports:
            await eventually(lambda p=port: _matches(seen_after(p), supplier_delay=1.0,
                                                     courier_spike=0.0))  # fmt: skip


async def seen_after(port: int) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/api/faults") as resp:
            return await resp.json()


async def _matches(body, **wanted) -> bool:
    got = await body
    return all(got.get(key) == value for key, value in wanted.items())


def test_which_orders_a_share_hits_is_fixed_by_the_seed():
    first = [hits(7, "reject", order, 0.3) for order in range(1, 2001)]
    assert first == [hits(7, "reject", order, 0.3) for order in range(1, 2001)]
    assert 0.25 < sum(first) / len(first) < 0.35
    assert first != [hits(8, "reject", order, 0.3) for order in range(1, 2001)]
    assert not any(hits(7, "reject", order, 0.0) for order in range(1, 100))
    assert all(hits(7, "reject", order, 1.0) for order in range(1, 100))


async def test_supplier_delay_and_courier_spikes_stretch_the_stages(
    users, orders, pool, products, settings, nc
):
    """Both stages take 60 simulated seconds (0.1 s at x600); with the supplier's delay
    multiplied by 20 and every delivery spiked 20 times, each takes at least 2 s."""
    await faults.put(
        nc.jetstream(), Faults(supplier_delay=20, courier_spike=1.0, courier_spike_factor=20)
    )
    user = await register(users)
    ssd_id = user["devices"][0]["id"]
    slow = changed(settings, supplier_delay=(60.0, 60.0), delivery_delay=(60.0, 60.0))
    async with replica(slow):
        _, order_id, _ = await restock(users, orders, ssd_id, user["token"])

        async def completed() -> dict | None:
            order = await (await orders.get(f"/api/orders/{order_id}")).json()
            return order if order["status"] == "completed" else None

        await eventually(completed, within=30)
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT created_at, shipped_at, completed_at FROM product_orders WHERE id = $1",
            order_id,
        )
    # A stage is due its delay after the previous event; it can only be later, never earlier.
    assert (row["shipped_at"] - row["created_at"]).total_seconds() >= 2.0
    assert (row["completed_at"] - row["shipped_at"]).total_seconds() >= 2.0


async def test_a_completed_event_for_a_cancelled_order_adds_nothing_to_stock(
    users, orders, pool, products, settings, nc
):
    js = nc.jetstream()
    _, ssd_id, barcode, order_id = await rejected_restock(users, orders, settings, js)
    async with replica(settings):

        async def cancelled() -> bool:
            resp = await orders.get(f"/api/orders/{order_id}")
            return (await resp.json())["status"] == "cancelled"

        await eventually(cancelled)
    stored = await js.get_last_msg(subjects.ORDERS_STREAM, subjects.ORDERS_CANCELLED)
    event = OrderEvent.model_validate_json(stored.data)
    completed = event.advanced(OrderStatus.COMPLETED, event.timestamp)
    ack = await js.publish(subjects.ORDERS_COMPLETED, completed.model_dump_json().encode())

    async def handled() -> bool:
        info = await js.consumer_info(subjects.ORDERS_STREAM, subjects.USERS_RESTOCK)
        return info.delivered.stream_seq >= ack.seq and info.num_ack_pending == 0

    await eventually(handled)
    async with pool.acquire() as conn:
        delivered = await conn.fetchval("SELECT count(*) FROM stock_deliveries")
        quantity = await conn.fetchval(
            "SELECT quantity FROM product_ssds WHERE ssd_id = $1 AND barcode = $2", ssd_id, barcode
        )
    assert delivered == 0 and quantity == 0


async def test_a_fetched_batch_moves_each_order_on_once(
    users, orders, pool, products, settings, nc, caplog
):
    """Pending orders stored before the supplier starts are fetched and moved on together
    (their next events published back to back, their acks awaited together): each order the
    faults reject once on orders.cancelled, each other once on orders.shipped, carrying its
    placing request's id; then the courier completes the shipped ones."""
    js = nc.jetstream()
    seed = 11
    await faults.put(js, Faults(reject=0.5, seed=seed))
    ssd_id = (await register(users))["devices"][0]["id"]
    ids = await stored_orders(pool, ssd_id, [*products, *products])
    expected = {
        order_id: subjects.ORDERS_CANCELLED
        if hits(seed, "reject", order_id, 0.5)
        else subjects.ORDERS_SHIPPED
        for order_id in ids
    }
    assert set(expected.values()) == {subjects.ORDERS_CANCELLED, subjects.ORDERS_SHIPPED}
    seen: list[tuple[str, int, str | None]] = []

    async def record(msg) -> None:
        event = OrderEvent.model_validate_json(msg.data)
        if event.id in expected:
            seen.append((msg.subject, event.id, (msg.headers or {}).get(REQUEST_ID_HEADER)))

    subscriptions = [
        await nc.subscribe(subject, cb=record)
        for subject in (subjects.ORDERS_SHIPPED, subjects.ORDERS_CANCELLED)
    ]
    now = datetime.now(UTC)
    for order_id, barcode in zip(ids, [*products, *products], strict=True):
        event = OrderEvent(id=order_id, ssd_id=ssd_id, barcode=barcode, quantity=1,
                           status=OrderStatus.PENDING, timestamp=now, created_at=now)  # fmt: skip
        token = request_id.set(f"placing-{order_id}")  # as the orders service publishes it
        try:
            await bus.publish(js, subjects.ORDERS_PENDING, event, event.msg_id)
        finally:
            request_id.reset(token)
    quick = changed(settings, supplier_delay=(0.0, 0.0), delivery_delay=(0.0, 0.0))
    caplog.set_level(logging.DEBUG, logger="offsim_notifications.stages")
    async with replica(quick):

        async def settled() -> bool:
            async with pool.acquire() as conn:
                statuses = await conn.fetch(
                    "SELECT id, status FROM product_orders WHERE id = ANY($1)", ids
                )
            final = {"cancelled": subjects.ORDERS_CANCELLED, "completed": subjects.ORDERS_SHIPPED}
            return {row["id"]: final.get(row["status"]) for row in statuses} == expected

        await eventually(settled)
    for subscription in subscriptions:
        await subscription.unsubscribe()
    assert sorted((subject, order_id) for subject, order_id, _ in seen) == sorted(
        (subject, order_id) for order_id, subject in expected.items()
    )
    assert {request for *_, request in seen} == {f"placing-{order_id}" for order_id in ids}
    together = [r.args[0] for r in caplog.records if "moved on by the supplier" in r.getMessage()]
    assert together and max(together) > 1, "the supplier moved no batch on at once"
