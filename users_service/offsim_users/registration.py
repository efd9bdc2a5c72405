"""Registering a user and their devices: the logic behind POST /api/register (the handler
runs `store_user` in the transaction that also records the Idempotency-Key's answer)."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass

import asyncpg
from nats.aio.client import Client
from nats.js import JetStreamContext
from offsim_common import bus, subjects
from offsim_common.auth import new_token
from offsim_common.errors import Conflict
from offsim_common.events import Device, UserRegistered
from offsim_common.requests import RegisterRequest

from . import queries
from .passwords import FULL_COST, hash_password
from .schemas import RegisterResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """What is worked out before the transaction: the slow password hash and the new token."""

    password_hash: str
    token: str
    token_hash: bytes


async def prepare(body: RegisterRequest) -> Prepared:
    """Check the request against itself and hash what must be hashed (in a thread: scrypt is
    slow by design), outside any transaction."""
    macs = [device.mac_address for device in body.devices]
    if len(set(macs)) != len(macs):
        # A conflict like a MAC already registered (the same device twice), which is also how
        # the spec can describe it: two spellings of one MAC are both schema-valid strings.
        raise Conflict("a MAC address appears twice in the request", {"devices": "duplicate MAC"})
    password_hash = await asyncio.to_thread(hash_password, body.user.password, FULL_COST)
    return Prepared(password_hash, *new_token())


async def store_user(
    conn: asyncpg.Connection,
    body: RegisterRequest,
    prepared: Prepared,
    watched: int,
    rng: random.Random,
) -> tuple[RegisterResult, UserRegistered]:
    """Store the user and all devices (the caller owns the transaction), give each device
    products to watch; returns the answer (with the user's new bearer token) and the event to
    announce (without it)."""
    macs = [device.mac_address for device in body.devices]
    try:
        user = await queries.insert_user(conn, body.user, prepared.password_hash)
        devices = [dict(d) for d in await queries.insert_devices(conn, user["id"], macs)]
        for device in devices:
            device["watched"] = await queries.watch_random_products(
                conn, device["id"], watched, rng
            )
        await queries.insert_token(conn, user["id"], prepared.token_hash)
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
        devices=[Device(**d) for d in devices],
    )
    return RegisterResult(**registered.model_dump(), token=prepared.token), registered


async def announce(nc: Client, js: JetStreamContext, registered: UserRegistered) -> None:
    """users.registered, for displays: a failure is logged and the registration stands."""
    try:
        await bus.announce(nc, js, subjects.USERS_REGISTERED, registered, f"user-{registered.id}")
    except Exception as exc:
        log.warning("could not announce user %s: %r", registered.id, exc)
