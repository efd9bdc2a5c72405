"""Placing an order and announcing it: the logic behind POST /api/orders.

The order is committed first, then published on orders.pending with a de-duplication id.
Concurrent orders are committed together (group commit: one statement, which also checks the
SSD's owner and the product, for a whole batch), each request answered with its own order or
error once that batch is committed. If the publish fails (NATS down), the row keeps
`published_at IS NULL` and the re-publisher sends it later, so no order is ever stuck in pending
as in the original. No pooled connection is held
while waiting on NATS: a slow or absent NATS never starves the pool.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from nats.aio.client import Client
from nats.js import JetStreamContext
from offsim_common import bus, idempotency, subjects, tracing
from offsim_common.db import is_unavailable
from offsim_common.errors import Conflict, DomainError, Forbidden, NotFound
from offsim_common.events import OrderEvent, OrderStatus
from offsim_common.logs import request_id
from offsim_common.metrics import ORDER_TRANSITIONS
from offsim_common.requests import OrderRequest

from . import queries
from .group_commit import GroupCommit

log = logging.getLogger(__name__)

REPUBLISH_AFTER_S = 5.0


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
    """An order to place, with who asks (a user, or None for the service credential)."""

    order: OrderRequest
    caller: int | None
    request_id: str | None


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


async def insert_order(conn: asyncpg.Connection, placement: Placement) -> dict[str, Any]:
    """Store one order in the caller's transaction (an idempotent request records its answer
    in the same one), or raise the error to answer."""
    (result,) = await _insert(conn, [placement])
    if isinstance(result, DomainError):
        raise result
    return result


async def insert_batch(
    pool: asyncpg.Pool, placements: list[Placement]
) -> list[dict[str, Any] | Exception]:
    """Store a batch of orders in one statement, which commits them all at once (group commit,
    see group_commit.py). Should the statement itself fail (a value the database refuses), each
    order is tried alone, so only the bad one fails."""
    async with pool.acquire() as conn:
        try:
            return await _insert(conn, placements)
        except asyncpg.PostgresError as exc:
            if len(placements) == 1 or is_unavailable(exc):
                raise
        results: list[dict[str, Any] | Exception] = []
        for placement in placements:
            try:
                results.extend(await _insert(conn, [placement]))
            except asyncpg.PostgresError as exc:
                results.append(exc)
        return results


def order_placer(pool: asyncpg.Pool) -> GroupCommit[Placement, dict[str, Any]]:
    return GroupCommit(lambda placements: insert_batch(pool, placements))


class PublishedMarks:
    """Orders whose orders.pending the stream acknowledged, marked published in one UPDATE for
    all those acknowledged meanwhile, not one round trip each. A mark lost (a crash, the
    database away) only lets the re-publisher announce the order again, which the stream drops
    as a duplicate."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._ids: list[int] = []
        self._task: asyncio.Task | None = None

    def add(self, order_id: int) -> None:
        self._ids.append(order_id)
        if self._task is None:
            self._task = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._ids:
                ids, self._ids = self._ids, []
                try:
                    async with self._pool.acquire() as conn:
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
