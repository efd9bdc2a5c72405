"""A run without the services: every event as one JSON line on stdout.

SSD ids are the population's indices plus one, barcodes come from a synthetic catalogue, and
the stock the users service would keep is kept here: each watched product starts full (6 to
12, reorder point a third of it), a consumption that leaves it below its reorder point with
nothing on order places a `restock` order back to capacity, and an order is `delivered` after
the supplier's and the courier's delays (OFFSIM_SUPPLIER_DELAY_*, OFFSIM_DELIVERY_DELAY_*), as
the phase's faults change them: the supplier's delay multiplied, a share `cancelled` by the
supplier, a share of deliveries delayed by the courier's spike (what the notifications service
does live). The run's KPIs (offsim_common.kpis) are kept exactly as it goes (`kpis`).
The stock draws are keyed by the seed and the product's slot (`keyed`), so they never shift the
population's decisions, and a shard (`shard.Shard`) keeps the stock of its households exactly as
the whole city's run would: a sharded dry run writes the lines of its households, and the
run-wide ones (`population`, with its share's counts and the shard, and every `phase`).
"""

from __future__ import annotations

import heapq
import json
from array import array
from collections.abc import Callable
from typing import TextIO

from offsim_common import kpis

from . import keyed
from .keyed import For
from .model import Event, Population
from .scenario import Faults

# What follows an order: its delivery, or the supplier's cancellation.
DELIVERED, CANCELLED = 0, 1


