"""The embedded Postgres that `offsim up`, the tests and the benchmarks run."""

from __future__ import annotations

from offsim_launcher.embedded import POSTGRES_SETTINGS


async def test_embedded_postgres_runs_with_offsim_settings(pool):
    async with pool.acquire() as conn:
        for name, value in POSTGRES_SETTINGS.items():
            assert await conn.fetchval(f"SHOW {name}") == value
