"""Device readings: what SSDs saw used, applied to their stock exactly once, in batches.

A reading names its SSD, a product, the units used and the device's own reading id. Readings
arrive on ssds.<id>.readings (NATS or MQTT, through the READINGS stream) or through
`POST /api/ssds/{id}/consume`; both end in `apply`, one statement for a whole batch (see
`queries.apply_readings`). A reading id seen before changes nothing (`duplicate`); a reading of an
SSD or a product the database does not know, or on a subject naming another SSD, changes nothing
either (`rejected`); each is counted, and logged at most once every LOG_EVERY_S.

When a reading leaves a product below its reorder point with no order on its way, the restock
order is placed in the same transaction as the stock update: a crash cannot separate them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from offsim_common.errors import NotFound
from offsim_common.events import SsdReading
from offsim_common.metrics import RESTOCK_ORDERS, SSD_DEMAND_UNITS, SSD_READINGS
from offsim_common.requests import ConsumeRequest

from . import queries
from .schemas import ConsumeResult

log = logging.getLogger(__name__)

APPLIED, DUPLICATE, REJECTED, MALFORMED = "applied", "duplicate", "rejected", "malformed"
# Bad readings are logged with the count since the last line, at most this often: a faulty
# fleet of devices must not flood the log.
LOG_EVERY_S = 10.0


@dataclass
class Applied:
    """What a batch did: an outcome per reading (in order), the stock rows it changed and the
    restock orders it placed."""

    outcomes: list[str]
    stock: list[dict[str, Any]] = field(default_factory=list)
    restocks: list[dict[str, Any]] = field(default_factory=list)


async def apply(conn: asyncpg.Connection, readings: list[SsdReading]) -> Applied:
    """Apply the readings (the caller owns the transaction) and count their outcomes."""
    if not readings:
        return Applied([])
    row = await queries.apply_readings(
        conn,
        [r.ssd_id for r in readings],
        [r.reading_id for r in readings],
        [r.barcode for r in readings],
        [r.quantity for r in readings],
    )
    known_keys = {(readings[n - 1].ssd_id, readings[n - 1].reading_id) for n in row["known"]}
    applied = set(row["applied"])
    outcomes = []
    for n, reading in enumerate(readings, start=1):
        if n in applied:
            outcomes.append(APPLIED)
        elif (reading.ssd_id, reading.reading_id) in known_keys:
            outcomes.append(DUPLICATE)  # seen before, or a second copy in this batch
        else:
            outcomes.append(REJECTED)  # no such SSD, or it has no such product
    return Applied(outcomes, json.loads(row["stock"]), json.loads(row["restocks"]))


async def consume(
    conn: asyncpg.Connection, ssd_id: int, body: ConsumeRequest, rng: random.Random
) -> tuple[ConsumeResult, list[SsdReading], Applied]:
    """POST /api/ssds/{id}/consume: the report as readings, applied as any reading is (the
    caller owns the transaction and has checked the SSD's owner). Without a barcode, each
    watched product loses a random 0 to `quantity` units; a product that loses none is no
    reading. The reading ids of a report without one are new each time."""
    watched = await queries.watched_barcodes(conn, ssd_id)
    base = body.reading_id or f"http-{uuid.UUID(int=rng.getrandbits(128)).hex}"
    if body.barcode is not None:
        if body.barcode not in watched:
            raise NotFound(
                f"SSD {ssd_id} does not watch {body.barcode}", {"barcode": "not watched"}
            )
        touched = [body.barcode]
        wanted = {body.barcode: body.quantity}
        ids = {body.barcode: base}
    else:
        touched = watched
        wanted = {b: units for b in watched if (units := _draw(rng, ssd_id, body, b))}
        # Each product's reading id derives from the report's, and fits ReadingId's 64
        # printable characters whatever the two hold.
        ids = {b: hashlib.blake2b(f"{base}/{b}".encode(), digest_size=16).hexdigest()
               for b in wanted}  # fmt: skip
    batch = [SsdReading(ssd_id=ssd_id, barcode=b, quantity=u, reading_id=ids[b])
             for b, u in wanted.items()]  # fmt: skip
    result = await apply(conn, batch)
    used = {row["barcode"]: row["wanted"] - row["short"] for row in result.stock}
    stock = [
        {**dict(row), "consumed": used.get(row["barcode"], 0)}
        for row in await queries.ssd_stock(conn, ssd_id, touched)
    ]
    answer = ConsumeResult.model_validate({
        "ssd_id": ssd_id,
        "stock": stock,
        "restock": result.restocks,
        "duplicate": bool(batch) and all(o == DUPLICATE for o in result.outcomes),
    })  # fmt: skip
    return answer, batch, result


def _draw(rng: random.Random, ssd_id: int, body: ConsumeRequest, barcode: str) -> int:
    """The units a report without a barcode takes from one product: a report sent again with
    its reading id draws the same (so it is recognised, product by product, as applied)."""
    if body.reading_id is not None:
        rng = random.Random(f"{ssd_id}/{body.reading_id}/{barcode}")
    return rng.randint(0, body.quantity)


def count(result: Applied) -> None:
    """The batch's figures, once it committed."""
    for outcome in (APPLIED, DUPLICATE, REJECTED):
        if n := result.outcomes.count(outcome):
            SSD_READINGS.labels(outcome).inc(n)
    short = sum(row["short"] for row in result.stock)
    met = sum(row["wanted"] for row in result.stock) - short
    if met:
        SSD_DEMAND_UNITS.labels("met").inc(met)
    if short:
        SSD_DEMAND_UNITS.labels("short").inc(short)
    if result.restocks:
        RESTOCK_ORDERS.inc(len(result.restocks))


class RateLimitedLog:
    """One warning per kind of problem every `every_s`, with how many were not logged."""

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def warn(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -self.every_s) < self.every_s:
            self._quiet[kind] = self._quiet.get(kind, 0) + 1
            return
        self._last[kind] = now
        quiet = self._quiet.pop(kind, 0)
        suffix = f" ({quiet} more since the last such line)" if quiet else ""
        log.warning(message + suffix, *args)


BAD_READINGS = RateLimitedLog()


def report(readings: list[SsdReading], result: Applied) -> None:
    """Log what a committed batch did: each restock order, and (rate-limited) the readings it
    rejected or found repeated."""
    for order in result.restocks:
        log.debug("SSD %s: %s below its reorder point; restock order %s for %s",
                 order["ssd_id"], order["barcode"], order["order_id"],
                 order["quantity"])  # fmt: skip
    for reading, outcome in zip(readings, result.outcomes, strict=True):
        if outcome == REJECTED:
            BAD_READINGS.warn(REJECTED, "reading %s of SSD %s rejected: no such SSD, or it has "
                              "no product %s", reading.reading_id, reading.ssd_id,
                              reading.barcode)  # fmt: skip
        elif outcome == DUPLICATE:
            BAD_READINGS.warn(DUPLICATE, "reading %s of SSD %s was applied before; ignored",
                              reading.reading_id, reading.ssd_id)  # fmt: skip
