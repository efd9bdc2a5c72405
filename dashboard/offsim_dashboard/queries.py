"""All of the dashboard's SQL: read-only. Functions take a connection."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import asyncpg

# The dashboard looks for recent activity among the newest orders only, so its queries stay cheap
# however long the simulation has run.
RECENT_WINDOW = 500
# The users service counts the demand of the SSDs' readings in buckets of this many seconds
# (ssd_demand, migration 013); the dashboard's rates are over the last minute of complete buckets.
DEMAND_BUCKET_S = 10
DEMAND_WINDOW_S = 60


async def count_entities(conn: asyncpg.Connection) -> dict[str, int]:
    row = await conn.fetchrow(
        """SELECT (SELECT count(*) FROM users) AS users,
                  (SELECT count(*) FROM ssds) AS ssds,
                  (SELECT count(*) FROM products) AS products"""
    )
    return dict(row)


async def count_orders_by_status(conn: asyncpg.Connection) -> dict[str, int]:
    """Every order ever placed, by its status now, orders deleted since (retention) included:
    the counters the orders service keeps as it writes (`order_totals`, migration 014), a sum
    of a few rows rather than a count over history."""
    rows = await conn.fetch("SELECT status, lifetime FROM order_totals")
    return {row["status"]: row["lifetime"] for row in rows}


async def stage_seconds(conn: asyncpg.Connection) -> dict[str, float | None]:
    """Average seconds an order spends in each stage, and end to end, over the newest orders."""
    row = await conn.fetchrow(
        """SELECT avg(extract(epoch FROM shipped_at - created_at))::float8 AS pending,
                  avg(extract(epoch FROM completed_at - shipped_at))::float8 AS shipped,
                  avg(extract(epoch FROM completed_at - created_at))::float8 AS completed
           FROM (SELECT created_at, shipped_at, completed_at
                 FROM product_orders ORDER BY id DESC LIMIT $1) newest""",
        RECENT_WINDOW,
    )
    return dict(row)


async def recent_orders(conn: asyncpg.Connection, limit: int) -> list[dict[str, Any]]:
    """The newest orders with their product and the time of each transition."""
    rows = await conn.fetch(
        """SELECT o.id, o.ssd_id, o.barcode, p.name AS product_name, p.image_url, o.quantity,
                  o.status, o.created_at, o.shipped_at, o.completed_at, o.cancelled_at
           FROM product_orders o JOIN products p ON p.barcode = o.barcode
           ORDER BY o.id DESC LIMIT $1""",
        limit,
    )
    return [dict(row) for row in rows]


async def recent_transitions(conn: asyncpg.Connection, limit: int) -> list[dict[str, Any]]:
    """The latest transitions (pending, shipped, completed, cancelled) of the newest orders,
    newest first."""
    rows = await conn.fetch(
        """WITH newest AS (
               SELECT * FROM product_orders ORDER BY id DESC LIMIT $2
           )
           SELECT t.at, t.status, o.id, o.ssd_id, o.barcode, p.name AS product_name, o.quantity
           FROM newest o
           JOIN products p ON p.barcode = o.barcode
           CROSS JOIN LATERAL (VALUES ('pending', o.created_at), ('shipped', o.shipped_at),
                                      ('completed', o.completed_at),
                                      ('cancelled', o.cancelled_at)) AS t(status, at)
           WHERE t.at IS NOT NULL
           ORDER BY t.at DESC, o.id DESC LIMIT $1""",
        limit,
        RECENT_WINDOW,
    )
    return [dict(row) for row in rows]


async def active_ssds(conn: asyncpg.Connection, limit: int) -> list[dict[str, Any]]:
    """A few SSDs, those with the newest orders first (then the newest SSDs), with their owner.
    Both kinds are taken by index, at most `limit` of each: the cost follows `limit`, not the
    number of SSDs."""
    rows = await conn.fetch(
        """WITH recent AS (
               SELECT ssd_id, max(id) AS last_order
               FROM (SELECT ssd_id, id FROM product_orders ORDER BY id DESC LIMIT $2) r
               GROUP BY ssd_id
           ),
           picked AS (
               (SELECT ssd_id AS id, last_order FROM recent ORDER BY last_order DESC LIMIT $1)
               UNION ALL
               (SELECT s.id, NULL FROM ssds s
                WHERE NOT EXISTS (SELECT 1 FROM recent r WHERE r.ssd_id = s.id)
                ORDER BY s.id DESC LIMIT $1)
           )
           SELECT s.id, s.mac_address, u.first_name, u.last_name, s.created_at
           FROM (SELECT * FROM picked ORDER BY last_order DESC NULLS LAST, id DESC LIMIT $1) p
           JOIN ssds s ON s.id = p.id
           JOIN users u ON u.id = s.user_id
           ORDER BY p.last_order DESC NULLS LAST, p.id DESC""",
        limit,
        RECENT_WINDOW,
    )
    return [dict(row) for row in rows]


async def stock_of(conn: asyncpg.Connection, ssd_ids: Iterable[int]) -> list[dict[str, Any]]:
    """The stock each SSD watches, with the product, the units its readings asked for and those
    that found no stock (lifetime), and the status of its open order, if any."""
    rows = await conn.fetch(
        """SELECT ps.ssd_id, ps.barcode, p.name, p.quantity AS package, p.image_url,
                  ps.quantity, ps.reorder_point, ps.capacity, ps.units_wanted, ps.units_short,
                  o.status AS on_order
           FROM product_ssds ps
           JOIN products p ON p.barcode = ps.barcode
           LEFT JOIN product_orders o
                  ON o.ssd_id = ps.ssd_id AND o.barcode = ps.barcode
                 AND o.status IN ('pending', 'shipped')
           WHERE ps.ssd_id = ANY($1::bigint[])
           ORDER BY ps.ssd_id, p.name, ps.barcode""",
        list(ssd_ids),
    )
    return [dict(row) for row in rows]


async def throughput(conn: asyncpg.Connection, minutes: int) -> list[dict[str, Any]]:
    """Orders placed and completed in each of the last `minutes` minutes (the current one last),
    from the per-minute counters the orders service keeps as it writes (`orders_per_minute`,
    migration 014): a few rows a minute, whatever the history."""
    rows = await conn.fetch(
        """WITH span AS (
               SELECT date_trunc('minute', now(), 'UTC') - make_interval(mins => $1 - 1) AS since
           )
           SELECT m.minute, coalesce(c.placed, 0) AS placed, coalesce(c.completed, 0) AS completed
           FROM generate_series((SELECT since FROM span), date_trunc('minute', now(), 'UTC'),
                                interval '1 minute') AS m(minute)
           LEFT JOIN (SELECT * FROM orders_per_minute
                      WHERE minute >= (SELECT since FROM span)) c ON c.minute = m.minute
           ORDER BY m.minute""",
        minutes,
    )
    return [dict(row) for row in rows]


async def demand(conn: asyncpg.Connection) -> dict[str, Any]:
    """The SSDs' readings and the units they asked for, over the last minute and over all time.

    The last minute is the six complete buckets before the current one: the current bucket is
    still filling, and counting it would make the rate dip at every bucket's start. Only
    `ssd_demand` is read (one row per 10 s), never the stock rows, so the cost does not grow
    with the number of SSDs: the minute is an index range of six rows, the lifetime a sum over
    every row (about 0.5 ms for each day of readings kept).
    """
    row = await conn.fetchrow(
        """WITH minute AS (
               SELECT until - make_interval(secs => $2) AS since, until
               FROM (SELECT to_timestamp(floor(extract(epoch FROM now()) / $1) * $1) AS until) b
           )
           SELECT minute.since, minute.until, recent.*, lifetime.*
           FROM minute
           CROSS JOIN LATERAL (
               SELECT coalesce(sum(readings), 0)::bigint AS minute_readings,
                      coalesce(sum(units_wanted), 0)::bigint AS minute_units_wanted,
                      coalesce(sum(units_short), 0)::bigint AS minute_units_short
               FROM ssd_demand WHERE bucket >= minute.since AND bucket < minute.until) recent
           CROSS JOIN (
               SELECT coalesce(sum(readings), 0)::bigint AS readings,
                      coalesce(sum(units_wanted), 0)::bigint AS units_wanted,
                      coalesce(sum(units_short), 0)::bigint AS units_short
               FROM ssd_demand) lifetime""",
        DEMAND_BUCKET_S,
        DEMAND_WINDOW_S,
    )
    return dict(row)
