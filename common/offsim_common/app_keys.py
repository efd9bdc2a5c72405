"""The typed keys of what every service's application holds."""

from __future__ import annotations

import asyncio

import asyncpg
from aiohttp import web
from nats.aio.client import Client
from nats.js import JetStreamContext

from .settings import ServiceSettings

SETTINGS = web.AppKey("settings", ServiceSettings)
POOL = web.AppKey("pool", asyncpg.Pool)
NC = web.AppKey("nc", Client)
JS = web.AppKey("js", JetStreamContext)
NAME = web.AppKey("name", str)
CONSUMERS = web.AppKey("consumers", list)
# Set to end the process cleanly, as a signal does: a member whose work has an end (the
# generator's scenario) sets it itself.
STOP = web.AppKey("stop", asyncio.Event)
