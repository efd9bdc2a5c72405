"""--source parquet: OFF's `food` export, written here from the bundled sample in OFF's schema,
loads the same products with the same counts as the sample's JSONL."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from offsim_etl import ExtractError, run_etl, sample_path
from offsim_etl.off_parquet import FOOD_COLUMNS, write_food_parquet
from offsim_etl.settings import EtlSettings

from .test_cli import offsim_etl

# What both sources carry. Not compared: image_url (the export has no image URL, as dump lines
# have none), and the Nutri-Score (the export has only nutriscore_score/_grade, not the
# nutriscore_data and nutrition_grades that older JSON objects carry).
COMPARED = """
    p.barcode, p.name, p.quantity, p.energy_100g, p.energy_serving, p.nova_group, p.categories,
    p.fat_level, p.saturated_fat_level, p.sugars_level, p.salt_level,
    (SELECT array_agg(tag ORDER BY tag) FROM product_brands b WHERE b.barcode = p.barcode)
"""


def sample_objects() -> list[dict[str, Any]]:
    with gzip.open(sample_path(), "rb") as lines:
        return [orjson.loads(line) for line in lines]


def as_float32(row: asyncpg.Record) -> dict[str, Any]:
    """The row with its energies as the float32 the export stores them in: the sample's JSON has
    e.g. 538.95001220703 (a float32 printed long), the export's float32 reads back as 538.95."""
    values = dict(row)
    for column in ("energy_100g", "energy_serving"):
        if values[column] is not None:
            values[column] = struct.unpack("f", struct.pack("f", values[column]))[0]
    return values


async def products(db: asyncpg.Pool) -> list[asyncpg.Record]:
    async with db.acquire() as conn:
        return await conn.fetch(f"SELECT {COMPARED} FROM products p ORDER BY barcode")


async def test_parquet_loads_the_same_products_and_counts_as_jsonl(
    db: asyncpg.Pool, etl_settings: EtlSettings, tmp_path: Path
) -> None:
    objects = sample_objects()
    jsonl = tmp_path / "sample.jsonl"
    jsonl.write_bytes(b"\n".join(orjson.dumps(o) for o in objects) + b"\n")
    parquet = tmp_path / "food.parquet"
    write_food_parquet(parquet, objects, row_group_size=300)

    from_jsonl = await run_etl(etl_settings, "jsonl", file=jsonl, progress=False)
    jsonl_rows = await products(db)
    async with db.acquire() as conn:
        await conn.execute("TRUNCATE products, brands, product_brands CASCADE")
    from_parquet = await run_etl(
        etl_settings, "parquet", file=parquet, progress=False, batch_size=200
    )
    parquet_rows = await products(db)

    assert pq.ParquetFile(parquet).schema_arrow == FOOD_COLUMNS
    assert from_parquet.source == "parquet food.parquet"
    assert from_parquet.read == from_jsonl.read == len(objects)
    for count in ("kept", "inserted", "duplicates", "new_brands"):
        assert getattr(from_parquet, count) == getattr(from_jsonl, count), count
    assert from_parquet.rejected == from_jsonl.rejected == {"no name": 14, "implausible barcode": 9}
    assert from_parquet.cleared == from_jsonl.cleared
    assert len(parquet_rows) == 1026
    assert [as_float32(row) for row in parquet_rows] == [as_float32(row) for row in jsonl_rows]


async def test_parquet_rerun_changes_nothing(
    db: asyncpg.Pool, etl_settings: EtlSettings, tmp_path: Path
) -> None:
    parquet = tmp_path / "food.parquet"
    write_food_parquet(parquet, sample_objects())

    first = await run_etl(etl_settings, "parquet", file=parquet, progress=False)
    second = await run_etl(etl_settings, "parquet", file=parquet, progress=False)

    assert (second.inserted, second.updated, second.unchanged) == (0, 0, first.kept)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"PAR1 this is not parquet", "bad.parquet is not a readable Parquet file"),
        (None, "bad.parquet is not an OFF food export: no column code"),
    ],
)
async def test_parquet_bad_file_fails_with_one_line(
    db: asyncpg.Pool, etl_settings: EtlSettings, tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "bad.parquet"
    if content is None:
        pq.write_table(pa.table({"barcode": ["3017620422003"]}), path)
    else:
        path.write_bytes(content)

    with pytest.raises(ExtractError, match=message):
        await run_etl(etl_settings, "parquet", file=path, progress=False)
    code, out, err = await offsim_etl(
        "--source",
        "parquet",
        "--file",
        str(path),
        "--quiet",
        database_url=etl_settings.database_url,
    )

    assert code == 1, err
    assert out == ""
    assert err.startswith(f"offsim-etl: {message}")
    assert err.count("\n") == 1
