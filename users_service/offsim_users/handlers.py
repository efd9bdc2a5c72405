"""HTTP views: parse, call the domain, answer (through the documented response models); a
request with an Idempotency-Key runs its effect in the transaction that records its answer."""

from __future__ import annotations

import asyncpg
from aiohttp import web
from offsim_common import idempotency
from offsim_common.app_keys import JS, NC, POOL, SETTINGS
from offsim_common.auth import authenticate, require_ssd_owner, require_user
from offsim_common.errors import Forbidden, NotFound
from offsim_common.events import UserRegistered
from offsim_common.http import int_param, json_response, read_body
from offsim_common.openapi import ID_SCHEMA, IDEMPOTENCY_KEY, doc
from offsim_common.requests import ConsumeRequest, RegisterRequest

from . import queries, readings, registration, synthetic
from .app_keys import RNG
from .schemas import ConsumeResult, RegisterResult, UserDetail
from .synthetic import SyntheticUsersRequest, SyntheticUsersResult

ID = {"id": (ID_SCHEMA, "the SSD's id")}


@doc("Register a user and their SSDs (one transaction)", "users", body=RegisterRequest,
     responses={201: RegisterResult}, errors=(400, 409, 422, 503),
     headers=IDEMPOTENCY_KEY)  # fmt: skip
async def register(request: web.Request) -> web.Response:
    body = await read_body(request, RegisterRequest)
    # The body carries a password: its fingerprint is a slow hash, like the password's.
    key = await idempotency.request_key(request, slow=True)
    app = request.app
    prepared = await registration.prepare(body)

    async def store(conn: asyncpg.Connection) -> tuple[web.Response, UserRegistered]:
        answer, registered = await registration.store_user(
            conn, body, prepared, app[SETTINGS].watched_products, app[RNG]
        )
        return json_response(answer.model_dump(mode="json"), status=201), registered

    # The answer is recorded in the registration's own transaction: a retry replays it.
    response, registered = await idempotency.run_once(app[POOL], key, store)
    if registered is not None:  # not a replay
        await registration.announce(app[NC], app[JS], registered)
    return response


@doc("Register synthetic users and their SSDs in bulk (the generator's population; service "
     "credential only; passwords hashed at a cheaper scrypt cost, recorded in each hash)",
     "users", body=SyntheticUsersRequest, responses={201: SyntheticUsersResult},
     errors=(400, 401, 403, 409, 422, 503), auth=True, headers=IDEMPOTENCY_KEY)  # fmt: skip
async def register_synthetic_users(request: web.Request) -> web.Response:
    app = request.app
    caller = await authenticate(request, app[POOL], app[SETTINGS].service_token)
    if not caller.is_service:
        raise Forbidden("only the service credential registers synthetic users",
                        {"Authorization": "not the service credential"})  # fmt: skip
    body = await read_body(request, SyntheticUsersRequest)
    # The passwords are the generator's random ones: a fast fingerprint is enough.
    key = await idempotency.request_key(request)
    hashes = await synthetic.prepare(body)

    async def store(conn: asyncpg.Connection) -> tuple[web.Response, None]:
        answer = await synthetic.store_synthetic(
            conn, body, hashes, app[SETTINGS].watched_products, app[RNG]
        )
        return json_response(answer.model_dump(mode="json"), status=201), None

    response, _ = await idempotency.run_once(app[POOL], key, store)
    return response


@doc("A user, their SSDs and each SSD's stock", "users", responses={200: UserDetail},
     errors=(400, 401, 403, 404, 503), path={"id": (ID_SCHEMA, "the user's id")},
     auth=True)  # fmt: skip
async def get_user(request: web.Request) -> web.Response:
    app = request.app
    caller = await authenticate(request, app[POOL], app[SETTINGS].service_token)
    user_id = int_param(request.match_info["id"], "id", minimum=1)
    require_user(caller, user_id)
    async with request.app[POOL].acquire() as conn:
        user = await queries.fetch_user(conn, user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found", {"id": "unknown user"})
    return json_response(UserDetail.model_validate(user).model_dump(mode="json"))


@doc("An SSD reports stock used, as a reading (its HTTP form); the answer lists the restock "
     "orders it made the backend place", "ssds", body=ConsumeRequest,
     responses={200: ConsumeResult}, errors=(400, 401, 403, 404, 503), path=ID,
     auth=True)  # fmt: skip
async def consume(request: web.Request) -> web.Response:
    app = request.app
    caller = await authenticate(request, app[POOL], app[SETTINGS].service_token)
    ssd_id = int_param(request.match_info["id"], "id", minimum=1)
    body = await read_body(request, ConsumeRequest)
    async with app[POOL].acquire() as conn, conn.transaction():
        await require_ssd_owner(conn, caller, ssd_id, field="id")
        answer, batch, applied = await readings.consume(conn, ssd_id, body, app[RNG])
    readings.count(applied)
    readings.report(batch, applied)
    return json_response(answer.model_dump(mode="json"))
