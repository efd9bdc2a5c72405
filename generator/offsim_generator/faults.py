"""The faults of the run, handed to the notifications service through NATS KV.

The scenario's phase and `PUT /api/control` decide the faults; the ones that act in the
notifications service (all but `malformed`, which acts here) are put in the KV bucket every
replica watches, whenever they change: at start, at a phase boundary, on a PUT. They carry the
run's seed, which picks the orders a share hits. When the run ends they are cleared, so a
stopped generator leaves no fault behind.
"""

from __future__ import annotations

import asyncio
import logging

from nats.js import JetStreamContext
from offsim_common import faults

from .engine import Engine

log = logging.getLogger(__name__)

# Real seconds between two looks at the scenario's faults (a phase boundary reaches the
# services this late at most).
EVERY_S = 0.25


class FaultSync:
    def __init__(self, js: JetStreamContext, engine: Engine, seed: int | None) -> None:
        self.js = js
        self.engine = engine
        self.seed = seed or 0
        self.published: faults.Faults | None = None
        self._lock = asyncio.Lock()

    def wanted(self) -> faults.Faults:
        current = self.engine.model.rates_at(self.engine.sim_now()).faults
        return faults.Faults(
            supplier_delay=current.supplier_delay,
            reject=current.reject,
            courier_spike=current.courier_spike,
            courier_spike_factor=current.courier_spike_factor,
            seed=self.seed,
        )

    async def sync(self) -> None:
        """Put the faults if they changed since the last put."""
        async with self._lock:
            wanted = self.wanted()
            if wanted != self.published:
                await faults.put(self.js, wanted)
                self.published = wanted
                log.info("faults for the notifications service: %s", wanted.model_dump())

    async def run(self) -> None:
        """Follow the scenario until cancelled; a failed put is tried again next time."""
        while True:
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("could not publish the faults: %r", exc)
            await asyncio.sleep(EVERY_S)

    async def clear(self) -> None:
        try:
            await faults.put(self.js, faults.Faults(seed=self.seed))
        except Exception as exc:
            log.warning("could not clear the faults: %r", exc)
