"""The SSDs' readings on each device transport: on NATS and MQTT they land in the READINGS
stream, one message per reading sent, with ids unique per SSD; a reading is `sent` only once
the stream or the broker acknowledged it; over HTTP the SSDs order nothing themselves."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter, defaultdict

import nats
import pytest
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext, api
from offsim_common import bus, subjects
from offsim_common.events import SsdReading
from offsim_generator import devices
from offsim_generator.__main__ import run
from offsim_generator.devices import MqttReadings, NatsReadings, ReadingTimeout, reading_payload
from offsim_generator.engine import Engine
from offsim_generator.model import Event, Model, Population
from offsim_generator.scenario import load
from offsim_generator.settings import GeneratorSettings
from offsim_generator.simulation import Simulation
from offsim_launcher.embedded import free_port
from prometheus_client import REGISTRY

from tests.conftest import against, eventually
from tests.proxy import Proxy


def consume_outcome(outcome: str) -> float:
    """The generator's `offsim_generator_events_total` for consume readings (this process's
    registry, shared by every test: compare differences)."""
    value = REGISTRY.get_sample_value(
        "offsim_generator_events_total", {"event": "consume", "outcome": outcome}
    )
    return value or 0.0


async def collector(nc: nats.NATS) -> JetStreamContext.PullSubscription:
    """A consumer of every reading, made before they are sent: READINGS keeps a message only
    while a consumer still has to ack it, and the users service acks each once applied."""
    return await nc.jetstream().pull_subscribe(
        subjects.SSD_READINGS_WILDCARD,
        stream=subjects.READINGS_STREAM,
        config=api.ConsumerConfig(inactive_threshold=300),
    )


async def stored_readings(
    nc: nats.NATS, sub: JetStreamContext.PullSubscription | None = None
) -> list[tuple[str, SsdReading]]:
    """Every reading `sub` (a collector) has not had yet, or, without one, every message the
    READINGS stream holds; with its subject."""
    own = sub is None
    if own:
        sub = await collector(nc)
    found = []
    try:
        while True:
            try:
                batch = await sub.fetch(500, timeout=1.0)
            except (NatsTimeout, TimeoutError):
                return found
            for msg in batch:
                found.append((msg.subject, SsdReading.model_validate_json(msg.data)))
                await msg.ack()
    finally:
        if own:
            await sub.unsubscribe()


async def watched_pairs(pool) -> set[tuple[int, str]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT ssd_id, barcode FROM product_ssds")
    return {(row["ssd_id"], row["barcode"]) for row in rows}


def devices_settings(settings, users, orders, transport: str, **changes):
    """A generator of a few SSDs that only consume (unless `changes` say otherwise: no
    registrations, no random orders)."""
    wanted = {"sim_speed": 720.0, "seed": 3, "population": 6, "consume_per_day": 480.0,
              "tick_seconds": 10**6, "device_transport": transport, **changes}  # fmt: skip
    return against(settings, users, orders, **wanted)


def check_readings(stored: list[tuple[str, SsdReading]], watched: set[tuple[int, str]]) -> None:
    ids: defaultdict[int, list[str]] = defaultdict(list)
    for subject, reading in stored:
        assert subject == subjects.ssd_readings(reading.ssd_id)
        assert (reading.ssd_id, reading.barcode) in watched
        assert reading.quantity == 1
        ids[reading.ssd_id].append(reading.reading_id)
    for ssd_id, sent in ids.items():
        assert len(sent) == len(set(sent)), f"SSD {ssd_id} repeated a reading id"
    # Several SSDs read, each counting its own readings from 1.
    assert len(ids) > 1
    assert all("1" in sent for sent in ids.values())


async def test_readings_over_nats_land_in_the_stream(users, orders, pool, products, settings, nc):
    await bus.ensure_streams(nc.jetstream())
    sub = await collector(nc)
    before = consume_outcome("sent")
    result = await run(devices_settings(settings, users, orders, "nats"), asyncio.Event(),
                       duration=1800)  # fmt: skip
    stats = result.stats
    stored = await stored_readings(nc, sub)
    assert stats["consume.sent"] == len(stored) == consume_outcome("sent") - before > 20
    assert stats["consume.failed"] == stats["consume.skipped"] == 0
    check_readings(stored, await watched_pairs(pool))


async def test_readings_over_mqtt_land_in_the_stream(
    users, orders, pool, products, settings, nc, mqtt_url
):
    await bus.ensure_streams(nc.jetstream())
    sub = await collector(nc)
    before = consume_outcome("sent")
    mqtt = devices_settings(settings, users, orders, "mqtt", mqtt_url=mqtt_url)
    result = await run(mqtt, asyncio.Event(), duration=1800)
    stats = result.stats
    assert stats["consume.failed"] == stats["consume.skipped"] == 0
    # A PUBACK says the broker has the message; the stream stores it an instant later.
    stored = []
    for _ in range(50):
        stored += await stored_readings(nc, sub)
        if len(stored) >= stats["consume.sent"]:
            break
        await asyncio.sleep(0.1)
    assert stats["consume.sent"] == len(stored) == consume_outcome("sent") - before > 20
    check_readings(stored, await watched_pairs(pool))


async def test_http_readings_order_nothing(users, orders, pool, products, settings, monkeypatch):
    posted: list[tuple[str, dict]] = []
    post = Simulation._post

    async def spy(self, url, payload, *args, **kwargs):
        posted.append((url, payload))
        return await post(self, url, payload, *args, **kwargs)

    monkeypatch.setattr(Simulation, "_post", spy)
    # Registrations and random orders too: only the consume readings may not order.
    http = devices_settings(settings, users, orders, "http", tick_seconds=30.0)
    result = await run(http, asyncio.Event(), duration=1800)
    stats = result.stats
    assert stats["consume.sent"] > 20 and stats["consume.failed"] == 0
    orders_url = http.orders_url
    placed = [payload for url, payload in posted if url.startswith(orders_url)]
    assert placed and all(payload["kind"] == "order" for payload in placed)
    readings = [payload for url, payload in posted if url.endswith("/consume")]
    assert len(readings) == stats["consume.sent"]
    assert all(set(payload) == {"barcode", "quantity", "reading_id"} for payload in readings)
    async with pool.acquire() as conn:
        by_the_api = await conn.fetchval(
            "SELECT count(*) FROM product_orders WHERE kind = 'restock' AND placed_by = 'api'"
        )
    assert by_the_api == 0


# --- acknowledgements: a reading is sent when acknowledged, failed otherwise ------------------


def simulation(readings, ssds: int = 4) -> Simulation:
    """A simulation of `ssds` registered SSDs (ids 101, 102, ...) sending on `readings`."""
    population = Population(watched=3, per_day=12.0)
    settings = GeneratorSettings(log_level="WARNING")
    sim = Simulation(settings, None, None, population, readings)  # type: ignore[arg-type]
    for index in range(ssds):
        sim.ssd_ids[index] = 101 + index
        sim.barcodes[index] = ["3017620422003", "5449000000996", "3274080005003"]
    return sim


def consume(ssd: int, slot: int = 0) -> Event:
    return Event(0.0, "consume", ssd=ssd, slot=slot, quantity=1)


async def test_a_reading_with_no_stream_is_failed(nc):
    """No READINGS stream: the server answers no-responders at once; nothing is sent."""
    readings = NatsReadings(nc)
    await readings.start()
    try:
        sim = simulation(readings)
        before = consume_outcome("failed")
        futures = [sim.perform(consume(i % 4)) for i in range(8)]
        await asyncio.wait(futures, timeout=10)
    finally:
        await readings.close()
    assert sim.stats["consume.failed"] == 8 == consume_outcome("failed") - before
    assert sim.stats["consume.sent"] == 0


async def test_a_reading_whose_ack_never_comes_is_failed(nats_proxy, nc):
    await bus.ensure_streams(nc.jetstream())
    client = await nats.connect(nats_proxy.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    readings = NatsReadings(client, ack_timeout_s=0.5)
    await readings.start()
    try:
        sim = simulation(readings)
        first = [sim.perform(consume(i % 4)) for i in range(6)]
        await asyncio.wait(first, timeout=10)
        assert sim.stats["consume.sent"] == 6
        await nats_proxy.blackhole()  # NATS stops answering: the readings wait in vain
        lost = [sim.perform(consume(i % 4)) for i in range(6)]
        done, _ = await asyncio.wait(lost, timeout=10)
        assert len(done) == 6
        assert all(isinstance(f.exception(), ReadingTimeout | ConnectionError) for f in done)
        assert sim.stats["consume.failed"] == 6 and sim.stats["consume.sent"] == 6
        assert readings.pending == 0  # nats-py's pending slots were given back
    finally:
        await readings.close()
        await nats_proxy.restore()
        await client.close()


async def test_readings_while_nats_is_away_fail_and_take_no_pending_slot(nats_proxy, nc):
    """A reading sent while the connection is down fails at once, without reaching nats-py
    (whose publish would keep a pending slot for good); once NATS is back, readings are sent."""
    await bus.ensure_streams(nc.jetstream())
    client = await nats.connect(nats_proxy.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    readings = NatsReadings(client, ack_timeout_s=0.5, max_pending=4)
    await readings.start()
    try:
        sim = simulation(readings)
        await nats_proxy.refuse()
        await eventually(lambda: _async(not client.is_connected))
        away = [sim.perform(consume(i % 4)) for i in range(12)]  # three times the pending limit
        done, _ = await asyncio.wait(away, timeout=10)
        assert len(done) == 12 and sim.stats["consume.failed"] == 12
        # Refused at once, not left to time out in nats-py's reconnect buffer.
        assert all(type(f.exception()) is ConnectionError for f in done)
        assert readings.js.publish_async_pending() == 0
        await nats_proxy.restore()
        await eventually(lambda: _async(client.is_connected))
        back = [sim.perform(consume(i % 4)) for i in range(6)]
        await asyncio.wait(back, timeout=10)
        assert sim.stats["consume.sent"] == 6
    finally:
        await readings.close()
        await nats_proxy.restore()
        await client.close()


async def _async(value: bool) -> bool:
    return value


async def test_readings_from_one_ssd_have_their_own_ids(nc):
    await bus.ensure_streams(nc.jetstream())
    readings = NatsReadings(nc, coalesce_s=0.0)
    await readings.start()
    try:
        sim = simulation(readings, ssds=2)
        futures = [sim.perform(consume(ssd, slot=ssd * 3 + n % 3))
                   for n in range(5) for ssd in (0, 1)]  # fmt: skip
        await asyncio.wait(futures, timeout=10)
    finally:
        await readings.close()
    stored = await stored_readings(nc)
    by_ssd = Counter((r.ssd_id, r.reading_id) for _, r in stored)
    assert sorted(by_ssd) == [(ssd, str(n)) for ssd in (101, 102) for n in range(1, 6)]
    assert {r.barcode for _, r in stored} == set(sim.barcodes[0])


async def test_unknown_ssds_and_products_are_skipped(nc):
    readings = NatsReadings(nc)
    sim = simulation(readings, ssds=2)
    sim.barcodes[1] = []
    assert sim.perform(consume(5)) is None  # never registered
    assert sim.perform(consume(1)) is None  # no product known
    assert sim.stats["consume.unregistered"] == sim.stats["consume.unknown_products"] == 1
    assert sim.stats["consume.skipped"] == 2


async def test_mqtt_unreachable_readings_are_failed():
    readings = MqttReadings(f"mqtt://127.0.0.1:{free_port()}", first_connect_s=0.2)
    await readings.start()
    try:
        sim = simulation(readings)
        futures = [sim.perform(consume(i)) for i in range(4)]
        await asyncio.wait(futures, timeout=10)
    finally:
        await readings.close()
    assert sim.stats["consume.failed"] == 4 and sim.stats["consume.sent"] == 0


async def test_the_mqtt_connection_is_made_again(mqtt_url, nc, monkeypatch):
    monkeypatch.setattr(devices, "MQTT_RECONNECT_S", 0.1)
    await bus.ensure_streams(nc.jetstream())
    proxy = await Proxy(mqtt_url).start()
    readings = MqttReadings(proxy.url, ack_timeout_s=1.0)
    await readings.start()
    try:
        sim = simulation(readings)

        async def send(n: int) -> None:
            await asyncio.wait([sim.perform(consume(i % 4)) for i in range(n)], timeout=10)

        await send(4)
        assert sim.stats["consume.sent"] == 4 and readings.connections == 1
        await proxy.refuse()  # the broker goes away: readings fail, nothing is sent
        await asyncio.sleep(0.3)
        await send(4)
        assert sim.stats["consume.failed"] == 4 and sim.stats["consume.sent"] == 4
        await proxy.restore()
        for _ in range(100):
            if readings.connections == 2 and readings.connected:
                break
            await asyncio.sleep(0.05)
        await send(4)
        assert sim.stats["consume.sent"] == 8 and readings.connections == 2
    finally:
        await readings.close()
        await proxy.close()
    stored = await stored_readings(nc)
    assert len(stored) == 8


async def run_unacked(**bounds) -> tuple[Engine, list[asyncio.Future]]:
    """An engine whose readings are never acknowledged, run for 10 simulated seconds of a
    population that reads every second: what stays in flight, and the futures to settle."""
    model = Model(load("steady", 0, 0), seed=5, watched=3, consume_per_day=86400.0)
    model.populate(10)
    loop = asyncio.get_running_loop()
    unacked: list[asyncio.Future] = []

    def publish(event) -> asyncio.Future:
        unacked.append(loop.create_future())
        return unacked[-1]

    engine = Engine(model, speed=10.0, duration=10, perform=publish, **bounds)
    engine.start()
    await asyncio.wait_for(engine.done.wait(), 30)
    return engine, unacked


async def test_the_engine_bounds_readings_in_flight():
    """A reading is a future, not a task: in flight until acknowledged, and the open model's
    bound and overflow hold for it as for a request."""
    engine, unacked = await run_unacked(max_in_flight=5)
    assert len(unacked) == 5 == len(engine.in_flight)
    assert engine.overflow["consume"] > 50
    for future in unacked:
        future.set_result(None)
    await asyncio.sleep(0)
    assert not engine.in_flight
    await engine.stop()


async def test_readings_have_a_bound_of_their_own():
    """Readings awaiting their ack do not take the requests' places, nor the other way round."""
    engine, unacked = await run_unacked(max_in_flight=1, budgets={"consume": 7})
    assert len(unacked) == 7 == len(engine.in_flight) == engine.flying
    assert engine.overflow["consume"] > 50
    for future in unacked:
        future.set_result(None)
    await engine.stop()


