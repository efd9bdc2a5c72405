"""The population's events against the services.

- register: a new person with one or two devices (POST /api/register).
- random_order: the original's product-order event, a scatter-gather on orders.random, then
  POST /api/orders with a quantity of 1 to 4. Unlike the original, the product is one the SSD
  watches: a second orders.random request names the SSD the first one drew.
- consume: an SSD reports what it used of one of the products it watches (the registration
  answers list them) as a reading, on the device transport (OFFSIM_DEVICE_TRANSPORT): on NATS
  (ssds.<id>.readings), MQTT (ssds/<id>/readings), or `POST /api/ssds/{id}/consume`. Each
  reading carries the SSD's own counter as its id, so a reading delivered twice is applied
  once. The backend places the restock orders; the generator never does.

The decisions (when, which SSD and product, how many, who registers) come from the model; the
answers never feed back into them, so the same seed makes the same decisions. An SSD whose
registration has not succeeded yet has no id: its readings are counted as `unregistered`
and skipped (outcome `skipped`), as are those of an SSD whose products are not known.

A registered user's SSDs act with that user's bearer token; the original's random orders act
with the service credential (OFFSIM_SERVICE_TOKEN).

A service that is down or answers an error is logged and counted; the run goes on.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable

import aiohttp
import prometheus_client
from nats.aio.client import Client
from offsim_common import tracing
from offsim_common.events import RandomOrderRequest
from offsim_common.metrics import GENERATOR_EVENTS

from . import answers, metrics
from .answers import Consumed, M, Placed, Registered, SyntheticUsers
from .devices import Readings, reading_payload
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
        readings: Readings | None = None,
    ) -> None:
        self.settings = settings
        self.http = http
        self.nc = nc
        self.population = population
        # The device transport of the readings; None: POST /api/ssds/{id}/consume.
        self.readings = readings
        # Idempotency keys only: unseeded, so two runs with one seed never share a key.
        self.keys = random.Random()
        # By the SSD's index in the population: its id at the users service, its owner's
        # bearer token, the barcodes it watches (from its registration's answer) and the number
        # of its last reading (its reading ids: 1, 2, ...).
        self.ssd_ids: dict[int, int] = {}
        self.tokens: dict[int, str] = {}
        self.barcodes: dict[int, list[str]] = {}
        self.reading_ids: dict[int, int] = {}
        self.stats: Counter[str] = Counter()
        self._events: dict[str, Callable[[Event], Awaitable[None]]] = {
            "register": self.register,
            "random_order": self.random_order,
        }
        self._reading_failures = _Throttled(log, "readings failed")
        self._outcomes: dict[tuple[str, str], prometheus_client.Counter] = {}

    def perform(self, event: Event) -> Awaitable[object] | None:
        """Start sending one event, without waiting: a coroutine (a request, which the engine
        runs as a task), a future (a reading on its way to NATS or MQTT) or None (nothing to
        send). Never raises: failures are logged and counted when they land."""
        self.stats["events"] += 1
        if event.malformed:
            # Not a reading, order or registration: done right when it is refused (4xx).
            return self._performing(event.kind, self.malformed, event, done="rejected")
        if event.kind != "consume":
            return self._performing(event.kind, self._events[event.kind], event)
        reading = self._reading(event)
        if reading is None:
            self._counted("consume", "skipped")
            return None
        if self.readings is None:
            return self._performing("consume", self.consume, event.ssd, *reading)
        ssd_id, barcode, quantity, reading_id = reading
        future = self.readings.send(ssd_id, reading_payload(ssd_id, barcode, quantity, reading_id))
        future.add_done_callback(self._reading_landed)
        return future

    def _reading(self, event: Event) -> tuple[int, str, int, str] | None:
        """The reading a consume event is for the SSD: its id, the product among those it
        watches, the units, and the reading's id. None if it cannot be sent."""
        index = event.ssd
        ssd_id = self.ssd_ids.get(index)
        if ssd_id is None:
            self.stats["consume.unregistered"] += 1
            return None
        barcodes = self.barcodes.get(index)
        if not barcodes:
            self.stats["consume.unknown_products"] += 1
            return None
        barcode = barcodes[(event.slot % self.population.watched) % len(barcodes)]
        number = self.reading_ids.get(index, 0) + 1
        self.reading_ids[index] = number
        return ssd_id, barcode, event.quantity, str(number)

    def _reading_landed(self, future: asyncio.Future) -> None:
        if future.cancelled():
            outcome = "cancelled"
        elif (exc := future.exception()) is not None:
            outcome = "failed"
            self._reading_failures.warn(exc)
        else:
            outcome = "sent"
        self._counted("consume", outcome)

    def _counted(self, name: str, outcome: str) -> None:
        self.stats[f"{name}.{outcome}"] += 1
        counter = self._outcomes.get((name, outcome))
        if counter is None:
            counter = self._outcomes[name, outcome] = GENERATOR_EVENTS.labels(name, outcome)
        counter.inc()

    async def _performing(
        self, name: str, action: Callable[..., Awaitable[None]], *args: object, done: str = "sent"
    ) -> str:
        """Run one request, `action(*args)`; its outcome counted (`done` if it returns), a
        failure logged."""
        outcome = "failed"
        # Each event starts its own trace: the requests it makes, and all they cause, join it.
        with tracing.span(f"simulate {name}", attributes={"offsim.event": name}) as span:
            try:
                await action(*args)
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
                outcome = done
            finally:
                self._counted(name, outcome)
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
            self.barcodes[index] = device.watched
        log.debug("registered user %s with %d SSD(s)", registered.id, len(registered.devices))

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
                        made = self._read(SyntheticUsers, answer, "synthetic users")
                    except (ServiceError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                        self.stats["populate.failed"] += len(chunk)
                        log.warning("%d population users not registered: %s", len(chunk), exc)
                        break
                    for (_, ssds), user in zip(chunk, made.users, strict=True):
                        for index, device in zip(ssds, user.devices, strict=True):
                            self.ssd_ids[index] = device.id
                            self.barcodes[index] = device.watched
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
        await self._order(gathered.ssd_id, barcode, event.quantity)

    async def consume(
        self, index: int, ssd_id: int, barcode: str, quantity: int, reading_id: str
    ) -> None:
        """A reading through the users service's HTTP API (the `http` transport). The answer
        lists the restock orders the backend placed; the SSD orders nothing itself."""
        status, body = await self._post(
            f"{self.settings.users_url}/api/ssds/{ssd_id}/consume",
            {"barcode": barcode, "quantity": quantity, "reading_id": reading_id},
            self._token(index),
        )
        if status == 404 and "barcode" not in (body.get("details") or {}):
            self.stats["consume.gone"] += 1
            self.ssd_ids.pop(index, None)  # the SSD is gone (database reset)
        elif status == 401 and self.tokens.pop(index, None):
            # The owner's token is gone: the service credential from the next reading on.
            self.stats["consume.token_gone"] += 1
        self._expect(status, 200, body, "consume")
        consumed = self._read(Consumed, body, "consume")
        self.stats["consume.units"] += sum(item.consumed for item in consumed.stock)
        self.stats["consume.restocked"] += len(consumed.restock)

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

    async def _order(self, ssd_id: int, barcode: str, quantity: int) -> None:
        """The original's random order, with the service credential."""
        status, body = await self._post(
            f"{self.settings.orders_url}/api/orders",
            {"ssd_id": ssd_id, "barcode": barcode, "quantity": quantity, "kind": "order"},
            self.settings.service_token,
            # A retry after a lost answer must not order twice.
            idempotency_key=str(uuid.UUID(int=self.keys.getrandbits(128))),
        )
        if status == 409:
            self.stats["order.already_open"] += 1
            return
        self._expect(status, 201, body, "order")
        placed = self._read(Placed, body, "order")
        self.stats["order.random"] += 1
        log.debug("order %s: SSD %s, %s x %s", placed.id, ssd_id, quantity, barcode)

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


class _Throttled:
    """A warning at most every `every_s` seconds, with how many were held back: thousands of
    readings a second failing together (NATS down) make a line every few seconds, not thousands."""

    def __init__(self, logger: logging.Logger, what: str, every_s: float = 5.0) -> None:
        self.logger = logger
        self.what = what
        self.every_s = every_s
        self._next = 0.0
        self._held = 0

    def warn(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return
        held, self._held, self._next = self._held, 0, now + self.every_s
        more = f" (and {held} more since the last report)" if held else ""
        self.logger.warning("%s: %s%s", self.what, exc or type(exc).__name__, more)
