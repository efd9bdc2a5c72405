"""The Tekton CI (tekton/): clean under tekton-lint, every param, workspace, result and
`runAfter` reference resolving, and an image built and pushed for every member."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml

from tests.deploy.workspace import (
    DOCKERFILE,
    ROOT,
    built_members,
    load_yaml_documents,
    node_tool,
    run,
)

TEKTON = ROOT / "tekton"
FILES = sorted(TEKTON.rglob("*.yaml"))
REFERENCE = re.compile(r"\$\((params|workspaces|results|tasks)\.([^.)\[]+)(?:\.([^.)]+))?")


def documents() -> list[dict]:
    return [doc for path in FILES for doc in load_yaml_documents(path)]


def by_kind(kind: str) -> dict[str, dict]:
    found = {}
    for doc in documents():
        if doc["kind"] == kind:
            found[doc["metadata"].get("name") or doc["metadata"]["generateName"]] = doc
    return found


def references(node, kinds: set[str]):
    """Every $(params.x), $(workspaces.x.y), ... in a piece of a spec: (kind, name, attribute)."""
    text = json.dumps(node)
    return [m.groups() for m in REFERENCE.finditer(text) if m[1] in kinds]


def names(items: list[dict] | None) -> set[str]:
    return {item["name"] for item in items or []}


def required(items: list[dict] | None) -> set[str]:
    return {p["name"] for p in items or [] if "default" not in p and not p.get("optional")}


def lint(paths) -> list[dict]:
    result = run([*node_tool("tekton-lint"), "--format", "json", *map(str, paths)])
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"tekton-lint did not answer JSON: {result.stdout}{result.stderr}")


def test_tekton_lint_finds_nothing():
    problems = lint(FILES)
    assert problems == [], json.dumps(problems, indent=1)


def test_tekton_lint_catches_a_broken_pipeline(tmp_path):
    """Not vacuous: an unknown task and a runAfter on a missing task are errors."""
    for path in FILES:
        shutil.copy(path, tmp_path / f"{path.parent.name}-{path.name}")
    pipeline = tmp_path / "tekton-pipeline.yaml"
    text = pipeline.read_text().replace("name: offsim-make\n", "name: offsim-nothing\n", 1)
    pipeline.write_text(text.replace('runAfter: ["lint"]', 'runAfter: ["nothing"]'))
    rules = {p["rule"] for p in lint(sorted(tmp_path.glob("*.yaml"))) if p["level"] == "error"}
    assert {"no-missing-resource", "no-pipeline-missing-task"} <= rules


def test_all_tekton_v1():
    kinds = [doc["kind"] for doc in documents()]
    assert {doc["apiVersion"] for doc in documents()} == {"tekton.dev/v1"}
    assert "Pipeline" in kinds and "PipelineRun" in kinds and "Task" in kinds


def test_tasks_use_only_what_they_declare():
    for name, task in by_kind("Task").items():
        spec = task["spec"]
        declared = {
            "params": names(spec.get("params")),
            "workspaces": names(spec.get("workspaces")),
            "results": names(spec.get("results")),
        }
        used = references(spec.get("steps"), set(declared))
        assert used, name
        for kind, ref, _ in used:
            assert ref in declared[kind], f"Task {name} uses undeclared {kind}.{ref}"
        for param in spec.get("params", []):
            assert any(k == "params" and r == param["name"] for k, r, _ in used), (
                f"Task {name}: param {param['name']} is never used"
            )


def test_pipeline_references_resolve():
    tasks = by_kind("Task")
    for name, pipeline in by_kind("Pipeline").items():
        spec = pipeline["spec"]
        params, workspaces = names(spec.get("params")), names(spec.get("workspaces"))
        pipeline_tasks = {t["name"]: t for t in spec["tasks"]}
        for kind, ref, attribute in references(spec, {"params", "tasks"}):
            if kind == "params":
                assert ref in params, f"{name}: undeclared param {ref}"
            else:
                assert ref in pipeline_tasks, f"{name}: unknown task {ref}"
                assert attribute == "results", f"{name}: $(tasks.{ref}.{attribute})"
        for task_name, item in pipeline_tasks.items():
            task_spec = tasks[item["taskRef"]["name"]]["spec"]
            given = names(item.get("params"))
            assert given <= names(task_spec.get("params")), task_name
            assert required(task_spec.get("params")) <= given, task_name
            bound = {w["name"]: w["workspace"] for w in item.get("workspaces", [])}
            assert set(bound) <= names(task_spec.get("workspaces")), task_name
            assert required(task_spec.get("workspaces")) <= set(bound), task_name
            assert set(bound.values()) <= workspaces, task_name
            for after in item.get("runAfter", []):
                assert after in pipeline_tasks, f"{task_name} runs after unknown {after}"
            for match in re.finditer(r"\$\(tasks\.([^.]+)\.results\.([^)]+)\)", json.dumps(item)):
                producer = tasks[pipeline_tasks[match[1]]["taskRef"]["name"]]["spec"]
                assert match[2] in names(producer.get("results")), task_name
        for result in spec.get("results", []):
            task, _, value = result["value"].removeprefix("$(tasks.").partition(".results.")
            assert value.rstrip(")") in names(
                tasks[pipeline_tasks[task]["taskRef"]["name"]]["spec"].get("results")
            )


def test_pipelinerun_binds_the_pipeline():
    pipelines = by_kind("Pipeline")
    for name, pipeline_run in by_kind("PipelineRun").items():
        spec = pipeline_run["spec"]
        pipeline = pipelines[spec["pipelineRef"]["name"]]["spec"]
        given = names(spec.get("params"))
        assert given <= names(pipeline.get("params")), name
        assert required(pipeline.get("params")) <= given, name
        bound = names(spec.get("workspaces"))
        assert required(pipeline.get("workspaces")) <= bound <= names(pipeline.get("workspaces"))
        assert {"registry", "revision"} <= names(pipeline.get("params"))


def test_pipeline_lints_tests_then_builds_every_member():
    (pipeline,) = by_kind("Pipeline").values()
    tasks = {t["name"]: t for t in pipeline["spec"]["tasks"]}
    task_defs = by_kind("Task")

    def target(task):
        return next(p["value"] for p in task["params"] if p["name"] == "target")

    make = {target(t): n for n, t in tasks.items() if t["taskRef"]["name"] == "offsim-make"}
    assert set(make) == {"lint", "test"}
    clone = next(n for n, t in tasks.items() if t["taskRef"]["name"] == "offsim-git-clone")
    assert tasks[make["lint"]]["runAfter"] == [clone]
    assert tasks[make["test"]]["runAfter"] == [make["lint"]]

    builds = {}
    for name, task in tasks.items():
        definition = task_defs[task["taskRef"]["name"]]["spec"]
        if not any("buildah" in step["image"] or "builder-image" in step["image"]
                   for step in definition["steps"]):  # fmt: skip
            continue
        params = {p["name"]: p["value"] for p in task["params"]}
        builds[params["member"]] = params["image"]
        assert "dockerfile" not in params, f"{name}: every image comes from the one Dockerfile"
        assert task["runAfter"] == [make["test"]], name
    assert builds == {m.folder: f"$(params.registry)/{m.distribution}" for m in built_members()}


def test_images_are_built_from_the_root_dockerfile_with_member():
    (build,) = [t for t in by_kind("Task").values() if "buildah" in json.dumps(t)]
    params = {p["name"]: p for p in build["spec"]["params"]}
    assert params["dockerfile"]["default"] == DOCKERFILE and (ROOT / DOCKERFILE).is_file()
    assert "default" not in params["member"], "a build names its member"
    (step,) = build["spec"]["steps"]
    env = {e["name"]: e["value"] for e in step["env"]}
    assert env["MEMBER"] == "$(params.member)" and env["DOCKERFILE"] == "$(params.dockerfile)"
    script = " ".join(step["script"].replace("\\\n", " ").split())  # continuations joined
    (build_command,) = re.findall(r"buildah \S+ build .*? \. ", script)
    for flag in ['--file "$DOCKERFILE"', '--build-arg "MEMBER=$MEMBER"', '--target "$TARGET"']:
        assert flag in build_command, flag


def test_images_are_built_with_buildah():
    (build,) = [t for t in by_kind("Task").values() if "buildah" in json.dumps(t)]
    builder = next(p for p in build["spec"]["params"] if p["name"] == "builder-image")
    assert builder["default"].startswith("quay.io/buildah/stable:v")
    assert "kaniko" not in json.dumps(documents())


def test_step_scripts_are_valid_shell(tmp_path):
    """Each step's script parses (sh -n); params reach them as environment variables, never
    pasted into the script text, so a value cannot inject a command."""
    for name, task in by_kind("Task").items():
        for step in task["spec"]["steps"]:
            script = step["script"]
            assert script.startswith("#!/bin/sh\n"), f"{name}/{step['name']}"
            assert not REFERENCE.search(script), f"{name}/{step['name']}: $(...) in the script"
            path = tmp_path / f"{name}-{step['name']}.sh"
            path.write_text(script)
            result = run(["sh", "-n", str(path)])
            assert result.returncode == 0, f"{name}/{step['name']}: {result.stderr}"


def test_the_last_task_records_every_image_built_in_the_deployed_overlay():
    """record-images runs once every build is done and pins each build's image, by the name
    the manifests give it, in the overlay Argo CD deploys: the names it sets are the overlay's."""
    (pipeline,) = by_kind("Pipeline").values()
    tasks = {t["name"]: t for t in pipeline["spec"]["tasks"]}
    builds = {n for n, t in tasks.items() if t["taskRef"]["name"] == "offsim-build-image"}
    (record,) = [t for t in tasks.values() if t["taskRef"]["name"] == "offsim-record-images"]
    assert set(record["runAfter"]) == builds
    assert pipeline["spec"]["tasks"][-1] is record
    images = next(p["value"] for p in record["params"] if p["name"] == "images").split()
    pinned = {}
    for entry in images:
        name, _, ref = entry.partition("=")
        build = re.fullmatch(r"\$\(tasks\.([\w-]+)\.results\.IMAGE_URL\)@\$\(tasks\.\1\.results"
                             r"\.IMAGE_DIGEST\)", ref)  # fmt: skip
        assert build, entry
        params = {p["name"]: p["value"] for p in tasks[build[1]]["params"]}
        assert params["image"] == f"$(params.registry)/{name}"
        pinned[name] = build[1]
    assert set(pinned.values()) == builds
    task = by_kind("Task")["offsim-record-images"]["spec"]
    overlay = next(p["default"] for p in task["params"] if p["name"] == "overlay")
    kustomization = yaml.safe_load((ROOT / overlay / "kustomization.yaml").read_text())
    assert {image["name"] for image in kustomization["images"]} == set(pinned)


def test_buildah_stores_on_an_empty_dir_and_keeps_the_healthcheck():
    build = by_kind("Task")["offsim-build-image"]["spec"]
    (step,) = build["steps"]
    (volume,) = build["volumes"]
    assert volume == {"name": "varlibcontainers", "emptyDir": {}}
    assert step["volumeMounts"] == [{"name": volume["name"], "mountPath": "/var/lib/containers"}]
    # OCI's image config has no HEALTHCHECK: buildah would drop the Dockerfile's.
    assert "--format docker" in step["script"]
