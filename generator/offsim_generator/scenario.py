"""Scenarios: the rates of a run over simulated time, as a list of phases.

A phase has a simulated duration (the last one may have none: it lasts until the run stops),
the arrival rates of registrations and of the original's random orders (per simulated hour), a
multiplier of every SSD's consumption, the amplitude of the daily rhythm of consumption, and
the faults of the phase. `ramp = true` moves the rates linearly from the previous phase's to
this phase's over the phase.

Built-ins: `steady` (the default), `ramp`, `spike` and `diurnal`; any other name is a path to
a TOML file (docs/generator.md). A bad file is refused with a `ScenarioError` naming the phase
and the field.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

HOUR = 3600.0
DAY = 86400.0

# How much of a day's consumption falls in each simulated hour (00:00 is the start of the
# run): little at night, peaks at breakfast and dinner. Normalised to a mean of 1.
_HOURLY = (0.2, 0.1, 0.1, 0.1, 0.1, 0.3, 0.8, 1.6, 1.8, 1.2, 1.0, 1.2,
           1.6, 1.4, 1.0, 0.9, 1.0, 1.3, 1.8, 2.0, 1.6, 1.1, 0.6, 0.3)  # fmt: skip
DAILY_PROFILE = tuple(v * 24 / sum(_HOURLY) for v in _HOURLY)


def daily_factor(t: float, rhythm: float) -> float:
    """The consumption multiplier at simulated second `t` for a rhythm amplitude in [0, 1]."""
    hour = int(t // HOUR) % 24
    return 1.0 + rhythm * (DAILY_PROFILE[hour] - 1.0)


class ScenarioError(ValueError):
    """A scenario that cannot be used; the message names the file, phase and field."""


@dataclass(frozen=True)
class Faults:
    """What a phase breaks on purpose. `malformed` acts in the generator; the others act in
    the notifications service."""

    # The supplier's delay (pending -> shipped) is multiplied by this.
    supplier_delay: float = 1.0
    # Share of orders the supplier rejects (they end `cancelled`).
    reject: float = 0.0
    # Share of deliveries the courier delays, and by how much (a multiplier).
    courier_spike: float = 0.0
    courier_spike_factor: float = 10.0
    # Share of the generator's own requests sent malformed (each must get a 4xx).
    malformed: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in FAULT_FIELDS}


FAULT_FIELDS = tuple(Faults.__dataclass_fields__)
# (minimum, maximum) of each fault.
FAULT_BOUNDS = {
    "supplier_delay": (0.0, 100.0),
    "reject": (0.0, 1.0),
    "courier_spike": (0.0, 1.0),
    "courier_spike_factor": (1.0, 1000.0),
    "malformed": (0.0, 1.0),
}


@dataclass(frozen=True)
class Phase:
    name: str
    # Simulated seconds; None: until the run stops (the last phase only).
    duration: float | None
    # Arrivals per simulated hour.
    register_rate: float
    random_order_rate: float
    # Multiplier of every SSD's own consumption rate.
    consumption: float = 1.0
    # Amplitude of the daily rhythm of consumption: 0 flat, 1 the whole DAILY_PROFILE.
    rhythm: float = 1.0
    # Move the rates linearly from the previous phase's over this phase.
    ramp: bool = False
    faults: Faults = field(default_factory=Faults)


@dataclass(frozen=True)
class Rates:
    """What the model uses at one moment: arrivals per simulated second, consumption
    multiplier (the daily rhythm already applied), and the phase's faults."""

    register: float
    random_order: float
    consumption: float
    faults: Faults


