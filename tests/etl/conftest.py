"""ETL fixtures: the real bundled sample, settings for a run, and clean product tables.

The session `pool` fixture leaves products and brands alone (the services' tests share a few
products), so every ETL test empties the ETL's tables before and after itself.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from offsim_etl import sample_path
from offsim_etl.settings import EtlSettings

ETL_TABLES = "products, brands, product_brands, etl_positions"


@pytest.fixture(scope="session")
def sample_records() -> dict[str, dict[str, Any]]:
    """The bundled sample by barcode: real OFF objects for the transform tests."""
    with gzip.open(sample_path(), "rb") as lines:
        records = [json.loads(line) for line in lines]
    return {record["code"]: record for record in records}


@pytest.fixture
async def db(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """The pool, on empty ETL tables (and emptied again afterwards for the other suites)."""
    async with pool.acquire() as conn:
        await conn.execute(f"TRUNCATE {ETL_TABLES} CASCADE")
    yield pool
    async with pool.acquire() as conn:
        await conn.execute(f"TRUNCATE {ETL_TABLES} CASCADE")


@pytest.fixture
def etl_settings(database_url: str) -> EtlSettings:
    # The API tests point off_api_url at their local server; a high rate keeps them fast.
    return EtlSettings(database_url=database_url, off_search_rate=60_000.0)
