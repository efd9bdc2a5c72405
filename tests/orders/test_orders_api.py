"""POST /api/orders, GET /api/orders[/{id}], GET /api/products[/{barcode}]."""

from __future__ import annotations

import asyncio
import json

import pytest
from offsim_common import subjects

from tests.helpers import register


@pytest.fixture
async def ssd_id(users, products) -> int:
    return (await register(users))["devices"][0]["id"]


async def test_place_order_returns_201_and_publishes_pending(orders, nc, ssd_id, products):
    seen: asyncio.Queue = asyncio.Queue()
    await nc.subscribe(subjects.ORDERS_PENDING, cb=seen.put)
    resp = await orders.post(
        "/api/orders", json={"ssd_id": ssd_id, "barcode": products[0], "quantity": 2}
    )
    assert resp.status == 201
    order = await resp.json()
    assert order["status"] == "pending" and order["quantity"] == 2
    event = json.loads((await asyncio.wait_for(seen.get(), 5)).data)
    assert {k: event[k] for k in ("id", "ssd_id", "barcode", "quantity", "status")} == {
        "id": order["id"], "ssd_id": ssd_id, "barcode": products[0], "quantity": 2,
        "status": "pending",
    }  # fmt: skip
    # The original's field name, kept for its consumers.
    assert event["product_id"] == products[0] and event["timestamp"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"barcode": "3017620422003", "quantity": 1}, "ssd_id"),
        ({"ssd_id": "1", "barcode": "3017620422003", "quantity": 1}, "ssd_id"),
        ({"ssd_id": -4, "barcode": "3017620422003", "quantity": 1}, "ssd_id"),
        ({"ssd_id": 1, "quantity": 1}, "barcode"),
        ({"ssd_id": 1, "barcode": "", "quantity": 1}, "barcode"),
        ({"ssd_id": 1, "barcode": "3017620422003", "quantity": 0}, "quantity"),
        ({"ssd_id": 1, "barcode": "3017620422003", "quantity": -2}, "quantity"),
        ({"ssd_id": 1, "barcode": "3017620422003", "quantity": 1.5}, "quantity"),
        ({"ssd_id": 1, "barcode": "3017620422003", "quantity": "3"}, "quantity"),
        ({"ssd_id": 1, "barcode": "3017620422003", "quantity": 10_000}, "quantity"),
        ({"ssd_id": 1, "barcode": "3017620422003", "quantity": True}, "quantity"),
    ],
)
async def test_place_order_invalid_field_returns_400(orders, pool, body, field):
    resp = await orders.post("/api/orders", json=body)
    assert resp.status == 400
    assert field in (await resp.json())["details"]


async def test_place_order_malformed_json_returns_400(orders, pool):
    resp = await orders.post(
        "/api/orders", data=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400
    assert (await resp.json())["message"] == "malformed JSON"


async def test_place_order_unknown_ssd_or_product_returns_404(orders, ssd_id, products):
    resp = await orders.post(
        "/api/orders", json={"ssd_id": 999, "barcode": products[0], "quantity": 1}
    )
    assert resp.status == 404 and "ssd_id" in (await resp.json())["details"]
    resp = await orders.post(
        "/api/orders", json={"ssd_id": ssd_id, "barcode": "000", "quantity": 1}
    )
    assert resp.status == 404 and "barcode" in (await resp.json())["details"]


async def test_place_order_repeat_order_same_product_returns_201_new_order(
    orders, ssd_id, products
):
    body = {"ssd_id": ssd_id, "barcode": products[1], "quantity": 1}
    first = await orders.post("/api/orders", json=body)
    again = await orders.post("/api/orders", json=body)
    assert first.status == again.status == 201
    assert (await first.json())["id"] != (await again.json())["id"]
    assert (await again.json())["kind"] == "order"


async def test_place_order_second_open_restock_same_product_returns_409(orders, ssd_id, products):
    body = {"ssd_id": ssd_id, "barcode": products[1], "quantity": 1, "kind": "restock"}
    # An open plain order does not count against the restocking.
    assert (await orders.post("/api/orders", json={**body, "kind": "order"})).status == 201
    first = await orders.post("/api/orders", json=body)
    assert first.status == 201 and (await first.json())["kind"] == "restock"
    resp = await orders.post("/api/orders", json=body)
    assert resp.status == 409 and "barcode" in (await resp.json())["details"]
    other = {**body, "barcode": products[2]}
    assert (await orders.post("/api/orders", json=other)).status == 201


async def test_place_order_unknown_kind_returns_400(orders, ssd_id, products):
    body = {"ssd_id": ssd_id, "barcode": products[1], "quantity": 1, "kind": "gift"}
    resp = await orders.post("/api/orders", json=body)
    assert resp.status == 400 and "kind" in (await resp.json())["details"]


async def test_get_and_list_orders(orders, ssd_id, products):
    ids = []
    for barcode in products[:3]:
        resp = await orders.post(
            "/api/orders", json={"ssd_id": ssd_id, "barcode": barcode, "quantity": 1}
        )
        ids.append((await resp.json())["id"])
    one = await (await orders.get(f"/api/orders/{ids[0]}")).json()
    assert one["status"] == "pending" and one["product_name"]
    assert [t["status"] for t in one["transitions"]] == ["pending"]

    page = await (await orders.get("/api/orders", params={"ssd_id": ssd_id, "limit": 2})).json()
    assert page["total"] == 3 and [o["id"] for o in page["orders"]] == ids[::-1][:2]
    rest = await (await orders.get("/api/orders", params={"limit": 2, "offset": 2})).json()
    assert [o["id"] for o in rest["orders"]] == [ids[0]]
    done = await (await orders.get("/api/orders", params={"status": "completed"})).json()
    assert done["total"] == 0


@pytest.mark.parametrize(
    ("path", "status", "field"),
    [
        ("/api/orders/999", 404, "id"),
        ("/api/orders/x", 400, "id"),
        ("/api/orders?status=lost", 400, "status"),
        ("/api/orders?limit=0", 400, "limit"),
        ("/api/orders?limit=100000", 400, "limit"),
        ("/api/orders?ssd_id=abc", 400, "ssd_id"),
        ("/api/orders?color=red", 400, "color"),
        ("/api/products?offset=-1", 400, "offset"),
        ("/api/products?page=2", 400, "page"),
        ("/api/products/0000000", 404, "barcode"),
    ],
)
async def test_orders_bad_queries_answer_4xx(orders, pool, path, status, field):
    resp = await orders.get(path)
    assert resp.status == status
    assert field in (await resp.json())["details"]


async def test_products_paged_and_single(orders, products):
    page = await (await orders.get("/api/products", params={"limit": 2})).json()
    assert page["total"] >= 5 and len(page["products"]) == 2
    product = await (await orders.get(f"/api/products/{products[0]}")).json()
    assert product["barcode"] == products[0] and product["name"] == "Nutella"
    assert product["brands"] == []
