"""Registering a user and their devices: the one piece of logic behind POST /api/register."""

from __future__ import annotations

import asyncio
import logging
import random

import asyncpg
from aiohttp import web
from nats.aio.client import Client
from nats.js import JetStreamContext
from offsim_common import bus, idempotency, subjects
from offsim_common.auth import new_token
from offsim_common.errors import Conflict
from offsim_common.events import Device, UserRegistered
from offsim_common.http import json_response
from offsim_common.requests import RegisterRequest

from . import queries
from .passwords import hash_password
from .schemas import RegisterResult

log = logging.getLogger(__name__)


async def register_user(
    pool: asyncpg.Pool,
    nc: Client,
    js: JetStreamContext,
    body: RegisterRequest,
    watched: int,
    rng: random.Random,
    key: idempotency.Key | None = None,
) -> web.Response:
    """Store the user and all devices in one transaction, give each device products to watch,
    then announce the registration (without the token). The answer holds the user's new bearer
    token. With an idempotency key, a retry replays the first answer."""
    macs = [device.mac_address for device in body.devices]
    if len(set(macs)) != len(macs):
        # A conflict like a MAC already registered (the same device twice), which is also how
        # the spec can describe it: two spellings of one MAC are both schema-valid strings.
        raise Conflict("a MAC address appears twice in the request", {"devices": "duplicate MAC"})
    password_hash = await asyncio.to_thread(hash_password, body.user.password)
    token, token_hash = new_token()

    async def store(conn: asyncpg.Connection) -> tuple[web.Response, UserRegistered]:
        try:
            user = await queries.insert_user(conn, body.user, password_hash)
            devices = await queries.insert_devices(conn, user["id"], macs)
            for device in devices:
                await queries.watch_random_products(conn, device["id"], watched, rng)
            await queries.insert_token(conn, user["id"], token_hash)
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "users_email_key":
                raise Conflict("email already registered", {"user.email": "taken"}) from None
            raise Conflict(
                "a device with this MAC address is already registered",
                {"devices": "mac_address taken"},
            ) from None
        registered = UserRegistered(
            id=user["id"],
            first_name=user["first_name"],
            last_name=user["last_name"],
            email=user["email"],
            devices=[Device(**dict(d)) for d in devices],
        )
        answer = RegisterResult(**registered.model_dump(), token=token)
        return json_response(answer.model_dump(mode="json"), status=201), registered

    response, registered = await idempotency.run_once(pool, key, store)
    if registered is not None:  # not a replay
        try:
            await bus.announce(
                nc, js, subjects.USERS_REGISTERED, registered, f"user-{registered.id}"
            )
        except Exception as exc:  # the event only feeds displays; the registration stands
            log.warning("could not announce user %s: %r", registered.id, exc)
    return response
