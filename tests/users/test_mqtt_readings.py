"""An SSD that speaks MQTT: its readings, published with QoS 1 to ssds/<id>/readings on NATS's
own MQTT listener, reach the users service's durable consumer and lower the stock, each once."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import aiomqtt
from offsim_common import subjects

from tests.conftest import eventually
from tests.helpers import metric, register


async def stock(users, user_id: int, barcode: str) -> int:
    """The quantity the users API shows for the user's SSD and product."""
    detail = await (await users.get(f"/api/users/{user_id}")).json()
    (row,) = [row for row in detail["ssds"][0]["stock"] if row["barcode"] == barcode]
    return row["quantity"]


async def readings_counted(users, outcome: str) -> float:
    page = await (await users.get("/metrics")).text()
    return metric(page, "offsim_ssd_readings_total", outcome=outcome)


async def test_mqtt_readings_lower_the_stock_once_each(users, pool, products, mqtt_url):
    user = await register(users, "mqtt-device@example.org")
    device = user["devices"][0]
    ssd_id, barcode = device["id"], device["watched"][0]
    before = await stock(users, user["id"], barcode)
    assert before >= 3, "the test uses 3 units"
    duplicates = await readings_counted(users, "duplicate")
    # What a device sends: plain JSON, its own reading ids, a timestamp when it has a clock.
    first = {"ssd_id": ssd_id, "barcode": barcode, "quantity": 1, "reading_id": "m-1",
             "timestamp": "2026-01-05T08:30:00+00:00"}  # fmt: skip
    second = {"ssd_id": ssd_id, "barcode": barcode, "quantity": 2, "reading_id": "m-2"}
    address = urlsplit(mqtt_url)
    topic = subjects.ssd_readings_topic(ssd_id)
    async with aiomqtt.Client(
        address.hostname, address.port, identifier=f"offsim-test-ssd-{ssd_id}"
    ) as mqtt:
        await mqtt.publish(topic, json.dumps(first), qos=1)
        await mqtt.publish(topic, json.dumps(second), qos=1)

        async def used() -> bool:
            return await stock(users, user["id"], barcode) == before - 3

        await eventually(used)
        # Sent again (a device that lost the PUBACK): the service sees it, nothing is used.
        await mqtt.publish(topic, json.dumps(second), qos=1)

    async def seen_again() -> bool:
        return await readings_counted(users, "duplicate") == duplicates + 1

    await eventually(seen_again)
    assert await stock(users, user["id"], barcode) == before - 3
