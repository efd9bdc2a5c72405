"""How every long-running member runs: settings -> app factory -> resources in `cleanup_ctx`
-> routes, consumers and micro endpoints, served by one runner with one signal path.

    def main() -> None:
        service.main("orders", OrdersSettings, create_app)

`base_app` gives every app request ids, metrics, JSON errors, `/api/health` and `/metrics`;
its `resources` open what the member needs (the database pool, NATS) before the member's own
contexts and close them after.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TypeVar

import uvloop
from aiohttp import web

from . import bus, health, metrics, nats_rights, tracing
from .app_keys import CONSUMERS, JS, NAME, NC, POOL, SETTINGS, STOP
from .db import create_pool
from .http import deadline_middleware, error_middleware, request_id_middleware
from .logs import setup_logging
from .metrics import metrics_middleware
from .settings import ConfigError, ServiceSettings

log = logging.getLogger(__name__)

S = TypeVar("S", bound=ServiceSettings)


def base_app(
    settings: ServiceSettings,
    name: str,
    *,
    database: bool = True,
    deadline_s: float | None = None,
) -> web.Application:
    """An application with request ids, metrics and JSON errors, NATS (and, with `database`,
    the pool) opened in `cleanup_ctx`, `/api/health` and `/metrics`. Members append their own
    contexts after these, so theirs close first. With `deadline_s`, every request is answered
    within it (a 503 when a dependency kept it waiting)."""
    middlewares = [request_id_middleware, metrics_middleware(name), error_middleware]
    if deadline_s is not None:
        middlewares.append(deadline_middleware(deadline_s))
    app = web.Application(middlewares=middlewares)
    app[SETTINGS] = settings
    app[NAME] = name
    app[STOP] = asyncio.Event()
    if database:
        app.cleanup_ctx.append(pg_ctx)
    app.cleanup_ctx.append(nats_ctx)
    health.add_routes(app)
    return app


async def pg_ctx(app: web.Application) -> AsyncIterator[None]:
    app[POOL] = await create_pool(app[SETTINGS].database_url)
    yield
    await app[POOL].close()


async def nats_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[NC] = await bus.connect(
        settings.nats_url, app[NAME], settings.nats_user, settings.nats_password
    )
    app[JS] = app[NC].jetstream()
    # With a NATS user, the member sets up the streams it uses (those it may); anonymous, all.
    streams = nats_rights.streams_of(app[NAME]) if settings.nats_user else None
    await bus.ensure_streams(app[JS], settings.stream_replicas, streams=streams)
    yield
    # drain() lets in-flight requests and handlers finish before the connection closes; a
    # connection that is down (NATS is away) has nothing to drain and is closed.
    if app[NC].is_connected:
        await app[NC].drain()
    elif not app[NC].is_closed:
        await app[NC].close()


def consumers_ctx(specs: Callable[[web.Application], list[bus.ConsumerSpec]]):
    """A cleanup context running the member's durable consumers for the app's lifetime."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        tasks = await bus.start_consumers(
            app[JS], specs(app), settings.stream_replicas, settings.consumer_linger_ms / 1000
        )
        app[CONSUMERS] = tasks
        yield
        await bus.stop_tasks(tasks)

    return ctx


@contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[asyncio.Event]:
    """SIGINT and SIGTERM set `stop` (the one signal path of every offsim process)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


@asynccontextmanager
async def serving(
    app: web.Application, port: int, host: str | None = None, *, reuse_port: bool = False
):
    """`app` started (its cleanup contexts entered) and listening on `port` (0: any free
    port) until the block ends; yields the port it listens on. With `reuse_port`, other
    processes may listen on the same port (the kernel spreads connections among them)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host=host, port=port, reuse_port=reuse_port or None)
        await site.start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def run(app: web.Application, port: int, *, reuse_port: bool = False) -> None:
    """Serve `app` until a signal, or until the app sets its STOP event; then close it in
    order (the member's contexts first, then NATS and the pool)."""
    with stop_on_signals(app[STOP]):
        async with serving(app, port, reuse_port=reuse_port) as listening:
            # What start-up made (modules, models and their validators, the pool, the
            # connections) lives as long as the process: frozen, the cyclic collector never
            # walks it again. Walking it in a full collection paused the orders service for
            # 58 ms under load (the p99 of a whole benchmark run); after this, about 1 ms.
            gc.freeze()
            log.info("%s ready on port %d", app[NAME], listening)
            await app[STOP].wait()


def event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop: the same asyncio API, with its transports and scheduling in C,
    where the services spend much of their time under load."""
    return uvloop.new_event_loop()


def main(name: str, settings_type: type[S], create_app: Callable[[S], web.Application]) -> None:
    """The console script of a service: its settings from the environment (a bad variable
    ends it with a message naming it), logs, traces, then `run`; in `http_workers` processes
    sharing the port when the member has that setting (OFFSIM_HTTP_WORKERS)."""
    try:
        settings = settings_type.from_env()
    except ConfigError as exc:
        sys.exit(f"offsim-{name}: {exc}")
    setup_logging(settings.log_level, name)
    workers = getattr(settings, "http_workers", 1)
    if workers > 1:
        with metrics.shared_by_workers():
            status = run_workers(workers, lambda: serve(name, settings, create_app,
                                                        reuse_port=True))  # fmt: skip
        sys.exit(status)
    serve(name, settings, create_app)


def serve(
    name: str,
    settings: S,
    create_app: Callable[[S], web.Application],
    *,
    reuse_port: bool = False,
) -> None:
    traces = tracing.start_tracing(settings, f"offsim-{name}")
    try:
        with asyncio.Runner(loop_factory=event_loop) as runner:
            runner.run(run(create_app(settings), settings.http_port, reuse_port=reuse_port))
    finally:
        if traces is not None:
            traces.shutdown()


def run_workers(count: int, work: Callable[[], None]) -> int:
    """Fork `count` workers running `work` and wait for them. Each is a replica of the service
    (its own pool, NATS connection and consumers), and offsim's replicas already share the
    work safely. SIGTERM or SIGINT is passed on to every worker; if one dies, the others are
    stopped too and the exit status says so, so that the orchestrator restarts the service."""
    children: list[int] = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            try:
                work()
            except BaseException:
                log.exception("worker failed")
                os._exit(1)
            os._exit(0)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    while children:
        pid, code = os.wait()
        children.remove(pid)
        if code != 0 and status == 0:
            status = 1
            log.error("worker %d exited (status %d); stopping the others", pid, code)
            forward(signal.SIGTERM, None)
    return status
