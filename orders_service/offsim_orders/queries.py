"""All of the orders service's SQL. Functions take a connection; callers own the transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
from offsim_common.events import OrderEvent, OrderStatus

ORDER_COLUMNS = "id, ssd_id, barcode, quantity, kind, status, created_at"
ORDER_DETAIL_COLUMNS = f"{ORDER_COLUMNS}, shipped_at, completed_at, cancelled_at"

# The statements that update many orders' rows at once (transition batches, published marks,
# delivery confirmations) take turns across every replica: each first takes this transaction
# advisory lock, held until it commits (each is its own transaction). Two of them at once could
# lock their rows in different orders and deadlock, which Postgres finds only after
# deadlock_timeout (a 1 s stall, and the batch undone): the order of the rows a statement locks
# is its plan's (a nested loop follows the batch's id order, a hash join the table's physical
# order), and the plan changes with the table's size.
ROW_TURN_KEY = 0x6F6666_726F7773  # "off" "rows"; no other advisory lock of offsim's
# An uncorrelated subquery, so Postgres runs it once, before the statement's scan returns (and
# so updates) any row: a condition on it is the plan's one-time filter.
_TAKE_TURN = f"(SELECT true FROM pg_advisory_xact_lock({ROW_TURN_KEY}))"


def _turn(rows: int) -> str:
    """The turn's condition for a statement of `rows` known rows. A one-row statement needs no
    turn (holding a single row, it cannot be half of a deadlock), and must not wait for one:
    one by one is how a failed batch is retried, up to a fetch's worth at once, each holding a
    pooled connection."""
    return _TAKE_TURN if rows > 1 else "true"


async def insert_orders(
    conn: asyncpg.Connection,
    ssd_ids: list[int],
    barcodes: list[str],
    quantities: list[int],
    kinds: list[str],
    request_ids: list[str | None],
    callers: list[int | None],
) -> list[asyncpg.Record]:
    """Insert many orders in one statement (one commit when run outside a transaction), each
    checked against its caller (`callers`: a user, or None for the service credential), and
    return one row per input, in order: the order's `id`, `status` and `created_at` when it was
    inserted (else NULL), with `owner` (NULL: unknown SSD) and `product_known` to say why not.
    A restock order clashing with an open one (even one of the same batch) is skipped, not an
    error: one bad order never fails the others. Ids come from the identity's sequence up front,
    so each inserted row is matched to its input."""
    return await conn.fetch(
        """WITH input AS (
               SELECT * FROM unnest($1::bigint[], $2::text[], $3::int[], $4::text[], $5::text[],
                                    $6::bigint[])
                   WITH ORDINALITY AS i(ssd_id, barcode, quantity, kind, request_id, caller, n)),
           checked AS MATERIALIZED (
               SELECT i.*, s.user_id AS owner, p.barcode IS NOT NULL AS product_known,
                      CASE WHEN s.user_id IS NOT NULL AND p.barcode IS NOT NULL
                                AND (i.caller IS NULL OR i.caller = s.user_id)
                           THEN nextval(pg_get_serial_sequence('product_orders', 'id')) END AS id
               FROM input i
               LEFT JOIN ssd_owners s ON s.ssd_id = i.ssd_id
               LEFT JOIN products p ON p.barcode = i.barcode),
           inserted AS (
               INSERT INTO product_orders (id, ssd_id, barcode, quantity, kind, request_id)
               OVERRIDING SYSTEM VALUE
               SELECT id, ssd_id, barcode, quantity, kind, request_id FROM checked
               WHERE id IS NOT NULL ORDER BY n
               ON CONFLICT DO NOTHING
               RETURNING id, status, created_at)
           SELECT c.owner, c.product_known, o.id, o.status, o.created_at
           FROM checked c LEFT JOIN inserted o ON o.id = c.id ORDER BY c.n""",
        ssd_ids,
        barcodes,
        quantities,
        kinds,
        request_ids,
        callers,
    )


async def mark_published(conn: asyncpg.Connection, order_ids: list[int]) -> None:
    await conn.execute(
        f"""UPDATE product_orders SET published_at = now(), publish_claimed_until = NULL
            WHERE id = ANY($1::bigint[]) AND published_at IS NULL AND {_turn(len(order_ids))}""",
        order_ids,
    )


async def claim_unpublished(
    conn: asyncpg.Connection, older_than_s: float, claim_s: float
) -> list[asyncpg.Record]:
    """Orders whose orders.pending was never acknowledged, claimed for `claim_s` seconds so
    that one replica re-publishes each (a lapsed claim is taken again)."""
    return await conn.fetch(
        f"""UPDATE product_orders SET publish_claimed_until = now() + make_interval(secs => $2)
            WHERE id IN (
                SELECT id FROM product_orders
                WHERE published_at IS NULL AND created_at < now() - make_interval(secs => $1)
                  AND (publish_claimed_until IS NULL OR publish_claimed_until < now())
                ORDER BY created_at LIMIT 100
                FOR UPDATE SKIP LOCKED)
            RETURNING {ORDER_COLUMNS}, request_id""",
        older_than_s,
        claim_s,
    )


async def claim_device_orders(
    conn: asyncpg.Connection, claim_s: float, limit: int
) -> list[asyncpg.Record]:
    """Restock orders the backend placed on a reading and nobody announced yet, claimed for
    `claim_s` seconds so that one replica announces each. Locked rows are skipped, not waited
    for: no deadlock, and two replicas take different rows."""
    return await conn.fetch(
        f"""UPDATE product_orders SET publish_claimed_until = now() + make_interval(secs => $1)
            WHERE id IN (
                SELECT id FROM product_orders
                WHERE published_at IS NULL AND placed_by = 'device'
                  AND (publish_claimed_until IS NULL OR publish_claimed_until < now())
                ORDER BY id LIMIT $2
                FOR UPDATE SKIP LOCKED)
            RETURNING {ORDER_COLUMNS}, request_id""",
        claim_s,
        limit,
    )


async def claim_overdue(
    conn: asyncpg.Connection,
    pending_after_s: float,
    shipped_after_s: float,
    delivered_after_s: float,
    horizon_s: float,
    limit: int = 100,
) -> list[asyncpg.Record]:
    """Orders whose next step is overdue, claimed (one stage period) so that one replica
    re-announces each: announced pending orders not shipped after `pending_after_s`, shipped
    ones not completed after `shipped_after_s`, and completed ones whose delivery the users
    service has not added to stock after `delivered_after_s` (no older than `horizon_s`, past
    which the stream would not hold the event either)."""
    return await conn.fetch(
        f"""UPDATE product_orders
            SET reconcile_claimed_until = now() + make_interval(secs =>
                CASE status WHEN 'pending' THEN $1 WHEN 'shipped' THEN $2 ELSE $3 END)
            WHERE id IN (
                SELECT o.id FROM product_orders o
                WHERE o.id IN (
                        SELECT id FROM product_orders
                        WHERE status = 'pending' AND published_at IS NOT NULL
                          AND created_at < now() - make_interval(secs => $1)
                        UNION ALL
                        SELECT id FROM product_orders
                        WHERE status = 'shipped' AND shipped_at < now() - make_interval(secs => $2)
                        UNION ALL
                        SELECT id FROM product_orders p
                        WHERE status = 'completed' AND NOT delivery_confirmed
                          AND completed_at < now() - make_interval(secs => $3)
                          AND completed_at > now() - make_interval(secs => $4)
                          AND NOT EXISTS (SELECT 1 FROM delivered_orders d
                                          WHERE d.order_id = p.id))
                  AND (o.reconcile_claimed_until IS NULL OR o.reconcile_claimed_until < now())
                ORDER BY o.created_at LIMIT $5
                FOR UPDATE SKIP LOCKED)
            RETURNING {ORDER_COLUMNS}, shipped_at, completed_at, request_id""",
        pending_after_s,
        shipped_after_s,
        delivered_after_s,
        horizon_s,
        limit,
    )


async def confirm_deliveries(conn: asyncpg.Connection) -> int:
    """Note the completed orders whose delivery the users service has added to stock: the
    reconciler never looks at them again (they leave the index of those awaiting delivery).
    Returns how many."""
    status = await conn.execute(
        f"""UPDATE product_orders o SET delivery_confirmed = true
            WHERE o.status = 'completed' AND NOT o.delivery_confirmed
              AND EXISTS (SELECT 1 FROM delivered_orders d WHERE d.order_id = o.id)
              AND {_TAKE_TURN}"""
    )
    return int(status.split()[-1])


async def fetch_order(conn: asyncpg.Connection, order_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT o.id, o.ssd_id, o.barcode, o.quantity, o.kind, o.status, o.created_at,
                  o.shipped_at,
                  o.completed_at, o.cancelled_at, p.name AS product_name
           FROM product_orders o JOIN products p ON p.barcode = o.barcode WHERE o.id = $1""",
        order_id,
    )


