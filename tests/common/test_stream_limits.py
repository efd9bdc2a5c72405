"""The streams' limits on a real JetStream: each stream is bounded in age and in bytes; READINGS
keeps a reading only until the users service has applied it, never drops one it stored (a full
stream refuses new ones), and keeps the readings sent before the users service ever ran; a
stream made by the previous version is brought to these limits in place."""

from __future__ import annotations

import re

import pytest
from nats.js import api
from offsim_common import bus, subjects
from offsim_common.events import SsdReading

from tests.conftest import eventually, repo_root

STREAMS = {config.name: config for config in bus.stream_configs(1)}


def the_previous_versions_streams() -> list[api.StreamConfig]:
    """The streams as the version before this one made them: every one kept by limits, for
    days, with no cap on its size."""
    day = 24 * 3600.0
    return [
        api.StreamConfig(name=name, subjects=list(stream_subjects), storage=api.StorageType.FILE,
                         retention=api.RetentionPolicy.LIMITS, max_age=max_age,
                         duplicate_window=window, num_replicas=1)
        for name, stream_subjects, max_age, window in (
            (subjects.ORDERS_STREAM, subjects.ORDERS_STREAM_SUBJECTS, 7 * day, 3600.0),
            (subjects.USERS_STREAM, subjects.USERS_STREAM_SUBJECTS, 7 * day, 3600.0),
            (subjects.READINGS_STREAM, subjects.READINGS_STREAM_SUBJECTS, day, 120.0),
            (subjects.DEAD_LETTER_STREAM, subjects.DEAD_LETTER_STREAM_SUBJECTS, 30 * day,
             3600.0),
        )
    ]  # fmt: skip


def a_reading(n: int) -> bytes:
    return SsdReading(ssd_id=7, barcode="3017620422003", quantity=1, reading_id=f"r-{n}") \
        .model_dump_json().encode()  # fmt: skip


async def send_readings(js, numbers: range) -> None:
    for n in numbers:
        await js.publish(subjects.ssd_readings(7), a_reading(n), headers={"Nats-Msg-Id": f"r{n}"})


async def stored_messages(js, stream: str) -> int:
    return (await js.stream_info(stream)).state.messages


async def stored_range(js, stream: str) -> tuple[int, int, int]:
    """How many messages the stream holds, and its first and last sequence."""
    state = (await js.stream_info(stream)).state
    return state.messages, state.first_seq, state.last_seq


async def until_stored(js, stream: str, wanted: tuple[int, int, int]) -> None:
    """The stream holds `wanted` (stored_range) once the server has removed what was acked."""

    async def holds() -> bool:
        return await stored_range(js, stream) == wanted

    await eventually(holds, within=10)


async def apply_readings(js, count: int) -> None:
    """What the users service does with `count` readings: fetch them on its durable, ack each."""
    sub = await js.pull_subscribe_bind(subjects.USERS_APPLY_READINGS, subjects.READINGS_STREAM)
    try:
        for msg in await sub.fetch(count, timeout=5):
            await msg.ack_sync()
    finally:
        await sub.unsubscribe()


def test_every_stream_is_bounded_in_age_and_bytes():
    for config in STREAMS.values():
        assert 0 < config.max_age and 0 < config.max_bytes, config.name
        # The server refuses a de-duplication window longer than the stream keeps messages.
        assert config.duplicate_window <= config.max_age, config.name
    readings = STREAMS[subjects.READINGS_STREAM]
    assert readings.retention == api.RetentionPolicy.INTEREST
    assert readings.discard == api.DiscardPolicy.NEW
    for name in (subjects.ORDERS_STREAM, subjects.USERS_STREAM, subjects.DEAD_LETTER_STREAM):
        assert STREAMS[name].retention == api.RetentionPolicy.LIMITS
        assert STREAMS[name].discard == api.DiscardPolicy.OLD
    # An order event the stream has dropped is announced again by the reconciler, which looks
    # far longer than the stream keeps events.
    from offsim_orders.reconciler import HORIZON_S

    assert STREAMS[subjects.ORDERS_STREAM].max_age < HORIZON_S


