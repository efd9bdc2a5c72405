"""`offsim compare A.json B.json`: two runs' KPIs (their `report.json`) side by side, with the
change from A to B, absolute and relative, and each run's settings and faults, so a what-if
reads as one table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from offsim_common import kpis


class CompareError(ValueError):
    """A file that is not a run report, named."""


def load(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CompareError(f"{path}: not JSON ({exc})") from None
    if not isinstance(report, dict) or not isinstance(report.get("kpis"), dict):
        raise CompareError(f'{path}: not a run report (no "kpis"): make one with offsim report')
    return report


def table(a: dict[str, Any], b: dict[str, Any], a_name: str, b_name: str) -> list[str]:
    """The lines of the comparison."""
    width = max(len(name) for name in kpis.NAMES)
    lines = [
        f"A: {a_name}  ({_settings(a)})",
        f"B: {b_name}  ({_settings(b)})",
        "",
        f"{'KPI':<{width}}  {'A':>12}  {'B':>12}  {'change':>12}  {'relative':>9}",
    ]
    for name in kpis.NAMES:
        x, y = a["kpis"].get(name), b["kpis"].get(name)
        change = relative = "-"
        if x is not None and y is not None:
            change = f"{y - x:+.6g}"
            relative = f"{(y - x) / x:+.2%}" if x else ("0.00%" if y == x else "new")
        lines.append(
            f"{name:<{width}}  {_shown(x):>12}  {_shown(y):>12}  {change:>12}  {relative:>9}"
        )
    return lines


def _settings(report: dict[str, Any]) -> str:
    settings = report.get("settings", {})
    shown = ", ".join(f"{k} {v}" for k, v in settings.items() if v is not None)
    faults = sorted({
        f"{name}={value:g}"
        for phase in report.get("phases", [])
        for name, value in phase.get("faults", {}).items()
        if value != DEFAULT_FAULTS.get(name, value)
    })  # fmt: skip
    return shown + (f"; faults {' '.join(faults)}" if faults else "")


# Each fault's value when it does nothing.
DEFAULT_FAULTS = {
    "supplier_delay": 1.0, "reject": 0.0, "courier_spike": 0.0, "malformed": 0.0,
    "courier_spike_factor": 10.0,
}  # fmt: skip


def _shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"
