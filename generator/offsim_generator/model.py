"""The simulated population and what it does, one simulated second at a time.

The population is households: a person with one or two SSDs, numbered from 0 as they join (the
starting population's first, then each registration). Every SSD watches a few products and
consumes each of them on its own: a Poisson process with a per-product rate (drawn once, around
OFFSIM_CONSUME_PER_DAY units a day), times the phase's consumption multiplier and the daily
rhythm. A household's processes add up to one Poisson process, so it has one next consumption,
on a clock that runs at the multiplier (simulated seconds weighted by it: `Model.clock`), and a
heap of the households by their next one: the cost is per event, not per SSD, and the
population is not a scheduler job per SSD. Registrations and the original's random orders
arrive as Poisson processes at the scenario's rates; a registration adds a household.

Rates are constant over each simulated second (the window), read at its middle. Two kinds of
randomness, so that a shard (`shard.Shard`) plays its households exactly as the whole city
would:

- the city's: when registrations and random orders arrive, and which SSD a random order is
  for. One seeded `random.Random`, drawn in window order by every shard in full (it is little:
  the arrivals, not the consumption), so all agree on the households and their numbers.
- each household's: how many SSDs it has, their products and rates, the person, and its
  consumptions, keyed by the seed and the household's number (`keyed`), never by the draws
  made for others. A shard draws them only for the households it plays.

The same seed, scenario and population give the same events whatever the machine's timing, and
whichever shard plays a household.
"""

from __future__ import annotations

import heapq
import math
import random
from array import array
from bisect import bisect_right
from dataclasses import dataclass, field

from faker import Faker

from . import keyed
from .keyed import For
from .people import registration
from .scenario import DAY, Faults, Rates, Scenario
from .shard import Shard

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
    """The city's households and SSDs (every shard counts them all, to number them alike), and
    the products the SSDs of this shard's households watch."""

    def __init__(self, watched: int, per_day: float, shard: Shard | None = None) -> None:
        self.watched = watched
        self.base_rate = per_day / DAY
        self.shard = shard or Shard()
        self.users = 0
        # By SSD: its household. By slot (an SSD's watched product: ssd * watched + k): the
        # product, for this shard's households only (0 for the others').
        self.ssd_user = array("I")
        self.slot_product = array("I")
        # What this shard plays of them.
        self.own_users = 0
        self.own_ssds = 0

    @property
    def ssds(self) -> int:
        return len(self.ssd_user)

    def owns_ssd(self, ssd: int) -> bool:
        return self.shard.owns(self.ssd_user[ssd])

    def add_user(self, devices: int) -> tuple[int, list[int]]:
        """A household with `devices` SSDs joins: its number and its SSDs' indices."""
        user = self.users
        self.users += 1
        first = self.ssds
        self.ssd_user.extend([user] * devices)
        self.slot_product.extend([0] * (devices * self.watched))
        if self.shard.owns(user):
            self.own_users += 1
            self.own_ssds += devices
        return user, list(range(first, self.ssds))

    def furnish(self, ssds: list[int], rng: random.Random) -> tuple[float, ...]:
        """Draw the products the SSDs watch and each one's rate (per simulated second): the
        rates' running totals, over the SSDs' slots in order."""
        mu = -(RATE_SIGMA**2) / 2
        total, cumulative = 0.0, []
        for ssd in ssds:
            for k, product in enumerate(rng.sample(range(CATALOGUE), self.watched)):
                self.slot_product[ssd * self.watched + k] = product
                total += self.base_rate * rng.lognormvariate(mu, RATE_SIGMA)
                cumulative.append(total)
        return tuple(cumulative)

    def barcode(self, slot: int) -> str:
        return synthetic_barcode(self.slot_product[slot])


@dataclass(slots=True, eq=False)
class Household:
    """A household this shard plays, as far as its consumption goes: its slots (consecutive,
    from `first_slot`), their rates' running totals, and its stream of draws (`keyed`), one
    per consumption: when it comes, which product, malformed or not."""

    first_slot: int
    cumulative: tuple[float, ...]
    stream: int
    drawn: int = 0
    bits: int = 0

    def next_gap(self) -> float:
        """Draw the next consumption: how long after the previous one (or the joining) it
        comes, on the model's clock; infinite for a household that consumes nothing."""
        self.bits = keyed.nth(self.stream, self.drawn)
        self.drawn += 1
        rate = self.cumulative[-1]
        return -math.log(1.0 - keyed.unit(self.bits)) / rate if rate > 0 else math.inf

    def slot(self) -> int:
        """The slot the drawn consumption falls on, in proportion to the slots' rates."""
        cumulative = self.cumulative
        target = keyed.unit(keyed.within(self.bits, For.SLOT)) * cumulative[-1]
        return self.first_slot + min(bisect_right(cumulative, target), len(cumulative) - 1)

    def malformed(self, share: float) -> bool:
        return share > 0 and keyed.unit(keyed.within(self.bits, For.FAULT)) < share


