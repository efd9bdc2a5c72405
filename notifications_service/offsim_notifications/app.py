"""The notifications service's application factory: the supplier and the courier as durable
consumers, the faults they apply watched in NATS KV; no HTTP API beyond `/api/health`,
`/metrics` and `/api/faults`."""

from __future__ import annotations

from aiohttp import web
from offsim_common.app_keys import JS, NC
from offsim_common.service import base_app, consumers_ctx

from . import faults
from .settings import NotificationsSettings
from .stages import consumers


def create_app(settings: NotificationsSettings) -> web.Application:
    app = base_app(settings, "notifications", database=False)
    app.cleanup_ctx.append(faults.faults_ctx)
    app.cleanup_ctx.append(
        consumers_ctx(lambda app: consumers(app[NC], app[JS], settings, app[faults.FAULTS]))
    )
    faults.add_routes(app)
    return app
