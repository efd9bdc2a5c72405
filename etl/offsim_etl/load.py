"""All the ETL's SQL: schema check, run lock, staging tables, the batch upsert, positions.

A batch is COPYed into session-local staging tables, then merged into `products`, `brands` and
`product_brands` with a few set-based statements, all in one transaction together with the
API position, so a crash leaves either the whole batch (and its position) or none of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

ETL_TABLES = ("products", "brands", "product_brands", "etl_positions")
PRODUCT_COLUMNS = (
    "barcode",
    "name",
    "quantity",
    "image_url",
    "energy_100g",
    "energy_serving",
    "nova_group",
    "nutriscore_score",
    "nutriscore_grade",
    "fat_level",
    "saturated_fat_level",
    "sugars_level",
    "salt_level",
    "categories",
)
# One ETL run per database at a time: two runs of one query would race on its position (the
# original's overlapping runs did), and two runs upserting the same rows only wait on each other.
RUN_LOCK = 0x6F6666_65746C  # "off" "etl"

_COLUMNS = ", ".join(PRODUCT_COLUMNS)
_DATA_COLUMNS = [column for column in PRODUCT_COLUMNS if column != "barcode"]
_SET = ", ".join(f"{column} = excluded.{column}" for column in _DATA_COLUMNS)
_CURRENT = ", ".join(f"p.{column}" for column in _DATA_COLUMNS)
_INCOMING = ", ".join(f"excluded.{column}" for column in _DATA_COLUMNS)

# Only rows whose values differ are rewritten, so a re-run of the same input writes nothing;
# xmax = 0 tells a fresh row from an updated one. Rows are taken in barcode order so that any two
# writers lock them in the same order and cannot deadlock.
UPSERT_PRODUCTS = f"""
INSERT INTO products AS p ({_COLUMNS})
SELECT {_COLUMNS} FROM etl_stage_products ORDER BY barcode
ON CONFLICT (barcode) DO UPDATE SET {_SET}, updated_at = now()
WHERE ({_CURRENT}) IS DISTINCT FROM ({_INCOMING})
RETURNING p.barcode, (p.xmax = 0) AS inserted
"""
INSERT_BRANDS = """
INSERT INTO brands (tag) SELECT DISTINCT tag FROM etl_stage_brands
ON CONFLICT (tag) DO NOTHING
RETURNING tag
"""
# The batch's products get exactly the brands they have now: links no longer listed go, new
# ones come, unchanged ones are not touched. Only products that existed before the batch can
# have stale links (a new row has none yet), and those are looked up by barcode through the
# primary key: the staging tables have no statistics, and a join on them made the planner scan
# and sort all of product_brands at every batch, a cost that grew with the table.
DELETE_STALE_LINKS = """
DELETE FROM product_brands pb
WHERE pb.barcode = ANY($1::text[])
  AND NOT EXISTS (
      SELECT 1 FROM etl_stage_brands b WHERE b.barcode = pb.barcode AND b.tag = pb.tag)
RETURNING pb.barcode
"""
INSERT_LINKS = """
INSERT INTO product_brands (barcode, tag) SELECT barcode, tag FROM etl_stage_brands
ON CONFLICT (barcode, tag) DO NOTHING
RETURNING barcode
"""
TOUCH_PRODUCTS = "UPDATE products SET updated_at = now() WHERE barcode = ANY($1::text[])"


@dataclass(frozen=True)
class BatchResult:
    inserted: int
    updated: int
    unchanged: int
    new_brands: int


async def missing_tables(conn: asyncpg.Connection) -> list[str]:
    """The ETL's tables that do not exist (the database was never migrated)."""
    rows = await conn.fetch(
        "SELECT t FROM unnest($1::text[]) AS t WHERE to_regclass(t) IS NULL", list(ETL_TABLES)
    )
    return [row["t"] for row in rows]


