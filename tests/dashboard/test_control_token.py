"""Changing the generator through the dashboard needs a control token; reading stays open.

A real generator (its control API on a free port, as `offsim-generator` serves it) behind a
dashboard on the test run's NATS and Postgres. Whether a change reached the generator is read
from the generator itself, at its own port, never from the dashboard's answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from offsim_dashboard.app import create_app
from offsim_dashboard.settings import DashboardSettings
from offsim_generator.__main__ import run
from offsim_launcher.embedded import free_port

from tests.conftest import SERVICE_TOKEN, against, changed, eventually
from tests.helpers import metric

CONTROL_TOKEN = "test-operator-control-token"
WRONG_TOKEN = "not-the-token-0123456789"
CHANGE = {"random_order_rate": 7, "faults": {"reject": 0.5}}
REFUSED = "offsim_dashboard_control_refused_total"


@dataclass
class Generator:
    url: str
    http: aiohttp.ClientSession

    async def state(self) -> dict:
        async with self.http.get(f"{self.url}/api/control") as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def untouched(self) -> bool:
        """No override set: the scenario's own values, as the generator started."""
        overrides = (await self.state())["overrides"]
        return overrides == {
            "register_rate": None,
            "random_order_rate": None,
            "consumption": None,
            "faults": {},
        }


@pytest.fixture
async def generator(users, orders, products, settings, pool, nc) -> AsyncIterator[Generator]:
    port = free_port()
    quiet = against(settings, users, orders, seed=4, tick_seconds=10**6)
    stop = asyncio.Event()
    running = asyncio.create_task(run(quiet, stop, probe_port=port))
    try:
        async with aiohttp.ClientSession() as http:
            found = Generator(f"http://127.0.0.1:{port}", http)

            async def answers() -> bool:
                try:
                    return (await found.state())["scenario"] == "steady"
                except aiohttp.ClientError:
                    return False

            await eventually(answers, within=30)
            yield found
    finally:
        stop.set()
        await running


@pytest.fixture
def make_dashboard(aiohttp_client, settings, generator):
    """A dashboard in front of the generator, with the control token unless told otherwise."""

    async def make(**changes):
        given = {"generator_url": generator.url, "control_token": CONTROL_TOKEN, **changes}
        return await aiohttp_client(create_app(changed(settings, **given)))

    return make


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def refused_counts(dashboard) -> dict[str, float]:
    text = await (await dashboard.get("/metrics")).text()
    reasons = ("missing", "malformed", "wrong", "unconfigured")
    return {reason: metric(text, REFUSED, reason=reason) for reason in reasons}


async def test_reads_stay_open_without_a_token_and_show_no_secret(make_dashboard, generator):
    dashboard = await make_dashboard()
    for path in ("/", "/api/summary", "/api/health"):
        resp = await dashboard.get(path)
        assert resp.status == 200, f"{path}: {await resp.text()}"
    resp = await dashboard.get("/api/generator")
    assert resp.status == 200
    text = await resp.text()
    assert (await resp.json())["scenario"] == "steady"
    # Neither token, nor the generator's own view of its settings, is in the answer.
    assert SERVICE_TOKEN not in text and CONTROL_TOKEN not in text
    async with generator.http.get(f"{generator.url}/api/control") as direct:
        assert SERVICE_TOKEN not in await direct.text()


@pytest.mark.parametrize("method", ["PUT", "POST"])
async def test_a_change_without_a_token_is_refused_401_and_never_reaches_the_generator(
    make_dashboard, generator, method
):
    dashboard = await make_dashboard()
    resp = await dashboard.request(method, "/api/generator", json=CHANGE)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    body = await resp.json()
    assert body["error"] == "unauthorized"
    assert body["details"] == {"Authorization": "missing"}
    assert "control token" in body["message"]
    assert await generator.untouched()


@pytest.mark.parametrize(
    ("authorization", "problem"),
    [
        (f"Bearer {WRONG_TOKEN}", "wrong token"),
        (f"Bearer {SERVICE_TOKEN}x", "wrong token"),
        (f"Basic {CONTROL_TOKEN}", "malformed"),
        ("Bearer ", "malformed"),
    ],
)
async def test_a_wrong_or_malformed_token_is_refused_401_and_never_reaches_the_generator(
    make_dashboard, generator, authorization, problem
):
    dashboard = await make_dashboard()
    resp = await dashboard.put(
        "/api/generator", json=CHANGE, headers={"Authorization": authorization}
    )
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    body = await resp.json()
    assert body["error"] == "unauthorized" and body["details"] == {"Authorization": problem}
    assert await generator.untouched()


