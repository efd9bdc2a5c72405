"""What `make compose-check` builds and runs must follow the files it proves: the stand-ins
carry exactly the base-image names the Dockerfile, the compose files and the Tekton Task use,
the Task's step is read from the Task with every parameter resolved, and the clients it sends
into the containers to prove authentication speak their protocols. (The check itself runs in
`.ci/run`, not here: it needs a container engine.)"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import threading

import pytest
import yaml

from tests.deploy.workspace import DOCKERFILE, ROOT

sys.path.insert(0, str(ROOT / "deploy" / "compose-check"))
engine = pytest.importorskip("engine")
tekton_task = pytest.importorskip("tekton_task")


def standin_names() -> set[str]:
    return {name for names in engine.STANDIN_IMAGES.values() for name in names}


def official(short: str) -> str:
    """The name Docker gives a short Docker Hub name."""
    return short if "/" in short else f"docker.io/library/{short}"


def test_every_standin_folder_exists_with_a_containerfile():
    for folder in engine.STANDIN_IMAGES:
        assert (engine.STANDINS / folder / "Containerfile").is_file(), folder


def test_standins_stand_in_for_the_dockerfile_base_image():
    line = next(
        line for line in (ROOT / DOCKERFILE).read_text().splitlines() if "PYTHON_IMAGE=" in line
    )
    assert official(line.split("=", 1)[1]) == engine.PYTHON_IMAGE
    assert engine.PYTHON_IMAGE in standin_names()


def test_standins_stand_in_for_every_image_compose_pulls():
    """Every image of the default stack that is not built here has a stand-in, and so has
    every one the prod file adds (its other NATS nodes)."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    pulled = {official(s["image"]) for s in services.values() if "build" not in s}
    assert pulled == {"docker.io/library/postgres:18", "docker.io/library/nats:2.15.1-alpine"}
    assert pulled <= standin_names()
    prod = yaml.safe_load((ROOT / "docker-compose.prod.yml").read_text())["services"]
    added = {official(s["image"]) for name, s in prod.items() if name not in services}
    assert added == {"docker.io/library/nats:2.15.1-alpine"}


def test_the_prod_cluster_check_reads_the_nodes_and_streams_it_proves():
    """The check stops a NATS node by its container's name and reads /jsz on the monitoring
    port the prod nodes listen on; the streams it wants at three replicas are offsim's."""
    from offsim_common import subjects

    check = pytest.importorskip("check")
    assert set(check.OFFSIM_STREAMS) == {
        subjects.ORDERS_STREAM, subjects.USERS_STREAM, subjects.READINGS_STREAM,
        subjects.DEAD_LETTER_STREAM,
    }  # fmt: skip
    conf = (ROOT / "deploy" / "nats" / "cluster.conf").read_text()
    assert "http: 0.0.0.0:8222" in conf and check.JSZ_URL.startswith("http://127.0.0.1:8222/")
    assert check.container("nats-2") == f"{check.PROJECT}-nats-2-1"


def test_the_make_task_step_is_read_from_the_task_with_params_resolved():
    image, workdir, env, script = tekton_task.task_step("lint")
    assert image in standin_names()
    assert workdir == tekton_task.WORKSPACE
    assert env["TARGET"] == "lint" and env["CI"] == "true"
    assert 'make "$TARGET"' in script
    assert "$(" not in image + workdir + "".join(env.values())


# --- what proves authentication -------------------------------------------------------------


def test_the_postgres_standin_reads_what_compose_gives_postgres():
    """Every POSTGRES_* variable the compose file sets is one the stand-in's entrypoint reads
    (the password as a file among them)."""
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["postgres"]
    entrypoint = (engine.STANDINS / "postgres" / "docker-entrypoint.sh").read_text()
    assert "POSTGRES_PASSWORD_FILE" in service["environment"]
    for name in service["environment"]:
        assert f"${{{name}" in entrypoint or f'"${name}"' in entrypoint, name


