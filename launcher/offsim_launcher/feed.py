"""The live feed `offsim up` prints: registrations, orders and their transitions, with counts.

It listens on the same subjects as the services (plain subscriptions see what JetStream stores),
so it shows what really crossed the bus.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from datetime import datetime
from typing import TextIO

import asyncpg
from nats.aio.client import Client
from nats.aio.msg import Msg
from offsim_common import subjects

MARKS = {"pending": "⋯", "shipped": "→", "completed": "✓"}


class Feed:
    def __init__(self, pool: asyncpg.Pool, out: TextIO = sys.stdout) -> None:
        self.pool = pool
        self.out = out
        # Events seen since start: orders placed, shipped, completed.
        self.counts: Counter[str] = Counter()
        self._names: dict[str, str] = {}

    async def subscribe(self, nc: Client) -> None:
        await nc.subscribe(subjects.USERS_REGISTERED, cb=self._on_user)
        for subject in subjects.ORDERS_STREAM_SUBJECTS:
            await nc.subscribe(subject, cb=self._on_order)

    def say(self, text: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        totals = (
            f"users {self.counts['users']} · orders {self.counts['pending']} · "
            f"shipped {self.counts['shipped']} · completed {self.counts['completed']}"
        )
        print(f"{stamp}  {text:<70} [{totals}]", file=self.out, flush=True)

    async def _on_user(self, msg: Msg) -> None:
        try:
            user = json.loads(msg.data)
            self.counts["users"] += 1
            self.say(
                f"+ user {user['id']} {user['first_name']} {user['last_name']} "
                f"with {len(user['devices'])} SSD(s)"
            )
        except (ValueError, KeyError, TypeError):
            self.say(f"? unreadable registration event: {msg.data[:60]!r}")

    async def _on_order(self, msg: Msg) -> None:
        try:
            order = json.loads(msg.data)
            status = order["status"]
            name = await self._product_name(order["barcode"])
        except (ValueError, KeyError, TypeError):
            self.say(f"? unreadable order event: {msg.data[:60]!r}")
            return
        self.counts[status] += 1
        self.say(
            f"{MARKS.get(status, '?')} order {order['id']} {status:<9} SSD {order['ssd_id']}: "
            f"{order['quantity']} x {name[:28]}"
        )

    async def _product_name(self, barcode: str) -> str:
        if barcode not in self._names:
            async with self.pool.acquire() as conn:
                name = await conn.fetchval("SELECT name FROM products WHERE barcode = $1", barcode)
            self._names[barcode] = name or barcode
        return self._names[barcode]
