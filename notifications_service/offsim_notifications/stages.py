"""The simulated supplier and courier: pending -> shipped -> completed after random delays.

No timers of our own and no sleeping: when an event is not due yet the message is nak'ed with
the remaining delay and JetStream hands it back when it is due. The delay is derived from the
order id, so a redelivery after a crash or restart finds the same due time, and any number of
orders can be in flight at once. The next event is published with a de-duplication id before the
message is acked, so a crash between the two re-publishes a message the server drops.

A message that is not due yet goes back to JetStream before any span is made (`due_in`): an
order's trace has one span per stage however often it was redelivered, with the stage's wait
in its attributes (`offsim.stage.delay_s`, `offsim.stage.waited_s`, `offsim.deliveries`).

Faults (`offsim_common.faults`, set by the generator, watched in NATS KV by every replica) act
here: the supplier's delay is multiplied, a share of orders is rejected (published on
orders.cancelled instead of orders.shipped), a share of deliveries takes `courier_spike_factor`
times longer. Which orders a share hits is a hash of the order id and the faults' seed, so
replicas and redeliveries agree. A changed delay applies to the orders in flight from their
next delivery on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from offsim_common import bus, subjects, tracing
from offsim_common.events import OrderEvent, OrderStatus
from offsim_common.faults import Faults, FaultsView, draw, hits
from offsim_common.logs import REQUEST_ID_HEADER, request_id_from

from .settings import NotificationsSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str
    listens: str
    durable: str
    publishes: str
    next_status: OrderStatus
    delay_range: tuple[float, float]


def stages(settings: NotificationsSettings) -> list[Stage]:
    return [
        Stage("supplier", subjects.ORDERS_PENDING, subjects.NOTIFICATIONS_SHIP,
              subjects.ORDERS_SHIPPED, OrderStatus.SHIPPED, settings.supplier_delay),
        Stage("courier", subjects.ORDERS_SHIPPED, subjects.NOTIFICATIONS_DELIVER,
              subjects.ORDERS_COMPLETED, OrderStatus.COMPLETED, settings.delivery_delay),
    ]  # fmt: skip


def delay_for(order_id: int, stage: str, delay_range: tuple[float, float], seed: int) -> float:
    """Simulated seconds this stage takes for this order: random, but the same on every call."""
    low, high = delay_range
    return low + (high - low) * draw(seed, stage, order_id)


def fault_factor(stage: str, order_id: int, faults: Faults) -> float:
    """How many times longer the faults make this stage for this order."""
    if stage == "supplier":
        return faults.supplier_delay
    if hits(faults.seed, "courier_spike", order_id, faults.courier_spike):
        return faults.courier_spike_factor
    return 1.0


def rejected(event: OrderEvent, faults: Faults) -> bool:
    """Whether the supplier rejects this order."""
    return hits(faults.seed, "reject", event.id, faults.reject)


def stage_consumer(
    nc: Client,
    js: JetStreamContext,
    stage: Stage,
    settings: NotificationsSettings,
    faults: FaultsView,
) -> bus.ConsumerSpec:
    seed = settings.seed or 0

    def delay(event: OrderEvent) -> float:
        """Real seconds this stage takes for this order, from the previous event."""
        base = delay_for(event.id, stage.name, stage.delay_range, seed)
        return settings.simulated(base * fault_factor(stage.name, event.id, faults.current))

    def due_in(event: OrderEvent) -> float:
        return event.timestamp.timestamp() + delay(event) - datetime.now(UTC).timestamp()

    def following(event: OrderEvent, now: datetime, current: Faults) -> tuple[str, OrderEvent]:
        """The subject and the event that follow this one: the stage's, or a cancellation
        when the supplier rejects the order."""
        if stage.name == "supplier" and rejected(event, current):
            return subjects.ORDERS_CANCELLED, event.advanced(OrderStatus.CANCELLED, now)
        return stage.publishes, event.advanced(stage.next_status, now)

    async def handle(event: OrderEvent, msg: Msg) -> None:
        now = datetime.now(UTC)
        tracing.annotate({
            "offsim.stage": stage.name,
            "offsim.order.id": event.id,
            "offsim.stage.delay_s": round(delay(event), 3),
            "offsim.stage.waited_s": round((now - event.timestamp).total_seconds(), 3),
        })  # fmt: skip
        subject, next_event = following(event, now, faults.current)
        if next_event.status is OrderStatus.CANCELLED:
            tracing.annotate({"offsim.fault": "reject"})
        await bus.publish(js, subject, next_event, next_event.msg_id)
        log.debug("order %s %s", event.id, next_event.status)

    async def handle_many(batch: list[tuple[OrderEvent, Msg]]) -> None:
        """The due events of a fetched batch: their next events published back to back and
        their acks awaited together (one round trip for the lot). If any is not acknowledged,
        this raises and each message is handled alone (what was stored is de-duplicated)."""
        now = datetime.now(UTC)
        current = faults.current
        outgoing: dict[str, list[tuple[bytes, dict[str, str]]]] = {}
        for event, msg in batch:
            subject, next_event = following(event, now, current)
            headers = {"Nats-Msg-Id": next_event.msg_id}
            if (placing := request_id_from(msg.headers)) is not None:
                headers[REQUEST_ID_HEADER] = placing
            outgoing.setdefault(subject, []).append(
                (next_event.model_dump_json().encode(), headers)
            )
        for subject, messages in outgoing.items():
            failed = [o for o in await bus.publish_many(nc, js, subject, messages) if o]
            if failed:
                raise ConnectionError(
                    f"{len(failed)} of {len(messages)} on {subject}: {failed[0]!r}"
                )
        log.debug("%d orders moved on by the %s", len(batch), stage.name)

    return bus.ConsumerSpec(
        stream=subjects.ORDERS_STREAM,
        durable=stage.durable,
        subject=stage.listens,
        model=OrderEvent,
        handler=handle,
        batch_handler=handle_many,
        due_in=due_in,
    )


def consumers(
    nc: Client, js: JetStreamContext, settings: NotificationsSettings, faults: FaultsView
) -> list[bus.ConsumerSpec]:
    return [stage_consumer(nc, js, stage, settings, faults) for stage in stages(settings)]
