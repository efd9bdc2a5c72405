"""`offsim report`: what a run did, as `report.json` and a self-contained HTML page
(report_html.py): the KPIs (offsim_common.kpis) over the run, by scenario phase and over time,
the orders' throughput and lead-time percentiles, each phase's faults, and the run's settings.

Two sources, one shape:
- a dry run's JSON lines (`--events FILE`): every KPI computed exactly from the events, on the
  simulated clock (`t`, simulated seconds since the run began);
- the live simulation at DATABASE_URL: the totals kept by the services (offsim_common.kpis_db)
  over stretches of real time, turned into simulated seconds at the generator's speed; the
  phases, faults and settings from the generator's `GET /api/control` and `GET /api/phases`
  at GENERATOR_URL (without it, the run is one phase, `run`, at SIM_SPEED).
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from offsim_common import kpis, kpis_db

# Points of each chart over the run.
SLICES = 60
# The users service's demand buckets, in real seconds (a live stretch is as fine as that).
BUCKET_S = 10


@dataclass
class Phase:
    name: str
    start_s: float
    faults: dict[str, float]


class ReportError(ValueError):
    """An events file that is not a dry run's, named with its line."""


def from_events(path: Path) -> dict[str, Any]:
    """The report of a dry run's JSON lines."""
    tally = kpis.Tally()
    settings: dict[str, Any] = {"speed": None}
    phases: list[Phase] = []
    placed: list[float] = []
    end = 0.0
    with path.open() as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
                t = float(event["t"])
                end = max(end, t)
                _feed(tally, event, t, settings, phases, placed)
            except (ValueError, KeyError, TypeError) as exc:
                raise ReportError(f"{path}, line {number}: not a dry run's event ({exc})") from None
    if "population" not in settings:
        raise ReportError(f"{path}: no population line: not a dry run's events")
    if not phases:
        phases.append(Phase("run", 0.0, {}))
    return build(tally.between, placed, phases, end, settings, f"dry run events: {path.name}")


def _feed(
    tally: kpis.Tally,
    event: dict[str, Any],
    t: float,
    settings: dict[str, Any],
    phases: list[Phase],
    placed: list[float],
) -> None:
    """One dry-run line into the tally (dryrun.py writes them)."""
    kind = event["event"]
    if kind == "population":
        settings.update(
            population=event["ssds"], users=event["users"], seed=event.get("seed"),
            scenario=event.get("scenario"), watched=event["watched"],
        )  # fmt: skip
        tally.watch(t, event["ssds"] * event["watched"], event["ssds"])
    elif kind == "phase":
        phases.append(Phase(event["phase"], t, event.get("faults", {})))
    elif kind == "register" and not event.get("malformed"):
        tally.watch(t, len(event["ssds"]) * settings["watched"], len(event["ssds"]))
    elif kind == "consume" and not event.get("malformed") and not event.get("unregistered"):
        tally.demand(t, event["wanted"], event["quantity"])
        tally.stock(t, (event["ssd"], event["barcode"]), event["stock"])
    elif kind == "restock":
        tally.restock(t)
        placed.append(t)
    elif kind == "random_order" and not event.get("malformed"):
        placed.append(t)
    elif kind == "delivered":
        tally.stock(t, (event["ssd"], event["barcode"]), event["stock"])
        tally.completed(t, event["placed"], event["shipped"])
    elif kind == "cancelled":
        tally.cancelled(t)
    # `end` (the run's last line) only moves the end, as every line does.


def build(
    totals_between,
    placed: list[float],
    phases: list[Phase],
    end: float,
    settings: dict[str, Any],
    source: str,
) -> dict[str, Any]:
    """The report from a function giving the totals of any stretch (a, b] of simulated time."""
    placed = sorted(placed)
    slices, phase_spans = stretches(phases, end)
    series: dict[str, list] = {"t_s": [], "placed_per_h": [], "completed_per_h": []}
    for name in ("stockout_share", "fill_rate", *(f"lead_time_p{p}_s" for p in kpis.PERCENTILES)):
        series[name] = []
    for a, b in slices:
        totals = totals_between(a, b)
        values = kpis.compute(totals)
        hours = (b - a) / 3600 or 1.0
        series["t_s"].append(round(b, 3))
        series["placed_per_h"].append(round(_within(placed, a, b) / hours, 3))
        series["completed_per_h"].append(round(totals.completed / hours, 3))
        for name in series:
            if name in values:
                series[name].append(_round(values[name]))
    rows = []
    for phase, (_, stop) in zip(phases, phase_spans, strict=True):
        totals = totals_between(phase.start_s, stop)
        rows.append({
            "name": phase.name,
            "start_s": round(phase.start_s, 3),
            "end_s": round(stop, 3),
            "faults": phase.faults,
            "kpis": kpis.rounded(kpis.compute(totals)),
            "orders_placed": _within(placed, phase.start_s, stop),
            "orders_completed": totals.completed,
            "orders_cancelled": totals.cancelled,
        })  # fmt: skip
    return {
        "source": source,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": settings,
        "span_s": round(end, 3),
        "kpis": kpis.rounded(kpis.compute(totals_between(0.0, end))),
        "kpi_descriptions": kpis.DESCRIPTIONS,
        "phases": rows,
        "series": series,
    }


