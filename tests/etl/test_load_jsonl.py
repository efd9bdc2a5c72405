"""--source jsonl: OFF dump lines, gzip or plain, bad lines counted and skipped."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from offsim_etl import ExtractError, extract_jsonl, run_etl, sample_path
from offsim_etl.extract_jsonl import decode_full, decode_lines, read_jsonl
from offsim_etl.settings import EtlSettings
from offsim_etl.transform import transform

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

    assert [len(batch.records.splitlines()) for batch in batches] == [20, 20, 20, 20, 15]
    assert b"".join(batch.records for batch in batches) == b"\n".join(lines) + b"\n"
    assert sum(batch.advance for batch in batches) == path.stat().st_size


@pytest.mark.parametrize(("read_size", "inflate_limit"), [(7, 5), (64, 1 << 20), (1 << 20, 100)])
def test_read_jsonl_inflates_every_gzip_member_in_any_chunking(
    monkeypatch: pytest.MonkeyPatch,
    sample_records: dict[str, Any],
    tmp_path: Path,
    read_size: int,
    inflate_limit: int,
) -> None:
    monkeypatch.setattr(extract_jsonl, "_READ_SIZE", read_size)
    monkeypatch.setattr(extract_jsonl, "_INFLATE_LIMIT", inflate_limit)
    lines = [json.dumps(record).encode() for record in list(sample_records.values())[:30]]
    data = b"\n".join(lines) + b"\n"
    # Three members (as `cat a.gz b.gz` makes), zero padding between two of them.
    path = tmp_path / "members.jsonl.gz"
    path.write_bytes(
        gzip.compress(data[:1000]) + b"\0\0" + gzip.compress(data[1000:5000])
        + gzip.compress(data[5000:])
    )  # fmt: skip

    batches = list(read_jsonl(path, batch_size=7))

    assert b"".join(batch.records for batch in batches) == data
    assert [len(batch.records.splitlines()) for batch in batches] == [7, 7, 7, 7, 2]


def test_read_jsonl_garbage_after_a_gzip_member_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "tail.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"code": "1"}\n') + b"not gzip")

    with pytest.raises(ExtractError, match=r"tail\.jsonl\.gz is truncated or corrupt"):
        list(read_jsonl(path))


# Lines the fast field reader must read exactly as orjson (then json) reads them, or hand over.
TRICKY = [
    b'{"code": "3017620422003", "product_name": "Nutella", "code": "3017620422004"}',
    b'{"code": 123456789012345678901234567890, "product_name": "huge code"}',
    b'{"code": -9223372036854775809, "product_name": "below int64"}',
    b'{"code": 18446744073709551615, "product_name": "u64 max"}',
    b'{"code": "3017620422003", "product_name": "x", "other": "\xc0\xaf"}',  # bad UTF-8
    b'{"code": "3017620422003", "product_name": "x", "other": "\xed\xa0\x80"}',
    b'{"code": "3017620422003", "product_name": "\\ud800"}',  # lone surrogate
    b'{"code": "3017620422003", "product_name": "x", "n": NaN}',
    b'{"code": "3017620422003", "product_name": "x", "n": 1e400}',
    b'{"code": "3017620422003", "product_name": 1e400}',
    b'\xef\xbb\xbf{"code": "3017620422003", "product_name": "BOM"}',
    b'{"code": "3017620422003", "product_name": "x", "deep": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    b'{"code": "3017620422003", "product_name": "  ", "product_name_fr": "Pate a tartiner"}',
    b'{"code": "3017620422003", "product_name": "\\u0000", "generic_name": "Spread"}',
    b'{"code": "3017620422003", "product\\u005fname": "escaped key", "nova_group": "4"}',
    b'{"code": "3017620422003", "product_name": "x", "nutriments": {"energy-kcal_100g": 5,'
    b' "energy-kcal_100g": 1766}}',
    b'["not", "an", "object"]',
    b'{"code": "3017620422003", "product_name": "x"} trailing',
    b'{"code": "3017620422003", "product_name": "tab\tinside"}',
]


@pytest.mark.parametrize("line", TRICKY)
def test_decode_lines_maps_tricky_lines_like_the_full_decoder(line: bytes) -> None:
    (fast,) = decode_lines(line + b"\n")

    assert transform(fast) == transform(decode_full(line))


def test_decode_lines_maps_every_sample_record_like_the_full_decoder() -> None:
    with gzip.open(sample_path(), "rb") as src:
        lines = src.read().splitlines()

    fast = list(decode_lines(b"\n".join(lines)))

    assert len(fast) == len(lines) > 1000
    for line, record in zip(lines, fast, strict=True):
        assert transform(record) == transform(decode_full(line))
