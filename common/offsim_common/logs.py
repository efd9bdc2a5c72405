"""Logging: JSON lines when not on a terminal, and a request id on every line of one order.

The id comes from an HTTP request's `X-Request-Id` (or is made there), travels in NATS headers
from orders.pending to orders.completed, and is put back in context by each consumer, so
`grep <id>` over all services' logs shows one order's whole life. With tracing on, each line
also carries the trace and span ids of the span it was written in (`-` otherwise), so a line
leads to its trace and a trace to its lines.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
from collections.abc import Mapping

from pythonjsonlogger.json import JsonFormatter

from . import tracing

REQUEST_ID_HEADER = "X-Request-Id"

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def new_request_id() -> str:
    """32 random hex digits, like a uuid4's hex without building the UUID (every request
    without an X-Request-Id gets one)."""
    return os.urandom(16).hex()


def request_id_from(headers: Mapping[str, str] | None) -> str | None:
    return (headers or {}).get(REQUEST_ID_HEADER)


def request_id_headers() -> dict[str, str]:
    """Headers that carry the current request id onto a NATS message (none if there is none)."""
    current = request_id.get()
    return {REQUEST_ID_HEADER: current} if current else {}


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get() or "-"
        record.trace_id, record.span_id = tracing.log_ids()
        return True


class _TextFormatter(logging.Formatter):
    """`[request id]`, or `[request id trace id span id]` inside a span."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        ids = record.request_id
        if getattr(record, "trace_id", "-") != "-":
            ids = f"{ids} {record.trace_id} {record.span_id}"
        return f"{record.asctime} {record.levelname} {record.name} [{ids}] {record.message}"


def setup_logging(level: str, service: str, *, json_lines: bool | None = None) -> None:
    """Configure the root logger once per process: JSON unless stderr is a terminal."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler = logging.StreamHandler()
    handler.addFilter(_ContextFilter())
    if json_lines:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s %(trace_id)s"
                " %(span_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                static_fields={"service": service},
            )
        )
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
