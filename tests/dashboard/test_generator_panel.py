"""The dashboard's generator panel: the phase and rate read from the generator's control API,
and its controls sent through the dashboard's proxy (GET/PUT /api/generator; a PUT carries the
service token here, test_control_token.py covers the token itself)."""

from __future__ import annotations

import asyncio

from offsim_dashboard.app import create_app
from offsim_generator.__main__ import run
from offsim_launcher.embedded import free_port

from tests.conftest import AS_SERVICE, against, changed, eventually


async def test_generator_panel_shows_phase_and_rate_and_its_controls_reach_the_generator(
    aiohttp_client, users, orders, pool, products, settings, nc
):
    port = free_port()
    quiet = against(settings, users, orders, seed=4, tick_seconds=10**6)
    dashboard = await aiohttp_client(
        create_app(changed(settings, generator_url=f"http://127.0.0.1:{port}"))
    )
    stop = asyncio.Event()
    running = asyncio.create_task(run(quiet, stop, probe_port=port))
    try:

        async def state() -> dict | None:
            resp = await dashboard.get("/api/generator")
            return await resp.json() if resp.status == 200 else None

        shown = await eventually(state, within=30)
        assert shown["scenario"] == "steady" and shown["phase"] == "steady"
        assert "event_rate" in shown and shown["paused"] is False

        resp = await dashboard.put(
            "/api/generator",
            json={"random_order_rate": 7, "faults": {"reject": 0.5}},
            headers=AS_SERVICE,
        )
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert body["rates"]["random_order_rate"] == 7 and body["faults"]["reject"] == 0.5
        # The generator itself holds the change.
        shown = await state()
        assert shown["overrides"]["random_order_rate"] == 7
        assert shown["overrides"]["faults"] == {"reject": 0.5}

        # A refusal comes back as the generator gave it: a 400 naming the field.
        resp = await dashboard.put(
            "/api/generator", json={"faults": {"reject": 2}}, headers=AS_SERVICE
        )
        assert resp.status == 400
        assert set((await resp.json())["details"]) == {"faults.reject"}
    finally:
        stop.set()
        await running


async def test_generator_panel_without_a_generator_answers_503(aiohttp_client, settings, pool, nc):
    dashboard = await aiohttp_client(
        create_app(changed(settings, generator_url=f"http://127.0.0.1:{free_port()}"))
    )
    resp = await dashboard.get("/api/generator")
    assert resp.status == 503
    body = await resp.json()
    assert body["error"] == "unavailable" and "generator" in body["details"]
