#!/usr/bin/env python3
"""What the image of one workspace member is made of and what it runs, for the root Dockerfile,
which is given only MEMBER (a folder of workspace.toml). Everything else is read here from the
workspace, so a new member, dependency or console script needs no change to the Dockerfile.

At build time, in the Dockerfile's `select` stage:

    offsim-image select MEMBER CONTEXT OUT

reads CONTEXT/workspace.toml and the members' pyproject.toml files and writes

- OUT/src/: constraints.txt, MEMBER's folder and the folder of every workspace member it
  depends on, directly or not (what the `build` and `dev` stages install);
- OUT/deps/: constraints.txt and requirements.txt, the third-party requirements of those
  members (installed first, in a layer that a change to offsim's code leaves cached);
- OUT/image.json: the member, its distribution (the image's name), the command the image runs
  (its console script), the members it holds, and the port it serves /api/health on by default:
  the `default_port=` or `http_port=` its entry module passes, or null for a one-shot.

In the image, reading /etc/offsim/image.json:

    offsim-image run      exec the command (the `prod` CMD)
    offsim-image dev      the same, restarted by watchfiles on a .py change if the member is a
                          long-running service (the `dev` CMD)
    offsim-image health   GET /api/health on HTTP_PORT, else the default port (the HEALTHCHECK);
                          a one-shot has nothing to probe and passes

Standard library only: it runs on the base image before anything is installed.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shlex
import shutil
import sys
import tomllib
import urllib.request
from pathlib import Path

INFO = Path("/etc/offsim/image.json")
SRC = Path("/src")  # the Dockerfile's WORKDIR, where compose's dev file mounts the source
# The image's default arguments where the console script alone is not the job: the launcher's
# image is the migration one-shot (`offsim` alone only prints its usage).
DEFAULT_ARGS = {"launcher": ["migrate"]}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def workspace(context: Path) -> dict[str, dict]:
    """The [project] table of each member, by folder, in workspace.toml's order."""
    folders = tomllib.loads((context / "workspace.toml").read_text())["workspace"]["members"]
    return {
        f: tomllib.loads((context / f / "pyproject.toml").read_text())["project"] for f in folders
    }


def needed(projects: dict[str, dict], member: str) -> list[str]:
    """The member and every member it depends on, directly or not, in workspace.toml's order."""
    by_name = {normalized(project["name"]): folder for folder, project in projects.items()}
    found, todo = set(), [member]
    while todo:
        folder = todo.pop()
        if folder in found:
            continue
        found.add(folder)
        for requirement in projects[folder].get("dependencies", []):
            name = re.match(r"[A-Za-z0-9._-]+", requirement)[0]
            if normalized(name) in by_name:
                todo.append(by_name[normalized(name)])
    return [folder for folder in projects if folder in found]


def entry_module(context: Path, folder: str, entry_point: str) -> Path:
    """The source file of `package.module:function` in the member's folder."""
    module = Path(folder, *entry_point.partition(":")[0].split("."))
    for path in (context / module.with_suffix(".py"), context / module / "__init__.py"):
        if path.exists():
            return path
    raise SystemExit(f"offsim-image: no source for {entry_point} in {folder}/")


def default_port(module: Path) -> int | None:
    """The default of HTTP_PORT in the settings of the service whose entry module this is
    (`http_port: int = env("HTTP_PORT", N, ...)` in the `settings.py` beside it); None for a
    one-shot, whose settings read no port."""
    settings = module.parent / "settings.py"
    if not settings.exists():
        return None
    ports = {
        node.args[1].value
        for node in ast.walk(ast.parse(settings.read_text()))
        if isinstance(node, ast.Call)
        and len(node.args) >= 2
        and isinstance(node.args[0], ast.Constant)
        and node.args[0].value == "HTTP_PORT"
        and isinstance(node.args[1], ast.Constant)
        and type(node.args[1].value) is int
    }
    if len(ports) > 1:
        raise SystemExit(f"offsim-image: {settings} names several ports: {sorted(ports)}")
    return ports.pop() if ports else None


