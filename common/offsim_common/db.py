"""The database pool every service opens the same way, and what counts as the database being
unavailable (a 503 with Retry-After, never a 500)."""

from __future__ import annotations

import asyncpg

# A connection attempt that has not finished by then is a database that does not answer: an
# HTTP request is answered 503 within its deadline rather than waiting out the OS's TCP timeout.
CONNECT_TIMEOUT_S = 1.0

# Failures that mean "the database is not there right now", not "this request is wrong".
_UNAVAILABLE = (
    OSError,  # refused, reset, unreachable, name not resolved
    TimeoutError,
    asyncpg.PostgresConnectionError,  # class 08: the connection failed or was lost
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutting down, starting up
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections
)


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc` says the database cannot be reached, as opposed to a refused query."""
    if isinstance(exc, _UNAVAILABLE):
        return True
    # asyncpg's own word for a connection (or the pool) that was closed under the caller.
    return isinstance(exc, asyncpg.InterfaceError) and "clos" in str(exc)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset: offsim's services keep no session state (no SET, LISTEN or session
    advisory lock), and asyncpg still ends any open transaction itself. Its default reset query
    would cost one more round trip on every release of a connection."""


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    # A bounded pool, always used through `async with pool.acquire()`: the original leaked one
    # connection per order and died after about a hundred.
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=30,
        timeout=CONNECT_TIMEOUT_S,
        reset=_keep_session,
    )
