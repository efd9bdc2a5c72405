"""The soak: a city of 100,000 SSDs at SIM_SPEED=60 for one real hour, sampled every 30 s.

Starts `offsim up` in a fresh data folder as bench/city.py does (bench/citylib.py), waits until
the population is registered, then for `--minutes` samples every `--interval` seconds, from
outside:

- the RSS of every process of the city (and of Postgres, summed over its processes, also its
  PSS: its processes share their buffers, which each one's RSS counts again), and their CPU;
- from the generator's and services' `/metrics`: events sent and overflowed in the interval,
  events run later than a second, readings applied, the readings backlog, restock orders placed
  and orders completed;
- an open-loop probe of `POST /api/orders` at a steady `--rate` (a process of its own, under
  the service token, on SSDs of the population and products they watch: real orders, through
  the whole pipeline): each request due on a fixed schedule and its latency counted from when it
  was due, so a stall shows as latency; p50, p99, max and errors of the requests due in the
  interval;
- Postgres's database size (and its largest tables'), JetStream's storage (NATS's `/jsz`), and
  the data folder's size on disk.

Each sample is a row of `soak.csv` in `--out`; at the end `soak.png` plots them and the summary
sets the first 10 minutes against the last 10 (the first and last thirds when `--minutes` is
under 20) beside the goals of docs/benchmarks.md ("Long runs: the soak"). `--retention` is
passed to the services (OFFSIM_ORDER_RETENTION), to show that disk use stops growing once
retention starts.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gc
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import aiohttp
import asyncpg
import psutil
from citylib import (
    City,
    Counters,
    control,
    counters,
    cpu_seconds,
    rss_mb,
    running_city,
    wait_registered,
)
from offsim_common import subjects

try:
    import uvloop
except ImportError:  # not on every platform
    uvloop = None

HERE = Path(__file__).resolve().parent
# The city's processes as the CSV names them, from citylib's names for them.
PROCESSES = {
    "offsim_generator": "generator",
    "offsim_users": "users",
    "offsim_orders": "orders",
    "offsim_notifications": "notifications",
    "offsim_dashboard": "dashboard",
    "nats-server": "nats",
    "postgres": "postgres",
    "offsim up": "offsim_up",
}
# The tables that grow with the city's history: their share of the database's size.
TABLES = ("ssd_readings", "ssd_demand", "product_orders", "stock_deliveries", "idempotency_keys")
# The streams, each one's share of JetStream's storage.
STREAMS = (subjects.READINGS_STREAM, subjects.ORDERS_STREAM, subjects.USERS_STREAM,
           subjects.DEAD_LETTER_STREAM)  # fmt: skip
# What --retention sets in the services (see the README's configuration table).
RETENTION_ENV = ("OFFSIM_ORDER_RETENTION", "OFFSIM_READING_RETENTION")
PROBE_TIMEOUT_S = 10.0
PROBE_PAIRS = 1000
# The files of a run, in its --out folder.
RUN, SAMPLES, LATENCIES = "run.json", "soak.csv", "probe.jsonl"
# The goals (docs/benchmarks.md, "Long runs: the soak").
RSS_GROWTH = 0.10
P99_GROWTH = 0.20
FLAT_SHARE = 0.10
MB = 2**20


@dataclass(frozen=True)
class Options:
    minutes: float
    ssds: int
    speed: float
    interval: float
    rate: float
    retention: str | None
    warmup_minutes: float
    out: Path
    plot_to: Path | None
    data_dir: Path | None
    env: dict[str, str]


# -- the probe: a process of its own ---------------------------------------------------------------


@dataclass
class ProbeWindow:
    """The requests due in one sampling interval: reported once every one of them has been
    answered (or timed out), so a slow answer lands in the interval it was due in."""

    index: int
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    pending: int = 0
    closed: bool = False  # no more requests will be due in it

    def finish(self, latency_s: float, status: str) -> None:
        self.latencies_ms.append(round(latency_s * 1e3, 3))
        self.statuses[status] += 1
        self.pending -= 1
        self.report()

    def report(self) -> None:
        if self.closed and self.pending == 0:
            line = {"window": self.index, "latencies_ms": self.latencies_ms,
                    "statuses": dict(self.statuses)}  # fmt: skip
            print(json.dumps(line), flush=True)


async def probe(spec: dict) -> None:
    """Send `POST /api/orders` at `rate` from `start` (time.monotonic(), the same clock in every
    process here) until killed or orphaned, never waiting for answers; each window of `interval`
    seconds reported on stdout, a JSON line."""
    rate, interval, start = spec["rate"], spec["interval"], spec["start"]
    url = spec["url"]
    headers = {"Authorization": f"Bearer {spec['token']}", "Content-Type": "application/json"}
    bodies = [json.dumps({"ssd_id": ssd, "barcode": barcode, "quantity": 1})
              for ssd, barcode in spec["pairs"]]  # fmt: skip
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:

        async def send(due: float, body: str, window: ProbeWindow) -> None:
            try:
                async with http.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    status = str(resp.status)
            except (aiohttp.ClientError, TimeoutError) as error:
                status = type(error).__name__
            window.finish(time.monotonic() - due, status)

        # What this process made so far is kept out of its collector's way: an hour's garbage
        # is small, but a full collection of everything would pause the sender.
        gc.freeze()
        tasks: set[asyncio.Task] = set()
        window = ProbeWindow(0)
        i = 0
        soak = os.getppid()
        while os.getppid() == soak:  # a soak killed outright leaves no probe behind
            due = start + i / rate
            index = int(i / rate // interval)
            if index != window.index:
                window.closed = True
                window.report()
                window = ProbeWindow(index)
            window.pending += 1
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(send(due, bodies[i % len(bodies)], window))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1


class ProbeProcess:
    """The probe, run as `soak.py --probe` (its own process, so it never shares an event loop
    or the GIL with the sampler), and the windows it reported so far."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.windows: dict[int, dict] = {}
        self.arrived = asyncio.Condition()
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, spec: dict) -> ProbeProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--probe",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            start_new_session=True,  # Ctrl-C reaches the soak, which stops it
        )  # fmt: skip
        # The spec (the service token among it) on stdin, not in a file or the command line.
        process.stdin.write(json.dumps(spec).encode())
        await process.stdin.drain()
        process.stdin.close()
        return cls(process)

    async def _read(self) -> None:
        while line := await self.process.stdout.readline():
            report = json.loads(line)
            async with self.arrived:
                self.windows[report["window"]] = report
                self.arrived.notify_all()

    async def window(self, index: int, within: float) -> dict | None:
        """Window `index` once reported, or None if it is not within `within` seconds."""
        async with self.arrived:
            with suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait_for(lambda: index in self.windows),
                                       within)  # fmt: skip
            return self.windows.pop(index, None)

    async def stop(self) -> None:
        self.reader.cancel()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def probe_pairs(conn: asyncpg.Connection, n: int) -> list[tuple[int, str]]:
    """n SSDs of the population, each with a product it watches, drawn at random."""
    rows = await conn.fetch(
        "SELECT ssd_id, barcode FROM product_ssds ORDER BY random() LIMIT $1", n
    )
    return [(row["ssd_id"], row["barcode"]) for row in rows]


