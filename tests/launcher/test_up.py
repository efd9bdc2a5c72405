"""`offsim up` as a user runs it: its own NATS and Postgres, the live feed, a clean Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest
from offsim_common.settings import ConfigError
from offsim_launcher import embedded
from offsim_launcher.up import mqtt_port


async def run_up(
    data_dir, until: str, within: float = 90.0, **env_vars: str
) -> tuple[list[str], int]:
    """Start `offsim up`, read its output until a line contains `until`, then press Ctrl-C."""
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
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            rest = (await proc.stdout.read()).decode()
            code = await proc.wait()
    finally:
        if proc.returncode is None:
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
