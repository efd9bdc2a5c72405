"""HTTP views: parse, call one function, answer."""

from __future__ import annotations

from aiohttp import web
from offsim_common.http import BadRequest, NotFound, int_param, json_response, read_body
from offsim_common.messages import OrderRequest, OrderStatus
from offsim_common.web import JS, POOL

from . import queries
from .orders import create_order

MAX_PAGE = 500


async def place_order(request: web.Request) -> web.Response:
    body = await read_body(request, OrderRequest)
    order = await create_order(request.app[POOL], request.app[JS], body)
    return json_response(order, status=201)


async def get_order(request: web.Request) -> web.Response:
    order_id = int_param(request.match_info["id"], "id", minimum=1)
    async with request.app[POOL].acquire() as conn:
        row = await queries.fetch_order(conn, order_id)
    if row is None:
        raise NotFound(f"order {order_id} not found", {"id": "unknown order"})
    return json_response(with_transitions(dict(row)))


async def list_orders(request: web.Request) -> web.Response:
    query = request.query
    unknown = set(query) - {"ssd_id", "status", "limit", "offset"}
    if unknown:
        raise BadRequest("unknown query parameter", {name: "not supported" for name in unknown})
    ssd_id = int_param(query.get("ssd_id"), "ssd_id", default=0, minimum=1) or None
    status = query.get("status")
    if status is not None and status not in set(OrderStatus):
        raise BadRequest("unknown status", {"status": f"one of {', '.join(OrderStatus)}"})
    limit = int_param(query.get("limit"), "limit", default=50, minimum=1, maximum=MAX_PAGE)
    offset = int_param(query.get("offset"), "offset", default=0)
    async with request.app[POOL].acquire() as conn:
        total, rows = await queries.list_orders(conn, ssd_id, status, limit, offset)
    return json_response(
        {
            "total": total,
            "limit": limit,
            "offset": offset,
            "orders": [with_transitions(dict(row)) for row in rows],
        }
    )


async def list_products(request: web.Request) -> web.Response:
    limit = int_param(request.query.get("limit"), "limit", default=50, minimum=1, maximum=MAX_PAGE)
    offset = int_param(request.query.get("offset"), "offset", default=0)
    async with request.app[POOL].acquire() as conn:
        total = await queries.count_products(conn)
        products = await queries.list_products(conn, limit, offset)
    return json_response({"total": total, "limit": limit, "offset": offset, "products": products})


async def get_product(request: web.Request) -> web.Response:
    barcode = request.match_info["barcode"]
    async with request.app[POOL].acquire() as conn:
        product = await queries.fetch_product(conn, barcode)
    if product is None:
        raise NotFound(f"product {barcode} not found", {"barcode": "unknown product"})
    return json_response(product)


def with_transitions(order: dict) -> dict:
    """The order with the time of each transition it has made, in order."""
    order["transitions"] = [
        {"status": status, "at": at}
        for status, at in (
            ("pending", order["created_at"]),
            ("shipped", order.get("shipped_at")),
            ("completed", order.get("completed_at")),
        )
        if at is not None
    ]
    return order
