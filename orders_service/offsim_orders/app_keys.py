"""Typed application keys of the orders service (the shared ones live in offsim_common.app_keys)."""

from aiohttp import web

from .group_commit import GroupCommit
from .orders import Placed, Placement, PublishedMarks

PLACER = web.AppKey("placer", GroupCommit[Placement, Placed])
MARKS = web.AppKey("marks", PublishedMarks)
