"""The users service applying SSD readings: how many a second it absorbs.

Embedded NATS and Postgres; the users service (and the orders service, which announces the
restock orders the readings cause) as processes of their own; a population of SSDs stored by SQL.
A backlog of readings is published on ssds.<id>.readings as fast as JetStream takes them, then
the users service drains it: readings applied a second, the batches it took, the restock orders
placed, and each process's CPU and peak RSS. Then the same readings again: every one a
duplicate, nothing changed. Run with `make bench`; numbers go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg
import nats
import psutil
from offsim_common import bus, subjects
from offsim_common.events import SsdReading
from offsim_common.migrate import migrate
from offsim_launcher import embedded
from offsim_launcher.processes import Child
from offsim_launcher.up import wait_healthy

# /metrics is read as the tests read it (prometheus_client's parser): from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers import metric

PRODUCTS = 1000
WATCHED = 3


async def populate(dsn: str, ssds: int, rng: random.Random) -> list[tuple[int, list[str]]]:
    """SSDs (one user each) watching WATCHED products, stored by SQL: the bench measures the
    readings, not the registration."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            "INSERT INTO products (barcode, name) VALUES ($1, $2)",
            [(f"{i:013d}", f"product {i}") for i in range(1, PRODUCTS + 1)],
        )
        await conn.execute(
            """INSERT INTO users (first_name, last_name, email, password_hash)
               SELECT 'Bench', 'User ' || n, 'bench-' || n || '@offsim.example', 'x'
               FROM generate_series(1, $1) AS n""",
            ssds,
        )
        await conn.execute(
            """INSERT INTO ssds (user_id, mac_address)
               SELECT id, lpad(to_hex(id), 12, '0') FROM users ORDER BY id"""
        )
        devices = []
        stock = []
        for ssd_id in range(1, ssds + 1):
            watched = [f"{p:013d}" for p in rng.sample(range(1, PRODUCTS + 1), WATCHED)]
            devices.append((ssd_id, watched))
            for barcode in watched:
                capacity = rng.randint(6, 12)
                stock.append((ssd_id, barcode, capacity, capacity // 3, capacity))
        await conn.copy_records_to_table(
            "product_ssds", records=stock,
            columns=["ssd_id", "barcode", "quantity", "reorder_point", "capacity"],
        )  # fmt: skip
        return devices
    finally:
        await conn.close()


async def publish(nats_url: str, readings: list[SsdReading]) -> float:
    """Publish every reading (acks awaited in windows); return the real seconds it took."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    started = time.perf_counter()
    window = []
    for reading in readings:
        data = reading.model_dump_json().encode()
        window.append(await js.publish_async(subjects.ssd_readings(reading.ssd_id), data))
        if len(window) >= 2000:
            await asyncio.gather(*window)
            window = []
    await asyncio.gather(*window)
    took = time.perf_counter() - started
    await nc.close()
    return took


async def scrape(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(f"{url}/metrics") as resp:
        return await resp.text()


async def drain(http: aiohttp.ClientSession, url: str, total: float) -> float:
    """Wait until the users service has seen `total` readings (any outcome); the real seconds."""
    started = time.perf_counter()
    while True:
        page = await scrape(http, url)
        if metric(page, "offsim_ssd_readings_total") >= total:
            return time.perf_counter() - started
        await asyncio.sleep(0.05)


def resources(child: Child) -> str:
    proc = psutil.Process(child.process.pid)
    cpu = proc.cpu_times()
    rss = proc.memory_full_info().rss / 2**20
    return f"{child.name}: {cpu.user + cpu.system:.1f} s CPU, RSS {rss:.0f} MB"


async def main(ssds: int, count: int, seed: int) -> None:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="offsim-bench-") as tmp:
        nats_server = embedded.start_nats(Path(tmp) / "nats")
        pg = embedded.start_postgres(Path(tmp) / "pg")
        children: list[Child] = []
        try:
            dsn = await embedded.ensure_database(pg, "bench")
            await migrate(dsn)
            devices = await populate(dsn, ssds, rng)
            nc = await nats.connect(nats_server.url)
            await bus.ensure_streams(nc.jetstream())
            await nc.close()
            readings = []
            for n in range(count):
                ssd_id, watched = devices[rng.randrange(ssds)]
                readings.append(SsdReading(ssd_id=ssd_id, barcode=rng.choice(watched),
                                           quantity=1, reading_id=str(n)))  # fmt: skip
            took = await publish(nats_server.url, readings)
            print(f"{count:,} readings for {ssds:,} SSDs published in {took:.1f} s "
                  f"({count / took:,.0f}/s), a backlog")  # fmt: skip
            urls = {}
            for name, module in (("users", "offsim_users"), ("orders", "offsim_orders")):
                port = embedded.free_port()
                urls[name] = f"http://127.0.0.1:{port}"
                env = {"DATABASE_URL": dsn, "NATS_URL": nats_server.url, "LOG_LEVEL": "WARNING",
                       "HTTP_PORT": str(port)}  # fmt: skip
                child = Child(name, module, env, Path(tmp) / f"{name}.log")
                await child.start()
                children.append(child)
            async with aiohttp.ClientSession() as http:
                for child in children:
                    await wait_healthy(urls[child.name], child)
                seconds = await drain(http, urls["users"], count)
                page = await scrape(http, urls["users"])
                applied = metric(page, "offsim_ssd_readings_total", outcome="applied")
                batches = metric(page, "offsim_batch_size_count",
                                 batch=subjects.USERS_APPLY_READINGS)  # fmt: skip
                restocks = metric(page, "offsim_restock_orders_total")
                short = metric(page, "offsim_ssd_demand_units_total", outcome="short")
                print(f"applied {applied:,.0f} in {seconds:.1f} s: {applied / seconds:,.0f} "
                      f"readings/s, {count / max(batches, 1):.0f} a fetch; {restocks:,.0f} "
                      f"restock orders placed, {short:,.0f} units found no stock")  # fmt: skip
                for child in children:
                    print("  " + resources(child))
                # The same readings again: each recognised, nothing changed.
                await publish(nats_server.url, readings)
                seconds = await drain(http, urls["users"], 2 * count)
                page = await scrape(http, urls["users"])
                duplicates = metric(page, "offsim_ssd_readings_total", outcome="duplicate")
                still = metric(page, "offsim_ssd_readings_total", outcome="applied")
                print(f"sent again: {duplicates:,.0f} duplicates in {seconds:.1f} s "
                      f"({duplicates / seconds:,.0f}/s), applied still {still:,.0f}")  # fmt: skip
        finally:
            for child in reversed(children):
                await child.stop()
            nats_server.stop()
            pg.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ssds", type=int, default=100_000)
    parser.add_argument("--readings", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(main(args.ssds, args.readings, args.seed))
