"""`offsim up`: the whole simulation on one machine, shown live in the terminal.

Starts an embedded NATS (JetStream) and Postgres in the data directory unless NATS_URL /
DATABASE_URL point elsewhere, migrates, loads the bundled OFF sample, starts users, orders,
notifications and the generator as separate processes, and prints the live feed. Ctrl-C stops
everything in order; the next run reuses the data.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
from offsim_common import bus, credentials, nats_rights
from offsim_common.credentials import Credentials
from offsim_common.db import create_pool
from offsim_common.db_roles import ensure_roles
from offsim_common.migrate import migrate
from offsim_common.service import stop_on_signals
from offsim_common.settings import ConfigError, ServiceSettings
from offsim_etl import run_etl
from offsim_etl.settings import EtlSettings

from . import embedded
from .feed import Feed
from .processes import Child

log = logging.getLogger(__name__)

DATABASE = "offsim"
NATS_PORT = 4222
USERS_PORT = 8081
ORDERS_PORT = 8082
GENERATOR_PORT = 8084
DASHBOARD_PORT = 8085
MQTT_PORT = 1883


@dataclass(frozen=True)
class UpOptions:
    data_dir: Path
    load_sample: bool = True


def pick_port(preferred: int) -> int:
    return preferred if not embedded.port_open(preferred) else embedded.free_port()


def mqtt_port() -> int:
    """MQTT_PORT: where the embedded NATS takes the SSDs' MQTT connections (if that port is
    taken, `offsim up` picks a free one, as for the others). Empty means the default."""
    value = os.environ.get("MQTT_PORT", "").strip() or str(MQTT_PORT)
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise ConfigError(f"MQTT_PORT: must be a port number (1 to 65535), got {value!r}")
    return int(value)


async def wait_healthy(url: str, child: Child, within: float = 60.0) -> None:
    """Wait for GET /api/health to answer 200; fail early if the process died."""
    deadline = asyncio.get_running_loop().time() + within
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while True:
            if child.process is not None and child.process.returncode is not None:
                raise RuntimeError(f"{child.name} exited; see {child.log_path}")
            try:
                async with http.get(f"{url}/api/health") as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(
                    f"{child.name} not healthy after {within:.0f}s; see {child.log_path}"
                )
            await asyncio.sleep(0.2)


async def ensure_roles_at(database_url: str, roles: dict[str, dict[str, str]]) -> None:
    """Each component's role made, with its password and its rights (as the owner)."""
    conn = await asyncpg.connect(database_url)
    try:
        await ensure_roles(conn, roles)
    finally:
        await conn.close()


def say(text: str) -> None:
    print(f"offsim: {text}", flush=True)


def service_token(data: Path) -> str:
    """The service credential of this data folder: made once, kept in `service-token` (readable
    by its owner only), the same for every service and the generator."""
    path = data / "service-token"
    if path.exists():
        return path.read_text().strip()
    data.mkdir(parents=True, exist_ok=True)
    token = "offsim_service_" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token


def nats_env(credentials: Credentials | None, component: str) -> dict[str, str]:
    """A child's NATS identity: its component's user on the embedded server; on a server of
    the caller's (NATS_URL), whatever the caller's environment says (NATS_USER, ...)."""
    if credentials is None:
        return {}
    entry = credentials["nats"][component]
    return {"NATS_USER": entry["user"], "NATS_PASSWORD": entry["password"]}


def database_env(credentials: Credentials | None, component: str, owner_url: str) -> dict[str, str]:
    """A child's database identity: its component's role on the embedded Postgres; on a
    database of the caller's (DATABASE_URL), that URL as given."""
    if credentials is None:
        return {"DATABASE_URL": owner_url}
    entry = credentials["postgres"][component]
    return {"DATABASE_URL": embedded.with_user(owner_url, entry["user"]),
            "DATABASE_PASSWORD": entry["password"]}  # fmt: skip


