"""Traces with OpenTelemetry: one order, one trace, across HTTP, NATS and Postgres.

Off unless OTEL_TRACES_EXPORTER names an exporter (`otlp`, `console`). Then :func:`start_tracing`
builds this process's tracer provider (`service.name` is OTEL_SERVICE_NAME or the member's name,
the sampler OTEL_TRACES_SAMPLER) and turns on the maintained instrumentations: the aiohttp server
and client and asyncpg. NATS has none, so this module does it: a producer span around every
publish puts the W3C `traceparent` into the message's headers (replies included), and every
consumer's span continues that trace as a child of it.

When tracing is off nothing is instrumented, no span is made, no header added, and the SDK is
not even imported: each helper here returns at once.

Waiting is not a span. A supplier or courier stage that is not due yet sends its message back
to JetStream (nak with a delay) without making a span, so an order redelivered for an hour still
has one span per stage; the stage's span says how long it waited (`offsim.stage.waited_s`), how
long the simulation wanted (`offsim.stage.delay_s`) and how many deliveries it took
(`offsim.deliveries`), and the trace's timeline shows the wait as the gap before it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg
from nats.micro import Request
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode

from .settings import ServiceSettings as Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

# Probes and scrapes would each start a trace of one span every few seconds: never sampled.
UNTRACED = frozenset({"GET /api/health", "GET /metrics"})
MSG_ID_HEADER = "Nats-Msg-Id"

_tracer: trace.Tracer | None = None


def enabled() -> bool:
    return _tracer is not None


@dataclass
class Tracing:
    """Tracing while it is on in this process; `shutdown()` exports what is left and stops."""

    provider: TracerProvider
    instrumentors: list

    def shutdown(self) -> None:
        global _tracer
        for instrumentor in self.instrumentors:
            instrumentor.uninstrument()
        _tracer = None
        self.provider.shutdown()


def start_tracing(
    settings: Settings,
    service: str,
    *,
    processors: Sequence[SpanProcessor] = (),
    register: bool = True,
) -> Tracing | None:
    """Turn tracing on for this process if an exporter is configured (or `processors` are given,
    as the tests give an in-memory exporter). Call it before the apps and HTTP sessions are made:
    the aiohttp instrumentations apply to those made afterwards."""
    global _tracer
    if not settings.traces_exporters and not processors:
        return None
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: settings.otel_service_name or service}),
        sampler=_sampler(settings),
    )
    for name in settings.traces_exporters:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, settings)))
    for processor in processors:
        provider.add_span_processor(processor)
    if register:
        trace.set_tracer_provider(provider)
    instrumentors = [
        AioHttpServerInstrumentor(),
        AioHttpClientInstrumentor(),
        AsyncPGInstrumentor(),
    ]
    with warnings.catch_warnings():
        # The aiohttp server instrumentation subclasses web.Application (its documented way to
        # add its middleware to every app), which aiohttp discourages with a warning.
        warnings.filterwarnings("ignore", "Inheritance class", DeprecationWarning)
        for instrumentor in instrumentors:
            instrumentor.instrument(tracer_provider=provider)
    _tracer = provider.get_tracer("offsim")
    return Tracing(provider, instrumentors)


def _sampler(settings: Settings):
    from opentelemetry.sdk.trace import sampling

    rate = 1.0 if settings.traces_sampler_arg is None else settings.traces_sampler_arg
    configured = {
        "always_on": lambda: sampling.ALWAYS_ON,
        "always_off": lambda: sampling.ALWAYS_OFF,
        "parentbased_always_on": lambda: sampling.DEFAULT_ON,
        "parentbased_always_off": lambda: sampling.DEFAULT_OFF,
        "traceidratio": lambda: sampling.TraceIdRatioBased(rate),
        "parentbased_traceidratio": lambda: sampling.ParentBasedTraceIdRatio(rate),
    }[settings.traces_sampler]()

    class SkipProbes(sampling.Sampler):
        """OTEL_TRACES_SAMPLER's choice, except that probes and scrapes are never traced."""

        def should_sample(self, parent_context, trace_id, name, *args, **kwargs):
            if name in UNTRACED:
                return sampling.SamplingResult(sampling.Decision.DROP)
            return configured.should_sample(parent_context, trace_id, name, *args, **kwargs)

        def get_description(self) -> str:
            return f"SkipProbes{{{configured.get_description()}}}"

    return SkipProbes()


def _exporter(name: str, settings: Settings):
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # One JSON line per span on stdout (the logs are on stderr).
        return ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + os.linesep)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # OTLP over HTTP; without OTEL_EXPORTER_OTLP_ENDPOINT the exporter's own default and its
    # other OTEL_EXPORTER_OTLP_* variables apply.
    if settings.otlp_endpoint:
        return OTLPSpanExporter(endpoint=f"{settings.otlp_endpoint}/v1/traces")
    return OTLPSpanExporter()


