"""A city, live: `offsim up` with a population of SSDs at SIM_SPEED=60, everything on this machine.

Starts `offsim up` (embedded NATS and Postgres, every service, the generator, the dashboard) in a
fresh data folder with OFFSIM_POPULATION SSDs, waits until the population is registered, then
watches one real minute (or `--seconds`) of the simulation: events the generator sent a second,
overflow, the scheduler's largest lag, the readings the users service applied and its backlog.
Then it pauses the generator's clock (`PUT /api/control {"paused": true}`), waits for the readings
to drain and compares the readings the generator counted sent with those the users service
applied: they must be equal. It prints each process's CPU over the minute and its RSS. Run with
`make bench`; numbers go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg
from citylib import control, counters, cpu_seconds, rss_mb, running_city, wait_registered


async def database_size(dsn: str) -> str:
    """The database's size on disk, and the readings table's share of it."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            """SELECT pg_size_pretty(pg_database_size(current_database())) AS db,
                      pg_size_pretty(pg_total_relation_size('ssd_readings')) AS readings,
                      (SELECT count(*) FROM ssd_readings) AS rows"""
        )
    finally:
        await conn.close()
    return f"{row['db']}, of which ssd_readings {row['readings']} ({row['rows']:,} readings)"


async def main(ssds: int, speed: float, seconds: float, transport: str, warmup: float) -> None:
    with tempfile.TemporaryDirectory(prefix="offsim-city-") as tmp:
        env = {"OFFSIM_POPULATION": str(ssds), "SIM_SPEED": str(speed),
               "OFFSIM_DEVICE_TRANSPORT": transport}  # fmt: skip
        started = time.perf_counter()
        async with running_city(Path(tmp) / "data", env) as city, aiohttp.ClientSession() as http:
            urls = city.urls
            print(f"offsim up: services up in {time.perf_counter() - started:.1f} s")
            await wait_registered(http, city)
            took = city.registration_seconds()
            print(f"population: {ssds:,} SSDs registered in {took:.1f} s" if took else
                  "population: registration time not found in the generator's log")  # fmt: skip
            if warmup > 0:
                # Restocking starts once the first products fell below their reorder point.
                print(f"warming up for {warmup:.0f} real seconds")
                await asyncio.sleep(warmup)
            procs = city.processes()
            cpu_before = {name: cpu_seconds(p) for name, p in procs.items()}
            first = await counters(http, urls)
            await asyncio.sleep(seconds)
            last = await counters(http, urls)
            cpu_after = {name: cpu_seconds(p) for name, p in procs.items()}
            state = await control(http, urls)
            elapsed = last.at - first.at
            print(f"{ssds:,} SSDs x{speed:g}, {transport}, over {elapsed:.0f} real seconds:")
            print(f"  events sent {last.events_sent - first.events_sent:,.0f} "
                  f"({(last.events_sent - first.events_sent) / elapsed:,.0f}/s), readings "
                  f"{(last.consume_sent - first.consume_sent) / elapsed:,.0f}/s")  # fmt: skip
            overflow = last.overflow - first.overflow
            print(f"  overflow {overflow:,.0f} (the whole run: {state['overflow']}), "
                  f"max scheduler lag {state['max_lag_s']} s")  # fmt: skip
            print(f"  readings applied {(last.applied - first.applied) / elapsed:,.0f}/s, "
                  f"backlog at the end {last.pending:,.0f}")  # fmt: skip
            restocks = (last.restocks - first.restocks) / elapsed
            completed = (last.completed - first.completed) / elapsed
            print(f"  restock orders placed {restocks:,.1f}/s, "
                  f"orders completed {completed:,.1f}/s")  # fmt: skip
            for name in sorted(procs):
                share = (cpu_after[name] - cpu_before[name]) / elapsed
                print(f"  {name:<22} CPU {share:5.0%} of a core, RSS "
                      f"{rss_mb(procs[name]):6.0f} MB")  # fmt: skip

            # The pause: the clock stops, what was sent drains.
            async with http.put(f"{urls['generator']}/api/control",
                                json={"paused": True}) as resp:  # fmt: skip
                assert resp.status == 200, await resp.text()
            paused = time.perf_counter()
            while True:
                now = await counters(http, urls)
                if now.applied >= now.consume_sent and now.pending == 0:
                    break
                if time.perf_counter() - paused > 120:
                    break
                await asyncio.sleep(0.5)
            verdict = "equal" if now.applied == now.consume_sent else "NOT EQUAL"
            print(f"after the pause ({time.perf_counter() - paused:.1f} s to drain): "
                  f"consume sent {now.consume_sent:,.0f}, readings applied "
                  f"{now.applied:,.0f}: {verdict}")  # fmt: skip
            print(f"  database {await database_size(city.dsn)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ssds", type=int, default=100_000)
    parser.add_argument("--speed", type=float, default=60.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--transport", default="nats", choices=("nats", "mqtt", "http"))
    parser.add_argument("--warmup", type=float, default=0.0,
                        help="real seconds to run before measuring (restocking starts after "
                             "about ten at x60)")  # fmt: skip
    args = parser.parse_args()
    asyncio.run(main(args.ssds, args.speed, args.seconds, args.transport, args.warmup))
