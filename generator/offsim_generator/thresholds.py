"""`--threshold`, k6's way: expressions over the run's KPIs (offsim_common.kpis), checked when
the run ends; each is printed passed or FAILED, and a failed one makes the exit status 99 (k6's
code for failed thresholds), so a CI step fails on what the run did to its households. A dry
run checks its own KPIs; a live run the dashboard's (`GET /api/kpis` at DASHBOARD_URL), which
are the simulation's at the database."""

from __future__ import annotations

import aiohttp
from offsim_common import kpis

# k6's exit code when thresholds fail.
THRESHOLDS_FAILED = 99


async def live_kpis(dashboard_url: str) -> kpis.Kpis:
    """The simulation's KPIs from the dashboard; raises OSError when it does not answer."""
    try:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(f"{dashboard_url}/api/kpis") as resp:
                resp.raise_for_status()
                body = await resp.json()
        return body["kpis"]
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
        raise OSError(f"the dashboard at {dashboard_url} gave no KPIs: {exc!r}") from exc


def verdict(thresholds: list[kpis.Threshold], values: kpis.Kpis | None) -> tuple[bool, list[str]]:
    """Whether every threshold held, and the lines that say so. Without KPIs, every threshold
    fails."""
    if values is None:
        return False, [f"FAILED  {t.expression}  (no KPIs)" for t in thresholds]
    return kpis.check_thresholds(thresholds, values)
