"""Placing an order and announcing it: the logic behind POST /api/orders.

The order is committed first, then published on orders.pending with a de-duplication id.
Concurrent orders are committed together (group commit: one statement, which also checks the
SSD's owner and the product, for a whole batch), requests with an Idempotency-Key too (their
keys locked, looked up and their answers recorded in the batch's transaction). Once a batch is
committed its new orders are published all at once and their acks awaited together, while the
next batch commits; each request is answered with its own order, replay or error after that.
If a publish fails (NATS down), the row keeps `published_at IS NULL` and the re-publisher sends
it later, so no order is ever stuck in pending as in the original. No pooled connection is held
while waiting on NATS: a slow or absent NATS never starves the pool.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from nats.aio.client import Client
from nats.js import JetStreamContext
from offsim_common import bus, idempotency, subjects, tracing
from offsim_common.db import is_unavailable
from offsim_common.errors import Conflict, DomainError, Forbidden, NotFound
from offsim_common.events import OrderEvent, OrderStatus
from offsim_common.logs import REQUEST_ID_HEADER, request_id
from offsim_common.metrics import BATCH_SIZE, ORDER_TRANSITIONS
from offsim_common.requests import OrderRequest

from . import queries
from .group_commit import GroupCommit

log = logging.getLogger(__name__)

REPUBLISH_AFTER_S = 5.0
# Marks wait this long to share one UPDATE with the marks that follow: under light load one a
# batch would cost a round trip per order. Far below REPUBLISH_AFTER_S, so no order is
# re-published for want of its mark.
MARK_AFTER_S = 0.1


def pending_event(row: Mapping) -> OrderEvent:
    return OrderEvent(
        id=row["id"],
        ssd_id=row["ssd_id"],
        barcode=row["barcode"],
        quantity=row["quantity"],
        status=OrderStatus.PENDING,
        timestamp=row["created_at"],
        created_at=row["created_at"],
    )


@dataclass(frozen=True, slots=True)
class Placement:
    """An order to place, with who asks (a user, or None for the service credential) and the
    request's Idempotency-Key, if any."""

    order: OrderRequest
    caller: int | None
    request_id: str | None
    key: idempotency.Key | None = None


@dataclass(slots=True)
class Placed:
    """The answer to a placement: a new order's 201 (`order` set, to announce unless
    `announced`), or the first answer replayed for its Idempotency-Key (`order` None)."""

    status: int
    body: bytes
    order: dict[str, Any] | None = None
    announced: bool = False


def created(order: dict[str, Any]) -> Placed:
    """201 with the order, written as its model would write it (UTC times end in Z), without
    building the model: this is the hot path."""
    return Placed(201, orjson.dumps(order, option=orjson.OPT_UTC_Z), order)


def _outcome(placement: Placement, row: asyncpg.Record) -> dict[str, Any] | DomainError:
    """The placed order, or the error to answer, in the order the checks were always made: the
    SSD (404, 403), the product (404), an open restock order (409)."""
    order = placement.order
    if row["owner"] is None:
        return NotFound(f"SSD {order.ssd_id} not found", {"ssd_id": "unknown SSD"})
    if placement.caller is not None and placement.caller != row["owner"]:
        return Forbidden(
            f"this token cannot act for SSD {order.ssd_id}", {"ssd_id": "another user's SSD"}
        )
    if not row["product_known"]:
        return NotFound(f"product {order.barcode} not found", {"barcode": "unknown product"})
    if row["id"] is None:  # only restock orders are one open at a time
        return Conflict(
            f"SSD {order.ssd_id} already has an open restock order for {order.barcode}",
            {"barcode": "a restock order for this product is already open"},
        )
    return {
        "id": row["id"],
        "ssd_id": order.ssd_id,
        "barcode": order.barcode,
        "quantity": order.quantity,
        "kind": order.kind.value,
        "status": row["status"],
        "created_at": row["created_at"],
    }


async def _insert(
    conn: asyncpg.Connection, placements: list[Placement]
) -> list[dict[str, Any] | DomainError]:
    if not placements:
        return []
    rows = await queries.insert_orders(
        conn,
        [p.order.ssd_id for p in placements],
        [p.order.barcode for p in placements],
        [p.order.quantity for p in placements],
        [p.order.kind.value for p in placements],
        [p.request_id for p in placements],
        [p.caller for p in placements],
    )
    return [_outcome(p, row) for p, row in zip(placements, rows, strict=True)]


