"""Typed application keys of the dashboard (the shared ones live in offsim_common.app_keys)."""

import aiohttp
from aiohttp import web

from .events import EventHub
from .snapshot import SnapshotCache

HUB = web.AppKey("hub", EventHub)
HTTP = web.AppKey("http", aiohttp.ClientSession)
SNAPSHOTS = web.AppKey("snapshots", SnapshotCache)