async def list_orders(
    conn: asyncpg.Connection,
    ssd_id: int | None,
    status: OrderStatus | None,
    before: int | None,
    limit: int,
    offset: int,
) -> list[asyncpg.Record]:
    """Up to `limit` orders, newest (highest id) first, older than `before` when it is given,
    after skipping `offset`. Each filter is one index range in id order (migration 014), so a
    page deep in history costs what the first one does.

    The page's ids come first, from the filter's index alone, then the rows by key: asked for
    whole rows at once, the planner walks the primary key and filters on the status, which for
    `completed` steps over every order still in flight at the head of the table first (15 ms
    at 10 million orders, more the more are in flight). The status is a literal, not a
    parameter, for the same reason: a generic plan cannot know how rare a status is."""
    where, args = ["true"], []
    if ssd_id is not None:
        args.append(ssd_id)
        where.append(f"ssd_id = ${len(args)}")
    if status is not None:
        where.append(f"status = '{OrderStatus(status).value}'")
    if before is not None:
        args.append(before)
        where.append(f"id < ${len(args)}")
    return await conn.fetch(
        f"""SELECT {ORDER_DETAIL_COLUMNS} FROM product_orders WHERE id IN (
                SELECT id FROM product_orders WHERE {" AND ".join(where)}
                ORDER BY id DESC LIMIT ${len(args) + 1} OFFSET ${len(args) + 2})
            ORDER BY id DESC""",
        *args,
        limit,
        offset,
    )


