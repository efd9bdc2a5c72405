"""HTTP views: parse, call one function, answer (through the documented response models)."""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web
from offsim_common import idempotency
from offsim_common.app_keys import JS, NC, POOL, SETTINGS
from offsim_common.auth import authenticate
from offsim_common.errors import Invalid, NotFound
from offsim_common.events import OrderStatus
from offsim_common.http import (
    int_param,
    json_response,
    query_params,
    read_body,
)
from offsim_common.logs import request_id
from offsim_common.openapi import ID_SCHEMA, IDEMPOTENCY_KEY, STRING_SCHEMA, doc
from offsim_common.requests import OrderRequest

from . import queries
from .app_keys import MARKS, PLACER
from .orders import Placement, announce_order
from .schemas import Order, OrderDetail, OrderPage, ProductInfo, ProductPage

MAX_PAGE = 500
MAX_OFFSET = 2**31 - 1
PAGING = {
    "limit": ({"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, "page size (default 50)"),
    "offset": ({"type": "integer", "minimum": 0, "maximum": MAX_OFFSET}, "rows to skip"),
}


@doc("Place an order; it is published on orders.pending", "orders", body=OrderRequest,
     responses={201: Order}, errors=(400, 401, 403, 404, 409, 422, 503),
     headers=IDEMPOTENCY_KEY, auth=True)  # fmt: skip
async def place_order(request: web.Request) -> web.Response:
    app = request.app
    caller = await authenticate(request, app[POOL], app[SETTINGS].service_token)
    body = await read_body(request, OrderRequest)
    key = await idempotency.request_key(request)
    # Committed with others placed meanwhile (keyed or not), and announced with them.
    placed = await app[PLACER].submit(Placement(body, caller.user_id, request_id.get(), key))
    if placed.order is not None and not placed.announced:  # tracing on: in this request's span
        await announce_order(app[NC], app[JS], app[MARKS], placed.order)
    return web.Response(body=placed.body, status=placed.status, content_type="application/json")


@doc("An order, its status and the time of each transition", "orders",
     responses={200: OrderDetail}, errors=(400, 404, 503),
     path={"id": (ID_SCHEMA, "the order's id")})  # fmt: skip
async def get_order(request: web.Request) -> web.Response:
    order_id = int_param(request.match_info["id"], "id", minimum=1)
    async with request.app[POOL].acquire() as conn:
        row = await queries.fetch_order(conn, order_id)
    if row is None:
        raise NotFound(f"order {order_id} not found", {"id": "unknown order"})
    return json_response(detail(dict(row)).model_dump(mode="json"))


# Deeper than this, a page is asked for by key (`before`): skipping rows costs what it skips.
MAX_ORDER_OFFSET = 10_000
ORDER_FILTERS = {
    "ssd_id": (ID_SCHEMA, "only this SSD's orders"),
    "status": ({"type": "string", "enum": list(OrderStatus)}, "only orders in this status"),
    "before": (ID_SCHEMA, "only orders older than this order id (a page's `next` carries it)"),
    "limit": PAGING["limit"],
    "offset": (
        {"type": "integer", "minimum": 0, "maximum": MAX_ORDER_OFFSET},
        f"rows to skip, at most {MAX_ORDER_OFFSET:,}: deeper pages by `before` (follow `next`)",
    ),
}


@doc("Orders, newest first, filtered by SSD and status; older pages by `before` (`next`)",
     "orders", responses={200: OrderPage}, errors=(400, 503), query=ORDER_FILTERS)  # fmt: skip
async def list_orders(request: web.Request) -> web.Response:
    query = query_params(request, set(ORDER_FILTERS))
    ssd_id = int_param(query.get("ssd_id"), "ssd_id", default=0, minimum=1) or None
    status = status_param(query.get("status"))
    before, limit, offset = order_paging(request)
    async with request.app[POOL].acquire() as conn:
        rows = await queries.list_orders(conn, ssd_id, status, before, limit + 1, offset)
        total = await queries.count_orders(conn, ssd_id, status)
    orders = [detail(dict(row)) for row in rows[:limit]]
    after = orders[-1].id if len(rows) > limit else None  # one more row: there is a next page
    page = OrderPage(total=total, limit=limit, offset=offset, orders=orders,
                     next=next_page(ssd_id, status, limit, after))  # fmt: skip
    return json_response(page.model_dump(mode="json"))


def status_param(value: str | None) -> OrderStatus | None:
    if value is None:
        return None
    if value not in set(OrderStatus):
        raise Invalid("unknown status", {"status": f"one of {', '.join(OrderStatus)}"})
    return OrderStatus(value)


def order_paging(request: web.Request) -> tuple[int | None, int, int]:
    """`before`, `limit` and `offset` of the orders list. An offset past MAX_ORDER_OFFSET, of
    any size, is refused with a 400 that names `before`."""
    before = int_param(request.query.get("before"), "before", default=0, minimum=1) or None
    if _beyond_offset_cap(request.query.get("offset")):
        raise Invalid(
            f"offset beyond {MAX_ORDER_OFFSET:,}: page by before=<order id> instead",
            {"offset": f"at most {MAX_ORDER_OFFSET}; for older orders pass before=<the last "
                       "order id of a page>, as each page's `next` does"},
        )  # fmt: skip
    limit, offset = paging(request, max_offset=MAX_ORDER_OFFSET)
    return before, limit, offset


def _beyond_offset_cap(value: str | None) -> bool:
    try:
        return value is not None and int(value) > MAX_ORDER_OFFSET
    except ValueError:
        return False  # not an integer: paging() names it


def next_page(ssd_id: int | None, status: str | None, limit: int, after: int | None) -> str | None:
    """The path of the page of orders older than `after` with the same filters, or None when
    there is none. By key, not offset: orders placed meanwhile never shift it."""
    if after is None:
        return None
    params = {"ssd_id": ssd_id, "status": status, "limit": limit, "before": after}
    return "/api/orders?" + urlencode({k: v for k, v in params.items() if v is not None})


@doc("Products loaded from Open Food Facts, by barcode", "products", responses={200: ProductPage},
     errors=(400, 503), query=PAGING)  # fmt: skip
async def list_products(request: web.Request) -> web.Response:
    query_params(request, set(PAGING))
    limit, offset = paging(request)
    async with request.app[POOL].acquire() as conn:
        total = await queries.count_products(conn)
        products = await queries.list_products(conn, limit, offset)
    page = ProductPage(total=total, limit=limit, offset=offset, products=products)
    return json_response(page.model_dump(mode="json"))


@doc("One product", "products", responses={200: ProductInfo}, errors=(404, 503),
     path={"barcode": (STRING_SCHEMA, "the product's barcode (OFF code)")})  # fmt: skip
async def get_product(request: web.Request) -> web.Response:
    barcode = request.match_info["barcode"]
    product = None
    if "\x00" not in barcode:  # no stored barcode holds NUL, and Postgres text cannot
        async with request.app[POOL].acquire() as conn:
            product = await queries.fetch_product(conn, barcode)
    if product is None:
        raise NotFound(f"product {barcode} not found", {"barcode": "unknown product"})
    return json_response(ProductInfo.model_validate(product).model_dump(mode="json"))


def paging(request: web.Request, max_offset: int = MAX_OFFSET) -> tuple[int, int]:
    query = request.query
    limit = int_param(query.get("limit"), "limit", default=50, minimum=1, maximum=MAX_PAGE)
    offset = int_param(query.get("offset"), "offset", default=0, maximum=max_offset)
    return limit, offset


def detail(order: dict) -> OrderDetail:
    """The order with the time of each transition it has made, in order."""
    order["transitions"] = [
        {"status": status, "at": at}
        for status, at in (
            ("pending", order["created_at"]),
            ("shipped", order.get("shipped_at")),
            ("completed", order.get("completed_at")),
            ("cancelled", order.get("cancelled_at")),
        )
        if at is not None
    ]
    return OrderDetail.model_validate(order)