@pytest.mark.parametrize("path", ["deploy/k8s/base/nats.yaml", "deploy/nats/cluster.conf"])
def test_the_caps_fit_the_store_the_deployments_give_nats(path):
    """JetStream reserves each stream's max_bytes on every node holding a replica when the
    stream is made, and refuses a stream whose cap does not fit: the caps together must fit
    the nodes' max_file_store (read as decimal gigabytes, the smaller of the two readings)."""
    found = re.search(r"max_file_store:\s*(\d+)GB", (repo_root() / path).read_text())
    assert found, f"{path} sets no max_file_store"
    assert sum(config.max_bytes for config in STREAMS.values()) < int(found[1]) * 10**9


async def test_the_server_has_the_limits(nc):
    js = nc.jetstream()
    await bus.ensure_streams(js)
    for name, wanted in STREAMS.items():
        stored = (await js.stream_info(name)).config
        assert (stored.retention, stored.discard, stored.max_bytes) == (
            wanted.retention, wanted.discard, wanted.max_bytes
        ), name  # fmt: skip
        assert stored.max_age == pytest.approx(wanted.max_age), name
        assert stored.duplicate_window == pytest.approx(wanted.duplicate_window), name
    # The durable the users service applies readings with exists with the stream.
    durable = await js.consumer_info(subjects.READINGS_STREAM, subjects.USERS_APPLY_READINGS)
    assert durable.config.filter_subject == subjects.SSD_READINGS_WILDCARD
    assert durable.config.ack_wait == pytest.approx(bus.READINGS_ACK_WAIT_S)


async def test_readings_wait_for_the_users_service_and_go_once_applied(nc):
    """Sent before the users service ever ran: kept (an interest stream with no consumer
    would have acknowledged and dropped them). Applied: gone."""
    js = nc.jetstream()
    await bus.ensure_streams(js)
    await send_readings(js, range(5))
    assert await stored_messages(js, subjects.READINGS_STREAM) == 5

    await apply_readings(js, 3)

    await until_stored(js, subjects.READINGS_STREAM, (2, 4, 5))


async def test_a_full_readings_stream_refuses_new_readings_and_keeps_its_own(nc, monkeypatch):
    monkeypatch.setattr(bus, "READINGS_MAX_BYTES", 4096)
    js = nc.jetstream()
    await bus.ensure_streams(js)
    sent = 0
    with pytest.raises(Exception, match="maximum") as refused:
        for n in range(1000):
            await send_readings(js, range(n, n + 1))
            sent += 1
    assert getattr(refused.value, "err_code", None) == 10077  # maximum bytes exceeded
    assert 0 < sent < 1000
    # None dropped: every reading it acknowledged is there.
    assert await stored_range(js, subjects.READINGS_STREAM) == (sent, 1, sent)

    # Once the users service has applied them, there is room again.
    await apply_readings(js, sent)
    await until_stored(js, subjects.READINGS_STREAM, (0, sent + 1, sent))
    await send_readings(js, range(sent, sent + 1))
    assert await stored_messages(js, subjects.READINGS_STREAM) == 1


async def test_streams_of_the_previous_version_are_brought_to_the_limits_in_place(nc):
    """The previous version's streams, with what they hold: its users service had applied
    three of five readings. The readings it applied go, the others stay for it; the order
    events stay; every stream has the new limits, and nothing was made anew."""
    js = nc.jetstream()
    for config in the_previous_versions_streams():
        await js.add_stream(config)
    await js.add_consumer(
        subjects.READINGS_STREAM,
        bus.durable_config(subjects.USERS_APPLY_READINGS, subjects.SSD_READINGS_WILDCARD, 10.0),
    )
    await send_readings(js, range(5))
    await apply_readings(js, 3)
    for n in range(2):
        await js.publish(subjects.ORDERS_PENDING, b"{}", headers={"Nats-Msg-Id": f"o{n}"})

    await bus.ensure_streams(js)

    readings = await js.stream_info(subjects.READINGS_STREAM)
    assert readings.config.retention == api.RetentionPolicy.INTEREST
    await until_stored(js, subjects.READINGS_STREAM, (2, 4, 5))
    orders = await js.stream_info(subjects.ORDERS_STREAM)
    assert (orders.state.messages, orders.config.max_bytes) == (2, bus.ORDERS_MAX_BYTES)
    for name, wanted in STREAMS.items():
        stored = (await js.stream_info(name)).config
        assert (stored.max_bytes, stored.discard) == (wanted.max_bytes, wanted.discard), name
        assert stored.max_age == pytest.approx(wanted.max_age), name