class Model:
    """The decisions of a run: `populate` once, then `window(k)` for k = 0, 1, 2, ...; the
    events of the households `shard` plays."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        seed: int | None,
        watched: int,
        consume_per_day: float,
        overrides: Overrides | None = None,
        shard: Shard | None = None,
    ) -> None:
        self.scenario = scenario
        self.seed = seed
        self.shard = shard or Shard()
        # The city's randomness, and the key of the households' (module docstring).
        self.rng = random.Random(seed)
        self.key = keyed.run_key(seed)
        self.faker = Faker()
        self._furnishing = random.Random()
        self.population = Population(watched, consume_per_day, self.shard)
        self.overrides = overrides or Overrides()
        self.phase: tuple[int, int] | None = None
        self.rates: Rates | None = None
        # Simulated seconds weighted by the consumption multiplier: a household's consumptions
        # are a Poisson process of its own rate on this clock.
        self.clock = 0.0
        # This shard's households, by their next consumption on the clock (a heap).
        self.households: list[tuple[float, int, Household]] = []
        # The city's random orders so far (each one's number keys its malformed draw).
        self.orders = 0

    def populate(self, ssds: int) -> list[tuple[int, list[int]]]:
        """Households with one or two SSDs each until there are `ssds` SSDs (the last may get
        one): the ones this shard plays, with their SSDs. Synthetic people, no Faker: a big
        population starts in a second."""
        users = []
        while self.population.ssds < ssds:
            devices = min(self._devices(self.population.users), ssds - self.population.ssds)
            user, indices = self._join(devices)
            if self.shard.owns(user):
                users.append((user, indices))
        return users

    def _devices(self, user: int) -> int:
        """One or two, an even chance each."""
        return 1 + (keyed.key(self.key, For.DEVICES, user) >> 63)

    def _join(self, devices: int) -> tuple[int, list[int]]:
        """A household joins the city; if this shard plays it, its products are drawn and it
        consumes from the clock's present on."""
        user, ssds = self.population.add_user(devices)
        if self.shard.owns(user):
            rng = self._furnishing
            rng.seed(keyed.key(self.key, For.HOUSEHOLD, user))
            cumulative = self.population.furnish(ssds, rng)
            stream = keyed.key(self.key, For.CONSUME, user)
            household = Household(ssds[0] * self.population.watched, cumulative, stream)
            heapq.heappush(self.households, (self.clock + household.next_gap(), user, household))
        return user, ssds

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
        """This shard's events of simulated second [k, k + 1), in time order."""
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

        events.extend(self._consumption(start, rates.consumption, malformed))
        # The SSDs a random order may be for: those there were when the window began.
        ssds = self.population.ssds
        for t in _arrivals(rng, start, end, rates.register):
            # New SSDs consume from the next window on (the clock has moved past this one).
            if (event := self._register(t, malformed)) is not None:
                events.append(event)
        for t in _arrivals(rng, start, end, rates.random_order if ssds else 0.0):
            ssd = rng.randrange(ssds)
            slot = ssd * self.population.watched + rng.randrange(self.population.watched)
            quantity, number = rng.randint(1, 4), self.orders
            self.orders += 1
            if self.population.owns_ssd(ssd):
                bad = _malformed(self.key, For.MALFORMED_ORDER, number, malformed)
                events.append(Event(t, "random_order", ssd=ssd, slot=slot, quantity=quantity,
                                    malformed=bad))  # fmt: skip
        events.sort(key=lambda e: e.t)
        return events

    def _consumption(self, start: float, multiplier: float, malformed: float) -> list[Event]:
        """The consumptions of simulated second [start, start + 1): the households' whose next
        one falls before the clock has moved by `multiplier`; each draws its next."""
        begin = self.clock
        end = self.clock = begin + multiplier
        heap, events = self.households, []
        watched = self.population.watched
        # The window's last instant: a time rounded up to its end stays in it.
        last = math.nextafter(start + 1.0, start)
        while heap and heap[0][0] < end:
            due, user, household = heap[0]
            t = min(start + (due - begin) / multiplier, last)
            slot = household.slot()
            bad = household.malformed(malformed)
            events.append(Event(t, "consume", ssd=slot // watched, slot=slot, quantity=1,
                                malformed=bad))  # fmt: skip
            heapq.heapreplace(heap, (due + household.next_gap(), user, household))
        return events

    def _register(self, t: float, malformed: float) -> Event | None:
        """A household joins by registering; the event if this shard plays it."""
        user, ssds = self._join(self._devices(self.population.users))
        if not self.shard.owns(user):
            return None
        self.faker.seed_instance(keyed.key(self.key, For.PERSON, user))
        body = registration(self.faker, user + 1, len(ssds))
        bad = _malformed(self.key, For.MALFORMED_REGISTER, user, malformed)
        return Event(t, "register", body=body, quantity=len(ssds), user=user, ssds=ssds,
                     malformed=bad)  # fmt: skip


def _malformed(key: int, purpose: For, number: int, share: float) -> bool:
    """Whether the event `number` of its kind is sent malformed, at this share."""
    return share > 0 and keyed.unit(keyed.key(key, purpose, number)) < share


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
