"""offsim-generator: plays the users and their SSDs on an APScheduler 3 schedule; `/api/health`
on HTTP_PORT (default 8084)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import UTC, datetime

import aiohttp
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from offsim_common import bus, tracing
from offsim_common.config import Settings
from offsim_common.logs import setup_logging
from offsim_common.web import start_probe_server

from .simulation import Simulation

log = logging.getLogger("offsim_generator")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="offsim-generator",
        description="Simulate users and their smart stock devices against the offsim services.",
    )
    parser.add_argument("--seed", type=int, help="seed for repeatable runs (env OFFSIM_SEED)")
    parser.add_argument(
        "--sim-hours", type=float, help="stop after this many simulated hours (default: run on)"
    )
    parser.add_argument("--max-events", type=int, help="stop after this many events")
    return parser.parse_args(argv)


async def run(
    settings: Settings,
    stop: asyncio.Event,
    *,
    sim_hours: float | None = None,
    max_events: int | None = None,
    probe_port: int | None = None,
) -> Simulation:
    """Tick every OFFSIM_TICK_SECONDS / SIM_SPEED until `stop`, a time or an event budget."""
    interval = settings.simulated(settings.tick_seconds)
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        )
        nc = await bus.connect(settings.nats_url, name="generator")
        stack.push_async_callback(nc.drain)
        if probe_port is not None:
            probe = await start_probe_server(nc, probe_port, "generator")
            stack.push_async_callback(probe.cleanup)
        sim = Simulation(settings, http, nc, settings.seed)

        ticking = asyncio.Lock()

        async def tick() -> None:
            async with ticking:
                if stop.is_set():
                    return
                await sim.tick()
                if max_events is not None and sim.stats["events"] >= max_events:
                    stop.set()

        scheduler = AsyncIOScheduler()
        # One tick at a time; ticks missed while one runs are merged, not queued up.
        scheduler.add_job(
            tick,
            "interval",
            seconds=interval,
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(UTC),
        )
        scheduler.start()
        stack.callback(scheduler.shutdown, wait=False)
        # On the way out, before the HTTP session and NATS close: no new tick, and the one
        # running finishes, so every event sent is counted and none is cut off mid-request.
        stack.push_async_callback(_finish_ticks, scheduler, ticking)
        log.info("generator ticking every %.3fs (x%s)", interval, settings.sim_speed)
        timeout = settings.simulated(sim_hours * 3600) if sim_hours is not None else None
        try:
            await asyncio.wait_for(stop.wait(), timeout)
        except TimeoutError:
            pass
    log.info("generator done: %s", dict(sorted(sim.stats.items())))
    return sim


async def _finish_ticks(scheduler: AsyncIOScheduler, ticking: asyncio.Lock) -> None:
    scheduler.pause()
    async with ticking:
        pass


async def amain(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = Settings.from_env(http_port=8084)
    if args.seed is not None:
        settings = replace(settings, seed=args.seed)
    setup_logging(settings.log_level, "generator")
    traces = tracing.start_tracing(settings, "offsim-generator")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await run(
            settings, stop, sim_hours=args.sim_hours, max_events=args.max_events,
            probe_port=settings.http_port,
        )  # fmt: skip
    finally:
        if traces is not None:
            traces.shutdown()


def main() -> None:
    asyncio.run(amain())


if __name__ == "__main__":
    main()
