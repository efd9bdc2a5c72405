"""The users service's application factory."""

from __future__ import annotations

import random

from aiohttp import web
from offsim_common import subjects
from offsim_common.app_keys import POOL
from offsim_common.endpoints import VERSION, micro_ctx
from offsim_common.http import REQUEST_DEADLINE_S
from offsim_common.openapi import setup_openapi
from offsim_common.service import base_app, consumers_ctx

from . import nats_handlers, retention, stock_samples
from .app_keys import RNG
from .routes import setup_routes
from .settings import UsersSettings


def create_app(settings: UsersSettings) -> web.Application:
    app = base_app(settings, "users", deadline_s=REQUEST_DEADLINE_S)
    app[RNG] = random.Random(settings.seed)
    app.cleanup_ctx.append(
        micro_ctx(
            "users",
            "offsim users and their SSDs",
            subjects.USERS_QUEUE,
            lambda app: {
                "random-ssd": (subjects.ORDERS_RANDOM, nats_handlers.random_ssd_endpoint(app[POOL]))
            },
        )
    )
    app.cleanup_ctx.append(
        consumers_ctx(
            lambda app: [
                nats_handlers.restock_consumer(app[POOL]),
                nats_handlers.readings_consumer(app[POOL]),
            ]
        )
    )
    app.cleanup_ctx.append(retention.retention_ctx)
    app.cleanup_ctx.append(stock_samples.stock_samples_ctx)
    setup_routes(app)
    setup_openapi(
        app, "offsim users service", VERSION,
        "Users, their smart stock devices (SSDs) and the stock the SSDs watch.",
    )  # fmt: skip
    return app
