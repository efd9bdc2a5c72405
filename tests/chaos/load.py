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

import aiohttp
import nats
from offsim_common import subjects
from offsim_common.events import OrderEvent

from tests.conftest import SERVICE_TOKEN, eventually
from tests.processes import Service

AUTH = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
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
