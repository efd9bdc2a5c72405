"""offsim-generator: plays a population of users and their SSDs, following a scenario, against
the services (or, with --dry-run, as JSON lines on stdout); `/api/health`, `/metrics` and
`/api/control` on HTTP_PORT (default 8084)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import TextIO

from offsim_common import kpis, tracing
from offsim_common.app_keys import STOP
from offsim_common.logs import setup_logging
from offsim_common.service import serving, stop_on_signals
from offsim_common.settings import ConfigError

from . import metrics, scenario, thresholds
from .app import RUN, Limits, Run, base_rates, create_app, drive, make_model
from .dryrun import DryRun
from .engine import Engine
from .settings import GeneratorSettings
from .shard import Shard

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
        "--shard", type=_shard, metavar="I/N",
        help="play only households I, I+N, I+2N, ... of the city (0-based: 0/3, 1/3, 2/3; "
        "auto/N takes I from the host name's -<ordinal>; env OFFSIM_SHARD, default 0/1)",
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
    parser.add_argument(
        "--threshold", action="append", default=[], metavar="EXPR",
        help="a KPI check for the end of the run, e.g. 'stockout_share<0.02' (repeatable): "
        "each is printed passed or FAILED, and the exit status is 99 if any failed",
    )  # fmt: skip
    return parser.parse_args(argv)


def _count(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {raw!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _shard(raw: str) -> Shard:
    try:
        return Shard.parse(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, got {raw!r}") from None


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {raw}")
    return value


async def run(
    settings: GeneratorSettings,
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
    budget: against the services as the generator's app (serving `/api/health`, `/metrics`
    and `/api/control` on `probe_port`, 0 for any free one), or as a dry run."""
    if sim_hours is not None:
        duration = sim_hours * 3600
    if dry_run:
        return await _dry_run(settings, stop, duration, max_events, out or sys.stdout)
    app = create_app(settings, Limits(duration, max_events))
    async with serving(app, probe_port or 0):
        await _first(stop, app[STOP])
    return app[RUN]


async def _dry_run(
    settings: GeneratorSettings,
    stop: asyncio.Event,
    duration: float | None,
    max_events: int | None,
    out: TextIO,
) -> Run:
    model = make_model(settings)
    model.populate(settings.population)
    population = model.population
    metrics.set_shard(population.shard)
    metrics.POPULATION.set(population.own_ssds)
    writer = DryRun(
        population, out, seed=settings.seed,
        supplier_delay=settings.supplier_delay, delivery_delay=settings.delivery_delay,
        faults_at=lambda t: model.rates_at(t).faults,
    )  # fmt: skip
    writer.population_line(
        population.own_users, population.own_ssds,
        seed=settings.seed, scenario=model.scenario.name,
    )  # fmt: skip
    engine = Engine(
        model, speed=settings.sim_speed, duration=duration, max_events=max_events,
        dry_run=writer,
    )  # fmt: skip
    driving = asyncio.create_task(drive(engine))
    try:
        await _first(stop, engine.done)
    finally:
        driving.cancel()
        await engine.stop()
    writer.end_line(engine.sim_end)
    return Run(engine, None)


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


def settings_from(args: argparse.Namespace) -> GeneratorSettings:
    """The environment's settings; the flags given win."""
    flags = {"seed": args.seed, "scenario": args.scenario, "population": args.population,
             "shard": args.shard}  # fmt: skip
    return GeneratorSettings.from_env(**{k: v for k, v in flags.items() if v is not None})


async def amain(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = settings_from(args)
        # Refuse a bad scenario or threshold before anything starts.
        scenario.load(settings.scenario, *base_rates(settings))
        checks = kpis.parse_thresholds(args.threshold)
    except (ConfigError, scenario.ScenarioError, ValueError) as exc:
        print(f"offsim-generator: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, "generator")
    traces = tracing.start_tracing(settings, "offsim-generator")
    try:
        with stop_on_signals(asyncio.Event()) as stop:
            result = await run(
                settings, stop, duration=args.duration, sim_hours=args.sim_hours,
                max_events=args.max_events, probe_port=settings.http_port, dry_run=args.dry_run,
            )  # fmt: skip
    finally:
        if traces is not None:
            traces.shutdown()
    sys.stdout.flush()
    summary = result.summary()
    log.info("generator done: %s", summary)
    status = 0
    if checks:
        held, lines = await _check(checks, summary, settings, args.dry_run)
        summary["thresholds"] = {"passed": held, "checks": lines}
        status = 0 if held else thresholds.THRESHOLDS_FAILED
    # The last line on stderr, for a script to read.
    logging.shutdown()
    for line in summary.get("thresholds", {}).get("checks", []):
        sys.stderr.write(f"threshold {line}\n")
    sys.stderr.write(json.dumps(summary) + "\n")
    sys.stderr.flush()
    return status


async def _check(
    checks: list[kpis.Threshold], summary: dict, settings: GeneratorSettings, dry_run: bool
) -> tuple[bool, list[str]]:
    """The thresholds against the dry run's KPIs, or the live simulation's."""
    if dry_run:
        return thresholds.verdict(checks, summary.get("kpis"))
    try:
        values = await thresholds.live_kpis(settings.dashboard_url)
    except OSError as exc:
        log.error("thresholds not checked: %s", exc)
        return thresholds.verdict(checks, None)
    summary["kpis"] = values
    return thresholds.verdict(checks, values)


def main() -> None:
    sys.exit(asyncio.run(amain()))


if __name__ == "__main__":
    main()
