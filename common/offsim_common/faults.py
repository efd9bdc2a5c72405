"""The faults the notifications service injects, as they cross from the generator to it.

One JSON document (`Faults`) under `subjects.FAULTS_KEY` in the KV bucket
`subjects.FAULTS_BUCKET`: the generator puts it whenever its scenario's phase or a
`PUT /api/control` changes a fault, and every notifications replica watches it, so a change
reaches all of them at once, with no restart.

Which order a share hits is decided by `hits`, a hash of the seed, the fault and the order id:
every replica, and every redelivery of one order, gives the same answer, and the same seed makes
the same orders fail from run to run.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from typing import Annotated

from nats.js import JetStreamContext, api
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import subjects

log = logging.getLogger(__name__)

Share = Annotated[float, Field(ge=0, le=1)]


class Faults(BaseModel):
    """No fault at all by default."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    supplier_delay: Annotated[float, Field(ge=0, le=100)] = Field(
        1.0, description="the supplier's delay (pending -> shipped) is multiplied by this"
    )
    reject: Share = Field(0.0, description="share of orders the supplier rejects (cancelled)")
    courier_spike: Share = Field(0.0, description="share of deliveries the courier delays")
    courier_spike_factor: Annotated[float, Field(ge=1, le=1000)] = Field(
        10.0, description="how much longer a delayed delivery takes (a multiplier)"
    )
    seed: int = Field(0, description="picks which orders a share hits (the generator's seed)")


def draw(seed: int, name: str, order_id: int) -> float:
    """A number in [0, 1) for this order, the same on every call, in every replica: a hash,
    so that a redelivery or another replica decides as the first did, at a few microseconds
    (a seeded `random.Random` costs several times that, on every message)."""
    digest = hashlib.blake2b(f"{seed}:{name}:{order_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest) / 2**64


def hits(seed: int, fault: str, order_id: int, share: float) -> bool:
    """Whether `fault`, at this `share`, hits this order: the same answer on every call."""
    if share <= 0:
        return False
    if share >= 1:
        return True
    return draw(seed, fault, order_id) < share


async def bucket(js: JetStreamContext) -> KeyValue:
    """The faults bucket, made if missing (whichever side starts first). Only the latest value
    matters: one revision per key."""
    try:
        return await js.key_value(subjects.FAULTS_BUCKET)
    except BucketNotFoundError:
        return await js.create_key_value(
            api.KeyValueConfig(bucket=subjects.FAULTS_BUCKET, history=1)
        )


async def put(js: JetStreamContext, faults: Faults) -> None:
    kv = await bucket(js)
    await kv.put(subjects.FAULTS_KEY, faults.model_dump_json().encode())


async def read(kv: KeyValue) -> Faults:
    try:
        entry = await kv.get(subjects.FAULTS_KEY)
    except KeyNotFoundError:  # never set, or deleted: no fault
        return Faults()
    return parse(entry.value)


def parse(data: bytes | None) -> Faults:
    """A stored document; a bad one is logged and read as no fault (it never stops a replica)."""
    if not data:
        return Faults()
    try:
        return Faults.model_validate_json(data)
    except ValidationError as exc:
        log.error("ignoring invalid faults in %s: %s", subjects.FAULTS_BUCKET,
                  exc.errors(include_url=False))  # fmt: skip
        return Faults()


class FaultsView:
    """The faults as this process last saw them, kept current by `follow`."""

    def __init__(self, faults: Faults | None = None) -> None:
        self.current = faults or Faults()

    def set(self, faults: Faults) -> None:
        if faults != self.current:
            log.info("faults now %s", faults.model_dump())
        self.current = faults

    async def follow(self, js: JetStreamContext, ready: Callable[[], None] | None = None) -> None:
        """Read the stored faults, then apply every change until cancelled. A lost connection
        is waited out: the watch starts again and reads the latest value first."""
        while True:
            try:
                kv = await bucket(js)
                watcher = await kv.watch(subjects.FAULTS_KEY)
                try:
                    async for entry in watcher:
                        if entry is None:  # the stored value (if any) has been delivered
                            if ready is not None:
                                ready()
                                ready = None
                            continue
                        deleted = entry.operation in ("DEL", "PURGE")
                        self.set(Faults() if deleted else parse(entry.value))
                finally:
                    await watcher.stop()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("watching the faults failed (%r); watching again", exc)
                await asyncio.sleep(1.0)
