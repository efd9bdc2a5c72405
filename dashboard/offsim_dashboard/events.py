"""From NATS to the browsers: one set of stream watchers fanned out to every SSE client.

The dashboard only watches, so it follows the streams with ordered ephemeral consumers
(`bus.watch`: nothing durable, nothing acked, a re-publish the stream de-duplicated shown
once): an event published while it is down is simply not shown, and the page's periodic
snapshot puts the counts right. Each browser has its own bounded queue; when a client reads too
slowly its oldest events are dropped, so one slow client never holds up the others or NATS."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from offsim_common import bus, subjects
from offsim_common.events import OrderEvent, UserRegistered
from offsim_common.products import ProductNames
from pydantic import ValidationError

log = logging.getLogger(__name__)

ORDER_SUBJECTS = subjects.ORDERS_STREAM_SUBJECTS
QUEUE_SIZE = 256

# Put on a client's queue when the server shuts down: the stream ends.
CLOSE = b""


def sse_frame(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event. The JSON is on one line, so one `data:` field carries it."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class EventHub:
    """Fans frames out to the connected clients; `publish` never waits."""

    def __init__(self, queue_size: int = QUEUE_SIZE) -> None:
        self.queue_size = queue_size
        self.clients: set[asyncio.Queue[bytes]] = set()
        self.dropped = 0
        self.closed = False

    @contextmanager
    def client(self) -> Iterator[asyncio.Queue[bytes]]:
        """A queue receiving every frame published while the block runs."""
        queue: asyncio.Queue[bytes] = asyncio.Queue(self.queue_size)
        if self.closed:
            queue.put_nowait(CLOSE)
        self.clients.add(queue)
        try:
            yield queue
        finally:
            self.clients.discard(queue)

    def publish(self, frame: bytes) -> None:
        for queue in self.clients:
            self._put(queue, frame)

    def close(self) -> None:
        """End every stream (server shutdown): aiohttp waits for open handlers otherwise."""
        self.closed = True
        self.publish(CLOSE)

    def _put(self, queue: asyncio.Queue[bytes], frame: bytes) -> None:
        if queue.full():
            queue.get_nowait()  # drop the oldest: a slow reader loses history, not liveness
            self.dropped += 1
        queue.put_nowait(frame)


async def order_frame(data: bytes, names: ProductNames) -> bytes:
    event = OrderEvent.model_validate_json(data)
    return sse_frame(
        "order",
        {
            "id": event.id,
            "ssd_id": event.ssd_id,
            "barcode": event.barcode,
            "product_name": await names.get(event.barcode),
            "quantity": event.quantity,
            "status": event.status.value,
            "timestamp": event.timestamp.isoformat(),
        },
    )


async def user_frame(data: bytes) -> bytes:
    user = UserRegistered.model_validate_json(data)
    # No email on a page anyone on the network may open.
    return sse_frame(
        "user",
        {
            "id": user.id,
            "first_name": user.first_name,
            "last_name": user.last_name,
            "devices": len(user.devices),
        },
    )


async def subscribe(nc: Client, hub: EventHub, pool: asyncpg.Pool) -> list[Subscription]:
    """Follow the streams, publishing each event to the hub as an SSE frame."""
    names = ProductNames(pool)

    def forward(to_frame: Callable[[bytes], Awaitable[bytes]]):
        async def handle(msg: Msg) -> None:
            try:
                frame = await to_frame(msg.data)
            except ValidationError as exc:
                log.warning(
                    "ignoring invalid message on %s: %s", msg.subject, exc.errors(include_url=False)
                )
                return
            hub.publish(frame)

        return handle

    js = nc.jetstream()
    subs = await bus.watch(js, list(ORDER_SUBJECTS), forward(lambda data: order_frame(data, names)))
    subs += await bus.watch(js, [subjects.USERS_REGISTERED], forward(user_frame))
    return subs


async def stream(queue: asyncio.Queue[bytes], keepalive_s: float) -> AsyncIterator[bytes]:
    """The frames of one client, with a comment line whenever nothing happened for a while (so
    proxies keep the connection and a dead client is noticed), until the hub closes."""
    while True:
        try:
            frame = await asyncio.wait_for(queue.get(), timeout=keepalive_s)
        except TimeoutError:
            yield b": keep-alive\n\n"
            continue
        if frame == CLOSE:
            return
        yield frame
