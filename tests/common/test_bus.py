"""The shared consumer loop on a real JetStream: it survives idle periods and bad input."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import nats.errors
from offsim_common import bus, subjects
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
        await asyncio.Event().wait()  # then a fetch that waits until the loop is cancelled
        return []


async def test_fetch_loop_survives_every_fetch_failure():
    """asyncio's TimeoutError (a batch fetch raises it between its two pull requests), nats'
    own, and any other error: the loop goes on. It once died silently on the first."""
    sub = ScriptedSubscription(
        [TimeoutError(), nats.errors.TimeoutError(), RuntimeError("API error 503")]
    )
    spec = bus.ConsumerSpec(stream="S", durable="d", subject="s", model=Ping,
                            handler=None, fetch_timeout_s=0.01, fetch_retry_s=0)  # fmt: skip
    loop = asyncio.create_task(bus.pull_forever(None, sub, spec))
    await asyncio.wait_for(sub.drained.wait(), 5)
    assert not loop.done()
    assert sub.calls == 4
    loop.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await loop


async def start(nc, handler, linger_s: float | None = None, **spec_args):
    """A fresh stream and a consumer on it, through the same code the services use."""
    js = nc.jetstream()
    await bus.ensure_streams(js)
    stream, subject = f"T{uuid.uuid4().hex[:8]}", f"test.{uuid.uuid4().hex[:8]}"
    await js.add_stream(name=stream, subjects=[subject])
    spec = bus.ConsumerSpec(
        stream=stream, durable=f"d{uuid.uuid4().hex[:8]}", subject=subject, model=Ping,
        handler=handler, fetch_timeout_s=0.1, **spec_args,
    )  # fmt: skip
    return js, spec, await bus.start_consumers(js, [spec], linger_s=linger_s)


async def dead_letters(js, durable: str, count: int) -> list:
    sub = await js.subscribe(f"{subjects.DEAD_LETTER_PREFIX}.{durable}", ordered_consumer=True)
    try:
        return [await sub.next_msg(timeout=5) for _ in range(count)]
    finally:
        await sub.unsubscribe()


async def test_invalid_messages_are_dead_lettered_and_the_consumer_goes_on(nc):
    seen: asyncio.Queue[int] = asyncio.Queue()

    async def handle(ping: Ping, msg) -> None:
        await seen.put(ping.n)

    js, spec, tasks = await start(nc, handle)
    try:
        await js.publish(spec.subject, b"not json")
        await js.publish(spec.subject, b'{"n": "x"}')
        await js.publish(spec.subject, b'{"n": 3}')
        assert await asyncio.wait_for(seen.get(), 5) == 3
        kept = await dead_letters(js, spec.durable, 2)
        assert [m.data for m in kept] == [b"not json", b'{"n": "x"}']
        assert all(m.headers[bus.SUBJECT_HEADER] == spec.subject for m in kept)
        assert kept[1].headers[bus.REASON_HEADER].startswith("invalid:")
        info = await js.consumer_info(spec.stream, spec.durable)
        assert info.num_ack_pending == 0 and info.num_redelivered == 0
    finally:
        await bus.stop_tasks(tasks)
        await js.delete_stream(spec.stream)


async def test_message_failing_every_delivery_is_dead_lettered(nc):
    attempts: list[int] = []

    async def handle(ping: Ping, msg) -> None:
        attempts.append(msg.metadata.num_delivered)
        raise RuntimeError("database down")

    js, spec, tasks = await start(nc, handle, max_deliver=2)
    try:
        await js.publish(spec.subject, b'{"n": 1}')
        [kept] = await dead_letters(js, spec.durable, 1)
        assert kept.data == b'{"n": 1}'
        assert "failed 2 times" in kept.headers[bus.REASON_HEADER]
        assert attempts == [1, 2]
    finally:
        await bus.stop_tasks(tasks)
        await js.delete_stream(spec.stream)


async def test_consumer_settings_reach_a_durable_kept_from_before(nc):
    """A durable made by an older version (server-side max_deliver 50) is updated on start, so
    the server never drops a message at a limit the code does not know about."""
    from nats.js import api

    js = nc.jetstream()
    await bus.ensure_streams(js)
    stream, subject = f"T{uuid.uuid4().hex[:8]}", f"test.{uuid.uuid4().hex[:8]}"
    await js.add_stream(name=stream, subjects=[subject])
    await js.add_consumer(stream, api.ConsumerConfig(
        durable_name="kept", ack_policy=api.AckPolicy.EXPLICIT, max_deliver=50,
        filter_subject=subject, ack_wait=30,
    ))  # fmt: skip

    async def handle(ping: Ping, msg) -> None:
        pass

    spec = bus.ConsumerSpec(stream=stream, durable="kept", subject=subject, model=Ping,
                            handler=handle, fetch_timeout_s=0.1)  # fmt: skip
    tasks = await bus.start_consumers(js, [spec])
    try:
        info = await js.consumer_info(stream, "kept")
        assert info.config.max_deliver == -1
    finally:
        await bus.stop_tasks(tasks)
        await js.delete_stream(stream)


async def test_consumer_deleted_on_the_server_is_made_again(nc):
    """A NATS restarted without its storage loses the durables: the consumer makes its own
    again and goes on delivering."""
    seen: asyncio.Queue[int] = asyncio.Queue()

    async def handle(ping: Ping, msg) -> None:
        await seen.put(ping.n)

    js, spec, tasks = await start(nc, handle, fetch_retry_s=0.05)
    try:
        await js.publish(spec.subject, b'{"n": 1}')
        assert await asyncio.wait_for(seen.get(), 5) == 1
        await js.delete_consumer(spec.stream, spec.durable)
        await js.publish(spec.subject, b'{"n": 2}')
        # The new durable starts from the stream's beginning: 1 again (consumers are
        # idempotent), then 2.
        got = {await asyncio.wait_for(seen.get(), 10) for _ in range(2)}
        assert got == {1, 2}
        assert bus.stopped_consumers(tasks) == []
    finally:
        await bus.stop_tasks(tasks)
        await js.delete_stream(spec.stream)


async def test_publish_after_a_purge_stores_the_lost_message_again(nc):
    """The server remembers de-duplication ids through a purge: a re-announcement under the
    original id would be dropped. A duplicate whose original is gone is stored under an id
    derived from the lost copy, once whoever publishes it."""
    js = nc.jetstream()
    stream, subject = f"T{uuid.uuid4().hex[:8]}", f"test.{uuid.uuid4().hex[:8]}"
    await js.add_stream(name=stream, subjects=[subject], duplicate_window=60)
    await bus.publish(js, subject, Ping(n=1), "ping-1")
    await bus.publish(js, subject, Ping(n=1), "ping-1")  # still stored: dropped
    assert (await js.stream_info(stream)).state.messages == 1

    await js.purge_stream(stream)
    await bus.publish(js, subject, Ping(n=1), "ping-1")
    await bus.publish(js, subject, Ping(n=1), "ping-1")  # the new copy is stored: dropped
    state = (await js.stream_info(stream)).state
    assert state.messages == 1
    stored = await js.get_msg(stream, state.last_seq)
    assert stored.headers["Nats-Msg-Id"] == "ping-1~1"
    assert Ping.model_validate_json(stored.data) == Ping(n=1)

    await js.purge_stream(stream)  # lost again: the next copy names the second one
    await bus.publish(js, subject, Ping(n=1), "ping-1")
    state = (await js.stream_info(stream)).state
    stored = await js.get_msg(stream, state.last_seq)
    assert (state.messages, stored.headers["Nats-Msg-Id"]) == (1, "ping-1~1~2")


async def test_a_caught_up_consumer_lingers_so_the_next_messages_form_one_batch(nc):
    """After a fetch that found less than a batch, the consumer waits its linger (here the one
    a service passes to start_consumers) before the next: what arrives meanwhile is applied by
    one batch_handler call, not one handler call each."""
    calls: asyncio.Queue[list[int]] = asyncio.Queue()

    async def handle(ping: Ping, msg) -> None:
        await calls.put([ping.n])

    async def handle_many(batch) -> None:
        await calls.put([ping.n for ping, _ in batch])

    js, spec, tasks = await start(nc, handle, linger_s=1.0, batch_handler=handle_many)
    try:
        await js.publish(spec.subject, Ping(n=0).model_dump_json().encode())
        assert await asyncio.wait_for(calls.get(), 5) == [0]
        # The consumer now lingers for a second: these five are there at its next fetch.
        for n in range(1, 6):
            await js.publish(spec.subject, Ping(n=n).model_dump_json().encode())
        assert await asyncio.wait_for(calls.get(), 5) == [1, 2, 3, 4, 5]
    finally:
        await bus.stop_tasks(tasks)
