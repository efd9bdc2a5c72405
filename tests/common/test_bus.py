"""The shared consumer loop on a real JetStream: it survives idle periods and bad input."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import nats.errors
from offsim_common import bus
from pydantic import BaseModel


class Ping(BaseModel):
    n: int


class ScriptedSubscription:
    """Stands in for the pull subscription only (the loop's input), not for NATS: the failures
    a real fetch raises now and then, in a fixed order."""

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls = 0
        self.drained = asyncio.Event()

    async def fetch(self, batch: int, timeout: float) -> list:  # noqa: ASYNC109 - its API
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        self.drained.set()
        await asyncio.sleep(timeout)
        return []


async def test_fetch_loop_survives_every_fetch_failure():
    """asyncio's TimeoutError (a batch fetch raises it between its two pull requests), nats'
    own, and any other error: the loop goes on. It once died silently on the first."""
    sub = ScriptedSubscription(
        [TimeoutError(), nats.errors.TimeoutError(), RuntimeError("API error 503")]
    )
    spec = bus.ConsumerSpec(stream="S", durable="d", subject="s", model=Ping,
                            handler=None, fetch_timeout_s=0.01, fetch_retry_s=0)  # fmt: skip
    loop = asyncio.create_task(bus.pull_forever(sub, spec))
    await asyncio.wait_for(sub.drained.wait(), 5)
    assert not loop.done()
    assert sub.calls == 4
    loop.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await loop


async def test_consumer_terminates_invalid_messages_and_goes_on(nc):
    js = nc.jetstream()
    stream, subject = f"T{uuid.uuid4().hex[:8]}", f"test.{uuid.uuid4().hex[:8]}"
    await js.add_stream(name=stream, subjects=[subject])
    seen: asyncio.Queue[int] = asyncio.Queue()

    async def handle(ping: Ping, msg) -> None:
        await seen.put(ping.n)

    spec = bus.ConsumerSpec(stream=stream, durable="bad-input", subject=subject, model=Ping,
                            handler=handle, fetch_timeout_s=0.1)  # fmt: skip
    tasks = await bus.start_consumers(js, [spec])
    try:
        await js.publish(subject, b"not json")
        await js.publish(subject, b'{"n": "x"}')
        await js.publish(subject, b'{"n": 3}')
        assert await asyncio.wait_for(seen.get(), 5) == 3
        info = await js.consumer_info(stream, "bad-input")
        assert info.num_ack_pending == 0 and info.num_redelivered == 0
    finally:
        await bus.stop_tasks(tasks)
        await js.delete_stream(stream)
