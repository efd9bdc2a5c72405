"""offsim-generator: plays a population of users and their SSDs, following a scenario, against
the services (or, with --dry-run, as JSON lines on stdout); `/api/health`, `/metrics` and
`/api/control` on HTTP_PORT (default 8084)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from typing import TextIO

import aiohttp
from offsim_common import bus, tracing
from offsim_common.config import ConfigError, Settings
from offsim_common.logs import setup_logging
from offsim_common.web import start_probe_server

from . import control, metrics, scenario
from .dryrun import DryRun
from .engine import Engine
from .faults import FaultSync
from .model import Model
from .simulation import Simulation

log = logging.getLogger("offsim_generator")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="offsim-generator",
        description="Simulate users and their smart stock devices against the offsim services.",
    )
    parser.add_argument("--seed", type=int, help="seed for repeatable runs (env OFFSIM_SEED)")
    parser.add_argument(
        "--scenario",
        metavar="NAME|PATH",
        help="steady (default), ramp, spike, diurnal, or a TOML file of phases "
        "(env OFFSIM_SCENARIO; docs/generator.md)",
    )
    parser.add_argument(
        "--population", type=_count, metavar="N",
        help="SSDs to start with (env OFFSIM_POPULATION, default 0)",
    )  # fmt: skip
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="no service, NATS or database: every event as a JSON line on stdout, a JSON "
        "summary as the last line on stderr",
    )
    parser.add_argument(
        "--duration", type=_seconds, metavar="S", help="stop after S simulated seconds"
    )
    parser.add_argument("--sim-hours", type=_seconds, help="stop after this many simulated hours")
    parser.add_argument("--max-events", type=_count, help="stop after this many events")
    return parser.parse_args(argv)


def _count(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {raw!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {raw}")
    return value


def base_rates(settings: Settings) -> tuple[float, float]:
    """Registrations and random orders per simulated hour for the built-in scenarios: today's
    clock, one event every OFFSIM_TICK_SECONDS shared by the OFFSIM_WEIGHT_* (15 an hour each
    with the defaults)."""
    total = sum(settings.weights.values())
    if total <= 0 or settings.tick_seconds <= 0:
        return 0.0, 0.0
    per_hour = 3600.0 / settings.tick_seconds
    return (
        per_hour * settings.weights.get("register", 0.0) / total,
        per_hour * settings.weights.get("random_order", 0.0) / total,
    )


def make_model(settings: Settings) -> Model:
    return Model(
        scenario.load(settings.scenario, *base_rates(settings)),
        seed=settings.seed,
        watched=settings.watched_products,
        consume_per_day=settings.consume_per_day,
    )


@dataclass
class Run:
    engine: Engine
    simulation: Simulation | None

    @property
    def stats(self):
        return self.simulation.stats if self.simulation else {}

    def summary(self) -> dict:
        summary = self.engine.summary()
        if self.simulation is not None:
            stats = self.simulation.stats
            summary["failed"] = sum(v for k, v in stats.items() if k.endswith(".failed"))
            summary["outcomes"] = dict(sorted(stats.items()))
        return summary


async def run(
    settings: Settings,
    stop: asyncio.Event,
    *,
    duration: float | None = None,
    sim_hours: float | None = None,
    max_events: int | None = None,
    probe_port: int | None = None,
    dry_run: bool = False,
    out: TextIO | None = None,
) -> Run:
    """Run the settings' scenario until `stop`, the duration, the scenario's end or the event
    budget."""
    if sim_hours is not None:
        duration = sim_hours * 3600
    model = make_model(settings)
    users = model.populate(settings.population)
    metrics.POPULATION.set(model.population.ssds)
    if dry_run:
        writer = DryRun(
            model.population, out or sys.stdout, seed=settings.seed,
            supplier_delay=settings.supplier_delay, delivery_delay=settings.delivery_delay,
        )  # fmt: skip
        writer.population_line(model.population.users, model.population.ssds)
        engine = Engine(
            model, speed=settings.sim_speed, duration=duration, max_events=max_events,
            dry_run=writer,
        )  # fmt: skip
        await _drive(engine, stop)
        return Run(engine, None)

    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=10),
                connector=aiohttp.TCPConnector(limit=settings.max_in_flight),
            )
        )
        nc = await bus.connect(settings.nats_url, name="generator")
        stack.push_async_callback(nc.drain)
        sim = Simulation(settings, http, nc, model.population)
        engine = Engine(
            model, speed=settings.sim_speed, duration=duration, max_events=max_events,
            perform=sim.perform, max_in_flight=settings.max_in_flight,
        )  # fmt: skip
        faults = FaultSync(nc.jetstream(), engine, settings.seed)
        await faults.sync()
        stack.push_async_callback(faults.clear)
        if probe_port is not None:
            probe = await start_probe_server(
                nc, probe_port, "generator", routes=control.add_routes(engine, faults.sync)
            )
            stack.push_async_callback(probe.cleanup)
        if users:
            log.info("registering a population of %d SSDs (%d users)", model.population.ssds,
                     len(users))  # fmt: skip
            await sim.populate(users)
            log.info("population registered: %s", sim.stats)
        await _drive(engine, stop, faults.run())
    return Run(engine, sim)


async def _drive(
    engine: Engine, stop: asyncio.Event, beside: Coroutine[None, None, None] | None = None
) -> None:
    """Run the engine until it is done or `stop`; `beside` runs as long as it does."""
    engine.start()
    log.info("generator: scenario %s, %d SSDs, x%s", engine.model.scenario.name,
             engine.model.population.ssds, engine.speed)  # fmt: skip
    stopped = asyncio.ensure_future(stop.wait())
    done = asyncio.ensure_future(engine.done.wait())
    rate = asyncio.ensure_future(_report_rate(engine))
    tasks = [stopped, done, rate]
    if beside is not None:
        tasks.append(asyncio.ensure_future(beside))
    try:
        await asyncio.wait({stopped, done}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        # Before the HTTP session and NATS close: no new tick, and the requests in flight
        # finish, so every event sent is counted and none is cut off mid-request.
        await engine.stop()


async def _report_rate(engine: Engine) -> None:
    while True:
        await asyncio.sleep(1.0)
        metrics.EVENT_RATE.set(engine.event_rate)
        metrics.POPULATION.set(engine.model.population.ssds)


def settings_from(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env(http_port=8084)
    if args.seed is not None:
        settings = replace(settings, seed=args.seed)
    if args.scenario is not None:
        settings = replace(settings, scenario=args.scenario)
    if args.population is not None:
        settings = replace(settings, population=args.population)
    return settings


async def amain(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = settings_from(args)
        # Refuse a bad scenario before anything starts.
        scenario.load(settings.scenario, *base_rates(settings))
    except (ConfigError, scenario.ScenarioError) as exc:
        print(f"offsim-generator: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, "generator")
    traces = tracing.start_tracing(settings, "offsim-generator")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        result = await run(
            settings, stop, duration=args.duration, sim_hours=args.sim_hours,
            max_events=args.max_events, probe_port=None if args.dry_run else settings.http_port,
            dry_run=args.dry_run,
        )  # fmt: skip
    finally:
        if traces is not None:
            traces.shutdown()
    sys.stdout.flush()
    summary = result.summary()
    log.info("generator done: %s", summary)
    # The last line on stderr, for a script to read.
    logging.shutdown()
    sys.stderr.write(json.dumps(summary) + "\n")
    sys.stderr.flush()
    return 0


def main() -> None:
    sys.exit(asyncio.run(amain()))


if __name__ == "__main__":
    main()
