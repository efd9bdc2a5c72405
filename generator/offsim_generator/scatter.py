"""The original's scatter-gather on orders.random, with replies on the request's own inbox.

The users service answers `{"ssd_id"}`, the orders service `{"barcode"}`; the original sent both
to a fixed subject, so two generators would steal each other's answers.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from nats.aio.client import Client
from offsim_common import subjects, tracing
from offsim_common.events import RandomBarcodeReply, RandomOrderRequest, RandomSsdReply
from pydantic import TypeAdapter, ValidationError

log = logging.getLogger(__name__)

SERVICE_ERROR = "Nats-Service-Error"
# The server's status answer when nothing subscribes to the subject at all.
NO_RESPONDERS = "503"
# The users service answers with an SSD, the orders service with a product.
RandomReply = TypeAdapter(RandomSsdReply | RandomBarcodeReply)


@dataclass
class Gathered:
    ssd_id: int | None = None
    barcode: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.ssd_id is not None and self.barcode is not None


async def gather_random(
    nc: Client, *, wait_s: float = 2.0, request: RandomOrderRequest | None = None
) -> Gathered:
    """Publish one orders.random request and collect both services' replies (or what came
    before `wait_s`)."""
    with tracing.requesting(subjects.ORDERS_RANDOM) as span:
        gathered = await _gather(nc, wait_s, request, span)
        span.set_attribute("offsim.replies.errors", len(gathered.errors))
    return gathered


async def _gather(
    nc: Client, wait_s: float, request: RandomOrderRequest | None, span: tracing.Span
) -> Gathered:
    gathered = Gathered()
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, max_msgs=2)
    try:
        payload = (request or RandomOrderRequest()).model_dump_json(exclude_none=True).encode()
        headers = tracing.inject({}) or None
        await nc.publish(subjects.ORDERS_RANDOM, payload, reply=inbox, headers=headers)
        async with asyncio.timeout(wait_s):
            for _ in range(2):
                msg = await sub.next_msg(timeout=wait_s)
                # Each reply is an event of the request's span, pointing at the span answering.
                span.add_event("reply", {"offsim.reply.traceparent": _traceparent(msg)})
                if msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
                    gathered.errors.append("no service answers orders.random")
                    break
                if msg.headers and SERVICE_ERROR in msg.headers:
                    gathered.errors.append(msg.headers[SERVICE_ERROR])
                    continue
                try:
                    reply = RandomReply.validate_json(msg.data)
                except ValidationError:
                    gathered.errors.append(f"unexpected reply: {msg.data[:100]!r}")
                    continue
                if isinstance(reply, RandomSsdReply):
                    gathered.ssd_id = reply.ssd_id
                else:
                    gathered.barcode = reply.barcode
    except TimeoutError:
        gathered.errors.append("timed out waiting for replies")
    finally:
        await sub.unsubscribe()
    return gathered


def _traceparent(msg) -> str:
    return (msg.headers or {}).get("traceparent", "")
