"""How the simulated SSDs send their readings (OFFSIM_DEVICE_TRANSPORT): to JetStream, or to
NATS's MQTT listener. (The third transport, `http`, is the users service's consume endpoint,
which the simulation calls itself.)

A reading is one small JSON message (`offsim_common.events.SsdReading`); at 100,000 SSDs and
x60 the generator sends about 2,500 a second on a machine it shares with NATS, Postgres and the
services, so each costs as little as possible: no task per reading on the NATS path, the JSON
written by hand, no header. `send` hands back a future at once, without waiting for anything:
it completes when the stream (or the broker) acknowledged the reading, and fails on an error or
when no acknowledgement came within the timeout. Only an acknowledged reading is `sent`: the
users service applies exactly those.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import deque
from typing import Protocol

import aiomqtt
from nats.aio.client import Client
from nats.js import JetStreamContext
from offsim_common import subjects

from .settings import mqtt_address

log = logging.getLogger(__name__)

# Real seconds a reading waits for its acknowledgement before it counts as failed. nats-py's
# publish_async futures wait for ever: a lost ack (NATS restarting, a stream gone mid-flight)
# would hold its place in flight and its slot in nats-py's pending limit.
ACK_TIMEOUT_S = 5.0
# Real seconds the pump lets readings gather before it publishes them. The engine launches each
# reading at its own time, and nats-py writes what is pending as soon as the loop is idle: one
# socket write per reading, and as many wake-ups of NATS. Gathered for 10 ms, a few dozen
# readings are one write and their acks come back together: at 2,500 readings a second that
# took the transport's CPU from about 80 to 35 microseconds a reading, and NATS's to less than
# half (docs/generator.md, "Device transports").
COALESCE_S = 0.01
# Real seconds between two looks for readings whose acknowledgement is overdue.
SWEEP_S = 0.25
# Real seconds between two attempts to reach the MQTT broker, and how long the start waits for
# the first one.
MQTT_RECONNECT_S = 1.0
MQTT_FIRST_CONNECT_S = 10.0


class ReadingTimeout(TimeoutError):
    """No acknowledgement within ACK_TIMEOUT_S."""


class Readings(Protocol):
    """A device transport: started once, then `send` for every reading, `close` at the end."""

    async def start(self) -> None: ...

    def send(self, ssd_id: int, payload: bytes) -> asyncio.Future: ...

    async def close(self) -> None: ...


def reading_payload(ssd_id: int, barcode: str, quantity: int, reading_id: str) -> bytes:
    """An `SsdReading` as JSON, written directly: a few times cheaper than building the model
    and dumping it, for the same bytes' meaning (the tests check it parses as one)."""
    return (
        f'{{"ssd_id":{ssd_id:d},"barcode":{json.dumps(barcode)},'
        f'"quantity":{quantity:d},"reading_id":{json.dumps(reading_id)}}}'
    ).encode()


class NatsReadings:
    """Readings published to JetStream on ssds.<id>.readings with `publish_async`.

    `send` only queues the reading and returns its future; one pump task publishes the queue
    every COALESCE_S (publish_async returns the ack's future without waiting for it) and chains
    each ack to the reading's future, and a sweep fails the readings whose ack is overdue
    (cancelling nats-py's future, which frees its pending slot). No task, timer or header per
    reading.
    """

    def __init__(self, nc: Client, *, ack_timeout_s: float = ACK_TIMEOUT_S,
                 coalesce_s: float = COALESCE_S, max_pending: int = 4000) -> None:  # fmt: skip
        # A context of its own: its own pending limit and reply subscription.
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(publish_async_max_pending=max_pending)
        self.ack_timeout_s = ack_timeout_s
        self.coalesce_s = coalesce_s
        self._loop = asyncio.get_running_loop()
        self._queue: deque[tuple[str, bytes, asyncio.Future]] = deque()
        # (deadline, nats-py's ack future), in publishing order: the deadlines only grow.
        self._waiting: deque[tuple[float, asyncio.Future]] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._pump(), name="readings-pump"),
            asyncio.create_task(self._sweep(), name="readings-sweep"),
        ]

    def send(self, ssd_id: int, payload: bytes) -> asyncio.Future:
        future = self._loop.create_future()
        self._queue.append((subjects.ssd_readings(ssd_id), payload, future))
        self._wake.set()
        return future

    async def _pump(self) -> None:
        publish = self.js.publish_async
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.coalesce_s)
            self._wake.clear()
            while self._queue:
                subject, payload, future = self._queue.popleft()
                if future.done():
                    continue  # cancelled while it waited (the run is stopping)
                if not self.nc.is_connected:
                    # Not handed to nats-py at all: a publish that fails on a closed socket
                    # keeps its pending slot for good (nats-py registers the ack's future
                    # first), and enough of them would stall every later reading.
                    future.set_exception(ConnectionError("NATS is not connected"))
                    continue
                try:
                    ack = await publish(subject, payload, wait_stall=self.ack_timeout_s)
                except asyncio.CancelledError:
                    future.cancel()
                    raise
                except Exception as exc:
                    # The outgoing buffer full, or no pending slot free within the timeout.
                    future.set_exception(exc)
                    if asyncio.current_task().cancelling():
                        # nats-py turns a cancel during its wait into TooManyStalledMsgsError.
                        raise asyncio.CancelledError from exc
                    continue
                ack.add_done_callback(_settles(future))
                self._waiting.append((self._loop.time() + self.ack_timeout_s, ack))

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            self.expire(self._loop.time())

    def expire(self, now: float) -> int:
        """Fail the readings whose ack is overdue at loop time `now`; how many."""
        waiting, expired = self._waiting, 0
        while waiting and (waiting[0][1].done() or waiting[0][0] <= now):
            _, ack = waiting.popleft()
            if not ack.done():
                ack.cancel()  # its reading's future fails with ReadingTimeout
                expired += 1
        return expired

    @property
    def pending(self) -> int:
        """Readings queued or waiting for their ack."""
        return len(self._queue) + self.js.publish_async_pending()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._queue:
            self._queue.popleft()[2].cancel()
        while self._waiting:
            self._waiting.popleft()[1].cancel()


