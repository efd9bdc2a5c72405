"""`offsim feed`: the live feed of a simulation running elsewhere, once per event."""

from __future__ import annotations

import asyncio
from io import StringIO

from offsim_common import bus, subjects
from offsim_common.events import OrderEvent
from offsim_generator.__main__ import run
from offsim_launcher.embedded import free_port
from offsim_launcher.feed import Feed, follow

from tests.conftest import against, eventually
from tests.helpers import register


async def test_feed_follows_registrations_and_orders_once(
    users, orders, notifications, nc, pool, products, settings, capsys
):
    stop = asyncio.Event()
    feed = asyncio.create_task(follow(settings, stop))
    await eventually(lambda: _printed(capsys, "following"))
    out: list[str] = []

    user = await register(users)
    ssd_id = user["devices"][0]["id"]
    resp = await orders.post(
        "/api/orders", json={"ssd_id": ssd_id, "barcode": products[0], "quantity": 2}
    )
    order_id = (await resp.json())["id"]

    async def completed() -> bool:
        out.extend(capsys.readouterr().out.splitlines())
        return any(f"order {order_id} completed" in line for line in out)

    await eventually(completed)
    # A re-publish the stream de-duplicates (same message id) is not shown again.
    last = await nc.jetstream().get_last_msg(subjects.ORDERS_STREAM, subjects.ORDERS_COMPLETED)
    event = OrderEvent.model_validate_json(last.data)
    await bus.publish(nc.jetstream(), subjects.ORDERS_COMPLETED, event, event.msg_id)
    stop.set()
    await feed
    out.extend(capsys.readouterr().out.splitlines())

    assert any(f"+ user {user['id']} Test User with 1 SSD(s)" in line for line in out)
    for status in ("pending", "shipped", "completed"):
        lines = [line for line in out if f"order {order_id} {status}" in line]
        assert len(lines) == 1, out
    assert "2 x Nutella" in lines[0]


async def _printed(capsys, text: str) -> bool:
    captured = capsys.readouterr().out
    return text in captured


async def test_feed_shows_the_generator_phase_and_rate(users, orders, pool, settings, nc, capsys):
    port = free_port()
    quiet = against(settings, users, orders, seed=2, tick_seconds=10**6)
    stop = asyncio.Event()
    running = asyncio.create_task(run(quiet, stop, probe_port=port))
    out = StringIO()
    feed = Feed(pool, out)
    watching = asyncio.create_task(feed.follow_generator(f"http://127.0.0.1:{port}", every_s=0.05))
    try:
        await eventually(lambda: _has(out, "◆ scenario steady: phase steady"), within=30)
        await eventually(lambda: _has(out, "phase steady · 0.0 ev/s]"))
    finally:
        watching.cancel()
        stop.set()
        await running


async def _has(out, text: str) -> bool:
    return text in out.getvalue()
