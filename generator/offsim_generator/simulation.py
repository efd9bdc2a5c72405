"""The simulated users and their SSDs: the events the generator sends each tick.

- register: a new person with one or two devices (POST /api/register).
- random_order: the original's product-order event, a scatter-gather on orders.random, then
  POST /api/orders with a quantity of 1 to 4. Unlike the original, the product is one the SSD
  watches: a second orders.random request names the SSD the first one drew.
- consume: an SSD reports the stock used at home; whatever falls below its reorder point is
  ordered back up to capacity as a `restock` order, one open per product (the orders service
  answers 409 for a second one, which is counted, not retried).

A registered user's SSDs act with that user's bearer token; the original's random orders, and
an SSD whose owner's token the generator never saw (learned from orders.random, or before a
restart), act with the service credential (OFFSIM_SERVICE_TOKEN).

A service that is down or answers an error is logged and counted; the next tick tries again.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable

import aiohttp
from faker import Faker
from nats.aio.client import Client
from offsim_common import tracing
from offsim_common.config import Settings
from offsim_common.messages import RandomOrderRequest
from offsim_common.metrics import GENERATOR_EVENTS

from .people import registration
from .scatter import gather_random

log = logging.getLogger(__name__)

EVENTS = ("register", "random_order", "consume")
# An SSD that consumes reports up to this many units of each product it watches.
CONSUME_UP_TO = 3


class ServiceError(Exception):
    """A call to a service failed; the event is counted as failed."""


class Simulation:
    def __init__(
        self, settings: Settings, http: aiohttp.ClientSession, nc: Client, seed: int | None
    ) -> None:
        self.settings = settings
        self.http = http
        self.nc = nc
        self.rng = random.Random(seed)
        self.faker = Faker()
        self.faker.seed_instance(seed)
        self.known_ssds: list[int] = []
        # The owner's bearer token of each SSD registered by this generator.
        self.tokens: dict[int, str] = {}
        self.stats: Counter[str] = Counter()
        self._events: dict[str, Callable[[], Awaitable[None]]] = {
            "register": self.register,
            "random_order": self.random_order,
            "consume": self.consume,
        }
        self._weights = [settings.weights.get(name, 0.0) for name in EVENTS]
        if not any(self._weights):
            raise ValueError("at least one event weight must be positive")

    async def tick(self) -> str:
        """Send one event, chosen by weight. Never raises: failures are logged and counted."""
        name = self.rng.choices(EVENTS, weights=self._weights)[0]
        self.stats["events"] += 1
        # Each event starts its own trace: the requests it makes, and all they cause, join it.
        with tracing.span(f"simulate {name}", attributes={"offsim.event": name}) as span:
            try:
                await self._events[name]()
            except (ServiceError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                outcome = "failed"
                tracing.failed(span, exc)
                log.warning("%s failed: %s", name, exc or type(exc).__name__)
            except Exception as exc:
                outcome = "failed"
                tracing.failed(span, exc)
                log.exception("%s failed unexpectedly", name)
            else:
                outcome = "sent"
        self.stats[f"{name}.{outcome}"] += 1
        GENERATOR_EVENTS.labels(name, outcome).inc()
        return name

    async def register(self) -> None:
        status, body = await self._post(
            f"{self.settings.users_url}/api/register", registration(self.faker, self.rng)
        )
        if status == 409:
            self.stats["register.conflict"] += 1
            return
        self._expect(status, 201, body, "register")
        self.known_ssds.extend(device["id"] for device in body["devices"])
        for device in body["devices"]:
            self.tokens[device["id"]] = body["token"]
        log.info("registered user %s with %d SSD(s)", body["id"], len(body["devices"]))

    async def random_order(self) -> None:
        gathered = await gather_random(self.nc)
        if not gathered.complete:
            raise ServiceError(f"orders.random incomplete: {gathered}")
        self._learn(gathered.ssd_id)
        watched = await gather_random(self.nc, request=RandomOrderRequest(ssd_id=gathered.ssd_id))
        barcode = watched.barcode or gathered.barcode
        await self._order(gathered.ssd_id, barcode, self.rng.randint(1, 4), as_service=True)

    async def consume(self) -> None:
        if not self.known_ssds:
            # After a restart the generator knows no SSD yet: ask the users service for one.
            gathered = await gather_random(self.nc)
            if gathered.ssd_id is None:
                self.stats["consume.no_ssd"] += 1
                return
            self._learn(gathered.ssd_id)
        ssd_id = self.rng.choice(self.known_ssds)
        status, body = await self._post(
            f"{self.settings.users_url}/api/ssds/{ssd_id}/consume",
            {"quantity": CONSUME_UP_TO},
            self._token(ssd_id),
        )
        if status == 404:
            self.known_ssds.remove(ssd_id)  # the SSD is gone (database reset)
            self.tokens.pop(ssd_id, None)
            return
        if status == 401 and self.tokens.pop(ssd_id, None):
            return  # the owner's token is gone: the service credential from the next tick
        self._expect(status, 200, body, "consume")
        self.stats["consume.units"] += sum(item["consumed"] for item in body["stock"])
        for item in body["restock"]:
            await self._order(ssd_id, item["barcode"], item["quantity"], restock=True)

    async def _order(
        self,
        ssd_id: int,
        barcode: str,
        quantity: int,
        restock: bool = False,
        as_service: bool = False,
    ) -> None:
        status, body = await self._post(
            f"{self.settings.orders_url}/api/orders",
            {"ssd_id": ssd_id, "barcode": barcode, "quantity": quantity,
             "kind": "restock" if restock else "order"},
            self.settings.service_token if as_service else self._token(ssd_id),
            # A retry after a lost answer must not order twice.
            idempotency_key=str(uuid.UUID(int=self.rng.getrandbits(128))),
        )  # fmt: skip
        if status == 409:
            self.stats["order.already_open"] += 1
            return
        self._expect(status, 201, body, "order")
        self.stats["order.restock" if restock else "order.random"] += 1
        log.info("order %s: SSD %s, %s x %s", body["id"], ssd_id, quantity, barcode)

    def _token(self, ssd_id: int) -> str | None:
        """The owner's token if this generator registered the SSD, else the service's."""
        return self.tokens.get(ssd_id) or self.settings.service_token

    def _learn(self, ssd_id: int) -> None:
        if ssd_id not in self.known_ssds:
            self.known_ssds.append(ssd_id)

    async def _post(
        self, url: str, payload: dict, token: str | None = None, idempotency_key: str | None = None
    ) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        async with self.http.post(url, json=payload, headers=headers) as resp:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = {"message": (await resp.text())[:200]}
            return resp.status, body if isinstance(body, dict) else {"body": body}

    @staticmethod
    def _expect(status: int, wanted: int, body: dict, what: str) -> None:
        if status != wanted:
            raise ServiceError(f"{what}: HTTP {status}: {body.get('message', body)}")
