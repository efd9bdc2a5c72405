"""The notifications service killed with orders in flight: after a restart every order
completes, exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import aiohttp
import pytest
from offsim_common import subjects
from offsim_common.events import OrderEvent
from offsim_launcher.embedded import free_port
from offsim_notifications.stages import delay_for

from tests.conftest import eventually
from tests.helpers import register


async def start_notifications(nats_url: str) -> asyncio.subprocess.Process:
    """The real service in its own process, started the way `offsim up` starts it; returns once
    its health probe answers 200."""
    port = free_port()
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "HTTP_PORT": str(port),
        # Stages of 1 to 4 real seconds: slow enough to kill it mid-flight.
        "SIM_SPEED": "60",
        "LOG_LEVEL": "INFO",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "offsim_notifications",
        env=env, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    async with asyncio.timeout(20):
        while b"notifications ready" not in (line := await proc.stderr.readline()):
            if not line:
                raise AssertionError(f"notifications exited: {await proc.wait()}")
    # Keep reading its log so a full pipe never blocks it.
    asyncio.get_running_loop().create_task(proc.stderr.read())
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/api/health") as r,
    ):
        assert r.status == 200, await r.text()
    return proc


async def stock(pool) -> dict[tuple[int, str], int]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT ssd_id, barcode, quantity FROM product_ssds")
    return {(r["ssd_id"], r["barcode"]): r["quantity"] for r in rows}


async def status_counts(pool) -> dict[str, int]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT status, count(*) FROM product_orders GROUP BY status")
    return {r["status"]: r["count"] for r in rows}


@pytest.mark.slow
async def test_notifications_killed_with_orders_in_flight_completes_each_once(
    users, orders, nc, pool, products, nats_url
):
    devices = (await register(users, devices=2))["devices"]
    before = await stock(pool)
    ids = []
    for device in devices:
        for barcode in products:
            resp = await orders.post(
                "/api/orders", json={"ssd_id": device["id"], "barcode": barcode, "quantity": 2}
            )
            ids.append((await resp.json())["id"])

    first = await start_notifications(nats_url)
    await eventually(lambda: _at_least_shipped(pool, 1))
    first.send_signal(signal.SIGKILL)
    await first.wait()
    at_kill = await status_counts(pool)
    assert at_kill.get("completed", 0) < len(ids), "nothing was in flight when killed"

    second = await start_notifications(nats_url)
    try:
        await eventually(lambda: _all_completed(pool, len(ids)), within=60)
    finally:
        second.send_signal(signal.SIGTERM)
        assert await second.wait() == 0

    js = nc.jetstream()
    sub = await js.subscribe(subjects.ORDERS_COMPLETED, ordered_consumer=True)
    completed = []
    while True:
        try:
            msg = await sub.next_msg(timeout=1)
        except TimeoutError:
            break
        completed.append(OrderEvent.model_validate_json(msg.data).id)
    await sub.unsubscribe()
    assert sorted(completed) == sorted(ids)  # each order completed once on the bus
    # ...and delivered once: every (SSD, product) holds exactly 2 more than before.
    after = await stock(pool)
    assert len(after) == len(ids)
    assert all(after[key] == before.get(key, 0) + 2 for key in after), (before, after)


async def _at_least_shipped(pool, n: int) -> bool:
    counts = await status_counts(pool)
    return counts.get("shipped", 0) + counts.get("completed", 0) >= n


async def _all_completed(pool, n: int) -> bool:
    return (await status_counts(pool)).get("completed", 0) == n


async def test_notifications_ships_each_order_after_its_own_delay(
    users, orders, notifications, pool, products, settings
):
    """Many orders in flight at once: each ships after its own supplier delay, not after the
    delays of the orders before it (the original slept one order at a time)."""
    devices = (await register(users, devices=5))["devices"]
    for device in devices:
        for barcode in products:
            resp = await orders.post(
                "/api/orders", json={"ssd_id": device["id"], "barcode": barcode, "quantity": 1}
            )
            assert resp.status == 201
    await eventually(lambda: _all_completed(pool, 25), within=60)
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, created_at, shipped_at FROM product_orders")
    lags = []
    for row in rows:
        own = settings.simulated(delay_for(row["id"], "supplier", settings.supplier_delay, 0))
        actual = (row["shipped_at"] - row["created_at"]).total_seconds()
        assert actual >= own * 0.99
        lags.append(actual - own)
    # One at a time, the 25 delays (0.1 to 0.4 s each) would pile up to several seconds.
    total_own = sum(
        settings.simulated(delay_for(r["id"], "supplier", settings.supplier_delay, 0)) for r in rows
    )
    assert max(lags) < total_own / 2, (max(lags), total_own)
