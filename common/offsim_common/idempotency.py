"""Idempotency keys on POST, after the IETF httpapi draft "The Idempotency-Key HTTP Header
Field": a client that retries a POST with the same `Idempotency-Key` gets the first answer again
instead of a second effect.

- The same key with the same request replays the first answer (status and body); nothing is
  done twice.
- The same key with a different request (another body, or another endpoint) is a 422.
- A retry while the first request is still being processed is a 409.
- Keys are kept for KEEP (24 hours) and scoped to the caller's credential (the
  `Authorization` header): two callers' keys never meet.

The answer is recorded in the transaction of the request's own effect, under a transaction
advisory lock on the key: either both are stored or neither, so a crash or an outage between
the two never leaves a key that blocks its retries, nor an effect without its key. Only a
request that took effect is recorded; one that failed (a 4xx, a 503) can be retried with the
same key.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import asyncpg
from aiohttp import web

from .errors import Conflict, Invalid, KeyReused

HEADER = "Idempotency-Key"
KEEP = timedelta(hours=24)
# Printable ASCII, no blank at either end (HTTP would strip it); the draft's structured-field
# string (the key in double quotes) is accepted too, and means the key inside the quotes.
KEY_PATTERN = r"^[\x21-\x7e]([\x20-\x7e]{0,253}[\x21-\x7e])?$"
_KEY = re.compile(KEY_PATTERN)
# The request's fingerprint is a slow hash when its body carries a secret (a password): what
# is stored then tells an attacker reading the table no more than the password's own hash.
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


T = TypeVar("T")


@dataclass(frozen=True)
class Key:
    scope: str
    key: str
    fingerprint: bytes
    # Derived from the request itself and never stored: seals what an answer must not keep in
    # clear (a token shown once), so only a replay of the same request can read it again.
    seal: bytes


def _canonical(raw: bytes) -> bytes:
    try:
        return json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        return raw


async def request_key(request: web.Request, *, slow: bool = False) -> Key | None:
    """The request's idempotency key, or None when it sent none; a malformed one is a 400."""
    value = request.headers.get(HEADER)
    if value is None:
        return None
    key = value.strip()
    if _KEY.match(key) is None:
        raise Invalid(f"malformed {HEADER}", {HEADER: "1 to 255 printable ASCII characters"})
    if len(key) > 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    scope = hashlib.sha256(request.headers.get("Authorization", "").encode()).hexdigest()
    material = b"\0".join(
        [request.method.encode(), request.path.encode(), _canonical(await request.read())]
    )
    salt = f"{scope}:{key}".encode()
    if slow:
        derived = await asyncio.to_thread(
            hashlib.scrypt, material, salt=salt, dklen=64, maxmem=64 * 2**20, **_SCRYPT
        )
    else:
        derived = hmac.new(salt, material, hashlib.sha512).digest()
    return Key(scope=scope, key=key, fingerprint=derived[:32], seal=derived[32:])


async def replay_or_lock(conn: asyncpg.Connection, key: Key) -> web.Response | None:
    """Inside the request's transaction: the first answer to replay, or None when this request
    is the first (the key is then locked until the transaction ends). 409 while another request
    holds the key, 422 when the key was used for a different request."""
    (locked,) = await lock_many(conn, [key])
    if not locked:
        raise in_progress()
    (row,) = await recorded_many(conn, [key])
    if row is None:
        return None
    status, body = recorded_answer(key, row)
    return web.Response(body=body, status=status, content_type="application/json")


def in_progress() -> Conflict:
    return Conflict(
        "a request with this Idempotency-Key is still being processed; retry later",
        {HEADER: "in progress"},
    )


async def lock_many(conn: asyncpg.Connection, keys: list[Key]) -> list[bool]:
    """Inside a transaction: try to lock each key until it ends, in one statement; whether each
    was locked (False: another request holds it). Never waits, so batches cannot deadlock. The
    recorded answers must be read by a later statement, whose snapshot sees what the previous
    holder of a key committed."""
    if not keys:
        return []
    rows = await conn.fetch(
        """SELECT pg_try_advisory_xact_lock(hashtextextended(k, 0)) AS locked
           FROM unnest($1::text[]) WITH ORDINALITY AS u(k, n) ORDER BY n""",
        [f"{key.scope}:{key.key}" for key in keys],
    )
    return [row["locked"] for row in rows]


