"""What the HTTP services share: typed app keys, resource contexts, health, and running the app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import uvloop
from aiohttp import web
from nats import micro
from nats.aio.client import Client
from nats.js import JetStreamContext

from . import bus, tracing
from .config import Settings
from .db import create_pool
from .http import deadline_middleware, error_middleware, request_id_middleware, within
from .logs import setup_logging
from .messages import Health
from .metrics import NATS_REQUESTS, metrics, metrics_middleware
from .openapi import doc

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
NC = web.AppKey("nc", Client)
JS = web.AppKey("js", JetStreamContext)
NAME = web.AppKey("name", str)
CONSUMERS = web.AppKey("consumers", list)

VERSION = "0.1.0"


def base_app(settings: Settings, name: str, deadline_s: float | None = None) -> web.Application:
    """An application with request ids, metrics and JSON errors, the pool and NATS opened in
    `cleanup_ctx`, `/api/health` and `/metrics`. Services append their own contexts after
    these, so they close first. With `deadline_s`, every request is answered within it (a 503
    when a dependency kept it waiting)."""
    middlewares = [request_id_middleware, metrics_middleware(name), error_middleware]
    if deadline_s is not None:
        middlewares.append(deadline_middleware(deadline_s))
    app = web.Application(middlewares=middlewares)
    app[SETTINGS] = settings
    app[NAME] = name
    app.cleanup_ctx.append(pg_ctx)
    app.cleanup_ctx.append(nats_ctx)
    app.router.add_get("/api/health", health)
    app.router.add_get("/metrics", metrics)
    return app


async def pg_ctx(app: web.Application) -> AsyncIterator[None]:
    app[POOL] = await create_pool(app[SETTINGS].database_url)
    yield
    await app[POOL].close()


async def nats_ctx(app: web.Application) -> AsyncIterator[None]:
    app[NC] = await bus.connect(app[SETTINGS].nats_url, name=app[NAME])
    app[JS] = app[NC].jetstream()
    await bus.ensure_streams(app[JS], app[SETTINGS].stream_replicas)
    yield
    # drain() lets in-flight requests and handlers finish before the connection closes; a
    # connection that is down (NATS is away) has nothing to drain and is closed.
    if app[NC].is_connected:
        await app[NC].drain()
    elif not app[NC].is_closed:
        await app[NC].close()


def consumers_ctx(specs: Callable[[web.Application], list[bus.ConsumerSpec]]):
    """A cleanup context running the service's durable consumers for the app's lifetime."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        tasks = await bus.start_consumers(app[JS], specs(app), app[SETTINGS].stream_replicas)
        app[CONSUMERS] = tasks
        yield
        await bus.stop_tasks(tasks)

    return ctx


# Each dependency's check has this long; they run side by side, so /api/health answers well
# within 2 s whatever is down.
HEALTH_CHECK_TIMEOUT_S = 1.0


