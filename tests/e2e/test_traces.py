"""One order, one trace: from the generator's event through HTTP, NATS and Postgres to the stock,
recorded by the SDK's in-memory exporter on real NATS and Postgres."""

from __future__ import annotations

import json
import logging

import aiohttp
import pytest
from offsim_common import subjects
from offsim_common.logs import setup_logging
from offsim_generator.model import Event, Population
from offsim_generator.simulation import Simulation
from opentelemetry.trace import SpanKind, format_span_id, format_trace_id

from tests.conftest import changed, eventually
from tests.helpers import register


def by_id(spans) -> dict[int, object]:
    return {span.context.span_id: span for span in spans}


@pytest.fixture
def settings(settings):
    """The supplier takes a real second: its message is delivered, sent back, delivered again."""
    return changed(settings, supplier_delay=(600.0, 600.0))


def one(spans, name: str):
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, f"{name}: {len(found)} spans"
    return found[0]


def consumer(spans, subject: str, group: str):
    found = [
        span for span in spans
        if span.name == f"process {subject}"
        and span.attributes.get("messaging.consumer.group.name") == group
    ]  # fmt: skip
    assert len(found) == 1, f"{group}: {len(found)} spans"
    return found[0]


def child_of(child, parent) -> bool:
    return child.parent is not None and child.parent.span_id == parent.context.span_id


async def test_one_order_is_one_trace_from_the_generator_to_the_stock(
    spans, users, orders, notifications, nc, pool, products, settings, capsys
):
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    setup_logging("DEBUG", "test", json_lines=True)  # a line per order is DEBUG
    try:
        await register(users)
        generator = changed(settings, orders_url=str(orders.make_url("")).rstrip("/"))
        population = Population(watched=settings.watched_products, per_day=12.0)
        event = Event(t=0.0, kind="random_order", quantity=2)
        async with aiohttp.ClientSession() as http:
            simulation = Simulation(generator, http, nc, population)
            assert await simulation.perform(event) == "random_order"
            assert simulation.stats["random_order.sent"] == 1

        await eventually(lambda: _done(spans, "users-restock"))
        await eventually(lambda: _done(spans, "orders-record-completed"))
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line[:1] == "{"]

    event = one(spans.get_finished_spans(), "simulate random_order")
    assert event.parent is None, "the generator's event starts the trace"
    trace_id = event.context.trace_id
    trace = [s for s in spans.get_finished_spans() if s.context.trace_id == trace_id]
    names = {s.name for s in trace}

    # The scatter-gather: two requests on orders.random, each answered by both services.
    requests = [s for s in trace if s.name == "request orders.random"]
    assert len(requests) == 2 and all(child_of(r, event) for r in requests)
    for request in requests:
        answers = [s for s in trace if s.name == "process orders.random" and child_of(s, request)]
        assert {a.attributes["rpc.method"] for a in answers} == {
            "users.random-ssd", "orders.random-barcode"
        }  # fmt: skip
        assert all(a.kind == SpanKind.SERVER for a in answers)
        # The replies carried the answering spans' traceparent back to the requester.
        replied = {e.attributes["offsim.reply.traceparent"].split("-")[2] for e in request.events}
        assert replied == {format_span_id(a.context.span_id) for a in answers}

    # The order: the generator's POST, the orders service's handler, the insert, the publish.
    post = one(trace, "POST /api/orders")
    assert post.kind == SpanKind.SERVER
    client = by_id(trace)[post.parent.span_id]
    assert client.kind == SpanKind.CLIENT and child_of(client, event)
    order_id = post.attributes["offsim.order.id"]
    assert any(s.name == "INSERT" and child_of(s, post) for s in trace)
    pending = one(trace, f"publish {subjects.ORDERS_PENDING}")
    assert child_of(pending, post) and pending.kind == SpanKind.PRODUCER

    # The supplier: one span although its message was delivered more than once.
    supplier = consumer(trace, subjects.ORDERS_PENDING, "notifications-ship")
    assert child_of(supplier, pending) and supplier.kind == SpanKind.CONSUMER
    assert supplier.attributes["offsim.stage"] == "supplier"
    assert supplier.attributes["offsim.deliveries"] >= 2
    assert supplier.attributes["offsim.stage.delay_s"] == 1.0
    assert supplier.attributes["offsim.stage.waited_s"] >= 1.0
    shipped = one(trace, f"publish {subjects.ORDERS_SHIPPED}")
    assert child_of(shipped, supplier)

    # The orders service records shipped; the courier delivers.
    recorded = consumer(trace, subjects.ORDERS_SHIPPED, "orders-record-shipped")
    courier = consumer(trace, subjects.ORDERS_SHIPPED, "notifications-deliver")
    assert child_of(recorded, shipped) and child_of(courier, shipped)
    assert any(
        "UPDATE product_orders" in str(s.attributes.get("db.statement", ""))
        and child_of(s, recorded)
        for s in trace
    )
    completed = one(trace, f"publish {subjects.ORDERS_COMPLETED}")
    assert child_of(completed, courier)

    # The orders service records completed; the users service raises the stock.
    closed = consumer(trace, subjects.ORDERS_COMPLETED, "orders-record-completed")
    restock = consumer(trace, subjects.ORDERS_COMPLETED, "users-restock")
    assert child_of(closed, completed) and child_of(restock, completed)
    assert restock.attributes["offsim.order.id"] == order_id
    assert [s for s in trace if child_of(s, restock) and s.name in {"INSERT", "UPDATE"}], names

    # The logs: every line this order wrote, in every service, has its request id and trace id.
    async with pool.acquire() as conn:
        request_id = await conn.fetchval(
            "SELECT request_id FROM product_orders WHERE id = $1", order_id
        )
    hex_id = format_trace_id(trace_id)
    order_lines = [line for line in lines if line["request_id"] == request_id]
    loggers = {line["logger"] for line in order_lines}
    assert {"offsim_orders.nats_handlers", "offsim_notifications.stages",
            "offsim_users.nats_handlers"} <= loggers, loggers  # fmt: skip
    assert all(line["trace_id"] == hex_id for line in order_lines)
    spans_logged = {line["span_id"] for line in order_lines}
    assert format_span_id(restock.context.span_id) in spans_logged


async def _done(spans, group: str):
    return [
        s for s in spans.get_finished_spans()
        if s.attributes.get("messaging.consumer.group.name") == group
    ]  # fmt: skip


async def test_a_registration_is_one_trace_with_its_announcement(spans, users, nc, pool, products):
    watched = await nc.jetstream().subscribe(subjects.USERS_REGISTERED)
    await register(users)
    msg = await watched.next_msg(timeout=10)
    server = one(spans.get_finished_spans(), "POST /api/register")
    announce = one(spans.get_finished_spans(), f"publish {subjects.USERS_REGISTERED}")
    assert child_of(announce, server)
    _, trace_hex, span_hex, _ = msg.headers["traceparent"].split("-")
    assert trace_hex == format_trace_id(server.context.trace_id)
    assert span_hex == format_span_id(announce.context.span_id)