async def count_orders(
    conn: asyncpg.Connection, ssd_id: int | None, status: OrderStatus | None
) -> int:
    """How many orders are stored, of one SSD and in one status when given. Without an SSD this
    sums the counters the triggers keep (order_counts: a few rows, whatever the history); an
    SSD's orders are counted over its index range, which holds only that SSD's orders (about a
    thousand at 10 million orders for 10,000 SSDs: under a millisecond)."""
    if ssd_id is None:
        return await conn.fetchval(
            """SELECT coalesce(sum(stored), 0)::bigint FROM order_counts
               WHERE $1::text IS NULL OR status = $1""",
            status,
        )
    return await conn.fetchval(
        """SELECT count(*) FROM product_orders
           WHERE ssd_id = $1 AND ($2::text IS NULL OR status = $2)""",
        ssd_id,
        status,
    )


async def fold_order_counts(conn: asyncpg.Connection) -> int:
    """Fold the order counters' delta rows into one row per status; returns the rows removed.
    Two folds at once (replicas) are safe: each delta row is deleted, and so summed, by one of
    them only (the other skips a row deleted under it), and rows the triggers insert meanwhile
    are left for the next fold."""
    return await conn.fetchval(
        """WITH gone AS (
               DELETE FROM order_counts WHERE status IN (
                   SELECT status FROM order_counts GROUP BY status HAVING count(*) > 1)
               RETURNING status, stored, lifetime),
           folded AS (
               INSERT INTO order_counts (status, stored, lifetime)
               SELECT status, sum(stored), sum(lifetime) FROM gone GROUP BY status
               HAVING sum(stored) <> 0 OR sum(lifetime) <> 0)
           SELECT count(*) FROM gone"""
    )


