"""Throughput of the services on real NATS and Postgres (embedded, on this machine).

Measures: registrations per second (scrypt-bound by design), orders placed per second, and the
whole pipeline (order -> shipped -> completed -> stock) with zero simulated delays. Run with
`make bench`; numbers go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg
from aiohttp import web
from offsim_common.migrate import migrate
from offsim_launcher import embedded
from offsim_notifications.settings import NotificationsSettings
from offsim_orders.settings import OrdersSettings
from offsim_users.settings import UsersSettings


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = embedded.free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def timed(label: str, n: int, concurrency: int, make_call) -> None:
    queue = list(range(n))
    started = time.perf_counter()

    async def worker() -> None:
        while queue:
            await make_call(queue.pop())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    print(
        f"{label:<44} {n:>6} in {elapsed:6.2f} s = {n / elapsed:8.1f}/s (concurrency {concurrency})"
    )


async def main(n_users: int, n_orders: int) -> None:
    from offsim_notifications.app import create_app as notifications_app
    from offsim_orders.app import create_app as orders_app
    from offsim_users.app import create_app as users_app

    with tempfile.TemporaryDirectory(prefix="offsim-bench-") as tmp:
        nats = embedded.start_nats(Path(tmp) / "nats")
        pg = embedded.start_postgres(Path(tmp) / "pg")
        try:
            dsn = await embedded.ensure_database(pg, "bench")
            await migrate(dsn)
            env = {"DATABASE_URL": dsn, "NATS_URL": nats.url, "LOG_LEVEL": "WARNING",
                   "OFFSIM_SUPPLIER_DELAY_MIN": "0", "OFFSIM_SUPPLIER_DELAY_MAX": "0",
                   "OFFSIM_DELIVERY_DELAY_MIN": "0", "OFFSIM_DELIVERY_DELAY_MAX": "0"}  # fmt: skip
            conn = await asyncpg.connect(dsn)
            await conn.executemany(
                "INSERT INTO products (barcode, name) VALUES ($1, $2)",
                [(f"{i:013d}", f"product {i}") for i in range(1, 201)],
            )
            await conn.close()
            users_runner, users_url = await serve(users_app(UsersSettings.from_env(env)))
            orders_runner, orders_url = await serve(orders_app(OrdersSettings.from_env(env)))
            notifications_runner, _ = await serve(
                notifications_app(NotificationsSettings.from_env(env))
            )
            ssds: list[tuple[int, str]] = []  # an SSD and its owner's bearer token
            async with aiohttp.ClientSession() as http:

                async def register(i: int) -> None:
                    body = {
                        "user": {"first_name": "B", "last_name": "Ench", "password": "benchmark!",
                                 "email": f"u{i}@bench.example"},
                        "devices": [{"mac_address": f"02:00:00:00:{i // 256:02x}:{i % 256:02x}"}],
                    }  # fmt: skip
                    async with http.post(f"{users_url}/api/register", json=body) as resp:
                        assert resp.status == 201, await resp.text()
                        user = await resp.json()
                        ssds.append((user["devices"][0]["id"], user["token"]))

                await timed("POST /api/register (scrypt per user)", n_users, 4, register)

                async def order(i: int) -> None:
                    ssd, token = ssds[i % len(ssds)]
                    body = {"ssd_id": ssd, "barcode": f"{i // len(ssds) + 1:013d}", "quantity": 1}
                    auth = {"Authorization": f"Bearer {token}"}
                    url = f"{orders_url}/api/orders"
                    async with http.post(url, json=body, headers=auth) as resp:
                        assert resp.status == 201, await resp.text()

                pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
                started = time.perf_counter()
                await timed("POST /api/orders (publish to JetStream)", n_orders, 16, order)
                while True:
                    done = await pool.fetchval("SELECT count(*) FROM stock_deliveries")
                    if done == n_orders:
                        break
                    await asyncio.sleep(0.05)
                elapsed = time.perf_counter() - started
                print(f"{'orders placed -> completed -> stock, 0 delay':<44} {n_orders:>6} in "
                      f"{elapsed:6.2f} s = {n_orders / elapsed:8.1f}/s end to end")  # fmt: skip
                await pool.close()
            await notifications_runner.cleanup()
            await orders_runner.cleanup()
            await users_runner.cleanup()
        finally:
            nats.stop()
            pg.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--orders", type=int, default=2000)
    args = parser.parse_args()
    print(f"offsim services benchmark on {os.cpu_count()} cores")
    asyncio.run(main(args.users, args.orders))
