"""Bearer tokens (RFC 6750): who is calling, and whether they may act for a user or an SSD.

A user's token is made at registration, shown once and stored only as its SHA-256. The service
credential, OFFSIM_SERVICE_TOKEN, acts for any user and SSD (the generator uses it). Without a
token or with a bad one: 401 with `WWW-Authenticate: Bearer`; someone else's user or SSD: 403.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

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


async def authenticate(
    request: web.Request, pool: asyncpg.Pool, service_token: str | None
) -> Caller:
    token = bearer_token(request)
    if service_token and hmac.compare_digest(token.encode(), service_token.encode()):
        return Caller(user_id=None)
    async with pool.acquire() as conn:
        user_id = await conn.fetchval(
            "SELECT user_id FROM bearer_tokens WHERE token_hash = $1", token_hash(token)
        )
    if user_id is None:
        raise Unauthenticated("the bearer token is not valid", {"Authorization": "invalid token"})
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
