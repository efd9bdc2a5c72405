"""The generator at scale: a population of SSDs on the real clock.

Dry run (no service): the start (drawing the population), the events a real second and the
scheduler's lag (how late a tick, a simulated second or an event ran) for 100,000 SSDs at
SIM_SPEED=60, with the steady scenario (about 2,500 events a second) and with consumption
tripled.

`--services`: the same against the real services (users, orders and notifications as processes
of their own, embedded NATS and Postgres): first the bulk registration of 10,000 synthetic
users with their SSDs, then a run of the generator (in this process) with a population of
100,000 SSDs: how long registering them took, then events sent a second, overflow, failures and
lag. Run with `make bench`; numbers go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import tempfile
import time
from pathlib import Path

from offsim_generator.app import make_model
from offsim_generator.dryrun import DryRun
from offsim_generator.engine import Engine
from offsim_generator.settings import GeneratorSettings


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


async def against_services(users: int, ssds: int, speed: float, seconds: float) -> None:
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
                log_level="WARNING",
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

            # 2. The generator with a population of `ssds` against the services.
            logging.basicConfig(level=logging.WARNING)
            started = time.perf_counter()
            result = await run(
                settings.model_copy(update={"population": ssds, "max_in_flight": 200}),
                asyncio.Event(),
                duration=None, max_events=None, probe_port=None, sim_hours=seconds * speed / 3600,
            )  # fmt: skip
            total = time.perf_counter() - started
            s = result.summary()
            print(f"generator, {ssds:,} SSDs x{speed:g} against the services "
                  f"({total:.1f} s in all, population registration included):")  # fmt: skip
            print(json.dumps({k: s[k] for k in ("events", "events_per_s", "elapsed_s",
                  "max_lag_s", "overflow", "failed", "by_kind")}))  # fmt: skip
            outcomes = s["outcomes"]
            print(f"population: {outcomes.get('populate.sent', 0):,} users registered, "
                  f"{outcomes.get('populate.failed', 0)} failed")  # fmt: skip
        finally:
            for child in reversed(children):
                await child.stop()
            nats.stop()
            pg.cleanup()


TOKEN = "bench-service-token"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ssds", type=int, default=100_000)
    parser.add_argument("--speed", type=float, default=60.0)
    parser.add_argument("--seconds", type=float, default=30.0, help="real seconds per run")
    parser.add_argument("--services", action="store_true", help="against the real services")
    parser.add_argument("--users", type=int, default=10_000, help="bulk registration (--services)")
    args = parser.parse_args()
    if args.services:
        asyncio.run(against_services(args.users, args.ssds, args.speed, args.seconds))
        return
    print(f"{'run':<42} {'events':>8} {'events/s':>9} {'max lag s':>10} {'start s':>8}")
    for label, consumption in (("steady", 1.0), ("steady, consumption x3", 3.0)):
        s = asyncio.run(measure(args.ssds, args.speed, args.seconds, consumption))
        name = f"{args.ssds:,} SSDs x{args.speed:g}, {label}"
        print(f"{name:<42} {s['events']:>8} {s['events_per_s']:>9} {s['max_lag_s']:>10}"
              f" {s['populate_s']:>8}")  # fmt: skip


if __name__ == "__main__":
    main()
