"""OFFSIM_HTTP_WORKERS: worker processes serving one port, and /metrics summing all of them."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import aiohttp
from offsim_launcher import embedded

from tests.conftest import eventually

REQUESTS = 40


def unauthorized(text: str) -> float:
    """offsim_http_requests_total of GET /api/users/{id} answered 401 (no token), from a
    /metrics page."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("offsim_http_requests_total{")
        and 'route="/api/users/{id}"' in line
        and 'status="401"' in line
    )


async def test_workers_share_the_port_and_metrics_count_every_workers_requests(
    nats_url, database_url, pool, tmp_path
):
    port = embedded.free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "NATS_URL": nats_url,
           "HTTP_PORT": str(port), "OFFSIM_HTTP_WORKERS": "2", "LOG_LEVEL": "WARNING"}  # fmt: skip
    log = tmp_path / "users.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "offsim_users", env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def healthy() -> bool:
                assert proc.returncode is None, log.read_text()[-3000:]
                try:
                    async with http.get(f"{url}/api/health") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(healthy, within=30, interval=0.1)

        for user in range(REQUESTS):
            # A connection each: the kernel spreads new connections over the workers (all 40
            # to one of two workers: one chance in 2**39).
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http,
                http.get(f"{url}/api/users/{10**9 + user}") as resp,
            ):
                assert resp.status == 401

        for _ in range(6):  # whichever worker answers /metrics counts every worker's requests
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http,
                http.get(f"{url}/metrics") as resp,
            ):
                assert unauthorized(await resp.text()) == REQUESTS
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0, log.read_text()[-3000:]
