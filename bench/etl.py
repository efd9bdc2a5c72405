"""ETL throughput on a real (embedded) Postgres: records per second for

- the bundled sample, cold (empty tables) and re-run (every row unchanged);
- a JSONL dump of ~10k records (the sample ten times, each copy under its own barcodes so the
  cold run really inserts 10k rows), cold and re-run.

Run: .venv/bin/python bench/etl.py [--repeat N] [--json]
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
import time
from pathlib import Path

import asyncpg
from offsim_common.config import Settings
from offsim_common.migrate import migrate
from offsim_etl import EtlSummary, run_etl, sample_path
from offsim_launcher.embedded import ensure_database, start_postgres

COPIES = 10


def write_scaled_dump(path: Path, copies: int = COPIES) -> int:
    """The sample `copies` times; copy k prefixes every barcode with the digit k."""
    with gzip.open(sample_path(), "rb") as src:
        records = [json.loads(line) for line in src]
    written = 0
    with gzip.open(path, "wb", compresslevel=6) as out:
        for copy in range(copies):
            for record in records:
                out.write(json.dumps({**record, "code": f"{copy}{record['code']}"}).encode())
                out.write(b"\n")
                written += 1
    return written


async def truncate(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE products, brands, product_brands, etl_positions CASCADE")
    finally:
        await conn.close()


async def timed(settings: Settings, source: str, file: Path | None, cold: bool) -> EtlSummary:
    if cold:
        await truncate(settings.database_url)
    started = time.perf_counter()
    summary = await run_etl(settings, source, file=file, progress=False)
    summary.seconds = time.perf_counter() - started  # wall time, connection included
    return summary


async def bench(dsn: str, dump: Path, repeat: int) -> list[dict[str, object]]:
    settings = Settings(database_url=dsn)
    results = []
    for label, source, file in (("sample", "sample", None), ("jsonl 10k", "jsonl", dump)):
        for phase in ("cold", "re-run"):
            runs = []
            for _ in range(repeat):
                if phase == "re-run":
                    await timed(settings, source, file, cold=True)  # fill, untimed
                runs.append(await timed(settings, source, file, cold=phase == "cold"))
            seconds = statistics.median(run.seconds for run in runs)
            last = runs[-1]
            results.append(
                {
                    "run": f"{label} {phase}",
                    "records": last.read,
                    "seconds": round(seconds, 3),
                    "records_per_s": round(last.read / seconds),
                    "inserted": last.inserted,
                    "updated": last.updated,
                    "unchanged": last.unchanged,
                }
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="offsim-bench-etl-") as tmp:
        dump = Path(tmp) / "sample-x10.jsonl.gz"
        records = write_scaled_dump(dump)
        server = start_postgres(Path(tmp) / "pg" / "data")
        try:
            dsn = asyncio.run(ensure_database(server, "offsim_bench"))
            asyncio.run(migrate(dsn))
            results = asyncio.run(bench(dsn, dump, args.repeat))
        finally:
            server.cleanup()

    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    if args.json:
        print(json.dumps({"machine": machine, "dump_records": records, "results": results}))
        return
    print(f"offsim-etl bench ({machine}; median of {args.repeat})")
    print(f"{'run':<18}{'records':>8}{'seconds':>9}{'rec/s':>8}  inserted/updated/unchanged")
    for row in results:
        print(
            f"{row['run']:<18}{row['records']:>8}{row['seconds']:>9.2f}"
            f"{row['records_per_s']:>8}  {row['inserted']}/{row['updated']}/{row['unchanged']}"
        )


if __name__ == "__main__":
    main()
