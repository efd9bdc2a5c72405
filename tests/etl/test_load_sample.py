"""The bundled sample into the real Postgres: everything kept lands, and a re-run is a no-op."""

from __future__ import annotations

import asyncpg
from offsim_etl import run_etl
from offsim_etl.settings import EtlSettings
from prometheus_client import REGISTRY

SAMPLE_SIZE = 1049


def etl_metric(outcome: str) -> float:
    labels = {"source": "sample", "outcome": outcome}
    return REGISTRY.get_sample_value("offsim_etl_records_total", labels) or 0.0


async def test_sample_loads_every_kept_product_with_its_brands(
    db: asyncpg.Pool, etl_settings: EtlSettings
) -> None:
    inserted_before, rejected_before = etl_metric("inserted"), etl_metric("rejected")

    summary = await run_etl(etl_settings, progress=False)

    async with db.acquire() as conn:
        rows = await conn.fetchval("SELECT count(*) FROM products")
        nutella = await conn.fetchrow("SELECT * FROM products WHERE barcode = '3017620422003'")
        nutella_brands = await conn.fetch(
            "SELECT tag FROM product_brands WHERE barcode = '3017620422003' ORDER BY tag"
        )
        linked = await conn.fetchval("SELECT count(DISTINCT barcode) FROM product_brands")
        brands = await conn.fetchval("SELECT count(*) FROM brands")
    assert summary.read == SAMPLE_SIZE
    assert summary.kept == rows == summary.inserted
    assert summary.read == summary.kept + summary.duplicates + summary.rejected_total
    assert summary.rejected == {"no name": 14, "implausible barcode": 9}
    assert summary.new_brands == brands > 0
    assert linked > 0.7 * rows
    assert nutella["name"] == "Nutella" and nutella["nova_group"] == 4
    assert nutella["categories"][:2] == ["en:breakfasts", "en:spreads"]
    assert [row["tag"] for row in nutella_brands] == ["ferrero", "nutella"]
    assert etl_metric("inserted") - inserted_before == summary.inserted
    assert etl_metric("rejected") - rejected_before == summary.rejected_total


async def test_sample_second_run_changes_nothing(
    db: asyncpg.Pool, etl_settings: EtlSettings
) -> None:
    first = await run_etl(etl_settings, progress=False)
    async with db.acquire() as conn:
        before = await conn.fetch("SELECT barcode, xmin::text, updated_at FROM products")
        links_before = await conn.fetch("SELECT barcode, tag, xmin::text FROM product_brands")

    second = await run_etl(etl_settings, progress=False)

    async with db.acquire() as conn:
        after = await conn.fetch("SELECT barcode, xmin::text, updated_at FROM products")
        links_after = await conn.fetch("SELECT barcode, tag, xmin::text FROM product_brands")
    assert (second.inserted, second.updated, second.new_brands) == (0, 0, 0)
    assert second.unchanged == first.kept
    # Not a row rewritten: same tuple versions, same timestamps.
    assert sorted(after) == sorted(before)
    assert sorted(links_after) == sorted(links_before)


async def test_sample_changed_product_and_brands_count_as_updated(
    db: asyncpg.Pool, etl_settings: EtlSettings
) -> None:
    await run_etl(etl_settings, progress=False)
    async with db.acquire() as conn:
        await conn.execute("UPDATE products SET name = 'Stale' WHERE barcode = '3017620422003'")
        await conn.execute("DELETE FROM product_brands WHERE barcode = '5449000000996'")
        await conn.execute("INSERT INTO product_brands VALUES ('3023470010017', 'ferrero')")

    summary = await run_etl(etl_settings, progress=False)

    async with db.acquire() as conn:
        name = await conn.fetchval("SELECT name FROM products WHERE barcode = '3017620422003'")
        coke = await conn.fetchval(
            "SELECT array_agg(tag) FROM product_brands WHERE barcode = '5449000000996'"
        )
        sable = await conn.fetchval(
            "SELECT array_agg(tag ORDER BY tag) FROM product_brands WHERE barcode = '3023470010017'"
        )
    assert (summary.inserted, summary.updated) == (0, 3)
    assert name == "Nutella"
    assert coke == ["coca-cola"]
    assert "ferrero" not in sable


async def test_sample_strict_keeps_only_complete_products(
    db: asyncpg.Pool, etl_settings: EtlSettings
) -> None:
    summary = await run_etl(etl_settings, strict=True, progress=False)

    async with db.acquire() as conn:
        barcodes = [
            row["barcode"]
            for row in await conn.fetch("SELECT barcode FROM products ORDER BY barcode")
        ]
    assert barcodes == ["3017620422003", "3023470010017", "3760020502218", "5410188031072"]
    assert summary.rejected["strict: states not complete"] == 1022
