"""Bulk registration of synthetic users: the service credential only, one batch or nothing,
passwords hashed at the cheaper cost each hash records; POST /api/register keeps the full cost."""

from __future__ import annotations

from offsim_users.passwords import FULL_COST, SYNTHETIC_COST, hash_cost, verify_password

from tests.helpers import register


def synthetic(count: int, start: int = 0) -> dict:
    """`count` synthetic users; the odd ones have two SSDs."""

    def mac(prefix: str, n: int) -> dict:
        return {"mac_address": f"02:{prefix}:00:00:{n // 256:02x}:{n % 256:02x}"}

    return {"users": [
        {"first_name": "Population", "last_name": f"User {n}",
         "email": f"pop-{n}@offsim.example", "password": f"synthetic password {n}",
         "devices": [mac("aa", n)] + ([mac("bb", n)] if n % 2 else [])}
        for n in range(start, start + count)
    ]}  # fmt: skip


async def test_register_synthetic_users_hashes_verify_at_the_cheap_cost(users, pool, products):
    resp = await users.post("/api/synthetic-users", json=synthetic(5))
    assert resp.status == 201, await resp.text()
    made = (await resp.json())["users"]
    assert [len(user["devices"]) for user in made] == [1, 2, 1, 2, 1]
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, email, password_hash FROM users ORDER BY id")
        watched = await conn.fetchval("SELECT count(*) FROM product_ssds")
    assert [row["id"] for row in rows] == [user["id"] for user in made]
    for n, row in enumerate(rows):
        assert hash_cost(row["password_hash"]) == SYNTHETIC_COST
        assert verify_password(f"synthetic password {n}", row["password_hash"])
        assert not verify_password("another password", row["password_hash"])
    assert watched == 7 * 3  # each SSD watches OFFSIM_WATCHED_PRODUCTS products
    user = made[1]
    body = await (await users.get(f"/api/users/{user['id']}")).json()
    assert [ssd["id"] for ssd in body["ssds"]] == [d["id"] for d in user["devices"]]
    assert all(len(ssd["stock"]) == 3 for ssd in body["ssds"])
    # No token of their own: the answer holds no secret.
    assert all(set(user) == {"id", "devices"} for user in made)


async def test_register_synthetic_users_retried_with_its_key_is_stored_once(users, pool, products):
    key = {"Idempotency-Key": "population-batch-1"}
    first = await users.post("/api/synthetic-users", json=synthetic(3), headers=key)
    again = await users.post("/api/synthetic-users", json=synthetic(3), headers=key)
    assert first.status == again.status == 201
    assert await first.json() == await again.json()
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM users") == 3


async def test_register_keeps_the_full_cost(users, pool):
    await register(users, "person@example.org")
    async with pool.acquire() as conn:
        stored = await conn.fetchval("SELECT password_hash FROM users")
    assert hash_cost(stored) == FULL_COST
    assert verify_password("long enough password", stored)


async def test_register_synthetic_users_without_the_service_credential_is_refused(users, pool):
    user = await register(users, "person@example.org")
    resp = await users.post(
        "/api/synthetic-users", json=synthetic(1),
        headers={"Authorization": f"Bearer {user['token']}"},
    )  # fmt: skip
    assert resp.status == 403
    resp = await users.post(
        "/api/synthetic-users", json=synthetic(1), headers={"Authorization": ""}
    )
    assert resp.status == 401
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM users") == 1


async def test_register_synthetic_users_with_a_taken_email_stores_nothing(users, pool, products):
    assert (await users.post("/api/synthetic-users", json=synthetic(2))).status == 201
    resp = await users.post("/api/synthetic-users", json=synthetic(3, start=1))
    assert resp.status == 409
    assert (await resp.json())["details"] == {"users": "email taken"}
    resp = await users.post("/api/synthetic-users", json={"users": []})
    assert resp.status == 400
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM users") == 2