async def fold_order_minutes(conn: asyncpg.Connection, kept_s: float) -> int:
    """fold_order_counts for the orders placed and completed a minute; minutes older than
    `kept_s` seconds are dropped."""
    return await conn.fetchval(
        """WITH since AS (SELECT now() - make_interval(secs => $1) AS t),
           gone AS (
               DELETE FROM order_minutes WHERE minute < (SELECT t FROM since) OR minute IN (
                   SELECT minute FROM order_minutes GROUP BY minute HAVING count(*) > 1)
               RETURNING minute, placed, completed),
           folded AS (
               INSERT INTO order_minutes (minute, placed, completed)
               SELECT minute, sum(placed), sum(completed) FROM gone
               WHERE minute >= (SELECT t FROM since) GROUP BY minute
               HAVING sum(placed) <> 0 OR sum(completed) <> 0)
           SELECT count(*) FROM gone""",
        kept_s,
    )


async def record_shipped(conn: asyncpg.Connection, event: OrderEvent) -> datetime | None:
    """Mark the order shipped; return when it was placed, or None if this changed nothing.

    Only forward: a late or repeated shipped event never moves a completed order back. Only an
    event that describes the order (SSD, product, quantity) moves it."""
    return (await record_shipped_many(conn, [event]) or {}).get(event.id)


async def record_completed(conn: asyncpg.Connection, event: OrderEvent) -> datetime | None:
    """Mark the order completed; return when it shipped, or None if this changed nothing (a
    cancelled order stays cancelled)."""
    return (await record_completed_many(conn, [event]) or {}).get(event.id)


async def record_cancelled(conn: asyncpg.Connection, event: OrderEvent) -> datetime | None:
    """Mark a pending order cancelled (the supplier rejected it); return when it was placed, or
    None if this changed nothing: a repeated event, or an order already past the supplier."""
    return (await record_cancelled_many(conn, [event]) or {}).get(event.id)


# The events of a batch as a table `e` (id, at, ssd_id, barcode, quantity, n: its place in the
# batch) from the arrays $1 to $5.
_EVENTS = """e AS (SELECT * FROM unnest($1::bigint[], $2::timestamptz[], $3::bigint[], $4::text[],
                                     $5::int[]) WITH ORDINALITY
                   AS e(id, at, ssd_id, barcode, quantity, n))"""


def _event_columns(events: list[OrderEvent]) -> tuple[list, ...]:
    return (
        [e.id for e in events],
        [e.timestamp for e in events],
        [e.ssd_id for e in events],
        [e.barcode for e in events],
        [e.quantity for e in events],
    )


async def _move_many(
    conn: asyncpg.Connection, events: list[OrderEvent], moves: str, allowed: str, previous: str
) -> dict[int, datetime] | None:
    """Move a batch's orders in one statement (its own transaction: one round trip): `moves`
    (a SET list) where the order is in an `allowed` status and matches its event; {order id:
    `previous`} for the orders it moved. None, and nothing moved, if an event of the batch
    describes no order (no order with its id, SSD, product and quantity). A batch takes its
    turn first (ROW_TURN_KEY)."""
    rows = await conn.fetch(
        f"""WITH {_EVENTS},
            undescribed AS (
                SELECT count(*) AS n FROM e WHERE NOT EXISTS (
                    SELECT 1 FROM product_orders o WHERE o.id = e.id AND o.ssd_id = e.ssd_id
                      AND o.barcode = e.barcode AND o.quantity = e.quantity)),
            moved AS (
                UPDATE product_orders o SET {moves} FROM e
                WHERE o.id = e.id AND o.status IN ({allowed}) AND o.ssd_id = e.ssd_id
                  AND o.barcode = e.barcode AND o.quantity = e.quantity
                  AND (SELECT n FROM undescribed) = 0 AND {_turn(len(events))}
                RETURNING o.id, {previous} AS previous)
            SELECT u.n AS undescribed, m.id, m.previous
            FROM undescribed u LEFT JOIN moved m ON true""",
        *_event_columns(events),
    )
    if rows[0]["undescribed"]:
        return None
    return {row["id"]: row["previous"] for row in rows if row["id"] is not None}


