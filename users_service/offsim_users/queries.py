"""All of the users service's SQL. Functions take a connection; callers own the transaction."""

from __future__ import annotations

import random
from typing import Any

import asyncpg
from offsim_common.requests import NewUser


async def insert_user(
    conn: asyncpg.Connection, user: NewUser, password_hash: str
) -> asyncpg.Record:
    return await conn.fetchrow(
        """INSERT INTO users (first_name, last_name, email, password_hash)
           VALUES ($1, $2, $3, $4)
           RETURNING id, first_name, last_name, email, created_at""",
        user.first_name,
        user.last_name,
        user.email,
        password_hash,
    )


async def insert_devices(
    conn: asyncpg.Connection, user_id: int, macs: list[str]
) -> list[asyncpg.Record]:
    return await conn.fetch(
        """INSERT INTO ssds (user_id, mac_address)
           SELECT $1, mac FROM unnest($2::text[]) WITH ORDINALITY AS m(mac, n) ORDER BY n
           RETURNING id, mac_address""",
        user_id,
        macs,
    )


async def watch_random_products(
    conn: asyncpg.Connection, ssd_id: int, count: int, rng: random.Random
) -> list[str]:
    """Give a new SSD `count` products to watch, full to capacity; return their barcodes.

    ORDER BY random() scans the catalogue: fine for the tens of thousands of products a simulation
    loads, and it only runs once per device.
    """
    barcodes = await conn.fetch("SELECT barcode FROM products ORDER BY random() LIMIT $1", count)
    rows = []
    for record in barcodes:
        capacity = rng.randint(6, 12)
        rows.append((ssd_id, record["barcode"], capacity, capacity // 3, capacity))
    await conn.executemany(
        """INSERT INTO product_ssds (ssd_id, barcode, quantity, reorder_point, capacity)
           VALUES ($1, $2, $3, $4, $5)""",
        rows,
    )
    return [row[1] for row in rows]


async def insert_token(conn: asyncpg.Connection, user_id: int, token_hash: bytes) -> None:
    await conn.execute(
        "INSERT INTO api_tokens (token_hash, user_id) VALUES ($1, $2)", token_hash, user_id
    )


async def fetch_user(conn: asyncpg.Connection, user_id: int) -> dict[str, Any] | None:
    user = await conn.fetchrow(
        "SELECT id, first_name, last_name, email, created_at FROM users WHERE id = $1", user_id
    )
    if user is None:
        return None
    ssds = await conn.fetch(
        "SELECT id, mac_address FROM ssds WHERE user_id = $1 ORDER BY id", user_id
    )
    stock = await conn.fetch(
        """SELECT ps.ssd_id, ps.barcode, p.name AS product_name, p.image_url, ps.quantity,
                  ps.reorder_point, ps.capacity, ps.units_wanted, ps.units_short
           FROM product_ssds ps JOIN ssds s ON s.id = ps.ssd_id
           JOIN products p ON p.barcode = ps.barcode
           WHERE s.user_id = $1 ORDER BY ps.ssd_id, ps.barcode""",
        user_id,
    )
    by_ssd: dict[int, list[dict]] = {s["id"]: [] for s in ssds}
    for row in stock:
        item = dict(row)
        by_ssd[item.pop("ssd_id")].append(item)
    return {
        **dict(user),
        "ssds": [{**dict(s), "stock": by_ssd[s["id"]]} for s in ssds],
    }


async def random_ssd_id(conn: asyncpg.Connection) -> int | None:
    # Picks a random point in the id range and takes the next id: one index probe, not a scan.
    return await conn.fetchval(
        """SELECT id FROM ssds
           WHERE id >= (SELECT min(id) + floor(random() * (max(id) - min(id) + 1))::bigint
                        FROM ssds)
           ORDER BY id LIMIT 1"""
    )


async def consume_stock(
    conn: asyncpg.Connection, ssd_id: int, barcode: str | None, quantity: int
) -> list[asyncpg.Record]:
    """Use up stock: `quantity` of one product, or a random 0..`quantity` of each watched one.

    Stock never goes below zero. Returns every touched row with what was consumed.
    """
    return await conn.fetch(
        """WITH target AS (
               SELECT ssd_id, barcode, quantity AS before,
                      CASE WHEN $2::text IS NULL THEN floor(random() * ($3 + 1))::int ELSE $3 END
                          AS wanted
               FROM product_ssds
               WHERE ssd_id = $1 AND ($2::text IS NULL OR barcode = $2)
               FOR UPDATE)
           UPDATE product_ssds ps
           SET quantity = greatest(t.before - t.wanted, 0)
           FROM target t
           WHERE ps.ssd_id = t.ssd_id AND ps.barcode = t.barcode
           RETURNING ps.barcode, ps.quantity, ps.reorder_point, ps.capacity,
                     t.before - ps.quantity AS consumed,
                     (SELECT name FROM products WHERE barcode = ps.barcode) AS product_name,
                     EXISTS (SELECT 1 FROM open_orders o
                             WHERE o.ssd_id = ps.ssd_id AND o.barcode = ps.barcode) AS on_order""",
        ssd_id,
        barcode,
        quantity,
    )


async def delivery_recorded(conn: asyncpg.Connection, order_id: int) -> bool:
    return bool(
        await conn.fetchval("SELECT true FROM stock_deliveries WHERE order_id = $1", order_id)
    )


async def record_delivery(
    conn: asyncpg.Connection, order_id: int, ssd_id: int, barcode: str, quantity: int
) -> bool:
    """Add a delivered order to its SSD's stock, once: False if nothing was added (the delivery
    was already added, or no order has this id, SSD, product and quantity)."""
    first = await conn.fetchval(
        """INSERT INTO stock_deliveries (order_id)
           SELECT order_id FROM deliverable_orders
           WHERE order_id = $1 AND ssd_id = $2 AND barcode = $3 AND quantity = $4
           ON CONFLICT (order_id) DO NOTHING RETURNING true""",
        order_id,
        ssd_id,
        barcode,
        quantity,
    )
    if not first:
        return False
    # A product the SSD did not watch gets a row of its own: stock it holds but never reorders.
    await conn.execute(
        """INSERT INTO product_ssds (ssd_id, barcode, quantity, reorder_point, capacity)
           VALUES ($1, $2, $3, 0, $3)
           ON CONFLICT (ssd_id, barcode)
           DO UPDATE SET quantity = product_ssds.quantity + excluded.quantity""",
        ssd_id,
        barcode,
        quantity,
    )
    return True


async def record_deliveries(
    conn: asyncpg.Connection,
    order_ids: list[int],
    ssd_ids: list[int],
    barcodes: list[str],
    quantities: list[int],
) -> set[int]:
    """record_delivery for a batch in one statement: the ids of the orders added to stock now.
    An order repeated in the batch counts once; the stock rows are updated in key order, so two
    batches touching the same rows wait for each other instead of deadlocking."""
    rows = await conn.fetch(
        """WITH e AS (
               SELECT DISTINCT ON (o.order_id) o.order_id AS id, o.ssd_id, o.barcode, o.quantity
               FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::int[])
                   AS e(id, ssd_id, barcode, quantity)
               JOIN deliverable_orders o ON o.order_id = e.id AND o.ssd_id = e.ssd_id
                   AND o.barcode = e.barcode AND o.quantity = e.quantity
               ORDER BY o.order_id),
           first AS (
               INSERT INTO stock_deliveries (order_id) SELECT id FROM e ORDER BY id
               ON CONFLICT (order_id) DO NOTHING RETURNING order_id),
           stocked AS (
               INSERT INTO product_ssds (ssd_id, barcode, quantity, reorder_point, capacity)
               SELECT e.ssd_id, e.barcode, sum(e.quantity), 0, sum(e.quantity)
               FROM e JOIN first f ON f.order_id = e.id
               GROUP BY e.ssd_id, e.barcode ORDER BY e.ssd_id, e.barcode
               ON CONFLICT (ssd_id, barcode)
               DO UPDATE SET quantity = product_ssds.quantity + excluded.quantity)
           SELECT order_id FROM first""",
        order_ids,
        ssd_ids,
        barcodes,
        quantities,
    )
    return {row["order_id"] for row in rows}


async def deliveries_recorded(conn: asyncpg.Connection, order_ids: list[int]) -> set[int]:
    rows = await conn.fetch(
        "SELECT order_id FROM stock_deliveries WHERE order_id = ANY($1::bigint[])", order_ids
    )
    return {row["order_id"] for row in rows}


# --- bulk registration of synthetic users (synthetic.py) ----------------------------------------


async def insert_users_bulk(
    conn: asyncpg.Connection, users: list[NewUser], hashes: list[str]
) -> list[int]:
    """One multi-row INSERT; the ids in the order of `users`."""
    rows = await conn.fetch(
        """INSERT INTO users (first_name, last_name, email, password_hash)
           SELECT f, l, e, h FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
               WITH ORDINALITY AS u(f, l, e, h, n) ORDER BY n
           RETURNING id, email""",
        [u.first_name for u in users],
        [u.last_name for u in users],
        [u.email for u in users],
        hashes,
    )
    by_email = {row["email"]: row["id"] for row in rows}
    return [by_email[u.email] for u in users]


async def insert_devices_bulk(
    conn: asyncpg.Connection, user_ids: list[int], macs: list[str]
) -> list[int]:
    """One multi-row INSERT; the ids in the order of `macs`."""
    rows = await conn.fetch(
        """INSERT INTO ssds (user_id, mac_address)
           SELECT u, m FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS d(u, m, n)
           ORDER BY n
           RETURNING id, mac_address""",
        user_ids,
        macs,
    )
    by_mac = {row["mac_address"]: row["id"] for row in rows}
    return [by_mac[mac] for mac in macs]


async def all_barcodes(conn: asyncpg.Connection) -> list[str]:
    return [row["barcode"] for row in await conn.fetch("SELECT barcode FROM products")]


async def copy_stock(conn: asyncpg.Connection, rows: list[tuple[int, str, int, int, int]]) -> None:
    await conn.copy_records_to_table(
        "product_ssds",
        records=rows,
        columns=["ssd_id", "barcode", "quantity", "reorder_point", "capacity"],
    )


# --- device readings (readings.py) --------------------------------------------------------------


async def apply_readings(
    conn: asyncpg.Connection,
    ssd_ids: list[int],
    reading_ids: list[str],
    barcodes: list[str],
    units: list[int],
) -> asyncpg.Record:
    """Apply a batch of readings in one statement; each reading id of an SSD is applied once.

    Readings of a product the SSD does not have are left out. Each new reading is recorded in
    `ssd_readings`, and the units of the new ones are taken from their stock rows (never below
    zero; what found no stock is counted as short), per product and in the rows' key order, so
    two batches touching the same rows wait for each other instead of deadlocking. A product
    left below its reorder point gets a restock order from `place_restock_orders` (the orders
    service's function: none while any order for it is on its way), in the same transaction.

    One row: `known`, the ordinals (1-based) of the readings of a product the SSD has (the
    first copy of each id); `applied`, those applied now; `stock`, the rows changed (JSON:
    barcode, quantity left, reorder point, capacity, units wanted and short); `restocks`, the
    orders placed (JSON)."""
    return await conn.fetchrow(
        """WITH r AS (
               SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[])
                   WITH ORDINALITY AS r(ssd_id, reading_id, barcode, units, n)),
           known AS MATERIALIZED (
               -- One index probe a reading (a subquery with LIMIT is never turned into a join:
               -- a hash join would read every stock row of the city for each batch).
               SELECT DISTINCT ON (r.ssd_id, r.reading_id) r.*
               FROM r
               WHERE (SELECT true FROM product_ssds ps
                      WHERE ps.ssd_id = r.ssd_id AND ps.barcode = r.barcode LIMIT 1)
               ORDER BY r.ssd_id, r.reading_id, r.n),
           fresh AS (
               INSERT INTO ssd_readings (ssd_id, reading_id)
               SELECT ssd_id, reading_id FROM known ORDER BY ssd_id, reading_id
               ON CONFLICT DO NOTHING
               RETURNING ssd_id, reading_id),
           applied AS MATERIALIZED (
               SELECT k.* FROM known k
               JOIN fresh f ON f.ssd_id = k.ssd_id AND f.reading_id = k.reading_id),
           wanted AS MATERIALIZED (
               SELECT ssd_id, barcode, sum(units)::int AS units, count(*) AS readings,
                      max(reading_id) AS last_reading
               FROM applied GROUP BY ssd_id, barcode),
           locked AS MATERIALIZED (
               SELECT ps.ssd_id, ps.barcode, ps.quantity AS before, w.units, w.readings,
                      w.last_reading
               FROM product_ssds ps
               JOIN wanted w ON w.ssd_id = ps.ssd_id AND w.barcode = ps.barcode
               ORDER BY ps.ssd_id, ps.barcode
               FOR UPDATE OF ps),
           used AS (
               UPDATE product_ssds ps
               SET quantity = greatest(l.before - l.units, 0),
                   units_wanted = ps.units_wanted + l.units,
                   units_short = ps.units_short + greatest(l.units - l.before, 0)
               FROM locked l
               WHERE ps.ssd_id = l.ssd_id AND ps.barcode = l.barcode
               RETURNING ps.ssd_id, ps.barcode, ps.quantity, ps.reorder_point, ps.capacity,
                         l.units AS wanted, greatest(l.units - l.before, 0) AS short,
                         l.readings, l.last_reading),
           low AS MATERIALIZED (
               SELECT * FROM used WHERE quantity < reorder_point ORDER BY ssd_id, barcode),
           restocked AS (
               SELECT * FROM place_restock_orders(
                   ARRAY(SELECT ssd_id FROM low), ARRAY(SELECT barcode FROM low),
                   ARRAY(SELECT capacity - quantity FROM low),
                   ARRAY(SELECT 'ssd-' || ssd_id || '-reading-' || last_reading FROM low))),
           demand AS (
               INSERT INTO ssd_demand AS d (bucket, readings, units_wanted, units_short,
                                            restocks)
               SELECT to_timestamp(floor(extract(epoch FROM now()) / 10) * 10),
                      sum(readings), sum(wanted), sum(short),
                      (SELECT count(*) FROM restocked)
               FROM used HAVING count(*) > 0
               ON CONFLICT (bucket) DO UPDATE
               SET readings = d.readings + excluded.readings,
                   units_wanted = d.units_wanted + excluded.units_wanted,
                   units_short = d.units_short + excluded.units_short,
                   restocks = d.restocks + excluded.restocks)
           SELECT ARRAY(SELECT n FROM known) AS known,
                  ARRAY(SELECT n FROM applied) AS applied,
                  (SELECT coalesce(json_agg(json_build_object(
                       'ssd_id', ssd_id, 'barcode', barcode, 'quantity', quantity,
                       'reorder_point', reorder_point, 'capacity', capacity,
                       'wanted', wanted, 'short', short)), '[]') FROM used) AS stock,
                  (SELECT coalesce(json_agg(json_build_object(
                       'order_id', order_id, 'ssd_id', ssd_id, 'barcode', barcode,
                       'quantity', quantity)), '[]') FROM restocked) AS restocks""",
        ssd_ids,
        reading_ids,
        barcodes,
        units,
    )


async def watched_barcodes(conn: asyncpg.Connection, ssd_id: int) -> list[str]:
    rows = await conn.fetch(
        "SELECT barcode FROM product_ssds WHERE ssd_id = $1 ORDER BY barcode", ssd_id
    )
    return [row["barcode"] for row in rows]


async def ssd_stock(
    conn: asyncpg.Connection, ssd_id: int, barcodes: list[str]
) -> list[asyncpg.Record]:
    """The stock rows of these products of an SSD, with their names and whether an order for
    each is on its way."""
    return await conn.fetch(
        """SELECT ps.barcode, ps.quantity, ps.reorder_point, ps.capacity,
                  (SELECT name FROM products WHERE barcode = ps.barcode) AS product_name,
                  EXISTS (SELECT 1 FROM open_orders o
                          WHERE o.ssd_id = ps.ssd_id AND o.barcode = ps.barcode) AS on_order
           FROM product_ssds ps
           WHERE ps.ssd_id = $1 AND ps.barcode = ANY($2::text[])
           ORDER BY ps.barcode""",
        ssd_id,
        barcodes,
    )


# --- retention (retention.py) -------------------------------------------------------------------


async def delete_reading_ids(conn: asyncpg.Connection, older_than_s: float, limit: int) -> int:
    """Forget up to `limit` of the oldest reading ids applied more than `older_than_s` seconds
    ago (by ssd_readings_applied_at); how many. Rows another replica is deleting are skipped,
    and each is deleted by its address (one heap visit, no second index lookup)."""
    status = await conn.execute(
        """DELETE FROM ssd_readings WHERE ctid = ANY(ARRAY(
               SELECT ctid FROM ssd_readings
               WHERE applied_at < now() - make_interval(secs => $1)
               ORDER BY applied_at LIMIT $2
               FOR UPDATE SKIP LOCKED))""",
        older_than_s,
        limit,
    )
    return int(status.split()[-1])


async def fold_demand(conn: asyncpg.Connection, older_than_s: float, limit: int) -> int:
    """Fold up to `limit` of the demand buckets older than `older_than_s` seconds into the one
    at '-infinity' (everything before the buckets kept); how many were folded. The sums over
    every bucket (the dashboard's lifetime figures) stay exact, and the table stays a day of
    rows, not a row for every 10 seconds since the city began."""
    folded = await conn.fetchval(
        """WITH old AS (
               DELETE FROM ssd_demand WHERE bucket IN (
                   SELECT bucket FROM ssd_demand
                   WHERE bucket > '-infinity'
                     AND bucket < now() - make_interval(secs => $1)
                   ORDER BY bucket LIMIT $2
                   FOR UPDATE SKIP LOCKED)
               RETURNING *)
           INSERT INTO ssd_demand AS d (bucket, readings, units_wanted, units_short, restocks,
                                        empty_product_s, watched_product_s, ssd_s)
           SELECT '-infinity', sum(readings), sum(units_wanted), sum(units_short),
                  sum(restocks), sum(empty_product_s), sum(watched_product_s), sum(ssd_s)
           FROM old HAVING count(*) > 0
           ON CONFLICT (bucket) DO UPDATE
           SET readings = d.readings + excluded.readings,
               units_wanted = d.units_wanted + excluded.units_wanted,
               units_short = d.units_short + excluded.units_short,
               restocks = d.restocks + excluded.restocks,
               empty_product_s = d.empty_product_s + excluded.empty_product_s,
               watched_product_s = d.watched_product_s + excluded.watched_product_s,
               ssd_s = d.ssd_s + excluded.ssd_s
           RETURNING (SELECT count(*) FROM old)""",
        older_than_s,
        limit,
    )
    return folded or 0


async def sample_stock(conn: asyncpg.Connection, sim_speed: float, every_s: float) -> bool:
    """Add to the current demand bucket the product-time since the previous sample (by any
    replica): the watched products at zero now, every watched product and every SSD, times the
    simulated seconds since then. False, counting nothing, when another replica is sampling or
    sampled less than half a period ago (N replicas sample once a period between them), and
    for the first sample (it starts the clock). A gap longer than three periods (the service
    was down) counts as three: what the stock did meanwhile is unknown, and the whole downtime
    at today's counts would say more than was seen."""
    async with conn.transaction():
        row = await conn.fetchrow(
            """SELECT extract(epoch FROM now() - at)::float8 AS real_s
               FROM stock_sampled FOR UPDATE SKIP LOCKED"""
        )
        if row is None or (row["real_s"] is not None and row["real_s"] < every_s / 2):
            return False
        # Never back: a transaction's now() may be older than the last sample's.
        await conn.execute("UPDATE stock_sampled SET at = greatest(at, now())")
        if row["real_s"] is None:
            return False
        seen_s = min(row["real_s"], 3 * every_s) * sim_speed
        await conn.execute(
            """WITH stock AS (
                   -- One pass over the stock rows (no index on the level: it would keep every
                   -- reading's update from being a HOT one).
                   SELECT count(*) FILTER (WHERE quantity = 0) AS empty, count(*) AS watched
                   FROM product_ssds)
               INSERT INTO ssd_demand AS d (bucket, readings, units_wanted, units_short,
                                            empty_product_s, watched_product_s, ssd_s)
               SELECT to_timestamp(floor(extract(epoch FROM now()) / 10) * 10), 0, 0, 0,
                      empty * $1, watched * $1, (SELECT count(*) FROM ssds) * $1
               FROM stock
               ON CONFLICT (bucket) DO UPDATE
               SET empty_product_s = d.empty_product_s + excluded.empty_product_s,
                   watched_product_s = d.watched_product_s + excluded.watched_product_s,
                   ssd_s = d.ssd_s + excluded.ssd_s""",
            seen_s,
        )
        return True
