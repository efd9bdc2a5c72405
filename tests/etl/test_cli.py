"""`offsim-etl` as a user runs it: help, a JSON summary, and one-line failures."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from offsim_etl import DatabaseError, run_etl
from offsim_etl.load import RUN_LOCK
from offsim_etl.settings import EtlSettings

ETL = str(Path(sys.executable).parent / "offsim-etl")
UNMIGRATED = "offsim_etl_unmigrated"


async def offsim_etl(*args: str, database_url: str) -> tuple[int, str, str]:
    env = {**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING"}
    process = await asyncio.create_subprocess_exec(
        ETL, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
async def unmigrated_url(database_url: str) -> AsyncIterator[str]:
    """An empty database on the same server."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{UNMIGRATED}"')
        await conn.execute(f'CREATE DATABASE "{UNMIGRATED}"')
        yield urlunsplit(urlsplit(database_url)._replace(path=f"/{UNMIGRATED}"))
        await conn.execute(f'DROP DATABASE "{UNMIGRATED}"')
    finally:
        await conn.close()


async def test_cli_help_documents_sources_options_and_environment(database_url: str) -> None:
    code, out, _ = await offsim_etl("--help", database_url=database_url)

    assert code == 0
    for text in (
        "--source {sample,api,jsonl,parquet}",
        "--file",
        "--strict",
        "--query",
        "--page-size",
        "--max-pages",
        "--restart",
        "--retries",
        "--backoff",
        "--quiet",
        "--json",
        "--metrics-port",
        "DATABASE_URL",
        "OFF_API_URL",
        "OFF_SEARCH_RATE",
        "/api/v2/search",
    ):
        assert text in out


async def test_cli_sample_prints_a_json_summary(db: asyncpg.Pool, database_url: str) -> None:
    code, out, err = await offsim_etl("--quiet", "--json", database_url=database_url)

    summary = json.loads(out)
    assert code == 0, err
    assert (summary["read"], summary["kept"], summary["inserted"]) == (1049, 1026, 1026)
    assert summary["rejected"] == {"no name": 14, "implausible barcode": 9}


async def test_cli_unreachable_database_exits_with_one_line(database_url: str) -> None:
    code, out, err = await offsim_etl(database_url="postgresql://offsim:secret@127.0.0.1:1/offsim")

    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("offsim-etl: cannot connect to the database at")
    assert "secret" not in err


async def test_cli_unmigrated_database_says_to_migrate(unmigrated_url: str) -> None:
    code, _, err = await offsim_etl(database_url=unmigrated_url)

    assert code == 1
    assert err.count("\n") == 1
    assert "run `offsim migrate` first" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "jsonl"], "--source jsonl needs --file PATH"),
        (["--file", "x.jsonl"], "--file goes with --source jsonl"),
        (["--query", "chocolates"], "--query goes with --source api"),
        (["--source", "api", "--page-size", "5000"], "must be <= 1000"),
    ],
)
async def test_cli_bad_arguments_exit_2(database_url: str, args: list[str], message: str) -> None:
    code, _, err = await offsim_etl(*args, database_url=database_url)

    assert code == 2
    assert message in err


async def test_second_concurrent_run_is_refused(
    db: asyncpg.Pool, etl_settings: EtlSettings
) -> None:
    async with db.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", RUN_LOCK)
        try:
            with pytest.raises(DatabaseError, match="another offsim-etl run"):
                await run_etl(etl_settings, progress=False)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", RUN_LOCK)


async def test_etl_counts_records_in_its_prometheus_metric(
    db: asyncpg.Pool, etl_settings: EtlSettings
) -> None:
    """What `--metrics-port` serves: offsim_etl_records_total moves with the run's summary."""
    from offsim_common.metrics import ETL_RECORDS

    def count(outcome: str) -> float:
        return ETL_RECORDS.labels("sample", outcome)._value.get()

    before = {outcome: count(outcome) for outcome in ("inserted", "unchanged", "rejected")}
    first = await run_etl(etl_settings, "sample", progress=False)
    second = await run_etl(etl_settings, "sample", progress=False)

    assert count("inserted") - before["inserted"] == first.inserted == 1026
    assert count("unchanged") - before["unchanged"] == second.unchanged == 1026
    assert count("rejected") - before["rejected"] == 2 * first.rejected_total
