"""--source jsonl: OFF dump lines, gzip or plain, bad lines counted and skipped."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from offsim_etl import ExtractError, run_etl
from offsim_etl.extract_jsonl import read_jsonl
from offsim_etl.settings import EtlSettings

# Real sample objects: full 2020s objects, an old nutrition_grades-only one, a fields= one.
GOOD = [
    "3017620422003",
    "5449000000996",
    "26042459",
    "0000000001663",
    "05179565",
    "8000500082379",
    "4006599000632",
    "3263858674428",
]


def dump_lines(sample_records: dict[str, Any]) -> list[bytes]:
    no_code = dict(sample_records["7612100804032"])
    del no_code["code"]
    lines = [json.dumps(sample_records[code]).encode() for code in GOOD]
    lines[3:3] = [
        b'{"code": "1234567890123", "product_name": "cut off mid-',  # bad JSON
        json.dumps(no_code).encode(),
        b"",  # blank lines are not records
        b'["not", "an", "object"]',
        b'{"code": "3017620422003", "product_name": "\xff\xfe"}',  # not UTF-8
    ]
    return lines


def write(path: Path, lines: list[bytes]) -> Path:
    data = b"\n".join(lines) + b"\n"
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", ["dump.jsonl.gz", "dump.jsonl"])
async def test_jsonl_loads_good_lines_and_counts_bad_ones_by_reason(
    db: asyncpg.Pool,
    etl_settings: EtlSettings,
    sample_records: dict[str, Any],
    tmp_path: Path,
    name: str,
) -> None:
    path = write(tmp_path / name, dump_lines(sample_records))

    summary = await run_etl(etl_settings, "jsonl", file=path, progress=False)

    async with db.acquire() as conn:
        barcodes = {row["barcode"] for row in await conn.fetch("SELECT barcode FROM products")}
    assert barcodes == set(GOOD)
    assert summary.read == len(GOOD) + 4
    assert summary.kept == summary.inserted == len(GOOD)
    assert summary.rejected == {"bad JSON line": 2, "no code": 1, "not a JSON object": 1}
    assert summary.cleared == {"energy_100g": 1}  # the saucisson's kJ


async def test_jsonl_gzip_is_sniffed_not_guessed_from_the_name(
    db: asyncpg.Pool, etl_settings: EtlSettings, sample_records: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "renamed.jsonl"
    path.write_bytes(gzip.compress(json.dumps(sample_records["3017620422003"]).encode()))

    summary = await run_etl(etl_settings, "jsonl", file=path, progress=False)

    assert (summary.read, summary.inserted) == (1, 1)


async def test_jsonl_duplicate_barcode_in_a_batch_last_one_wins(
    db: asyncpg.Pool, etl_settings: EtlSettings, sample_records: dict[str, Any], tmp_path: Path
) -> None:
    renamed = dict(sample_records["3017620422003"], product_name="Nutella (newer)")
    path = write(
        tmp_path / "dup.jsonl",
        [
            json.dumps(sample_records["3017620422003"]).encode(),
            json.dumps(renamed).encode(),
        ],
    )

    summary = await run_etl(etl_settings, "jsonl", file=path, progress=False)

    async with db.acquire() as conn:
        name = await conn.fetchval("SELECT name FROM products WHERE barcode = '3017620422003'")
    assert (summary.read, summary.kept, summary.duplicates) == (2, 1, 1)
    assert name == "Nutella (newer)"


async def test_jsonl_truncated_gzip_fails_after_keeping_whole_batches(
    db: asyncpg.Pool, etl_settings: EtlSettings, sample_records: dict[str, Any], tmp_path: Path
) -> None:
    lines = [json.dumps(record).encode() for record in list(sample_records.values())[:300]]
    path = write(tmp_path / "cut.jsonl.gz", lines)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    with pytest.raises(ExtractError, match=r"cut\.jsonl\.gz is truncated or corrupt") as failed:
        await run_etl(etl_settings, "jsonl", file=path, progress=False, batch_size=20)

    async with db.acquire() as conn:
        rows = await conn.fetchval("SELECT count(*) FROM products")
    summary = failed.value.summary
    assert summary is not None and summary.read % 20 == 0 and 0 < summary.read < 300
    assert rows == summary.kept


def test_read_jsonl_yields_bounded_batches_and_counts_every_byte(
    sample_records: dict[str, Any], tmp_path: Path
) -> None:
    lines = [json.dumps(record).encode() for record in list(sample_records.values())[:95]]
    path = write(tmp_path / "some.jsonl.gz", lines)

    batches = list(read_jsonl(path, batch_size=20))

    assert [len(batch.records) for batch in batches] == [20, 20, 20, 20, 15]
    assert sum(batch.advance for batch in batches) == path.stat().st_size
