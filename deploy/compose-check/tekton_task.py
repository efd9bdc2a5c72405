"""The Tekton `offsim-make` Task's step, run once for real: its script, its environment and its
image (the stand-in of its default image) on a copy of the work tree mounted where Tekton
mounts the `source` workspace, as the Task runs it in the pipeline.

What it proves beyond tekton-lint: the step's image has what the script needs, Node.js installs
where it is missing, and `make <target>` builds the venv and node_modules from the project's own
files and passes inside a clean container.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import yaml
from engine import Engine, log

ROOT = Path(__file__).resolve().parents[2]
TASK = ROOT / "tekton" / "tasks" / "make.yaml"
WORKSPACE = "/workspace/source"


def task_step(target: str) -> tuple[str, str, dict[str, str], str]:
    """The step's image, working directory, environment and script, with the Task's params
    and workspace path substituted as Tekton does."""
    spec = yaml.safe_load(TASK.read_text())["spec"]
    params = {p["name"]: p.get("default") for p in spec["params"]}
    params["target"] = target
    (step,) = spec["steps"]

    def resolve(text: str) -> str:
        text = text.replace("$(workspaces.source.path)", WORKSPACE)
        return re.sub(r"\$\(params\.([a-z-]+)\)", lambda m: params[m[1]], text)

    env = {item["name"]: resolve(item["value"]) for item in step.get("env", [])}
    return resolve(step["image"]), resolve(step["workingDir"]), env, step["script"]


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


def run_make_task(engine: Engine, target: str) -> None:
    image, workdir, env, script = task_step(target)
    started = time.monotonic()
    # Download caches kept between runs (a Tekton deployment would give the step a cache
    # workspace): they change how long the step takes, not what it does.
    caches = {"pip": "/root/.cache/pip", "npm": "/root/.npm", "apt": "/var/cache/apt/archives"}
    cache_flags = []
    for name, target_dir in caches.items():
        folder = engine.cache / "tekton" / name
        folder.mkdir(parents=True, exist_ok=True)
        cache_flags += ["--volume", f"{folder}:{target_dir}"]
    with tempfile.TemporaryDirectory(prefix="offsim-tekton-") as tmp:
        source = Path(tmp) / "source"
        source.mkdir()
        work_tree_copy(source)
        (Path(tmp) / "script").write_text(script)
        env_flags = [arg for name, value in env.items() for arg in ("--env", f"{name}={value}")]
        result = engine.podman(
            "run", "--rm", "--pull=never",
            "--volume", f"{source}:{WORKSPACE}", "--volume", f"{tmp}/script:/tekton/script:ro",
            *cache_flags, "--workdir", workdir, *env_flags, image, "sh", "/tekton/script",
            check=False, timeout=1200,
        )  # fmt: skip
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-4000:]
        raise RuntimeError(f"the offsim-make Task's step failed (make {target}):\n{output}")
    log(f"tekton: the offsim-make Task's step (`make {target}`) passed in {image} "
        f"in {time.monotonic() - started:.0f} s")  # fmt: skip


class MakeTaskRun(threading.Thread):
    """The Task's step beside the compose stacks: it spends its time downloading and
    installing, which overlaps well with theirs."""

    def __init__(self, engine: Engine, target: str) -> None:
        super().__init__(name="tekton-make", daemon=True)
        self.engine = engine
        self.target = target
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            run_make_task(self.engine, self.target)
        except Exception as error:  # reported by result(), in the main thread
            self.error = error

    def result(self) -> None:
        self.join()
        if self.error is not None:
            raise self.error
