"""Bearer tokens (RFC 6750): who is calling, and whether they may act for a user or an SSD.

A user's token is made at registration, shown once and stored only as its SHA-256. The service
credential, OFFSIM_SERVICE_TOKEN, acts for any user and SSD (the generator uses it). Without a
token or with a bad one: 401 with `WWW-Authenticate: Bearer`; someone else's user or SSD: 403.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

import asyncpg
from aiohttp import web

from .errors import Forbidden, NotFound, Unauthenticated

TOKEN_PREFIX = "offsim_"


@dataclass(frozen=True)
class Caller:
    """The service credential (user_id None), or a user."""

    user_id: int | None

    @property
    def is_service(self) -> bool:
        return self.user_id is None


def new_token() -> tuple[str, bytes]:
    """An opaque token and the hash that is stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, token_hash(token)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def bearer_token(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if not header:
        raise Unauthenticated("a bearer token is required", {"Authorization": "missing"})
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "the Authorization header must be `Bearer <token>`", {"Authorization": "malformed"}
        )
    return token.strip()


@dataclass
class TokenCache:
    """Valid tokens seen lately (hash -> user), so a client placing order after order costs no
    lookup each time. A token never changes hands and is only removed with its user (no endpoint
    does that), so a hit stays right for `ttl_s`; an unknown token is never cached and is looked
    up every time."""

    ttl_s: float = 60.0
    max_size: int = 100_000
    _users: dict[bytes, tuple[int, float]] = field(default_factory=dict)

    def get(self, digest: bytes) -> int | None:
        hit = self._users.get(digest)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def put(self, digest: bytes, user_id: int) -> None:
        if len(self._users) >= self.max_size:
            self._users.clear()  # a crude bound: the next requests look their tokens up again
        self._users[digest] = (user_id, time.monotonic() + self.ttl_s)


TOKENS = web.AppKey("tokens", TokenCache)


async def authenticate(
    request: web.Request, pool: asyncpg.Pool, service_token: str | None
) -> Caller:
    token = bearer_token(request)
    if service_token and hmac.compare_digest(token.encode(), service_token.encode()):
        return Caller(user_id=None)
    digest = token_hash(token)
    cache = request.app.get(TOKENS)
    if cache is not None and (user_id := cache.get(digest)) is not None:
        return Caller(user_id=user_id)
    async with pool.acquire() as conn:
        user_id = await conn.fetchval(
            "SELECT user_id FROM bearer_tokens WHERE token_hash = $1", digest
        )
    if user_id is None:
        raise Unauthenticated("the bearer token is not valid", {"Authorization": "invalid token"})
    if cache is not None:
        cache.put(digest, user_id)
    return Caller(user_id=user_id)


def require_user(caller: Caller, user_id: int) -> None:
    if not caller.is_service and caller.user_id != user_id:
        raise Forbidden(f"this token cannot act for user {user_id}", {"id": "another user"})


async def require_ssd_owner(
    conn: asyncpg.Connection, caller: Caller, ssd_id: int, field: str = "ssd_id"
) -> None:
    """404 for an unknown SSD, 403 for someone else's."""
    owner = await conn.fetchval("SELECT user_id FROM ssd_owners WHERE ssd_id = $1", ssd_id)
    if owner is None:
        raise NotFound(f"SSD {ssd_id} not found", {field: "unknown SSD"})
    if not caller.is_service and caller.user_id != owner:
        raise Forbidden(f"this token cannot act for SSD {ssd_id}", {field: "another user's SSD"})