async def insert_batch(pool: asyncpg.Pool, placements: list[Placement]) -> list[Placed | Exception]:
    """Store a batch of orders, which commit all at once (group commit, see group_commit.py):
    without Idempotency-Keys in one statement, else in one transaction that also locks, looks
    up and records the keys. Should a statement fail as a whole (a value the database refuses),
    each order is tried alone, so only the bad one fails."""
    keyed = any(p.key is not None for p in placements)
    async with pool.acquire() as conn:
        try:
            if not keyed:
                return [_placed(r) for r in await _insert(conn, placements)]
            async with conn.transaction():
                return await _place_keyed(conn, placements)
        except asyncpg.PostgresError as exc:
            if len(placements) == 1 or is_unavailable(exc):
                raise
        results: list[Placed | Exception] = []
        for placement in placements:
            try:
                async with conn.transaction():
                    results.extend(await _place_keyed(conn, [placement]))
            except asyncpg.PostgresError as exc:
                results.append(exc)
        return results


def _placed(outcome: dict[str, Any] | DomainError) -> Placed | DomainError:
    return outcome if isinstance(outcome, DomainError) else created(outcome)


async def _place_keyed(
    conn: asyncpg.Connection, placements: list[Placement]
) -> list[Placed | Exception]:
    """Inside the batch's transaction, the idempotency protocol for every keyed placement at
    once: lock the keys (a key held elsewhere, or twice in this batch, is a 409 as a retry while
    the first is in progress), replay the answers recorded under them (or a 422 for another
    request), insert the rest, and record the new orders' answers with them."""
    results: list[Placed | Exception | None] = [None] * len(placements)
    held: list[tuple[int, idempotency.Key]] = []
    seen: set[tuple[str, str]] = set()
    for i, placement in enumerate(placements):
        if (key := placement.key) is not None:
            if (key.scope, key.key) in seen:
                results[i] = idempotency.in_progress()
            else:
                seen.add((key.scope, key.key))
                held.append((i, key))
    locked = await idempotency.lock_many(conn, [key for _, key in held])
    for (i, _), ok in zip(held, locked, strict=True):
        if not ok:
            results[i] = idempotency.in_progress()
    held = [(i, key) for (i, key), ok in zip(held, locked, strict=True) if ok]
    rows = await idempotency.recorded_many(conn, [key for _, key in held])
    for (i, key), row in zip(held, rows, strict=True):
        if row is not None:
            try:
                results[i] = Placed(*idempotency.recorded_answer(key, row))
            except DomainError as exc:
                results[i] = exc
    fresh = [i for i, result in enumerate(results) if result is None]
    answers = []
    outcomes = await _insert(conn, [placements[i] for i in fresh])
    for i, outcome in zip(fresh, outcomes, strict=True):
        results[i] = placed = _placed(outcome)
        if isinstance(placed, Placed) and (key := placements[i].key) is not None:
            answers.append((key, placed.status, placed.body))
    await idempotency.record_many(conn, answers)
    return results  # type: ignore[return-value]  # every slot is filled by now


def order_placer(
    pool: asyncpg.Pool, nc: Client, js: JetStreamContext, marks: PublishedMarks
) -> GroupCommit[Placement, Placed]:
    async def announce(
        placements: list[Placement], results: list[Placed | Exception]
    ) -> list[Placed | Exception]:
        await announce_batch(nc, js, marks, placements, results)
        return results

    return GroupCommit(
        lambda placements: insert_batch(pool, placements),
        after=announce,
        observe=BATCH_SIZE.labels("orders_placed").observe,
    )


class PublishedMarks:
    """Orders whose orders.pending the stream acknowledged, marked published in one UPDATE for
    all those acknowledged meanwhile, not one round trip each. A mark lost (a crash, the
    database away) only lets the re-publisher announce the order again, which the stream drops
    as a duplicate."""

    def __init__(self, pool: asyncpg.Pool, turns: asyncio.Lock | None = None) -> None:
        self._pool = pool
        self._turns = turns or asyncio.Lock()  # see app_keys.ROW_TURNS
        self._ids: list[int] = []
        self._task: asyncio.Task | None = None

    def add(self, order_id: int) -> None:
        self._ids.append(order_id)
        if self._task is None:
            self._task = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(MARK_AFTER_S)
            while self._ids:
                ids, self._ids = self._ids, []
                try:
                    async with self._turns, self._pool.acquire() as conn:
                        await queries.mark_published(conn, ids)
                except Exception as exc:  # published all the same; a re-publish is de-duplicated
                    log.warning("%d orders published but not marked so: %r", len(ids), exc)
        finally:
            self._task = None

    async def close(self) -> None:
        if self._task is not None:
            await self._task


