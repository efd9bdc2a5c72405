"""What the benchmarks of a whole city share (bench/city.py, bench/soak.py): `offsim up` started in
a fresh data folder and stopped again whatever happens, and what is read of it from outside.

The city is `offsim up` as a user runs it: embedded NATS and Postgres, every service, the
generator and the dashboard as processes. A benchmark learns the addresses from the launcher's
feed, reads the services' `/metrics` and the generator's `/api/control`, finds each process with
psutil, and leaves nothing running behind it: on Ctrl-C, SIGTERM or an exception the launcher is
stopped in order, and whatever of the city outlived it (a detached Postgres, say) is killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import aiohttp
import psutil

# /metrics is read as the tests read it (prometheus_client's parser): from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers import metric

DATABASE = re.compile(r"offsim: Postgres at (\S+)")
ADDRESS = re.compile(r"offsim: (users service|orders service|generator|dashboard)\s+(http://\S+)")
# The launcher's feed when a child dies on its own (it restarts it a few times).
EXITED = re.compile(r"\b(\w+) exited \(")
NATS_MONITOR = re.compile(r'^http:\s*"([^"]+)"', re.MULTILINE)
STOP_GRACE_S = 60.0


@dataclass
class Counters:
    """What the generator and the users and orders services had counted at one moment."""

    at: float
    consume_sent: float
    events_sent: float
    overflow: float
    applied: float
    pending: float
    restocks: float
    completed: float
    # The generator's lag histogram: events (and ticks) run, and those run within a second.
    lag_count: float
    lag_within_1s: float
    # Rows the users and orders services' retention deleted (0 before it starts).
    retention_deleted: float


async def scrape(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(f"{url}/metrics") as resp:
        return await resp.text()


async def counters(http: aiohttp.ClientSession, urls: dict[str, str]) -> Counters:
    gen = await scrape(http, urls["generator"])
    users = await scrape(http, urls["users service"])
    orders = await scrape(http, urls["orders service"])
    return Counters(
        at=time.perf_counter(),
        consume_sent=metric(gen, "offsim_generator_events_total", event="consume", outcome="sent"),
        events_sent=metric(gen, "offsim_generator_events_total", outcome="sent"),
        overflow=metric(gen, "offsim_generator_overflow_total"),
        applied=metric(users, "offsim_ssd_readings_total", outcome="applied"),
        pending=metric(users, "offsim_consumer_pending", consumer="users-apply-readings"),
        restocks=metric(users, "offsim_restock_orders_total"),
        completed=metric(orders, "offsim_order_transitions_total", status="completed"),
        lag_count=metric(gen, "offsim_generator_lag_seconds_count"),
        lag_within_1s=metric(gen, "offsim_generator_lag_seconds_bucket", le="1.0"),
        retention_deleted=metric(users, "offsim_retention_deleted_total")
        + metric(orders, "offsim_retention_deleted_total"),
    )


async def control(http: aiohttp.ClientSession, urls: dict[str, str]) -> dict:
    """The generator's `GET /api/control`: phase, overflow by kind, largest lag so far."""
    async with http.get(f"{urls['generator']}/api/control") as resp:
        return await resp.json()


def processes(root: psutil.Process, data: Path) -> dict[str, list[psutil.Process]]:
    """The launcher's children by name, and the Postgres of the data folder (started in a
    session of its own, so not a child)."""
    found: dict[str, list[psutil.Process]] = {"offsim up": [root]}
    for child in root.children(recursive=True):
        with suppress(psutil.Error):  # a child that just ended
            line = " ".join(child.cmdline())
            match = re.search(r"-m (offsim_\w+)", line)
            name = match.group(1) if match else child.name()
            found.setdefault(name, []).append(child)
    found["postgres"] = postgres_of(data)
    return found


def postgres_of(data: Path) -> list[psutil.Process]:
    """Every process of the Postgres that serves the data folder."""
    found = []
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] and "postgres" in proc.info["name"] and _of(proc, data):
            found.append(proc)
    return found


def _of(proc: psutil.Process, data: Path) -> bool:
    """Whether a postgres process serves the data folder (the postmaster names it; its backends
    are its children)."""
    try:
        parent = proc if "-D" in proc.cmdline() else proc.parent()
        return parent is not None and str(data) in " ".join(parent.cmdline())
    except psutil.Error:
        return False


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def rss_mb(procs: list[psutil.Process]) -> float:
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def registration_seconds(log: Path) -> float | None:
    """From the generator's log: registering the population, start to end (real seconds)."""
    started = ended = None
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = entry.get("message", "")
        if message.startswith("registering a population"):
            started = entry["time"]
        elif message.startswith("population registered"):
            ended = entry["time"]
    if started is None or ended is None:
        return None
    return (datetime.fromisoformat(ended) - datetime.fromisoformat(started)).total_seconds()


