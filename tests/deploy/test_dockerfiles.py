"""The images: one Dockerfile per member with an image, linted by hadolint, each a multi-stage
build (a `dev` target with live reload, a small non-root `prod` target) that installs the
member and the workspace members it needs, at the versions constraints.txt pins."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.deploy.workspace import (
    ROOT,
    Member,
    built_members,
    closure,
    members,
    run,
    venv_tool,
)

BUILT = built_members()


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(path: Path) -> dict[str, Stage]:
    """Stages by name, in order, with their instructions (continuations joined, comments
    dropped). Enough for the checks below; hadolint does the real parsing."""
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
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in filter(str.strip, logical):
        keyword, _, args = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", args.strip(), re.IGNORECASE)
            assert match, f"{path}: every stage is named ({line!r})"
            current = stages[match[2]] = Stage(match[2], match[1])
        elif current is not None:
            current.instructions.append((keyword, " ".join(args.split())))
    return stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"exec form expected, got {args!r}"
    return value


def copied_folders(stage: Stage) -> set[str]:
    return {shlex.split(args)[-2].rstrip("/") for args in stage.all("COPY") if "--from" not in args}


@pytest.fixture(scope="module", params=BUILT, ids=lambda m: m.folder)
def member(request) -> Member:
    return request.param


@pytest.fixture(scope="module")
def stages(member: Member) -> dict[str, Stage]:
    assert member.dockerfile.exists(), f"{member.folder} has no Dockerfile"
    return parse_dockerfile(member.dockerfile)


def test_hadolint_all_dockerfiles_clean():
    dockerfiles = [str(m.dockerfile.relative_to(ROOT)) for m in BUILT]
    result = run([venv_tool("hadolint"), "--no-color", "--format", "tty", *dockerfiles])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_bad_dockerfile_fails(tmp_path):
    """The lint is not vacuous: an unpinned base image and an unpinned pip install fail."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    result = run([venv_tool("hadolint"), "--no-color", str(bad)])
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3013" in result.stdout


def test_stages_dev_and_prod_prod_last(stages):
    names = list(stages)
    assert {"dev", "prod"} <= set(names)
    assert names[-1] == "prod", "prod is the default target: the last stage"
    assert re.fullmatch(r"\$\{PYTHON_IMAGE\}|python:3\.1[12]-slim\S*", stages[names[0]].base)


def test_base_image_is_python_slim(member):
    text = member.dockerfile.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim-\w+$", text, re.MULTILINE)


def test_prod_runs_console_script_as_non_root(member, stages):
    prod = stages["prod"]
    users = prod.all("USER")
    assert users and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]), (
        "prod runs as a numeric non-root user (so Kubernetes can check runAsNonRoot)"
    )
    command = exec_form(prod.all("CMD")[-1])
    assert command[0] in member.scripts, f"CMD {command} is not a console script of {member}"


def test_prod_installs_only_built_wheels(member, stages):
    """The build stage makes wheels with the constraints; prod installs them with no index, no
    source and no build tools, so only runtime dependencies end up in it."""
    build_runs = " ".join(stages["build"].all("RUN"))
    assert "pip wheel" in build_runs and "-c constraints.txt" in build_runs
    prod = stages["prod"]
    assert not copied_folders(prod), "prod copies no source"
    install = " ".join(prod.all("RUN"))
    assert "--no-index" in install and re.search(rf"\s{re.escape(member.distribution)}$", install)
    assert "watchfiles" not in install


def test_every_needed_member_is_installed(member, stages):
    """The image installs the member and every workspace member it needs (common at least),
    from the workspace, and nothing else."""
    needed = closure(member.folder)
    assert "common" in needed
    for stage in ("build", "dev"):
        assert copied_folders(stages[stage]) == set(needed), stage
    build_runs = " ".join(stages["build"].all("RUN"))
    for folder in needed:
        assert f"./{folder}" in build_runs
    dev_runs = " ".join(stages["dev"].all("RUN"))
    for folder in needed:
        assert f"-e ./{folder}" in dev_runs, "dev installs editable, so a mounted edit counts"


def test_dev_reloads_long_running_services(member, stages):
    dev = stages["dev"]
    command = exec_form(dev.all("CMD")[-1])
    if member.folder in {"etl", "launcher"}:  # one-shots: nothing to reload
        assert command[0] in member.scripts
        return
    assert command[0] == "watchfiles"
    assert any(part.split()[0] in member.scripts for part in command[1:])
    for folder in closure(member.folder):
        assert f"/src/{folder}" in command, f"watch /src/{folder}"
    assert "watchfiles" in " ".join(dev.all("RUN")) and "-c constraints.txt" in " ".join(
        dev.all("RUN")
    ), "watchfiles comes pinned by constraints.txt"


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
    for needed in ["constraints.txt", *members()]:
        assert needed not in patterns and f"{needed}/" not in patterns, needed
