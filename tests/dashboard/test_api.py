"""The dashboard's JSON snapshot: /api/summary, /api/recent, /api/ssds, /api/throughput,
/api/services, and the page itself, on the real database."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from offsim_common.app_keys import POOL
from offsim_dashboard.app import create_app
from offsim_dashboard.app_keys import SNAPSHOTS
from offsim_orders import counters

from tests.conftest import changed, eventually
from tests.helpers import register

NUTELLA_IMAGE = (
    "https://images.openfoodfacts.org/images/products/301/762/042/2003/front_en.633.400.jpg"
)


async def place(orders, ssd_id: int, barcode: str, quantity: int = 2) -> dict:
    resp = await orders.post(
        "/api/orders", json={"ssd_id": ssd_id, "barcode": barcode, "quantity": quantity}
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def stock_of(users, user: dict) -> list[str]:
    body = await (await users.get(f"/api/users/{user['id']}")).json()
    return [item["barcode"] for item in body["ssds"][0]["stock"]]


async def order_all_watched(users, orders) -> tuple[int, list[str], list[dict]]:
    """A new user's SSD, the products it watches, and one order placed for each."""
    user = await register(users)
    ssd_id = user["devices"][0]["id"]
    barcodes = await stock_of(users, user)
    return ssd_id, barcodes, [await place(orders, ssd_id, barcode) for barcode in barcodes]


async def test_summary_empty_database_returns_zero_counts(dashboard):
    resp = await dashboard.get("/api/summary")
    assert resp.status == 200
    body = await resp.json()
    assert (body["users"], body["ssds"]) == (0, 0)
    assert isinstance(body["products"], int)
    assert body["orders"] == {
        "total": 0,
        "pending": 0,
        "shipped": 0,
        "completed": 0,
        "cancelled": 0,
    }
    assert body["stage_seconds"] == {"pending": None, "shipped": None, "completed": None}
    demand = body["demand"]
    # Nothing wanted yet: no share, rather than a share of 0 that would read as "all met".
    assert (demand["readings_per_second"], demand["short_share"]) == (0, None)
    assert demand["lifetime"] == {
        "readings": 0,
        "units_wanted": 0,
        "units_short": 0,
        "short_share": None,
    }
    assert demand["last_minute"]["readings"] == 0
    assert demand["last_minute"]["short_share"] is None
    assert body["at"]


async def test_summary_after_registration_and_orders_counts_each(
    dashboard, users, orders, products, pool
):
    user = await register(users, "one@example.org", devices=2)
    await register(users, "two@example.org")
    ssd_id = user["devices"][0]["id"]
    barcodes = await stock_of(users, user)
    first = await place(orders, ssd_id, barcodes[0])
    await place(orders, ssd_id, barcodes[1])
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE product_orders SET status = 'completed', completed_at = now() WHERE id = $1",
            first["id"],
        )

    body = await (await dashboard.get("/api/summary")).json()
    assert (body["users"], body["ssds"], body["products"]) == (2, 3, len(products))
    assert body["orders"] == {
        "total": 2,
        "pending": 1,
        "shipped": 0,
        "completed": 1,
        "cancelled": 0,
    }
    # Only the completed order has times, and it never shipped: no time pending or shipped.
    stages = body["stage_seconds"]
    assert stages["pending"] is None and stages["shipped"] is None
    assert stages["completed"] >= 0


async def add_demand(pool, rows: dict[int, tuple[int, int, int]]) -> datetime:
    """Rows of ssd_demand as the users service writes them, keyed by their bucket's offset in
    seconds from the current 10-second bucket: (readings, units wanted, units short). Returns
    the current bucket."""
    async with pool.acquire() as conn:
        current = await conn.fetchval(
            "SELECT to_timestamp(floor(extract(epoch FROM now()) / 10) * 10)"
        )
        await conn.executemany(
            "INSERT INTO ssd_demand (bucket, readings, units_wanted, units_short) "
            "VALUES ($1, $2, $3, $4)",
            [(current + timedelta(seconds=offset), *row) for offset, row in rows.items()],
        )
    return current


async def test_summary_demand_counts_the_last_minute_of_complete_buckets(dashboard, pool):
    current = await add_demand(
        pool,
        {
            0: (1000, 900, 900),  # still filling: not in the last minute
            -10: (60, 100, 10),
            -60: (120, 300, 50),  # the oldest complete bucket of the last minute
            -70: (5000, 600, 0),  # a minute and ten seconds ago: too old
            -86_400: (7, 1000, 40),  # yesterday: lifetime only
        },
    )

    resp = await dashboard.get("/api/summary")
    assert resp.status == 200
    demand = (await resp.json())["demand"]
    minute = demand["last_minute"]
    until = datetime.fromisoformat(minute["until"])
    assert until - datetime.fromisoformat(minute["since"]) == timedelta(seconds=60)
    # The read's bucket is the one the rows were written against, unless a bucket started in
    # between: then the window moved on by one bucket, taking the current one and dropping -60.
    expected = {
        current: (60 + 120, 100 + 300, 10 + 50),
        current + timedelta(seconds=10): (1000 + 60, 900 + 100, 900 + 10),
    }
    assert until in expected
    readings, wanted, short = expected[until]
    assert (minute["readings"], minute["units_wanted"], minute["units_short"]) == (
        readings,
        wanted,
        short,
    )
    assert demand["readings_per_second"] == pytest.approx(readings / 60)
    assert minute["short_share"] == pytest.approx(short / wanted)
    # Lifetime: every bucket, the one still filling included.
    assert demand["lifetime"] == {
        "readings": 1000 + 60 + 120 + 5000 + 7,
        "units_wanted": 2900,
        "units_short": 1000,
        "short_share": pytest.approx(1000 / 2900),
    }
    assert demand["short_share"] == pytest.approx(1000 / 2900)


