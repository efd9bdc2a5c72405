"""The images: one Dockerfile at the root for every member, given only MEMBER, linted by hadolint,
a multi-stage build (a `dev` target with live reload, a small non-root `prod` target) that
installs the member and the workspace members it needs, at the versions constraints.txt pins.

What a build of MEMBER installs and runs is worked out by tools/image_member.py in the `select`
stage; these tests run that step, and the shell of the `build` and `dev` stages, on the real
workspace for every member, and the helper's runtime commands (`run`, `dev`, `health`) against
fake executables and a real HTTP server. No image is built: there is no engine on CI.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.deploy.workspace import (
    DOCKERFILE,
    ROOT,
    Member,
    built_members,
    closure,
    members,
    run,
    venv_tool,
)

BUILT = built_members()
HELPER = ROOT / "tools" / "image_member.py"
STAGES = ["base", "select", "build", "dev", "install", "prod"]


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(path: Path) -> tuple[list[tuple[str, str]], dict[str, Stage]]:
    """The instructions before the first FROM, and the stages by name, in order, with their
    instructions (continuations joined, comments dropped). Enough for the checks below;
    hadolint does the real parsing."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):  # a comment, also inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    preamble: list[tuple[str, str]] = []
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in filter(str.strip, logical):
        keyword, _, args = line.strip().partition(" ")
        keyword, args = keyword.upper(), " ".join(args.split())
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", args, re.IGNORECASE)
            assert match, f"{path}: every stage is named ({line!r})"
            current = stages[match[2]] = Stage(match[2], match[1])
        elif current is None:
            preamble.append((keyword, args))
        else:
            current.instructions.append((keyword, args))
    return preamble, stages


PREAMBLE, STAGE = parse_dockerfile(ROOT / DOCKERFILE)


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"exec form expected, got {args!r}"
    return value


def copies(stage: Stage) -> list[tuple[str | None, str, str]]:
    """(the stage copied from or None for the build context, source, destination)."""
    found = []
    for args in stage.all("COPY"):
        words = shlex.split(args)
        flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--"))
        source, destination = [w for w in words if not w.startswith("--")]
        found.append((flags.get("from"), source, destination))
    return found


def run_in_stage(stage: Stage, cwd: Path, fakes: Path) -> list[list[str]]:
    """Run a stage's RUN instructions with sh in `cwd`, the programs they call being fakes that
    record their arguments; returns each fake call."""
    log = fakes / "calls.jsonl"
    env = {"PATH": f"{fakes}:{os.environ['PATH']}", "CALLS": str(log)}
    for command in stage.all("RUN"):
        result = subprocess.run(["sh", "-c", command], cwd=cwd, env=env, capture_output=True)
        assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in log.read_text().splitlines()]


def fake(bin_dir: Path, name: str) -> None:
    """An executable that appends its name and arguments to $CALLS."""
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "with open(os.environ['CALLS'], 'a') as log:\n"
        "    log.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + '\\n')\n"
    )
    path.chmod(0o755)