def test_the_in_container_clients_are_python():
    check = pytest.importorskip("check")
    for script in (check.IN_CONTAINER_CLIENT, check.MQTT_CLIENT, check.NATS_AUTH_CLIENT):
        ast.parse(script)


def test_the_refused_subject_is_one_the_generator_may_not_publish():
    """The check's proof of permissions: the generator's user publishes where only the
    notifications service may."""
    from offsim_common import nats_rights

    check = pytest.importorskip("check")

    def allowed(component: str) -> bool:
        patterns = nats_rights.RIGHTS[component].publish_allow()
        return any(_matches(pattern, check.FORBIDDEN_SUBJECT) for pattern in patterns)

    assert not allowed("generator") and allowed("notifications")


def _matches(pattern: str, subject: str) -> bool:
    """A NATS subject pattern (`*` one token, `>` the rest) against a subject."""
    wanted, tokens = pattern.split("."), subject.split(".")
    for i, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > i
        if i >= len(tokens) or token not in ("*", tokens[i]):
            return False
    return len(tokens) == len(wanted)


def _packet(conn: socket.socket) -> tuple[int, bytes]:
    """One MQTT control packet: its first byte and its body."""
    kind = conn.recv(1)[0]
    length, shift = 0, 0
    while True:
        digit = conn.recv(1)[0]
        length += (digit & 127) << shift
        shift += 7
        if not digit & 128:
            break
    body = b""
    while len(body) < length:
        body += conn.recv(length - len(body))
    return kind, body


def _string(body: bytes, at: int) -> tuple[bytes, int]:
    size = int.from_bytes(body[at : at + 2], "big")
    return body[at + 2 : at + 2 + size], at + 2 + size


@pytest.mark.parametrize("mode", ["anonymous", "device"])
def test_the_mqtt_client_connects_as_the_devices_user_or_none(mode, tmp_path):
    """The check's MQTT client against a broker that records what it gets: an MQTT 3.1.1
    CONNECT without a user, or with the container's MQTT_USER and the password in its file,
    then (as the user) a QoS 1 PUBLISH of the reading."""
    check = pytest.importorskip("check")
    password = tmp_path / "mqtt-password"
    password.write_text("s3cret-Pass_word\n")
    received: list[tuple[int, bytes]] = []
    server = socket.create_server(("127.0.0.1", 0))

    def broker() -> None:
        conn, _ = server.accept()
        with conn:
            received.append(_packet(conn))
            conn.sendall(bytes.fromhex("20020000" if mode == "device" else "20020005"))
            if mode == "device":
                received.append(_packet(conn))
                conn.sendall(bytes.fromhex("40020001"))

    thread = threading.Thread(target=broker, daemon=True)
    thread.start()
    env = {**os.environ, "MQTT_URL": f"mqtt://127.0.0.1:{server.getsockname()[1]}",
           "MQTT_USER": "device", "MQTT_PASSWORD_FILE": str(password)}  # fmt: skip
    args = [mode] if mode == "anonymous" else [mode, "ssds/7/readings", '{"ssd_id": 7}']
    out = subprocess.run([sys.executable, "-c", check.MQTT_CLIENT, *args], env=env,
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    thread.join(timeout=10)
    server.close()
    assert out.returncode == 0, out.stderr
    kind, body = received[0]
    assert kind == 0x10
    name, at = _string(body, 0)
    assert name == b"MQTT" and body[at] == 4
    flags = body[at + 1]
    client_id, at = _string(body, at + 4)
    assert client_id
    if mode == "anonymous":
        assert flags == 0x02 and at == len(body)
        assert out.stdout.strip() == "20020005"
        return
    assert flags == 0xC2
    user, at = _string(body, at)
    secret, at = _string(body, at)
    assert (user, secret, at) == (b"device", b"s3cret-Pass_word", len(body))
    kind, body = received[1]
    assert kind == 0x32
    topic, at = _string(body, 0)
    assert topic == b"ssds/7/readings" and body[at : at + 2] == b"\x00\x01"
    assert body[at + 2 :] == b'{"ssd_id": 7}'
    assert out.stdout.split() == ["20020000", "40020001"]
