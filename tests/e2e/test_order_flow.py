"""register -> order -> shipped -> completed, through real NATS and Postgres."""

from __future__ import annotations

from tests.conftest import eventually

REGISTRATION = {
    "user": {
        "first_name": "Ada",
        "last_name": "Lovelace",
        "email": "ada@example.org",
        "password": "correct horse battery",
    },
    "devices": [{"mac_address": "00:1A:2B:3C:4D:5E"}],
}


async def test_register_order_complete_raises_stock(users, orders, notifications, pool, products):
    resp = await users.post("/api/register", json=REGISTRATION)
    assert resp.status == 201, await resp.text()
    user = await resp.json()
    ssd_id = user["devices"][0]["id"]

    stock_before = {
        row["barcode"]: row["quantity"]
        for row in (await (await users.get(f"/api/users/{user['id']}")).json())["ssds"][0]["stock"]
    }
    assert len(stock_before) == 3
    barcode = next(iter(stock_before))

    resp = await orders.post(
        "/api/orders", json={"ssd_id": ssd_id, "barcode": barcode, "quantity": 4}
    )
    assert resp.status == 201, await resp.text()
    order = await resp.json()
    assert order["status"] == "pending"
    assert set(order) == {"id", "ssd_id", "barcode", "quantity", "kind", "status", "created_at"}

    async def completed():
        body = await (await orders.get(f"/api/orders/{order['id']}")).json()
        return body if body["status"] == "completed" else None

    done = await eventually(completed)
    assert [t["status"] for t in done["transitions"]] == ["pending", "shipped", "completed"]

    async def stock_raised():
        async with pool.acquire() as conn:
            qty = await conn.fetchval(
                "SELECT quantity FROM product_ssds WHERE ssd_id = $1 AND barcode = $2",
                ssd_id,
                barcode,
            )
        return qty == stock_before[barcode] + 4

    await eventually(stock_raised)
