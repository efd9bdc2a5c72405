"""The order counters' fold: the ledgers stay a few rows long, however long the city runs.

Triggers on product_orders (migration 014) append delta rows to `order_counts` (orders by
status: stored now, and every order ever placed) and `order_minutes` (placed and completed a
minute) in the statement that changes the orders: no counter row is shared by two writers, so
the group commit's concurrent transactions never wait for each other on one. A read sums the
rows of its key. This fold keeps those sums cheap: every few seconds it replaces each key's rows
by their sum, in one statement per ledger, and drops the minutes older than a day (the
dashboard shows two hours at most). Every replica runs it; two folds at once each take a
different share of the rows, so nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from . import queries

log = logging.getLogger(__name__)

FOLD_INTERVAL_S = 2.0
MINUTES_KEPT_S = 86_400.0


async def fold_once(pool: asyncpg.Pool) -> int:
    """Fold both ledgers once; the delta rows removed."""
    async with pool.acquire() as conn:
        counts = await queries.fold_order_counts(conn)
        minutes = await queries.fold_order_minutes(conn, MINUTES_KEPT_S)
    return counts + minutes


async def fold_forever(pool: asyncpg.Pool, interval_s: float = FOLD_INTERVAL_S) -> None:
    """fold_once every `interval_s` seconds. A failed round (Postgres away) changes nothing:
    each fold is one transaction, and the next round folds what this one left."""
    while True:
        try:
            await fold_once(pool)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("folding the order counters failed: %r", exc)
        await asyncio.sleep(interval_s)
