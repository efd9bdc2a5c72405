"""Versioned SQL migrations with one owner: ``migrations/NNN_name.sql``, applied in order.

Safe to run twice or from several processes at once: a transaction-scoped advisory lock
serialises runners, and each file is recorded in ``schema_migrations`` in the transaction that
applies it.
"""

from __future__ import annotations

import logging
from importlib import resources

import asyncpg

log = logging.getLogger(__name__)

# An arbitrary constant shared by every runner (the bytes of "offsim").
_LOCK_KEY = 0x6F666673696D


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every bundled migration, in version order."""
    found = []
    for entry in resources.files("offsim_common.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


async def migrate(dsn: str) -> list[str]:
    """Apply pending migrations; return the names of those applied by this call."""
    conn = await asyncpg.connect(dsn)
    applied = []
    try:
        for version, name, sql in migration_files():
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
                await conn.execute(
                    """CREATE TABLE IF NOT EXISTS schema_migrations (
                           version integer PRIMARY KEY,
                           name text NOT NULL,
                           applied_at timestamptz NOT NULL DEFAULT now())"""
                )
                done = await conn.fetchval(
                    "SELECT 1 FROM schema_migrations WHERE version = $1", version
                )
                if done:
                    continue
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
                applied.append(name)
                log.info("applied migration %s", name)
    finally:
        await conn.close()
    return applied
