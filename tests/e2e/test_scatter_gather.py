"""orders.random: both services answer on the request's own inbox."""

from __future__ import annotations

from offsim_common.events import RandomOrderRequest
from offsim_generator.scatter import gather_random

from tests.helpers import register


async def test_orders_random_gathers_both_replies(users, orders, nc, pool, products):
    user = await register(users)
    gathered = await gather_random(nc)
    assert gathered.errors == []
    assert gathered.ssd_id == user["devices"][0]["id"]
    assert gathered.barcode in products


async def test_orders_random_with_ssd_answers_a_watched_product(users, orders, nc, pool, products):
    user = await register(users)
    ssd_id = user["devices"][0]["id"]
    async with pool.acquire() as conn:
        watched = {
            r["barcode"]
            for r in await conn.fetch("SELECT barcode FROM product_ssds WHERE ssd_id = $1", ssd_id)
        }
    for _ in range(5):
        gathered = await gather_random(nc, request=RandomOrderRequest(ssd_id=ssd_id))
        assert gathered.barcode in watched


async def test_orders_random_without_ssds_reports_the_error(users, orders, nc, pool, products):
    gathered = await gather_random(nc)
    assert gathered.ssd_id is None and gathered.barcode in products
    assert gathered.errors == ["no SSD registered yet"]


async def test_orders_random_replies_go_to_each_requester(users, orders, nc, pool, products):
    """The original replied on a fixed subject; here concurrent requesters each get their pair."""
    import asyncio

    await register(users)
    results = await asyncio.gather(*(gather_random(nc) for _ in range(10)))
    assert all(r.complete and not r.errors for r in results)


async def test_a_refused_request_is_a_micro_error_counted_apart_from_failures(
    users, orders, nc, products
):
    """A domain error on a `nats.micro` endpoint is answered as a micro error whose code is the
    HTTP status of the same error, and counted as refused (not ok, not error)."""
    from offsim_common import subjects
    from offsim_common.metrics import NATS_REQUESTS

    def count(outcome: str) -> float:
        return NATS_REQUESTS.labels("orders.random-barcode", outcome)._value.get()

    await register(users)  # so the users service answers with an SSD
    refused, ok = count("refused"), count("ok")
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, max_msgs=2)
    await nc.publish(subjects.ORDERS_RANDOM, b'{"ssd_id": "one"}', reply=inbox)
    replies = [await sub.next_msg(timeout=5) for _ in range(2)]
    from_orders = [m for m in replies if (m.headers or {}).get("Nats-Service-Error-Code")]
    assert [m.headers["Nats-Service-Error-Code"] for m in from_orders] == ["400"]
    assert "invalid request" in from_orders[0].headers["Nats-Service-Error"]
    assert count("refused") == refused + 1 and count("ok") == ok
