"""Chaos on a 3-node JetStream cluster, with real processes: every stream and the faults bucket
at 3 replicas, every service given all three nodes in NATS_URL. Under a steady load of orders
(over HTTP) and device readings (over NATS), the node leading the ORDERS stream is killed
(SIGKILL) and started again, then another node leading it in turn. Every accepted order
completes exactly once, every reading is applied once, the stock equals what the readings took
and the deliveries brought, every consumer is still working at the end, and the answers during
a leader change are 201s, or 503s with Retry-After: never a 500.

The services are started while the cluster is still electing its first leaders: they wait for
them instead of exiting. The figures are printed (`pytest -s`).
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from dataclasses import dataclass, field

import aiohttp
import asyncpg
import nats
import pytest
from offsim_common import subjects
from offsim_launcher import embedded

from tests.chaos.load import (
    DURABLES,
    Load,
    Pipeline,
    check_answers,
    check_still_working,
    place_orders,
    stored_ids,
    until,
)
from tests.conftest import eventually
from tests.helpers import registration
from tests.secure import Secrets

pytestmark = pytest.mark.slow

WORKERS = 2
READING_PACE_S = 0.02  # a device reading every 20 ms: about 50 a second


@dataclass
class Readings:
    """What the devices sent: each reading published (under its id) until the stream acked it,
    as a device does; so every reading sent is stored, once or more."""

    sent: dict[str, tuple[int, str, int]] = field(default_factory=dict)  # id -> ssd, barcode, qty
    retries: int = 0


async def send_readings(
    js, pairs: list[tuple[int, str]], readings: Readings, stop: asyncio.Event
) -> None:
    n = 0
    while not stop.is_set():
        ssd_id, barcode = pairs[n % len(pairs)]
        reading_id = f"cluster-{n}"
        quantity = 1 + n % 2
        n += 1
        readings.sent[reading_id] = (ssd_id, barcode, quantity)
        data = json.dumps({"ssd_id": ssd_id, "barcode": barcode, "quantity": quantity,
                           "reading_id": reading_id}).encode()  # fmt: skip
        while True:
            try:
                await js.publish(subjects.ssd_readings(ssd_id), data, timeout=2,
                                 headers={"Nats-Msg-Id": f"{ssd_id}-{reading_id}"})  # fmt: skip
                break
            except Exception:  # no leader yet, a lost node, a reconnect: send it again
                readings.retries += 1
                await asyncio.sleep(0.1)  # a device's back-off, not a synchronisation
        await asyncio.sleep(READING_PACE_S)


async def leader_of(js, stream: str) -> str:
    async def leader():
        try:
            info = await js.stream_info(stream)
        except Exception:  # no leader to answer, yet
            return None
        return info.cluster.leader if info.cluster else None

    return await eventually(leader, within=30, interval=0.1)


async def all_current(js) -> bool:
    """Every stream and durable has a leader, and all its replicas are online and current."""
    try:
        infos = [await js.stream_info(stream) for stream in DURABLES]
        infos += [await js.consumer_info(stream, durable)
                  for stream, durables in DURABLES.items() for durable in durables]  # fmt: skip
    except Exception:
        return False
    return all(
        info.cluster and info.cluster.leader
        and len(info.cluster.replicas or []) == 2
        and all(peer.current and not peer.offline for peer in info.cluster.replicas)
        for info in infos
    )  # fmt: skip


async def step_down_until_not(js, nc, stream: str, avoid: str) -> str:
    """Move the stream's leadership off `avoid` (the node killed before), so that the next kill
    hits another node while it leads."""
    while (leader := await leader_of(js, stream)) == avoid:
        try:
            await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", b"", timeout=5)
        except Exception:
            pass
        await eventually(lambda: all_current(js), within=30, interval=0.2)
    return leader


async def test_cluster_chaos_kills_the_orders_leader_twice(
    pool, database_url, products, tmp_path
):  # fmt: skip
    started_at = time.monotonic()
    # Authentication on, as deployed: each service as its own NATS user and Postgres role.
    secrets = Secrets()
    await secrets.make_roles(database_url)
    cluster = embedded.start_nats_cluster(tmp_path / "nats", authorization=secrets.authorization)
    pipeline = Pipeline.of({"DATABASE_URL": database_url, "NATS_URL": cluster.url,
                            "OFFSIM_STREAM_REPLICAS": "3"}, tmp_path / "logs", secrets)  # fmt: skip
    users, orders, everyone = pipeline.users, pipeline.orders, pipeline.everyone
    load, readings, stop = Load(), Readings(), asyncio.Event()
    elections: collections.Counter = collections.Counter()
    killed: list[str] = []
    nc = None
    async with aiohttp.ClientSession() as http:
        try:
            # Started with the cluster still electing: each waits for its streams' leaders.
            await asyncio.gather(*(s.start(http) for s in everyone))
            nc = await nats.connect(cluster.url.split(","), max_reconnect_attempts=-1,
                                    reconnect_time_wait=0.2, **secrets.as_admin)  # fmt: skip
            js = nc.jetstream()

            async def elected(msg) -> None:
                elections[msg.subject.split(".")[3]] += 1  # STREAM or CONSUMER

            await nc.subscribe("$JS.EVENT.ADVISORY.*.LEADER_ELECTED.>", cb=elected)
            async with http.post(
                f"{users.url}/api/register", json=registration("cluster@example.org", devices=5)
            ) as resp:  # fmt: skip
                assert resp.status == 201, await resp.text()
                ssds = [d["id"] for d in (await resp.json())["devices"]]
            before = await stock_ledger(pool)
            pairs = sorted(before)
            clients = [
                asyncio.create_task(place_orders(http, orders, ssds, products, load, stop, seed))
                for seed in range(WORKERS)
            ] + [asyncio.create_task(send_readings(js, pairs, readings, stop))]

            async def progress(orders_n: int, readings_n: int) -> None:
                """Let the load run until n more orders are accepted and readings applied."""
                target = len(load.accepted) + orders_n
                applied = await applied_count(pool) + readings_n
                await until(lambda: len(load.accepted) >= target, within=60)
                await eventually(lambda: applied_at_least(pool, applied), within=60)

            try:
                await progress(5, 20)
                for _ in range(2):
                    leader = await step_down_until_not(js, nc, subjects.ORDERS_STREAM,
                                                       killed[-1] if killed else "")  # fmt: skip
                    victim = cluster.index_of(leader)
                    cluster.kill(victim)
                    killed.append(leader)
                    await progress(5, 50)  # orders complete and readings apply meanwhile
                    cluster.start(victim)
                    await eventually(lambda: all_current(js), within=60, interval=0.2)
                    await progress(3, 20)
            finally:
                stop.set()
                await asyncio.gather(*clients)
            checked = await check_outcome(pool, js, load, readings, before, everyone, http, nc)
        finally:
            await pipeline.stop()
            if nc is not None:
                await nc.close()
            cluster.stop()
    elapsed = time.monotonic() - started_at
    print(f"\ncluster chaos: killed {killed}; {load.summary()}, "
          f"restock orders {checked['restocks']}, lost {checked['lost']}, "
          f"duplicated {checked['duplicated']}; readings sent {len(readings.sent)} "
          f"(re-sent {readings.retries}), applied {checked['applied']}, "
          f"applied twice {checked['applied_twice']}; leader elections seen "
          f"{dict(elections)}; {elapsed:.0f}s")  # fmt: skip


async def stock_ledger(pool: asyncpg.Pool) -> dict[tuple[int, str], int]:
    """Per SSD and product: the stock plus the units the readings took from it (wanted minus
    short). Only deliveries change it: a reading moves units from the stock to `units_wanted`
    (or to `units_short` when there are none)."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT ssd_id, barcode, quantity + units_wanted - units_short AS total"
            " FROM product_ssds"
        )
    return {(r["ssd_id"], r["barcode"]): r["total"] for r in rows}


