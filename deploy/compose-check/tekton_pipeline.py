"""The Tekton pipeline (tekton/pipeline.yaml) run for real, task by task, as a PipelineRun would:
its fetch-source, lint, build and record-images tasks, each Task's steps in their images
(tekton_task.py), one task's results passed on as the next one's params; only its `test` task
is left out, since it is `make test`, which CI has just run.

Around it, what a cluster would give it, each a stand-in here:
- the git server: a bare repository made from the work tree (one commit of it) and mounted
  into the steps, which clone it and push the deploy branch back to it;
- the registry: Debian's docker-registry on this machine's loopback, holding the stand-in base
  image under its Docker Hub name for the builds to pull (a registries.conf makes it Docker
  Hub's mirror, as a cluster's nodes would have one).

Then it proves the path a release takes: every image the build Task pushed is served by the
registry under the digest the Task reported; the deploy branch is the built commit plus one
commit pinning the scaled overlay to those digests; and `kustomize build` of that overlay (in
the kustomize stand-in) renders exactly those images. The prod stack then runs from these
images, pulled from the registry (check.py).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from engine import PYTHON_IMAGE, REGISTRY, Engine, container_ulimits, log
from tekton_task import ROOT, TASKS, TaskFailed, TaskRun, work_tree_copy

PIPELINE = ROOT / "tekton" / "pipeline.yaml"
NAME = r"([A-Za-z0-9_-]+)"
REFERENCE = re.compile(rf"\$\((params\.{NAME}|tasks\.{NAME}\.results\.{NAME})\)")
# Where the steps find the git server's repository.
GIT_MOUNT = "/srv/git/offsim.git"
REGISTRY_CONTAINER = "offsim-check-registry"
KUSTOMIZE_IMAGE = "registry.k8s.io/kustomize/kustomize:v5.6.0"
MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
])  # fmt: skip


@dataclass
class Release:
    """What the pipeline made: the commit built and each image pushed (by the name the
    manifests give it) with its digest."""

    commit: str
    images: dict[str, tuple[str, str]] = field(default_factory=dict)  # name: (url, digest)

    @property
    def registry(self) -> str:
        return f"{REGISTRY}/offsim"


def task_files() -> dict[str, Path]:
    """Each Task's file by the Task's name (a taskRef names the Task)."""
    return {yaml.safe_load(path.read_text())["metadata"]["name"]: path
            for path in sorted(TASKS.glob("*.yaml"))}  # fmt: skip


class PipelineRun:
    def __init__(self, engine: Engine, params: dict[str, str], workspaces: dict[str, Path],
                 podman: list[str], leave_out: frozenset[str] = frozenset({"test"}),
                 parallel: int = 2, cancelled: threading.Event | None = None):  # fmt: skip
        self.engine = engine
        self.spec = yaml.safe_load(PIPELINE.read_text())["spec"]
        self.params = {p["name"]: p.get("default") for p in self.spec["params"]}
        self.params.update(params)
        self.workspaces = workspaces
        self.podman = podman
        self.leave_out = leave_out
        self.parallel = parallel
        # Set when the check fails elsewhere: no task starts after it.
        self.cancelled = cancelled or threading.Event()
        self.files = task_files()
        self.results: dict[str, dict[str, str]] = {}

    def resolve(self, text: str) -> str:
        def value(match: re.Match) -> str:
            _, param, task, result = match.groups()
            if param is not None:
                return self.params[param]
            if task not in self.results:
                raise TaskFailed(f"{match[0]}: the task {task} has not run")
            return self.results[task][result]

        return REFERENCE.sub(value, text)

    def runs(self, task: dict) -> bool:
        """Whether the task's `when` expressions let it run."""
        for expression in task.get("when", []):
            found = self.resolve(expression["input"]) in expression["values"]
            if found != (expression["operator"] == "in"):
                return False
        return True

    def needs(self, task: dict) -> set[str]:
        """The tasks this one waits for: its runAfter and those whose results it takes."""
        return set(task.get("runAfter", [])) | self.takes_results_of(task)

    def takes_results_of(self, task: dict) -> set[str]:
        return {match[3] for match in REFERENCE.finditer(json.dumps(task)) if match[3]}

    def run(self) -> dict[str, dict[str, str]]:
        """Every task once those it needs are done, up to `parallel` at a time (Tekton runs
        the seven builds at once; two cores gain from two)."""
        pending = list(self.spec["tasks"])
        done: set[str] = set()
        not_run: set[str] = set()
        with ThreadPoolExecutor(max_workers=self.parallel) as pool:
            running: dict[Future, str] = {}
            while pending or running:
                skipped = False
                for task in [t for t in pending if self.needs(t) <= done]:
                    if len(running) == self.parallel:
                        break
                    if self.cancelled.is_set():
                        raise TaskFailed("the pipeline run was cancelled")
                    pending.remove(task)
                    name = task["name"]
                    if name in self.leave_out:
                        log(f"tekton: pipeline task {name}: left out (`make {name}` runs in "
                            f"CI itself)")  # fmt: skip
                    elif self.takes_results_of(task) & not_run:
                        # As Tekton does: a task whose params need a skipped task's results.
                        log(f"tekton: pipeline task {name}: skipped (the results it takes "
                            f"were not made)")  # fmt: skip
                    elif not self.runs(task):
                        log(f"tekton: pipeline task {name}: skipped by its `when`")
                    else:
                        running[pool.submit(self.run_task, task)] = name
                        continue
                    done.add(name)
                    not_run.add(name)
                    skipped = True
                if not running:
                    if pending and not skipped:
                        raise TaskFailed(f"tasks waiting for each other: {pending}")
                    continue
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    future.result()  # a failed task fails the run, as in Tekton
                    done.add(running.pop(future))
        return self.results

    def run_task(self, task: dict) -> None:
        name = task["name"]
        params = {p["name"]: self.resolve(p["value"]) for p in task.get("params", [])}
        workspaces = {w["name"]: self.workspaces[w["workspace"]]
                      for w in task.get("workspaces", [])
                      if w["workspace"] in self.workspaces}  # fmt: skip
        run = TaskRun(self.engine, self.files[task["taskRef"]["name"]].stem, params, workspaces,
                      self.podman)  # fmt: skip
        started = time.monotonic()
        self.results[name] = run.run()
        log(f"tekton: pipeline task {name} ({task['taskRef']['name']}) passed in "
            f"{time.monotonic() - started:.0f} s{summary(run.outputs)}")  # fmt: skip


