"""The generator's application factory: the population and its engine run in a cleanup
context, `/api/control` steers them; the app stops itself (STOP) when the run is over. The
device transport (OFFSIM_DEVICE_TRANSPORT) has a context of its own, opened before the run and
closed after it, once the readings in flight have landed."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from offsim_common.app_keys import JS, NC, STOP
from offsim_common.service import base_app

from . import control, metrics, scenario
from .devices import MqttReadings, NatsReadings, Readings
from .engine import Engine
from .faults import FaultSync
from .model import Model
from .settings import GeneratorSettings
from .simulation import Simulation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """When a run ends besides a signal: simulated seconds, or events sent."""

    duration: float | None = None
    max_events: int | None = None


@dataclass
class Run:
    engine: Engine
    simulation: Simulation | None

    @property
    def stats(self) -> dict:
        return self.simulation.stats if self.simulation else {}

    def summary(self) -> dict:
        summary = self.engine.summary()
        if self.simulation is not None:
            stats = self.simulation.stats
            summary["failed"] = sum(v for k, v in stats.items() if k.endswith(".failed"))
            summary["outcomes"] = dict(sorted(stats.items()))
        return summary


RUN = web.AppKey("run", Run)
HTTP = web.AppKey("http", aiohttp.ClientSession)
# The readings' transport; None for `http` (the simulation posts them itself).
READINGS = web.AppKey("readings", Readings | None)


def base_rates(settings: GeneratorSettings) -> tuple[float, float]:
    """Registrations and random orders per simulated hour for the built-in scenarios: today's
    clock, one event every OFFSIM_TICK_SECONDS shared by the OFFSIM_WEIGHT_* (15 an hour each
    with the defaults)."""
    total = sum(settings.weights.values())
    if total <= 0 or settings.tick_seconds <= 0:
        return 0.0, 0.0
    per_hour = 3600.0 / settings.tick_seconds
    return (
        per_hour * settings.weights["register"] / total,
        per_hour * settings.weights["random_order"] / total,
    )


def make_model(settings: GeneratorSettings) -> Model:
    return Model(
        scenario.load(settings.scenario, *base_rates(settings)),
        seed=settings.seed,
        watched=settings.watched_products,
        consume_per_day=settings.consume_per_day,
        shard=settings.shard,
    )


def create_app(settings: GeneratorSettings, limits: Limits | None = None) -> web.Application:
    app = base_app(settings, "generator", database=False)
    app.cleanup_ctx.append(http_ctx(settings))
    app.cleanup_ctx.append(devices_ctx(settings))
    app.cleanup_ctx.append(simulation_ctx(settings, limits or Limits()))
    control.add_routes(app)
    return app


def http_ctx(settings: GeneratorSettings):
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=10),
            connector=aiohttp.TCPConnector(limit=settings.max_in_flight),
        ) as session:
            app[HTTP] = session
            yield

    return ctx


def devices_ctx(settings: GeneratorSettings):
    """The SSDs' transport for the whole run: JetStream on the app's NATS connection, or one
    MQTT connection (made again if lost); nothing for `http`."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        readings: Readings | None = None
        if settings.device_transport == "nats":
            readings = NatsReadings(app[NC], max_pending=max(4000, settings.max_readings_in_flight))
        elif settings.device_transport == "mqtt":
            readings = MqttReadings(
                settings.mqtt_url,
                max_in_flight=settings.max_readings_in_flight,
                username=settings.mqtt_user,
                password=settings.mqtt_password,
            )
        if readings is not None:
            await readings.start()
        log.info("device readings: %s", settings.device_transport)
        app[READINGS] = readings
        try:
            yield
        finally:
            if readings is not None:
                await readings.close()

    return ctx


def reading_budget(settings: GeneratorSettings) -> dict[str, int]:
    """Readings sent to a broker are bounded apart from the HTTP requests; over `http` a
    reading is a request like any other."""
    if settings.device_transport == "http":
        return {}
    return {"consume": settings.max_readings_in_flight}


def simulation_ctx(settings: GeneratorSettings, limits: Limits):
    """The run: the population registered, then the engine until the scenario, the duration or
    the event budget ends it (which stops the app) or the app stops."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        model = make_model(settings)
        users = model.populate(settings.population)
        metrics.set_shard(settings.shard)
        metrics.POPULATION.set(model.population.own_ssds)
        sim = Simulation(settings, app[HTTP], app[NC], model.population, app[READINGS])
        engine = Engine(
            model, speed=settings.sim_speed, duration=limits.duration,
            max_events=limits.max_events, perform=sim.perform,
            max_in_flight=settings.max_in_flight, budgets=reading_budget(settings),
        )  # fmt: skip
        app[control.ENGINE] = engine
        app[RUN] = Run(engine, sim)
        # The faults the notifications service applies, from the scenario and PUTs: put by one
        # shard only (Shard.leads), or the shards would clear and put them over each other.
        faults = FaultSync(app[JS], engine, settings.seed) if settings.shard.leads else None
        tasks: list[asyncio.Task] = []
        if faults is not None:
            await faults.sync()
            app[control.ON_CHANGE] = faults.sync
            tasks.append(asyncio.create_task(faults.run(), name="faults"))
        tasks.append(asyncio.create_task(_play(sim, engine, users, app[STOP]), name="generator"))
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Before the HTTP session and NATS close: no new tick, and the requests in flight
        # finish, so every event sent is counted and none is cut off mid-request.
        await engine.stop()
        if faults is not None:
            await faults.clear()
        gc.unfreeze()

    return ctx


async def _play(
    sim: Simulation, engine: Engine, users: list[tuple[int, list[int]]], stop: asyncio.Event
) -> None:
    if users:
        log.info("registering a population of %d SSDs (%d users)",
                 engine.model.population.own_ssds, len(users))  # fmt: skip
        await sim.populate(users)
        log.info("population registered: %s", sim.stats)
        # What the population left behind lives as long as the run (an id, a token and the
        # barcodes per SSD): out of the collector's sight, a full collection no longer walks it.
        # At 100,000 SSDs one held the loop for 0.1 s, and the readings due meanwhile overflowed.
        # (Given back to the collector when the run ends.)
        gc.collect()
        gc.freeze()
    await drive(engine)
    stop.set()


async def drive(engine: Engine) -> None:
    """Run the engine until its scenario, duration or budget is over (or the caller is
    cancelled), publishing its rate."""
    engine.start()
    log.info("generator: scenario %s, shard %s, %d SSDs, x%s", engine.model.scenario.name,
             engine.model.shard, engine.model.population.own_ssds, engine.speed)  # fmt: skip
    while not engine.done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(engine.done.wait(), timeout=1.0)
        metrics.EVENT_RATE.set(engine.event_rate)
        metrics.POPULATION.set(engine.model.population.own_ssds)
