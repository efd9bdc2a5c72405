"""OFFSIM_HTTP_WORKERS: worker processes serving one port, and /metrics summing all of them."""

from __future__ import annotations

import os
import subprocess
import tempfile

import aiohttp
from offsim_common import metrics

from tests.conftest import eventually
from tests.helpers import metric
from tests.processes import Service

REQUESTS = 40
USER_ROUTE = "/api/users/{id}"


def listening(port: int) -> int:
    """IPv4 sockets listening on `port`, from the kernel's table (state 0A is LISTEN)."""
    with open("/proc/net/tcp") as lines:
        next(lines)
        return sum(
            fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port
            for fields in map(str.split, lines)
        )


async def test_workers_share_the_port_and_metrics_count_every_workers_requests(
    nats_url, database_url, pool, tmp_path
):
    env = {"DATABASE_URL": database_url, "NATS_URL": nats_url, "OFFSIM_HTTP_WORKERS": "2",
           "LOG_LEVEL": "WARNING"}  # fmt: skip
    users = Service("users", "offsim_users", env, tmp_path / "users.log")

    def fresh() -> aiohttp.ClientSession:
        # A connection each: the kernel spreads new connections over the workers (all 40 to
        # one of two workers: one chance in 2**39).
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))

    async with fresh() as http:
        await users.start(http)
    try:

        async def both_listening() -> bool:  # one socket each, sharing the port
            return listening(users.port) == 2

        await eventually(both_listening, within=30)
        for user in range(REQUESTS):
            async with fresh() as http, http.get(f"{users.url}/api/users/{user + 1}") as resp:
                assert resp.status == 401
        for _ in range(6):  # whichever worker answers /metrics counts every worker's requests
            async with fresh() as http, http.get(f"{users.url}/metrics") as resp:
                text = await resp.text()
            refused = metric(text, "offsim_http_requests_total", route=USER_ROUTE, status="401")
            assert refused == REQUESTS
    finally:
        await users.stop()
    assert users.proc.returncode == 0, users.log.read_text()[-3000:]


def test_metrics_left_by_a_killed_parent_are_removed_at_the_next_start(tmp_path, monkeypatch):
    """The directory is removed when the workers end; a parent killed outright (SIGKILL, out of
    memory) cannot, and the next start removes it: its pid, in the name, is gone."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ended = subprocess.Popen(["true"])
    ended.wait()
    stale = tmp_path / f"offsim-metrics-{ended.pid}-x1"
    living = tmp_path / f"offsim-metrics-{os.getppid()}-x2"  # another parent, still running
    for directory in (stale, living):
        directory.mkdir()
        (directory / "counter_1.db").write_bytes(b"\0" * 8)
    with metrics.shared_by_workers() as shared:
        assert shared.exists() and shared.parent == tmp_path
        assert not stale.exists()
        assert (living / "counter_1.db").exists()
    assert not shared.exists()
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
