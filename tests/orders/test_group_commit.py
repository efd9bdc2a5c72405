"""Group commit: concurrent orders share one statement, and each request gets its own answer."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest
from offsim_common import idempotency, subjects
from offsim_common.errors import Conflict, KeyReused, NotFound
from offsim_common.events import OrderEvent
from offsim_common.requests import OrderRequest
from offsim_orders.app import create_app
from offsim_orders.group_commit import GroupCommit
from offsim_orders.orders import Placed, Placement, insert_batch

from tests.conftest import AS_SERVICE, changed, eventually
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


def keyed(ssd_id: int, barcode: str, quantity: int, key: str, scope: str = "s") -> Placement:
    """A placement with an Idempotency-Key whose fingerprint stands for its body."""
    order = OrderRequest(ssd_id=ssd_id, barcode=barcode, quantity=quantity)
    fingerprint = hashlib.sha256(order.model_dump_json().encode()).digest()
    return Placement(order, None, None, idempotency.Key(scope, key, fingerprint, b"\0" * 32))


async def test_insert_batch_keyed_placements_in_one_batch_each_replay_their_own_answer(
    users, pool, products
):
    """Keyed placements committed in one batch: each new one records its own answer, a key
    twice in the batch is a 409 for the second, a failed one records nothing; the same batch
    again replays each first answer with no new order, and a key's other body is a 422."""
    ssd = (await register(users))["devices"][0]["id"]
    first = [keyed(ssd, products[i], i + 1, f"k{i}") for i in range(5)]
    twice = keyed(ssd, products[0], 9, "k0")  # k0 again, in the same batch
    unknown = keyed(999_999, products[0], 1, "k-unknown")
    results = await insert_batch(pool, [*first, twice, unknown])

    placed = results[:5]
    assert all(isinstance(r, Placed) and r.status == 201 for r in placed)
    orders = [json.loads(r.body) for r in placed]
    assert [(o["barcode"], o["quantity"]) for o in orders] == [
        (products[i], i + 1) for i in range(5)
    ]
    assert isinstance(results[5], Conflict) and isinstance(results[6], NotFound)

    again = await insert_batch(pool, [*reversed(first), unknown])
    replays = list(reversed(again[:5]))
    assert [r.body for r in replays] == [r.body for r in placed]
    assert all(r.status == 201 and r.order is None for r in replays)  # replays announce nothing
    assert isinstance(again[5], NotFound)  # the failure was not recorded: tried again

    reused = keyed(ssd, products[0], 7, "k1")  # k1 recorded another body
    (answer,) = await insert_batch(pool, [reused])
    assert isinstance(answer, KeyReused)
    async with pool.acquire() as conn:
        ids = {r["id"] for r in await conn.fetch("SELECT id FROM product_orders")}
        keys = await conn.fetchval("SELECT count(*) FROM idempotency_keys")
    assert ids == {o["id"] for o in orders} and keys == 5


async def test_place_order_concurrent_keyed_requests_and_retries_each_get_their_own_order(
    users, orders, pool, products
):
    """Over HTTP, many keyed orders at once and then their retries at once: every retry is
    answered with its own first answer and the database holds one order per key."""
    user = await register(users, "keyed@example.org")
    ssd = user["devices"][0]["id"]
    auth = {"Authorization": f"Bearer {user['token']}"}

    async def post(i: int) -> tuple[int, bytes]:
        body = {"ssd_id": ssd, "barcode": products[i % len(products)], "quantity": i + 1}
        resp = await orders.post(
            "/api/orders", json=body, headers={**auth, "Idempotency-Key": f"order-{i}"}
        )
        return resp.status, await resp.read()

    first = await asyncio.gather(*(post(i) for i in range(30)))
    retries = await asyncio.gather(*(post(i) for i in reversed(range(30))))
    assert all(status == 201 for status, _ in first)
    assert list(reversed(retries)) == first
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM product_orders") == 30


async def test_place_order_batch_acked_orders_are_marked_published_each_once(
    users, orders, pool, nc, products
):
    """A batch published at once: every order is marked published after the stream's ack, and
    the stream holds exactly one orders.pending per order."""
    user = await register(users, "batch@example.org")
    ssd = user["devices"][0]["id"]
    answers = await asyncio.gather(
        *(orders.post("/api/orders", json=order(ssd, products, i)) for i in range(40))
    )
    ids = sorted([(await resp.json())["id"] for resp in answers])

    async def all_marked():
        async with pool.acquire() as conn:
            return await conn.fetchval(
                "SELECT count(*) = 40 FROM product_orders WHERE published_at IS NOT NULL"
            )

    await eventually(all_marked)
    assert sorted(await pending_ids_in_stream(nc)) == ids


def order(ssd: int, products: list[str], i: int) -> dict:
    return {"ssd_id": ssd, "barcode": products[i % len(products)], "quantity": i + 1}


async def pending_ids_in_stream(nc) -> list[int]:
    """The order ids of every orders.pending the ORDERS stream holds."""
    js = nc.jetstream()
    info = await js.stream_info(subjects.ORDERS_STREAM, subjects_filter=subjects.ORDERS_PENDING)
    total = (info.state.subjects or {}).get(subjects.ORDERS_PENDING, 0)
    sub = await js.subscribe(subjects.ORDERS_PENDING, ordered_consumer=True)
    try:
        ids = []
        for _ in range(total):
            msg = await sub.next_msg(timeout=5)
            ids.append(OrderEvent.model_validate_json(msg.data).id)
        return ids
    finally:
        await sub.unsubscribe()


@pytest.fixture
async def orders_behind_nats_proxy(nats_proxy, aiohttp_client, settings, pool, nc):
    """The orders service reaching NATS through a proxy the test cuts (torn down before it)."""
    proxied = changed(settings, nats_url=nats_proxy.url)
    return await aiohttp_client(create_app(proxied), headers=AS_SERVICE)


async def test_place_order_batch_publish_with_nats_silent_leaves_orders_to_the_republisher(
    orders_behind_nats_proxy, users, nats_proxy, pool, nc, products
):
    """NATS goes silent (connection cut, reconnections unanswered): a batch's orders are still
    answered 201 and left unmarked; once NATS is back, the re-publisher announces each order
    exactly once."""
    orders = orders_behind_nats_proxy
    ssd = (await register(users, "silent@example.org"))["devices"][0]["id"]
    await nats_proxy.blackhole()
    answers = await asyncio.gather(
        *(orders.post("/api/orders", json=order(ssd, products, i)) for i in range(20))
    )
    assert [resp.status for resp in answers] == [201] * 20
    ids = sorted([(await resp.json())["id"] for resp in answers])
    async with pool.acquire() as conn:
        marked = await conn.fetchval(
            "SELECT count(*) FROM product_orders WHERE published_at IS NOT NULL"
        )
    assert marked == 0
    await nats_proxy.restore()

    async def all_marked():
        async with pool.acquire() as conn:
            return await conn.fetchval(
                "SELECT count(*) = 20 FROM product_orders WHERE published_at IS NOT NULL"
            )

    await eventually(all_marked, within=40)
    assert sorted(await pending_ids_in_stream(nc)) == ids