def helper(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """tools/image_member.py, with no HTTP_PORT of the caller's."""
    clean = {k: v for k, v in os.environ.items() if k != "HTTP_PORT"}
    return subprocess.run(
        [sys.executable, str(HELPER), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**clean, **(env or {})},
    )


def select(member: str, out: Path) -> subprocess.CompletedProcess[str]:
    """The `select` stage's RUN, with the context and the output directory it names mapped to
    the checkout and `out` (the stage's shape is checked in test_select_runs_the_helper)."""
    return helper("select", member, str(ROOT), str(out))


@pytest.fixture(scope="module", params=BUILT, ids=lambda m: m.folder)
def member(request) -> Member:
    return request.param


@pytest.fixture(scope="module")
def selected(member: Member, tmp_path_factory) -> tuple[Path, dict]:
    """What the `select` stage writes for the member: /image, and image.json read."""
    out = tmp_path_factory.mktemp(member.folder) / "image"
    result = select(member.folder, out)
    assert result.returncode == 0, result.stderr
    return out, json.loads((out / "image.json").read_text())


def compose_services(file: str) -> dict[str, tuple[str, dict]]:
    """A compose file's services, by the MEMBER docker-compose.yml builds them from."""
    built = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    services = yaml.safe_load((ROOT / file).read_text())["services"]
    return {
        s["build"]["args"]["MEMBER"]: (name, services[name])
        for name, s in built.items()
        if "build" in s and name in services
    }


# --- the file ---------------------------------------------------------------------------------


def test_one_dockerfile_for_every_member():
    assert (ROOT / DOCKERFILE).is_file()
    copies_left = [f for f in members() if (ROOT / f / "Dockerfile").exists()]
    assert not copies_left, f"per-member Dockerfiles are back: {copies_left}"


def test_hadolint_clean():
    result = run([venv_tool("hadolint"), "--no-color", "--format", "tty", DOCKERFILE])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_bad_dockerfile_fails(tmp_path):
    """The lint is not vacuous: an unpinned base image and an unpinned pip install fail."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    result = run([venv_tool("hadolint"), "--no-color", str(bad)])
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3013" in result.stdout


def test_stages_dev_and_prod_prod_last():
    assert list(STAGE) == STAGES, "prod is the default target: the last stage"
    assert STAGE["base"].base == "${PYTHON_IMAGE}"
    assert all(STAGE[name].base == "base" for name in STAGES[1:])


def test_base_image_is_python_slim():
    assert ("ARG", "PYTHON_IMAGE=docker.io/library/python:3.11-slim-trixie") in PREAMBLE


def test_member_is_the_only_build_argument():
    """A build needs MEMBER and nothing else (PYTHON_IMAGE has a default)."""
    args = [args for stage in STAGE.values() for args in stage.all("ARG")]
    assert args == ["MEMBER"] and [k for k, _ in PREAMBLE] == ["ARG"]


def test_prod_and_dev_run_as_numeric_non_root():
    for name in ("dev", "prod"):
        users = STAGE[name].all("USER")
        assert users and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]), (
            f"{name} runs as a numeric non-root user (so Kubernetes can check runAsNonRoot)"
        )
    assert "--uid 10001" in " ".join(STAGE["base"].all("RUN"))


def test_only_select_sees_the_whole_context():
    """The context reaches the other stages only through what `select` picked, so an edit to
    another member invalidates nothing after it; base takes the helper, nothing else."""
    assert copies(STAGE["select"]) == [(None, ".", "/context")]
    assert copies(STAGE["base"]) == [(None, "tools/image_member.py", "/usr/local/bin/offsim-image")]
    for name in ("build", "dev"):
        assert all(origin == "select" for origin, _, _ in copies(STAGE[name])), name
    assert {origin for origin, _, _ in copies(STAGE["prod"])} == {"install", "select"}


def test_select_runs_the_helper():
    (command,) = STAGE["select"].all("RUN")
    assert shlex.split(command) == ["offsim-image", "select", "${MEMBER}", "/context", "/image"]


def test_prod_installs_only_built_wheels():
    """The build stage makes wheels with the constraints; `install` puts them, with no index,
    into a virtual environment without pip, and prod copies only that environment: no
    source and no build tools, only runtime dependencies."""
    build_runs = " ".join(STAGE["build"].all("RUN"))
    assert "pip wheel --wheel-dir /wheels" in build_runs and "-c constraints.txt" in build_runs
    install = STAGE["install"]
    assert copies(install) == [("build", "/wheels", "/wheels")]
    (command,) = install.all("RUN")
    assert "python -m venv --without-pip /opt/offsim" in command
    assert "pip --python /opt/offsim/bin/python install --no-index /wheels/*.whl" in command
    assert "watchfiles" not in command
    prod = STAGE["prod"]
    assert copies(prod) == [
        ("install", "/opt/offsim", "/opt/offsim"),
        ("select", "/image/image.json", "/etc/offsim/image.json"),
    ]
    assert not prod.all("RUN"), "prod runs nothing at build time: it only copies"
    assert any(env.startswith("PATH=/opt/offsim/bin:") for env in prod.all("ENV"))


def test_prod_health_check_and_command():
    prod = STAGE["prod"]
    (health,) = prod.all("HEALTHCHECK")
    options, _, command = health.partition(" CMD ")
    assert exec_form(command) == ["offsim-image", "health"]
    assert "--timeout=3s" in options and "--start-period=20s" in options
    assert exec_form(prod.all("CMD")[-1]) == ["offsim-image", "run"]


def test_dev_installs_editable_with_watchfiles():
    dev = STAGE["dev"]
    assert copies(dev) == [
        ("select", "/image/deps/", "./"),
        ("select", "/image/src/", "./"),
        ("select", "/image/image.json", "/etc/offsim/image.json"),
    ]
    runs = " ".join(dev.all("RUN"))
    assert "pip install -c constraints.txt watchfiles" in runs, "pinned by constraints.txt"
    assert exec_form(dev.all("CMD")[-1]) == ["offsim-image", "dev"]


def test_watchfiles_is_pinned():
    constraints = (ROOT / "constraints.txt").read_text()
    assert re.search(r"^watchfiles==\S+$", constraints, re.MULTILINE)


def test_dockerignore_keeps_workspace_and_drops_local_state():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for local in (".git", ".venv", "node_modules", ".offsim", ".env", "**/__pycache__"):
        assert local in patterns, f".dockerignore should exclude {local}"
    assert not any(p.startswith("!") for p in patterns)
    for needed in ["constraints.txt", "workspace.toml", "tools", *members()]:
        assert needed not in patterns and f"{needed}/" not in patterns, needed


# --- what a build of each member selects, installs and runs -----------------------------------


def test_select_picks_the_member_and_what_it_needs(member, selected):
    out, info = selected
    needed = closure(member.folder)
    assert "common" in needed and info["members"][0] == "common"
    assert set(info["members"]) == set(needed)
    assert {p.name for p in (out / "src").iterdir()} == {"constraints.txt", *needed}
    for folder in needed:
        assert (out / "src" / folder / "pyproject.toml").is_file(), folder
    assert (out / "src" / "constraints.txt").read_text() == (ROOT / "constraints.txt").read_text()
    assert info["member"] == member.folder and info["distribution"] == member.distribution


def test_the_image_runs_what_compose_runs(member, selected):
    """The image's command is the member's console script; compose runs the same (plus flags),
    and the port the health check probes is the HTTP_PORT compose gives the service."""
    _, info = selected
    assert info["command"][0] in member.scripts
    _, service = compose_services("docker-compose.yml")[member.folder]
    assert service["command"][: len(info["command"])] == info["command"]
    port = service["environment"].get("HTTP_PORT")
    assert info["http_port"] == (int(port) if port else None)
    assert (info["http_port"] is None) == (member.folder in {"etl", "launcher"})


def test_build_and_dev_install_exactly_the_selected_members(member, selected, tmp_path):
    """The shell of the build and dev stages, run in what `select` wrote (the stages copy it to
    WORKDIR /src), with a fake pip: the dependencies first, then wheels of every needed member
    without their dependencies (each editable in dev)."""
    out, info = selected
    needed = {f"./{folder}/" for folder in info["members"]}
    fake(tmp_path / "bin", "pip")
    deps, wheel = run_in_stage(STAGE["build"], out / "src", tmp_path / "bin")
    assert deps == ["pip", "wheel", "--wheel-dir", "/wheels", "-c", "constraints.txt", "-r",
                    "requirements.txt"]  # fmt: skip
    assert wheel[:4] == ["pip", "wheel", "--wheel-dir", "/wheels"] and wheel[4] == "--no-deps"
    assert set(wheel[5:]) == needed and len(wheel[5:]) == len(needed)
    (tmp_path / "bin" / "calls.jsonl").unlink()
    deps, install = run_in_stage(STAGE["dev"], out / "src", tmp_path / "bin")
    assert deps == ["pip", "install", "-c", "constraints.txt", "watchfiles", "-r",
                    "requirements.txt"]  # fmt: skip
    assert install[:5] == ["pip", "install", "--no-deps", "-c", "constraints.txt"]
    editable = install[5:]
    assert editable[::2] == ["--editable"] * len(needed) and set(editable[1::2]) == needed


def test_select_writes_the_third_party_requirements(member, selected):
    """deps/ holds the requirements of the selected members that are not workspace members,
    so the dependency layer changes only when a dependency does."""
    out, info = selected
    projects = {
        folder: tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["project"]
        for folder in info["members"]
    }
    ours = {m.distribution for m in members().values()}
    wanted = {
        requirement
        for project in projects.values()
        for requirement in project.get("dependencies", [])
        if re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0] not in ours
    }
    written = (out / "deps" / "requirements.txt").read_text().splitlines()
    assert set(written) == wanted and len(written) == len(wanted) and wanted
    assert (out / "deps" / "constraints.txt").read_text() == (ROOT / "constraints.txt").read_text()


def test_image_commands_exec_the_member(member, selected, tmp_path):
    """`offsim-image run` execs the command; `dev` runs a long-running service under
    watchfiles on every member's folder in /src (the command compose's dev file gives it), and
    a one-shot as it is."""
    out, info = selected
    bin_dir = tmp_path / "bin"
    for name in (info["command"][0], "watchfiles"):
        fake(bin_dir, name)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(bin_dir / "calls.jsonl")}
    for mode in ("run", "dev"):
        result = helper(mode, "--info", str(out / "image.json"), env=env)
        assert result.returncode == 0, result.stderr
    ran, developed = [
        json.loads(line) for line in (bin_dir / "calls.jsonl").read_text().splitlines()
    ]
    assert ran == info["command"]
    if info["http_port"] is None:
        assert developed == info["command"]
        return
    watched = [f"/src/{folder}" for folder in info["members"]]
    target = shlex.join(info["command"])
    assert developed == ["watchfiles", "--target-type", "command", "--filter", "python", target,
                         *watched]  # fmt: skip
    name, service = compose_services("docker-compose.dev.yml")[member.folder]
    assert service["command"] == developed, f"{name} in docker-compose.dev.yml"


# --- what a build refuses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("member", "reason"),
    [("", "not a member"), ("nope", "not a member"), ("common", "a library")],
    ids=["no MEMBER", "unknown", "common"],
)
def test_select_refuses_what_gets_no_image(member, reason, tmp_path):
    result = select(member, tmp_path / "image")
    assert result.returncode != 0 and reason in result.stderr
    assert not (tmp_path / "image" / "image.json").exists()


# --- the health check -------------------------------------------------------------------------


class Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.send_response(self.status if self.path == "/api/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def health(tmp_path, http_port, env=None) -> subprocess.CompletedProcess[str]:
    info = tmp_path / "image.json"
    info.write_text(json.dumps({"command": ["x"], "members": [], "http_port": http_port}))
    return helper("health", "--info", str(info), env=env)


def test_health_passes_when_the_service_answers(server, tmp_path):
    assert health(tmp_path, server.server_port).returncode == 0


def test_health_fails_when_the_service_is_unhealthy(server, tmp_path, monkeypatch):
    monkeypatch.setattr(Health, "status", 503)
    result = health(tmp_path, server.server_port)
    assert result.returncode == 1 and "503" in result.stderr


def test_health_fails_when_nothing_listens(tmp_path):
    with socket.socket() as sock:  # a port that was free a moment ago
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = health(tmp_path, port)
    assert result.returncode == 1 and f"port {port}" in result.stderr


def test_health_probes_http_port_over_the_default(server, tmp_path):
    """Compose and Kubernetes set HTTP_PORT; the image's default is the service's own."""
    env = {"HTTP_PORT": str(server.server_port)}
    assert health(tmp_path, 1, env=env).returncode == 0
    assert health(tmp_path, server.server_port, env={"HTTP_PORT": "1"}).returncode == 1


def test_health_of_a_one_shot_passes(tmp_path):
    assert health(tmp_path, None).returncode == 0
