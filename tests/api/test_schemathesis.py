"""Property-based tests of both services against their own OpenAPI specs (schemathesis): no
server error, and every response matches the documented schema, status and content type."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import asyncpg
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from offsim_launcher.embedded import free_port
from schemathesis.config import SchemathesisConfig

SAMPLE_PRODUCTS = [("3017620422003", "Nutella"), ("5449000000996", "Coca-Cola")]


async def seed(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.executemany(
            "INSERT INTO products (barcode, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            SAMPLE_PRODUCTS,
        )
    finally:
        await conn.close()


def start(module: str, port: int, nats_url: str, database_url: str) -> subprocess.Popen:
    env = {**os.environ, "NATS_URL": nats_url, "DATABASE_URL": database_url,
           "HTTP_PORT": str(port), "LOG_LEVEL": "WARNING"}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", module], env=env)
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return proc
        except requests.ConnectionError:
            pass
        assert proc.poll() is None, f"{module} exited"
        assert time.monotonic() < deadline, f"{module} not healthy"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def services(nats_url: str, database_url: str) -> Iterator[dict[str, str]]:
    """The two services as real processes, as they run in production."""
    asyncio.run(seed(database_url))
    procs, urls = [], {}
    try:
        for name, module in (("users", "offsim_users"), ("orders", "offsim_orders")):
            port = free_port()
            procs.append(start(module, port, nats_url, database_url))
            urls[name] = f"http://127.0.0.1:{port}"
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


# CI runs a fixed, derandomized set; set OFFSIM_FUZZ_EXAMPLES to explore more, at random.
_EXPLORE = os.environ.get("OFFSIM_FUZZ_EXAMPLES")
FUZZ = settings(
    max_examples=int(_EXPLORE or 40),
    derandomize=_EXPLORE is None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


# A schema-valid request may still be refused for the state it meets: a conflict (409), or an
# Idempotency-Key the generator reused with another body (422). Both are documented answers.
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED}}}
)


def check_every_operation(base_url: str) -> int:
    """Run schemathesis' checks over generated requests for every operation of the spec."""
    schema = schemathesis.openapi.from_url(f"{base_url}/api/openapi.json", config=CONFIG)
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @FUZZ
        @given(case=operation.as_strategy())
        def run(case) -> None:
            case.call_and_validate(base_url=base_url)

        run()
    return operations


def test_users_api_conforms_to_its_spec(services):
    assert check_every_operation(services["users"]) == 5


def test_orders_api_conforms_to_its_spec(services):
    assert check_every_operation(services["orders"]) == 6