async def test_summary_demand_steady_readings_give_their_rate(dashboard, pool):
    # 30 readings every 10 s for three minutes, a quarter of the units short: 3 readings a
    # second and a share of 0.25 over any minute, whenever the read happens.
    await add_demand(pool, {offset: (30, 40, 10) for offset in range(-180, 10, 10)})

    demand = (await (await dashboard.get("/api/summary")).json())["demand"]
    assert demand["readings_per_second"] == pytest.approx(3.0)
    assert demand["last_minute"]["short_share"] == pytest.approx(0.25)
    assert demand["short_share"] == pytest.approx(0.25)
    assert demand["lifetime"]["readings"] == 30 * 19


async def test_recent_lists_newest_orders_and_transitions(dashboard, users, orders, products, pool):
    ssd_id, barcodes, placed = await order_all_watched(users, orders)
    async with pool.acquire() as conn:
        await conn.execute(
            """UPDATE product_orders SET status = 'shipped', shipped_at = now() + interval '1 s'
               WHERE id = $1""",
            placed[0]["id"],
        )

    resp = await dashboard.get("/api/recent?limit=2")
    assert resp.status == 200
    body = await resp.json()
    assert [o["id"] for o in body["orders"]] == [placed[2]["id"], placed[1]["id"]]
    newest = body["orders"][0]
    assert newest["status"] == "pending" and newest["product_name"]
    assert newest["barcode"] == barcodes[2] and newest["quantity"] == 2
    # The newest transition first: the shipment, one second after the placements.
    assert len(body["transitions"]) == 2
    assert body["transitions"][0] | {"at": None} == {
        "at": None,
        "status": "shipped",
        "id": placed[0]["id"],
        "ssd_id": ssd_id,
        "barcode": barcodes[0],
        "product_name": body["transitions"][0]["product_name"],
        "quantity": 2,
    }
    assert body["transitions"][1]["status"] == "pending"


async def test_ssds_shows_stock_against_reorder_point_with_images(
    dashboard, users, orders, products, pool
):
    old = await register(users, "old@example.org")
    active = await register(users, "active@example.org")
    ssd_id = active["devices"][0]["id"]
    barcodes = await stock_of(users, active)
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE products SET image_url = $1 WHERE barcode = $2", NUTELLA_IMAGE, products[0]
        )
        await conn.execute(
            """UPDATE product_ssds SET quantity = 1, reorder_point = 3, capacity = 9,
                                       units_wanted = 40, units_short = 7
               WHERE ssd_id = $1 AND barcode = $2""",
            ssd_id,
            barcodes[0],
        )
    await place(orders, ssd_id, barcodes[0], quantity=8)
    # The old SSD's order is older than the active one's: the active SSD comes first.
    async with pool.acquire() as conn:
        await conn.execute("UPDATE product_orders SET created_at = created_at - interval '1 hour'")
    await place(orders, ssd_id, barcodes[1], quantity=1)

    resp = await dashboard.get("/api/ssds?limit=2")
    assert resp.status == 200
    ssds = (await resp.json())["ssds"]
    assert [s["id"] for s in ssds] == [ssd_id, old["devices"][0]["id"]]
    assert ssds[0]["owner"] == "Test U." and ssds[0]["mac_address"]
    stock = {item["barcode"]: item for item in ssds[0]["stock"]}
    assert set(stock) == set(barcodes)
    low = stock[barcodes[0]]
    assert (low["quantity"], low["reorder_point"], low["capacity"]) == (1, 3, 9)
    assert low["below_reorder_point"] is True and low["on_order"] == "pending"
    assert low["name"]
    assert (low["units_wanted"], low["units_short"]) == (40, 7)
    assert (stock[barcodes[1]]["units_wanted"], stock[barcodes[1]]["units_short"]) == (0, 0)
    assert stock[barcodes[2]]["on_order"] is None
    for item in stock.values():
        assert item["image_url"] == (NUTELLA_IMAGE if item["barcode"] == products[0] else None)

    one = await (await dashboard.get("/api/ssds")).json()
    assert len(one["ssds"]) == 2  # default 4, but only two exist