async def _select_one(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.fetchval("SELECT 1")


async def _database_problem(pool: asyncpg.Pool) -> str | None:
    try:
        await within(_select_one(pool), HEALTH_CHECK_TIMEOUT_S)
    except Exception as exc:  # any failure means unhealthy, whatever its kind
        return str(exc) or type(exc).__name__
    return None


async def _nats_problem(nc: Client) -> str | None:
    if not nc.is_connected:
        return "not connected"
    try:
        await within(nc.flush(), HEALTH_CHECK_TIMEOUT_S)
    except Exception as exc:
        return str(exc) or type(exc).__name__
    return None


@doc("Health: 200 only when the database and NATS answer", "health",
     responses={200: Health, 503: Health})  # fmt: skip
async def health(request: web.Request) -> web.Response:
    """200 only when every dependency this process has (database, NATS) answers."""
    problems: dict[str, Any] = {}
    checks = {"nats": _nats_problem(request.app[NC])}
    if POOL in request.app:
        checks["database"] = _database_problem(request.app[POOL])
    for dependency, problem in zip(checks, await asyncio.gather(*checks.values()), strict=True):
        if problem:
            problems[dependency] = problem
    if CONSUMERS in request.app and (stopped := bus.stopped_consumers(request.app[CONSUMERS])):
        problems["consumers"] = f"stopped: {', '.join(stopped)}"
    if problems:
        return web.json_response({"status": "unavailable", "details": problems}, status=503)
    checked = {"database": "ok"} if POOL in request.app else {}
    return web.json_response({"status": "ok", **checked, "nats": "ok"})


async def start_probe_server(
    nc: Client,
    port: int,
    name: str,
    consumers: list[asyncio.Task] | None = None,
    routes: Callable[[web.Application], None] | None = None,
) -> web.AppRunner:
    """`/api/health` and `/metrics` for a service with no HTTP API of its own (notifications,
    generator), so an orchestrator probes and scrapes it like the others; `routes` adds the
    process's own (the generator's `/api/control`). Stop it with `runner.cleanup()`."""
    app = web.Application(middlewares=[metrics_middleware(name), error_middleware])
    app[NC] = nc
    if consumers is not None:
        app[CONSUMERS] = consumers
    app.router.add_get("/api/health", health)
    app.router.add_get("/metrics", metrics)
    if routes is not None:
        routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, port=port).start()
    return runner


def event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop: the same asyncio API, its transports and scheduling in C (the
    services spend much of their time in them)."""
    return uvloop.new_event_loop()


def run(app_factory: Callable[[Settings], web.Application], name: str, default_port: int) -> None:
    """Entry point of an HTTP service: settings from the environment, then serve, in
    OFFSIM_HTTP_WORKERS processes sharing the port."""
    settings = Settings.from_env(http_port=default_port)
    setup_logging(settings.log_level, name)
    if settings.http_workers > 1:
        sys.exit(run_workers(settings.http_workers, lambda: serve(app_factory, name, settings)))
    serve(app_factory, name, settings)


def serve(
    app_factory: Callable[[Settings], web.Application], name: str, settings: Settings
) -> None:
    traces = tracing.start_tracing(settings, f"offsim-{name}")
    try:
        web.run_app(app_factory(settings), port=settings.http_port, print=None, access_log=None,
                    reuse_port=settings.http_workers > 1, loop=event_loop())  # fmt: skip
    finally:
        if traces is not None:
            traces.shutdown()


def run_workers(count: int, work: Callable[[], None]) -> int:
    """Fork `count` workers running `work` and wait for them. Each is a replica of the service
    (its own pool, NATS connection and consumers), which offsim's replicas already share work
    as. SIGTERM or SIGINT is passed on to every worker; if one dies, the others are stopped
    too and the exit status says so, so the orchestrator restarts the whole service."""
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


def micro_ctx(
    name: str,
    description: str,
    queue_group: str,
    endpoints: Callable[[web.Application], dict[str, tuple[str, micro.Handler]]],
):
    """A cleanup context running a `nats.micro` service with the given endpoints
    (endpoint name -> (subject, handler)). Each service passes its own queue group: the
    scatter-gather on orders.random needs one answer from each service, not one in all."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        service = await micro.add_service(
            app[NC], name=name, version=VERSION, description=description, queue_group=queue_group
        )
        for endpoint, (subject, handler) in endpoints(app).items():
            await service.add_endpoint(
                name=endpoint, subject=subject, handler=_served(f"{name}.{endpoint}", handler)
            )
        yield
        if not app[NC].is_closed:
            await service.stop()

    return ctx


def _served(endpoint: str, handler: micro.Handler) -> micro.Handler:
    """Counted, and traced: a span continuing the requester's trace, replies carrying it."""

    async def served(request: micro.Request) -> None:
        with tracing.serving(request, endpoint) as traced:
            try:
                await handler(traced)
            except Exception:
                NATS_REQUESTS.labels(endpoint, "error").inc()
                raise
        NATS_REQUESTS.labels(endpoint, "ok").inc()

    return served
