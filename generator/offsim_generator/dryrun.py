"""A run without the services: every event as one JSON line on stdout.

SSD ids are the population's indices plus one, barcodes come from a synthetic catalogue, and
the stock the users service would keep is kept here: each watched product starts full (6 to
12, reorder point a third of it), a consumption that leaves it below its reorder point with
nothing on order places a `restock` order back to capacity, and an order is `delivered` after
the supplier's and the courier's delays (OFFSIM_SUPPLIER_DELAY_*, OFFSIM_DELIVERY_DELAY_*).
The stock draws from its own seeded generator, so it never shifts the population's decisions.
"""

from __future__ import annotations

import heapq
import json
import random
from array import array
from typing import TextIO

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
        self.rng = random.Random(None if seed is None else seed + 1)
        self.supplier_delay = supplier_delay
        self.delivery_delay = delivery_delay
        self.stock = array("h")
        self.capacity = array("h")
        self.open_orders = array("H")
        # (due simulated time, sequence, slot, quantity)
        self.deliveries: list[tuple[float, int, int, int]] = []
        self._sequence = 0
        self.lines = 0
        self.by_kind: dict[str, int] = {}

    def _grow(self) -> None:
        while len(self.stock) < len(self.population.slot_product):
            capacity = self.rng.randint(6, 12)
            self.capacity.append(capacity)
            self.stock.append(capacity)
            self.open_orders.append(0)

    def write(self, t: float, kind: str, **fields) -> None:
        self.out.write(json.dumps({"t": round(t, 3), "event": kind, **fields}))
        self.out.write("\n")
        self.lines += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1

    def population_line(self, users: int, ssds: int) -> None:
        self._grow()
        self.write(0.0, "population", users=users, ssds=ssds)

    def advance(self, until: float) -> None:
        """Deliver every order due before `until`."""
        while self.deliveries and self.deliveries[0][0] < until:
            due, _, slot, quantity = heapq.heappop(self.deliveries)
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
        delay = self.rng.uniform(*self.supplier_delay) + self.rng.uniform(*self.delivery_delay)
        self._sequence += 1
        self.open_orders[slot] = min(self.open_orders[slot] + 1, 65535)
        heapq.heappush(self.deliveries, (t + delay, self._sequence, slot, quantity))
