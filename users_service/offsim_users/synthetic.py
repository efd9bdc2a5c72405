"""Bulk registration of synthetic users: the generator's starting population, fast.

`POST /api/register` costs ~40 ms of scrypt per user, so ten thousand users would take minutes
on two cores. This path, open to the service credential only, registers up to MAX_BATCH users
with their SSDs in one transaction of a few set-based statements (users and SSDs in one
multi-row INSERT each, their stock by COPY), and hashes their passwords at SYNTHETIC_COST,
which each hash records.

Synthetic users get no bearer token of their own: whoever registers them holds the service
credential, which acts for their SSDs. So the answer holds no secret, and with an
`Idempotency-Key` it is recorded in the batch's transaction: a retry after a lost answer (or a
503 at the request deadline whose work went on to commit) replays it instead of failing on
taken emails. The registrations are not announced one by one on users.registered (a
population of thousands would flood the live feed); the dashboard counts them from the
database.
"""

from __future__ import annotations

import asyncio
import random
from typing import Annotated

import asyncpg
from offsim_common.errors import Conflict
from offsim_common.events import Device
from offsim_common.requests import NewDevice, NewUser
from pydantic import BaseModel, ConfigDict, Field

from . import queries
from .passwords import SYNTHETIC_COST, hash_password

MAX_BATCH = 1000
# Threads hashing a batch: scrypt releases the GIL, so each core takes a share.
HASH_THREADS = 2


class SyntheticUser(NewUser):
    devices: Annotated[list[NewDevice], Field(min_length=1, max_length=10)]


class SyntheticUsersRequest(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True)

    users: Annotated[list[SyntheticUser], Field(min_length=1, max_length=MAX_BATCH)]


class SyntheticUserResult(BaseModel):
    id: int
    devices: list[Device]


class SyntheticUsersResult(BaseModel):
    users: list[SyntheticUserResult] = Field(description="in the order of the request")


def _hash_all(passwords: list[str]) -> list[str]:
    return [hash_password(password, SYNTHETIC_COST) for password in passwords]


async def hash_passwords(passwords: list[str]) -> list[str]:
    size = -(-len(passwords) // HASH_THREADS)
    chunks = [passwords[i : i + size] for i in range(0, len(passwords), size)]
    hashed = await asyncio.gather(*(asyncio.to_thread(_hash_all, chunk) for chunk in chunks))
    return [h for chunk in hashed for h in chunk]


async def prepare(body: SyntheticUsersRequest) -> list[str]:
    """Check the batch against itself and hash its passwords (at the synthetic cost, in
    threads), outside any transaction."""
    people = body.users
    macs = [device.mac_address for user in people for device in user.devices]
    if len(set(macs)) != len(macs):
        raise Conflict("a MAC address appears twice in the request", {"users": "duplicate MAC"})
    emails = [user.email for user in people]
    if len(set(emails)) != len(emails):
        raise Conflict("an email appears twice in the request", {"users": "duplicate email"})
    return await hash_passwords([user.password for user in people])


async def store_synthetic(
    conn: asyncpg.Connection,
    body: SyntheticUsersRequest,
    hashes: list[str],
    watched: int,
    rng: random.Random,
) -> SyntheticUsersResult:
    """Store every user, SSD and watched product of the batch (the caller owns the
    transaction), or raise a 409 naming what is taken."""
    people = body.users
    macs = [device.mac_address for user in people for device in user.devices]
    try:
        user_ids = await queries.insert_users_bulk(conn, people, hashes)
        owners = [user_ids[i] for i, user in enumerate(people) for _ in user.devices]
        ssd_ids = await queries.insert_devices_bulk(conn, owners, macs)
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "users_email_key":
            raise Conflict("an email is already registered", {"users": "email taken"}) from None
        raise Conflict(
            "a device with this MAC address is already registered", {"users": "MAC taken"}
        ) from None
    catalogue = await queries.all_barcodes(conn)
    stock = []
    watches: list[list[str]] = []
    for ssd_id in ssd_ids:
        watches.append(rng.sample(catalogue, min(watched, len(catalogue))))
        for barcode in watches[-1]:
            capacity = rng.randint(6, 12)
            stock.append((ssd_id, barcode, capacity, capacity // 3, capacity))
    await queries.copy_stock(conn, stock)
    results, at = [], 0
    for index, user in enumerate(people):
        ends = at + len(user.devices)
        pairs = zip(ssd_ids[at:ends], macs[at:ends], watches[at:ends], strict=True)
        devices = [Device(id=ssd_id, mac_address=mac, watched=barcodes)
                   for ssd_id, mac, barcodes in pairs]  # fmt: skip
        at = ends
        results.append(SyntheticUserResult(id=user_ids[index], devices=devices))
    return SyntheticUsersResult(users=results)
