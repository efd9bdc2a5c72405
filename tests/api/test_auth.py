"""Bearer tokens: a user's token (from POST /api/register, stored only as a hash) acts for that
user and their SSDs; the service credential for any; anything else is a 401 (no or bad token,
with `WWW-Authenticate: Bearer`) or a 403 (someone else's). Reads exposing no person stay
public."""

from __future__ import annotations

import hashlib

import pytest
from offsim_orders.app import create_app as orders_app
from offsim_users.app import create_app as users_app

from tests.helpers import register


@pytest.fixture
async def anonymous(aiohttp_client, settings, pool, nc, products):
    """Both services, with clients that send no credential of their own."""
    return (
        await aiohttp_client(users_app(settings)),
        await aiohttp_client(orders_app(settings)),
    )


@pytest.fixture
async def two_users(users):
    return (
        await register(users, "alice@example.org"),
        await register(users, "bob@example.org"),
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def protected(user: dict, barcode: str) -> list[tuple[str, str, str, dict | None]]:
    ssd_id = user["devices"][0]["id"]
    return [
        ("users", "GET", f"/api/users/{user['id']}", None),
        ("users", "POST", f"/api/ssds/{ssd_id}/consume", {"quantity": 1}),
        ("orders", "POST", "/api/orders", {"ssd_id": ssd_id, "barcode": barcode, "quantity": 1}),
    ]


async def test_register_returns_a_token_stored_only_as_a_hash(users, pool, products):
    user = await register(users, "token@example.org")
    token = user["token"]
    assert isinstance(token, str) and len(token) >= 32
    async with pool.acquire() as conn:
        stored = await conn.fetch(
            "SELECT token_hash FROM api_tokens WHERE user_id = $1", user["id"]
        )
    assert [r["token_hash"] for r in stored] == [hashlib.sha256(token.encode()).digest()]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic dXNlcjpwYXNz"},
     {"Authorization": "Bearer"}],
)  # fmt: skip
async def test_protected_without_or_with_bad_token_returns_401(
    anonymous, two_users, products, headers
):
    clients = dict(zip(("users", "orders"), anonymous, strict=True))
    for service, method, path, body in protected(two_users[0], products[0]):
        resp = await clients[service].request(method, path, json=body, headers=headers)
        assert resp.status == 401, f"{method} {path}"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        error = await resp.json()
        assert error["error"] == "unauthorized" and "Authorization" in error["details"]


async def test_protected_with_someone_elses_token_returns_403(anonymous, two_users, products, pool):
    alice, bob = two_users
    clients = dict(zip(("users", "orders"), anonymous, strict=True))
    for service, method, path, body in protected(alice, products[0]):
        resp = await clients[service].request(method, path, json=body, headers=bearer(bob["token"]))
        assert resp.status == 403, f"{method} {path}: {await resp.text()}"
        assert (await resp.json())["error"] == "forbidden"
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM product_orders") == 0


async def test_protected_with_the_owners_token_succeeds(anonymous, two_users, products):
    alice, _ = two_users
    clients = dict(zip(("users", "orders"), anonymous, strict=True))
    expected = iter((200, 200, 201))
    for service, method, path, body in protected(alice, products[0]):
        resp = await clients[service].request(
            method, path, json=body, headers=bearer(alice["token"])
        )
        assert resp.status == next(expected), f"{method} {path}: {await resp.text()}"
    me = await clients["users"].get(f"/api/users/{alice['id']}", headers=bearer(alice["token"]))
    assert (await me.json())["email"] == "alice@example.org"


async def test_service_token_acts_for_anyone(anonymous, two_users, products, settings):
    alice, _ = two_users
    clients = dict(zip(("users", "orders"), anonymous, strict=True))
    expected = iter((200, 200, 201))
    for service, method, path, body in protected(alice, products[0]):
        resp = await clients[service].request(
            method, path, json=body, headers=bearer(settings.service_token)
        )
        assert resp.status == next(expected), f"{method} {path}: {await resp.text()}"


async def test_unknown_ssd_with_a_valid_token_returns_404(anonymous, two_users, products):
    alice, _ = two_users
    _, orders = anonymous
    body = {"ssd_id": 999, "barcode": products[0], "quantity": 1}
    resp = await orders.post("/api/orders", json=body, headers=bearer(alice["token"]))
    assert resp.status == 404 and "ssd_id" in (await resp.json())["details"]


async def test_public_reads_need_no_token(anonymous, two_users, products):
    users, orders = anonymous
    for client, path in (
        (orders, "/api/products"), (orders, f"/api/products/{products[0]}"),
        (orders, "/api/orders"), (users, "/api/health"), (orders, "/api/health"),
        (users, "/api/openapi.json"), (users, "/api/docs"), (orders, "/metrics"),
    ):  # fmt: skip
        resp = await client.get(path)
        assert resp.status == 200, path
    resp = await users.post("/api/register", json={"nope": 1})
    assert resp.status == 400  # registering needs no token


async def test_specs_declare_bearer_security(anonymous):
    users, orders = anonymous
    for client, secured in (
        (
            users,
            {
                ("get", "/api/users/{id}"),
                ("post", "/api/ssds/{id}/consume"),
                ("post", "/api/synthetic-users"),
            },
        ),
        (orders, {("post", "/api/orders")}),
    ):
        spec = await (await client.get("/api/openapi.json")).json()
        scheme = spec["components"]["securitySchemes"]["bearerAuth"]
        assert scheme == {**scheme, "type": "http", "scheme": "bearer"}
        found = {
            (method, path)
            for path, ops in spec["paths"].items()
            for method, op in ops.items()
            if op.get("security") == [{"bearerAuth": []}]
        }
        assert found == secured
