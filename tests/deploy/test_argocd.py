"""GitOps with Argo CD (deploy/argocd): the Application is valid against Argo CD's published
CRD schema (tests/deploy/schemas), strictly (an unknown field is an error, as kubectl's strict
field validation makes it), and says what offsim needs: the scaled overlay of this repository,
synced automatically with prune and self-heal, into the namespace the overlay names; and the
migration Job, which cannot be updated in place, is a hook Argo CD makes anew at each sync."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.deploy.workspace import ROOT, load_yaml_documents

ARGOCD = ROOT / "deploy" / "argocd"
CRD = Path(__file__).parent / "schemas" / "argocd-application-crd.yaml"


@cache
def application_schema() -> dict:
    """The v1alpha1 schema of the CRD, strict: wherever it lists properties and neither allows
    others nor keeps unknown fields, others are refused."""
    crd = yaml.safe_load(CRD.read_text())
    assert crd["spec"]["names"]["kind"] == "Application"
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))


def _strict(node):
    if isinstance(node, dict):
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for value in node.values():
            _strict(value)
    elif isinstance(node, list):
        for value in node:
            _strict(value)
    return node


def applications() -> list[dict]:
    docs = [doc for path in sorted(ARGOCD.glob("*.yaml")) for doc in load_yaml_documents(path)]
    assert docs, "deploy/argocd has no manifest"
    return docs


def validate(doc: dict) -> None:
    jsonschema.validate(doc, application_schema())


def test_the_applications_are_valid_against_argo_cds_crd():
    for doc in applications():
        assert (doc["apiVersion"], doc["kind"]) == ("argoproj.io/v1alpha1", "Application")
        validate(doc)


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda app: app["spec"]["syncPolicy"]["automated"].update(selfheal=True), "selfheal"),
        (lambda app: app["spec"]["source"].pop("repoURL"), "repoURL"),
        (lambda app: app["spec"]["syncPolicy"]["retry"].update(limit="five"), "five"),
    ],
)
def test_the_schema_check_refuses_what_argo_cd_would(change, path):
    """The check can fail: a misspelt field, a missing one, a wrong type."""
    app = copy.deepcopy(applications()[0])
    change(app)
    with pytest.raises(jsonschema.ValidationError, match=path):
        validate(app)


def test_it_deploys_the_scaled_overlay_automatically_with_prune_and_self_heal():
    [app] = applications()
    source, sync = app["spec"]["source"], app["spec"]["syncPolicy"]
    assert source["path"] == "deploy/k8s/overlays/scaled"
    assert (ROOT / source["path"] / "kustomization.yaml").exists()
    # The branch the pipeline's last task pins the images on.
    pipeline = yaml.safe_load((ROOT / "tekton" / "pipeline.yaml").read_text())["spec"]
    [branch] = [p["default"] for p in pipeline["params"] if p["name"] == "deploy-branch"]
    assert source["targetRevision"] == branch
    [record] = [t for t in pipeline["tasks"] if t["taskRef"]["name"] == "offsim-record-images"]
    task = yaml.safe_load((ROOT / "tekton" / "tasks" / "record-images.yaml").read_text())
    [overlay] = [p["default"] for p in task["spec"]["params"] if p["name"] == "overlay"]
    assert overlay == source["path"]
    assert {"name": "branch", "value": "$(params.deploy-branch)"} in record["params"]
    assert sync["automated"] == {"prune": True, "selfHeal": True}
    overlay = yaml.safe_load((ROOT / source["path"] / "kustomization.yaml").read_text())
    assert app["spec"]["destination"]["namespace"] == overlay["namespace"]
    # The same repository the Tekton pipeline builds from.
    run = yaml.safe_load((ROOT / "tekton" / "pipelinerun.yaml").read_text())
    [repo] = [p["value"] for p in run["spec"]["params"] if p["name"] == "repo-url"]
    assert source["repoURL"] == repo


def test_the_migration_job_is_a_sync_hook_made_anew():
    [job] = load_yaml_documents(ROOT / "deploy" / "k8s" / "base" / "migrate-job.yaml")
    annotations = job["metadata"]["annotations"]
    assert annotations["argocd.argoproj.io/hook"] == "Sync"
    assert annotations["argocd.argoproj.io/hook-delete-policy"] == "BeforeHookCreation"
