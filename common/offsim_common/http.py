"""The HTTP side of every service: parsing requests, and errors as JSON
``{"error": code, "message": ..., "details": {field: problem}}``.

One middleware turns every failure into that body: a domain error is mapped to its status here
and nowhere else, anything unexpected is logged and answered 500 without a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable
from datetime import date, datetime
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from .db import is_unavailable
from .errors import (
    Conflict,
    DomainError,
    Forbidden,
    Invalid,
    KeyReused,
    NotFound,
    Unauthenticated,
    Unavailable,
    database_unavailable,
)
from .logs import REQUEST_ID_HEADER, new_request_id, request_id

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


# What a 503 tells the client to wait before trying again, in seconds.
RETRY_AFTER_S = 2
# An HTTP request of the users and orders services is answered by then, a 503 if a dependency
# kept it waiting: a client can tell "retry later" from "you broke it", and never hangs.
REQUEST_DEADLINE_S = 1.5


# Each domain error's HTTP status; the first class in an error's MRO found here wins.
STATUS: dict[type[DomainError], int] = {
    Invalid: 400,
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    KeyReused: 422,
    Unavailable: 503,
}


def status_of(exc: DomainError) -> int:
    return next((STATUS[cls] for cls in type(exc).__mro__ if cls in STATUS), 500)


def headers_of(exc: DomainError) -> dict[str, str]:
    if isinstance(exc, Unauthenticated):
        return {"WWW-Authenticate": "Bearer"}
    if isinstance(exc, Unavailable):
        return {"Retry-After": str(RETRY_AFTER_S)}
    return {}


def error_response(exc: DomainError) -> web.Response:
    return web.json_response(exc.body(), status=status_of(exc), headers=headers_of(exc))


def _field(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "body"


def validation_details(exc: ValidationError) -> dict[str, str]:
    return {_field(err["loc"]): err["msg"] for err in exc.errors(include_url=False)}


async def read_body(request: web.Request, model: type[M]) -> M:
    """Parse and validate a JSON body, or raise a 400 naming each bad field."""
    if not request.body_exists:
        raise Invalid("request body is required (JSON)", {"body": "missing"})
    raw = await request.read()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if any(err["type"] == "json_invalid" for err in errors):
            raise Invalid("malformed JSON", {"body": errors[0]["msg"]}) from None
        if any(err["type"] == "model_type" and not err["loc"] for err in errors):
            raise Invalid("the body must be a JSON object", {"body": "not an object"}) from None
        raise Invalid("invalid request body", validation_details(exc)) from None


def query_params(request: web.Request, known: set[str]) -> dict[str, str]:
    """The query, or a 400 naming any parameter the endpoint does not take (a typo must not
    silently filter nothing)."""
    unknown = set(request.query) - known
    if unknown:
        raise Invalid(
            "unknown query parameter", {name: "not supported" for name in sorted(unknown)}
        )
    return dict(request.query)


def int_param(
    value: str | None,
    name: str,
    *,
    default: int | None = None,
    minimum: int = 0,
    maximum: int = 2**63 - 1,
) -> int:
    """A path or query integer, or a 400 naming it."""
    if value is None or value == "":
        if default is None:
            raise Invalid(f"{name} is required", {name: "missing"})
        return default
    try:
        number = int(value)
    except ValueError:
        raise Invalid(f"{name} must be an integer", {name: f"not an integer: {value!r}"}) from None
    if not minimum <= number <= maximum:
        raise Invalid(f"{name} out of range", {name: f"must be between {minimum} and {maximum}"})
    return number


@web.middleware
async def request_id_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Take the caller's X-Request-Id (or make one) for every log line and NATS message this
    request causes, and echo it in the response."""
    rid = request.headers.get(REQUEST_ID_HEADER) or new_request_id()
    token = request_id.set(rid[:64])
    try:
        response = await handler(request)
        response.headers[REQUEST_ID_HEADER] = rid[:64]
        return response
    finally:
        request_id.reset(token)


async def within(awaitable: Awaitable[T], seconds: float) -> T:
    """Await `awaitable` for at most `seconds`, else raise TimeoutError at once. Unlike
    `asyncio.wait_for`, the answer never waits for the work to unwind: it is cancelled and
    finishes in the background (returning a connection to the pool may itself wait on a server
    that has gone silent). Every request goes through here, so it is kept lean: one task, one
    timer and one future, none of `asyncio.wait`'s sets and callbacks."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(awaitable)
    if task.done():
        return task.result()
    waiter = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    task.add_done_callback(wake)
    timer = loop.call_later(seconds, wake)
    try:
        await waiter
    except asyncio.CancelledError:  # our caller went away
        task.cancel()
        raise
    finally:
        timer.cancel()
        task.remove_done_callback(wake)
    if not task.done():
        task.cancel()
        task.add_done_callback(_discard_outcome)
        raise TimeoutError(f"no answer within {seconds:g} s")
    return task.result()


def _discard_outcome(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("work cut off at its deadline ended with %r", task.exception())


def deadline_middleware(seconds: float):
    """Answer every request within `seconds`: one still waiting on the database (a server that
    accepts connections but never answers) is answered 503 at its deadline."""

    @web.middleware
    async def deadline(request: web.Request, handler) -> web.StreamResponse:
        if request.path.startswith("/api/docs"):
            return await handler(request)
        try:
            return await within(handler(request), seconds)
        except TimeoutError as exc:
            if request.path == "/api/health":
                raise
            raise Unavailable(
                "no answer from the database in time; retry later", {"database": str(exc)}
            ) from None

    return deadline


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except DomainError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        return web.json_response(
            {"error": code, "message": exc.reason, "details": {}},
            status=exc.status,
            headers={k: v for k, v in exc.headers.items() if k == "Allow"},
        )
    except Exception as exc:
        if is_unavailable(exc):
            log.warning("database unavailable on %s %s: %r", request.method, request.path, exc)
            return error_response(database_unavailable(exc))
        log.exception("unhandled error on %s %s", request.method, request.path)
        return web.json_response(
            {"error": "internal_error", "message": "internal server error", "details": {}},
            status=500,
        )


def _json_default(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def json_response(data: object, status: int = 200) -> web.Response:
    """A JSON answer that also writes the datetimes database rows carry."""
    return web.json_response(
        data, status=status, dumps=functools.partial(json.dumps, default=_json_default)
    )