async def test_throughput_counts_placed_and_completed_this_minute(
    dashboard, users, orders, products, pool
):
    *_, placed = await order_all_watched(users, orders)
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE product_orders SET status = 'completed', completed_at = now() WHERE id = $1",
            placed[0]["id"],
        )
        # An order from yesterday is outside the window.
        await conn.execute(
            """UPDATE product_orders SET created_at = now() - interval '1 day' WHERE id = $1""",
            placed[2]["id"],
        )

    resp = await dashboard.get("/api/throughput?minutes=5")
    assert resp.status == 200
    body = await resp.json()
    assert body["minutes"] == 5 and len(body["series"]) == 5
    minutes = [m["minute"] for m in body["series"]]
    assert minutes == sorted(minutes)
    assert sum(m["placed"] for m in body["series"]) == 2
    assert sum(m["completed"] for m in body["series"]) == 1
    assert body["series"][-1]["completed"] in (0, 1)  # 0 only if a minute turned meanwhile

    default = await (await dashboard.get("/api/throughput")).json()
    assert len(default["series"]) == 15


async def test_counts_stay_lifetime_counts_when_finished_orders_are_deleted(
    aiohttp_client, settings, dashboard, users, orders, products, pool
):
    *_, placed = await order_all_watched(users, orders)
    async with pool.acquire() as conn:
        await conn.execute(
            """UPDATE product_orders SET status = 'completed', completed_at = now()
               WHERE id = ANY($1::bigint[])""",
            [order["id"] for order in placed[:2]],
        )
        await conn.execute(
            "UPDATE product_orders SET status = 'cancelled', cancelled_at = now() WHERE id = $1",
            placed[2]["id"],
        )
    counts = {"total": 3, "pending": 0, "shipped": 0, "completed": 2, "cancelled": 1}

    async def shown(client) -> tuple[dict, tuple[int, int]]:
        client.app[SNAPSHOTS].entries.clear()  # not the answer of a second ago
        summary = await (await client.get("/api/summary")).json()
        series = (await (await client.get("/api/throughput?minutes=5")).json())["series"]
        return summary["orders"], (sum(m["placed"] for m in series),
                                   sum(m["completed"] for m in series))  # fmt: skip

    assert await shown(dashboard) == (counts, (3, 2))
    # Retention deletes the finished orders; the dashboard still counts every order placed.
    async with pool.acquire() as conn:
        await conn.execute("DELETE FROM product_orders WHERE status IN ('completed', 'cancelled')")
        assert await conn.fetchval("SELECT count(*) FROM product_orders") == 0
    assert await shown(dashboard) == (counts, (3, 2))
    # Folded, and read by a dashboard started afresh: the same.
    await counters.fold_once(pool)
    assert await shown(await aiohttp_client(create_app(settings))) == (counts, (3, 2))


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/ssds?limit=abc", "limit"),
        ("/api/ssds?limit=0", "limit"),
        ("/api/ssds?limit=25", "limit"),
        ("/api/throughput?minutes=-1", "minutes"),
        ("/api/throughput?minutes=121", "minutes"),
        ("/api/throughput?minutes=1.5", "minutes"),
        ("/api/recent?limit=101", "limit"),
        ("/api/recent?offset=3", "offset"),
        ("/api/summary?verbose=1", "verbose"),
        ("/api/events?since=4", "since"),
    ],
)
async def test_bad_query_parameter_returns_400_naming_it(dashboard, path, field):
    resp = await dashboard.get(path)
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "bad_request"
    assert set(body["details"]) == {field}


async def test_database_down_returns_json_503_not_a_traceback(dashboard):
    await dashboard.app[POOL].close()
    resp = await dashboard.get("/api/summary")
    assert resp.status == 503 and int(resp.headers["Retry-After"]) > 0
    assert (await resp.json())["error"] == "unavailable"


async def test_services_reports_health_of_users_and_orders(
    aiohttp_client, settings, pool, nc, users, unused_tcp_port
):
    client = await aiohttp_client(
        create_app(
            changed(
                settings,
                users_url=str(users.make_url("")).rstrip("/"),
                orders_url=f"http://127.0.0.1:{unused_tcp_port}",
            )
        )
    )
    body = await (await client.get("/api/services")).json()
    assert [(s["name"], s["status"]) for s in body["services"]] == [
        ("users", "ok"),
        ("orders", "unreachable"),
    ]


async def test_page_and_static_assets_are_served(dashboard):
    resp = await dashboard.get("/")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    html = await resp.text()
    assert "Product data © " in html and "Open Food Facts</a> contributors" in html
    assert "ODbL" in html
    # No CDN: every script and stylesheet comes from this server.
    assert "//cdn" not in html and 'src="/static/app.js"' in html
    for asset, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
        resp = await dashboard.get(asset)
        assert resp.status == 200 and kind in resp.content_type


async def test_health_reports_ok(dashboard):
    async def healthy():
        return (await dashboard.get("/api/health")).status == 200

    await eventually(healthy, within=5)
