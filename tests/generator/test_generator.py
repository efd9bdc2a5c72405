"""The generator against the real services: a few simulated hours in a few seconds."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from offsim_generator.__main__ import run

from tests.conftest import eventually


async def test_generator_runs_simulated_hours_and_orders_complete(
    users, orders, notifications, pool, products, settings
):
    fast = replace(
        settings,
        sim_speed=3600.0,
        seed=7,
        users_url=str(users.make_url("")).rstrip("/"),
        orders_url=str(orders.make_url("")).rstrip("/"),
    )
    sim = await run(fast, asyncio.Event(), sim_hours=3)

    assert sim.stats["register.sent"] > 0
    assert sim.stats["random_order.sent"] > 0
    assert sim.stats["consume.sent"] > 0
    assert sim.stats["consume.units"] > 0
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM users") == sim.stats["register.sent"]
        placed = await conn.fetchval("SELECT count(*) FROM product_orders")
    assert placed == sim.stats["order.random"] + sim.stats["order.restock"] > 0
    # Consumption made SSDs reorder on their own, not only the random product-order event.
    assert sim.stats["order.restock"] > 0
    async with pool.acquire() as conn:
        # Every order, random ones included, is for a product its SSD watches (the original's
        # random orders were for any product of the catalogue).
        unwatched = await conn.fetchval(
            """SELECT count(*) FROM product_orders o WHERE NOT EXISTS (
                   SELECT 1 FROM product_ssds ps WHERE ps.ssd_id = o.ssd_id
                   AND ps.barcode = o.barcode AND ps.reorder_point > 0)"""
        )
    assert unwatched == 0

    async def all_completed():
        async with pool.acquire() as conn:
            return await conn.fetchval(
                "SELECT count(*) FILTER (WHERE status = 'completed') = count(*) FROM product_orders"
            )

    await eventually(all_completed, within=30)
    async with pool.acquire() as conn:
        delivered = await conn.fetchval("SELECT count(*) FROM stock_deliveries")
    assert delivered == placed


async def test_generator_survives_services_down(settings, pool, nc):
    """Nothing listens on these ports: every event fails, is counted, and the run goes on."""
    from offsim_launcher.embedded import free_port

    dead = replace(
        settings,
        sim_speed=3600.0,
        seed=1,
        users_url=f"http://127.0.0.1:{free_port()}",
        orders_url=f"http://127.0.0.1:{free_port()}",
    )
    sim = await run(dead, asyncio.Event(), max_events=20)
    failed = sum(sim.stats[f"{name}.failed"] for name in ("register", "random_order", "consume"))
    assert sim.stats["events"] == 20
    assert failed + sim.stats["consume.no_ssd"] == 20
