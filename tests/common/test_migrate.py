"""Migrations: versioned, idempotent, safe from two places at once."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from offsim_common.migrate import migrate, migration_files


async def test_migrate_twice_at_once_applies_each_file_once(database_url):
    name = f"migrate_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))
    try:
        first, second = await asyncio.gather(migrate(dsn), migrate(dsn))
        names = [file_name for _, file_name, _ in migration_files()]
        assert sorted(first + second) == sorted(names)  # each applied by exactly one runner
        assert await migrate(dsn) == []
        conn = await asyncpg.connect(dsn)
        try:
            recorded = await conn.fetch("SELECT name FROM schema_migrations ORDER BY version")
        finally:
            await conn.close()
        assert [r["name"] for r in recorded] == names
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