@dataclass(frozen=True)
class Scenario:
    name: str
    phases: tuple[Phase, ...]
    # Start again at the first phase after the last one.
    repeat: bool = False

    @property
    def length(self) -> float | None:
        """Simulated seconds of one pass over the phases, None when the last is open-ended."""
        if self.phases[-1].duration is None:
            return None
        return sum(p.duration or 0.0 for p in self.phases)

    def phase_at(self, t: float) -> tuple[int, float]:
        """The index of the phase at simulated second `t` and the seconds spent in it."""
        length = self.length
        if length is not None and self.repeat:
            t = t % length
        start = 0.0
        for index, phase in enumerate(self.phases):
            if phase.duration is None or t < start + phase.duration:
                return index, t - start
            start += phase.duration
        last = len(self.phases) - 1
        return last, t - (start - (self.phases[last].duration or 0.0))

    def ended(self, t: float) -> bool:
        length = self.length
        return length is not None and not self.repeat and t >= length

    def rates(self, t: float) -> Rates:
        index, into = self.phase_at(t)
        phase = self.phases[index]
        register, orders, consumption = (
            phase.register_rate, phase.random_order_rate, phase.consumption
        )  # fmt: skip
        if phase.ramp and phase.duration:
            before = self.phases[index - 1] if index else self.phases[-1]
            share = min(1.0, into / phase.duration)
            register = before.register_rate + share * (register - before.register_rate)
            orders = before.random_order_rate + share * (orders - before.random_order_rate)
            consumption = before.consumption + share * (consumption - before.consumption)
        return Rates(
            register=register / HOUR,
            random_order=orders / HOUR,
            consumption=consumption * daily_factor(t, phase.rhythm),
            faults=phase.faults,
        )


# --- built-ins ----------------------------------------------------------------------------------

BUILT_INS = ("steady", "ramp", "spike", "diurnal")


def built_in(name: str, register_rate: float, random_order_rate: float) -> Scenario:
    """A built-in scenario around the base arrival rates (per simulated hour)."""

    def phase(name: str, duration: float | None, scale: float, **kw: Any) -> Phase:
        return Phase(name, duration, register_rate * scale, random_order_rate * scale, **kw)

    if name == "steady":
        # Today's demo: constant arrivals and consumption, no daily rhythm.
        return Scenario("steady", (phase("steady", None, 1.0, rhythm=0.0),))
    if name == "ramp":
        # From a quarter of the load to four times it over an hour, then held.
        return Scenario("ramp", (
            phase("warm-up", 30 * 60, 0.25, consumption=0.25, rhythm=0.0),
            phase("ramp", HOUR, 4.0, consumption=4.0, rhythm=0.0, ramp=True),
            phase("hold", None, 4.0, consumption=4.0, rhythm=0.0),
        ))  # fmt: skip
    if name == "spike":
        # Every hour, ten minutes at ten times the arrivals and three times the consumption.
        return Scenario("spike", (
            phase("calm", 50 * 60, 1.0, rhythm=0.0),
            phase("spike", 10 * 60, 10.0, consumption=3.0, rhythm=0.0),
        ), repeat=True)  # fmt: skip
    if name == "diurnal":
        # A day, replayed: arrivals follow the daily profile hour by hour, consumption too.
        return Scenario(
            "diurnal",
            tuple(
                phase(f"{hour:02d}h", HOUR, DAILY_PROFILE[hour], rhythm=1.0) for hour in range(24)
            ),
            repeat=True,
        )
    raise ScenarioError(f"unknown scenario {name!r}: use one of {', '.join(BUILT_INS)} or a path")


