"""Readings survive a `kill -9` of the users service in the middle of a batch: every reading is
applied exactly once (those of the killed batch after the restart, those applied but not acked
recognised as duplicates), and every product left below its reorder point has exactly one
restock order."""

from __future__ import annotations

import asyncio
import collections
import random

import aiohttp
from offsim_common import subjects
from offsim_common.events import SsdReading

from tests.conftest import SERVICE_TOKEN, eventually
from tests.helpers import metric
from tests.processes import Service

SSDS = 60
READINGS = 3000


async def population(users: Service, http: aiohttp.ClientSession) -> list[dict]:
    body = {"users": [
        {"first_name": "Crash", "last_name": f"Test {n}", "email": f"crash-{n}@example.org",
         "password": "long enough password",
         "devices": [{"mac_address": f"02:00:00:01:00:{n:02x}"}]}
        for n in range(SSDS)
    ]}  # fmt: skip
    headers = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
    async with http.post(f"{users.url}/api/synthetic-users", json=body, headers=headers) as resp:
        assert resp.status == 201, await resp.text()
        return [device for user in (await resp.json())["users"] for device in user["devices"]]


async def test_kill_9_mid_batch_applies_every_reading_once(
    nats_url, database_url, pool, nc, products, tmp_path
):
    env = {"DATABASE_URL": database_url, "NATS_URL": nats_url, "LOG_LEVEL": "WARNING",
           "OFFSIM_SERVICE_TOKEN": SERVICE_TOKEN}  # fmt: skip
    users = Service("users", "offsim_users", env, tmp_path / "users.log")
    rng = random.Random(7)
    async with aiohttp.ClientSession() as http:
        await users.start(http)
        try:
            devices = await population(users, http)
            async with pool.acquire() as conn:
                start = {
                    (r["ssd_id"], r["barcode"]): dict(r)
                    for r in await conn.fetch(
                        "SELECT ssd_id, barcode, quantity, reorder_point FROM product_ssds"
                    )
                }
            sent = [
                SsdReading(ssd_id=d["id"], barcode=rng.choice(d["watched"]),
                           quantity=rng.randint(1, 2), reading_id=f"r{n}")
                for n, d in enumerate(rng.choice(devices) for _ in range(READINGS))
            ]  # fmt: skip
            blocker = sent[READINGS // 2]
            # Hold one stock row, so that the batch holding that reading waits in the middle of
            # its transaction (its readings recorded, its stock rows not all updated yet).
            holder = await pool.acquire()
            tx = holder.transaction()
            await tx.start()
            await holder.execute(
                "SELECT 1 FROM product_ssds WHERE ssd_id = $1 AND barcode = $2 FOR UPDATE",
                blocker.ssd_id,
                blocker.barcode,
            )
            js = nc.jetstream()
            acks = [
                await js.publish_async(
                    subjects.ssd_readings(r.ssd_id), r.model_dump_json().encode()
                )
                for r in sent
            ]
            await asyncio.gather(*acks)

            async def batch_waiting() -> bool:
                async with pool.acquire() as conn:
                    return await conn.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted")

            await eventually(batch_waiting)
            await users.kill()
            await tx.rollback()
            await pool.release(holder)
            await users.start(http)

            async def all_applied() -> bool:
                async with http.get(f"{users.url}/metrics") as resp:
                    page = await resp.text()
                seen = metric(page, "offsim_ssd_readings_total", outcome="applied") + metric(
                    page, "offsim_ssd_readings_total", outcome="duplicate"
                )
                async with pool.acquire() as conn:
                    recorded = await conn.fetchval("SELECT count(*) FROM ssd_readings")
                return (
                    recorded == READINGS
                    and seen > 0
                    and metric(
                        page, "offsim_consumer_pending", consumer=subjects.USERS_APPLY_READINGS
                    )
                    == 0
                )

            await eventually(all_applied, within=60, interval=0.2)
        finally:
            await users.stop()

    wanted = collections.Counter()
    for r in sent:
        wanted[(r.ssd_id, r.barcode)] += r.quantity
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT ssd_id, barcode, quantity, units_wanted, units_short FROM product_ssds"
        )
        restocks = collections.Counter(
            (r["ssd_id"], r["barcode"])
            for r in await conn.fetch(
                "SELECT ssd_id, barcode FROM product_orders WHERE kind = 'restock'"
            )
        )
        demand = await conn.fetchval("SELECT sum(readings) FROM ssd_demand")
    assert demand == READINGS
    for row in rows:
        key = (row["ssd_id"], row["barcode"])
        before = start[key]["quantity"]
        assert row["units_wanted"] == wanted[key], key
        assert row["quantity"] == max(before - wanted[key], 0), key
        assert row["units_short"] == max(wanted[key] - before, 0), key
        # Nothing was delivered: one restock order exactly where the stock fell below the point.
        assert restocks[key] == (1 if row["quantity"] < start[key]["reorder_point"] else 0), key
