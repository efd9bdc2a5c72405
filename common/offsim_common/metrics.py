"""Prometheus metrics, one set for every offsim process, served at `/metrics`.

Label values are bounded: routes are the router's templates (`/api/orders/{id}`), never raw
paths, so an id scan cannot blow up the series count.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

HTTP_REQUESTS = Counter(
    "offsim_http_requests_total", "HTTP requests answered", ["service", "method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "offsim_http_request_duration_seconds", "HTTP request latency", ["service", "method", "route"]
)
NATS_MESSAGES = Counter(
    "offsim_nats_messages_total",
    "JetStream messages handled, by consumer and outcome (ack, defer, nak, dead_letter, unsettled)",
    ["consumer", "outcome"],
)
NATS_REQUESTS = Counter(
    "offsim_nats_requests_total", "NATS requests answered, by endpoint and outcome",
    ["endpoint", "outcome"],
)  # fmt: skip
ORDER_TRANSITIONS = Counter(
    "offsim_order_transitions_total", "Orders that reached a status", ["status"]
)
ORDER_TRANSITION_SECONDS = Histogram(
    "offsim_order_transition_seconds",
    "Real seconds an order spent before a transition (pending->shipped, shipped->completed)",
    ["transition"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 240, 480, 960),
)
ORDER_REANNOUNCEMENTS = Counter(
    "offsim_order_reannouncements_total",
    "Overdue orders the reconciler announced again, by the status announced",
    ["status"],
)
BATCH_SIZE = Histogram(
    "offsim_batch_size",
    "Items per batch: orders committed together (group commit), messages fetched by a consumer",
    ["batch"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
# Device readings (ssds.<id>.readings), by what became of each: `applied` to stock once,
# `duplicate` (its reading id was applied before), `rejected` (an SSD or product the database does
# not know, or a subject naming another SSD), `malformed` (not a reading: dead-lettered).
SSD_READINGS = Counter(
    "offsim_ssd_readings_total", "SSD readings received, by outcome", ["outcome"]
)
SSD_DEMAND_UNITS = Counter(
    "offsim_ssd_demand_units_total",
    "Units the applied readings asked for: `met` from stock, `short` found no stock",
    ["outcome"],
)
RESTOCK_ORDERS = Counter(
    "offsim_restock_orders_total",
    "Restock orders the backend placed because a reading took a product below its reorder point",
)
# Messages of a durable consumer not yet delivered (the server's count at the last fetch): its
# backlog. The same for every replica bound to the durable, hence the max across workers.
CONSUMER_PENDING = Gauge(
    "offsim_consumer_pending",
    "Messages a durable consumer has not been delivered yet, at its last fetch",
    ["consumer"],
    multiprocess_mode="livemax",
)
GENERATOR_EVENTS = Counter(
    "offsim_generator_events_total", "Simulated events sent by the generator", ["event", "outcome"]
)
ETL_RECORDS = Counter(
    "offsim_etl_records_total", "OFF records processed by the ETL", ["source", "outcome"]
)


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    if resource is None:
        return "unmatched"
    info = resource.get_info()
    return info.get("path") or info.get("formatter") or info.get("prefix") or "unmatched"


def metrics_middleware(service: str):
    # The labelled series of each (method, route, status), looked up once: `labels()` takes a
    # lock and checks its arguments on every call, and this runs on every request. Bounded,
    # since routes are templates and statuses few.
    series: dict[tuple, tuple] = {}

    @web.middleware
    async def middleware(request: web.Request, handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            # The resource (not the raw path) keys the cache: an id scan adds no entries.
            key = (request.method, request.match_info.route.resource, status)
            found = series.get(key)
            if found is None:
                route = _route(request)
                found = series[key] = (
                    HTTP_REQUESTS.labels(service, request.method, route, str(status)),
                    HTTP_LATENCY.labels(service, request.method, route),
                )
            found[0].inc()
            found[1].observe(time.perf_counter() - started)

    return middleware


# Set while the metrics of several worker processes are shared (see `shared_by_workers`).
_shared_dir: Path | None = None
_SHARED_PREFIX = "offsim-metrics-"
_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


@contextlib.contextmanager
def shared_by_workers() -> Iterator[Path]:
    """Around forking workers (OFFSIM_HTTP_WORKERS): each worker writes its metrics to files of
    its own in a fresh directory (prometheus_client's multiprocess mode), and `/metrics`, from
    whichever worker answers, sums every worker's; without this it showed only its own. Every
    offsim metric is a counter or a histogram, which add up across processes, but for the
    consumers' backlog, a gauge whose largest live value is shown. The directory
    is removed once the workers have exited."""
    global _shared_dir
    _sweep(Path(tempfile.gettempdir()))
    directory = Path(tempfile.mkdtemp(prefix=f"{_SHARED_PREFIX}{os.getpid()}-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    previous = values.ValueClass
    # Each value's file is named after its process. The default asks the kernel for the pid at
    # every increment (getpid is a system call); the pid is kept here and renewed at each fork.
    values.ValueClass = values.MultiProcessValue(lambda: _pid)
    _shared_dir = directory
    try:
        yield directory
    finally:
        _shared_dir = None
        values.ValueClass = previous
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(directory, ignore_errors=True)


def _sweep(root: Path) -> None:
    """Remove the directories of parents that could not remove their own (killed, or out of
    memory): a parent's pid is in its directory's name. In a container the parent may be pid 1
    again after a restart, with a /tmp that outlived it: its own pid's are stale too."""
    for stale in root.glob(f"{_SHARED_PREFIX}*"):
        pid = stale.name.removeprefix(_SHARED_PREFIX).split("-", 1)[0]
        if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    return True


async def metrics(request: web.Request) -> web.Response:
    registry = REGISTRY
    if _shared_dir is not None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(_shared_dir))
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