@pytest.mark.parametrize("token", [SERVICE_TOKEN, CONTROL_TOKEN], ids=["service", "control"])
async def test_an_accepted_token_changes_the_generator(make_dashboard, generator, token):
    dashboard = await make_dashboard()
    resp = await dashboard.put("/api/generator", json=CHANGE, headers=bearer(token))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["rates"]["random_order_rate"] == 7
    # The generator itself holds the change.
    overrides = (await generator.state())["overrides"]
    assert overrides["random_order_rate"] == 7 and overrides["faults"] == {"reject": 0.5}


async def test_the_service_token_alone_is_accepted_without_a_control_token(
    make_dashboard, generator
):
    dashboard = await make_dashboard(control_token=None)
    resp = await dashboard.put("/api/generator", json=CHANGE, headers=bearer(CONTROL_TOKEN))
    assert resp.status == 401  # not configured here, so not a token of this dashboard
    assert await generator.untouched()
    resp = await dashboard.put("/api/generator", json=CHANGE, headers=bearer(SERVICE_TOKEN))
    assert resp.status == 200, await resp.text()
    assert (await generator.state())["overrides"]["random_order_rate"] == 7


async def test_the_generators_refusal_comes_back_through_an_accepted_token(
    make_dashboard, generator
):
    dashboard = await make_dashboard()
    resp = await dashboard.put(
        "/api/generator", json={"faults": {"reject": 2}}, headers=bearer(CONTROL_TOKEN)
    )
    assert resp.status == 400
    assert set((await resp.json())["details"]) == {"faults.reject"}
    assert await generator.untouched()


async def test_refusals_are_counted_by_reason_and_logged_without_the_token(
    make_dashboard, generator, caplog
):
    dashboard = await make_dashboard()
    before = await refused_counts(dashboard)
    with caplog.at_level(logging.WARNING, logger="offsim_dashboard.control_auth"):
        await dashboard.put("/api/generator", json=CHANGE)
        for _ in range(2):
            await dashboard.put("/api/generator", json=CHANGE, headers=bearer(WRONG_TOKEN))
        await dashboard.put("/api/generator", json=CHANGE, headers={"Authorization": "Token x"})
        # Accepted changes and reads are not refusals.
        await dashboard.put("/api/generator", json=CHANGE, headers=bearer(CONTROL_TOKEN))
        await dashboard.get("/api/generator")
    after = await refused_counts(dashboard)
    assert {reason: after[reason] - before[reason] for reason in after} == {
        "missing": 1,
        "malformed": 1,
        "wrong": 2,
        "unconfigured": 0,
    }
    refusals = [r for r in caplog.records if r.name == "offsim_dashboard.control_auth"]
    assert [r.levelno for r in refusals] == [logging.WARNING] * 4
    assert all("PUT /api/generator" in r.getMessage() for r in refusals)
    assert sum("wrong token" in r.getMessage() for r in refusals) == 2
    logged = caplog.text
    assert WRONG_TOKEN not in logged and CONTROL_TOKEN not in logged
    assert SERVICE_TOKEN not in logged


async def test_without_any_token_configured_every_change_is_refused_503(
    make_dashboard, generator, caplog
):
    with caplog.at_level(logging.WARNING, logger="offsim_dashboard.control_auth"):
        dashboard = await make_dashboard(control_token=None, service_token=None)
    assert "no control token configured" in caplog.text  # said once, at start
    before = await refused_counts(dashboard)
    for headers in ({}, bearer(SERVICE_TOKEN), bearer(CONTROL_TOKEN)):
        resp = await dashboard.put("/api/generator", json=CHANGE, headers=headers)
        assert resp.status == 503
        body = await resp.json()
        assert body["error"] == "control_disabled"
        assert body["message"].startswith("no control token is configured")
        assert set(body["details"]) == {"OFFSIM_CONTROL_TOKEN", "OFFSIM_SERVICE_TOKEN"}
    after = await refused_counts(dashboard)
    assert after["unconfigured"] - before["unconfigured"] == 3
    assert await generator.untouched()
    # Reading still works.
    assert (await dashboard.get("/api/generator")).status == 200


def test_the_control_token_comes_from_its_variable_or_file_and_is_never_shown(tmp_path):
    settings = DashboardSettings.from_env({"OFFSIM_CONTROL_TOKEN": "from-the-variable"})
    assert settings.control_token == "from-the-variable"
    assert "from-the-variable" not in repr(settings) and "from-the-variable" not in str(settings)

    secret = tmp_path / "control-token"
    secret.write_text("from-the-file\n")
    settings = DashboardSettings.from_env({"OFFSIM_CONTROL_TOKEN_FILE": str(secret)})
    assert settings.control_token == "from-the-file"

    assert DashboardSettings.from_env({}).control_token is None