def latency_figures(latencies_ms: list[float]) -> dict[str, float]:
    """p50, p99 and max of some latencies (NaN when there are none)."""
    if len(latencies_ms) < 2:
        value = latencies_ms[0] if latencies_ms else math.nan
        return {"p50": value, "p99": value, "max": value}
    cuts = statistics.quantiles(latencies_ms, n=100)
    return {"p50": cuts[49], "p99": cuts[98], "max": max(latencies_ms)}


# -- sampling -------------------------------------------------------------------------------------


def pss_mb(procs: list[psutil.Process]) -> float:
    """Proportional set size, summed: memory shared among the processes counted once."""
    total = 0
    for proc in procs:
        with suppress(psutil.Error):
            total += proc.memory_full_info().pss
    return total / MB


def folder_mb(folder: Path) -> float:
    """What a folder takes on disk (allocated blocks, as du counts them)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with suppress(OSError):  # a file removed meanwhile (WAL, a temporary file)
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total / MB


async def database_mb(conn: asyncpg.Connection) -> dict[str, float]:
    """The database's size on disk, and each growing table's (with its indexes and TOAST)."""
    sizes = ", ".join(
        f"coalesce(pg_total_relation_size(to_regclass('{table}')), 0) AS {table}"
        for table in TABLES
    )
    row = await conn.fetchrow(f"SELECT pg_database_size(current_database()) AS db, {sizes}")
    return {"db_mb": row["db"] / MB, **{f"{table}_mb": row[table] / MB for table in TABLES}}


async def jetstream_mb(http: aiohttp.ClientSession, monitor: str) -> dict[str, float]:
    """JetStream's storage, every stream together and each of offsim's (NATS's `/jsz`)."""
    async with http.get(f"{monitor}/jsz", params={"accounts": "true", "streams": "true"}) as resp:
        jsz = await resp.json()
    streams = {
        stream["name"]: stream["state"]["bytes"]
        for account in jsz.get("account_details", [])
        for stream in account.get("stream_detail", [])
    }
    return {"js_mb": jsz["bytes"] / MB, "js_messages": jsz["messages"],
            **{f"js_mb_{name.lower()}": streams.get(name, 0) / MB for name in STREAMS}}  # fmt: skip


class Sampler:
    """Takes a sample of the city every interval: each figure over the interval since the last
    (counters as deltas, CPU per process) or at its end (memory, sizes)."""

    def __init__(self, city: City, http: aiohttp.ClientSession, conn: asyncpg.Connection) -> None:
        self.city, self.http, self.conn = city, http, conn
        self.monitor = city.nats_monitor()
        self.before: Counters | None = None
        self.cpu: dict[int, float] = {}  # CPU seconds of each process at the last sample

    async def start(self) -> None:
        """The baseline of the first interval."""
        self.before = await counters(self.http, self.city.urls)
        self._cpu_shares(self.city.processes(), 1.0)

    async def sample(self, t_min: float) -> dict[str, float | str]:
        now = await counters(self.http, self.city.urls)
        before, self.before = self.before, now
        seconds = now.at - before.at
        procs = self.city.processes()
        state = await control(self.http, self.city.urls)
        row: dict[str, float | str] = {
            "t_min": t_min,
            "time": datetime.now().isoformat(timespec="seconds"),
            **self._activity(before, now, seconds),
            "max_lag_s": state["max_lag_s"],
            "overflow_total": now.overflow,
            "restarts": len(self.city.exits),
        }
        shares = self._cpu_shares(procs, seconds)
        for name, column in PROCESSES.items():
            row[f"rss_mb_{column}"] = rss_mb(procs.get(name, []))
        row["pss_mb_postgres"] = pss_mb(procs.get("postgres", []))
        for name, column in PROCESSES.items():
            row[f"cpu_{column}"] = shares.get(name, 0.0)
        row.update(await database_mb(self.conn))
        row.update(await jetstream_mb(self.http, self.monitor))
        row["disk_mb"] = row["db_mb"] + row["js_mb"]
        row["data_dir_mb"] = await asyncio.to_thread(folder_mb, self.city.data)
        # The CSV at a precision that means something.
        return {key: round(v, 3) if isinstance(v, float) else v for key, v in row.items()}

    @staticmethod
    def _activity(before: Counters, now: Counters, seconds: float) -> dict[str, float]:
        """What the generator and services did over the interval, a second or in all."""
        return {
            "events_per_s": (now.events_sent - before.events_sent) / seconds,
            "readings_per_s": (now.consume_sent - before.consume_sent) / seconds,
            "overflow": now.overflow - before.overflow,
            "late_1s": (now.lag_count - before.lag_count)
            - (now.lag_within_1s - before.lag_within_1s),
            "applied_per_s": (now.applied - before.applied) / seconds,
            "backlog": now.pending,
            "restocks_per_s": (now.restocks - before.restocks) / seconds,
            "completed_per_s": (now.completed - before.completed) / seconds,
            "retention_deleted": now.retention_deleted - before.retention_deleted,
        }

    def _cpu_shares(
        self, procs: dict[str, list[psutil.Process]], seconds: float
    ) -> dict[str, float]:
        """Each name's CPU over the interval, as a share of one core. A process new since the
        last sample (a Postgres backend, a restarted service) counts all its CPU."""
        shares: dict[str, float] = {}
        now: dict[int, float] = {}
        for name, group in procs.items():
            used = 0.0
            for proc in group:
                now[proc.pid] = cpu_seconds([proc])
                used += now[proc.pid] - self.cpu.get(proc.pid, 0.0)
            shares[name] = used / seconds
        self.cpu = now
        return shares


def format_row(row: dict) -> str:
    """One sample on one line, for the terminal."""
    rss = " ".join(f"{column} {row[f'rss_mb_{column}']:.0f}" for column in PROCESSES.values())
    return (f"{row['t_min']:6.1f} min  events {row['events_per_s']:,.0f}/s  overflow "
            f"{row['overflow']:,.0f}  probe p99 {row['probe_p99_ms']:.1f} ms "
            f"({row['probe_errors']:.0f} errors)  db {row['db_mb']:,.0f} MB  js "
            f"{row['js_mb']:,.0f} MB  RSS MB: {rss}")  # fmt: skip


# -- the summary ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Windows:
    """The first and last stretch of the run, compared."""

    label: str
    interval_min: float
    first: list[dict]
    last: list[dict]
    first_latencies: list[float]
    last_latencies: list[float]

    def starts(self, stretch: list[dict]) -> float:
        """The minute a stretch starts (a sample's t_min is the end of its interval)."""
        return stretch[0]["t_min"] - self.interval_min


def windows(rows: list[dict], latencies: dict[int, list[float]], interval_min: float) -> Windows:
    """The first 10 minutes and the last 10, or the first and last thirds of a run under 20
    minutes; a sample belongs to a stretch if its whole interval does."""
    total = rows[-1]["t_min"]
    span = 10.0 if total >= 20 else total / 3
    eps = interval_min / 100  # t_min is rounded
    first = [i for i, row in enumerate(rows) if row["t_min"] <= span + eps]
    last = [i for i, row in enumerate(rows) if row["t_min"] - interval_min >= total - span - eps]
    label = "10 min" if span == 10.0 else f"third ({span:.1f} min)"
    return Windows(
        label, interval_min, [rows[i] for i in first], [rows[i] for i in last],
        [ms for i in first for ms in latencies.get(i, [])],
        [ms for i in last for ms in latencies.get(i, [])],
    )  # fmt: skip


def mean(rows: list[dict], column: str) -> float:
    values = [row[column] for row in rows if not _missing(row[column])]
    return statistics.fmean(values) if values else math.nan


def _missing(value: float | str) -> bool:
    return value == "" or (isinstance(value, float) and math.isnan(value))


def slope_mb_min(rows: list[dict], column: str) -> float:
    """Least-squares growth of a column over a stretch, MB a minute."""
    if len(rows) < 2:
        return math.nan
    return statistics.linear_regression([r["t_min"] for r in rows], [r[column] for r in rows])[0]


@dataclass(frozen=True)
class Line:
    """One figure of the summary: the first and last stretch, and its goal if it has one."""

    what: str
    first: str
    last: str
    goal: str = ""
    verdict: str = ""  # PASS, FAIL, n/a, or "" for a figure without a goal


def growth(first: float, last: float) -> float:
    return (last - first) / first if first else math.nan


def rss_lines(w: Windows) -> list[Line]:
    """RSS per process (PSS for Postgres, whose processes share their buffers): under 10 %
    growth."""
    lines = []
    for column in PROCESSES.values():
        gated = "pss_mb_postgres" if column == "postgres" else f"rss_mb_{column}"
        for name in dict.fromkeys((gated, f"rss_mb_{column}")):
            first, last = mean(w.first, name), mean(w.last, name)
            change = growth(first, last)
            is_goal = name == gated
            what = f"{'PSS' if name.startswith('pss') else 'RSS'} {column}, MB"
            lines.append(Line(
                what + ("" if is_goal else " (summed; shared buffers counted by each)"),
                f"{first:,.0f}", f"{last:,.0f} ({change:+.1%})",
                f"< +{RSS_GROWTH:.0%}" if is_goal else "",
                ("PASS" if change < RSS_GROWTH else "FAIL") if is_goal else "",
            ))  # fmt: skip
    return lines


def probe_lines(w: Windows) -> list[Line]:
    """The probe's p99 over each whole stretch: the last within 20 % of the first."""
    first, last = latency_figures(w.first_latencies), latency_figures(w.last_latencies)
    change = growth(first["p99"], last["p99"])
    errors = [sum(row["probe_errors"] for row in rows) for rows in (w.first, w.last)]
    return [
        Line("probe p99, ms", f"{first['p99']:.1f}", f"{last['p99']:.1f} ({change:+.1%})",
             f"<= +{P99_GROWTH:.0%}", "PASS" if change <= P99_GROWTH else "FAIL"),
        Line("probe p50 / max, ms", f"{first['p50']:.1f} / {first['max']:.0f}",
             f"{last['p50']:.1f} / {last['max']:.0f}"),
        Line("probe requests / errors", f"{len(w.first_latencies):,} / {errors[0]:.0f}",
             f"{len(w.last_latencies):,} / {errors[1]:.0f}"),
    ]  # fmt: skip


def activity_lines(w: Windows, rows: list[dict]) -> list[Line]:
    """The city's pace, and its overflow: none in the whole run."""
    overflow = rows[-1]["overflow_total"]
    pace = [
        Line(what, f"{mean(w.first, column):,.1f}", f"{mean(w.last, column):,.1f}")
        for what, column in (("events sent a second", "events_per_s"),
                             ("readings applied a second", "applied_per_s"),
                             ("restock orders placed a second", "restocks_per_s"),
                             ("orders completed a second", "completed_per_s"),
                             ("readings backlog", "backlog"))
    ]  # fmt: skip
    first_overflow = sum(row["overflow"] for row in w.first)
    last_overflow = sum(row["overflow"] for row in w.last)
    late = sum(row["late_1s"] for row in rows)
    return [
        *pace,
        Line(f"overflow (whole run, registration included: {overflow:,.0f})",
             f"{first_overflow:,.0f}", f"{last_overflow:,.0f}", "0 in the whole run",
             "PASS" if overflow == 0 else "FAIL"),
        Line(f"events run over 1 s late (whole run: {late:,.0f}); max lag "
             f"{rows[-1]['max_lag_s']} s", f"{sum(r['late_1s'] for r in w.first):,.0f}",
             f"{sum(r['late_1s'] for r in w.last):,.0f}"),
    ]  # fmt: skip


def retention_started(rows: list[dict]) -> float | None:
    """The minute retention first deleted rows (the start of the interval it did in), if it
    did: measured, since what a retention setting means in real minutes depends on the
    simulation's clock and on when the first rows became old enough."""
    for i, row in enumerate(rows):
        if row["retention_deleted"] > 0:
            return rows[i - 1]["t_min"] if i else 0.0
    return None


def disk_lines(w: Windows, started_min: float | None) -> list[Line]:
    """Disk use: Postgres and JetStream, each table and stream, and their growth a minute.

    Flat once retention started: over the last stretch (which must start after retention
    first deleted rows) Postgres and JetStream together grow at most 10 % as fast as they did
    over the first stretch (least-squares slopes of their sizes, MB a minute)."""
    sizes = [
        ("Postgres database", "db_mb"), ("JetStream", "js_mb"),
        ("data folder on disk", "data_dir_mb"),
        *((f"  table {table}", f"{table}_mb") for table in TABLES),
        *((f"  stream {stream}", f"js_mb_{stream.lower()}") for stream in STREAMS),
    ]  # fmt: skip
    lines = [
        Line(f"{what} at the stretch's end, MB", f"{w.first[-1][column]:,.1f}",
             f"{w.last[-1][column]:,.1f}")
        for what, column in sizes
    ]  # fmt: skip
    for what, column in (("Postgres", "db_mb"), ("JetStream", "js_mb")):
        lines.append(Line(f"{what} growth, MB a minute", f"{slope_mb_min(w.first, column):,.2f}",
                          f"{slope_mb_min(w.last, column):,.2f}"))  # fmt: skip
    deleted = [sum(row["retention_deleted"] for row in rows) for rows in (w.first, w.last)]
    lines.append(Line("rows deleted by retention", f"{deleted[0]:,.0f}", f"{deleted[1]:,.0f}"))
    first, last = slope_mb_min(w.first, "disk_mb"), slope_mb_min(w.last, "disk_mb")
    if started_min is None:
        verdict = "n/a (retention deleted nothing)"
    elif w.starts(w.last) < started_min:
        verdict = "n/a (the last stretch starts before retention's first deletions)"
    else:
        verdict = "PASS" if last <= FLAT_SHARE * max(first, 0.0) else "FAIL"
    lines.append(Line("disk (Postgres + JetStream) growth, MB a minute", f"{first:,.2f}",
                      f"{last:,.2f}", f"<= {FLAT_SHARE:.0%} of the first", verdict))  # fmt: skip
    return lines


def summary(rows: list[dict], latencies: dict[int, list[float]], run: dict) -> list[str]:
    """The first stretch against the last, each figure beside its goal."""
    w = windows(rows, latencies, run["interval"] / 60)
    started = retention_started(rows)
    lines = [
        *rss_lines(w), *probe_lines(w), *activity_lines(w, rows), *disk_lines(w, started),
    ]  # fmt: skip
    cpu = ", ".join(f"{c} {mean(w.first, f'cpu_{c}'):.0%} -> {mean(w.last, f'cpu_{c}'):.0%}"
                    for c in PROCESSES.values())  # fmt: skip
    width = max(len(line.what) for line in lines)
    out = [
        f"soak: {run['ssds']:,} SSDs x{run['speed']:g}, {rows[-1]['t_min']:.1f} min sampled "
        f"every {run['interval']:g} s (after {run['warmup_minutes']:g} min of warm-up), probe "
        f"{run['rate']:g} req/s, retention {run['retention'] or 'none'}, "
        f"{rows[-1]['restarts']:.0f} services restarted",
        f"first {w.label} ({len(w.first)} samples) against the last ({len(w.last)} samples); "
        "means of the samples unless said:",
        f"  {'figure':<{width}}  {'first':>14}  {'last':>22}  {'goal':<22} verdict",
    ]
    for line in lines:
        out.append(f"  {line.what:<{width}}  {line.first:>14}  {line.last:>22}  "
                   f"{line.goal:<22} {line.verdict}".rstrip())  # fmt: skip
    out.append(f"  CPU, share of a core: {cpu}")
    verdicts = [line for line in lines if line.verdict in ("PASS", "FAIL")]
    failed = [line.what for line in verdicts if line.verdict == "FAIL"]
    out.append(f"goals: {len(verdicts) - len(failed)} of {len(verdicts)} met"
               + (f"; FAILED: {'; '.join(failed)}" if failed else ""))  # fmt: skip
    return out


# -- the plot -------------------------------------------------------------------------------------


def plot(rows: list[dict], w: Windows, title: str, path: Path) -> None:
    """Five panels over the run's minutes: RSS, RSS against the first stretch, the probe's
    latency, the city's pace and overflow, and disk use. The compared stretches are shaded."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a file
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    t = [row["t_min"] for row in rows]
    started = retention_started(rows)
    fig, axes = plt.subplots(5, 1, figsize=(11, 16), sharex=True)
    fig.suptitle(title)
    _memory(axes[0], axes[1], rows, w, t)
    _latency(axes[2], rows, w, t)
    _pace(axes[3], rows, t, w.interval_min)
    _disk(axes[4], rows, t)
    for ax in axes:
        for stretch in (w.first, w.last):
            ax.axvspan(w.starts(stretch), stretch[-1]["t_min"], color="0.9", zorder=0)
        if started is not None:
            ax.axvline(started, color="tab:red", linestyle=":", linewidth=1)
        ax.grid(True, alpha=0.3)
        if ax.get_yscale() == "log":  # plain numbers at 1, 2 and 5, not powers of ten
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
    axes[4].set_xlabel(
        "real minutes (shaded: the stretches compared; dotted red: retention's first deletions)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _series(rows: list[dict], column: str) -> list[float]:
    return [math.nan if _missing(row[column]) else row[column] for row in rows]


def _memory(absolute, relative, rows: list[dict], w: Windows, t: list[float]) -> None:
    every: list[float] = []
    for column in PROCESSES.values():
        name = "pss_mb_postgres" if column == "postgres" else f"rss_mb_{column}"
        values = _series(rows, name)
        every += values
        label = "postgres (PSS)" if column == "postgres" else column
        absolute.plot(t, values, label=label)
        base = mean(w.first, name)
        relative.plot(t, [100 * (v / base - 1) for v in values], label=label)
    absolute.set_yscale("log")
    absolute.set_ylim(min(every) / 1.3, max(every) * 1.6)  # room for the legend above
    absolute.set_ylabel("RSS, MB (log)")
    absolute.legend(fontsize="small", ncol=4)
    relative.axhline(100 * RSS_GROWTH, color="tab:red", linestyle="--", label="goal")
    relative.set_ylabel("RSS, % over the first stretch")


def _latency(ax, rows: list[dict], w: Windows, t: list[float]) -> None:
    for column, style in (("probe_p50_ms", ":"), ("probe_p99_ms", "-"), ("probe_max_ms", "--")):
        ax.plot(t, _series(rows, column), style, label=column.removeprefix("probe_")[:-3])
    first = latency_figures(w.first_latencies)["p99"]
    ax.axhline(first * (1 + P99_GROWTH), color="tab:red", linestyle="--", label="goal (p99)")
    ax.set_yscale("log")
    ax.set_ylabel("POST /api/orders, ms (log)")
    ax.legend(fontsize="small", ncol=4)


def _pace(ax, rows: list[dict], t: list[float], interval_min: float) -> None:
    for column, label in (("events_per_s", "events sent"), ("applied_per_s", "readings applied"),
                          ("restocks_per_s", "restock orders placed")):  # fmt: skip
        ax.plot(t, _series(rows, column), label=label)
    ax.set_ylabel("a second")
    ax.legend(fontsize="small", loc="upper left")
    overflow = ax.twinx()
    overflow.bar(t, _series(rows, "overflow"), width=interval_min * 0.6, color="tab:red",
                 alpha=0.5, label="overflow")  # fmt: skip
    overflow.set_ylim(bottom=0, top=max(1.0, *(v for v in _series(rows, "overflow") if v == v)))
    overflow.set_ylabel("overflow in the interval (bars)", color="tab:red")


def _disk(ax, rows: list[dict], t: list[float]) -> None:
    for column, label in (("db_mb", "Postgres database"), ("js_mb", "JetStream"),
                          ("disk_mb", "both"), ("data_dir_mb", "data folder")):  # fmt: skip
        ax.plot(t, _series(rows, column), label=label)
    ax.set_ylabel("MB")
    ax.legend(fontsize="small", loc="upper left")


# -- the run --------------------------------------------------------------------------------------


def city_env(options: Options) -> dict[str, str]:
    env = {"OFFSIM_POPULATION": str(options.ssds), "SIM_SPEED": str(options.speed)}
    if options.retention:
        env.update(dict.fromkeys(RETENTION_ENV, options.retention))
    return {**env, **options.env}


async def soak(options: Options) -> None:
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / RUN).write_text(json.dumps(parameters(options), indent=2) + "\n")
    with tempfile.TemporaryDirectory(prefix="offsim-soak-") as tmp:
        data = options.data_dir or Path(tmp) / "data"
        async with running_city(data, city_env(options)) as city, aiohttp.ClientSession() as http:
            await wait_registered(http, city)
            took = city.registration_seconds()
            print(f"population: {options.ssds:,} SSDs registered"
                  + (f" in {took:.1f} s" if took else ""), flush=True)  # fmt: skip
            if options.warmup_minutes > 0:
                print(f"warming up for {options.warmup_minutes:g} real minutes", flush=True)
                await asyncio.sleep(options.warmup_minutes * 60)
            conn = await asyncpg.connect(city.dsn)
            try:
                await sample_run(city, http, conn, options)
            finally:
                await conn.close()


async def sample_run(city: City, http: aiohttp.ClientSession, conn: asyncpg.Connection,
                     options: Options) -> None:  # fmt: skip
    """Sample every interval for the run's minutes, the probe running meanwhile; each row
    written out as soon as it is complete (an interrupted run keeps what it sampled)."""
    sampler = Sampler(city, http, conn)
    pairs = await probe_pairs(conn, PROBE_PAIRS)
    start = time.monotonic() + 1.0
    spec = {"url": f"{city.urls['orders service']}/api/orders", "token": city.service_token(),
            "pairs": pairs, "rate": options.rate, "interval": options.interval,
            "start": start}  # fmt: skip
    probe_process = await ProbeProcess.start(spec)
    try:
        await sampler.start()
        # Local files, a line each interval: written in the loop without a thread.
        with (open(options.out / SAMPLES, "w", newline="") as samples,  # noqa: ASYNC230
              open(options.out / LATENCIES, "w") as latencies):  # noqa: ASYNC230  # fmt: skip
            writer: csv.DictWriter | None = None
            for index in range(round(options.minutes * 60 / options.interval)):
                await asyncio.sleep(max(0.0, start + (index + 1) * options.interval
                                        - time.monotonic()))  # fmt: skip
                row = await sampler.sample((index + 1) * options.interval / 60)
                window = await probe_process.window(index, PROBE_TIMEOUT_S + 5)
                if window is None and probe_process.process.returncode is not None:
                    raise RuntimeError(f"the probe exited ({probe_process.process.returncode})")
                row.update(probe_columns(window))
                if writer is None:
                    writer = csv.DictWriter(samples, fieldnames=list(row))
                    writer.writeheader()
                writer.writerow(row)
                samples.flush()
                latencies.write(json.dumps(window["latencies_ms"] if window else []) + "\n")
                latencies.flush()
                print(format_row(row), flush=True)
    finally:
        await probe_process.stop()


def probe_columns(window: dict | None) -> dict[str, float]:
    """The probe's figures of one interval: requests, errors (anything but a 201), latencies."""
    if window is None:  # the probe did not report it in time: counted as missing, not as 0
        return {"probe_sent": 0, "probe_errors": math.nan, "probe_p50_ms": math.nan,
                "probe_p99_ms": math.nan, "probe_max_ms": math.nan}  # fmt: skip
    figures = latency_figures(window["latencies_ms"])
    errors = sum(n for status, n in window["statuses"].items() if status != "201")
    return {"probe_sent": len(window["latencies_ms"]), "probe_errors": errors,
            **{f"probe_{name}_ms": round(value, 2) for name, value in figures.items()}}  # fmt: skip


def parameters(options: Options) -> dict:
    """What the summary needs of a run's options, kept beside its samples."""
    return {"ssds": options.ssds, "speed": options.speed, "interval": options.interval,
            "rate": options.rate, "retention": options.retention, "minutes": options.minutes,
            "warmup_minutes": options.warmup_minutes, "env": options.env}  # fmt: skip


def load(out: Path) -> tuple[dict, list[dict], dict[int, list[float]]]:
    """A run's parameters, samples and probe latencies, from its folder."""
    run = json.loads((out / RUN).read_text())
    with open(out / SAMPLES, newline="") as samples:
        rows = [{key: _number(value) for key, value in row.items()}
                for row in csv.DictReader(samples)]  # fmt: skip
    lines = (out / LATENCIES).read_text().splitlines() if (out / LATENCIES).exists() else []
    latencies = {i: json.loads(line) for i, line in enumerate(lines)}
    return run, rows[: len(latencies)] if latencies else rows, latencies


def _number(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def report(out: Path, plot_to: Path | None) -> None:
    """The summary of the run in `out` (printed, and kept in summary.txt) and its plot."""
    if not (out / SAMPLES).exists():
        print(f"no samples in {out}")
        return
    run, rows, latencies = load(out)
    if len(rows) < 3:
        print(f"{len(rows)} samples in {out}: too few to compare (3 at least)")
        return
    lines = summary(rows, latencies, run)
    print("\n".join(lines))
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    title = (f"offsim soak: {run['ssds']:,} SSDs x{run['speed']:g}, probe {run['rate']:g} "
             f"req/s, retention {run['retention'] or 'none'}")  # fmt: skip
    png = out / "soak.png"
    plot(rows, windows(rows, latencies, run["interval"] / 60), title, png)
    if plot_to is not None:
        shutil.copyfile(png, plot_to)
    print(f"samples in {out / SAMPLES}, plot in {png}" + (f" and {plot_to}" if plot_to else ""))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--minutes", type=float, default=60.0, help="real minutes sampled")
    add("--ssds", type=int, default=100_000, help="OFFSIM_POPULATION")
    add("--speed", type=float, default=60.0, help="SIM_SPEED")
    add("--interval", type=float, default=30.0, help="seconds between samples")
    add("--rate", type=float, default=20.0, help="the probe's POST /api/orders a second")
    add(
        "--retention",
        help=f"given to the services as {' and '.join(RETENTION_ENV)}: a duration, e.g. 10m",
    )
    add(
        "--warmup-minutes",
        type=float,
        default=0.0,
        help="real minutes run after registering, before the first sample",
    )
    add(
        "--out",
        type=Path,
        help="folder of soak.csv, probe.jsonl, soak.png and summary.txt "
        "(default bench/out/soak-<time>)",
    )
    add("--plot-to", type=Path, help="also copy the plot here (e.g. docs/soak.png)")
    add(
        "--data-dir",
        type=Path,
        help="the city's data folder, kept afterwards (default: a temporary one, removed); "
        "must not exist yet",
    )
    add(
        "--env",
        type=env_item,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="more environment for the city (repeatable)",
    )
    add("--report", type=Path, metavar="OUT", help="only summarize and plot the run in OUT again")
    add("--probe", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def env_item(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not name or not equals:
        raise argparse.ArgumentTypeError(f"NAME=VALUE, got {text!r}")
    return name, value


def options_from(args: argparse.Namespace) -> Options:
    if args.data_dir is not None and args.data_dir.exists():
        sys.exit(f"--data-dir {args.data_dir} exists: the soak starts from a fresh city")
    env = dict(args.env)
    out = args.out or HERE / "out" / f"soak-{datetime.now():%Y%m%d-%H%M%S}"
    return Options(args.minutes, args.ssds, args.speed, args.interval, args.rate, args.retention,
                   args.warmup_minutes, out, args.plot_to, args.data_dir, env)  # fmt: skip


def main() -> None:
    args = parse_args()
    if args.probe:
        spec = json.loads(sys.stdin.read())
        # uvloop, as the services: the probe's own overhead stays small next to what it
        # measures (it shares the machine's cores with the whole city).
        (uvloop.run if uvloop is not None else asyncio.run)(probe(spec))
        return
    if args.report is not None:
        report(args.report, args.plot_to)
        return
    options = options_from(args)
    interrupted = False
    try:
        asyncio.run(soak(options))
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, SIGTERM
        interrupted = True
        print("soak stopped early; the city is stopped too", file=sys.stderr)
    finally:
        report(options.out, options.plot_to)  # of what was sampled, even if cut short
    if interrupted:
        sys.exit(130)


if __name__ == "__main__":
    main()
