"""Who may change the generator through the dashboard: reading stays open to every viewer,
anything else needs a bearer token.

Two tokens are accepted: the service credential (OFFSIM_SERVICE_TOKEN) and the dashboard's own
operator token (OFFSIM_CONTROL_TOKEN), which can be handed to whoever steers the simulation
without giving them the credential that acts for every user and SSD. With neither set, every
change is refused: an unguarded control would be open to anyone who can reach the page.

The guard is a middleware on every method but the safe ones, not a check in the one handler
that changes something today, so that a control added later cannot be left open by mistake.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from aiohttp import web
from offsim_common.errors import Unauthenticated
from prometheus_client import Counter

from .settings import DashboardSettings

log = logging.getLogger(__name__)

# Methods that change nothing: the page, its snapshot, its event stream and the generator's state.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# Why a change was refused (the counter's `reason`), and what its log line says. The method,
# path and peer tell an operator where refusals come from; the token itself is never logged.
WHY = {
    "missing": "no bearer token",
    "malformed": "a malformed Authorization header",
    "wrong": "a wrong token",
    "unconfigured": "no control token configured",
}
CONTROL_REFUSED = Counter(
    "offsim_dashboard_control_refused_total",
    "Changes the dashboard refused before they reached the generator, by reason "
    "(missing, malformed or wrong token, or no control token configured)",
    ["reason"],
)
for _reason in WHY:  # every series from the start, so a rate over it is never "no data"
    CONTROL_REFUSED.labels(_reason)

NOT_CONFIGURED = {
    "error": "control_disabled",
    "message": "no control token is configured on the dashboard, so it refuses every change: "
    "set OFFSIM_CONTROL_TOKEN (or OFFSIM_SERVICE_TOKEN) and restart it",
    "details": {"OFFSIM_CONTROL_TOKEN": "not set", "OFFSIM_SERVICE_TOKEN": "not set"},
}


class Refused(Unauthenticated):
    """A change without an acceptable token: 401 with `WWW-Authenticate: Bearer`."""

    def __init__(self, reason: str, message: str, problem: str) -> None:
        super().__init__(message, {"Authorization": problem})
        self.reason = reason


def _digest(token: str) -> bytes:
    # Tokens are compared as digests: equal lengths, so the comparison's time tells nothing of
    # a configured token's length either.
    return hashlib.sha256(token.encode(errors="surrogateescape")).digest()


def accepted_digests(settings: DashboardSettings) -> tuple[bytes, ...]:
    """The digests of the tokens a change may carry; empty strings do not count as tokens."""
    tokens = (settings.control_token, settings.service_token)
    return tuple(_digest(token) for token in tokens if token)


def presented_token(request: web.Request) -> str:
    """The request's bearer token, or Refused naming what is wrong with its header."""
    header = request.headers.get("Authorization")
    if header is None or not header.strip():
        raise Refused(
            "missing",
            "changing the generator needs a control token (Authorization: Bearer <token>)",
            "missing",
        )
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Refused("malformed", "the Authorization header must be `Bearer <token>`", "malformed")
    return token.strip()


def is_accepted(token: str, accepted: tuple[bytes, ...]) -> bool:
    presented = _digest(token)
    # Every configured token is compared, so the time taken does not tell which one matched.
    matches = [hmac.compare_digest(presented, digest) for digest in accepted]
    return any(matches)


def control_guard(settings: DashboardSettings):
    """A middleware letting safe methods through and refusing any other request that does not
    carry one of `settings`' tokens, before its handler runs (nothing reaches the generator)."""
    accepted = accepted_digests(settings)
    if not accepted:
        log.warning(
            "no control token configured (OFFSIM_CONTROL_TOKEN, OFFSIM_SERVICE_TOKEN): the "
            "dashboard refuses every change to the generator"
        )

    @web.middleware
    async def guard(request: web.Request, handler) -> web.StreamResponse:
        if request.method in SAFE_METHODS:
            return await handler(request)
        if not accepted:
            _count(request, "unconfigured")
            return web.json_response(NOT_CONFIGURED, status=503)
        try:
            token = presented_token(request)
            if not is_accepted(token, accepted):
                raise Refused("wrong", "the bearer token is not a control token", "wrong token")
        except Refused as exc:
            _count(request, exc.reason)
            raise
        return await handler(request)

    return guard


def _count(request: web.Request, reason: str) -> None:
    log.warning(
        "refused %s %s from %s: %s", request.method, request.path, request.remote, WHY[reason]
    )
    CONTROL_REFUSED.labels(reason).inc()
