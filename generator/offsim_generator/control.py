"""Live control on the generator's HTTP port: `GET /api/control` tells the scenario, phase,
rates, faults and load; `PUT /api/control` changes them while the run goes on; `GET
/api/phases` lists the phases so far.

A PUT sets only the fields it names: a number overrides the scenario's value, `null` gives it
back to the scenario; `paused` stops and restarts the simulated clock. A shard's control acts on
that shard alone; the faults that act in the notifications service are published by shard 0
only, so another shard refuses them (409) rather than take them without effect.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from aiohttp import web
from offsim_common.errors import Conflict
from offsim_common.http import json_response, read_body
from pydantic import BaseModel, ConfigDict, Field

from .engine import Engine
from .scenario import HOUR

ENGINE = web.AppKey("engine", Engine)
# Called after a PUT changed something (the faults reach the notifications service before the
# answer goes out).
ON_CHANGE = web.AppKey("on_change", Callable[[], Awaitable[None]])

Rate = Annotated[float, Field(ge=0, le=1e6, description="per simulated hour")]


class FaultsUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    supplier_delay: Annotated[float, Field(ge=0, le=100)] | None = None
    reject: Annotated[float, Field(ge=0, le=1)] | None = None
    courier_spike: Annotated[float, Field(ge=0, le=1)] | None = None
    courier_spike_factor: Annotated[float, Field(ge=1, le=1000)] | None = None
    malformed: Annotated[float, Field(ge=0, le=1)] | None = None


class ControlUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    register_rate: Rate | None = None
    random_order_rate: Rate | None = None
    consumption: Annotated[float, Field(ge=0, le=1000)] | None = None
    paused: bool | None = None
    faults: FaultsUpdate | None = None


def state(engine: Engine) -> dict:
    model = engine.model
    now = engine.sim_now()
    rates = model.rates_at(now)
    index, _ = model.scenario.phase_at(now)
    o = model.overrides
    return {
        "shard": str(model.shard),
        "seed": model.seed,
        "speed": engine.speed,
        "scenario": model.scenario.name,
        "phase": model.scenario.phases[index].name,
        "paused": engine.paused,
        "sim_s": round(now, 3),
        "rates": {
            "register_rate": round(rates.register * HOUR, 6),
            "random_order_rate": round(rates.random_order * HOUR, 6),
            "consumption": round(rates.consumption, 6),
        },
        "faults": rates.faults.as_dict(),
        "overrides": {
            "register_rate": o.register_rate,
            "random_order_rate": o.random_order_rate,
            "consumption": o.consumption,
            "faults": dict(o.faults),
        },
        "ssds": model.population.own_ssds,
        "events": engine.events,
        "event_rate": round(engine.event_rate, 3),
        "in_flight": engine.flying,
        "max_in_flight": engine.max_in_flight,
        "overflow": dict(sorted(engine.overflow.items())),
        "max_lag_s": round(engine.max_lag_s, 4),
    }


async def get_phases(request: web.Request) -> web.Response:
    """The phases so far, each with its simulated second, the wall-clock time it was due and
    its faults (for `offsim report`): apart from the state, which the dashboard reads every
    2 s, as a repeating scenario's list grows with the run."""
    return json_response({"phases": list(request.app[ENGINE].phases)})


async def get_control(request: web.Request) -> web.Response:
    return json_response(state(request.app[ENGINE]))


async def put_control(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    update = await read_body(request, ControlUpdate)
    _check_shard(engine, update)
    overrides = engine.model.overrides
    for name in ("register_rate", "random_order_rate", "consumption"):
        if name in update.model_fields_set:
            setattr(overrides, name, getattr(update, name))
    if update.faults is not None:
        for name in update.faults.model_fields_set:
            value = getattr(update.faults, name)
            if value is None:
                overrides.faults.pop(name, None)
            else:
                overrides.faults[name] = value
    if update.paused is True:
        engine.pause()
    elif update.paused is False:
        engine.resume()
    if ON_CHANGE in request.app:
        await request.app[ON_CHANGE]()
    return json_response(state(engine))


# The faults the generator applies itself; the others act in the notifications service.
OWN_FAULTS = {"malformed"}


def _check_shard(engine: Engine, update: ControlUpdate) -> None:
    """Refuse the notifications service's faults on a shard that does not publish them."""
    shard = engine.model.shard
    if shard.leads or update.faults is None:
        return
    elsewhere = sorted(update.faults.model_fields_set - OWN_FAULTS)
    if elsewhere:
        raise Conflict(
            f"shard {shard} does not publish the notifications service's faults: PUT them to "
            f"shard 0/{shard.count}",
            {f"faults.{name}": "published by shard 0" for name in elsewhere},
        )


def add_routes(app: web.Application) -> None:
    """`GET` and `PUT /api/control`, on the engine the app's run puts in ENGINE."""
    app.router.add_get("/api/control", get_control)
    app.router.add_put("/api/control", put_control)
    app.router.add_get("/api/phases", get_phases)