async def record_shipped_many(
    conn: asyncpg.Connection, events: list[OrderEvent]
) -> dict[int, datetime] | None:
    """record_shipped for a batch: {order id: when it was placed} for the orders this moved."""
    return await _move_many(
        conn, events, "status = 'shipped', shipped_at = e.at", "'pending'", "o.created_at"
    )


async def record_completed_many(
    conn: asyncpg.Connection, events: list[OrderEvent]
) -> dict[int, datetime] | None:
    """record_completed for a batch: {order id: when it shipped}."""
    return await _move_many(
        conn, events,
        "status = 'completed', completed_at = e.at, shipped_at = coalesce(o.shipped_at, e.at)",
        "'pending', 'shipped'", "o.shipped_at",
    )  # fmt: skip


async def record_cancelled_many(
    conn: asyncpg.Connection, events: list[OrderEvent]
) -> dict[int, datetime] | None:
    """record_cancelled for a batch: {order id: when it was placed}."""
    return await _move_many(
        conn, events, "status = 'cancelled', cancelled_at = e.at", "'pending'", "o.created_at"
    )


async def describes_order(conn: asyncpg.Connection, event: OrderEvent) -> bool:
    """Whether an order with this id, SSD, product and quantity exists."""
    return bool(
        await conn.fetchval(
            """SELECT true FROM product_orders
               WHERE id = $1 AND ssd_id = $2 AND barcode = $3 AND quantity = $4""",
            event.id,
            event.ssd_id,
            event.barcode,
            event.quantity,
        )
    )


async def random_barcode(conn: asyncpg.Connection, ssd_id: int | None) -> str | None:
    """A product for a random order: one the SSD watches when it is given, else any product."""
    if ssd_id is not None:
        watched = await conn.fetchval(
            "SELECT barcode FROM watched_products WHERE ssd_id = $1 ORDER BY random() LIMIT 1",
            ssd_id,
        )
        if watched is not None:
            return watched
    # A random offset into the primary key: no full sort of the catalogue.
    return await conn.fetchval(
        """SELECT barcode FROM products
           OFFSET floor(random() * (SELECT count(*) FROM products)) LIMIT 1"""
    )


async def count_products(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT count(*) FROM products")


PRODUCT_COLUMNS = """p.barcode, p.name, p.quantity, p.image_url, p.energy_100g, p.energy_serving,
    p.nova_group, p.nutriscore_score, p.nutriscore_grade, p.fat_level, p.saturated_fat_level,
    p.sugars_level, p.salt_level, p.categories,
    coalesce((SELECT array_agg(tag ORDER BY tag) FROM product_brands b
              WHERE b.barcode = p.barcode), '{}') AS brands"""


async def list_products(conn: asyncpg.Connection, limit: int, offset: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"SELECT {PRODUCT_COLUMNS} FROM products p ORDER BY barcode LIMIT $1 OFFSET $2",
        limit,
        offset,
    )
    return [dict(row) for row in rows]


async def fetch_product(conn: asyncpg.Connection, barcode: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {PRODUCT_COLUMNS} FROM products p WHERE barcode = $1", barcode
    )
    return dict(row) if row else None
