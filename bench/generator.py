"""The generator at scale: a population of SSDs on the real clock.

Dry run (no service): the start (drawing the population), the events a real second and the
scheduler's lag (how late a tick, a simulated second or an event ran) for 100,000 SSDs at
SIM_SPEED=60, with the steady scenario (about 2,500 events a second) and with consumption
tripled.

`--services`: the same against the real services (users, orders and notifications as processes
of their own, embedded NATS with its MQTT listener, and Postgres): first the bulk registration
of 10,000 synthetic users with their SSDs, then a run of the generator (in this process) with a
population of 100,000 SSDs whose readings go by `--transport` (nats, mqtt or http): how long
registering them took, then events sent a second, overflow, failures and lag. Then the clock
stops and the readings still in the READINGS stream are applied: the readings the generator
counted sent against the users service's `offsim_ssd_readings_total{outcome="applied"}` (they
must be equal), and each process's CPU over the run and peak RSS. Run with `make bench`;
numbers go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import psutil
from offsim_generator.app import make_model
from offsim_generator.dryrun import DryRun
from offsim_generator.engine import Engine
from offsim_generator.settings import DEVICE_TRANSPORTS, GeneratorSettings
from prometheus_client import REGISTRY

# /metrics is read as the tests read it (prometheus_client's parser): from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers import metric


async def measure(ssds: int, speed: float, seconds: float, consumption: float) -> dict:
    settings = GeneratorSettings(seed=1, sim_speed=speed)
    model = make_model(settings)
    started = time.perf_counter()
    model.populate(ssds)
    populated = time.perf_counter() - started
    if consumption != 1.0:
        model.overrides.consumption = consumption
    # Every line is formatted, then thrown away: the writer's cost without the disk's.
    with _Discard() as sink:
        writer = DryRun(
            model.population, sink, seed=1,
            supplier_delay=settings.supplier_delay, delivery_delay=settings.delivery_delay,
        )  # fmt: skip
        writer.population_line(model.population.users, model.population.ssds)
        engine = Engine(model, speed=speed, duration=seconds * speed, dry_run=writer)
        engine.start()
        await engine.done.wait()
        await engine.stop()
    summary = engine.summary()
    summary["populate_s"] = round(populated, 2)
    summary["consume_per_s"] = round(summary["by_kind"].get("consume", 0) / summary["elapsed_s"])
    return summary


class _Discard(io.StringIO):
    def write(self, text: str) -> int:
        return len(text)


async def against_services(
    users: int, ssds: int, speed: float, seconds: float, transport: str
) -> None:
    import aiohttp
    import asyncpg
    from offsim_common.migrate import migrate
    from offsim_generator.__main__ import run
    from offsim_generator.model import Model
    from offsim_generator.scenario import built_in
    from offsim_generator.simulation import Simulation
    from offsim_launcher import embedded
    from offsim_launcher.processes import Child
    from offsim_launcher.up import wait_healthy

    with tempfile.TemporaryDirectory(prefix="offsim-bench-") as tmp:
        nats = embedded.start_nats(Path(tmp) / "nats")
        pg = embedded.start_postgres(Path(tmp) / "pg")
        children: list[Child] = []
        try:
            dsn = await embedded.ensure_database(pg, "bench")
            await migrate(dsn)
            conn = await asyncpg.connect(dsn)
            await conn.executemany(
                "INSERT INTO products (barcode, name) VALUES ($1, $2)",
                [(f"{i:013d}", f"product {i}") for i in range(1, 1001)],
            )
            await conn.close()
            ports = {name: embedded.free_port() for name in ("users", "orders", "notifications")}
            urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
            common = {"DATABASE_URL": dsn, "NATS_URL": nats.url, "SIM_SPEED": str(speed),
                      "USERS_URL": urls["users"], "ORDERS_URL": urls["orders"],
                      "OFFSIM_SERVICE_TOKEN": TOKEN, "LOG_LEVEL": "WARNING"}  # fmt: skip
            for name, module in (("users", "offsim_users"), ("orders", "offsim_orders"),
                                 ("notifications", "offsim_notifications")):  # fmt: skip
                child = Child(name, module, {**common, "HTTP_PORT": str(ports[name])},
                              Path(tmp) / f"{name}.log")  # fmt: skip
                await child.start()
                children.append(child)
            for child in children:
                await wait_healthy(urls[child.name], child)
            settings = GeneratorSettings(
                database_url=dsn, nats_url=nats.url, sim_speed=speed, seed=1,
                users_url=urls["users"], orders_url=urls["orders"], service_token=TOKEN,
                log_level="WARNING", device_transport=transport, mqtt_url=nats.mqtt_url,
            )  # fmt: skip

            # 1. Bulk registration: 10,000 users with their SSDs.
            model = Model(built_in("steady", 0, 0), seed=2, watched=3, consume_per_day=12)
            people = model.populate(users * 2)[:users]
            made = sum(len(s) for _, s in people)
            async with aiohttp.ClientSession() as http:
                sim = Simulation(settings, http, None, model.population)
                started = time.perf_counter()
                await sim.populate(people)
                took = time.perf_counter() - started
            assert sim.stats["populate.sent"] == users, sim.stats
            print(f"bulk registration: {users:,} users with {made:,} SSDs in {took:.1f} s "
                  f"({users / took:,.0f} users/s)")  # fmt: skip

            # 2. The generator with a population of `ssds` against the services, the processes'
            # CPU counted from the moment its clock starts.
            logging.basicConfig(level=logging.WARNING)
            processes = {"generator": psutil.Process()}
            processes |= {child.name: psutil.Process(child.process.pid) for child in children}
            processes["nats-server"] = psutil.Process(nats.process.pid)
            if (postmaster := _postmaster(Path(tmp) / "pg")) is not None:
                processes["postgres"] = postmaster
            usage = Usage(processes)
            watching = asyncio.create_task(usage.from_clock_start())
            started = time.perf_counter()
            result = await run(
                settings.model_copy(update={"population": ssds, "max_in_flight": 200}),
                asyncio.Event(),
                duration=None, max_events=None, probe_port=None, sim_hours=seconds * speed / 3600,
            )  # fmt: skip
            total = time.perf_counter() - started
            s = result.summary()
            print(
                f"generator, {ssds:,} SSDs x{speed:g} against the services, readings over "
                f"{transport} ({total:.1f} s in all, population registration included):"
            )
            print(json.dumps({k: s[k] for k in ("events", "events_per_s", "elapsed_s",
                  "max_lag_s", "overflow", "failed", "by_kind")}))  # fmt: skip
            outcomes = s["outcomes"]
            print(f"population: {outcomes.get('populate.sent', 0):,} users registered, "
                  f"{outcomes.get('populate.failed', 0)} failed")  # fmt: skip

            # 3. The clock has stopped: the backlog drains, then every reading the generator
            # counted sent must have been applied, once.
            stopped = time.perf_counter()
            backlog = await readings_drained(nats.url)
            drained = time.perf_counter() - stopped
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{urls['users']}/metrics") as resp:
                    page = await resp.text()
            applied = metric(page, "offsim_ssd_readings_total", outcome="applied")
            sent = REGISTRY.get_sample_value(
                "offsim_generator_events_total", {"event": "consume", "outcome": "sent"}
            ) or 0.0  # fmt: skip
            restocks = metric(page, "offsim_restock_orders_total")
            print(f"readings: the stream's backlog at the stop {backlog:,} "
                  f"(drained {drained:.1f} s later); generator sent {sent:,.0f} "
                  f"({outcomes.get('consume.failed', 0):,} failed, "
                  f"{s['overflow'].get('consume', 0):,} overflow, "
                  f"{outcomes.get('consume.skipped', 0):,} skipped), users service applied "
                  f"{applied:,.0f}: {'equal' if sent == applied else 'NOT EQUAL'}; "
                  f"{restocks:,.0f} restock orders placed by the backend")  # fmt: skip
            watching.cancel()
            print(f"resources from the clock's start to the drained backlog "
                  f"({usage.wall_s():.1f} s):")  # fmt: skip
            for line in usage.report():
                print("  " + line)
        finally:
            for child in reversed(children):
                await child.stop()
            nats.stop()
            pg.cleanup()


async def readings_drained(nats_url: str, within: float = 600.0) -> int:
    """Wait until the users service's readings consumer has nothing left to apply; return the
    backlog it had when called (readings stored, not yet applied)."""
    import nats
    from offsim_common import subjects

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + within
        first: int | None = None
        while True:
            info = await js.consumer_info(subjects.READINGS_STREAM, subjects.USERS_APPLY_READINGS)
            left = info.num_pending + info.num_ack_pending
            first = left if first is None else first
            if left == 0:
                return first
            if time.monotonic() > deadline:
                raise RuntimeError(f"the readings did not drain: {left} left")
            await asyncio.sleep(0.1)
    finally:
        await nc.close()


class Usage:
    """CPU seconds each process spends from the generator's clock start (its first drawn
    window) until `report`, and its peak RSS."""

    def __init__(self, processes: dict[str, psutil.Process]) -> None:
        self.processes = processes
        self.start: dict[str, float] = {}
        self.started: float | None = None

    async def from_clock_start(self) -> None:
        # The generator runs inside `run`, which hands out no event: its metrics tell when the
        # first window (a phase event) was drawn.
        scheduled = "offsim_generator_events_scheduled_total"
        while not REGISTRY.get_sample_value(scheduled, {"event": "phase"}):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        self.started = time.perf_counter()
        self.start = {name: self._cpu(name) for name in self.processes}

    def _cpu(self, name: str) -> float:
        return _cpu(self.processes[name], tree=name == "postgres")

    def wall_s(self) -> float:
        return time.perf_counter() - self.started if self.started else 0.0

    def report(self) -> list[str]:
        wall = self.wall_s()
        lines = []
        for name, proc in self.processes.items():
            cpu = self._cpu(name) - self.start.get(name, 0.0)
            share = f", {cpu / wall:.0%} of a core" if wall else ""
            peak = _peak_rss_mb(proc)
            lines.append(f"{name:<14} {cpu:7.1f} s CPU{share}, peak RSS {peak:,.0f} MB")
        return lines


def _postmaster(pgdata: Path) -> psutil.Process | None:
    try:
        return psutil.Process(int((pgdata / "postmaster.pid").read_text().split()[0]))
    except (OSError, ValueError, IndexError, psutil.Error):
        return None


def _cpu(proc: psutil.Process, tree: bool) -> float:
    """User and system seconds of a process, with its children's (live and reaped) if `tree`:
    Postgres's backends. (The generator's children are the services: counted on their own.)"""
    try:
        times = proc.cpu_times()
        total = times.user + times.system
        if tree:
            total += times.children_user + times.children_system
            for child in proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child_times = child.cpu_times()
                    total += child_times.user + child_times.system
        return total
    except psutil.Error:
        return 0.0


def _peak_rss_mb(proc: psutil.Process) -> float:
    """The high-water mark of the resident set (Linux's VmHWM; elsewhere the current RSS), of
    the process itself (a Postgres backend has its own)."""
    try:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return proc.memory_info().rss / 2**20
    except psutil.Error:
        return 0.0


TOKEN = "bench-service-token"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ssds", type=int, default=100_000)
    parser.add_argument("--speed", type=float, default=60.0)
    parser.add_argument("--seconds", type=float, default=30.0, help="real seconds per run")
    parser.add_argument("--services", action="store_true", help="against the real services")
    parser.add_argument("--users", type=int, default=10_000, help="bulk registration (--services)")
    parser.add_argument("--transport", choices=DEVICE_TRANSPORTS, default="nats",
                        help="how the SSDs send their readings (--services)")  # fmt: skip
    args = parser.parse_args()
    if args.services:
        asyncio.run(
            against_services(args.users, args.ssds, args.speed, args.seconds, args.transport)
        )
        return
    print(f"{'run':<42} {'events':>8} {'events/s':>9} {'max lag s':>10} {'start s':>8}")
    for label, consumption in (("steady", 1.0), ("steady, consumption x3", 3.0)):
        s = asyncio.run(measure(args.ssds, args.speed, args.seconds, consumption))
        name = f"{args.ssds:,} SSDs x{args.speed:g}, {label}"
        print(f"{name:<42} {s['events']:>8} {s['events_per_s']:>9} {s['max_lag_s']:>10}"
              f" {s['populate_s']:>8}")  # fmt: skip


if __name__ == "__main__":
    main()
