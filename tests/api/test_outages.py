"""Outages answer clearly and fast: with Postgres gone (stopped, or silent), every endpoint that
needs it answers 503 with the JSON error body and Retry-After within 2 s; with NATS gone, an
order is still placed (201) within 2 s and announced once NATS is back. The services reach the
real servers through a proxy the test cuts (tests/proxy.py)."""

from __future__ import annotations

import time

import pytest
from offsim_orders.app import create_app as orders_app
from offsim_users.app import create_app as users_app

from tests.conftest import AS_SERVICE, changed, eventually
from tests.helpers import registration

FAST_S = 2.0


@pytest.fixture
async def services(pg_proxy, aiohttp_client, settings, pool, nc, products):
    """Both services, their database behind the proxy; one registered user with an SSD."""
    proxied = changed(settings, database_url=pg_proxy.url)
    users = await aiohttp_client(users_app(proxied), headers=AS_SERVICE)
    orders = await aiohttp_client(orders_app(proxied), headers=AS_SERVICE)
    resp = await users.post("/api/register", json=registration("outage@example.org"))
    assert resp.status == 201, await resp.text()
    user = await resp.json()
    return users, orders, user


def requests_needing_the_database(user: dict, barcode: str) -> list[tuple[str, str, str, dict]]:
    ssd_id = user["devices"][0]["id"]
    return [
        ("users", "POST", "/api/register", registration("second@example.org")),
        ("users", "GET", f"/api/users/{user['id']}", None),
        ("users", "POST", f"/api/ssds/{ssd_id}/consume", {"quantity": 1}),
        ("orders", "POST", "/api/orders", {"ssd_id": ssd_id, "barcode": barcode, "quantity": 1}),
        ("orders", "GET", "/api/orders", None),
        ("orders", "GET", "/api/orders/1", None),
        ("orders", "GET", "/api/products", None),
        ("orders", "GET", f"/api/products/{barcode}", None),
    ]


async def check_every_endpoint_answers_503_fast(services, barcode: str) -> None:
    users, orders, user = services
    clients = {"users": users, "orders": orders}
    for service, method, path, body in requests_needing_the_database(user, barcode):
        started = time.monotonic()
        resp = await clients[service].request(method, path, json=body)
        elapsed = time.monotonic() - started
        assert resp.status == 503, f"{method} {path}: {resp.status} {await resp.text()}"
        assert elapsed < FAST_S, f"{method} {path} took {elapsed:.2f}s"
        assert int(resp.headers["Retry-After"]) > 0
        error = await resp.json()
        assert error["error"] == "unavailable" and "database" in error["details"]
    for client in clients.values():
        started = time.monotonic()
        resp = await client.get("/api/health")
        assert resp.status == 503 and time.monotonic() - started < FAST_S
        assert set((await resp.json())["details"]) == {"database"}


async def check_back_to_normal(services, barcode: str) -> None:
    users, orders, user = services

    async def answers():
        resp = await users.get(f"/api/users/{user['id']}")
        return resp.status == 200

    await eventually(answers)
    ssd_id = user["devices"][0]["id"]
    resp = await orders.post(
        "/api/orders", json={"ssd_id": ssd_id, "barcode": barcode, "quantity": 1}
    )
    assert resp.status == 201


async def test_database_stopped_every_endpoint_returns_503_fast(services, pg_proxy, products):
    await pg_proxy.refuse()
    await check_every_endpoint_answers_503_fast(services, products[0])
    await pg_proxy.restore()
    await check_back_to_normal(services, products[0])


async def test_database_silent_every_endpoint_returns_503_fast(services, pg_proxy, products):
    await pg_proxy.blackhole()
    await check_every_endpoint_answers_503_fast(services, products[0])
    await pg_proxy.restore()
    await check_back_to_normal(services, products[0])


@pytest.fixture
async def orders_behind_nats_proxy(nats_proxy, aiohttp_client, settings, pool, nc, users):
    proxied = changed(settings, nats_url=nats_proxy.url)
    return await aiohttp_client(orders_app(proxied), headers=AS_SERVICE)


@pytest.mark.parametrize("outage", ["refuse", "blackhole"])
async def test_nats_down_order_returns_201_fast_and_is_announced_later(
    orders_behind_nats_proxy, users, nats_proxy, pool, nc, products, outage
):
    orders = orders_behind_nats_proxy
    resp = await users.post("/api/register", json=registration("nats-down@example.org"))
    ssd_id = (await resp.json())["devices"][0]["id"]
    await getattr(nats_proxy, outage)()
    started = time.monotonic()
    resp = await orders.post(
        "/api/orders", json={"ssd_id": ssd_id, "barcode": products[0], "quantity": 1}
    )
    assert resp.status == 201 and time.monotonic() - started < FAST_S
    order_id = (await resp.json())["id"]
    health = await orders.get("/api/health")
    assert health.status == 503 and "nats" in (await health.json())["details"]
    await nats_proxy.restore()

    async def published():
        async with pool.acquire() as conn:
            return await conn.fetchval(
                "SELECT published_at IS NOT NULL FROM product_orders WHERE id = $1", order_id
            )

    await eventually(published, within=40)
