"""Typed application keys of the users service (the shared ones live in offsim_common.app_keys)."""

import random

from aiohttp import web

RNG = web.AppKey("rng", random.Random)
