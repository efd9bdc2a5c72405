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


def task_run(task: str, params: dict[str, str], workspaces=("source",)):
    folders = {name: ROOT for name in workspaces}
    return tekton_task.TaskRun(engine=None, task=task, params=params, workspaces=folders)


def test_the_make_task_step_is_read_from_the_task_with_params_resolved():
    (step,) = task_run("make", {"target": "lint"}).steps()
    assert step.image in standin_names()
    assert step.workdir == "/workspace/source"
    assert step.env["TARGET"] == "lint" and step.env["CI"] == "true"
    assert 'make "$TARGET"' in step.script
    assert "$(" not in step.image + step.workdir + "".join(step.env.values())


def test_the_build_task_step_resolves_results_workspaces_and_its_volume():
    params = {"image": "localhost:5000/offsim/offsim-users", "tag": "abc", "member": "users"}
    (step,) = task_run("build-image", params).steps()
    assert step.image in standin_names() and step.privileged
    assert step.env["RESULT_IMAGE_DIGEST"] == "/tekton/results/IMAGE_DIGEST"
    # An optional workspace left unbound, as the pipeline leaves dockerconfig without a Secret.
    assert step.env["DOCKERCONFIG_BOUND"] == "false" and step.env["DOCKERCONFIG_PATH"] == ""
    assert step.mounts == {"varlibcontainers": "/var/lib/containers"}
    assert "$(" not in "".join(step.env.values())


def test_a_task_run_refuses_what_tekton_would():
    with pytest.raises(tekton_task.TaskFailed, match="no value"):
        task_run("build-image", {"tag": "abc", "member": "users"}).steps()
    with pytest.raises(tekton_task.TaskFailed, match="no such params"):
        task_run("make", {"target": "lint", "targte": "x"}).steps()
    with pytest.raises(tekton_task.TaskFailed, match="not optional"):
        task_run("make", {"target": "lint"}, workspaces=()).steps()


def test_every_step_image_of_the_pipeline_has_a_standin():
    """The pipeline runs for real in the check: each step's image (its Task's default)."""
    for path in sorted(tekton_task.TASKS.glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())["spec"]
        defaults = {p["name"]: p.get("default") for p in spec.get("params", [])}
        for step in spec["steps"]:
            image = step["image"]
            if image.startswith("$(params."):
                image = defaults[image.removeprefix("$(params.").removesuffix(")")]
            assert image in standin_names(), f"{path.name}: {step['name']}: {image}"


def test_the_pipeline_run_resolves_every_param_and_result_it_passes_on():
    pipeline = pytest.importorskip("tekton_pipeline")
    run = pipeline.PipelineRun(None, {"repo-url": "file:///srv/git/x.git", "registry": "r/o"},
                               {"source": ROOT}, [])  # fmt: skip
    files = pipeline.task_files()
    for task in run.spec["tasks"]:
        spec = yaml.safe_load(files[task["taskRef"]["name"]].read_text())["spec"]
        for param in task.get("params", []):
            assert "$(" not in run.resolve(param["value"]), (task["name"], param["name"])
        run.results[task["name"]] = {r["name"]: f"<{r['name']}>" for r in spec.get("results", [])}
    record = run.spec["tasks"][-1]
    assert run.runs(record)
    images = run.resolve(next(p["value"] for p in record["params"] if p["name"] == "images"))
    assert "offsim-users=<IMAGE_URL>@<IMAGE_DIGEST>" in images.split()
    run.params["deploy-branch"] = ""
    assert not run.runs(record)


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


def test_the_pipeline_run_runs_each_task_after_what_it_needs():
    """Tasks start once their runAfter and the tasks whose results they take are done (the
    builds two at a time); the test task is left out and counts as done."""
    pipeline = pytest.importorskip("tekton_pipeline")
    run = pipeline.PipelineRun(None, {"repo-url": "file:///srv/git/x.git", "registry": "r/o"},
                               {"source": ROOT}, [])  # fmt: skip
    order, running, most = [], set(), [0]

    def run_task(task):
        running.add(task["name"])
        most[0] = max(most[0], len(running))
        assert run.needs(task) - {"test"} <= set(order), task["name"]
        spec = yaml.safe_load(run.files[task["taskRef"]["name"]].read_text())["spec"]
        run.results[task["name"]] = {r["name"]: "x" for r in spec.get("results", [])}
        threading.Event().wait(0.05)  # long enough for a second task to start beside it
        running.discard(task["name"])
        order.append(task["name"])

    run.run_task = run_task
    run.run()
    assert order[:2] == ["fetch-source", "lint"] and order[-1] == "record-images"
    assert "test" not in order and len(order) == len(run.spec["tasks"]) - 1
    assert run.needs(run.spec["tasks"][-1]) >= {t for t in order if t.startswith("build-")}
    assert most[0] == 2
