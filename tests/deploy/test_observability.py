"""`--profile observability` of docker-compose.dev.yml: the OpenTelemetry Collector, Jaeger,
Prometheus and Grafana, checked without their images (which the compose check cannot pull): the
merged config, the files it mounts, and that the pieces point at each other."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from offsim_common import metrics

from tests.deploy.test_compose import BASE, DEV, LONG_RUNNING, check_schema, compose
from tests.deploy.workspace import ROOT

PROFILE = ["--profile", "observability"]
OBSERVABILITY = {"otel-collector", "jaeger", "prometheus", "grafana"}
CONFIG = ROOT / "deploy" / "observability"


@pytest.fixture(scope="module")
def merged() -> dict:
    result = compose([BASE, DEV], *PROFILE, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_the_default_stacks_need_none_of_the_profile_images():
    for files in ([BASE], [BASE, DEV]):
        result = compose(files, "config", "--format", "json")
        assert result.returncode == 0, result.stderr
        assert not OBSERVABILITY & set(json.loads(result.stdout)["services"])


def test_the_profile_adds_its_services_and_matches_compose_spec(merged, tmp_path):
    services = merged["services"]
    assert OBSERVABILITY <= set(services)
    for name in OBSERVABILITY:
        assert services[name]["profiles"] == ["observability"], name
        assert ":" in services[name]["image"] and not services[name]["image"].endswith(":latest")
    path = tmp_path / "observability.json"
    path.write_text(json.dumps(merged))
    result = check_schema([str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_profile_mounts_files_that_exist(merged):
    for name in OBSERVABILITY:
        for volume in merged["services"][name].get("volumes", []):
            assert volume["type"] == "bind", name
            source = Path(volume["source"])
            assert source.exists() and CONFIG in source.parents, f"{name}: {source}"


def test_the_uis_are_on_the_documented_local_addresses(merged):
    published = {
        (name, int(port["published"]), port.get("host_ip"))
        for name in OBSERVABILITY
        for port in merged["services"][name].get("ports", [])
    }
    wanted = {("jaeger", 16686), ("grafana", 3000), ("prometheus", 9090), ("otel-collector", 4318)}
    assert {(name, port, "127.0.0.1") for name, port in wanted} <= published
    readme = (ROOT / "README.md").read_text()
    for address in ("http://localhost:16686", "http://localhost:3000", "http://localhost:9090"):
        assert address in readme


def test_services_send_spans_to_the_collector_which_sends_them_to_jaeger(merged):
    services = merged["services"]
    for name in LONG_RUNNING:
        environment = services[name]["environment"]
        assert environment["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318", name
        assert "OTEL_TRACES_EXPORTER" in environment, name
    config = load(CONFIG / "otel-collector.yaml")
    mount = next(v for v in services["otel-collector"]["volumes"])
    assert f"--config={mount['target']}" in services["otel-collector"]["command"]
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == "0.0.0.0:4318"
    pipeline = config["service"]["pipelines"]["traces"]
    for kind in ("receivers", "processors", "exporters"):
        assert set(pipeline[kind]) <= set(config[kind]), kind
    (exporter,) = pipeline["exporters"]
    host, port = config["exporters"][exporter]["endpoint"].rsplit(":", 1)
    assert host in services and services[host]["image"].startswith("jaegertracing/jaeger:")
    assert port == "4317"


def test_prometheus_scrapes_every_long_running_service(merged):
    config = load(CONFIG / "prometheus.yml")
    targets = {t for job in config["scrape_configs"] for c in job["static_configs"]
               for t in c["targets"]}  # fmt: skip
    assert targets == {f"{name}:{port}" for name, port in LONG_RUNNING.items()}
    assert all(job["metrics_path"] == "/metrics" for job in config["scrape_configs"])


def test_grafana_is_provisioned_with_both_sources_and_a_dashboard_of_real_metrics(merged):
    services = merged["services"]
    sources = load(CONFIG / "grafana" / "provisioning" / "datasources" / "datasources.yaml")
    urls = {s["type"]: s["url"] for s in sources["datasources"]}
    assert urls == {"prometheus": "http://prometheus:9090", "jaeger": "http://jaeger:16686"}
    providers = load(CONFIG / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml")
    mounts = {v["target"]: Path(v["source"]) for v in services["grafana"]["volumes"]}
    (provider,) = providers["providers"]
    folder = mounts[provider["options"]["path"]]
    dashboards = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    assert dashboards
    known = {c._name for c in vars(metrics).values() if hasattr(c, "_name")}
    uids = {s["uid"] for s in sources["datasources"]}
    for dashboard in dashboards:
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] in uids
            for target in panel["targets"]:
                used = set(re.findall(r"offsim_[a-z_]+", target["expr"]))
                used = {re.sub(r"_(bucket|count|sum|total)$", "", name) for name in used}
                assert used and used <= known, f"{panel['title']}: {used - known}"
