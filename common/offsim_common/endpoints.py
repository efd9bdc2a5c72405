"""`nats.micro` request/reply endpoints: how every service serves them, and the one place where
domain errors become micro error replies."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from nats import micro

from . import tracing
from .app_keys import NC
from .errors import DomainError
from .http import status_of
from .metrics import NATS_REQUESTS

log = logging.getLogger(__name__)

VERSION = "0.1.0"


def micro_ctx(
    name: str,
    description: str,
    queue_group: str,
    endpoints: Callable[[web.Application], dict[str, tuple[str, micro.Handler]]],
):
    """A cleanup context running a `nats.micro` service with the given endpoints
    (endpoint name -> (subject, handler)). Each service passes its own queue group: the
    scatter-gather on orders.random needs one answer from each service, not one in all."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        service = await micro.add_service(
            app[NC], name=name, version=VERSION, description=description, queue_group=queue_group
        )
        for endpoint, (subject, handler) in endpoints(app).items():
            await service.add_endpoint(
                name=endpoint, subject=subject, handler=_served(f"{name}.{endpoint}", handler)
            )
        yield
        if not app[NC].is_closed:
            await service.stop()

    return ctx


def _served(endpoint: str, handler: micro.Handler) -> micro.Handler:
    """Traced (a span continuing the requester's trace, replies carrying it) and counted by
    outcome; a domain error is answered as a micro error whose code is the HTTP status the
    same error gets over HTTP, and counted apart from failures."""

    async def served(request: micro.Request) -> None:
        with tracing.serving(request, endpoint) as traced:
            try:
                await handler(traced)
            except DomainError as exc:
                NATS_REQUESTS.labels(endpoint, "refused").inc()
                await traced.respond_error(str(status_of(exc)), exc.message)
                return
            except Exception:
                NATS_REQUESTS.labels(endpoint, "error").inc()
                raise
        NATS_REQUESTS.labels(endpoint, "ok").inc()

    return served