async def announce_order(
    nc: Client, js: JetStreamContext, marks: PublishedMarks, order: Mapping
) -> None:
    """Publish a committed order on orders.pending and wait for the stream's ack; then it counts
    as announced (its mark is written with others'). A failure leaves it to the re-publisher;
    no connection is held while publishing."""
    ORDER_TRANSITIONS.labels(OrderStatus.PENDING.value).inc()
    tracing.annotate({"offsim.order.id": order["id"]})
    event = pending_event(order)
    try:
        await bus.announce(nc, js, subjects.ORDERS_PENDING, event, event.msg_id)
    except Exception as exc:  # the order stands; the re-publisher will announce it
        log.warning("order %s saved but not yet published: %r", order["id"], exc)
        return
    marks.add(order["id"])


async def announce_batch(
    nc: Client,
    js: JetStreamContext,
    marks: PublishedMarks,
    placements: list[Placement],
    results: list[Placed | Exception],
) -> None:
    """Publish a committed batch's new orders together and await their acks together; each
    acked one counts as announced (its mark is written with others'), the others are left to
    the re-publisher. With tracing on, each request announces its own order instead, in its
    own span (see `announce_order`)."""
    if tracing.enabled():
        return
    new = [
        (placement, result)
        for placement, result in zip(placements, results, strict=True)
        if isinstance(result, Placed) and result.order is not None
    ]
    if not new:
        return
    ORDER_TRANSITIONS.labels(OrderStatus.PENDING.value).inc(len(new))
    messages = []
    for placement, placed in new:
        event = pending_event(placed.order)
        headers = {"Nats-Msg-Id": event.msg_id}
        if placement.request_id:
            headers[REQUEST_ID_HEADER] = placement.request_id
        messages.append((event.model_dump_json().encode(), headers))
        placed.announced = True
    outcomes = await bus.publish_many(nc, js, subjects.ORDERS_PENDING, messages)
    failed = 0
    for (_, placed), outcome in zip(new, outcomes, strict=True):
        if outcome is None:
            marks.add(placed.order["id"])
        else:
            failed += 1
    if failed:  # the orders stand; the re-publisher will announce them
        log.warning("%d orders saved but not yet published: %r", failed,
                    next(o for o in outcomes if o is not None))  # fmt: skip


# How long a replica's claim on unpublished orders lasts: it publishes them within it.
CLAIM_S = 30.0


async def republish_once(pool: asyncpg.Pool, js: JetStreamContext) -> int:
    """Announce the orders whose publish failed; return how many were announced. Replicas share
    the work by claiming rows for CLAIM_S; no connection is held while publishing."""
    async with pool.acquire() as conn:
        rows = await queries.claim_unpublished(conn, REPUBLISH_AFTER_S, CLAIM_S)
    published = []
    try:
        for row in rows:
            event = pending_event(row)
            token = request_id.set(row["request_id"])  # the placing request's
            try:
                await bus.publish(js, subjects.ORDERS_PENDING, event, event.msg_id)
            finally:
                request_id.reset(token)
            published.append(row["id"])
            log.info("order %s re-published", row["id"])
    finally:
        if published:
            async with pool.acquire() as conn:
                await queries.mark_published(conn, published)
    return len(published)


async def republish_forever(pool: asyncpg.Pool, js: JetStreamContext, every_s: float = 5.0) -> None:
    """Announce orders whose publish failed, every `every_s` seconds; forget expired
    idempotency keys on the way. The poll itself is not traced; each re-publish is a trace of
    its own."""
    while True:
        try:
            with tracing.untraced():
                await republish_once(pool, js)
                async with pool.acquire() as conn:
                    await idempotency.purge_expired(conn)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("re-publishing pending orders failed: %r", exc)
        await asyncio.sleep(every_s)