def describe(context: Path, member: str) -> dict:
    """What image.json holds for MEMBER's image."""
    projects = workspace(context)
    if member not in projects:
        raise SystemExit(
            f"offsim-image: MEMBER={member!r} is not a member of workspace.toml: "
            f"build with --build-arg MEMBER=<one of {', '.join(projects)}>"
        )
    scripts = projects[member].get("scripts", {})
    if len(scripts) != 1:
        raise SystemExit(
            f"offsim-image: {member} has {len(scripts)} console scripts, an image runs one: "
            f"{sorted(scripts) or 'a library gets no image of its own'}"
        )
    ((script, entry_point),) = scripts.items()
    return {
        "member": member,
        "distribution": projects[member]["name"],
        "command": [script, *DEFAULT_ARGS.get(member, [])],
        "members": needed(projects, member),
        "http_port": default_port(entry_module(context, member, entry_point)),
    }


def third_party(projects: dict[str, dict], folders: list[str]) -> list[str]:
    """The requirements of these members that are not workspace members, sorted, once each."""
    ours = {normalized(project["name"]) for project in projects.values()}
    found = set()
    for folder in folders:
        for requirement in projects[folder].get("dependencies", []):
            if normalized(re.match(r"[A-Za-z0-9._-]+", requirement)[0]) not in ours:
                found.add(requirement)
    return sorted(found, key=str.lower)


def select(member: str, context: Path, out: Path) -> dict:
    info = describe(context, member)
    (out / "src").mkdir(parents=True)
    shutil.copy2(context / "constraints.txt", out / "src")
    for folder in info["members"]:
        shutil.copytree(context / folder, out / "src" / folder)
    # The third-party dependencies alone, so that the stages install them in a layer of their
    # own: a change to offsim's code then rebuilds only the small layer of the members.
    (out / "deps").mkdir()
    shutil.copy2(context / "constraints.txt", out / "deps")
    requirements = third_party(workspace(context), info["members"])
    (out / "deps" / "requirements.txt").write_text("".join(f"{r}\n" for r in requirements))
    (out / "image.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def run(info: dict) -> None:
    os.execvp(info["command"][0], info["command"])


def dev(info: dict) -> None:
    if info["http_port"] is None:  # a one-shot: nothing to restart
        run(info)
    watched = [str(SRC / folder) for folder in info["members"]]
    target = shlex.join(info["command"])
    watch = ["watchfiles", "--target-type", "command", "--filter", "python", target, *watched]
    os.execvp(watch[0], watch)


def health(info: dict) -> int:
    if info["http_port"] is None:
        return 0
    port = os.environ.get("HTTP_PORT") or info["http_port"]
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2).close()
    except OSError as exc:  # refused, timed out, or an HTTPError (not 2xx)
        print(f"/api/health on port {port}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="offsim-image", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    chosen = commands.add_parser("select", help="write a member's sources and image.json to OUT")
    chosen.add_argument("member", help="a folder listed in workspace.toml")
    chosen.add_argument("context", type=Path, help="the repository root (the build context)")
    chosen.add_argument("out", type=Path, help="a new directory")
    runtime = {"run": "run the command", "dev": "run it, under watchfiles", "health": "probe it"}
    for name, text in runtime.items():
        command = commands.add_parser(name, help=text)
        command.add_argument("--info", type=Path, default=INFO, help=f"default {INFO}")
    args = parser.parse_args(argv)
    if args.command == "select":
        info = select(args.member, args.context, args.out)
        print(f"{args.member}: {shlex.join(info['command'])}, members {' '.join(info['members'])}")
        return 0
    info = json.loads(args.info.read_text())
    if args.command == "health":
        return health(info)
    if args.command == "run":
        run(info)
    else:
        dev(info)
    return 0  # not reached: exec replaced the process


if __name__ == "__main__":
    sys.exit(main())
