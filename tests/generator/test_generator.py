"""The generator against the real services: a few simulated hours in a few seconds, outages,
and live control over HTTP."""

from __future__ import annotations

import asyncio

import aiohttp
from offsim_generator.__main__ import run
from offsim_launcher.embedded import free_port
from prometheus_client import REGISTRY

from tests.conftest import against, changed, eventually


async def test_generator_runs_simulated_hours_and_orders_complete(
    users, orders, notifications, pool, products, settings
):
    # An open model sends every event when it is due: an hour in five real seconds stays
    # within what the in-process services answer on a busy machine.
    fast = against(settings, users, orders, sim_speed=720.0, seed=7, population=5,
                   consume_per_day=240.0, max_in_flight=8)  # fmt: skip
    assert fast.device_transport == "nats"
    applied_before = applied_readings()
    result = await run(fast, asyncio.Event(), sim_hours=1)
    stats = result.stats

    assert stats["populate.sent"] > 0
    assert stats["register.sent"] > 0
    assert stats["random_order.sent"] > 0
    assert stats["consume.sent"] > 0
    # Every reading the stream acknowledged is applied by the users service, once.
    await eventually(lambda: _equal(applied_readings() - applied_before, stats["consume.sent"]),
                     within=30)  # fmt: skip
    async with pool.acquire() as conn:
        registered = await conn.fetchval("SELECT count(*) FROM users")
        assert registered == stats["register.sent"] + stats["populate.sent"]
        ssds = await conn.fetchval("SELECT count(*) FROM ssds")
        assert ssds == len(result.simulation.ssd_ids) > 5
        placed = await conn.fetchval("SELECT count(*) FROM product_orders")
        restocks = await conn.fetchval(
            "SELECT count(*) FROM product_orders WHERE kind = 'restock' AND placed_by = 'device'"
        )
    # Consumption made the backend reorder, not only the random product-order event; the
    # generator placed no restock order itself.
    assert restocks > 0
    assert placed == stats["order.random"] + restocks
    async with pool.acquire() as conn:
        # Every order, random ones included, is for a product its SSD watches.
        unwatched = await conn.fetchval(
            """SELECT count(*) FROM product_orders o WHERE NOT EXISTS (
                   SELECT 1 FROM product_ssds ps WHERE ps.ssd_id = o.ssd_id
                   AND ps.barcode = o.barcode AND ps.reorder_point > 0)"""
        )
    assert unwatched == 0
    summary = result.summary()
    assert summary["events"] == sum(summary["by_kind"].values()) > 0

    async def all_completed():
        async with pool.acquire() as conn:
            return await conn.fetchval(
                "SELECT count(*) FILTER (WHERE status = 'completed') = count(*) FROM product_orders"
            )

    await eventually(all_completed, within=30)
    async with pool.acquire() as conn:
        delivered = await conn.fetchval("SELECT count(*) FROM stock_deliveries")
    assert delivered == placed


def applied_readings() -> float:
    """The in-process users service's readings applied (the process's registry: compare
    differences)."""
    value = REGISTRY.get_sample_value("offsim_ssd_readings_total", {"outcome": "applied"})
    return value or 0.0


async def _equal(a: float, b: float) -> bool:
    return a == b


async def test_generator_survives_services_down(settings, pool, nc):
    """Nothing listens on these ports: every event fails, is counted, and the run goes on."""
    dead = changed(
        settings,
        sim_speed=3600.0,
        seed=1,
        tick_seconds=1.0,  # 900 registrations and 900 random orders a simulated hour
        users_url=f"http://127.0.0.1:{free_port()}",
        orders_url=f"http://127.0.0.1:{free_port()}",
    )
    result = await run(dead, asyncio.Event(), max_events=20)
    stats = result.stats
    failed = sum(stats[f"{name}.failed"] for name in ("register", "random_order", "consume"))
    assert result.engine.events >= 20
    assert failed == stats["events"] >= 20


async def test_live_control_changes_the_rate(
    users, orders, notifications, pool, products, settings
):
    port = free_port()
    quiet = against(settings, users, orders, sim_speed=600.0, seed=11, tick_seconds=10**6)
    stop = asyncio.Event()
    running = asyncio.create_task(run(quiet, stop, probe_port=port))
    base = f"http://127.0.0.1:{port}/api/control"

    async def registered() -> int:
        async with pool.acquire() as conn:
            return await conn.fetchval("SELECT count(*) FROM users")

    try:
        async with aiohttp.ClientSession() as http:

            async def control(method: str, body: dict | None = None) -> tuple[int, dict] | None:
                try:
                    async with http.request(method, base, json=body) as resp:
                        return resp.status, await resp.json()
                except aiohttp.ClientConnectionError:
                    return None  # not listening yet

            status, state = await eventually(lambda: control("GET"), within=30)
            assert status == 200
            assert state["scenario"] == "steady" and state["phase"] == "steady"
            assert state["rates"]["register_rate"] < 0.01 and not state["paused"]
            assert await registered() == 0

            status, state = await control("PUT", {"register_rate": 36})
            assert status == 200 and state["rates"]["register_rate"] == 36
            assert state["overrides"]["register_rate"] == 36
            # One every 100 simulated seconds: six a real second at x600.
            await eventually(lambda: _at_least(registered, 5), within=30)

            status, state = await control("PUT", {"paused": True})
            assert status == 200 and state["paused"]

            async def landed() -> bool:  # the requests in flight when it paused
                return (await control("GET"))[1]["in_flight"] == 0

            await eventually(landed, within=30)
            paused_at = await registered()
            await asyncio.sleep(1.0)  # six registrations' worth of time, had it not paused
            assert await registered() == paused_at

            status, state = await control("PUT", {"paused": False, "register_rate": None})
            assert not state["paused"] and state["overrides"]["register_rate"] is None

            status, body = await control("PUT", {"register_rate": -1, "speed": 3})
            assert status == 400
            assert set(body["details"]) == {"register_rate", "speed"}
    finally:
        stop.set()
        result = await running
    assert result.summary()["by_kind"]["register"] >= 5


async def _at_least(count, n: int) -> bool:
    return await count() >= n


async def test_malformed_fault_gets_only_4xx(users, orders, pool, products, settings, tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text(
        "[[phases]]\nname = 'broken'\nregister_rate = 360\nrandom_order_rate = 360\n"
        "[phases.faults]\nmalformed = 0.5\n"
    )
    broken = against(settings, users, orders, sim_speed=600.0, seed=5, scenario=str(path),
                     population=2, max_in_flight=8)  # fmt: skip
    result = await run(broken, asyncio.Event(), duration=600)
    stats = result.stats
    assert stats["malformed.rejected"] > 0
    assert stats["malformed.accepted"] == 0
    # The well-formed half still went through.
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM users") > 2
