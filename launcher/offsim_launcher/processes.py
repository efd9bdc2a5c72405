"""Child processes for `offsim up`: each service runs as its own process, as in a container."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MAX_RESTARTS = 5


@dataclass
class Child:
    name: str
    module: str
    env: dict[str, str]
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    stopping: bool = field(default=False, repr=False)

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:  # noqa: ASYNC230 - a local append, instant
            # A session of its own: Ctrl-C reaches only the launcher, which stops children in
            # order (generator first, servers last).
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", self.module,
                env={**os.environ, **self.env}, stdout=out, stderr=out, start_new_session=True,
            )  # fmt: skip

    async def stop(self, grace: float = 10.0) -> None:
        self.stopping = True
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), grace)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()

    async def supervise(self, on_event) -> None:
        """Restart the child if it dies on its own, a few times, then give up and say so."""
        while True:
            assert self.process is not None
            code = await self.process.wait()
            if self.stopping:
                return
            if self.restarts >= MAX_RESTARTS:
                on_event(f"{self.name} exited ({code}) too often; see {self.log_path}")
                return
            self.restarts += 1
            on_event(f"{self.name} exited ({code}); restarting (see {self.log_path})")
            await asyncio.sleep(1)
            await self.start()