async def up(settings: ServiceSettings, options: UpOptions, stop: asyncio.Event) -> None:
    data = options.data_dir.resolve()
    logs = data / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # Every credential of this data folder (docs/security.md): the embedded servers' users
    # and roles, one per component.
    secrets_path = data / "credentials.json"
    local = credentials.load_or_create(secrets_path)
    async with AsyncExitStack() as stack:
        if "NATS_URL" in os.environ:
            nats_url, nats_credentials = settings.nats_url, None
            # That server's MQTT listener, if the caller says where it is.
            mqtt_url = os.environ.get("MQTT_URL") or None
        else:
            server = await asyncio.to_thread(
                embedded.start_nats, data / "nats", pick_port(NATS_PORT), logs / "nats.log",
                mqtt_port=pick_port(mqtt_port()),
                authorization=nats_rights.authorization(local["nats"]),
            )  # fmt: skip
            stack.callback(server.stop)
            nats_url, mqtt_url, nats_credentials = server.url, server.mqtt_url, local
            say(f"NATS (JetStream) at {nats_url}, data in {data / 'nats'}")
        if "DATABASE_URL" in os.environ:
            database_url, pg_credentials = settings.database_url, None
        else:
            pg = await asyncio.to_thread(embedded.start_postgres, data / "postgres", detach=True)
            stack.callback(pg.cleanup)
            database_url = await embedded.ensure_database(pg, DATABASE)
            await embedded.require_passwords(pg)
            pg_credentials = local
            say(f"Postgres at {database_url}")

        applied = await migrate(database_url)
        say(f"migrations: {', '.join(applied) if applied else 'up to date'}")
        if pg_credentials is not None:
            await ensure_roles_at(database_url, pg_credentials["postgres"])
            say(f"a NATS user and a Postgres role per component, in {secrets_path}")
        if options.load_sample:
            etl = database_env(pg_credentials, "etl", database_url)
            summary = await run_etl(
                EtlSettings.from_env({**os.environ, **etl}),
                "sample",
                progress=sys.stderr.isatty(),
            )
            say(
                f"OFF sample: {summary.kept} products kept ({summary.inserted} new, "
                f"{summary.updated} updated, {summary.unchanged} unchanged), "
                f"{summary.rejected_total} rejected"
            )

        users_port, orders_port = pick_port(USERS_PORT), pick_port(ORDERS_PORT)
        dashboard_port = pick_port(DASHBOARD_PORT)
        generator_port = pick_port(GENERATOR_PORT)
        users_url = f"http://127.0.0.1:{users_port}"
        orders_url = f"http://127.0.0.1:{orders_port}"
        dashboard_url = f"http://127.0.0.1:{dashboard_port}"
        generator_url = f"http://127.0.0.1:{generator_port}"
        token = settings.service_token or service_token(data)
        common = {"NATS_URL": nats_url,
                  "SIM_SPEED": str(settings.sim_speed),
                  "USERS_URL": users_url, "ORDERS_URL": orders_url,
                  "GENERATOR_URL": generator_url,
                  "OFFSIM_SERVICE_TOKEN": token,
                  **({"MQTT_URL": mqtt_url} if mqtt_url else {})}  # fmt: skip
        if nats_credentials is not None:  # the SSDs' MQTT connections, as devices
            device = nats_credentials["nats"]["device"]
            common_generator = {"MQTT_USER": device["user"], "MQTT_PASSWORD": device["password"]}
        else:
            common_generator = {}

        def child(name: str, module: str, port: int, **extra: str) -> Child:
            env = {**common, **nats_env(nats_credentials, name),
                   **database_env(pg_credentials, name, database_url),
                   "HTTP_PORT": str(port), **extra}  # fmt: skip
            return Child(name, module, env, logs / f"{name}.log")

        children = [
            child("users", "offsim_users", users_port),
            child("orders", "offsim_orders", orders_port),
            child("notifications", "offsim_notifications", embedded.free_port()),
            child("dashboard", "offsim_dashboard", dashboard_port),
            child("generator", "offsim_generator", generator_port, **common_generator),
        ]
        for each in children:  # popped last first: the generator stops before the services
            stack.push_async_callback(each.stop)

        users, orders, _, dashboard, generator = children
        for each in children[:-1]:
            await each.start()
        for url, each in ((users_url, users), (orders_url, orders), (dashboard_url, dashboard)):
            await wait_healthy(url, each)

        # The live feed sees what the dashboard sees, with the dashboard's rights; the streams
        # it follows exist once the services are up.
        viewer = {**nats_env(nats_credentials, "dashboard"),
                  **database_env(pg_credentials, "dashboard", database_url)}  # fmt: skip
        viewer_settings = ServiceSettings.from_env({**os.environ, **common, **viewer})
        pool = await create_pool(viewer_settings.database_url, max_size=2)
        stack.push_async_callback(pool.close)
        nc = await bus.connect(nats_url, "offsim-up", viewer_settings.nats_user,
                               viewer_settings.nats_password)  # fmt: skip
        stack.push_async_callback(nc.close)
        feed = Feed(pool)
        await feed.subscribe(nc)
        await generator.start()
        say(f"users service   {users_url}   (e.g. curl {users_url}/api/health)")
        say(f"orders service  {orders_url}   (e.g. curl {orders_url}/api/orders)")
        say(f"API docs        {users_url}/api/docs   {orders_url}/api/docs")
        if not settings.service_token:
            say(f"service token   in {data / 'service-token'} (Authorization: Bearer ...)")
        say(f"dashboard       {dashboard_url}   (open it in a browser to watch)")
        say(f"generator       {generator_url}/api/control   (phase, rates, faults)")
        if mqtt_url:
            say(f"MQTT (devices)  {mqtt_url}   (topic ssds/<id>/readings, QoS 1)")
        say(f"service logs in {logs}; sim speed x{settings.sim_speed:g}; Ctrl-C stops")
        supervisors = [asyncio.create_task(c.supervise(feed.say)) for c in children]
        supervisors.append(asyncio.create_task(feed.follow_generator(generator_url)))
        await stop.wait()
        say("stopping…")
        for task in supervisors:
            task.cancel()
    say("stopped")


def run_until_signal(
    work: Callable[[ServiceSettings, asyncio.Event], Awaitable[None]], settings: ServiceSettings
) -> None:
    """Run `work` until Ctrl-C or SIGTERM sets its stop event, then let it finish in order."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        with stop_on_signals(asyncio.Event()) as stop:
            await work(settings, stop)

    asyncio.run(main())


def run_up(data_dir: Path, load_sample: bool) -> None:
    options = UpOptions(data_dir, load_sample)
    run_until_signal(lambda settings, stop: up(settings, options, stop), ServiceSettings.from_env())
