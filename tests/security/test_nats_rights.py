"""Hostile tests of NATS's rights, against a real nats-server run with offsim's authorization
(nats_rights): no anonymous client, and each component's user refused what is not its job.
Every refusal is logged by the server, where an operator sees it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import aiomqtt
import nats
import pytest
from nats.aio.client import Client
from offsim_common import bus, credentials, nats_rights, subjects
from offsim_launcher import embedded

from tests.conftest import AS_SERVICE, changed, eventually
from tests.helpers import register, stored_orders

ADMIN = {"user": "offsim-admin", "password": credentials.new_password()}


@dataclass
class Secured:
    server: embedded.NatsServer
    creds: credentials.Credentials
    log: Path

    def user(self, component: str) -> dict[str, str]:
        return self.creds["nats"][component]

    def logged(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """A nats-server with a user per component and an operator's (for looking, not used by
    any component)."""
    root = tmp_path_factory.mktemp("secured-nats")
    creds = credentials.generate()
    log = root / "nats.log"
    server = embedded.start_nats(
        root / "store", log_file=log,
        authorization=nats_rights.authorization(creds["nats"], extra=[ADMIN]),
    )  # fmt: skip
    try:
        yield Secured(server, creds, log)
    finally:
        server.stop()


def violation(user: str, kind: str, subject: str) -> str:
    """How nats-server logs a refusal."""
    return f'"$G/user:{user}" - {kind} Violation - Subject "{subject}"'


@dataclass
class Session:
    nc: Client
    errors: list[str]

    async def refused(self, text: str) -> bool:
        """Whether the server tells this client it refused `text`. Its -ERR may come after the
        PONG of a flush (nats-py's own PINGs answer flushes too), so it is waited for."""

        async def told() -> bool:
            return any(text.lower() in error.lower() for error in self.errors)

        await self.nc.flush()
        try:
            await eventually(told, within=5)
        except AssertionError:
            return False
        return True


async def connect(url: str, user: str | None = None, password: str | None = None) -> Session:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(
        url, user=user, password=password, allow_reconnect=False, error_cb=on_error,
        inbox_prefix=nats_rights.inbox_prefix(user),
    )  # fmt: skip
    return Session(nc, errors)


@pytest.fixture
async def as_component(secured: Secured) -> AsyncIterator:
    sessions: list[Session] = []

    async def open_as(component: str) -> Session:
        entry = secured.user(component)
        session = await connect(secured.server.url, entry["user"], entry["password"])
        sessions.append(session)
        return session

    yield open_as
    for session in sessions:
        await session.nc.close()


@pytest.fixture
async def admin(secured: Secured) -> AsyncIterator[Client]:
    """The operator's connection, with offsim's streams made."""
    session = await connect(secured.server.url, ADMIN["user"], ADMIN["password"])
    await bus.ensure_streams(session.nc.jetstream())
    yield session.nc
    await session.nc.close()


async def test_an_anonymous_nats_client_is_refused_and_logged(secured: Secured):
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await connect(secured.server.url)
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await connect(secured.server.url, "users", "not its password")
    assert "authentication error" in secured.logged() or "Authorization" in secured.logged()


async def test_an_anonymous_mqtt_device_is_refused(secured: Secured):
    address = urlsplit(secured.server.mqtt_url)
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(address.hostname, address.port, identifier="anonymous-ssd"):
            pass


@pytest.fixture
async def users_secured(aiohttp_client, settings, pool, secured: Secured):
    """The users service in this process, connected as its own user to the secured server."""
    from offsim_users.app import create_app

    entry = secured.user("users")
    own = changed(
        settings, nats_url=secured.server.url, nats_user=entry["user"],
        nats_password=entry["password"],
    )  # fmt: skip
    app = create_app(own)
    return await aiohttp_client(app, headers=AS_SERVICE)


async def stock(users, user_id: int, barcode: str) -> int:
    detail = await (await users.get(f"/api/users/{user_id}")).json()
    (row,) = [row for row in detail["ssds"][0]["stock"] if row["barcode"] == barcode]
    return row["quantity"]


def completed(order_id: int, ssd_id: int, barcode: str) -> bytes:
    now = datetime.now(UTC).isoformat()
    return json.dumps({"id": order_id, "ssd_id": ssd_id, "barcode": barcode, "quantity": 1,
                       "status": "completed", "timestamp": now}).encode()  # fmt: skip


async def test_the_generator_cannot_complete_an_order_and_no_stock_changes(
    users_secured, pool, products, secured: Secured, as_component, admin: Client
):
    user = await register(users_secured, "hostile-generator@example.org")
    device = user["devices"][0]
    ssd_id, barcode = device["id"], device["watched"][0]
    before = await stock(users_secured, user["id"], barcode)
    (forged, real) = await stored_orders(pool, ssd_id, [barcode, barcode])

    orders = admin.jetstream()
    last = (await orders.stream_info(subjects.ORDERS_STREAM)).state.last_seq
    generator = await as_component("generator")
    await generator.nc.publish(subjects.ORDERS_COMPLETED, completed(forged, ssd_id, barcode))
    assert await generator.refused('Publish to "orders.completed"')
    # Over JetStream too: the stream never hears of it (no ack comes back).
    with pytest.raises(nats.errors.TimeoutError):
        await generator.nc.jetstream().publish(
            subjects.ORDERS_COMPLETED, completed(forged, ssd_id, barcode), timeout=1
        )
    assert (await orders.stream_info(subjects.ORDERS_STREAM)).state.last_seq == last

    # The courier's user may: its completion reaches the users service, which adds it. So the
    # consumer was there all along, and the forged completion never reached it.
    notifications = await as_component("notifications")
    await notifications.nc.jetstream().publish(
        subjects.ORDERS_COMPLETED, completed(real, ssd_id, barcode)
    )

    async def delivered() -> bool:
        return await stock(users_secured, user["id"], barcode) == before + 1

    await eventually(delivered)
    async with pool.acquire() as conn:
        stocked = {r["order_id"] for r in await conn.fetch("SELECT order_id FROM stock_deliveries")}
    assert stocked == {real}
    assert violation("generator", "Publish", "orders.completed") in secured.logged()


async def test_a_device_may_send_its_readings_and_nothing_else(
    secured: Secured, as_component, admin: Client
):
    device = await as_component("device")
    reading = {"ssd_id": 7, "barcode": "3017620422003", "quantity": 1, "reading_id": "d-1"}
    ack = await device.nc.jetstream().publish(
        subjects.ssd_readings(7), json.dumps(reading).encode(), timeout=5
    )
    assert ack.stream == subjects.READINGS_STREAM

    await device.nc.subscribe(subjects.USERS_REGISTERED)
    assert await device.refused('Subscription to "users.registered"')
    for subject in (subjects.ORDERS_PENDING, subjects.ORDERS_COMPLETED, subjects.USERS_REGISTERED,
                    subjects.ORDERS_RANDOM, "$JS.API.STREAM.DELETE.READINGS"):  # fmt: skip
        await device.nc.publish(subject, b"{}")
        assert await device.refused(f'Publish to "{subject}"'), subject
    log = secured.logged()
    assert violation("device", "Subscription", "users.registered") in log
    assert violation("device", "Publish", "orders.pending") in log


async def test_a_device_over_mqtt_may_send_its_readings_and_nothing_else(
    secured: Secured, admin: Client
):
    js = admin.jetstream()
    before = (await js.stream_info(subjects.READINGS_STREAM)).state.messages
    entry = secured.user("device")
    address = urlsplit(secured.server.mqtt_url)
    async with aiomqtt.Client(
        address.hostname, address.port, identifier="hostile-ssd-8",
        username=entry["user"], password=entry["password"],
    ) as mqtt:  # fmt: skip
        reading = {"ssd_id": 8, "barcode": "3017620422003", "quantity": 1, "reading_id": "m-8"}
        await mqtt.publish(subjects.ssd_readings_topic(8), json.dumps(reading), qos=1)

    async def stored() -> bool:
        return (await js.stream_info(subjects.READINGS_STREAM)).state.messages == before + 1

    await eventually(stored)
    # Anything else: a subscription is refused in its SUBACK; a publish is dropped by the
    # server (MQTT 3.1.1 has no way to refuse a QoS 1 publish but to close the connection),
    # and both are logged.
    last = (await js.stream_info(subjects.ORDERS_STREAM)).state.last_seq
    async with aiomqtt.Client(
        address.hostname, address.port, identifier="hostile-ssd-9",
        username=entry["user"], password=entry["password"],
    ) as mqtt:  # fmt: skip
        (granted,) = await mqtt.subscribe("users/registered", qos=1)
        assert granted.is_failure
        await mqtt.publish("orders/completed", b"{}", qos=1, timeout=5)
    assert (await js.stream_info(subjects.ORDERS_STREAM)).state.last_seq == last
    assert (await js.stream_info(subjects.READINGS_STREAM)).state.messages == before + 1
    log = secured.logged()
    assert '"hostile-ssd-9" - Subscription Violation - Subject "users.registered"' in log
    assert '"hostile-ssd-9" - Publish Violation - Subject "orders.completed"' in log


@pytest.mark.parametrize("component", nats_rights.RIGHTS)
async def test_no_component_may_delete_or_purge_a_stream(
    component: str, secured: Secured, as_component, admin: Client
):
    session = await as_component(component)
    js = session.nc.jetstream(timeout=1)
    with pytest.raises(nats.errors.TimeoutError):
        await js.delete_stream(subjects.ORDERS_STREAM)
    with pytest.raises(nats.errors.TimeoutError):
        await js.purge_stream(subjects.ORDERS_STREAM)
    assert await session.refused(f'Publish to "$JS.API.STREAM.DELETE.{subjects.ORDERS_STREAM}"')
    assert (await admin.jetstream().stream_info(subjects.ORDERS_STREAM)).config.name


def test_each_component_subscribes_only_to_its_own_inbox():
    """Replies (JetStream's acks, requests' answers) come to a user's own inboxes, and no user
    may subscribe to another's, nor to every inbox."""
    creds = credentials.generate()["nats"]
    for component, entry in creds.items():
        perms = nats_rights.permissions(component, entry["user"])
        allowed = perms["subscribe"].get("allow", [])
        inboxes = [subject for subject in allowed if subject.startswith("_INBOX")]
        assert inboxes in ([], [f"_INBOX.{entry['user']}.>"]), component
        assert "_INBOX.>" not in allowed and ">" not in allowed, component