def stretches(
    phases: list[Phase], end: float
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """The charts' slices of (0, end], and each phase's span."""
    edges = [end * i / SLICES for i in range(SLICES + 1)] if end > 0 else [0.0, 0.0]
    starts = [phase.start_s for phase in phases]
    return list(pairwise(edges)), list(pairwise([*starts, end]))


def _within(ordered: list[float], a: float, b: float) -> int:
    """How many of the sorted times fall in (a, b] ([0, b] for the first stretch)."""
    return bisect_right(ordered, b) - (bisect_right(ordered, a) if a > 0 else 0)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


async def from_live(database_url: str, generator_url: str, sim_speed: float) -> dict[str, Any]:
    """The report of the live simulation: real time from its first SSD to now, in simulated
    seconds (at the generator's speed; `sim_speed` when it does not answer)."""
    control = await _generator_state(generator_url)
    sim_speed = float(control.get("speed") or sim_speed)
    conn = await asyncpg.connect(database_url)
    try:
        began = await conn.fetchval("SELECT created_at FROM ssds ORDER BY id LIMIT 1")
        now = await conn.fetchval("SELECT now()")
        if began is None:
            raise ReportError(f"nothing to report: no SSD at {_safe(database_url)}")
        cached: dict[tuple[float, float], kpis.Totals] = {}

        async def stretch(a: float, b: float) -> kpis.Totals:
            if (a, b) not in cached:
                # From the start: every bucket, those retention folded too. To the end: the
                # bucket under way too.
                start = began + timedelta(seconds=a / sim_speed) if a > 0 else None
                stop = began + timedelta(seconds=b / sim_speed)
                if b >= end:
                    stop = now + timedelta(seconds=BUCKET_S)
                cached[(a, b)] = await kpis_db.between(conn, start, stop, sim_speed)
            return cached[(a, b)]

        end = (now - began).total_seconds() * sim_speed
        phases = _live_phases(control, began, sim_speed, end)
        slices, phase_spans = stretches(phases, end)
        for a, b in {*slices, *phase_spans, (0.0, end)}:
            await stretch(a, b)
        rows = await conn.fetch(
            "SELECT created_at FROM product_orders WHERE created_at >= $1", began
        )
        placed = [(row["created_at"] - began).total_seconds() * sim_speed for row in rows]
    finally:
        await conn.close()
    settings = {
        "speed": sim_speed,
        "seed": control.get("seed"),
        "scenario": control.get("scenario"),
        "population": control.get("ssds"),
    }
    source = f"live simulation at {_safe(database_url)}"
    return build(lambda a, b: cached[(a, b)], placed, phases, end, settings, source)


def _live_phases(
    control: dict[str, Any], began: datetime, sim_speed: float, end: float
) -> list[Phase]:
    """The generator's phases on the report's clock: those begun by `end` (it lists a phase as
    soon as it draws it, a moment ahead), after `registering` (the first SSD to the clock's
    start) when that took any time; one phase, `run`, without a generator."""
    phases = []
    for entry in control.get("phases", []):
        at = (datetime.fromisoformat(entry["at"]) - began).total_seconds() * sim_speed
        if at < end:
            phases.append(Phase(entry["name"], max(at, 0.0), entry.get("faults", {})))
    if not phases:
        return [Phase("run", 0.0, control.get("faults", {}))]
    if phases[0].start_s > 0:
        phases.insert(0, Phase("registering", 0.0, phases[0].faults))
    return phases


async def _generator_state(url: str) -> dict[str, Any]:
    """The generator's control state with its phases, or {} when it does not answer (a run
    already over)."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            async with session.get(f"{url}/api/control") as resp:
                resp.raise_for_status()
                state = await resp.json()
            async with session.get(f"{url}/api/phases") as resp:
                resp.raise_for_status()
                return {**state, "phases": (await resp.json())["phases"]}
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
        return {}


def _safe(url: str) -> str:
    """A database URL without its password."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}{at}{host}" if at else url


def write(report: dict[str, Any], html_path: Path) -> Path:
    """`report.html` at html_path and its JSON beside it (same name, .json); the JSON's path."""
    from .report_html import render

    json_path = html_path.with_suffix(".json")
    if json_path == html_path:
        raise ReportError(f"--out {html_path}: the HTML file, not the JSON beside it")
    html_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    html_path.write_text(render(report))
    return json_path


def kpi_lines(report: dict[str, Any], names: Iterable[str] = kpis.NAMES) -> list[str]:
    return [f"{name:<28} {_shown(report['kpis'].get(name))}" for name in names]


def _shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"