class DryRun:
    def __init__(
        self,
        population: Population,
        out: TextIO,
        *,
        seed: int | None,
        supplier_delay: tuple[float, float],
        delivery_delay: tuple[float, float],
        faults_at: Callable[[float], Faults] = lambda t: Faults(),
    ) -> None:
        self.population = population
        self.out = out
        self.key = keyed.run_key(seed)
        self.supplier_delay = supplier_delay
        self.delivery_delay = delivery_delay
        self.faults_at = faults_at
        self.tally = kpis.Tally()
        # By slot; this shard's households' only (0 for the others').
        self.stock = array("h")
        self.capacity = array("h")
        self.open_orders = array("H")
        self.ordered = array("I")
        # (due simulated time, slot, the slot's order number, quantity, DELIVERED or
        # CANCELLED, placed at, shipped at)
        self.deliveries: list[tuple[float, int, int, int, int, float, float]] = []
        self.lines = 0
        self.by_kind: dict[str, int] = {}
        # SSDs whose registration was sent malformed: refused live, so they watch nothing and
        # their readings are never sent.
        self.refused: set[int] = set()

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

    def population_line(self, users: int, ssds: int, **settings) -> None:
        """The run's first line: the users and SSDs it starts with (a shard's: its share of
        them, and which shard it is), the products each SSD watches, and the run's
        `settings` (seed, scenario, speed), for a report of the run."""
        self._grow()
        shard = self.population.shard
        watched = self.population.watched
        self.tally.watch(0.0, ssds * watched, ssds)
        self.write(0.0, "population", users=users, ssds=ssds, watched=watched,
                   **({} if shard.whole else {"shard": str(shard)}), **settings)  # fmt: skip

    def end_line(self, t: float) -> None:
        """The run's last line: where it ended (the orders due by then delivered first), so
        that a report of the lines measures the same stretch as the summary."""
        self.advance(t)
        self.write(t, "end")

    def advance(self, until: float) -> None:
        """Deliver every order due before `until`."""
        while self.deliveries and self.deliveries[0][0] < until:
            due, slot, _, quantity, outcome, placed, shipped = heapq.heappop(self.deliveries)
            self.open_orders[slot] -= 1
            ssd, barcode = slot // self.population.watched + 1, self.population.barcode(slot)
            if outcome == CANCELLED:
                self.tally.cancelled(due)
                self.write(due, "cancelled", ssd=ssd, barcode=barcode, quantity=quantity,
                           placed=round(placed, 3))  # fmt: skip
                continue
            self.stock[slot] = min(self.stock[slot] + quantity, 32767)
            self.tally.stock(due, slot, self.stock[slot])
            self.tally.completed(due, placed, shipped)
            self.write(due, "delivered", ssd=ssd, barcode=barcode, quantity=quantity,
                       stock=self.stock[slot], placed=round(placed, 3),
                       shipped=round(shipped, 3))  # fmt: skip

    def handle(self, event: Event) -> None:
        self.advance(event.t)
        extra = {"malformed": True} if event.malformed else {}
        if event.kind == "phase":
            faults = self.faults_at(event.t).as_dict()
            self.write(event.t, "phase", phase=event.phase, faults=faults)
        elif event.kind == "register":
            self._grow()
            own = [s for s in event.ssds if self.population.owns_ssd(s)]
            if event.malformed:
                self.refused.update(own)
            else:
                self.tally.watch(event.t, len(own) * self.population.watched, len(own))
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
        elif event.kind == "consume" and event.ssd in self.refused:
            self.write(event.t, "consume", ssd=event.ssd + 1,
                       barcode=self.population.barcode(event.slot), quantity=0, wanted=0,
                       stock=self.stock[event.slot], unregistered=True)  # fmt: skip
        elif event.kind == "consume":
            slot = event.slot
            used = min(event.quantity, self.stock[slot]) if not event.malformed else 0
            self.stock[slot] -= used
            # A malformed reading is refused: it wanted nothing.
            wanted = 0 if event.malformed else event.quantity
            if not event.malformed:
                self.tally.demand(event.t, wanted, used)
                self.tally.stock(event.t, slot, self.stock[slot])
            self.write(event.t, "consume", ssd=event.ssd + 1,
                       barcode=self.population.barcode(slot), quantity=used, wanted=wanted,
                       stock=self.stock[slot], **extra)  # fmt: skip
            capacity = self.capacity[slot]
            low = self.stock[slot] < capacity // 3
            if low and not event.malformed and not self.open_orders[slot]:
                quantity = capacity - self.stock[slot]
                self.write(event.t, "restock", ssd=event.ssd + 1,
                           barcode=self.population.barcode(slot), quantity=quantity)  # fmt: skip
                self.tally.restock(event.t)
                self._order(event.t, slot, quantity)

    def _order(self, t: float, slot: int, quantity: int) -> None:
        """The order's delivery (or cancellation), after the supplier's and the courier's
        delays: drawn for the slot's n-th order, whoever plays it, and changed by the faults
        of the time each stage starts, as the notifications service does."""
        number = self.ordered[slot]
        self.ordered[slot] = number + 1
        bits = keyed.key(self.key, For.DELAY, slot, number)
        placed = self.faults_at(t)
        shipped = t + _between(self.supplier_delay, keyed.unit(bits)) * placed.supplier_delay
        self.open_orders[slot] = min(self.open_orders[slot] + 1, 65535)
        if keyed.unit(keyed.within(bits, For.REJECT)) < placed.reject:
            heapq.heappush(self.deliveries, (shipped, slot, number, quantity, CANCELLED, t, t))
            return
        courier = self.faults_at(shipped)
        spike = keyed.unit(keyed.within(bits, For.SPIKE)) < courier.courier_spike
        delivery = _between(self.delivery_delay, keyed.unit(keyed.within(bits, For.DELAY)))
        due = shipped + delivery * (courier.courier_spike_factor if spike else 1.0)
        heapq.heappush(self.deliveries, (due, slot, number, quantity, DELIVERED, t, shipped))

    def kpis(self, t: float) -> kpis.Kpis:
        """The run's KPIs at simulated second t."""
        return kpis.rounded(self.tally.kpis(t))


def _between(bounds: tuple[float, float], u: float) -> float:
    low, high = bounds
    return low + (high - low) * u
