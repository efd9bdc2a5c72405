"""The Tekton record-images Task's commit step (tekton/tasks/record-images.yaml), its script run
as the Task gives it, with git, against a real bare repository: the deploy branch becomes the
built commit plus one record commit of the overlay, also tagged; a newer build moves it on; an
older build that finishes late leaves it; a commit of another branch is not recorded; a
rewritten main is refused; a concurrent push fails the push rather than being lost; the same
images again push nothing; and bound credentials are used. (The whole Task, kustomize step
included, runs in the compose check, with the images the pipeline pushed.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.workspace import ROOT

sys.path.insert(0, str(ROOT / "deploy" / "compose-check"))
tekton_task = pytest.importorskip("tekton_task")

OVERLAY = "deploy/k8s/overlays/scaled"
BRANCH = "deploy"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip


@pytest.fixture
def origin(tmp_path, monkeypatch) -> Path:
    """A bare repository with main at one commit holding an overlay."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    git(tmp_path, "config", "--global", "user.name", "developer")
    git(tmp_path, "config", "--global", "user.email", "developer@localhost")
    work = tmp_path / "work"
    (work / OVERLAY).mkdir(parents=True)
    (work / OVERLAY / "kustomization.yaml").write_text("images: []\n")
    git(work, "init", "--quiet", "--initial-branch=main")
    git(work, "add", "--all")
    git(work, "commit", "--quiet", "-m", "A")
    bare = tmp_path / "origin.git"
    git(tmp_path, "clone", "--quiet", "--bare", str(work), str(bare))
    return bare


def commit_on(origin: Path, tmp_path: Path, branch: str, start: str, message: str) -> str:
    """A developer's commit on a branch of origin, from `start`."""
    work = tmp_path / f"dev-{message}"
    git(tmp_path, "clone", "--quiet", str(origin), str(work))
    git(work, "checkout", "--quiet", "-B", branch, start)
    (work / message).write_text(message)
    git(work, "add", "--all")
    git(work, "commit", "--quiet", "-m", message)
    git(work, "push", "--quiet", "--force", "origin", f"HEAD:refs/heads/{branch}")
    return git(work, "rev-parse", "HEAD")


def checkout(origin: Path, tmp_path: Path, revision: str) -> Path:
    """The source workspace as the pipeline's git-clone Task leaves it: a shallow checkout."""
    source = tmp_path / f"source-{revision[:8]}-{len(list(tmp_path.iterdir()))}"
    source.mkdir()
    for command in (["init", "--quiet", "."], ["remote", "add", "origin", f"file://{origin}"],
                    ["fetch", "--quiet", "--depth", "1", "origin", revision],
                    ["checkout", "--quiet", "FETCH_HEAD"]):  # fmt: skip
        git(source, *command)
    return source


def record(source: Path, image: str) -> tuple[subprocess.CompletedProcess, str]:
    """What the kustomize step does to the overlay (here by hand), then the commit step."""
    (source / OVERLAY / "kustomization.yaml").write_text(f"images:\n  - name: {image}\n")
    return commit_step(source)


def commit_step(source: Path, credentials: Path | None = None):
    workspaces = {"source": source, **({"git-credentials": credentials} if credentials else {})}
    run = tekton_task.TaskRun(engine=None, task="record-images",
                              params={"images": "offsim-users=r/offsim-users:t@sha256:0"},
                              workspaces=workspaces)  # fmt: skip
    step = next(step for step in run.steps() if step.name == "commit-and-push")
    result_file = source.parent / f"{source.name}.commit"
    env = {**os.environ, **step.env, "RESULT_COMMIT": str(result_file)}
    if credentials:
        env["CREDENTIALS_PATH"] = str(credentials)
    done = subprocess.run(["sh", "-c", step.script], cwd=source, env=env, capture_output=True,
                          text=True)  # fmt: skip
    return done, result_file.read_text() if result_file.exists() else ""


def assert_nothing_pushed(origin: Path, outcome, message: str, deployed: str) -> None:
    """The step succeeded, said why it recorded nothing, and left the branch at `deployed`."""
    done, pushed = outcome
    assert done.returncode == 0, done.stderr
    assert message in done.stdout and pushed == ""
    assert git(origin, "rev-parse", BRANCH) == deployed


def test_the_deploy_branch_is_the_built_commit_plus_the_overlay(origin, tmp_path):
    built = git(origin, "rev-parse", "main")
    done, pushed = record(checkout(origin, tmp_path, built), "one")
    assert done.returncode == 0, done.stderr
    assert pushed == git(origin, "rev-parse", BRANCH)
    assert git(origin, "rev-parse", f"{BRANCH}^") == built
    assert git(origin, "diff", "--name-only", built, BRANCH) == f"{OVERLAY}/kustomization.yaml"
    assert "name: one" in git(origin, "show", f"{BRANCH}:{OVERLAY}/kustomization.yaml")
    assert built in git(origin, "log", "-1", "--format=%s", BRANCH)
    assert git(origin, "log", "-1", "--format=%(trailers:key=Built-from,valueonly)",
               BRANCH) == built  # fmt: skip
    # Tagged too, so that it stays reachable once the branch has moved on.
    assert git(origin, "rev-parse", f"refs/tags/{BRANCH}/{pushed}") == pushed


