"""A TCP proxy in the test's own loop, standing between a service and a real server, to take
the server away on demand without touching the server the other tests share.

- ``refuse()``: every open connection is cut and the port stops listening (connections are
  refused), as when the server is stopped.
- ``blackhole()``: every open connection is cut; new ones are accepted and never answered, as
  when the server hangs or the network drops its packets.
- ``restore()``: back to forwarding.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_CHUNK = 65536


class Proxy:
    def __init__(self, target_url: str) -> None:
        self.target = urlsplit(target_url)
        # A libpq-style URL may name a Unix socket directory (and port) in its query instead.
        query = dict(parse_qsl(self.target.query))
        self._socket_dir = (
            query.pop("host", None) if query.get("host", "").startswith("/") else None
        )
        self._target_port = int(query.pop("port", 0) or self.target.port or 5432)
        self._query = urlencode(query)
        self.port = 0
        self.mode = "forward"
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        """The target's URL with the proxy's address in place of the server's."""
        netloc = self.target.netloc.rsplit("@", 1)
        hostport = f"127.0.0.1:{self.port}"
        netloc = f"{netloc[0]}@{hostport}" if len(netloc) == 2 else hostport
        return urlunsplit(self.target._replace(netloc=netloc, query=self._query))

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def refuse(self) -> None:
        self.mode = "refuse"
        if self._server is not None:
            self._server.close()
            self._server = None
        self._cut()

    async def blackhole(self) -> None:
        self.mode = "blackhole"
        self._cut()
        if self._server is None:
            await self.start()

    async def restore(self) -> None:
        self.mode = "forward"
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self.mode != "forward":
            return  # blackhole: held open, never answered (until cut)
        try:
            if self._socket_dir:
                up_reader, up_writer = await asyncio.open_unix_connection(
                    f"{self._socket_dir}/.s.PGSQL.{self._target_port}"
                )
            else:
                up_reader, up_writer = await asyncio.open_connection(
                    self.target.hostname, self._target_port
                )
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await src.read(_CHUNK):
                dst.write(data)
                await dst.drain()
        dst.transport.abort()
