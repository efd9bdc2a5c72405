"""The live KPIs on real Postgres: the users service's stock samples (one replica at a time,
each stretch of time counted once), the totals folded by retention, and the dashboard's
`GET /api/kpis` and `offsim_kpi` gauges on a hand-built history whose KPIs are known."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest
from offsim_common import kpis
from offsim_dashboard.app import create_app
from offsim_generator import __main__ as generator_main
from offsim_users import queries as users_queries
from offsim_users import retention as users_retention

from tests.conftest import changed
from tests.helpers import metric

SPEED = 60.0
EVERY_S = 5.0


async def stock(pool: asyncpg.Pool, products: list[str], levels: list[list[int]]) -> list[int]:
    """SSDs stored directly, one per list, watching the first products at these levels."""
    ids = []
    async with pool.acquire() as conn:
        user = await conn.fetchval(
            """INSERT INTO users (first_name, last_name, email, password_hash)
               VALUES ('K', 'Pi', 'kpi@example.org', 'x') RETURNING id"""
        )
        for n, quantities in enumerate(levels):
            ssd = await conn.fetchval(
                "INSERT INTO ssds (user_id, mac_address) VALUES ($1, $2) RETURNING id",
                user, f"02:00:00:00:ee:{n:02x}",
            )  # fmt: skip
            for barcode, quantity in zip(products, quantities, strict=False):
                await conn.execute(
                    """INSERT INTO product_ssds (ssd_id, barcode, quantity, reorder_point,
                                                 capacity) VALUES ($1, $2, $3, 2, 8)""",
                    ssd, barcode, quantity,
                )  # fmt: skip
            ids.append(ssd)
    return ids


async def sums(pool: asyncpg.Pool) -> asyncpg.Record:
    async with pool.acquire() as conn:
        return await conn.fetchrow(
            """SELECT sum(empty_product_s) AS empty, sum(watched_product_s) AS watched,
                      sum(ssd_s) AS ssds FROM ssd_demand"""
        )


async def test_a_sample_counts_each_product_time_since_the_previous(pool, products):
    await stock(pool, products, [[0, 5, 8], [0, 0, 3]])  # 3 of 6 products at zero
    async with pool.acquire() as conn:
        # The first sample starts the clock and counts nothing.
        assert not await users_queries.sample_stock(conn, SPEED, EVERY_S)
        assert await conn.fetchval("SELECT count(*) FROM ssd_demand") == 0
        # Another replica's sample a moment later leaves it to the next period.
        assert not await users_queries.sample_stock(conn, SPEED, EVERY_S)
        await conn.execute("UPDATE stock_sampled SET at = now() - interval '10 seconds'")
        assert await users_queries.sample_stock(conn, SPEED, EVERY_S)
    counted = await sums(pool)
    # 10 real seconds (and the few milliseconds of the sample) at x60: 600 simulated.
    assert 600 <= counted["watched"] / 6 < 600 + SPEED
    assert counted["empty"] / counted["watched"] == pytest.approx(0.5)
    assert counted["ssds"] / counted["watched"] == pytest.approx(2 / 6)


async def test_a_gap_counts_three_periods_at_most(pool, products):
    """A users service down for an hour saw nothing of that hour: its next sample counts three
    periods, not the hour at the counts of its return."""
    await stock(pool, products, [[0, 5, 8]])
    async with pool.acquire() as conn:
        await conn.execute("UPDATE stock_sampled SET at = now() - interval '1 hour'")
        assert await users_queries.sample_stock(conn, SPEED, EVERY_S)
    assert (await sums(pool))["watched"] == pytest.approx(3 * 3 * EVERY_S * SPEED)


async def test_one_replica_samples_at_a_time_and_no_time_is_counted_twice(
    pool, products, database_url
):
    await stock(pool, products, [[0, 5, 8]])
    async with pool.acquire() as holder, pool.acquire() as other:
        await users_queries.sample_stock(holder, SPEED, EVERY_S)
        await holder.execute("UPDATE stock_sampled SET at = now() - interval '10 seconds'")
        async with holder.transaction():
            # A replica in the middle of its sample holds the clock...
            await holder.execute("SELECT at FROM stock_sampled FOR UPDATE")
            # ...so another's sample is skipped, not added to it.
            assert not await users_queries.sample_stock(other, SPEED, EVERY_S)
        assert await other.fetchval("SELECT count(*) FROM ssd_demand") == 0
        # Several replicas sampling at once: each stretch of time is counted once.
        await holder.execute("UPDATE stock_sampled SET at = now() - interval '14 seconds'")
    async with asyncpg.create_pool(database_url, min_size=4, max_size=4) as many:

        async def sample() -> bool:
            async with many.acquire() as conn:
                return await users_queries.sample_stock(conn, SPEED, EVERY_S)

        await asyncio.gather(*(sample() for _ in range(8)))
    counted = await sums(pool)
    assert 14 * SPEED * 3 <= counted["watched"] < 15 * SPEED * 3


async def test_folding_old_buckets_keeps_every_kpi_sum(pool, products):
    async with pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO ssd_demand (bucket, readings, units_wanted, units_short, restocks,
                                       empty_product_s, watched_product_s, ssd_s)
               SELECT now() - make_interval(days => 2, secs => n * 10), 1, 10, 2, 1,
                      5, 100, 40
               FROM generate_series(1, 30) n"""
        )
    before = await sums(pool)
    while await users_retention.fold_demand(pool, 7):
        pass
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM ssd_demand")
    assert len(rows) == 1 and rows[0]["restocks"] == 30
    assert tuple(await sums(pool)) == tuple(before) == (150.0, 3000.0, 1200.0)


