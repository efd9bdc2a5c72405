"""What a run did to its households, defined once: the KPIs under the names every part of
offsim uses (the dry run's summary, the dashboard's `/api/kpis` and gauges, the run report,
`--threshold` and `offsim compare`). docs/kpis.md says what each means and why.

Every KPI is a function of a few totals (`Totals`): a live run gets them from the database's
counters and samples, a dry run and a report of its events from a `Tally` fed event by event.
Times are simulated seconds; a KPI with nothing to measure yet (no demand, no completed order)
is None, never a made-up 0 or 1.
"""

from __future__ import annotations

import math
import re
from array import array
from bisect import bisect_right
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

DAY_S = 86400.0

# Placed -> completed, and each stage of it: pending (placed -> shipped) and shipped
# (shipped -> completed).
PERCENTILES = (50, 95, 99)
STAGES = ("pending", "shipped")

DESCRIPTIONS: dict[str, str] = {
    "stockout_share": "share of watched product-time an SSD spent at zero stock",
    "fill_rate": "units used over units wanted (demand that found stock)",
    **{f"lead_time_p{p}_s": f"p{p} of placed to completed, simulated seconds"
       for p in PERCENTILES},
    **{f"lead_time_{stage}_p{p}_s": f"p{p} of the {stage} stage, simulated seconds"
       for stage in STAGES for p in PERCENTILES},
    "cancelled_share": "cancelled orders over finished ones (completed + cancelled)",
    "restocks_per_ssd_day": "restock orders placed per SSD per simulated day",
}  # fmt: skip
NAMES: tuple[str, ...] = tuple(DESCRIPTIONS)

Kpis = dict[str, float | None]


@dataclass
class Totals:
    """What the KPIs are computed from, over a stretch of a run."""

    zero_s: float = 0.0  # watched product-seconds at zero stock
    watched_s: float = 0.0  # watched product-seconds
    units_wanted: int = 0
    units_short: int = 0  # of those, the units that found no stock
    ssd_s: float = 0.0  # SSD-seconds
    restocks: int = 0
    completed: int = 0
    cancelled: int = 0
    # Of the orders completed in the stretch (simulated seconds).
    lead_times: Sequence[float] = ()
    stage_times: dict[str, Sequence[float]] = field(default_factory=dict)


def compute(t: Totals) -> Kpis:
    """The KPIs of `t`, each a float or None when there is nothing to measure."""
    kpis: Kpis = {
        "stockout_share": _ratio(t.zero_s, t.watched_s),
        "fill_rate": _ratio(t.units_wanted - t.units_short, t.units_wanted),
    }
    ordered = sorted(t.lead_times)
    for p in PERCENTILES:
        kpis[f"lead_time_p{p}_s"] = percentile(ordered, p)
    for stage in STAGES:
        times = sorted(t.stage_times.get(stage, ()))
        for p in PERCENTILES:
            kpis[f"lead_time_{stage}_p{p}_s"] = percentile(times, p)
    kpis["cancelled_share"] = _ratio(t.cancelled, t.completed + t.cancelled)
    kpis["restocks_per_ssd_day"] = _ratio(t.restocks, t.ssd_s / DAY_S)
    return {name: kpis[name] for name in NAMES}


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole > 0 else None


def percentile(ordered: Sequence[float], p: float) -> float | None:
    """The p-th percentile of sorted values, interpolated between the closest ranks: Postgres's
    `percentile_cont` and numpy's default, so that a live run and a dry run agree."""
    if not ordered:
        return None
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def rounded(kpis: Kpis, digits: int = 6) -> Kpis:
    """To `digits` significant digits: a small share stays itself, not 0."""
    return {k: (None if v is None else float(f"{v:.{digits}g}")) for k, v in kpis.items()}


class Tally:
    """Totals kept event by event, exactly: the time each watched product spends at zero is
    integrated between its changes, not sampled. `key` is whatever names a watched product (a
    dry run's slot, a report's SSD and barcode). `at(t)` gives the totals from the start, and
    `between(a, b)` those of a stretch, for a report's phases and charts."""

    def __init__(self) -> None:
        # How many products (and SSDs) are watched, over time.
        self._watched, self._ssds = _Integral(), _Integral()
        # The watched products at zero now, and the integral of their count over time, by
        # change: exact over any stretch.
        self._empty: set[Hashable] = set()
        self._zero = _Integral()
        self.units_wanted = self.units_short = 0
        self._demand = _Marks()
        self._short = _Marks()
        self._restocks = array("d")
        self._cancelled = array("d")
        self._completed_at = array("d")
        self._lead = array("d")
        self._stages = {stage: array("d") for stage in STAGES}

    def watch(self, t: float, products: int = 1, ssds: int = 0) -> None:
        """`products` watched products (and `ssds` SSDs) join at t, in stock."""
        self._watched.set(t, self._watched.level + products)
        self._ssds.set(t, self._ssds.level + ssds)

    def stock(self, t: float, key: Hashable, level: int) -> None:
        """A watched product's stock is `level` from t on."""
        if level <= 0 and key not in self._empty:
            self._empty.add(key)
            self._zero.set(t, len(self._empty))
        elif level > 0 and key in self._empty:
            self._empty.discard(key)
            self._zero.set(t, len(self._empty))

    def demand(self, t: float, wanted: int, used: int) -> None:
        self.units_wanted += wanted
        self.units_short += wanted - used
        self._demand.add(t, self.units_wanted)
        self._short.add(t, self.units_short)

    def restock(self, t: float) -> None:
        self._restocks.append(t)

    def cancelled(self, t: float) -> None:
        self._cancelled.append(t)

    def completed(self, t: float, placed: float, shipped: float) -> None:
        """An order placed at `placed` and shipped at `shipped` completed at t (in time
        order)."""
        self._completed_at.append(t)
        self._lead.append(t - placed)
        self._stages["pending"].append(shipped - placed)
        self._stages["shipped"].append(t - shipped)

    def at(self, t: float) -> Totals:
        return self.between(0.0, t)

    def between(self, a: float, b: float) -> Totals:
        """The totals of the stretch (a, b]: product-time over it, counts and lead times of
        what happened in it."""
        lo, hi = _since(self._completed_at, a), bisect_right(self._completed_at, b)
        zero = self._zero.at(b) - self._zero.at(a)
        # The first stretch is [0, b]: what happened at 0 is in it.
        wanted = self._demand.value_at(b) - (self._demand.value_at(a) if a > 0 else 0)
        short = self._short.value_at(b) - (self._short.value_at(a) if a > 0 else 0)
        return Totals(
            zero_s=zero,
            watched_s=self._watched.at(b) - self._watched.at(a),
            units_wanted=int(wanted),
            units_short=int(short),
            ssd_s=self._ssds.at(b) - self._ssds.at(a),
            restocks=_count_within(self._restocks, a, b),
            completed=hi - lo,
            cancelled=_count_within(self._cancelled, a, b),
            lead_times=self._lead[lo:hi],
            stage_times={stage: times[lo:hi] for stage, times in self._stages.items()},
        )

    def kpis(self, t: float) -> Kpis:
        return compute(self.at(t))


