"""Tekton Tasks' steps, run for real: each step's script, environment, working directory and
image (the stand-in of its image) read from the Task's YAML, with the params, workspaces and
results substituted as Tekton does, in a container of this check's engine. The workspaces are
folders of this machine mounted where Tekton mounts them, and a Task's results are read back
from its results folder, so one Task's results can be the next one's params, as in the
pipeline.

What it proves beyond tekton-lint: each step's image has what its script needs, and the script
does what the pipeline relies on (the make Task's `make lint` passes in a clean container; the
build Task's buildah builds and pushes an image; the record Task commits the digests).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from engine import Engine

ROOT = Path(__file__).resolve().parents[2]
TASKS = ROOT / "tekton" / "tasks"
REFERENCE = re.compile(r"\$\((params|workspaces|results)\.([A-Za-z0-9_-]+)(?:\.([a-z]+))?\)")


class TaskFailed(RuntimeError):
    pass


@dataclass
class Step:
    name: str
    image: str
    workdir: str
    env: dict[str, str]
    script: str
    privileged: bool
    # The Task's volumes this step mounts: {volume: mount path}.
    mounts: dict[str, str]


@dataclass
class TaskRun:
    """One run of a Task: `params` by name (the Task's defaults fill the rest), `workspaces`
    bound to folders of this machine (an optional one left out is unbound), and `podman`, the
    flags the environment adds to every step's container (caches, network, a registries.conf):
    what a cluster's nodes and volumes would give, not what the Task says."""

    engine: Engine
    task: str
    params: dict[str, str] = field(default_factory=dict)
    workspaces: dict[str, Path] = field(default_factory=dict)
    podman: list[str] = field(default_factory=list)
    # Each step's standard output, by step name, once it has run.
    outputs: dict[str, str] = field(default_factory=dict, init=False)

    def spec(self) -> dict:
        return yaml.safe_load((TASKS / f"{self.task}.yaml").read_text())["spec"]

    def steps(self) -> list[Step]:
        """The steps with every $(params.*), $(workspaces.*) and $(results.*) resolved."""
        spec = self.spec()
        params = {p["name"]: p.get("default") for p in spec.get("params", [])}
        unknown = set(self.params) - set(params)
        if unknown:
            raise TaskFailed(f"{self.task}: no such params {sorted(unknown)}")
        params.update(self.params)
        missing = sorted(name for name, value in params.items() if value is None)
        if missing:
            raise TaskFailed(f"{self.task}: params {missing} have no value and no default")
        declared = {w["name"]: w for w in spec.get("workspaces", [])}
        for name in declared:
            if name not in self.workspaces and not declared[name].get("optional"):
                raise TaskFailed(f"{self.task}: workspace {name} is not optional")
        results = {r["name"] for r in spec.get("results", [])}

        def value(match: re.Match) -> str:
            kind, name, attribute = match.groups()
            if kind == "params":
                return params[name]
            if kind == "results" and name in results and attribute == "path":
                return f"/tekton/results/{name}"
            if kind == "workspaces" and name in declared and attribute == "path":
                return workspace_path(name) if name in self.workspaces else ""
            if kind == "workspaces" and name in declared and attribute == "bound":
                return "true" if name in self.workspaces else "false"
            raise TaskFailed(f"{self.task}: cannot resolve {match[0]}")

        def resolve(text: str) -> str:
            return REFERENCE.sub(value, text)

        return [
            Step(
                name=step["name"],
                image=resolve(step["image"]),
                workdir=resolve(step.get("workingDir", "/workspace")),
                env={item["name"]: resolve(item["value"]) for item in step.get("env", [])},
                script=step["script"],
                privileged=bool((step.get("securityContext") or {}).get("privileged")),
                mounts={m["name"]: m["mountPath"] for m in step.get("volumeMounts", [])},
            )
            for step in spec["steps"]
        ]

    def run(self, timeout: float = 1200) -> dict[str, str]:
        """Every step in turn (a failed step fails the run, as in Tekton); the results."""
        steps = self.steps()
        with tempfile.TemporaryDirectory(prefix=f"offsim-tekton-{self.task}-") as tmp:
            results = Path(tmp) / "results"
            results.mkdir()
            mounts = ["--volume", f"{results}:/tekton/results"]
            for name, folder in self.workspaces.items():
                mounts += ["--volume", f"{folder}:{workspace_path(name)}"]
            # The Task's emptyDir volumes: a folder of this run each, shared by its steps.
            volumes = {}
            for volume in self.spec().get("volumes", []):
                if "emptyDir" not in volume:
                    raise TaskFailed(f"{self.task}: volume {volume['name']} is not an emptyDir")
                volumes[volume["name"]] = Path(tmp) / "volumes" / volume["name"]
                volumes[volume["name"]].mkdir(parents=True)
            for step in steps:
                step_mounts = [arg for name, path in step.mounts.items()
                               for arg in ("--volume", f"{volumes[name]}:{path}")]  # fmt: skip
                script = Path(tmp) / f"{step.name}.sh"
                script.write_text(step.script)
                env = [arg for item in step.env.items() for arg in ("--env", "=".join(item))]
                # Tekton runs a step's script in place of its image's entrypoint.
                result = self.engine.podman(
                    "run", "--rm", "--pull=never", *mounts, *step_mounts, *self.podman,
                    "--volume", f"{script}:/tekton/scripts/{step.name}:ro",
                    *(["--privileged"] if step.privileged else []),
                    "--workdir", step.workdir, *env, "--entrypoint", "sh",
                    step.image, f"/tekton/scripts/{step.name}",
                    check=False, timeout=timeout,
                )  # fmt: skip
                if result.returncode != 0:
                    output = (result.stdout + result.stderr)[-4000:]
                    raise TaskFailed(f"the {self.task} Task's step {step.name} ({step.image}) "
                                     f"exited {result.returncode}:\n{output}")  # fmt: skip
                self.outputs[step.name] = result.stdout
            return {path.name: path.read_text() for path in results.iterdir()}


def workspace_path(name: str) -> str:
    return f"/workspace/{name}"


def work_tree_copy(into: Path) -> None:
    """The files of the work tree that git tracks or would track (what the pipeline's clone
    holds), without what a checkout grows (.venv, node_modules)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)


class Background(threading.Thread):
    """A piece of the check beside the compose stacks (the Task runs spend their time
    downloading, installing and building, which overlaps well with the stacks' waiting)."""

    def __init__(self, name: str, work, *args) -> None:
        super().__init__(name=name, daemon=True)
        self.work = work
        self.args = args
        self.value = None
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            self.value = self.work(*self.args)
        except Exception as error:  # reported by result(), in the main thread
            self.error = error

    def result(self):
        self.join()
        if self.error is not None:
            raise self.error
        return self.value
