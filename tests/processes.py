"""A service run as a real process, as deployed: started, probed until healthy, stopped."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from offsim_launcher import embedded

from tests.conftest import eventually


@dataclass
class Service:
    name: str
    module: str
    env: dict[str, str]
    log: Path
    port: int = field(default_factory=embedded.free_port)
    proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, http: aiohttp.ClientSession) -> None:
        """Start the process and return once its health probe answers 200."""
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", self.module,
                env={**os.environ, **self.env, "HTTP_PORT": str(self.port)},
                stdout=out, stderr=out, start_new_session=True,
            )  # fmt: skip

        async def healthy() -> bool:
            if self.proc.returncode is not None:
                raise AssertionError(f"{self.name} exited: {self.log.read_text()[-3000:]}")
            try:
                async with http.get(f"{self.url}/api/health") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(healthy, within=30, interval=0.1)

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            await self.kill()
