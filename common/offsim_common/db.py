"""The database pool every service opens the same way."""

from __future__ import annotations

import asyncpg


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset: offsim's services keep no session state (no SET, LISTEN or session
    advisory lock), and asyncpg still ends any open transaction itself. Its default reset query
    would cost one more round trip on every release of a connection."""


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    # A bounded pool, always used through `async with pool.acquire()`: the original leaked one
    # connection per order and died after about a hundred.
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, command_timeout=30, reset=_keep_session
    )
