"""offsim-notifications: the supplier and courier, as JetStream consumers; `/api/health` on
HTTP_PORT (default 8083)."""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import AsyncExitStack

from offsim_common import bus, tracing
from offsim_common.config import Settings
from offsim_common.logs import setup_logging
from offsim_common.web import event_loop, start_probe_server

from .courier import consumers

log = logging.getLogger("offsim_notifications")


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run until `stop` is set, then stop fetching and drain the connection."""
    async with AsyncExitStack() as stack:
        nc = await bus.connect(settings.nats_url, name="notifications")
        stack.push_async_callback(nc.drain)
        js = nc.jetstream()
        await bus.ensure_streams(js, settings.stream_replicas)
        tasks = await bus.start_consumers(js, consumers(js, settings), settings.stream_replicas)
        stack.push_async_callback(bus.stop_tasks, tasks)
        probe = await start_probe_server(nc, settings.http_port, "notifications", tasks)
        stack.push_async_callback(probe.cleanup)
        log.info("notifications ready (sim speed x%s)", settings.sim_speed)
        await stop.wait()


async def amain() -> None:
    settings = Settings.from_env(http_port=8083)
    setup_logging(settings.log_level, "notifications")
    traces = tracing.start_tracing(settings, "offsim-notifications")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await serve(settings, stop)
    finally:
        if traces is not None:
            traces.shutdown()


def main() -> None:
    with asyncio.Runner(loop_factory=event_loop) as runner:
        runner.run(amain())


if __name__ == "__main__":
    main()
