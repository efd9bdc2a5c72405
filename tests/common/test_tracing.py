"""Tracing: the OTEL_* settings, nothing at all when off, and what is never traced."""

from __future__ import annotations

import pytest
from offsim_common import bus, subjects, tracing
from offsim_common.events import OrderEvent, OrderStatus
from offsim_common.settings import ConfigError, ServiceSettings


def test_settings_read_the_otel_variables():
    settings = ServiceSettings.from_env(
        {
            "OTEL_TRACES_EXPORTER": "otlp, console",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector:4318/",
            "OTEL_SERVICE_NAME": "orders-eu",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
        }
    )
    assert settings.traces_exporters == ("otlp", "console")
    assert settings.otlp_endpoint == "http://otel-collector:4318"
    assert settings.otel_service_name == "orders-eu"
    assert (settings.traces_sampler, settings.traces_sampler_arg) == (
        "parentbased_traceidratio",
        0.25,
    )


def test_settings_trace_nothing_by_default():
    assert ServiceSettings.from_env({}).traces_exporters == ()
    assert ServiceSettings.from_env({"OTEL_TRACES_EXPORTER": "none"}).traces_exporters == ()
    assert tracing.start_tracing(ServiceSettings(), "offsim-test") is None
    assert not tracing.enabled() and tracing.log_ids() == ("-", "-")


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_TRACES_SAMPLER_ARG": "1.5"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_TRACES_SAMPLER_ARG": "half"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ],
)
def test_settings_bad_otel_values_fail_fast_naming_the_variable(env, name):
    with pytest.raises(ConfigError, match=name):
        ServiceSettings.from_env(env)


def event() -> OrderEvent:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return OrderEvent(id=1, ssd_id=1, barcode="3017620422003", quantity=1,
                      status=OrderStatus.PENDING, timestamp=now, created_at=now)  # fmt: skip


async def published_headers(nc) -> dict[str, str]:
    js = nc.jetstream()
    await bus.ensure_streams(js)
    sub = await js.subscribe(subjects.ORDERS_PENDING)
    await bus.publish(js, subjects.ORDERS_PENDING, event(), "trace-test-1")
    return (await sub.next_msg(timeout=5)).headers


async def test_publish_without_tracing_adds_no_traceparent(nc):
    assert "traceparent" not in await published_headers(nc)


async def test_publish_with_tracing_carries_its_producer_span(spans, nc):
    headers = await published_headers(nc)
    (producer,) = spans.get_finished_spans()
    assert producer.name == f"publish {subjects.ORDERS_PENDING}"
    assert producer.attributes["messaging.message.id"] == "trace-test-1"
    _version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert (trace_id, span_id) == (
        f"{producer.context.trace_id:032x}",
        f"{producer.context.span_id:016x}",
    )
    assert int(flags, 16) & 1, "sampled"


async def test_probes_and_scrapes_are_not_traced(spans, users, pool):
    for path in ("/api/health", "/metrics", "/api/users/1"):
        await users.get(path)
    served = {s.name for s in spans.get_finished_spans() if s.kind.name == "SERVER"}
    assert served == {"GET /api/users/{id}"}


def test_text_logs_show_the_trace_beside_the_request_id_inside_a_span(spans, capsys):
    import logging

    from offsim_common.logs import request_id, setup_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    setup_logging("INFO", "orders", json_lines=False)
    token = request_id.set("abc123")
    try:
        logging.getLogger("t").info("outside")
        with tracing.span("inside") as current:
            logging.getLogger("t").info("inside")
    finally:
        request_id.reset(token)
        root.handlers[:], level = saved
        root.setLevel(level)
    outside, inside = capsys.readouterr().err.splitlines()[-2:]
    context = current.get_span_context()
    assert outside.endswith("[abc123] outside")
    assert inside.endswith(f"[abc123 {context.trace_id:032x} {context.span_id:016x}] inside")
