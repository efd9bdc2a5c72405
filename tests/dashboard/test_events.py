"""GET /api/events: NATS events fanned out to browsers as server-sent events."""

from __future__ import annotations

import asyncio

from offsim_dashboard.app_keys import HUB
from offsim_dashboard.events import CLOSE, EventHub, sse_frame, stream

from tests.conftest import eventually
from tests.dashboard.conftest import next_event
from tests.helpers import register


async def test_events_stream_is_server_sent_events(dashboard):
    resp = await dashboard.get("/api/events")
    assert resp.status == 200
    assert resp.content_type == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert await resp.content.readline() == b"retry: 2000\n"
    resp.close()


async def test_events_place_order_streams_pending(dashboard, users, orders, products):
    user = await register(users)
    ssd_id = user["devices"][0]["id"]
    resp = await dashboard.get("/api/events")
    assert resp.status == 200

    placed = await orders.post(
        "/api/orders", json={"ssd_id": ssd_id, "barcode": products[0], "quantity": 3}
    )
    assert placed.status == 201
    order = await placed.json()

    # The registration's own event may still be on its way to the stream's followers: skip it.
    event, data = await next_event(resp)
    while event == "user":
        event, data = await next_event(resp)
    assert event == "order"
    assert data | {"timestamp": None} == {
        "id": order["id"],
        "ssd_id": ssd_id,
        "barcode": products[0],
        "product_name": "Nutella",
        "quantity": 3,
        "status": "pending",
        "timestamp": None,
    }
    resp.close()


async def test_events_order_followed_to_completed(
    dashboard, users, orders, notifications, products
):
    ssd_id = (await register(users))["devices"][0]["id"]
    resp = await dashboard.get("/api/events")
    placed = await orders.post(
        "/api/orders", json={"ssd_id": ssd_id, "barcode": products[1], "quantity": 1}
    )
    order_id = (await placed.json())["id"]

    statuses = []
    while "completed" not in statuses:
        event, data = await next_event(resp, within=15)
        if event == "order" and data["id"] == order_id:
            statuses.append(data["status"])
    assert statuses == ["pending", "shipped", "completed"]
    resp.close()


async def test_events_registration_streams_user_without_email(dashboard, users, products):
    resp = await dashboard.get("/api/events")
    user = await register(users, "private@example.org", devices=2)

    event, data = await next_event(resp)
    assert event == "user"
    assert data == {"id": user["id"], "first_name": "Test", "last_name": "User", "devices": 2}
    resp.close()


async def test_events_reach_every_connected_client(dashboard, users, products):
    first = await dashboard.get("/api/events")
    second = await dashboard.get("/api/events")
    assert len(dashboard.app[HUB].clients) == 2
    user = await register(users)

    for resp in (first, second):
        _, data = await next_event(resp)
        assert data["id"] == user["id"]
        resp.close()


async def test_events_client_gone_is_forgotten(dashboard, caplog):
    resp = await dashboard.get("/api/events")
    hub = dashboard.app[HUB]
    assert len(hub.clients) == 1
    resp.close()

    async def forgotten():
        hub.publish(sse_frame("user", {"id": 0}))  # the write that finds the client gone
        return not hub.clients

    await eventually(forgotten, within=5, interval=0.05)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_hub_slow_client_drops_oldest_and_never_blocks_others():
    hub = EventHub(queue_size=4)
    with hub.client() as slow, hub.client() as fast:
        received = []
        for n in range(10):
            hub.publish(sse_frame("order", {"n": n}))  # returns at once, whoever reads
            received.append(fast.get_nowait())
        assert received == [sse_frame("order", {"n": n}) for n in range(10)]
        # The slow client keeps the newest events, not the oldest.
        assert [slow.get_nowait() for _ in range(slow.qsize())] == [
            sse_frame("order", {"n": n}) for n in range(6, 10)
        ]
        assert hub.dropped == 6
    assert hub.clients == set()


async def test_hub_close_ends_every_stream():
    hub = EventHub()
    with hub.client() as queue:
        hub.publish(sse_frame("user", {"id": 1}))
        hub.close()
        frames = [frame async for frame in stream(queue, keepalive_s=5)]
    assert frames == [b'event: user\ndata: {"id":1}\n\n']
    with hub.client() as late:
        assert late.get_nowait() == CLOSE  # a client arriving during shutdown ends at once


async def test_stream_idle_sends_keepalive_comment():
    hub = EventHub()
    with hub.client() as queue:
        frames = stream(queue, keepalive_s=0.05)
        assert await asyncio.wait_for(anext(frames), 1) == b": keep-alive\n\n"
        await frames.aclose()