async def try_lock_run(conn: asyncpg.Connection) -> bool:
    """Take the session-level ETL lock; released when the connection closes."""
    return await conn.fetchval("SELECT pg_try_advisory_lock($1)", RUN_LOCK)


async def create_staging(conn: asyncpg.Connection) -> None:
    """Temporary tables private to this connection, emptied at every commit.

    The session also commits without waiting for the WAL flush: a batch is one upsert that is
    safe to run again, and its API position commits with it, so a server crash can only lose
    the last few batches together with their position, never leave them out of step. At one
    commit per 500 products, waiting for each flush was a tenth of a cold load.
    """
    await conn.execute(
        """
        SET synchronous_commit TO off;
        CREATE TEMP TABLE IF NOT EXISTS etl_stage_products
            (LIKE products INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
        CREATE TEMP TABLE IF NOT EXISTS etl_stage_brands
            (barcode text NOT NULL, tag text NOT NULL) ON COMMIT DELETE ROWS;
        """
    )


async def load_batch(
    conn: asyncpg.Connection,
    products: bytes,
    links: bytes,
    barcodes: Sequence[str],
    *,
    position: tuple[str, int | None] | None = None,
) -> BatchResult:
    """Upsert one batch in one transaction: `products`, binary COPY data of `PRODUCT_COLUMNS`
    rows whose barcodes are `barcodes` (unique within the batch), `links` that of its (barcode,
    brand tag) pairs (see `prepare`).

    Both go in with one binary COPY each, then one statement per table merges them, so a batch
    costs a fixed handful of round trips whatever its size. `position` is (source key, next
    page) to store with the batch, or (key, None) to clear it because the source is finished.
    """
    async with conn.transaction():
        if barcodes:
            # As memoryviews: asyncpg would take plain bytes for a file name.
            await conn.copy_to_table(
                "etl_stage_products",
                source=memoryview(products),
                columns=PRODUCT_COLUMNS,
                format="binary",
            )
            await conn.copy_to_table(
                "etl_stage_brands",
                source=memoryview(links),
                columns=("barcode", "tag"),
                format="binary",
            )
            written = await conn.fetch(UPSERT_PRODUCTS)
            inserted = {row["barcode"] for row in written if row["inserted"]}
            updated = {row["barcode"] for row in written if not row["inserted"]}
            new_brands = len(await conn.fetch(INSERT_BRANDS))
            relinked = set()
            if existing := [barcode for barcode in barcodes if barcode not in inserted]:
                relinked = {r["barcode"] for r in await conn.fetch(DELETE_STALE_LINKS, existing)}
            relinked |= {row["barcode"] for row in await conn.fetch(INSERT_LINKS)}
        else:
            inserted, updated, new_brands, relinked = set(), set(), 0, set()
        # A product whose only change is its brands was still updated.
        brands_only = relinked - inserted - updated
        if brands_only:
            await conn.execute(TOUCH_PRODUCTS, sorted(brands_only))
        updated |= brands_only
        if position is not None:
            key, next_page = position
            if next_page is None:
                await clear_position(conn, key)
            else:
                await save_position(conn, key, next_page)
    return BatchResult(
        inserted=len(inserted),
        updated=len(updated),
        unchanged=len(barcodes) - len(inserted) - len(updated),
        new_brands=new_brands,
    )


async def read_position(conn: asyncpg.Connection, key: str) -> int | None:
    return await conn.fetchval("SELECT next_page FROM etl_positions WHERE source = $1", key)


async def save_position(conn: asyncpg.Connection, key: str, next_page: int) -> None:
    await conn.execute(
        """INSERT INTO etl_positions (source, next_page) VALUES ($1, $2)
           ON CONFLICT (source) DO UPDATE SET next_page = excluded.next_page, updated_at = now()""",
        key,
        next_page,
    )


async def clear_position(conn: asyncpg.Connection, key: str) -> None:
    await conn.execute("DELETE FROM etl_positions WHERE source = $1", key)