# --- spans --------------------------------------------------------------------------------------


def span(
    name: str, *, kind: SpanKind = SpanKind.INTERNAL, attributes: Mapping[str, Any] | None = None
):
    """A current span, or a context manager that does nothing when tracing is off."""
    if _tracer is None:
        return nullcontext(INVALID_SPAN)
    return _tracer.start_as_current_span(name, kind=kind, attributes=attributes)


def inject(headers: dict[str, str]) -> dict[str, str]:
    """Add the current trace context (`traceparent`) to NATS headers."""
    if _tracer is not None:
        propagate.inject(headers)
    return headers


def _extract(headers: Mapping[str, str] | None) -> Context | None:
    return propagate.extract(headers) if headers else None


def _messaging(subject: str, operation: str, **extra: Any) -> dict[str, Any]:
    attributes = {
        "messaging.system": "nats",
        "messaging.destination.name": subject,
        "messaging.operation.type": operation,
    }
    attributes.update({key: value for key, value in extra.items() if value is not None})
    return attributes


@contextmanager
def publishing(subject: str, msg_id: str | None = None) -> Iterator[Span]:
    """The producer span of one publish; headers injected inside it carry it."""
    if _tracer is None:
        yield INVALID_SPAN
        return
    attributes = _messaging(subject, "publish", **{"messaging.message.id": msg_id})
    with _tracer.start_as_current_span(
        f"publish {subject}", kind=SpanKind.PRODUCER, attributes=attributes
    ) as current:
        yield current


@contextmanager
def consuming(msg: Msg, consumer: str) -> Iterator[Span]:
    """A consumer's span for one message, a child of the span that published it."""
    if _tracer is None:
        yield INVALID_SPAN
        return
    headers = msg.headers or {}
    attributes = _messaging(
        msg.subject, "process",
        **{"messaging.consumer.group.name": consumer,
           "messaging.message.id": headers.get(MSG_ID_HEADER)},
    )  # fmt: skip
    if msg.reply and msg.reply.startswith("$JS.ACK."):
        attributes["offsim.deliveries"] = msg.metadata.num_delivered or 1
    with _tracer.start_as_current_span(
        f"process {msg.subject}",
        context=_extract(headers),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        yield current


class _TracedRequest(Request):
    """A `nats.micro` request whose replies carry the answering span's `traceparent`."""

    def __init__(self, request: Request) -> None:
        super().__init__(request._msg)

    async def respond(self, data: bytes = b"", headers: dict[str, str] | None = None) -> None:
        await super().respond(data, headers=inject(dict(headers or {})))


@contextmanager
def serving(request: Request, endpoint: str) -> Iterator[Request]:
    """The server span of one `nats.micro` request (a child of the requester's span); yields the
    request to hand to the endpoint, whose replies carry the trace on."""
    if _tracer is None:
        yield request
        return
    attributes = _messaging(request.subject, "process", **{"rpc.method": endpoint})
    with _tracer.start_as_current_span(
        f"process {request.subject}",
        context=_extract(request.headers),
        kind=SpanKind.SERVER,
        attributes=attributes,
    ):
        yield _TracedRequest(request)


def requesting(subject: str):
    """The client span of a request whose replies come back on an inbox."""
    if _tracer is None:
        return nullcontext(INVALID_SPAN)
    return _tracer.start_as_current_span(
        f"request {subject}", kind=SpanKind.CLIENT, attributes=_messaging(subject, "send")
    )


def untraced():
    """Instrumented calls inside (database queries) make no span: for a poll that runs every few
    seconds and would otherwise be a trace of its own each time. Spans made here still are."""
    if _tracer is None:
        return nullcontext()
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    return suppress_instrumentation()


def annotate(attributes: Mapping[str, Any]) -> None:
    """Add attributes to the current span."""
    if _tracer is not None:
        trace.get_current_span().set_attributes(attributes)


def failed(current: Span, exc: BaseException | None = None, description: str = "") -> None:
    """Mark a span as failed (no-op on the do-nothing span of tracing off)."""
    if exc is not None:
        current.record_exception(exc)
    current.set_status(Status(StatusCode.ERROR, description or (repr(exc) if exc else None)))


def log_ids() -> tuple[str, str]:
    """The current trace and span ids as hex, for log lines ("-" without a span)."""
    if _tracer is None:
        return "-", "-"
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return "-", "-"
    return trace.format_trace_id(context.trace_id), trace.format_span_id(context.span_id)
