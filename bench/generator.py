"""The generator at scale: a population of SSDs on the real clock, as a dry run (no service).

Measures the start (drawing the population), the events a real second and the scheduler's lag
(how late a tick, a simulated second or an event ran) for 100,000 SSDs at SIM_SPEED=60, with
the steady scenario (about 2,500 events a second) and with consumption tripled. Run with
`make bench`; numbers go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ssds", type=int, default=100_000)
    parser.add_argument("--speed", type=float, default=60.0)
    parser.add_argument("--seconds", type=float, default=30.0, help="real seconds per run")
    args = parser.parse_args()
    print(f"{'run':<42} {'events':>8} {'events/s':>9} {'max lag s':>10} {'start s':>8}")
    for label, consumption in (("steady", 1.0), ("steady, consumption x3", 3.0)):
        s = asyncio.run(measure(args.ssds, args.speed, args.seconds, consumption))
        name = f"{args.ssds:,} SSDs x{args.speed:g}, {label}"
        print(f"{name:<42} {s['events']:>8} {s['events_per_s']:>9} {s['max_lag_s']:>10}"
              f" {s['populate_s']:>8}")  # fmt: skip


if __name__ == "__main__":
    main()