def test_reading_payload_is_a_reading():
    for barcode in ("3017620422003", 'a "quoted" code', "ünïcode\\"):
        payload = reading_payload(7, barcode, 3, "42")
        assert SsdReading.model_validate_json(payload) == SsdReading(
            ssd_id=7, barcode=barcode, quantity=3, reading_id="42"
        )


def test_a_bad_transport_stops_the_generator_naming_the_variable():
    env = {**os.environ, "OFFSIM_DEVICE_TRANSPORT": "carrier-pigeon"}
    done = subprocess.run([sys.executable, "-m", "offsim_generator", "--max-events", "1"],
                          capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert done.returncode == 2
    assert "OFFSIM_DEVICE_TRANSPORT" in done.stderr and "nats, mqtt, http" in done.stderr
    bad_url = {**os.environ, "MQTT_URL": "http://broker"}
    done = subprocess.run([sys.executable, "-m", "offsim_generator", "--max-events", "1"],
                          capture_output=True, text=True, timeout=60, env=bad_url)  # fmt: skip
    assert done.returncode == 2 and "MQTT_URL" in done.stderr


@pytest.fixture(autouse=True)
def _fast_ack_sweep(monkeypatch):
    monkeypatch.setattr(devices, "SWEEP_S", 0.05)
