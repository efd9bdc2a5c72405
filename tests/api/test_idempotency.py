"""Idempotency-Key on POST /api/register and POST /api/orders (IETF httpapi draft): a replay
answers the first answer with no second effect, another body is a 422, a retry while the first
is in progress is a 409; keys are kept 24 hours, per credential."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import eventually
from tests.helpers import register, registration

KEY = {"Idempotency-Key": "3f1e0c4a-order-1"}


@pytest.fixture
async def ssd_id(users, products) -> int:
    return (await register(users))["devices"][0]["id"]


async def count(pool, table: str) -> int:
    async with pool.acquire() as conn:
        return await conn.fetchval(f"SELECT count(*) FROM {table}")


async def test_place_order_same_key_same_body_replays_the_first_answer(
    orders, pool, ssd_id, products
):
    body = {"ssd_id": ssd_id, "barcode": products[0], "quantity": 2}
    first = await orders.post("/api/orders", json=body, headers=KEY)
    again = await orders.post("/api/orders", json=body, headers=KEY)
    assert first.status == again.status == 201
    assert await first.json() == await again.json()
    assert await count(pool, "product_orders") == 1
    # Another key is another order.
    body = {**body, "barcode": products[1]}
    other = await orders.post("/api/orders", json=body, headers={"Idempotency-Key": "other"})
    assert other.status == 201 and (await other.json())["id"] != (await first.json())["id"]


async def test_place_order_same_key_other_body_returns_422(orders, pool, ssd_id, products):
    body = {"ssd_id": ssd_id, "barcode": products[0], "quantity": 2}
    assert (await orders.post("/api/orders", json=body, headers=KEY)).status == 201
    resp = await orders.post("/api/orders", json={**body, "quantity": 3}, headers=KEY)
    assert resp.status == 422
    error = await resp.json()
    assert error["error"] == "idempotency_key_reused" and "Idempotency-Key" in error["details"]
    assert await count(pool, "product_orders") == 1


async def test_place_order_retry_while_first_in_progress_returns_409(
    orders, pool, ssd_id, products
):
    body = {"ssd_id": ssd_id, "barcode": products[0], "quantity": 1}
    async with pool.acquire() as blocker, blocker.transaction():
        # The order's foreign key waits on this row lock: the first request stays in progress.
        await blocker.execute("SELECT 1 FROM ssds WHERE id = $1 FOR UPDATE", ssd_id)
        first = asyncio.create_task(orders.post("/api/orders", json=body, headers=KEY))

        async def first_holds_the_key():
            async with pool.acquire() as conn:
                return await conn.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                )

        await eventually(first_holds_the_key, within=5)
        retry = await orders.post("/api/orders", json=body, headers=KEY)
        assert retry.status == 409
        assert "Idempotency-Key" in (await retry.json())["details"]
    first = await first
    assert first.status == 201
    replay = await orders.post("/api/orders", json=body, headers=KEY)
    assert replay.status == 201 and await replay.json() == await first.json()
    assert await count(pool, "product_orders") == 1


async def test_idempotency_keys_are_scoped_to_the_credential(orders, users, pool, products):
    user = await register(users, "scoped@example.org")
    ssd_id = user["devices"][0]["id"]
    body = {"ssd_id": ssd_id, "barcode": products[0], "quantity": 1}
    as_user = {**KEY, "Authorization": f"Bearer {user['token']}"}
    mine = await orders.post("/api/orders", json=body, headers=as_user)
    service = await orders.post("/api/orders", json=body, headers=KEY)  # the service credential
    assert mine.status == service.status == 201
    assert (await mine.json())["id"] != (await service.json())["id"]
    assert await count(pool, "product_orders") == 2


async def test_expired_key_is_a_new_request(orders, pool, ssd_id, products):
    body = {"ssd_id": ssd_id, "barcode": products[0], "quantity": 1}
    first = await orders.post("/api/orders", json=body, headers=KEY)
    async with pool.acquire() as conn:
        await conn.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
    again = await orders.post("/api/orders", json={**body, "barcode": products[1]}, headers=KEY)
    assert first.status == again.status == 201
    assert await count(pool, "product_orders") == 2


async def test_failed_request_is_not_recorded(orders, pool, ssd_id, products):
    unknown = {"ssd_id": 999, "barcode": products[0], "quantity": 1}
    assert (await orders.post("/api/orders", json=unknown, headers=KEY)).status == 404
    body = {"ssd_id": ssd_id, "barcode": products[0], "quantity": 1}
    assert (await orders.post("/api/orders", json=body, headers=KEY)).status == 201


@pytest.mark.parametrize("value", ["", " ", "a" * 256, "caf\u00e9"])
async def test_malformed_key_returns_400(orders, pool, ssd_id, products, value):
    body = {"ssd_id": ssd_id, "barcode": products[0], "quantity": 1}
    resp = await orders.post("/api/orders", json=body, headers={"Idempotency-Key": value})
    assert resp.status == 400 and "Idempotency-Key" in (await resp.json())["details"]


async def test_register_same_key_replays_and_other_body_returns_422(users, pool, products):
    body = registration("idem@example.org")
    first = await users.post("/api/register", json=body, headers=KEY)
    again = await users.post("/api/register", json=body, headers=KEY)
    assert first.status == again.status == 201
    assert await first.json() == await again.json()
    token = (await first.json())["token"]
    assert await count(pool, "users") == 1
    async with pool.acquire() as conn:
        stored = await conn.fetchval("SELECT body FROM idempotency_keys")
    assert token.encode() not in stored  # kept sealed, never in clear
    other = registration("idem@example.org")
    other["user"]["password"] = "another long password"
    resp = await users.post("/api/register", json=other, headers=KEY)
    assert resp.status == 422
    async with pool.acquire() as conn:
        stored = await conn.fetchval("SELECT fingerprint FROM idempotency_keys")
    assert body["user"]["password"].encode() not in stored
