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
import json
import os
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import psutil

# /metrics is read as the tests read it (prometheus_client's parser): from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers import metric

DATABASE = re.compile(r"offsim: Postgres at (\S+)")
ADDRESS = re.compile(r"offsim: (users service|orders service|generator|dashboard)\s+(http://\S+)")


@dataclass
class Counters:
    """What the generator and the users service had counted at one moment."""

    at: float
    consume_sent: float
    events_sent: float
    overflow: float
    applied: float
    pending: float
    restocks: float
    completed: float


async def scrape(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(f"{url}/metrics") as resp:
        return await resp.text()


async def counters(http: aiohttp.ClientSession, urls: dict[str, str]) -> Counters:
    gen = await scrape(http, urls["generator"])
    users = await scrape(http, urls["users service"])
    orders = await scrape(http, urls["orders service"])
    return Counters(
        at=time.perf_counter(),
        consume_sent=metric(gen, "offsim_generator_events_total", event="consume", outcome="sent"),
        events_sent=metric(gen, "offsim_generator_events_total", outcome="sent"),
        overflow=metric(gen, "offsim_generator_overflow_total"),
        applied=metric(users, "offsim_ssd_readings_total", outcome="applied"),
        pending=metric(users, "offsim_consumer_pending", consumer="users-apply-readings"),
        restocks=metric(users, "offsim_restock_orders_total"),
        completed=metric(orders, "offsim_order_transitions_total", status="completed"),
    )


def processes(root: psutil.Process, data: Path) -> dict[str, list[psutil.Process]]:
    """The launcher's children by name, and the Postgres of the data folder (started in a
    session of its own, so not a child)."""
    found: dict[str, list[psutil.Process]] = {"offsim up": [root]}
    for child in root.children(recursive=True):
        line = " ".join(child.cmdline())
        match = re.search(r"-m (offsim_\w+)", line)
        name = match.group(1) if match else child.name()
        found.setdefault(name, []).append(child)
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] and "postgres" in proc.info["name"]:
            found.setdefault("postgres", []).append(proc)
    found["postgres"] = [p for p in found.get("postgres", []) if _of(p, data)]
    return found


def _of(proc: psutil.Process, data: Path) -> bool:
    """Whether a postgres process serves the data folder (the postmaster names it; its backends
    are its children)."""
    try:
        parent = proc if "-D" in proc.cmdline() else proc.parent()
        return parent is not None and str(data) in " ".join(parent.cmdline())
    except psutil.Error:
        return False


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def rss_mb(procs: list[psutil.Process]) -> float:
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


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


def registration_seconds(log: Path) -> float | None:
    """From the generator's log: registering the population, start to end (real seconds)."""
    started = ended = None
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = entry.get("message", "")
        if message.startswith("registering a population"):
            started = entry["time"]
        elif message.startswith("population registered"):
            ended = entry["time"]
    if started is None or ended is None:
        return None
    from datetime import datetime

    return (datetime.fromisoformat(ended) - datetime.fromisoformat(started)).total_seconds()


async def main(ssds: int, speed: float, seconds: float, transport: str, warmup: float) -> None:
    with tempfile.TemporaryDirectory(prefix="offsim-city-") as tmp:
        data = Path(tmp) / "data"
        env = {**os.environ, "OFFSIM_POPULATION": str(ssds), "SIM_SPEED": str(speed),
               "OFFSIM_DEVICE_TRANSPORT": transport, "LOG_LEVEL": "INFO"}  # fmt: skip
        for name in ("NATS_URL", "DATABASE_URL"):
            env.pop(name, None)
        started = time.perf_counter()
        up = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "offsim_launcher", "up", "--data-dir", str(data),
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        urls: dict[str, str] = {}
        dsn = ""
        try:
            while len(urls) < 4:
                line = (await up.stdout.readline()).decode()
                if not line:
                    raise RuntimeError("offsim up exited before it was up")
                if match := ADDRESS.search(line):
                    urls[match.group(1)] = match.group(2).removesuffix("/api/control")
                elif match := DATABASE.search(line):
                    dsn = match.group(1)
            feed = asyncio.create_task(_drain_output(up))
            print(f"offsim up: services up in {time.perf_counter() - started:.1f} s")
            async with aiohttp.ClientSession() as http:
                # Registered once the clock runs: the first consumption sent.
                while True:
                    try:
                        if (await counters(http, urls)).consume_sent > 0:
                            break
                    except aiohttp.ClientError:
                        pass  # the generator is still starting
                    await asyncio.sleep(0.5)
                took = registration_seconds(data / "logs" / "generator.log")
                print(f"population: {ssds:,} SSDs registered in {took:.1f} s" if took else
                      "population: registration time not found in the generator's log")  # fmt: skip
                if warmup > 0:
                    # Restocking starts once the first products fell below their reorder point.
                    print(f"warming up for {warmup:.0f} real seconds")
                    await asyncio.sleep(warmup)
                procs = processes(psutil.Process(up.pid), data)
                cpu_before = {name: cpu_seconds(p) for name, p in procs.items()}
                first = await counters(http, urls)
                await asyncio.sleep(seconds)
                last = await counters(http, urls)
                cpu_after = {name: cpu_seconds(p) for name, p in procs.items()}
                async with http.get(f"{urls['generator']}/api/control") as resp:
                    control = await resp.json()
                elapsed = last.at - first.at
                print(f"{ssds:,} SSDs x{speed:g}, {transport}, over {elapsed:.0f} real seconds:")
                print(f"  events sent {last.events_sent - first.events_sent:,.0f} "
                      f"({(last.events_sent - first.events_sent) / elapsed:,.0f}/s), readings "
                      f"{(last.consume_sent - first.consume_sent) / elapsed:,.0f}/s")  # fmt: skip
                overflow = last.overflow - first.overflow
                print(f"  overflow {overflow:,.0f} (the whole run: {control['overflow']}), "
                      f"max scheduler lag {control['max_lag_s']} s")  # fmt: skip
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
                print(f"  database {await database_size(dsn)}")
                feed.cancel()
        finally:
            if up.returncode is None:
                up.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(up.wait(), 60)
                except TimeoutError:
                    up.kill()


async def _drain_output(up: asyncio.subprocess.Process) -> None:
    """Keep reading the launcher's feed, so that its pipe never fills and blocks it."""
    while await up.stdout.readline():
        pass


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
