"""What the chaos tests share: the clients' load of orders (retried with one Idempotency-Key
until accepted, as a careful client does) and what they read back from the streams."""

from __future__ import annotations

import asyncio
import collections
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import nats
from offsim_common import subjects
from offsim_common.events import OrderEvent

from tests.conftest import SERVICE_TOKEN, eventually
from tests.processes import Service
from tests.secure import Secrets

AUTH = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
# Short stages (0.5 to 2 real seconds) and a reconciler looking every 0.5 s.
CHAOS_ENV = {"SIM_SPEED": "120", "OFFSIM_RECONCILE_INTERVAL": "0.5",
             "OFFSIM_SERVICE_TOKEN": SERVICE_TOKEN, "LOG_LEVEL": "INFO"}  # fmt: skip
DURABLES = {
    subjects.ORDERS_STREAM: (subjects.NOTIFICATIONS_SHIP, subjects.NOTIFICATIONS_DELIVER,
                             subjects.ORDERS_RECORD_SHIPPED, subjects.ORDERS_RECORD_COMPLETED,
                             subjects.USERS_RESTOCK),
    subjects.READINGS_STREAM: (subjects.USERS_APPLY_READINGS,),
}  # fmt: skip
HOSTILE = "hostile-"  # the request id of every hostile message, and so of its dead letters
PACE_S = 0.2  # between two orders of one worker
ANSWER_TIMEOUT_S = 5.0
ORDER_DEADLINE_S = 30.0  # a client retries one order (same Idempotency-Key) this long


@dataclass
class Load:
    """What the clients saw."""

    sent: int = 0  # orders tried (one Idempotency-Key each)
    accepted: dict[str, int] = field(default_factory=dict)  # key -> order id
    quantities: dict[int, tuple[int, str, int]] = field(default_factory=dict)
    statuses: collections.Counter = field(default_factory=collections.Counter)
    unreachable: int = 0  # attempts that got no answer (a killed replica)
    gave_up: int = 0
    refused: list[tuple[int, str]] = field(default_factory=list)  # unexpected 4xx
    no_retry_after: int = 0  # 503s without Retry-After (the API promises one)
    slowest_s: float = 0.0

    def summary(self) -> str:
        return (f"sent {self.sent}, accepted {len(self.accepted)}, "
                f"answers {dict(sorted(self.statuses.items()))}, 503s {self.statuses[503]}, "
                f"unanswered attempts {self.unreachable}, gave up {self.gave_up}, "
                f"slowest answer {self.slowest_s:.2f}s")  # fmt: skip


async def place_orders(
    http: aiohttp.ClientSession, replicas: list[Service], ssds: list[int], products: list[str],
    load: Load, stop: asyncio.Event, seed: int,
) -> None:  # fmt: skip
    """One client: an order at a time, retried with the same Idempotency-Key on the other
    replica when one does not answer, and again after a 503, until accepted."""
    rng = random.Random(seed)
    while not stop.is_set():
        key = uuid.uuid4().hex
        body = {"ssd_id": rng.choice(ssds), "barcode": rng.choice(products),
                "quantity": rng.randint(1, 3)}  # fmt: skip
        load.sent += 1
        deadline = time.monotonic() + ORDER_DEADLINE_S
        attempt = rng.randrange(2)
        while True:
            replica = replicas[attempt % len(replicas)]
            attempt += 1
            retry_after = 0.1
            started = time.monotonic()
            try:
                async with http.post(
                    f"{replica.url}/api/orders", json=body,
                    headers={**AUTH, "Idempotency-Key": key},
                    timeout=aiohttp.ClientTimeout(total=ANSWER_TIMEOUT_S),
                ) as resp:  # fmt: skip
                    load.slowest_s = max(load.slowest_s, time.monotonic() - started)
                    load.statuses[resp.status] += 1
                    if resp.status == 201:
                        order_id = (await resp.json())["id"]
                        load.accepted[key] = order_id
                        load.quantities[order_id] = (body["ssd_id"], body["barcode"],
                                                     body["quantity"])  # fmt: skip
                        break
                    if resp.status == 503:
                        if "Retry-After" not in resp.headers:
                            load.no_retry_after += 1
                        retry_after = min(float(resp.headers.get("Retry-After", 1)), 0.5)
                    elif resp.status != 409:  # 409: the same key still being processed
                        load.refused.append((resp.status, await resp.text()))
                        break
            except (aiohttp.ClientError, TimeoutError):
                load.unreachable += 1
            if time.monotonic() > deadline:
                load.gave_up += 1
                break
            await asyncio.sleep(retry_after)  # a client's back-off, not a synchronisation
        await asyncio.sleep(PACE_S)