@dataclass
class City:
    """A running `offsim up`: its process, data folder and addresses."""

    process: asyncio.subprocess.Process
    data: Path
    urls: dict[str, str]
    dsn: str
    # Children the launcher's feed reported dead (it restarts them): name, in order.
    exits: list[str] = field(default_factory=list)
    # Every process of the city ever found: what is killed if it outlives the launcher.
    seen: dict[int, psutil.Process] = field(default_factory=dict)

    def processes(self) -> dict[str, list[psutil.Process]]:
        """The city's processes by name, now (a restarted child is a new process)."""
        found = processes(psutil.Process(self.process.pid), self.data)
        for procs in found.values():
            self.seen.update((proc.pid, proc) for proc in procs)
        return found

    def service_token(self) -> str:
        """The credential `offsim up` made for its services (`service-token` in its data)."""
        return (self.data / "service-token").read_text().strip()

    def nats_monitor(self) -> str:
        """NATS's monitoring endpoint (`/jsz`, `/varz`), from the configuration the launcher
        wrote for it."""
        config = (self.data / "nats" / "nats-server.conf").read_text()
        return f"http://{NATS_MONITOR.search(config).group(1)}"

    def registration_seconds(self) -> float | None:
        return registration_seconds(self.data / "logs" / "generator.log")


@asynccontextmanager
async def running_city(data: Path, env: dict[str, str]) -> AsyncIterator[City]:
    """`offsim up` in `data` with `env` over this environment, until the block ends; then it is
    stopped in order and anything of it left running is killed. SIGTERM to this process ends
    the block as Ctrl-C does (both cancel the benchmark's main task)."""
    env = {**os.environ, "LOG_LEVEL": "INFO", **env}
    for name in ("NATS_URL", "DATABASE_URL", "OFFSIM_SERVICE_TOKEN"):
        env.pop(name, None)  # embedded servers, and the token file the launcher writes
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    up = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "offsim_launcher", "up", "--data-dir", str(data),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        # Out of the terminal's process group: a Ctrl-C reaches the benchmark alone, which
        # then stops the launcher once, in order.
        start_new_session=True,
    )  # fmt: skip
    city = City(up, data, {}, "")
    feed = None
    try:
        await _read_addresses(city)
        feed = asyncio.create_task(_follow_feed(city))
        yield city
    finally:
        if feed is not None:
            feed.cancel()
        try:
            await _stop(up)
        finally:
            _kill_leftovers(city)
            loop.remove_signal_handler(signal.SIGTERM)


async def _read_addresses(city: City) -> None:
    """Read the launcher's feed until it has said where the services and Postgres are."""
    while len(city.urls) < 4:
        line = (await city.process.stdout.readline()).decode()
        if not line:
            raise RuntimeError(f"offsim up exited before it was up; see {city.data / 'logs'}")
        if match := ADDRESS.search(line):
            city.urls[match.group(1)] = match.group(2).removesuffix("/api/control")
        elif match := DATABASE.search(line):
            city.dsn = match.group(1)


async def _follow_feed(city: City) -> None:
    """Keep reading the launcher's feed, so that its pipe never fills and blocks it; note the
    children it says died."""
    while line := (await city.process.stdout.readline()).decode(errors="replace"):
        if match := EXITED.search(line):
            city.exits.append(match.group(1))
            print(f"  ! {line.strip()}", flush=True)


async def _stop(up: asyncio.subprocess.Process) -> None:
    """SIGINT, as Ctrl-C in its terminal would: the launcher stops the generator, the services,
    then NATS and Postgres. Killed if it takes more than a minute."""
    if up.returncode is not None:
        return
    up.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(up.wait(), STOP_GRACE_S)
    except TimeoutError:
        up.kill()
        await up.wait()


def _kill_leftovers(city: City) -> None:
    """Whatever of the city still runs once the launcher is gone (it was killed, or stopped
    while starting): terminated, then killed after 10 s."""
    left = {**city.seen, **{proc.pid: proc for proc in postgres_of(city.data)}}
    with suppress(psutil.Error):
        left[city.process.pid] = psutil.Process(city.process.pid)
    alive, names = [], []
    for proc in left.values():
        with suppress(psutil.Error):
            if proc.is_running():  # is_running also tells a reused pid from the one seen
                names.append(f"{proc.pid} {' '.join(proc.cmdline())[:80]} {proc.status()}")
                proc.terminate()
                alive.append(proc)
    _, still = psutil.wait_procs(alive, timeout=10)
    for proc in still:
        with suppress(psutil.Error):
            proc.kill()
    if alive:
        print(f"stopped what of the city was left running: {'; '.join(names)}", file=sys.stderr)


async def wait_registered(
    http: aiohttp.ClientSession, city: City, within: float = 900.0
) -> Counters:
    """Wait until the population is registered and the clock runs (the first consumption
    sent); fail if the launcher exits or it takes longer than `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        if city.process.returncode is not None:
            raise RuntimeError(f"offsim up exited; see {city.data / 'logs'}")
        try:
            now = await counters(http, city.urls)
            if now.consume_sent > 0:
                return now
        except aiohttp.ClientError:
            pass  # the generator is still starting
        if time.monotonic() > deadline:
            raise RuntimeError(f"the population was not registered within {within:.0f} s")
        await asyncio.sleep(0.5)
