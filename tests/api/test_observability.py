"""Metrics on /metrics, and one request id from HTTP through NATS headers to the end of an order."""

from __future__ import annotations

import asyncio
import json
import logging

from offsim_common import subjects
from offsim_common.logs import REQUEST_ID_HEADER, request_id, setup_logging

from tests.conftest import eventually
from tests.helpers import metric, register


async def test_metrics_count_requests_by_route_template(users, pool, products):
    await users.get("/api/users/12345")
    await users.get("/api/users/67890")
    text = await (await users.get("/metrics")).text()
    answered = metric(text, "offsim_http_requests_total", service="users",
                      route="/api/users/{id}", status="404")  # fmt: skip
    assert answered >= 2
    assert "12345" not in text  # raw paths never become labels


async def test_request_id_travels_from_http_to_completed(
    users, orders, notifications, nc, pool, products
):
    ssd_id = (await register(users))["devices"][0]["id"]
    seen: dict[str, asyncio.Future] = {
        subject: asyncio.get_running_loop().create_future()
        for subject in (subjects.ORDERS_PENDING, subjects.ORDERS_SHIPPED, subjects.ORDERS_COMPLETED)
    }

    async def on_message(msg) -> None:
        if not seen[msg.subject].done():
            seen[msg.subject].set_result(msg.headers or {})

    for subject in seen:
        await nc.subscribe(subject, cb=on_message)
    metrics = await (await orders.get("/metrics")).text()
    fetched_before = fetched(metrics)
    resp = await orders.post(
        "/api/orders",
        json={"ssd_id": ssd_id, "barcode": products[0], "quantity": 1},
        headers={REQUEST_ID_HEADER: "order-trace-42"},
    )
    assert resp.status == 201
    assert resp.headers[REQUEST_ID_HEADER] == "order-trace-42"
    for subject, future in seen.items():
        headers = await asyncio.wait_for(future, 20)
        assert headers.get(REQUEST_ID_HEADER) == "order-trace-42", subject

    text = await (await orders.get("/metrics")).text()
    assert 'offsim_order_transitions_total{status="pending"}' in text

    async def shipped_fetched() -> bool:  # by the orders service's consumer, in a batch
        text = await (await orders.get("/metrics")).text()
        return fetched(text) > fetched_before

    await eventually(shipped_fetched)


def fetched(text: str) -> float:
    """Messages the orders service's shipped consumer fetched, in all its batches."""
    return metric(text, "offsim_batch_size_sum", batch=subjects.ORDERS_RECORD_SHIPPED)


def committed(text: str) -> tuple[float, float]:
    """(orders, commits) of the orders service's group commit."""
    return (metric(text, "offsim_batch_size_sum", batch="orders_placed"),
            metric(text, "offsim_batch_size_count", batch="orders_placed"))  # fmt: skip


async def test_metrics_show_how_many_orders_commit_together(users, orders, pool, products):
    ssd_id = (await register(users))["devices"][0]["id"]
    items, batches = committed(await (await orders.get("/metrics")).text())
    answers = await asyncio.gather(*(
        orders.post("/api/orders", json={"ssd_id": ssd_id, "barcode": barcode, "quantity": 1})
        for barcode in products
    ))  # fmt: skip
    assert [answer.status for answer in answers] == [201] * len(products)
    after = committed(await (await orders.get("/metrics")).text())
    assert after[0] - items == len(products)  # every order counted once, in some batch
    assert 1 <= after[1] - batches <= len(products)


async def test_response_has_a_request_id_when_the_caller_sent_none(users, pool):
    resp = await users.get("/api/health")
    assert len(resp.headers[REQUEST_ID_HEADER]) == 32


def test_json_logs_carry_service_and_request_id(capsys):
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    setup_logging("INFO", "orders", json_lines=True)
    token = request_id.set("abc123")
    try:
        logging.getLogger("offsim_orders.test").info("order %s shipped", 7)
    finally:
        request_id.reset(token)
        root.handlers[:], level = saved
        root.setLevel(level)
    record = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert record["message"] == "order 7 shipped"
    assert record["service"] == "orders" and record["request_id"] == "abc123"
    assert record["level"] == "INFO" and record["logger"] == "offsim_orders.test"
