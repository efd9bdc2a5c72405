"""The embedded servers that `offsim up`, the tests and the benchmarks run."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import aiomqtt
from offsim_common import bus, subjects
from offsim_launcher.embedded import POSTGRES_SETTINGS

from tests.conftest import eventually


async def test_embedded_postgres_runs_with_offsim_settings(pool):
    async with pool.acquire() as conn:
        for name, value in POSTGRES_SETTINGS.items():
            assert await conn.fetchval(f"SHOW {name}") == value


def mqtt_client(mqtt_url: str, identifier: str) -> aiomqtt.Client:
    address = urlsplit(mqtt_url)
    return aiomqtt.Client(address.hostname, address.port, identifier=identifier)


async def test_embedded_nats_stores_what_mqtt_devices_publish(nc, mqtt_url):
    """An SSD speaking MQTT publishes to ssds/<id>/readings with QoS 1; NATS's own MQTT
    listener hands it on as ssds.<id>.readings, where the READINGS stream keeps it."""
    js = nc.jetstream()
    await bus.ensure_streams(js)
    reading = {"ssd_id": 42, "barcode": "3017620422003", "quantity": 2, "reading_id": "r-1"}
    async with mqtt_client(mqtt_url, "offsim-test-ssd-42") as device:
        await device.publish(subjects.ssd_readings_topic(42), json.dumps(reading), qos=1)

    async def stored():
        info = await js.stream_info(subjects.READINGS_STREAM)
        return info.state.messages

    assert await eventually(stored, within=5) == 1
    message = await js.get_last_msg(subjects.READINGS_STREAM, subjects.ssd_readings(42))
    assert message.subject == "ssds.42.readings"
    assert json.loads(message.data) == reading