def test_a_newer_build_moves_it_on_and_an_older_one_leaves_it(origin, tmp_path):
    first = git(origin, "rev-parse", "main")
    assert record(checkout(origin, tmp_path, first), "one")[0].returncode == 0
    second = commit_on(origin, tmp_path, "main", "main", "B")
    done, pushed = record(checkout(origin, tmp_path, second), "two")
    assert done.returncode == 0, done.stderr
    assert git(origin, "rev-parse", f"{BRANCH}^") == second and pushed
    deployed = git(origin, "rev-parse", BRANCH)
    # The first commit's run finishing late: the branch stays at the second's images.
    late = record(checkout(origin, tmp_path, first), "late")
    assert_nothing_pushed(origin, late, "left as it is", deployed)


def test_a_commit_of_another_branch_is_not_recorded(origin, tmp_path):
    """A feature branch cut from the deployed commit descends from it, but is not main's."""
    built = git(origin, "rev-parse", "main")
    assert record(checkout(origin, tmp_path, built), "one")[0].returncode == 0
    deployed = git(origin, "rev-parse", BRANCH)
    feature = commit_on(origin, tmp_path, "feature", built, "C")
    outcome = record(checkout(origin, tmp_path, feature), "feature")
    assert_nothing_pushed(origin, outcome, "not a commit of main", deployed)


def test_a_rewritten_main_is_refused(origin, tmp_path):
    first = git(origin, "rev-parse", "main")
    second = commit_on(origin, tmp_path, "main", "main", "B")
    assert record(checkout(origin, tmp_path, second), "two")[0].returncode == 0
    deployed = git(origin, "rev-parse", BRANCH)
    rewritten = commit_on(origin, tmp_path, "main", first, "B2")  # a forced push to main
    done, pushed = record(checkout(origin, tmp_path, rewritten), "three")
    assert done.returncode == 1 and "does not descend" in done.stderr and pushed == ""
    assert git(origin, "rev-parse", BRANCH) == deployed


def test_a_concurrent_push_fails_this_one(origin, tmp_path):
    """Another run moves the deploy branch after this one read it: the lease fails the push
    (the other push happens in this checkout's pre-push hook, between read and push)."""
    first = git(origin, "rev-parse", "main")
    assert record(checkout(origin, tmp_path, first), "one")[0].returncode == 0
    second = commit_on(origin, tmp_path, "main", "main", "B")
    other = tmp_path / "other"
    git(tmp_path, "clone", "--quiet", str(origin), str(other))
    git(other, "commit", "--quiet", "--allow-empty", "-m", "another run's record")
    source = checkout(origin, tmp_path, second)
    hook = source / ".git" / "hooks" / "pre-push"
    hook.write_text(f"#!/bin/sh\ngit -C {other} push --quiet --force origin HEAD:{BRANCH}\n")
    hook.chmod(0o755)
    done, pushed = record(source, "two")
    assert done.returncode != 0 and pushed == ""
    assert "stale info" in done.stderr or "rejected" in done.stderr, done.stderr
    assert git(origin, "rev-parse", BRANCH) == git(other, "rev-parse", "HEAD")


def test_the_same_images_again_push_nothing(origin, tmp_path):
    built = git(origin, "rev-parse", "main")
    assert record(checkout(origin, tmp_path, built), "one")[0].returncode == 0
    deployed = git(origin, "rev-parse", BRANCH)
    again = record(checkout(origin, tmp_path, built), "one")
    assert_nothing_pushed(origin, again, "nothing recorded", deployed)


def test_bound_credentials_are_used_and_keep_the_safe_directory(origin, tmp_path):
    """The Secret's .gitconfig is copied in first: the step's own settings come after it."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / ".git-credentials").write_text("https://pipeline:token@git.example.org\n")
    (credentials / ".gitconfig").write_text("[credential]\n\thelper = store\n")
    source = checkout(origin, tmp_path, git(origin, "rev-parse", "main"))
    (source / OVERLAY / "kustomization.yaml").write_text("images:\n  - name: one\n")
    done, pushed = commit_step(source, credentials)
    assert done.returncode == 0, done.stderr
    assert pushed == git(origin, "rev-parse", BRANCH)
    home = Path(os.environ["HOME"])
    assert (home / ".git-credentials").read_text() == "https://pipeline:token@git.example.org\n"
    settings = git(home, "config", "--global", "--list")
    assert "credential.helper=store" in settings and f"safe.directory={source}" in settings
