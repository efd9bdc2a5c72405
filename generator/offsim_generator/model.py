"""The simulated population and what it does, one simulated second at a time.

Every SSD watches a few products and consumes each of them on its own: a Poisson process with
a per-product rate (drawn once, around OFFSIM_CONSUME_PER_DAY units a day), times the phase's
consumption multiplier and the daily rhythm. The sum of all those processes is one Poisson
process whose events fall on a product in proportion to its rate, so the model draws the
population's next consumption with one exponential gap and one binary search over the
cumulative rates: the cost is per event, not per SSD, and the population is not a scheduler
job per SSD. Registrations and the original's random orders arrive as Poisson processes at the
scenario's rates; a registration adds one or two SSDs.

Rates are constant over each simulated second (the window), read at its middle. Everything is
drawn from one seeded `random.Random` in window order, so the same seed, scenario and
population give the same events whatever the machine's timing.
"""

from __future__ import annotations

import random
from array import array
from bisect import bisect_right
from dataclasses import dataclass, field

from faker import Faker

from .people import registration
from .scenario import DAY, Faults, Rates, Scenario

# Products of the synthetic catalogue a dry run draws from (the services use their own).
CATALOGUE = 1000
# The spread of the per-product consumption rates (log-normal, mean 1).
RATE_SIGMA = 0.5


def synthetic_barcode(product: int) -> str:
    """An EAN-13 in the 200-299 prefix range (GS1's in-store numbers: never a real product)."""
    digits = f"200{product:09d}"
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(digits))
    return digits + str((10 - total % 10) % 10)


@dataclass(slots=True)
class Event:
    """One decision of the population. `ssd` is the SSD's index in the population (its id in
    a dry run is `ssd + 1`), `slot` the index of one of its watched products overall."""

    t: float
    kind: str
    ssd: int = -1
    slot: int = -1
    quantity: int = 0
    body: dict | None = None
    user: int = -1
    ssds: list[int] = field(default_factory=list)
    phase: str = ""
    malformed: bool = False


@dataclass
class Overrides:
    """Live changes (PUT /api/control): None keeps the scenario's value."""

    register_rate: float | None = None  # per simulated hour
    random_order_rate: float | None = None
    consumption: float | None = None
    faults: dict[str, float] = field(default_factory=dict)


class Population:
    """SSDs with their watched products and each product's consumption rate."""

    def __init__(self, watched: int, per_day: float) -> None:
        self.watched = watched
        self.base_rate = per_day / DAY
        self.users = 0
        self.ssd_user = array("I")
        self.slot_product = array("I")
        # Cumulative consumption rate of slots 0..i, per simulated second.
        self.cumulative: list[float] = []

    @property
    def ssds(self) -> int:
        return len(self.ssd_user)

    @property
    def total_rate(self) -> float:
        return self.cumulative[-1] if self.cumulative else 0.0

    def add_user(self, devices: int, rng: random.Random) -> tuple[int, list[int]]:
        user = self.users
        self.users += 1
        first = self.ssds
        mu = -(RATE_SIGMA**2) / 2
        total = self.total_rate
        for _ in range(devices):
            self.ssd_user.append(user)
            for product in rng.sample(range(CATALOGUE), self.watched):
                self.slot_product.append(product)
                total += self.base_rate * rng.lognormvariate(mu, RATE_SIGMA)
                self.cumulative.append(total)
        return user, list(range(first, self.ssds))

    def slot_of(self, u: float) -> int:
        """The slot a consumption falls on, for `u` uniform in [0, 1)."""
        return min(bisect_right(self.cumulative, u * self.total_rate), len(self.cumulative) - 1)

    def barcode(self, slot: int) -> str:
        return synthetic_barcode(self.slot_product[slot])


class Model:
    """The decisions of a run: `populate` once, then `window(k)` for k = 0, 1, 2, ..."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        seed: int | None,
        watched: int,
        consume_per_day: float,
        overrides: Overrides | None = None,
    ) -> None:
        self.scenario = scenario
        self.rng = random.Random(seed)
        self.faker = Faker()
        self.faker.seed_instance(seed)
        self.population = Population(watched, consume_per_day)
        self.overrides = overrides or Overrides()
        self.phase: tuple[int, int] | None = None
        self.rates: Rates | None = None

    def populate(self, ssds: int) -> list[tuple[int, list[int]]]:
        """Users with one or two SSDs each until there are `ssds` SSDs (the last user may get
        one); synthetic people, no Faker: a big population starts in a second."""
        users = []
        while self.population.ssds < ssds:
            devices = min(self.rng.randint(1, 2), ssds - self.population.ssds)
            users.append(self.population.add_user(devices, self.rng))
        return users

    def rates_at(self, t: float) -> Rates:
        rates = self.scenario.rates(t)
        o = self.overrides
        if o.register_rate is not None:
            rates = _with(rates, register=o.register_rate / 3600)
        if o.random_order_rate is not None:
            rates = _with(rates, random_order=o.random_order_rate / 3600)
        if o.consumption is not None:
            index, _ = self.scenario.phase_at(t)
            phase = self.scenario.phases[index]
            factor = rates.consumption / phase.consumption if phase.consumption else 1.0
            rates = _with(rates, consumption=o.consumption * factor)
        if o.faults:
            faults = Faults(**{**rates.faults.as_dict(), **o.faults})
            rates = _with(rates, faults=faults)
        return rates

    def window(self, k: int) -> list[Event]:
        """The events of simulated second [k, k + 1), in time order."""
        start, end = float(k), float(k + 1)
        rng = self.rng
        events: list[Event] = []
        index, _ = self.scenario.phase_at(start)
        length = self.scenario.length
        cycle = int(start // length) if length and self.scenario.repeat else 0
        if self.phase != (cycle, index):
            self.phase = (cycle, index)
            events.append(Event(start, "phase", phase=self.scenario.phases[index].name))
        rates = self.rates = self.rates_at(start + 0.5)
        malformed = rates.faults.malformed

        for t in _arrivals(rng, start, end, rates.register):
            body = registration(self.faker, rng)
            events.append(Event(t, "register", body=body, quantity=len(body["devices"])))
        ssds = self.population.ssds
        for t in _arrivals(rng, start, end, rates.random_order if ssds else 0.0):
            ssd = rng.randrange(ssds)
            slot = ssd * self.population.watched + rng.randrange(self.population.watched)
            events.append(Event(t, "random_order", ssd=ssd, slot=slot, quantity=rng.randint(1, 4)))
        for t in _arrivals(rng, start, end, self.population.total_rate * rates.consumption):
            slot = self.population.slot_of(rng.random())
            events.append(
                Event(t, "consume", ssd=slot // self.population.watched, slot=slot, quantity=1)
            )
        if malformed > 0:
            for event in events:
                if event.kind != "phase":
                    event.malformed = rng.random() < malformed
        events.sort(key=lambda e: e.t)
        # New SSDs consume from the next window on.
        for event in events:
            if event.kind == "register":
                event.user, event.ssds = self.population.add_user(event.quantity, rng)
        return events


def _arrivals(rng: random.Random, start: float, end: float, rate: float) -> list[float]:
    """The times of a Poisson process of `rate` per second in [start, end)."""
    times: list[float] = []
    if rate <= 0:
        return times
    t = start + rng.expovariate(rate)
    while t < end:
        times.append(t)
        t += rng.expovariate(rate)
    return times


def _with(rates: Rates, **changes) -> Rates:
    from dataclasses import replace

    return replace(rates, **changes)