def summary(outputs: dict[str, str]) -> str:
    """The last line each step printed (what it did), if any."""
    lines = [out.strip().splitlines()[-1] for out in outputs.values() if out.strip()]
    return f": {lines[-1]}" if lines else ""


def registry_digest(repository: str, tag: str) -> str:
    """The digest the registry serves for a tag (the manifest's, as a pull resolves it),
    checked against the manifest's own bytes."""
    request = urllib.request.Request(f"http://{REGISTRY}/v2/{repository}/manifests/{tag}",
                                     headers={"Accept": MANIFEST_TYPES})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            body, digest = answer.read(), answer.headers["Docker-Content-Digest"]
    except OSError as error:
        raise TaskFailed(f"the registry has no {repository}:{tag}: {error}") from error
    if digest != "sha256:" + hashlib.sha256(body).hexdigest():
        raise TaskFailed(f"the registry's digest for {repository}:{tag} is not its manifest's")
    return digest


def start_registry(engine: Engine) -> None:
    """The registry stand-in on this machine's loopback, with the base image the Dockerfile
    names under the path a Docker Hub mirror serves it on."""
    engine.podman("rm", "--force", REGISTRY_CONTAINER, check=False)
    engine.podman("run", "--detach", "--name", REGISTRY_CONTAINER, "--publish",
                  f"127.0.0.1:{REGISTRY.split(':')[1]}:5000",
                  "docker.io/library/registry:2")  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=2):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise TaskFailed("the registry did not answer /v2/ in 30 s") from None
            time.sleep(0.3)
    mirrored = f"{REGISTRY}/{PYTHON_IMAGE.removeprefix('docker.io/')}"
    engine.podman("push", "--quiet", PYTHON_IMAGE, mirrored)
    log(f"tekton: registry stand-in at {REGISTRY} (Debian's docker-registry), Docker Hub's "
        f"mirror for the builds: {PYTHON_IMAGE} pushed there")  # fmt: skip


