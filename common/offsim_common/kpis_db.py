"""The KPIs' totals (offsim_common.kpis) of a live simulation, read from its database: the
users service's demand buckets (demand, restocks and the sampled product-time, migration 017),
the orders service's lifetime counters (migration 014) and the orders themselves for lead
times. The dashboard reads them for the whole run; `offsim report` for each stretch of it."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from .kpis import Totals

# The dashboard's lead times are those of the last orders completed (by when they completed:
# the newest placed would be the quick ones): percentiles over every order ever completed would
# read the whole history at each refresh.
RECENT_COMPLETED = 5000

_DEMAND = """
    SELECT coalesce(sum(units_wanted), 0)::bigint AS units_wanted,
           coalesce(sum(units_short), 0)::bigint AS units_short,
           coalesce(sum(restocks), 0)::bigint AS restocks,
           coalesce(sum(empty_product_s), 0)::float8 AS zero_s,
           coalesce(sum(watched_product_s), 0)::float8 AS watched_s,
           coalesce(sum(ssd_s), 0)::float8 AS ssd_s
    FROM ssd_demand
"""
# The buckets that begin in [$1, $2) of real time, the edges taken down to a bucket's start
# ($1 NULL: from the first, the one retention folded old buckets into included).
_IN_STRETCH = """
    WHERE ($1::timestamptz IS NULL
           OR bucket >= to_timestamp(floor(extract(epoch FROM $1::timestamptz) / 10) * 10))
      AND bucket < to_timestamp(floor(extract(epoch FROM $2::timestamptz) / 10) * 10)
"""

# Lead times in real seconds (times SIM_SPEED: simulated ones).
_TIMES = """extract(epoch FROM completed_at - created_at)::float8 AS lead,
            extract(epoch FROM shipped_at - created_at)::float8 AS pending,
            extract(epoch FROM completed_at - shipped_at)::float8 AS shipped"""


async def lifetime(conn: asyncpg.Connection, sim_speed: float) -> Totals:
    """The whole run's totals: every bucket, the lifetime counts (exact whatever retention
    deleted), and the lead times of the newest RECENT_COMPLETED completed orders."""
    demand = await conn.fetchrow(_DEMAND)
    counts = {
        row["status"]: row["lifetime"]
        for row in await conn.fetch(
            "SELECT status, lifetime FROM order_totals WHERE status IN ('completed', 'cancelled')"
        )
    }
    rows = await conn.fetch(
        f"""SELECT {_TIMES} FROM product_orders
            WHERE completed_at IS NOT NULL AND status = 'completed'
            ORDER BY completed_at DESC LIMIT $1""",
        RECENT_COMPLETED,
    )
    return _totals(demand, counts.get("completed", 0), counts.get("cancelled", 0), rows, sim_speed)


async def between(
    conn: asyncpg.Connection, start: datetime | None, end: datetime, sim_speed: float
) -> Totals:
    """The totals of the stretch [start, end) of real time (None: from the first bucket,
    those retention folded included): the demand buckets that begin in it (a bucket is 10
    real seconds: each counts in the one stretch its start falls in), and the orders completed
    or cancelled in it (those retention has not deleted yet)."""
    demand = await conn.fetchrow(_DEMAND + _IN_STRETCH, start, end)
    start = start or datetime.min.replace(tzinfo=UTC)
    rows = await conn.fetch(
        f"""SELECT {_TIMES} FROM product_orders
            WHERE completed_at >= $1 AND completed_at < $2 AND status = 'completed'""",
        start,
        end,
    )
    cancelled = await conn.fetchval(
        """SELECT count(*) FROM product_orders
           WHERE status = 'cancelled' AND cancelled_at >= $1 AND cancelled_at < $2""",
        start,
        end,
    )
    return _totals(demand, len(rows), cancelled, rows, sim_speed)


def _totals(
    demand: asyncpg.Record,
    completed: int,
    cancelled: int,
    rows: list[asyncpg.Record],
    sim_speed: float,
) -> Totals:
    # Samples store simulated seconds already; the orders' timestamps are real.
    return Totals(
        zero_s=demand["zero_s"],
        watched_s=demand["watched_s"],
        units_wanted=demand["units_wanted"],
        units_short=demand["units_short"],
        ssd_s=demand["ssd_s"],
        restocks=demand["restocks"],
        completed=completed,
        cancelled=cancelled,
        lead_times=[row["lead"] * sim_speed for row in rows],
        stage_times={
            "pending": [row["pending"] * sim_speed for row in rows if row["pending"] is not None],
            "shipped": [row["shipped"] * sim_speed for row in rows if row["shipped"] is not None],
        },
    )
