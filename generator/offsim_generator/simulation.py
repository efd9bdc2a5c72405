"""The population's events against the services.

- register: a new person with one or two devices (POST /api/register).
- random_order: the original's product-order event, a scatter-gather on orders.random, then
  POST /api/orders with a quantity of 1 to 4. Unlike the original, the product is one the SSD
  watches: a second orders.random request names the SSD the first one drew.
- consume: an SSD reports one unit of one watched product used (its first report names no
  product and learns which ones it watches); whatever falls below its reorder point is ordered
  back up to capacity as a `restock` order, one open per product (the orders service answers
  409 for a second one, which is counted, not retried).

The decisions (when, which SSD and product, how many, who registers) come from the model; the
answers never feed back into them, so the same seed makes the same decisions. An SSD whose
registration has not succeeded yet has no id: its events are counted as `unregistered`.

A registered user's SSDs act with that user's bearer token; the original's random orders act
with the service credential (OFFSIM_SERVICE_TOKEN).

A service that is down or answers an error is logged and counted; the run goes on.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable

import aiohttp
from nats.aio.client import Client
from offsim_common import tracing
from offsim_common.events import RandomOrderRequest
from offsim_common.metrics import GENERATOR_EVENTS

from . import answers, metrics
from .answers import Consumed, M, Placed, Registered
from .model import Event, Population
from .scatter import gather_random
from .settings import GeneratorSettings

log = logging.getLogger(__name__)

EVENTS = ("register", "random_order", "consume")
# A population batch answered 503 (or 409 while it is still being stored) is tried this often,
# waiting a little longer each time (a busy database catches up; the Idempotency-Key makes a
# batch that did commit answer again).
POPULATE_ATTEMPTS = 10
# Users a bulk registration request carries: well within the users service's request deadline
# (REQUEST_DEADLINE_S) on a busy machine.
POPULATE_BATCH = 100


class ServiceError(Exception):
    """A call to a service failed; the event is counted as failed."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Simulation:
    def __init__(
        self,
        settings: GeneratorSettings,
        http: aiohttp.ClientSession,
        nc: Client | None,
        population: Population,
    ) -> None:
        self.settings = settings
        self.http = http
        self.nc = nc
        self.population = population
        # Idempotency keys only: unseeded, so two runs with one seed never share a key.
        self.keys = random.Random()
        # By the SSD's index in the population: its id at the users service, its owner's
        # bearer token, and the barcodes it watches (learned from its first consume answer).
        self.ssd_ids: dict[int, int] = {}
        self.tokens: dict[int, str] = {}
        self.barcodes: dict[int, list[str]] = {}
        self.stats: Counter[str] = Counter()
        self._events: dict[str, Callable[[Event], Awaitable[None]]] = {
            "register": self.register,
            "random_order": self.random_order,
            "consume": self.consume,
        }

    async def perform(self, event: Event) -> str:
        """Send one event. Never raises: failures are logged and counted."""
        name = event.kind
        self.stats["events"] += 1
        outcome = "failed"
        # Each event starts its own trace: the requests it makes, and all they cause, join it.
        with tracing.span(f"simulate {name}", attributes={"offsim.event": name}) as span:
            try:
                if event.malformed:
                    await self.malformed(event)
                else:
                    await self._events[name](event)
            except (ServiceError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                tracing.failed(span, exc)
                log.warning("%s failed: %s", name, exc or type(exc).__name__)
            except asyncio.CancelledError:
                outcome = "cancelled"
                raise
            except Exception as exc:
                tracing.failed(span, exc)
                log.exception("%s failed unexpectedly", name)
            else:
                outcome = "sent"
            finally:
                self.stats[f"{name}.{outcome}"] += 1
                GENERATOR_EVENTS.labels(name, outcome).inc()
        return name

    async def register(self, event: Event, idempotency_key: str | None = None) -> None:
        assert event.body is not None
        status, body = await self._post(
            f"{self.settings.users_url}/api/register", event.body, idempotency_key=idempotency_key
        )
        if status == 409:
            self.stats["register.conflict"] += 1
            return
        self._expect(status, 201, body, "register")
        registered = self._read(Registered, body, "register")
        for index, device in zip(event.ssds, registered.devices, strict=False):
            self.ssd_ids[index] = device.id
            self.tokens[index] = registered.token
        log.info("registered user %s with %d SSD(s)", registered.id, len(registered.devices))

    async def populate(
        self, users: list[tuple[int, list[int]]], batch: int = POPULATE_BATCH, concurrency: int = 2
    ) -> None:
        """Register the starting population through the users service's bulk path
        (`POST /api/synthetic-users`, service credential): synthetic people, `batch` users a
        request, `concurrency` requests at a time (one hashes while another writes). A 503, or
        a 409 while the same batch is still being stored, is retried with the batch's
        Idempotency-Key (a batch that did commit is answered again, never stored twice); any
        other failure is counted and the run goes on with the SSDs that exist. Their SSDs act
        with the service credential (synthetic users get no token)."""
        run = uuid.UUID(int=self.keys.getrandbits(128)).hex[:12]
        batches = [users[i : i + batch] for i in range(0, len(users), batch)]
        batches.reverse()

        async def worker() -> None:
            while batches:
                chunk = batches.pop()
                body = {"users": [
                    {"first_name": "Population", "last_name": f"User {user + 1}",
                     "email": f"pop-{run}-{user + 1}@offsim.example",
                     "password": uuid.UUID(int=self.keys.getrandbits(128)).hex,
                     "devices": [{"mac_address": self._mac(run, ssd)} for ssd in ssds]}
                    for user, ssds in chunk
                ]}  # fmt: skip
                key = str(uuid.UUID(int=self.keys.getrandbits(128)))
                for attempt in range(POPULATE_ATTEMPTS):
                    try:
                        status, answer = await self._post(
                            f"{self.settings.users_url}/api/synthetic-users", body,
                            self.settings.service_token, idempotency_key=key,
                        )  # fmt: skip
                        in_progress = status == 409 and "Idempotency-Key" in answer.get(
                            "details", {}
                        )
                        if (status == 503 or in_progress) and attempt + 1 < POPULATE_ATTEMPTS:
                            await asyncio.sleep(min(0.5 * (attempt + 1), 3.0))
                            continue
                        self._expect(status, 201, answer, "synthetic users")
                    except (ServiceError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                        self.stats["populate.failed"] += len(chunk)
                        log.warning("%d population users not registered: %s", len(chunk), exc)
                        break
                    for (_, ssds), made in zip(chunk, answer["users"], strict=True):
                        for index, device in zip(ssds, made["devices"], strict=True):
                            self.ssd_ids[index] = device["id"]
                    self.stats["populate.sent"] += len(chunk)
                    break

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    @staticmethod
    def _mac(run: str, ssd: int) -> str:
        digits = f"{(int(run, 16) * 1_000_003 + ssd) % 2**48:012x}"
        # Locally administered, unicast: 02 in the first octet.
        digits = "02" + digits[2:]
        return ":".join(digits[i : i + 2] for i in range(0, 12, 2))

    async def random_order(self, event: Event) -> None:
        if self.nc is None:
            raise ServiceError("no NATS connection")
        gathered = await gather_random(self.nc)
        if not gathered.complete:
            raise ServiceError(f"orders.random incomplete: {gathered}")
        watched = await gather_random(self.nc, request=RandomOrderRequest(ssd_id=gathered.ssd_id))
        barcode = watched.barcode or gathered.barcode
        await self._order(gathered.ssd_id, barcode, event.quantity, as_service=True)

    async def consume(self, event: Event) -> None:
        index = event.ssd
        ssd_id = self.ssd_ids.get(index)
        if ssd_id is None:
            self.stats["consume.unregistered"] += 1
            return
        barcodes = self.barcodes.get(index)
        payload: dict = {"quantity": event.quantity}
        if barcodes:
            payload["barcode"] = barcodes[(event.slot % self.population.watched) % len(barcodes)]
        status, body = await self._post(
            f"{self.settings.users_url}/api/ssds/{ssd_id}/consume", payload, self._token(index)
        )
        if status == 404:
            self.stats["consume.gone"] += 1
            self.ssd_ids.pop(index, None)  # the SSD is gone (database reset)
            return
        if status == 401 and self.tokens.pop(index, None):
            return  # the owner's token is gone: the service credential from the next event
        self._expect(status, 200, body, "consume")
        consumed = self._read(Consumed, body, "consume")
        if not barcodes:
            self.barcodes[index] = sorted(item.barcode for item in consumed.stock)
        self.stats["consume.units"] += sum(item.consumed for item in consumed.stock)
        for item in consumed.restock:
            await self._order(ssd_id, item.barcode, item.quantity, restock=True,
                              token=self._token(index))  # fmt: skip

    async def malformed(self, event: Event) -> None:
        """A request that breaks the API's contract on purpose: it must get a 4xx."""
        if event.kind == "register":
            url, payload = f"{self.settings.users_url}/api/register", {"user": {"email": "x"}}
        else:
            url = f"{self.settings.orders_url}/api/orders"
            payload = {"ssd_id": "one", "barcode": "", "quantity": "lots"}
        status, body = await self._post(url, payload, self.settings.service_token)
        outcome = "rejected" if 400 <= status < 500 else "accepted"
        self.stats[f"malformed.{outcome}"] += 1
        metrics.MALFORMED.labels(event.kind, outcome).inc()
        if outcome == "accepted":
            raise ServiceError(f"a malformed {event.kind} got HTTP {status}: {body}")

    async def _order(
        self,
        ssd_id: int,
        barcode: str,
        quantity: int,
        restock: bool = False,
        as_service: bool = False,
        token: str | None = None,
    ) -> None:
        status, body = await self._post(
            f"{self.settings.orders_url}/api/orders",
            {"ssd_id": ssd_id, "barcode": barcode, "quantity": quantity,
             "kind": "restock" if restock else "order"},
            self.settings.service_token if as_service else token or self.settings.service_token,
            # A retry after a lost answer must not order twice.
            idempotency_key=str(uuid.UUID(int=self.keys.getrandbits(128))),
        )  # fmt: skip
        if status == 409:
            self.stats["order.already_open"] += 1
            return
        self._expect(status, 201, body, "order")
        placed = self._read(Placed, body, "order")
        self.stats["order.restock" if restock else "order.random"] += 1
        log.info("order %s: SSD %s, %s x %s", placed.id, ssd_id, quantity, barcode)

    def _token(self, index: int) -> str | None:
        """The owner's token if this generator registered the SSD, else the service's."""
        return self.tokens.get(index) or self.settings.service_token

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
    def _read(model: type[M], body: dict, what: str) -> M:
        try:
            return answers.read(model, body, what)
        except answers.UnexpectedAnswer as exc:
            raise ServiceError(str(exc)) from None

    @staticmethod
    def _expect(status: int, wanted: int, body: dict, what: str) -> None:
        if status != wanted:
            raise ServiceError(f"{what}: HTTP {status}: {body.get('message', body)}", status)
