"""A throwaway container engine for the compose check: Debian's Podman (with runc) serving the
Docker API on a private socket, its images and containers in a private storage root, and the
stand-ins for the three Docker Hub base images built from Debian's packages.

Everything lives under one cache folder (`OFFSIM_CHECK_CACHE`, by default
`~/.cache/offsim/compose-check`): the storage keeps the stand-ins and the build cache between
runs, and the machine's own Podman or Docker (if any) never sees the stand-ins' official names.

Two things Podman does differently from Docker, handled here:
- Without systemd, Podman runs no health-check timers: `HealthChecks` runs
  `podman healthcheck run` for every running container every couple of seconds, which is what
  compose's `service_healthy` waits on.
- Podman's default container ulimits can exceed the host's hard limits (a container then fails
  to start): `nofile` is set to the host's hard limit and `nproc` to 4096.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STANDINS = HERE / "standins"
DEBIAN_SUITE = "trixie"
DEBIAN_MIRROR = os.environ.get("OFFSIM_CHECK_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_IMAGE = f"localhost/offsim-standin/debian:{DEBIAN_SUITE}"
# Each stand-in under the official name that the Dockerfile, the compose files and the Tekton
# Task use, built from the folder of the same name in standins/.
PYTHON_IMAGE = "docker.io/library/python:3.11-slim-trixie"
STANDIN_IMAGES = {
    "python": [PYTHON_IMAGE],
    # The Tekton make Task's image: the same stand-in with make and git, as the full image has.
    "python-full": ["docker.io/library/python:3.11-trixie"],
    "postgres": ["docker.io/library/postgres:18"],
    "nats": ["docker.io/library/nats:2.15.1-alpine"],
    # The Tekton pipeline's other images: buildah (build-image), the registry it pushes to, and
    # kustomize (record-images).
    "buildah": ["quay.io/buildah/stable:v1.41"],
    "registry": ["docker.io/library/registry:2"],
    "kustomize": ["registry.k8s.io/kustomize/kustomize:v5.6.0"],
}
# The registry the check's Tekton build pushes to and the prod stack pulls from (the registry
# stand-in, published on this machine's loopback only). Plain HTTP: both this engine and the
# buildah step are told it is insecure.
REGISTRY = "localhost:5000"
DEBIAN_PACKAGES = ["podman", "runc", "netavark", "aardvark-dns", "iptables", "debootstrap"]
# The machine's CA bundle, so that pip in a stand-in reaches PyPI the way the machine does.
MACHINE_CA = Path(os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"))


def log(message: str) -> None:
    print(f"compose-check: {message}", flush=True)


class Unavailable(Exception):
    """The engine cannot be had on this machine; the message says why (the check skips)."""


def ensure_podman() -> None:
    """Podman, runc, netavark and debootstrap from Debian's packages, installed when missing
    and allowed (root with apt-get); otherwise Unavailable."""
    missing = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]
    if not Path("/usr/lib/podman/netavark").exists() and shutil.which("netavark") is None:
        missing.append("netavark")
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise Unavailable(
            f"{', '.join(missing)} missing, and only root with apt-get installs them here: "
            f"install {' '.join(DEBIAN_PACKAGES)} (Debian) and run it again"
        )
    log(f"installing {' '.join(DEBIAN_PACKAGES)} from Debian")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "--no-install-recommends",
                     *DEBIAN_PACKAGES]):  # fmt: skip
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise Unavailable(f"{' '.join(command[:2])} failed:\n{result.stderr[-2000:]}")


class Engine:
    """Podman with a private configuration, storage and Docker API socket."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        # Fixed paths: Podman records its run folders in the storage's database and keeps
        # using the first ones it saw, so they must be the same at every run.
        self.run_dir = cache / "run"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.lock = (self.run_dir / "lock").open("w")
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # one engine per cache: wait for the other check to end
            log(f"waiting for another compose check on {cache} to end")
            fcntl.flock(self.lock, fcntl.LOCK_EX)
        self.socket = self.run_dir / "podman.sock"
        self.socket.unlink(missing_ok=True)
        self.env = {**os.environ, **self._configure()}
        self.service: subprocess.Popen | None = None

    def _configure(self) -> dict[str, str]:
        """containers.conf, storage.conf and registries.conf of this engine alone."""
        storage = self.cache / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        files = {
            "containers.conf": f"""
[containers]
default_ulimits = {json.dumps(container_ulimits())}
[engine]
runtime = "runc"
tmp_dir = "{self.run_dir}/tmp"
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_backend = "netavark"
network_config_dir = "{self.run_dir}/networks"
""",
            "storage.conf": f"""
[storage]
driver = "overlay"
graphroot = "{storage}"
runroot = "{self.run_dir}/runroot"
""",
            # Short names (python:3.11-slim-trixie, postgres:18) mean Docker Hub, as in Docker.
            "registries.conf": f"""
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"

[[registry]]
location = "{REGISTRY}"
insecure = true
""",
        }
        for name, text in files.items():
            (self.run_dir / name).write_text(text.lstrip())
        return {
            "CONTAINERS_CONF": str(self.run_dir / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.run_dir / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(self.run_dir / "registries.conf"),
            "DOCKER_HOST": f"unix://{self.socket}",
            # Compose's classic builder on the Docker API (Podman has no BuildKit).
            "COMPOSE_BAKE": "false",
            "DOCKER_BUILDKIT": "0",
        }

    def podman(self, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        result = subprocess.run(["podman", *args], env=self.env, **kwargs)
        if check and result.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)} failed:\n{result.stderr}")
        return result

    def start(self) -> None:
        self._forget_old_run_folders()
        log_file = (self.run_dir / "service.log").open("w")
        self.service = subprocess.Popen(
            ["podman", "system", "service", "--time=0", f"unix://{self.socket}"],
            env=self.env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.service.poll() is not None:
                raise RuntimeError(f"podman system service exited: {self.service_log()}")
            if _answers(self.socket):
                log(f"Podman {self.version()} serves the Docker API on {self.socket}")
                return
            time.sleep(0.2)
        raise RuntimeError(f"podman system service did not answer: {self.service_log()}")

    def _forget_old_run_folders(self) -> None:
        """A storage made with other run folders (an older layout of this check) keeps them in
        its database; with no container in it, the database can go (images stay)."""
        recorded = self.podman("info", "--format", "{{.Store.RunRoot}}", check=False)
        if recorded.returncode == 0 and recorded.stdout.strip() == str(self.run_dir / "runroot"):
            return
        if self.podman("ps", "-aq", check=False).stdout.strip():
            return
        database = self.cache / "storage" / "libpod" / "bolt_state.db"
        if database.exists():
            log("the engine's storage recorded other run folders: its state database is reset")
            database.unlink()

    def version(self) -> str:
        return self.podman("version", "--format", "{{.Client.Version}}").stdout.strip()

    def service_log(self) -> str:
        path = self.run_dir / "service.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def stop(self) -> None:
        """Stop the API service and every container this engine still runs."""
        leftover = self.podman("ps", "-aq", check=False).stdout.split()
        if leftover:
            log(f"removing {len(leftover)} container(s) left behind")
            self.podman("rm", "-f", "-t", "5", *leftover, check=False)
        # Untagged layers older than three days: without this the cache grows by every code
        # change's layers. Younger ones stay, as they are the build cache of the next run (the
        # stages before the last are untagged too).
        self.podman("image", "prune", "--force", "--filter", "until=72h", check=False)
        if self.service is not None and self.service.poll() is None:
            self.service.terminate()
            try:
                self.service.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.service.kill()
                self.service.wait()
        # conmon, aardvark-dns or a health check of this engine still running would outlive
        # the check: their command lines name the engine's run folder.
        deadline = time.monotonic() + 15  # a container's clean-up may still be finishing
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in self.processes():
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            log(f"ending a process left behind: {pid} {command.decode(errors='replace')[:200]}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.lock.close()

    def processes(self) -> list[int]:
        """The processes whose command line names this engine's run folder (conmon,
        aardvark-dns, a container's clean-up)."""
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if str(self.run_dir).encode() in cmdline:
                found.append(int(proc.name))
        return found

    # --- the stand-ins ------------------------------------------------------------------------

    def has_image(self, name: str) -> bool:
        return self.podman("image", "exists", name, check=False).returncode == 0

    def build_standins(self) -> None:
        """The Debian base (debootstrap, once), then each stand-in; Podman's layer cache makes
        an unchanged stand-in a no-op."""
        started = time.monotonic()
        if not self.has_image(BASE_IMAGE):
            self._debootstrap()
        for folder, names in STANDIN_IMAGES.items():
            context = STANDINS / folder
            with tempfile.TemporaryDirectory() as tmp:
                build_context = Path(tmp) / folder
                shutil.copytree(context, build_context)
                shutil.copy(MACHINE_CA, build_context / "machine-ca.crt")
                tags = [arg for name in names for arg in ("--tag", name)]
                self.podman(
                    "build", "--layers", "--pull=never", *tags,
                    "--build-arg", f"STANDIN_BASE={BASE_IMAGE}",
                    "--build-arg", f"STANDIN_PYTHON={PYTHON_IMAGE}",
                    "--label", f"org.offsim.standin={folder}",
                    "--label", f"org.offsim.standin.digest={_digest(context)}",
                    str(build_context),
                )  # fmt: skip
            log(f"stand-in {', '.join(names)} built from Debian's packages ({folder}/)")
        log(f"stand-in base images ready in {time.monotonic() - started:.0f} s")

    def _debootstrap(self) -> None:
        log(f"debootstrap a minimal Debian {DEBIAN_SUITE} for the stand-ins (once; cached)")
        with tempfile.TemporaryDirectory(dir=self.cache) as tmp:
            root = Path(tmp) / "rootfs"
            result = subprocess.run(
                ["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(root), DEBIAN_MIRROR],
                capture_output=True, text=True,
            )  # fmt: skip
            if result.returncode != 0:
                raise RuntimeError(f"debootstrap failed:\n{result.stdout[-3000:]}")
            tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
            self.podman("import", "--change", 'CMD ["bash"]', "-", BASE_IMAGE, stdin=tar.stdout)
            tar.wait()


class HealthChecks(threading.Thread):
    """Runs every running container's health check every `interval` seconds, as Docker's
    engine (or Podman with systemd) does on its own."""

    def __init__(self, engine: Engine, interval: float = 2.0) -> None:
        super().__init__(name="health-checks", daemon=True)
        self.engine = engine
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            ids = self.engine.podman(
                "ps", "-q", "--filter", "status=running", check=False
            ).stdout.split()  # fmt: skip
            for container in ids:
                # A container without a check answers with an error: nothing to do for it.
                self.engine.podman("healthcheck", "run", container, check=False)

    def stop(self) -> None:
        self.stopped.set()
        if self.ident is not None:  # a check that failed before it started has none to join
            self.join(timeout=30)


def container_ulimits() -> list[str]:
    """Ulimits within this machine's hard limits, for the engine's containers and for buildah's
    inside the Tekton build (each default is over them here)."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 1048576 if nofile == resource.RLIM_INFINITY else nofile
    return [f"nofile={nofile}:{nofile}", "nproc=4096:4096"]


def _answers(path: Path) -> bool:
    """Whether the Docker API answers on this Unix socket (GET /_ping)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
            return b" 200 " in sock.recv(64)
    except OSError:
        return False


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(folder).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


if __name__ == "__main__":
    sys.exit("run deploy/compose-check/check.py (make compose-check)")