def stop_registry(engine: Engine) -> None:
    """The registry, the images in it and those pulled from it go (an interrupted run's too):
    each run pushes and pulls its own, under a new commit, and the engine's storage must not
    grow by a release a run."""
    pulled = engine.podman("images", "--format", "{{.Repository}}:{{.Tag}}", "--filter",
                           f"reference={REGISTRY}/*/*", check=False).stdout.split()  # fmt: skip
    if pulled:
        engine.podman("rmi", "--force", *pulled, check=False)
    if engine.podman("rm", "--force", "--time", "5", REGISTRY_CONTAINER, "--volumes",
                     check=False).stdout.strip():  # fmt: skip
        log(f"tekton: registry stand-in removed, with its volume and the {len(pulled)} images "
            f"pulled from it")  # fmt: skip


def node_config(folder: Path) -> list[str]:
    """A cluster node's containers configuration, which buildah reads: the registry as Docker
    Hub's mirror and a plain-HTTP registry, and ulimits this machine allows (buildah's own
    default nproc is over its hard limit)."""
    registries = folder / "registries.conf"
    registries.write_text(f"""
[[registry]]
prefix = "docker.io"
location = "docker.io"
[[registry.mirror]]
location = "{REGISTRY}"
insecure = true

[[registry]]
location = "{REGISTRY}"
insecure = true
""")
    containers = folder / "containers.conf"
    containers.write_text(f"[containers]\ndefault_ulimits = {json.dumps(container_ulimits())}\n")
    return [
        "--network=host",
        "--volume", f"{registries}:/etc/containers/registries.conf.d/50-offsim-check.conf:ro",
        "--volume", f"{containers}:/etc/containers/containers.conf.d/50-offsim-check.conf:ro",
    ]  # fmt: skip


def git_server(folder: Path) -> Path:
    """A bare repository holding the work tree as one commit on main."""
    tree = folder / "tree"
    tree.mkdir()
    work_tree_copy(tree)
    described = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
    git = ["git", "-c", "user.name=offsim compose check", "-c", "user.email=check@localhost"]
    for command in (["init", "--quiet", "--initial-branch=main"], ["add", "--all"],
                    ["commit", "--quiet", "-m", f"The work tree at {described}"]):  # fmt: skip
        subprocess.run([*git, *command], cwd=tree, check=True, capture_output=True)
    bare = folder / "offsim.git"
    subprocess.run(["git", "clone", "--quiet", "--bare", str(tree), str(bare)], check=True)
    shutil.rmtree(tree)
    return bare


