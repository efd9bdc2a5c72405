"""The simulated supplier and courier: pending -> shipped -> completed after random delays.

No timers of our own and no sleeping: when an event is not due yet the message is nak'ed with
the remaining delay and JetStream hands it back when it is due. The delay is derived from the
order id, so a redelivery after a crash or restart finds the same due time, and any number of
orders can be in flight at once. The next event is published with a de-duplication id before the
message is acked, so a crash between the two re-publishes a message the server drops.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from offsim_common import bus, subjects
from offsim_common.config import Settings
from offsim_common.messages import OrderEvent, OrderStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str
    listens: str
    durable: str
    publishes: str
    next_status: OrderStatus
    delay_range: tuple[float, float]


def stages(settings: Settings) -> list[Stage]:
    return [
        Stage("supplier", subjects.ORDERS_PENDING, subjects.NOTIFICATIONS_SHIP,
              subjects.ORDERS_SHIPPED, OrderStatus.SHIPPED, settings.supplier_delay),
        Stage("courier", subjects.ORDERS_SHIPPED, subjects.NOTIFICATIONS_DELIVER,
              subjects.ORDERS_COMPLETED, OrderStatus.COMPLETED, settings.delivery_delay),
    ]  # fmt: skip


def delay_for(order_id: int, stage: str, delay_range: tuple[float, float], seed: int) -> float:
    """Simulated seconds this stage takes for this order: random, but the same on every call."""
    return random.Random(f"{seed}:{stage}:{order_id}").uniform(*delay_range)


def stage_consumer(js: JetStreamContext, stage: Stage, settings: Settings) -> bus.ConsumerSpec:
    seed = settings.seed or 0

    async def handle(event: OrderEvent, msg: Msg) -> None:
        delay = settings.simulated(delay_for(event.id, stage.name, stage.delay_range, seed))
        remaining = event.timestamp.timestamp() + delay - datetime.now(UTC).timestamp()
        if remaining > 0:
            raise bus.Defer(remaining)
        following = event.advanced(stage.next_status, datetime.now(UTC))
        await bus.publish(js, stage.publishes, following, following.msg_id)
        log.info("order %s %s", event.id, stage.next_status)

    return bus.ConsumerSpec(
        stream=subjects.ORDERS_STREAM,
        durable=stage.durable,
        subject=stage.listens,
        model=OrderEvent,
        handler=handle,
    )


def consumers(js: JetStreamContext, settings: Settings) -> list[bus.ConsumerSpec]:
    return [stage_consumer(js, stage, settings) for stage in stages(settings)]