async def applied_count(pool: asyncpg.Pool) -> int:
    async with pool.acquire() as conn:
        return await conn.fetchval("SELECT count(*) FROM ssd_readings")


async def applied_at_least(pool: asyncpg.Pool, n: int) -> bool:
    return await applied_count(pool) >= n


async def check_outcome(pool, js, load, readings, before, everyone, http, nc) -> dict:
    accepted = check_answers(load)

    async def all_done():
        async with pool.acquire() as conn:
            return await conn.fetchval(
                """SELECT count(*) FILTER (WHERE o.status <> 'completed' OR d.order_id IS NULL)
                   FROM product_orders o LEFT JOIN stock_deliveries d ON d.order_id = o.id"""
            ) == 0  # fmt: skip

    async def all_applied():
        return await applied_count(pool) >= len(readings.sent)

    try:
        await eventually(all_applied, within=60, interval=0.2)
        await eventually(all_done, within=60, interval=0.2)
    finally:
        async with pool.acquire() as conn:
            rows = await conn.fetch("SELECT id, status, placed_by FROM product_orders")
            delivered = await conn.fetch(
                """SELECT o.ssd_id, o.barcode, o.quantity FROM stock_deliveries d
                   JOIN product_orders o ON o.id = d.order_id"""
            )
            applied = await conn.fetch("SELECT ssd_id, reading_id FROM ssd_readings")
            wanted = await conn.fetchval("SELECT sum(units_wanted) FROM product_ssds")
    by_api = {r["id"] for r in rows if r["placed_by"] == "api"}
    lost = accepted - {r["id"] for r in rows if r["status"] == "completed"}
    assert not lost, sorted(lost)
    assert by_api == accepted, sorted(by_api ^ accepted)
    assert len(delivered) == len(rows)  # every order, the restocks too, delivered once

    # One orders.shipped and one orders.completed stored per order, whichever node was killed.
    shipped = await stored_ids(js, subjects.ORDERS_SHIPPED)
    completed = await stored_ids(js, subjects.ORDERS_COMPLETED)
    order_ids = {r["id"] for r in rows}
    duplicated = {i for i in order_ids if shipped[i] != 1 or completed[i] != 1}
    assert not duplicated, {i: (shipped[i], completed[i]) for i in sorted(duplicated)[:10]}

    # Every reading applied, once: its id stored once, its units taken once.
    ids = collections.Counter(r["reading_id"] for r in applied)
    assert set(ids) == set(readings.sent)
    twice = [i for i, n in ids.items() if n > 1]
    assert not twice
    assert wanted == sum(quantity for _, _, quantity in readings.sent.values())
    expected = collections.Counter(before)
    for r in delivered:
        expected[(r["ssd_id"], r["barcode"])] += r["quantity"]
    assert await stock_ledger(pool) == dict(expected)

    await check_still_working(js, nc, http, everyone)
    return {"lost": len(lost), "duplicated": len(duplicated), "applied": len(ids),
            "applied_twice": len(twice), "restocks": len(rows) - len(by_api)}  # fmt: skip