@pytest.fixture
def start_dashboard(aiohttp_client, settings, pool):
    """Start the dashboard once the history is stored: its answers are shared snapshots, a
    second old at most, and one taken before the history would be served for that second."""
    return lambda: aiohttp_client(create_app(changed(settings, sim_speed=SPEED)))


async def test_the_dashboard_kpis_of_a_known_history(start_dashboard, pool, products):
    ssds = await stock(pool, products, [[5, 5, 5], [5, 5, 5]])
    async with pool.acquire() as conn:
        # A stretch where 1 of 6 products was empty a tenth of the time, 100 units wanted and
        # 8 short, 3 restocks over 2 SSDs for half a simulated day.
        await conn.execute(
            """INSERT INTO ssd_demand (bucket, readings, units_wanted, units_short, restocks,
                                       empty_product_s, watched_product_s, ssd_s)
               VALUES (now() - interval '1 minute', 100, 100, 8, 3, 2592, 259200, 86400)"""
        )
        # Four orders: three completed 60, 120 and 180 real seconds after they were placed
        # (shipped halfway), one cancelled.
        for n, lead in enumerate((60, 120, 180)):
            await conn.execute(
                """INSERT INTO product_orders (ssd_id, barcode, quantity, status, created_at,
                                               shipped_at, completed_at)
                   VALUES ($1, $2, 1, 'completed', now() - make_interval(secs => $3),
                           now() - make_interval(secs => $3 / 2), now())""",
                ssds[0], products[n], float(lead),
            )  # fmt: skip
        await conn.execute(
            """INSERT INTO product_orders (ssd_id, barcode, quantity, status, cancelled_at)
               VALUES ($1, $2, 1, 'cancelled', now())""",
            ssds[1], products[0],
        )  # fmt: skip
    dashboard = await start_dashboard()
    resp = await dashboard.get("/api/kpis")
    assert resp.status == 200
    body = await resp.json()
    values = body["kpis"]
    assert values["stockout_share"] == pytest.approx(0.01)
    assert values["fill_rate"] == pytest.approx(0.92)
    # Real seconds times SIM_SPEED: p50 of 60, 120, 180 s is 120 s, 7,200 simulated.
    assert values["lead_time_p50_s"] == pytest.approx(120 * SPEED, rel=1e-3)
    assert values["lead_time_pending_p50_s"] == pytest.approx(60 * SPEED, rel=1e-3)
    assert values["cancelled_share"] == pytest.approx(0.25)
    assert values["restocks_per_ssd_day"] == pytest.approx(3.0)
    assert body["basis"]["completed"] == 3 and body["basis"]["ssd_days"] == 1.0
    assert {name: body[name] for name in values} == values
    metrics = await (await dashboard.get("/metrics")).text()
    assert metric(metrics, "offsim_kpi", kpi="fill_rate") == pytest.approx(0.92)
    assert metric(metrics, "offsim_kpi", kpi="cancelled_share") == pytest.approx(0.25)


async def test_the_dashboard_kpis_before_anything_happened_are_null(start_dashboard):
    dashboard = await start_dashboard()
    resp = await dashboard.get("/api/kpis")
    assert resp.status == 200
    assert set((await resp.json())["kpis"].values()) == {None}
    refused = await dashboard.get("/api/kpis?window=1")
    assert refused.status == 400
    assert "window" in json.dumps(await refused.json())


async def test_a_live_runs_thresholds_read_the_dashboards_kpis(
    aiohttp_server, settings, pool, products
):
    await stock(pool, products, [[5, 5, 5]])
    async with pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO ssd_demand (bucket, readings, units_wanted, units_short)
               VALUES (now(), 10, 10, 1)"""
        )
    server = await aiohttp_server(create_app(changed(settings, sim_speed=SPEED)))
    checks = kpis.parse_thresholds(["fill_rate>0.85", "fill_rate>0.95"])
    summary: dict = {}
    live = changed(settings, dashboard_url=str(server.make_url("")).rstrip("/"))
    held, lines = await generator_main._check(checks, summary, live, dry_run=False)
    assert not held
    assert lines == ["passed  fill_rate>0.85  (0.9)", "FAILED  fill_rate>0.95  (0.9)"]
    assert summary["kpis"]["fill_rate"] == pytest.approx(0.9)
    # No dashboard to ask: every threshold fails, saying why.
    gone = changed(settings, dashboard_url="http://127.0.0.1:9")
    held, lines = await generator_main._check(checks, {}, gone, dry_run=False)
    assert not held and lines == [
        "FAILED  fill_rate>0.85  (no KPIs)",
        "FAILED  fill_rate>0.95  (no KPIs)",
    ]
