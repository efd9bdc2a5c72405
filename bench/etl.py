"""ETL throughput on a real (embedded) Postgres: records per second for

- the bundled sample, cold (empty tables) and re-run (every row unchanged);
- a JSONL dump of ~30k records (the sample thirty times, each copy under its own barcodes so the
  cold run really inserts 30k rows), cold and re-run;
- the same dump as a Parquet file in OFF's `food` export schema, cold and re-run;
- the denominator: the raw single-process rate of the same dump, gunzip + orjson + binary COPY of
  one row per document into a temporary table (no validation, no upsert), which is what one core
  can do before any of the ETL's own work. The ratio is a `jsonl cold` run over it, the two
  timed alternately.

Run: .venv/bin/python bench/etl.py [--repeat N] [--json] [--copies N]
     .venv/bin/python bench/etl.py --memory 1000000   # peak RSS while loading a 1M-line dump
It starts its own throw-away Postgres in a temporary directory (it truncates the product tables,
so it never touches DATABASE_URL). Each figure is the median of --repeat runs.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import psutil
from offsim_common.migrate import migrate
from offsim_etl import EtlSummary, run_etl, sample_path
from offsim_etl.settings import EtlSettings
from offsim_launcher.embedded import ensure_database, start_postgres

COPIES = 30
RAW_BATCH = 500


def sample_records() -> list[dict[str, Any]]:
    with gzip.open(sample_path(), "rb") as src:
        return [json.loads(line) for line in src]


def scaled_code(code: object, copy: int, width: int = 2) -> object:
    """A barcode of copy `copy` that stays as plausible (or implausible) as the original: the copy
    number in `width` digits in front of the last 14 - `width` digits of a plausible code, so a
    13-digit EAN becomes a 14-digit GTIN; implausible codes are left alone (they are rejected
    anyway)."""
    if isinstance(code, str) and code.isdigit() and 4 <= len(code) <= 14 and code.strip("0"):
        return f"{copy:0{width}d}{code[-(14 - width) :]}"
    return code


def scaled_records(records: list[dict[str, Any]], copies: int) -> Iterator[dict[str, Any]]:
    width = max(2, len(str(copies - 1)))
    for copy in range(copies):
        for record in records:
            if "code" in record:
                yield {**record, "code": scaled_code(record["code"], copy, width)}
            else:
                yield record


def write_scaled_dump(path: Path, copies: int = COPIES, compress: bool = True) -> int:
    """The sample `copies` times as a JSONL dump (gzip unless not `compress`); each copy under its
    own barcodes. Each record is serialised once, with its code first, and only the code is
    written per copy: a million lines then take a minute, not half an hour."""
    records = sample_records()
    width = max(2, len(str(copies - 1)))
    templates = []
    for record in records:
        rest = {key: value for key, value in record.items() if key != "code"}
        templates.append((record.get("code"), "code" in record, orjson.dumps(rest)[1:]))
    written = 0
    opener = gzip.open if compress else open
    with opener(path, "wb") as out:
        for copy in range(copies):
            for code, has_code, rest in templates:
                if has_code:
                    out.write(b'{"code":' + orjson.dumps(scaled_code(code, copy, width)))
                    out.write(b"," + rest if rest != b"}" else rest)
                else:
                    out.write(b"{" + rest)
                out.write(b"\n")
                written += 1
    return written


def write_scaled_parquet(path: Path, copies: int = COPIES) -> int:
    """The same records as a Parquet file in OFF's `food` export schema."""
    from offsim_etl.off_parquet import write_food_parquet

    return write_food_parquet(path, scaled_records(sample_records(), copies))


