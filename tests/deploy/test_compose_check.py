"""What `make compose-check` builds and runs must follow the files it proves: the stand-ins
carry exactly the base-image names the Dockerfile, the compose files and the Tekton Task use,
and the Task's step is read from the Task with every parameter resolved. (The check itself runs
in `.ci/run`, not here: it needs a container engine.)"""

from __future__ import annotations

import sys

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
