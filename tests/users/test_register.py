"""POST /api/register and GET /api/users/{id} against a real database."""

from __future__ import annotations

import copy

import pytest
from offsim_users.passwords import verify_password

VALID = {
    "user": {
        "first_name": "Grace",
        "last_name": "Hopper",
        "email": "Grace@Example.org",
        "password": "cobol-forever",
    },
    "devices": [{"mac_address": "AA-BB-CC-00-11-22"}, {"mac_address": "aa:bb:cc:00:11:23"}],
}


def body_with(path: str, value) -> dict:
    """VALID with one field replaced (value `...` removes it)."""
    body = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    target = body
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    if value is ...:
        del target[int(last) if last.isdigit() else last]
    else:
        target[int(last) if last.isdigit() else last] = value
    return body


async def test_register_user_valid_returns_201_without_password(users, pool, products):
    resp = await users.post("/api/register", json=VALID)
    assert resp.status == 201
    user = await resp.json()
    assert set(user) == {"id", "first_name", "last_name", "email", "devices", "token"}
    assert user["email"] == "grace@example.org"
    assert [d["mac_address"] for d in user["devices"]] == ["aa:bb:cc:00:11:22", "aa:bb:cc:00:11:23"]
    assert all(isinstance(d["id"], int) for d in user["devices"])
    async with pool.acquire() as conn:
        stored = await conn.fetchval("SELECT password_hash FROM users WHERE id = $1", user["id"])
        watched = await conn.fetch(
            "SELECT * FROM product_ssds WHERE ssd_id = ANY($1::bigint[])",
            [d["id"] for d in user["devices"]],
        )
    assert stored.startswith("scrypt$") and "cobol-forever" not in stored
    assert verify_password("cobol-forever", stored)
    assert not verify_password("cobol-never", stored)
    assert len(watched) == 6
    assert all(r["quantity"] == r["capacity"] > r["reorder_point"] for r in watched)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (body_with("user.email", "not-an-email"), "user.email"),
        (body_with("user.email", ...), "user.email"),
        (body_with("user.first_name", "   "), "user.first_name"),
        (body_with("user.last_name", 42), "user.last_name"),
        (body_with("user.password", "short"), "user.password"),
        (body_with("devices", []), "devices"),
        (body_with("devices", ...), "devices"),
        (body_with("devices.0.mac_address", "00:11:22:33:44"), "devices.0.mac_address"),
        (body_with("devices.1.mac_address", "zz:11:22:33:44:55"), "devices.1.mac_address"),
        (body_with("user", ...), "user"),
        (body_with("user", "ada"), "user"),
    ],
)
async def test_register_user_invalid_field_returns_400_naming_it(users, pool, body, field):
    resp = await users.post("/api/register", json=body)
    assert resp.status == 400
    error = await resp.json()
    assert error["error"] == "bad_request"
    assert field in error["details"], error
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM users") == 0


@pytest.mark.parametrize(
    ("raw", "detail"),
    [(b'{"user": ', "body"), (b"[1, 2]", "body"), (b"", "body"), (b"null", "body")],
)
async def test_register_user_malformed_body_returns_400(users, pool, raw, detail):
    resp = await users.post("/api/register", data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert detail in (await resp.json())["details"]


async def test_register_user_taken_email_returns_409(users, pool, products):
    assert (await users.post("/api/register", json=VALID)).status == 201
    again = body_with("devices", [{"mac_address": "00:00:00:00:00:01"}])
    again["user"]["email"] = "GRACE@example.org"
    resp = await users.post("/api/register", json=again)
    assert resp.status == 409
    assert "user.email" in (await resp.json())["details"]


async def test_register_user_taken_mac_returns_409_and_stores_nothing(users, pool, products):
    assert (await users.post("/api/register", json=VALID)).status == 201
    other = body_with("user.email", "someone@example.org")
    other["devices"] = [{"mac_address": "00:00:00:00:00:09"}, {"mac_address": "aa:bb:cc:00:11:22"}]
    resp = await users.post("/api/register", json=other)
    assert resp.status == 409
    async with pool.acquire() as conn:
        # One transaction: neither the user nor their first (free) device was kept.
        assert await conn.fetchval("SELECT count(*) FROM users") == 1
        assert (
            await conn.fetchval("SELECT count(*) FROM ssds WHERE mac_address = '00:00:00:00:00:09'")
            == 0
        )


async def test_register_user_same_mac_twice_in_one_request_returns_409(users, pool):
    body = body_with(
        "devices", [{"mac_address": "aa:bb:cc:00:11:22"}, {"mac_address": "AABBCC001122"}]
    )
    resp = await users.post("/api/register", json=body)
    assert resp.status == 409
    assert (await resp.json())["details"] == {"devices": "duplicate MAC"}


async def test_get_user_returns_ssds_and_stock(users, pool, products):
    created = await (await users.post("/api/register", json=VALID)).json()
    resp = await users.get(f"/api/users/{created['id']}")
    assert resp.status == 200
    user = await resp.json()
    assert [s["id"] for s in user["ssds"]] == [d["id"] for d in created["devices"]]
    item = user["ssds"][0]["stock"][0]
    assert {"barcode", "product_name", "quantity", "reorder_point", "capacity"} <= set(item)
    assert item["product_name"]


@pytest.mark.parametrize(("path", "status"), [("/api/users/999", 404), ("/api/users/abc", 400)])
async def test_get_user_unknown_or_bad_id(users, pool, path, status):
    resp = await users.get(path)
    assert resp.status == status
    assert "id" in (await resp.json())["details"]


async def test_unknown_route_and_method_answer_json(users, pool):
    resp = await users.get("/api/nope")
    assert resp.status == 404 and (await resp.json())["error"] == "not_found"
    resp = await users.get("/api/register")
    assert resp.status == 405 and (await resp.json())["error"] == "method_not_allowed"
