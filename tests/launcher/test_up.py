"""`offsim up` as a user runs it: its own NATS and Postgres, the live feed, a clean Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import stat
import sys
import tempfile
from pathlib import Path

import aiohttp
import asyncpg
import nats
import pytest
from offsim_common.credentials import POSTGRES_COMPONENTS as COMPONENTS
from offsim_common.settings import ConfigError
from offsim_launcher import embedded
from offsim_launcher.up import mqtt_port

from tests.conftest import eventually


async def run_up(
    data_dir, until: str, within: float = 90.0, during=None, **env_vars: str
) -> tuple[list[str], int]:
    """Start `offsim up`, read its output until a line contains `until`, then (after awaiting
    `during(lines)`, if given) press Ctrl-C."""
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    env.update({"OFFSIM_DATA_DIR": str(data_dir), "SIM_SPEED": "600", "OFFSIM_SEED": "3"})
    env.update(env_vars)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "offsim_launcher", "up",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        async with asyncio.timeout(within):
            while until not in (line := (await proc.stdout.readline()).decode()):
                assert line, "offsim up exited early:\n" + "".join(lines)
                lines.append(line)
        if during is not None:
            await during([*lines, line])
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            rest = (await proc.stdout.read()).decode()
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            # A test that failed midway still stops the city in order: its services run in
            # sessions of their own, which a kill of the launcher would leave running.
            proc.send_signal(signal.SIGINT)
            try:
                async with asyncio.timeout(60):
                    await proc.communicate()  # its output read meanwhile: a full pipe blocks it
            except TimeoutError:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
    return [*lines, line, *rest.splitlines(keepends=True)], code


@pytest.fixture
def data_dir():
    """Outside pytest's private temporary root: the embedded Postgres runs as its own user."""
    path = Path(tempfile.mkdtemp(prefix="offsim-test-up-"))
    yield path / "data"
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
async def test_offsim_up_shows_orders_completing_and_stops_cleanly(data_dir):
    mqtt = embedded.free_port()
    lines, code = await run_up(data_dir, until="✓ order", MQTT_PORT=str(mqtt))
    text = "".join(lines)
    assert code == 0, text
    assert "migrations: 001_schema.sql" in text
    assert "products kept" in text
    assert "+ user " in text and " pending " in text and " shipped " in text
    assert "dashboard       http://127.0.0.1:" in text
    assert "generator       http://127.0.0.1:" in text and "/api/control" in text
    # The devices' address: the MQTT_PORT asked for, as it was free.
    assert f"MQTT (devices)  mqtt://127.0.0.1:{mqtt}   (topic ssds/<id>/readings" in text
    assert text.rstrip().endswith("offsim: stopped")

    # A second run reuses the data: nothing to migrate, every product unchanged.
    lines, code = await run_up(data_dir, until="+ user ")
    text = "".join(lines)
    assert code == 0, text
    assert "migrations: up to date" in text
    assert "(0 new, 0 updated" in text


@pytest.mark.parametrize("value", ["mqtt", "0", "70000", "-1"])
def test_a_bad_mqtt_port_is_refused_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("MQTT_PORT", value)
    with pytest.raises(ConfigError, match="MQTT_PORT"):
        mqtt_port()


def test_mqtt_port_defaults_to_the_mqtt_port(monkeypatch):
    monkeypatch.setenv("MQTT_PORT", "")
    assert mqtt_port() == 1883
    monkeypatch.setenv("MQTT_PORT", "11883")
    assert mqtt_port() == 11883


def command_lines() -> list[str]:
    """The arguments of every process on the machine."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            found.append(cmdline.read_bytes().decode(errors="replace"))
        except OSError:
            pass  # gone meanwhile
    return found


def said(lines: list[str], prefix: str) -> str:
    """The first word after `prefix` in the lines `offsim up` printed."""
    (line,) = [line for line in lines if prefix in line][:1]
    return line.split(prefix, 1)[1].split()[0].rstrip(",")


@pytest.mark.slow
async def test_offsim_up_runs_each_component_with_its_own_credentials(data_dir):
    secrets: list[str] = []

    async def look(lines: list[str]) -> None:
        path = data_dir / "credentials.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        creds = json.loads(path.read_text())
        assert set(creds) == {"nats", "postgres"}
        assert set(creds["nats"]) == {*COMPONENTS, "device"}
        assert set(creds["postgres"]) == set(COMPONENTS)
        for section in creds.values():
            for entry in section.values():
                assert set(entry) == {"user", "password"} and entry["password"]
                secrets.append(entry["password"])
        secrets.append((data_dir / "service-token").read_text().strip())

        # NATS: no anonymous client; the dashboard's user may not publish an order event.
        nats_url = said(lines, "NATS (JetStream) at ")
        with pytest.raises(Exception, match=r"(?i)authorization"):
            await nats.connect(nats_url, allow_reconnect=False)
        viewer = creds["nats"]["dashboard"]
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        nc = await nats.connect(nats_url, user=viewer["user"], password=viewer["password"],
                                allow_reconnect=False, error_cb=on_error)  # fmt: skip
        await nc.publish("orders.completed", b"{}")
        await nc.flush()

        async def refused() -> bool:  # the server's -ERR may follow the flush's PONG
            return any('publish to "orders.completed"' in e.lower() for e in errors)

        await eventually(refused, within=5)
        await nc.close()

        # Postgres: every client but this one is a component's role, and a role's password is
        # checked.
        owner_url = said(lines, "Postgres at ")
        conn = await asyncpg.connect(owner_url)
        try:
            rows = await conn.fetch(
                """SELECT usename FROM pg_stat_activity
                   WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"""
            )
            roles = {row["usename"] for row in rows}
        finally:
            await conn.close()
        assert {"offsim_users", "offsim_orders", "offsim_dashboard"} <= roles, roles
        assert roles <= {entry["user"] for entry in creds["postgres"].values()}, roles
        dashboard_url = embedded.with_user(owner_url, creds["postgres"]["dashboard"]["user"])
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(dashboard_url, password="not its password")

        # Nothing secret in a process's arguments, nor in the generator's control state.
        assert not [args for args in command_lines() if any(s in args for s in secrets)]
        control_url = said(lines, "generator       ")
        async with aiohttp.ClientSession() as http:
            async with http.get(control_url) as resp:
                control = await resp.text()
        assert resp.status == 200 and not [s for s in secrets if s in control]

    lines, code = await run_up(data_dir, until="✓ order", during=look)
    assert code == 0, "".join(lines)
    # Nothing secret in what it printed, nor in any log.
    logged = "".join(lines) + "".join(
        p.read_text(errors="replace") for p in (data_dir / "logs").glob("*.log")
    )
    assert secrets and not [secret for secret in secrets if secret in logged]
