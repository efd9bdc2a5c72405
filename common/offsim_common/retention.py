"""Retention's one loop: each owner deletes what it no longer needs in bounded batches, in the
background, so that a week of a city keeps tables the size of what is kept, not of history.

A batch is one short statement (BATCH rows at most): it holds its row locks and its share of
the WAL briefly, and never stalls the writes around it the way one large DELETE would. A full
batch is followed at once by the next (a backlog, after a long stop, is worked off); a partial
one means caught up, and the loop sleeps EVERY_S. Every replica runs the loop: the batches
lock their rows with SKIP LOCKED (or delete rows no one else writes), so two replicas share
the work and delete each row once.

What each owner deletes, and why that is safe, is in docs/retention.md: finished orders
(orders service), reading ids past their horizon and old demand buckets (users service).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import Counter

from . import tracing

log = logging.getLogger(__name__)

# Rows a statement deletes at most: a few tens of milliseconds of work (docs/retention.md).
BATCH = 5000
# Real seconds between two rounds once caught up.
EVERY_S = 30.0

RETENTION_DELETED = Counter(
    "offsim_retention_deleted_total",
    "Rows deleted by retention, by table (product_orders, ssd_readings, ssd_demand)",
    ["table"],
)

# Deletes at most `batch` rows and returns how many it deleted.
Prune = Callable[[int], Awaitable[int]]


async def prune_all(prune: Prune, batch: int = BATCH) -> int:
    """Batch after batch while each was full; the number of rows deleted."""
    total = 0
    while True:
        deleted = await prune(batch)
        total += deleted
        if deleted < batch:
            return total


async def prune_forever(prunes: dict[str, Prune], every_s: float = EVERY_S) -> None:
    """Every `every_s` seconds, each of `prunes` (by the table it deletes from) until caught
    up. A failure (Postgres away) is logged and the next round tries again: rows left behind
    are deleted later."""
    while True:
        for table, prune in prunes.items():
            try:
                with tracing.untraced():
                    deleted = await prune_all(_counted(table, prune))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("retention of %s failed: %r", table, exc)
                continue
            if deleted:
                log.info("retention: %d rows of %s deleted", deleted, table)
        await asyncio.sleep(every_s)


def _counted(table: str, prune: Prune) -> Prune:
    """`prune`, each batch counted as it commits (a round that fails half-way counts its
    committed batches)."""
    deleted_rows = RETENTION_DELETED.labels(table)

    async def counted(batch: int) -> int:
        deleted = await prune(batch)
        deleted_rows.inc(deleted)
        return deleted

    return counted