def git(bare: Path, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", str(bare), *args], check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip


def run_pipeline(engine: Engine, cancelled: threading.Event, with_tests: bool = False) -> Release:
    started = time.monotonic()
    start_registry(engine)
    folder = Path(tempfile.mkdtemp(prefix="offsim-pipeline-"))
    try:
        bare = git_server(folder)
        source = folder / "source"
        source.mkdir()
        # Download caches kept between runs, as a Tekton deployment would give the make Task a
        # cache workspace: they change how long the step takes, not what it does.
        caches = {"pip": "/root/.cache/pip", "npm": "/root/.npm",
                  "apt": "/var/cache/apt/archives"}  # fmt: skip
        flags = [*node_config(folder), "--volume", f"{bare}:{GIT_MOUNT}"]
        for name, target in caches.items():
            cache = engine.cache / "tekton" / name
            cache.mkdir(parents=True, exist_ok=True)
            flags += ["--volume", f"{cache}:{target}"]
        pipeline = PipelineRun(
            engine,
            {"repo-url": f"file://{GIT_MOUNT}", "revision": "main",
             "registry": f"{REGISTRY}/offsim"},
            {"source": source},
            flags,
            leave_out=frozenset() if with_tests else frozenset({"test"}),
            cancelled=cancelled,
        )  # fmt: skip
        results = pipeline.run()
        release = Release(commit=results["fetch-source"]["commit"])
        if release.commit != git(bare, "rev-parse", "main"):
            raise TaskFailed("fetch-source did not check out main's commit")
        for task in pipeline.spec["tasks"]:
            if task["taskRef"]["name"] != "offsim-build-image":
                continue
            url, digest = results[task["name"]]["IMAGE_URL"], results[task["name"]]["IMAGE_DIGEST"]
            repository, tag = url.removeprefix(f"{REGISTRY}/").rsplit(":", 1)
            served = registry_digest(repository, tag)
            if served != digest:
                raise TaskFailed(f"{task['name']} reported {digest}; the registry serves {served}")
            release.images[repository.rsplit("/", 1)[1]] = (url, digest)
        log(f"tekton: the registry serves each of the {len(release.images)} images at the "
            f"digest its build reported (" + ", ".join(
                f"{name} {digest[7:19]}" for name, (_, digest) in sorted(release.images.items())
            ) + ")")  # fmt: skip
        check_deploy_branch(engine, pipeline, bare, release, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    log(f"tekton: the pipeline (but its test task) ran in {time.monotonic() - started:.0f} s")
    return release


def check_deploy_branch(engine: Engine, pipeline: PipelineRun, bare: Path, release: Release,
                        folder: Path) -> None:  # fmt: skip
    """The deploy branch is the built commit plus one commit that changes only the overlay's
    kustomization, and the overlay there renders exactly the images pushed."""
    branch = pipeline.params["deploy-branch"]
    task = yaml.safe_load((TASKS / "record-images.yaml").read_text())["spec"]
    overlay = next(p["default"] for p in task["params"] if p["name"] == "overlay")
    head = git(bare, "rev-parse", f"refs/heads/{branch}")
    if git(bare, "rev-parse", f"{head}^") != release.commit:
        raise TaskFailed(f"{branch} is not one commit on top of the built {release.commit}")
    if git(bare, "rev-parse", f"refs/tags/{branch}/{head}") != head:
        raise TaskFailed(f"the record commit {head} was not tagged {branch}/{head}")
    trailer = git(bare, "log", "-1", "--format=%(trailers:key=Built-from,valueonly)", head)
    if trailer != release.commit:
        raise TaskFailed(f"the record commit says it was built from {trailer!r}")
    changed = git(bare, "diff", "--name-only", f"{head}^", head).split()
    if changed != [f"{overlay}/kustomization.yaml"]:
        raise TaskFailed(f"the deploy commit changed {changed}, not the overlay alone")
    checkout = folder / "deployed"
    checkout.mkdir()
    archive = subprocess.run(["git", "--git-dir", str(bare), "archive", head, "deploy/k8s"],
                             check=True, capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(checkout)], input=archive, check=True)
    rendered = engine.podman("run", "--rm", "--pull=never", "--volume",
                             f"{checkout}:/deployed:ro", KUSTOMIZE_IMAGE, "build",
                             f"/deployed/{overlay}").stdout  # fmt: skip
    images = {image for document in yaml.safe_load_all(rendered) if document
              for image in container_images(document)}  # fmt: skip
    expected = {f"{url}@{digest}" for url, digest in release.images.values()}
    ours = {image for image in images if image.startswith(f"{REGISTRY}/")}
    if ours != expected:
        raise TaskFailed(f"{overlay} on {branch} renders {sorted(ours)}, not {sorted(expected)}")
    log(f"tekton: {branch} (and the tag {branch}/{head[:12]}...) is {release.commit[:12]} plus "
        f"{head[:12]} (Built-from: {release.commit[:12]}), which changes only "
        f"{overlay}/kustomization.yaml; `kustomize build` of it renders the {len(ours)} images "
        f"by the digests pushed, e.g. {sorted(ours)[0]}")  # fmt: skip


def container_images(node) -> list[str]:
    """The image of every container (and init container) anywhere in a manifest."""
    if isinstance(node, list):
        return [image for item in node for image in container_images(item)]
    if not isinstance(node, dict):
        return []
    found = []
    for key, value in node.items():
        if key in ("containers", "initContainers"):
            found += [container["image"] for container in value]
        else:
            found += container_images(value)
    return found