async def recorded_many(conn: asyncpg.Connection, keys: list[Key]) -> list[asyncpg.Record | None]:
    """The answer recorded under each key (None: none, or expired), in one statement."""
    if not keys:
        return []
    rows = await conn.fetch(
        """SELECT k.fingerprint, k.status, k.body
           FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(scope, key, n)
           LEFT JOIN idempotency_keys k ON k.scope = u.scope AND k.key = u.key
                AND k.created_at > now() - $3::interval
           ORDER BY u.n""",
        [key.scope for key in keys],
        [key.key for key in keys],
        KEEP,
    )
    return [row if row["status"] is not None else None for row in rows]


def recorded_answer(key: Key, row: asyncpg.Record) -> tuple[int, bytes]:
    """The first answer (status, body) to replay, or a 422 when the key was used for a
    different request."""
    if not hmac.compare_digest(row["fingerprint"], key.fingerprint):
        raise KeyReused(
            "this Idempotency-Key was used for a different request",
            {HEADER: "already used with another body or endpoint"},
        )
    return row["status"], _unseal_fields(key, row["body"])


async def record(conn: asyncpg.Connection, key: Key, response: web.Response) -> None:
    """Inside the request's transaction: keep its answer for replays (replacing an expired
    use of the key)."""
    await record_many(conn, [(key, response.status, response.body)])


async def record_many(conn: asyncpg.Connection, answers: list[tuple[Key, int, bytes]]) -> None:
    """record for many keys (each once, each locked by this transaction) in one statement."""
    if not answers:
        return
    await conn.execute(
        """INSERT INTO idempotency_keys (scope, key, fingerprint, status, body)
           SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::int[], $5::bytea[])
           ON CONFLICT (scope, key) DO UPDATE
           SET fingerprint = excluded.fingerprint, status = excluded.status,
               body = excluded.body, created_at = now()""",
        [key.scope for key, _, _ in answers],
        [key.key for key, _, _ in answers],
        [key.fingerprint for key, _, _ in answers],
        [status for _, status, _ in answers],
        [_seal_fields(key, body) for key, _, body in answers],
    )


# Fields of an answer that are shown once and never stored in clear (a user's token).
SEALED_FIELDS = ("token",)
_SEALED = "sealed:"


def _seal_fields(key: Key, body: bytes) -> bytes:
    data = json.loads(body)
    if not isinstance(data, dict) or not any(f in data for f in SEALED_FIELDS):
        return body
    for field in SEALED_FIELDS:
        if isinstance(data.get(field), str):
            data[field] = _SEALED + seal(key, data[field])
    return json.dumps(data).encode()


def _unseal_fields(key: Key, body: bytes) -> bytes:
    data = json.loads(body)
    if not isinstance(data, dict) or not any(f in data for f in SEALED_FIELDS):
        return body
    for field in SEALED_FIELDS:
        value = data.get(field)
        if isinstance(value, str) and value.startswith(_SEALED):
            data[field] = unseal(key, value.removeprefix(_SEALED))
    return json.dumps(data).encode()


def seal(key: Key, secret: str) -> str:
    """`secret` encrypted with the request's own seal (hex), for a stored answer."""
    data = secret.encode()
    stream = hmac.new(key.seal, b"seal", hashlib.sha512).digest()
    assert len(data) <= len(stream)
    return bytes(a ^ b for a, b in zip(data, stream, strict=False)).hex()


def unseal(key: Key, sealed: str) -> str:
    data = bytes.fromhex(sealed)
    stream = hmac.new(key.seal, b"seal", hashlib.sha512).digest()
    return bytes(a ^ b for a, b in zip(data, stream, strict=False)).decode()


async def purge_expired(conn: asyncpg.Connection) -> int:
    """Forget keys older than KEEP; returns how many."""
    result = await conn.execute(
        "DELETE FROM idempotency_keys WHERE created_at < now() - $1::interval", KEEP
    )
    return int(result.split()[-1])


async def run_once(
    pool: asyncpg.Pool,
    key: Key | None,
    effect: Callable[[asyncpg.Connection], Awaitable[tuple[web.Response, T]]],
) -> tuple[web.Response, T | None]:
    """Run `effect` in one transaction with the recording of its answer under `key`, or replay
    the answer of the first request with that key (then the second value is None)."""
    async with pool.acquire() as conn, conn.transaction():
        if key is not None and (replay := await replay_or_lock(conn, key)) is not None:
            return replay, None
        response, result = await effect(conn)
        if key is not None:
            await record(conn, key, response)
    return response, result
