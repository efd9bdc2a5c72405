"""The simulated supplier and courier: pending -> shipped -> completed after random delays.

No timers of our own and no sleeping: when an event is not due yet the message is nak'ed with
the remaining delay and JetStream hands it back when it is due. The delay is derived from the
order id, so a redelivery after a crash or restart finds the same due time, and any number of
orders can be in flight at once. The next event is published with a de-duplication id before the
message is acked, so a crash between the two re-publishes a message the server drops.

A message that is not due yet goes back to JetStream before any span is made (`due_in`): an
order's trace has one span per stage however often it was redelivered, with the stage's wait
in its attributes (`offsim.stage.delay_s`, `offsim.stage.waited_s`, `offsim.deliveries`).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from offsim_common import bus, subjects, tracing
from offsim_common.events import OrderEvent, OrderStatus

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
    return random.Random(f"{seed}:{stage}:{order_id}").uniform(*delay_range)


def stage_consumer(
    js: JetStreamContext, stage: Stage, settings: NotificationsSettings
) -> bus.ConsumerSpec:
    seed = settings.seed or 0

    def delay(event: OrderEvent) -> float:
        """Real seconds this stage takes for this order, from the previous event."""
        return settings.simulated(delay_for(event.id, stage.name, stage.delay_range, seed))

    def due_in(event: OrderEvent) -> float:
        return event.timestamp.timestamp() + delay(event) - datetime.now(UTC).timestamp()

    async def handle(event: OrderEvent, msg: Msg) -> None:
        now = datetime.now(UTC)
        tracing.annotate({
            "offsim.stage": stage.name,
            "offsim.order.id": event.id,
            "offsim.stage.delay_s": round(delay(event), 3),
            "offsim.stage.waited_s": round((now - event.timestamp).total_seconds(), 3),
        })  # fmt: skip
        following = event.advanced(stage.next_status, now)
        await bus.publish(js, stage.publishes, following, following.msg_id)
        log.info("order %s %s", event.id, stage.next_status)

    return bus.ConsumerSpec(
        stream=subjects.ORDERS_STREAM,
        durable=stage.durable,
        subject=stage.listens,
        model=OrderEvent,
        handler=handle,
        due_in=due_in,
    )


def consumers(js: JetStreamContext, settings: NotificationsSettings) -> list[bus.ConsumerSpec]:
    return [stage_consumer(js, stage, settings) for stage in stages(settings)]
