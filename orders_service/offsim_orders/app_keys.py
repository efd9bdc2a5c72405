"""Typed application keys of the orders service (the shared ones live in offsim_common.app_keys)."""

from typing import Any

from aiohttp import web

from .group_commit import GroupCommit
from .orders import Placement, PublishedMarks

PLACER = web.AppKey("placer", GroupCommit[Placement, dict[str, Any]])
MARKS = web.AppKey("marks", PublishedMarks)
