"""A run without the services: every event as one JSON line on stdout.

SSD ids are the population's indices plus one, barcodes come from a synthetic catalogue, and
the stock the users service would keep is kept here: each watched product starts full (6 to
12, reorder point a third of it), a consumption that leaves it below its reorder point with
nothing on order places a `restock` order back to capacity, and an order is `delivered` after
the supplier's and the courier's delays (OFFSIM_SUPPLIER_DELAY_*, OFFSIM_DELIVERY_DELAY_*).
The stock draws are keyed by the seed and the product's slot (`keyed`), so they never shift the
population's decisions, and a shard (`shard.Shard`) keeps the stock of its households exactly as
the whole city's run would: a sharded dry run writes the lines of its households, and the
run-wide ones (`population`, with its share's counts and the shard, and every `phase`).
"""

from __future__ import annotations

import heapq
import json
from array import array
from typing import TextIO

from . import keyed
from .keyed import For
from .model import Event, Population


class DryRun:
    def __init__(
        self,
        population: Population,
        out: TextIO,
        *,
        seed: int | None,
        supplier_delay: tuple[float, float],
        delivery_delay: tuple[float, float],
    ) -> None:
        self.population = population
        self.out = out
        self.key = keyed.run_key(seed)
        self.supplier_delay = supplier_delay
        self.delivery_delay = delivery_delay
        # By slot; this shard's households' only (0 for the others').
        self.stock = array("h")
        self.capacity = array("h")
        self.open_orders = array("H")
        self.ordered = array("I")
        # (due simulated time, slot, the slot's order number, quantity)
        self.deliveries: list[tuple[float, int, int, int]] = []
        self.lines = 0
        self.by_kind: dict[str, int] = {}

    def _grow(self) -> None:
        """Stock for the slots of the SSDs that joined: full, 6 to 12 units, for this shard's."""
        first, slots = len(self.stock), len(self.population.slot_product)
        for column in (self.capacity, self.stock, self.open_orders, self.ordered):
            column.extend([0] * (slots - first))
        watched = self.population.watched
        for slot in range(first, slots):
            if self.population.owns_ssd(slot // watched):
                capacity = 6 + keyed.key(self.key, For.CAPACITY, slot) % 7
                self.capacity[slot] = self.stock[slot] = capacity

    def write(self, t: float, kind: str, **fields) -> None:
        self.out.write(json.dumps({"t": round(t, 3), "event": kind, **fields}))
        self.out.write("\n")
        self.lines += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1

    def population_line(self, users: int, ssds: int) -> None:
        """The run's first line: the users and SSDs it starts with (a shard's: its share of
        them, and which shard it is)."""
        self._grow()
        shard = self.population.shard
        self.write(0.0, "population", users=users, ssds=ssds,
                   **({} if shard.whole else {"shard": str(shard)}))  # fmt: skip

    def advance(self, until: float) -> None:
        """Deliver every order due before `until`."""
        while self.deliveries and self.deliveries[0][0] < until:
            due, slot, _, quantity = heapq.heappop(self.deliveries)
            self.open_orders[slot] -= 1
            self.stock[slot] = min(self.stock[slot] + quantity, 32767)
            self.write(due, "delivered", ssd=slot // self.population.watched + 1,
                       barcode=self.population.barcode(slot), quantity=quantity,
                       stock=self.stock[slot])  # fmt: skip

    def handle(self, event: Event) -> None:
        self.advance(event.t)
        extra = {"malformed": True} if event.malformed else {}
        if event.kind == "phase":
            self.write(event.t, "phase", phase=event.phase)
        elif event.kind == "register":
            self._grow()
            user = event.body["user"] if event.body else {}
            self.write(
                event.t,
                "register",
                user=event.user + 1,
                name=f"{user.get('first_name')} {user.get('last_name')}",
                email=user.get("email"),
                ssds=[s + 1 for s in event.ssds],
                **extra,
            )
        elif event.kind == "random_order":
            self.write(event.t, "random_order", ssd=event.ssd + 1,
                       barcode=self.population.barcode(event.slot), quantity=event.quantity,
                       **extra)  # fmt: skip
            if not event.malformed:
                self._order(event.t, event.slot, event.quantity)
        elif event.kind == "consume":
            slot = event.slot
            used = min(event.quantity, self.stock[slot]) if not event.malformed else 0
            self.stock[slot] -= used
            self.write(event.t, "consume", ssd=event.ssd + 1,
                       barcode=self.population.barcode(slot), quantity=used,
                       stock=self.stock[slot], **extra)  # fmt: skip
            capacity = self.capacity[slot]
            low = self.stock[slot] < capacity // 3
            if low and not event.malformed and not self.open_orders[slot]:
                quantity = capacity - self.stock[slot]
                self.write(event.t, "restock", ssd=event.ssd + 1,
                           barcode=self.population.barcode(slot), quantity=quantity)  # fmt: skip
                self._order(event.t, slot, quantity)

    def _order(self, t: float, slot: int, quantity: int) -> None:
        """The order's delivery, after the supplier's and the courier's delays: drawn for the
        slot's n-th order, whoever plays it."""
        number = self.ordered[slot]
        self.ordered[slot] = number + 1
        bits = keyed.key(self.key, For.DELAY, slot, number)
        delay = _between(self.supplier_delay, keyed.unit(bits)) + _between(
            self.delivery_delay, keyed.unit(keyed.within(bits, For.DELAY))
        )
        self.open_orders[slot] = min(self.open_orders[slot] + 1, 65535)
        heapq.heappush(self.deliveries, (t + delay, slot, number, quantity))


def _between(bounds: tuple[float, float], u: float) -> float:
    low, high = bounds
    return low + (high - low) * u
