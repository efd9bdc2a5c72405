"""GET /api/orders by key: `before` an order id, `next` the path of the next page, `offset`
capped; every page as cheap as the first however long the history."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import parse_qs, urlsplit

import pytest
from offsim_orders.handlers import MAX_ORDER_OFFSET

from tests.conftest import eventually
from tests.helpers import register

STATUSES = ("pending", "shipped", "completed", "cancelled")


@pytest.fixture
async def ssds(users, products) -> list[int]:
    return [device["id"] for device in (await register(users, devices=2))["devices"]]


async def stored(pool, ssds: list[int], products: list[str], n: int) -> list[dict]:
    """`n` orders stored by SQL, spread over the SSDs and every status: (id, ssd_id, status)."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            """INSERT INTO product_orders (ssd_id, barcode, quantity, status)
               SELECT ($1::bigint[])[1 + i % cardinality($1)],
                      ($2::text[])[1 + i % cardinality($2)], 1,
                      ($3::text[])[1 + (i / cardinality($1)) % cardinality($3)]
               FROM generate_series(0, $4 - 1) AS i ORDER BY i
               RETURNING id, ssd_id, status""",
            ssds,
            products,
            list(STATUSES),
            n,
        )
    return [dict(row) for row in rows]


async def walk(orders, path: str, between=None) -> tuple[list[int], list[dict]]:
    """Every page from `path` on, following `next`: the order ids in the order seen, and the
    pages. `between` is awaited after each page (orders arriving meanwhile)."""
    ids, pages = [], []
    while path is not None:
        resp = await orders.get(path)
        assert resp.status == 200, await resp.text()
        page = await resp.json()
        pages.append(page)
        ids += [order["id"] for order in page["orders"]]
        if between is not None:
            await between()
        path = page["next"]
    return ids, pages


@contextlib.asynccontextmanager
async def orders_arriving(orders, ssd_id: int, barcode: str):
    """New orders placed through the API, one after the other, from the first call of the
    coroutine function it yields (which waits until one more arrived) to the end of the block;
    also yields the ids placed so far."""
    placed: list[int] = []
    started = asyncio.Event()

    async def place_forever() -> None:
        body = {"ssd_id": ssd_id, "barcode": barcode, "quantity": 1}
        await started.wait()
        while True:
            resp = await orders.post("/api/orders", json=body)
            assert resp.status == 201, await resp.text()
            placed.append((await resp.json())["id"])

    async def one_more() -> None:
        started.set()
        seen = len(placed)
        await eventually(lambda: _more_than(placed, seen))

    task = asyncio.create_task(place_forever())
    try:
        yield placed, one_more
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _more_than(placed: list[int], seen: int) -> bool:
    return len(placed) > seen


@pytest.mark.parametrize(
    "filters",
    [{}, {"status": "shipped"}, {"ssd_id": 0}, {"ssd_id": 1, "status": "pending"}],
    ids=["all", "status", "ssd", "ssd-and-status"],
)
async def test_paging_by_next_returns_every_order_once_while_orders_arrive(
    orders, pool, ssds, products, filters
):
    filters = {k: ssds[v] if k == "ssd_id" else v for k, v in filters.items()}
    rows = await stored(pool, ssds, products, 61)
    expected = [r["id"] for r in rows if all(r[k] == v for k, v in filters.items())][::-1]
    query = "&".join(f"{k}={v}" for k, v in filters.items())

    async with orders_arriving(orders, ssds[0], products[0]) as (placed, one_more):
        ids, pages = await walk(orders, f"/api/orders?limit=4&{query}", between=one_more)

    # Newest first, each stored order once; those placed while paging are newer than the first
    # page, so none of them shows on a later one.
    assert ids == expected
    assert len(placed) >= len(pages) and min(placed) > max(ids)
    assert [len(page["orders"]) for page in pages[:-1]] == [4] * (len(pages) - 1)
    assert pages[-1]["next"] is None and 1 <= len(pages[-1]["orders"]) <= 4
    assert pages[0]["total"] == len(expected)
    for page in pages[:-1]:
        link = urlsplit(page["next"])
        assert link.path == "/api/orders"
        assert parse_qs(link.query) == {
            **{k: [str(v)] for k, v in filters.items()},
            "limit": ["4"],
            "before": [str(page["orders"][-1]["id"])],
        }
        assert all(all(order[k] == v for k, v in filters.items()) for order in page["orders"]), (
            "a page carries only what its filters ask for"
        )


async def test_before_lists_orders_older_than_an_id_newest_first(orders, pool, ssds, products):
    ids = [row["id"] for row in await stored(pool, ssds, products, 10)]
    page = await (await orders.get(f"/api/orders?before={ids[6]}&limit=3")).json()
    assert [o["id"] for o in page["orders"]] == [ids[5], ids[4], ids[3]]
    assert page["next"] == f"/api/orders?limit=3&before={ids[3]}"
    # An offset within the cap still skips, from `before` on.
    page = await (await orders.get(f"/api/orders?before={ids[6]}&offset=4&limit=3")).json()
    assert [o["id"] for o in page["orders"]] == [ids[1], ids[0]] and page["next"] is None
    # The page before the oldest order is empty, and the last.
    page = await (await orders.get(f"/api/orders?before={ids[0]}")).json()
    assert (page["orders"], page["next"], page["total"]) == ([], None, 10)


async def test_a_page_of_exactly_the_orders_left_has_no_next(orders, pool, ssds, products):
    ids = [row["id"] for row in await stored(pool, ssds, products, 6)]
    page = await (await orders.get("/api/orders?limit=6")).json()
    assert [o["id"] for o in page["orders"]] == ids[::-1] and page["next"] is None
    page = await (await orders.get("/api/orders?limit=5")).json()
    assert page["next"] == f"/api/orders?limit=5&before={ids[1]}"
    last = await (await orders.get(page["next"])).json()
    assert [o["id"] for o in last["orders"]] == [ids[0]] and last["next"] is None


@pytest.mark.parametrize("offset", [MAX_ORDER_OFFSET + 1, 900_000, 2**70])
async def test_offset_beyond_the_cap_is_a_400_naming_before(orders, pool, offset):
    resp = await orders.get(f"/api/orders?offset={offset}")
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "bad_request" and set(body["details"]) == {"offset"}
    assert "before" in body["message"] and "before" in body["details"]["offset"]


async def test_offset_up_to_the_cap_is_served(orders, pool, ssds, products):
    await stored(pool, ssds, products, 3)
    page = await (await orders.get(f"/api/orders?offset={MAX_ORDER_OFFSET}")).json()
    assert (page["orders"], page["offset"], page["next"], page["total"]) == ([], 10_000, None, 3)


@pytest.mark.parametrize("value", ["0", "-3", "x", "1.5"])
async def test_bad_before_is_a_400_naming_it(orders, pool, value):
    resp = await orders.get(f"/api/orders?before={value}")
    assert resp.status == 400 and set((await resp.json())["details"]) == {"before"}


async def test_spec_documents_before_next_and_the_offset_cap(orders):
    spec = await (await orders.get("/api/openapi.json")).json()
    params = {p["name"]: p for p in spec["paths"]["/api/orders"]["get"]["parameters"]}
    assert {"ssd_id", "status", "before", "limit", "offset"} <= set(params)
    assert params["offset"]["schema"]["maximum"] == MAX_ORDER_OFFSET
    assert "before" in params["offset"]["description"]
    page = spec["components"]["schemas"]["OrderPage"]
    assert {"total", "limit", "offset", "orders", "next"} <= set(page["properties"])
    assert page["properties"]["next"].get("nullable") is True
