"""Product names for displays of order events, which carry only barcodes."""

from __future__ import annotations

import logging

import asyncpg

log = logging.getLogger(__name__)


class ProductNames:
    """Looks each barcode up once (a miss too), in a bounded cache."""

    def __init__(self, pool: asyncpg.Pool, size: int = 10_000) -> None:
        self.pool = pool
        self.size = size
        self.names: dict[str, str | None] = {}

    async def get(self, barcode: str) -> str | None:
        if barcode not in self.names:
            try:
                async with self.pool.acquire(timeout=2) as conn:
                    name = await conn.fetchval(
                        "SELECT name FROM products WHERE barcode = $1", barcode
                    )
            except Exception as exc:  # a name is a nicety: show the event without it
                log.warning("product name of %s not found: %s", barcode, exc)
                return None
            if len(self.names) >= self.size:
                self.names.clear()
            self.names[barcode] = name
        return self.names[barcode]
