"""Typed application keys of the orders service (the shared ones live in offsim_common.app_keys)."""

import asyncio

from aiohttp import web

from .group_commit import GroupCommit
from .orders import Placed, Placement, PublishedMarks

PLACER = web.AppKey("placer", GroupCommit[Placement, Placed])
MARKS = web.AppKey("marks", PublishedMarks)
# Taken by each statement that updates many orders' rows at once (the transition batches, the
# published marks, the reconciler's confirmations) before it takes its turn across replicas in
# Postgres (queries.ROW_TURN_KEY): the statements of one process queue here, each without a
# pooled connection, rather than in Postgres, each holding one.
ROW_TURNS = web.AppKey("row_turns", asyncio.Lock)