async def random_answers(nc: nats.NATS) -> set[str]:
    """Who answers an orders.random scatter-gather: both services, when they work."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(subjects.ORDERS_RANDOM, b"{}", reply=inbox)
    answers = set()
    try:
        while len(answers) < 2:
            msg = await sub.next_msg(timeout=2)
            answers.update(json.loads(msg.data))
    except TimeoutError:
        pass
    finally:
        await sub.unsubscribe()
    return answers


async def stored(js, stream: str, subject: str) -> list:
    """Every message the stream holds on `subject` (a wildcard allowed), all of them: as many as
    the stream counts, not as many as arrive before a pause."""
    info = await js.stream_info(stream, subjects_filter=subject)
    count = sum((info.state.subjects or {}).values())
    sub = await js.subscribe(subject, ordered_consumer=True)
    try:
        return [await sub.next_msg(timeout=10) for _ in range(count)]
    finally:
        await sub.unsubscribe()


async def stored_ids(js, subject: str) -> collections.Counter:
    """How many events the stream holds on `subject`, per order id: well-formed ones, sent by
    the services (not the hostile ones)."""
    found: collections.Counter = collections.Counter()
    for msg in await stored(js, subjects.ORDERS_STREAM, subject):
        if (msg.headers or {}).get("X-Request-Id", "").startswith(HOSTILE):
            continue
        try:
            found[OrderEvent.model_validate_json(msg.data).id] += 1
        except ValueError:
            pass
    return found


async def dead_letters(js) -> list[dict]:
    letters = await stored(js, subjects.DEAD_LETTER_STREAM, f"{subjects.DEAD_LETTER_PREFIX}.>")
    return [{"subject": msg.subject, **(msg.headers or {})} for msg in letters]


async def until(condition, within: float = 30.0) -> None:
    """Wait for a condition on what the clients saw, with a deadline."""

    async def check() -> bool:
        return condition()

    await eventually(check, within=within, interval=0.05)


@dataclass
class Pipeline:
    """The services under chaos, as real processes: one users service, two replicas each of
    the orders and notifications services."""

    users: Service
    orders: list[Service]
    notifications: list[Service]

    @classmethod
    def of(cls, env: dict[str, str], logs: Path, secrets: Secrets | None = None) -> Pipeline:
        """The services with `env`; with `secrets`, each as its own NATS user and Postgres
        role (env's DATABASE_URL is the owner's, which the roles are made on)."""
        logs.mkdir(exist_ok=True)
        env = {**CHAOS_ENV, **env}

        def service(name: str, module: str) -> Service:
            own = {}
            if secrets is not None:
                own = secrets.env(module.removeprefix("offsim_"), env["DATABASE_URL"])
            return Service(name, module, {**env, **own}, logs / f"{name}.log")

        return cls(
            service("users", "offsim_users"),
            [service("orders-a", "offsim_orders"), service("orders-b", "offsim_orders")],
            [service("notifications-a", "offsim_notifications"),
             service("notifications-b", "offsim_notifications")],
        )  # fmt: skip

    @property
    def everyone(self) -> list[Service]:
        return [self.users, *self.orders, *self.notifications]

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.everyone))


def check_answers(load: Load) -> set[int]:
    """What the clients saw: every order they sent accepted once, no 5xx but 503s with
    Retry-After. The accepted orders' ids."""
    accepted = set(load.accepted.values())
    assert not load.refused, load.refused[:5]
    assert load.gave_up == 0
    assert {s for s in load.statuses if s >= 500} <= {503}, load.statuses
    assert load.no_retry_after == 0
    assert len(accepted) == len(load.accepted)  # one order per key
    return accepted


async def check_still_working(js, nc: nats.NATS, http: aiohttp.ClientSession,
                              everyone: list[Service]) -> None:  # fmt: skip
    """Every consumer kept working (each durable drained), every service is healthy, and both
    answer orders.random."""

    async def drained() -> bool:
        for stream, durables in DURABLES.items():
            for durable in durables:
                info = await js.consumer_info(stream, durable)
                if info.num_pending or info.num_ack_pending:
                    return False
        return True

    await eventually(drained, within=30, interval=0.2)
    for s in everyone:
        async with http.get(f"{s.url}/api/health") as resp:
            assert resp.status == 200, (s.name, await resp.text())
    assert await random_answers(nc) == {"ssd_id", "barcode"}