class _Marks:
    """A running total by time: (t, value) in time order; its value at any t."""

    def __init__(self) -> None:
        self.times = array("d")
        self.values = array("d")

    def add(self, t: float, value: float) -> None:
        if self.times and self.times[-1] == t:
            self.values[-1] = value
            return
        self.times.append(t)
        self.values.append(value)

    def value_at(self, t: float) -> float:
        i = bisect_right(self.times, t)
        return self.values[i - 1] if i else 0.0


class _Integral:
    """The integral over time of a step function (a count that changes at given times)."""

    def __init__(self) -> None:
        self.times = array("d", [0.0])
        self.integrals = array("d", [0.0])
        self.levels = array("d", [0.0])

    @property
    def level(self) -> float:
        """The function's value from the last change on."""
        return self.levels[-1]

    def set(self, t: float, level: float) -> None:
        """The function is `level` from t on (t never earlier than the last change)."""
        integral = self.at(t)
        if self.times[-1] == t:
            self.integrals[-1], self.levels[-1] = integral, level
            return
        self.times.append(t)
        self.integrals.append(integral)
        self.levels.append(level)

    def at(self, t: float) -> float:
        i = max(bisect_right(self.times, t) - 1, 0)
        return self.integrals[i] + self.levels[i] * max(t - self.times[i], 0.0)


def _since(times: Sequence[float], a: float) -> int:
    """The first index after a: stretches are (a, b], the first one [0, b]."""
    return bisect_right(times, a) if a > 0 else 0


def _count_within(times: Sequence[float], a: float, b: float) -> int:
    return bisect_right(times, b) - _since(times, a)


# Thresholds, k6's way: `stockout_share<0.02`, `lead_time_p95_s<=21600`.
_THRESHOLD = re.compile(r"^\s*([A-Za-z0-9_]+)\s*(<=|>=|==|!=|<|>)\s*([^\s]+)\s*$")
_COMPARE = {
    "<": lambda v, x: v < x,
    "<=": lambda v, x: v <= x,
    ">": lambda v, x: v > x,
    ">=": lambda v, x: v >= x,
    "==": lambda v, x: v == x,
    "!=": lambda v, x: v != x,
}


@dataclass(frozen=True)
class Threshold:
    expression: str
    kpi: str
    op: str
    limit: float

    @classmethod
    def parse(cls, expression: str) -> Threshold:
        """`NAME OP NUMBER`; a ValueError naming what is wrong (the KPI, the operator, the
        number) otherwise."""
        match = _THRESHOLD.match(expression)
        if match is None:
            raise ValueError(
                f"bad threshold {expression!r}: expected NAME OP NUMBER, e.g. "
                f"'stockout_share<0.02', with OP one of {' '.join(_COMPARE)}"
            )
        name, op, number = match.groups()
        if name not in DESCRIPTIONS:
            raise ValueError(
                f"bad threshold {expression!r}: unknown KPI {name!r} (known: {', '.join(NAMES)})"
            )
        try:
            limit = float(number)
        except ValueError:
            raise ValueError(f"bad threshold {expression!r}: {number!r} is not a number") from None
        if not math.isfinite(limit):
            raise ValueError(f"bad threshold {expression!r}: {number!r} is not a finite number")
        return cls(expression.strip(), name, op, limit)

    def check(self, kpis: Kpis) -> tuple[bool, float | None]:
        """Whether it holds, and the KPI's value. A KPI with no value (nothing measured) fails:
        a gate that passes on no data would let an empty run through."""
        value = kpis.get(self.kpi)
        if value is None:
            return False, None
        return _COMPARE[self.op](value, self.limit), value


def parse_thresholds(expressions: Iterable[str]) -> list[Threshold]:
    return [Threshold.parse(e) for e in expressions]


def check_thresholds(thresholds: Iterable[Threshold], kpis: Kpis) -> tuple[bool, list[str]]:
    """Whether all hold, and a line for each: `✓ stockout_share<0.02 (0.0134)`."""
    lines, ok = [], True
    for threshold in thresholds:
        passed, value = threshold.check(kpis)
        ok &= passed
        shown = "no data" if value is None else f"{value:.6g}"
        lines.append(f"{'passed' if passed else 'FAILED'}  {threshold.expression}  ({shown})")
    return ok, lines