def _settles(future: asyncio.Future):
    """A done-callback of nats-py's ack future that settles the reading's `future`."""

    def settle(ack: asyncio.Future) -> None:
        if future.done():
            return
        if ack.cancelled():
            future.set_exception(ReadingTimeout("no acknowledgement from the READINGS stream"))
        elif (exc := ack.exception()) is not None:
            future.set_exception(exc)
        else:
            future.set_result(None)

    return settle


class MqttReadings:
    """Readings published with QoS 1 to ssds/<id>/readings on an MQTT broker (NATS's MQTT
    listener maps them to the same subjects). One connection for the whole generator, made
    again whenever it is lost; a reading is sent when the broker's PUBACK arrives (aiomqtt's
    QoS 1 publish waits for it), failed if not connected or no PUBACK within the timeout."""

    def __init__(self, url: str, *, ack_timeout_s: float = ACK_TIMEOUT_S, max_in_flight: int = 100,
                 first_connect_s: float = MQTT_FIRST_CONNECT_S, username: str | None = None,
                 password: str | None = None) -> None:  # fmt: skip
        self.url = url
        self._username, self._password = username, password
        self.host, self.port = mqtt_address(url)
        self.ack_timeout_s = ack_timeout_s
        self.first_connect_s = first_connect_s
        self.max_in_flight = max_in_flight
        self._loop = asyncio.get_running_loop()
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.connections = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._stay_connected(), name="readings-mqtt")
        try:
            await asyncio.wait_for(self._connected.wait(), self.first_connect_s)
        except TimeoutError:
            log.warning("MQTT broker %s not reachable yet; readings fail until it is", self.url)

    async def _stay_connected(self) -> None:
        while True:
            client = aiomqtt.Client(
                self.host, self.port, identifier=f"offsim-generator-{uuid.uuid4().hex[:12]}",
                clean_session=True, timeout=self.ack_timeout_s,
                # Unacknowledged QoS 1 messages on the wire: as many as the engine keeps in
                # flight (paho's default of 20 would queue the rest on our side).
                max_inflight_messages=self.max_in_flight,
                username=self._username, password=self._password,
            )  # fmt: skip
            try:
                async with client:
                    self._client = client
                    self.connections += 1
                    self._connected.set()
                    log.info("MQTT: connected to %s", self.url)
                    # Nothing is subscribed: the iteration ends (MqttError) when the
                    # connection is lost.
                    async for _ in client.messages:
                        pass
            except aiomqtt.MqttError as exc:
                level = logging.WARNING if self._client is not None else logging.DEBUG
                log.log(level, "MQTT: %s: %s; connecting again", self.url, exc)
            finally:
                self._client = None
                self._connected.clear()
            await asyncio.sleep(MQTT_RECONNECT_S)

    @property
    def connected(self) -> bool:
        return self._client is not None

    def send(self, ssd_id: int, payload: bytes) -> asyncio.Future:
        return self._loop.create_task(self._publish(subjects.ssd_readings_topic(ssd_id), payload))

    async def _publish(self, topic: str, payload: bytes) -> None:
        client = self._client
        if client is None:
            raise ConnectionError(f"MQTT broker {self.url} not connected")
        await client.publish(topic, payload, qos=1, timeout=self.ack_timeout_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