def load(name_or_path: str, register_rate: float, random_order_rate: float) -> Scenario:
    """A built-in by name, or a TOML file by path."""
    if name_or_path in BUILT_INS:
        return built_in(name_or_path, register_rate, random_order_rate)
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        raise ScenarioError(
            f"unknown scenario {name_or_path!r}: use one of {', '.join(BUILT_INS)} or a path"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read the scenario: {exc}") from None
    return parse(text, str(path))


# --- TOML ---------------------------------------------------------------------------------------

_TOP_KEYS = {"name", "repeat", "phases"}
_PHASE_KEYS = {"name", "duration", "register_rate", "random_order_rate", "consumption", "rhythm",
               "ramp", "faults"}  # fmt: skip
_UNITS = {"s": 1.0, "m": 60.0, "h": HOUR, "d": DAY}
# A phase lasts at most a year; rates stay below a million an hour.
MAX_DURATION = 365 * DAY
MAX_RATE = 1e6
MAX_CONSUMPTION = 1000.0


def parse(text: str, source: str = "scenario") -> Scenario:
    """A scenario from TOML text; `source` names it in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: not valid TOML: {exc}") from None
    _unknown(data, _TOP_KEYS, source)
    name = data.get("name", Path(source).stem)
    if not isinstance(name, str) or not name.strip():
        raise ScenarioError(f"{source}: field 'name': must be a non-empty string, got {name!r}")
    repeat = data.get("repeat", False)
    if not isinstance(repeat, bool):
        raise ScenarioError(f"{source}: field 'repeat': must be true or false, got {repeat!r}")
    raw_phases = data.get("phases")
    if not isinstance(raw_phases, list) or not raw_phases:
        raise ScenarioError(f"{source}: needs at least one [[phases]] table")
    phases = []
    for number, raw in enumerate(raw_phases, start=1):
        where = f"{source}: phase {number}"
        if not isinstance(raw, dict):
            raise ScenarioError(f"{where}: must be a table ([[phases]])")
        if isinstance(raw.get("name"), str):
            where += f" ({raw['name']!r})"
        phases.append(_phase(raw, where, number, last=number == len(raw_phases)))
    if repeat and phases[-1].duration is None:
        raise ScenarioError(
            f"{source}: field 'repeat': the last phase needs a duration to start again"
        )
    return Scenario(name.strip(), tuple(phases), repeat)


def _unknown(table: dict, known: set[str], where: str) -> None:
    for key in table:
        if key not in known:
            raise ScenarioError(
                f"{where}: unknown field {key!r} (known: {', '.join(sorted(known))})"
            )


def _phase(raw: dict, where: str, number: int, last: bool) -> Phase:
    _unknown(raw, _PHASE_KEYS, where)
    name = raw.get("name", f"phase-{number}")
    if not isinstance(name, str) or not name.strip():
        raise ScenarioError(f"{where}: field 'name': must be a non-empty string, got {name!r}")
    if "duration" in raw:
        duration = _duration(raw["duration"], where)
    elif last:
        duration = None
    else:
        raise ScenarioError(f"{where}: field 'duration': required (only the last phase may "
                            "omit it, to run until stopped)")  # fmt: skip
    for required in ("register_rate", "random_order_rate"):
        if required not in raw:
            raise ScenarioError(f"{where}: field {required!r}: required (per simulated hour)")
    ramp = raw.get("ramp", False)
    if not isinstance(ramp, bool):
        raise ScenarioError(f"{where}: field 'ramp': must be true or false, got {ramp!r}")
    return Phase(
        name=name.strip(),
        duration=duration,
        register_rate=_number(raw, "register_rate", where, 0.0, MAX_RATE),
        random_order_rate=_number(raw, "random_order_rate", where, 0.0, MAX_RATE),
        consumption=_number(raw, "consumption", where, 0.0, MAX_CONSUMPTION, default=1.0),
        rhythm=_number(raw, "rhythm", where, 0.0, 1.0, default=1.0),
        ramp=ramp,
        faults=_faults(raw.get("faults", {}), where),
    )


def _number(
    raw: dict, key: str, where: str, low: float, high: float, default: float | None = None,
    label: str | None = None,
) -> float:  # fmt: skip
    label = label or key
    if key not in raw:
        assert default is not None
        return default
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ScenarioError(f"{where}: field {label!r}: must be a number, got {value!r}")
    if not low <= value <= high:
        raise ScenarioError(
            f"{where}: field {label!r}: must be from {low:g} to {high:g}, got {value!r}"
        )
    return float(value)


def _duration(value: Any, where: str) -> float:
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", value)):
        seconds = float(m[1]) * _UNITS[m[2]]
    if seconds is None or math.isnan(seconds):
        raise ScenarioError(
            f"{where}: field 'duration': must be simulated seconds or a string such as '90s', "
            f"'30m', '2h', '1d', got {value!r}"
        )
    if not 0 < seconds <= MAX_DURATION:
        raise ScenarioError(
            f"{where}: field 'duration': must be more than 0 and at most 365 days, got {value!r}"
        )
    return seconds


def _faults(raw: Any, where: str) -> Faults:
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: field 'faults': must be a table ([phases.faults])")
    for key in raw:
        if key not in FAULT_FIELDS:
            raise ScenarioError(
                f"{where}: unknown field 'faults.{key}' (known: {', '.join(FAULT_FIELDS)})"
            )
    values = {
        key: _number(raw, key, where, *FAULT_BOUNDS[key], label=f"faults.{key}")
        for key in FAULT_FIELDS
        if key in raw
    }
    return replace(Faults(), **values)
