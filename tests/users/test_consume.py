"""POST /api/ssds/{id}/consume: an SSD reports stock used and learns what to reorder."""

from __future__ import annotations

from tests.users.test_register import VALID


async def registered_ssd(users) -> tuple[int, list[dict]]:
    user = await (await users.post("/api/register", json=VALID)).json()
    ssd_id = user["devices"][0]["id"]
    detail = await (await users.get(f"/api/users/{user['id']}")).json()
    return ssd_id, detail["ssds"][0]["stock"]


async def test_consume_one_product_lowers_stock_and_asks_restock(users, pool, products):
    ssd_id, stock = await registered_ssd(users)
    item = stock[0]
    used = item["quantity"] - item["reorder_point"] + 1  # just below the reorder point
    resp = await users.post(
        f"/api/ssds/{ssd_id}/consume", json={"barcode": item["barcode"], "quantity": used}
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["stock"][0]["quantity"] == item["quantity"] - used
    assert body["stock"][0]["consumed"] == used
    # The backend placed the restock order itself, back up to capacity.
    [restock] = body["restock"]
    assert restock["barcode"] == item["barcode"]
    assert restock["quantity"] == item["capacity"] - (item["quantity"] - used)
    async with pool.acquire() as conn:
        order = await conn.fetchrow(
            "SELECT ssd_id, barcode, quantity, kind FROM product_orders WHERE id = $1",
            restock["order_id"],
        )
    assert dict(order) == {"ssd_id": ssd_id, "barcode": item["barcode"],
                           "quantity": restock["quantity"], "kind": "restock"}  # fmt: skip


async def test_consume_never_goes_below_zero(users, pool, products):
    ssd_id, stock = await registered_ssd(users)
    barcode = stock[0]["barcode"]
    for _ in range(3):
        resp = await users.post(
            f"/api/ssds/{ssd_id}/consume", json={"barcode": barcode, "quantity": 100}
        )
    body = await resp.json()
    assert body["stock"][0]["quantity"] == 0
    assert body["stock"][0]["consumed"] == 0


async def test_consume_without_barcode_touches_every_watched_product(users, pool, products):
    ssd_id, stock = await registered_ssd(users)
    resp = await users.post(f"/api/ssds/{ssd_id}/consume", json={"quantity": 3})
    body = await resp.json()
    assert sorted(s["barcode"] for s in body["stock"]) == sorted(s["barcode"] for s in stock)
    assert all(0 <= s["consumed"] <= 3 for s in body["stock"])


async def test_consume_errors(users, pool, products):
    ssd_id, _ = await registered_ssd(users)
    resp = await users.post("/api/ssds/999/consume", json={"quantity": 1})
    assert resp.status == 404 and "id" in (await resp.json())["details"]
    resp = await users.post(f"/api/ssds/{ssd_id}/consume", json={"barcode": "0000", "quantity": 1})
    assert resp.status == 404 and "barcode" in (await resp.json())["details"]
    resp = await users.post(f"/api/ssds/{ssd_id}/consume", json={"quantity": 0})
    assert resp.status == 400 and "quantity" in (await resp.json())["details"]


async def test_consume_does_not_ask_to_restock_what_is_already_on_order(
    users, orders, pool, products
):
    ssd_id, stock = await registered_ssd(users)
    item = stock[0]
    resp = await orders.post(
        "/api/orders", json={"ssd_id": ssd_id, "barcode": item["barcode"], "quantity": 2}
    )
    assert resp.status == 201
    body = await (
        await users.post(
            f"/api/ssds/{ssd_id}/consume", json={"barcode": item["barcode"], "quantity": 100}
        )
    ).json()
    assert body["stock"][0]["quantity"] == 0 and body["stock"][0]["on_order"] is True
    assert body["restock"] == []


async def test_a_report_sent_again_with_its_reading_id_changes_nothing(users, pool, products):
    ssd_id, stock = await registered_ssd(users)
    barcode = stock[0]["barcode"]
    report = {"barcode": barcode, "quantity": 2, "reading_id": "kitchen-42"}
    first = await (await users.post(f"/api/ssds/{ssd_id}/consume", json=report)).json()
    again = await (await users.post(f"/api/ssds/{ssd_id}/consume", json=report)).json()
    assert first["duplicate"] is False and first["stock"][0]["consumed"] == 2
    assert again["duplicate"] is True and again["stock"][0]["consumed"] == 0
    assert again["stock"][0]["quantity"] == first["stock"][0]["quantity"]
    resp = await users.post(
        f"/api/ssds/{ssd_id}/consume", json={**report, "reading_id": "has a blank"}
    )
    assert resp.status == 400 and "reading_id" in (await resp.json())["details"]


async def test_a_report_without_barcode_sent_again_changes_nothing(users, pool, products):
    ssd_id, _ = await registered_ssd(users)
    # The longest reading id: each product's own id still fits.
    report = {"quantity": 3, "reading_id": "r" * 64}
    first = await users.post(f"/api/ssds/{ssd_id}/consume", json=report)
    assert first.status == 200, await first.text()
    first = await first.json()
    for _ in range(3):
        again = await (await users.post(f"/api/ssds/{ssd_id}/consume", json=report)).json()
        assert all(item["consumed"] == 0 for item in again["stock"])
        assert [i["quantity"] for i in again["stock"]] == [i["quantity"] for i in first["stock"]]
    if any(item["consumed"] for item in first["stock"]):
        assert again["duplicate"] is True
