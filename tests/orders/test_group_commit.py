"""Group commit: concurrent orders share one statement, and each request gets its own answer."""

from __future__ import annotations

import asyncio

from offsim_orders.group_commit import GroupCommit

from tests.helpers import register


async def test_group_commit_batches_waiting_items_and_fails_only_the_bad_one():
    """While a batch is in flight, the items that arrive wait and go together in the next; an
    error for one item reaches only its caller."""
    batches: list[list[int]] = []
    first_running = asyncio.Event()
    release = asyncio.Event()

    async def run(items: list[int]) -> list[int | Exception]:
        batches.append(items)
        if len(batches) == 1:
            first_running.set()
            await release.wait()
        return [ValueError(f"bad {i}") if i == 7 else i * 10 for i in items]

    commit: GroupCommit[int, int] = GroupCommit(run, concurrency=1)
    first = asyncio.create_task(commit.submit(0))
    await first_running.wait()
    rest = [asyncio.create_task(commit.submit(i)) for i in range(1, 10)]
    release.set()
    results = await asyncio.gather(first, *rest, return_exceptions=True)

    assert batches == [[0], list(range(1, 10))]
    assert [r for r in results if not isinstance(r, Exception)] == [
        i * 10 for i in range(10) if i != 7
    ]
    assert [str(r) for r in results if isinstance(r, Exception)] == ["bad 7"]
    await commit.close()


async def test_place_order_concurrent_requests_each_answered_with_their_own_order(
    users, orders, pool, products
):
    """Many orders placed at once (committed in shared batches): each request is answered with
    the order it asked for, or with its own error, and the database holds exactly the 201s."""
    mine = await register(users, "mine@example.org")
    theirs = await register(users, "theirs@example.org")
    ssd, other_ssd = mine["devices"][0]["id"], theirs["devices"][0]["id"]
    as_me = {"Authorization": f"Bearer {mine['token']}"}
    good = [
        {"ssd_id": ssd, "barcode": products[i % len(products)], "quantity": i + 1}
        for i in range(40)
    ]
    bad = [
        ({"ssd_id": 999_999, "barcode": products[0], "quantity": 1}, 404, "ssd_id"),
        ({"ssd_id": other_ssd, "barcode": products[0], "quantity": 1}, 403, "ssd_id"),
        ({"ssd_id": ssd, "barcode": "0000000000000", "quantity": 1}, 404, "barcode"),
    ]
    restock = {"ssd_id": ssd, "barcode": products[1], "quantity": 2, "kind": "restock"}

    async def post(body: dict) -> tuple[int, dict]:
        resp = await orders.post("/api/orders", json=body, headers=as_me)
        return resp.status, await resp.json()

    answers = await asyncio.gather(
        *(post(body) for body in good),
        *(post(body) for body, _, _ in bad),
        post(restock),
        post(restock),
    )

    placed = answers[: len(good)]
    for body, (status, order) in zip(good, placed, strict=True):
        assert status == 201
        assert {k: order[k] for k in body} == body
        assert order["status"] == "pending" and order["kind"] == "order"
    for (_, status, field), (got, error) in zip(bad, answers[len(good) : -2], strict=True):
        assert (got, list(error["details"])) == (status, [field])
    assert sorted(status for status, _ in answers[-2:]) == [201, 409]
    ids = [order["id"] for _, order in placed] + [
        order["id"] for status, order in answers[-2:] if status == 201
    ]
    assert len(set(ids)) == len(good) + 1
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, ssd_id, barcode, quantity FROM product_orders")
    assert {(r["id"], r["ssd_id"], r["barcode"], r["quantity"]) for r in rows} == {
        (order["id"], order["ssd_id"], order["barcode"], order["quantity"])
        for status, order in answers
        if status == 201
    }