async def truncate(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE products, brands, product_brands, etl_positions CASCADE")
    finally:
        await conn.close()


async def timed(settings: EtlSettings, source: str, file: Path | None, cold: bool) -> EtlSummary:
    if cold:
        await truncate(settings.database_url)
    started = time.perf_counter()
    summary = await run_etl(settings, source, file=file, progress=False)
    summary.seconds = time.perf_counter() - started  # wall time, connection included
    return summary


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


async def raw_copy(dsn: str, dump: Path) -> tuple[int, float]:
    """The denominator: one process reads the dump, decodes each line with orjson and COPYs one
    row per document (binary, `copy_records_to_table`) into a temporary table, RAW_BATCH rows
    per transaction. No transform, no validation, no upsert."""
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    records = 0
    try:
        await conn.execute(
            "CREATE TEMP TABLE raw_products (barcode text, name text, quantity text,"
            " image_url text, categories text[])"
        )
        rows: list[tuple[Any, ...]] = []
        with gzip.open(dump, "rb") as lines:
            for line in lines:
                doc = orjson.loads(line)
                tags = doc.get("categories_tags")
                rows.append(
                    (
                        _text(doc.get("code")),
                        _text(doc.get("product_name")),
                        _text(doc.get("quantity")),
                        _text(doc.get("image_url")),
                        [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else None,
                    )
                )
                if len(rows) == RAW_BATCH:
                    await conn.copy_records_to_table("raw_products", records=rows)
                    records += len(rows)
                    rows = []
        if rows:
            await conn.copy_records_to_table("raw_products", records=rows)
            records += len(rows)
    finally:
        await conn.close()
    return records, time.perf_counter() - started


def _row(run: str, runs: list[EtlSummary]) -> dict[str, Any]:
    seconds = statistics.median(summary.seconds for summary in runs)
    last = runs[-1]
    return {
        "run": run,
        "records": last.read,
        "seconds": round(seconds, 3),
        "records_per_s": round(last.read / seconds),
        "inserted": last.inserted,
        "updated": last.updated,
        "unchanged": last.unchanged,
    }


async def bench(dsn: str, dump: Path, parquet: Path | None, repeat: int) -> dict[str, Any]:
    settings = EtlSettings(database_url=dsn)
    results = []
    k = f"{round(sum(1 for _ in gzip.open(dump)) / 1000)}k"
    sources: list[tuple[str, str, Path | None]] = [
        ("sample", "sample", None),
        (f"jsonl {k}", "jsonl", dump),
    ]
    if parquet is not None:
        sources.append((f"parquet {k}", "parquet", parquet))
    for label, source, file in sources:
        for phase in ("cold", "re-run"):
            runs = []
            for _ in range(repeat):
                if phase == "re-run":
                    await timed(settings, source, file, cold=True)  # fill, untimed
                runs.append(await timed(settings, source, file, cold=phase == "cold"))
            results.append(_row(f"{label} {phase}", runs))
    # The denominator and the ETL's cold run alternate, so that both see the same machine (a
    # shared VM's load moves within minutes); the ratio is of their medians.
    raws, colds = [], []
    for _ in range(repeat):
        raws.append(await raw_copy(dsn, dump))
        colds.append(await timed(settings, "jsonl", dump, cold=True))
    raw_seconds = statistics.median(seconds for _, seconds in raws)
    raw_rate = raws[0][0] / raw_seconds
    paired = _row(f"jsonl {k} cold, alternating with raw", colds)
    results.append(paired)
    return {
        "results": results,
        "raw": {
            "run": f"raw orjson + COPY {k}, one process",
            "records": raws[0][0],
            "seconds": round(raw_seconds, 3),
            "records_per_s": round(raw_rate),
        },
        "ratio": round(paired["records_per_s"] / raw_rate, 2),
    }


def _tree_rss(process: psutil.Process) -> int:
    total = 0
    for proc in [process, *process.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


async def memory(dsn: str, dump: Path) -> dict[str, Any]:
    """Load `dump` once, sampling the RSS of this process and its children (the parse pool)
    every 0.2 s: the peak per tenth of the run shows whether memory grows with the input."""
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    me = psutil.Process()

    def sample() -> None:
        while not stop.wait(0.2):
            samples.append((time.perf_counter(), _tree_rss(me)))

    sampler = threading.Thread(target=sample, daemon=True)
    started = time.perf_counter()
    sampler.start()
    try:
        summary = await timed(EtlSettings(database_url=dsn), "jsonl", dump, cold=True)
    finally:
        stop.set()
        sampler.join()
    span = max(time.perf_counter() - started, 1e-9)
    tenths = [0] * 10
    for at, rss in samples:
        tenth = min(int((at - started) / span * 10), 9)
        tenths[tenth] = max(tenths[tenth], rss)
    return {
        "records": summary.read,
        "kept": summary.kept,
        "seconds": round(summary.seconds, 1),
        "records_per_s": round(summary.read / summary.seconds),
        "peak_rss_mb_per_tenth": [round(rss / 2**20) for rss in tenths],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--copies", type=int, default=COPIES, help="sample copies in the dump")
    parser.add_argument("--no-parquet", action="store_true", help="skip the Parquet rows")
    parser.add_argument(
        "--memory", type=int, metavar="N", help="only load an N-line dump and report peak RSS"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="offsim-bench-etl-") as tmp:
        copies = -(-args.memory // 1049) if args.memory else args.copies
        dump = Path(tmp) / f"sample-x{copies}.jsonl.gz"
        # A million full OFF objects is ~18 GB of JSON, too slow to gzip for a memory check.
        if args.memory:
            dump = dump.with_suffix("")
        records = write_scaled_dump(dump, copies, compress=not args.memory)
        parquet = None
        if not args.memory and not args.no_parquet:
            parquet = Path(tmp) / f"sample-x{copies}.parquet"
            write_scaled_parquet(parquet, copies)
        server = start_postgres(Path(tmp) / "pg" / "data")
        try:
            dsn = asyncio.run(ensure_database(server, "offsim_bench"))
            asyncio.run(migrate(dsn))
            if args.memory:
                report: dict[str, Any] = asyncio.run(memory(dsn, dump))
            else:
                report = asyncio.run(bench(dsn, dump, parquet, args.repeat))
        finally:
            server.cleanup()

    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    if args.json:
        print(json.dumps({"machine": machine, "dump_records": records, **report}))
        return
    if args.memory:
        print(
            f"offsim-etl memory ({machine}): {report['records']} records in"
            f" {report['seconds']} s ({report['records_per_s']}/s), {report['kept']} kept"
        )
        print(f"peak RSS (MB, ETL process and its workers) per tenth of the run:"
              f" {report['peak_rss_mb_per_tenth']}")  # fmt: skip
        return
    print(f"offsim-etl bench ({machine}; median of {args.repeat})")
    print(f"{'run':<40}{'records':>8}{'seconds':>9}{'rec/s':>8}  inserted/updated/unchanged")
    for row in report["results"]:
        print(
            f"{row['run']:<40}{row['records']:>8}{row['seconds']:>9.2f}"
            f"{row['records_per_s']:>8}  {row['inserted']}/{row['updated']}/{row['unchanged']}"
        )
    raw = report["raw"]
    print(f"{raw['run']:<40}{raw['records']:>8}{raw['seconds']:>9.2f}{raw['records_per_s']:>8}")
    print(f"ratio jsonl cold (alternating) / raw: {report['ratio']:.2f}")


if __name__ == "__main__":
    main()
