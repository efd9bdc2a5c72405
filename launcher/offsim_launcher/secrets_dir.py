"""`offsim credentials DIR`: every secret of a container deployment, made once, as files.

Compose mounts each file as a secret into the one container that needs it (`*_FILE`
variables read them, settings.SECRET_VARIABLES); Kubernetes takes them as Secrets (made from
the same folder, docs/deploy.md). Nothing secret is ever in a committed file. A second run
keeps what is there (the credentials of a running deployment) and writes the derived files
again, so a component added later gets its own.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from offsim_common import credentials, nats_rights

# The folder is its owner's alone (0700); the files in it are readable by all (0644), because
# compose's file secrets are bind mounts that keep the host file's owner and mode, and offsim's
# images run as a user of their own. Only the folder's owner reaches them on the host.
CREDENTIALS = "credentials.json"
NATS_AUTHORIZATION = "nats-auth.conf"
POSTGRES_OWNER = "postgres-owner.password"
SERVICE_TOKEN = "service-token"
# The dashboard's operator token (OFFSIM_CONTROL_TOKEN): it opens the generator's controls and
# nothing else, so the dashboard never holds the service credential.
CONTROL_TOKEN = "control-token"


def nats_password_file(component: str) -> str:
    return f"nats-{component}.password"


def postgres_password_file(component: str) -> str:
    return f"postgres-{component}.password"


def write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o644)


def _kept(path: Path, make) -> str:
    """The secret in `path`, made the first time."""
    if path.exists():
        return path.read_text().strip()
    value = make()
    write_secret(path, value + "\n")
    return value


def write_secrets(folder: Path) -> list[Path]:
    """Make (or complete) the secrets folder; return the files it holds."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    creds = credentials.load_or_create(folder / CREDENTIALS)
    os.chmod(folder / CREDENTIALS, 0o644)
    _kept(folder / POSTGRES_OWNER, credentials.new_password)
    _kept(folder / SERVICE_TOKEN, lambda: "offsim_service_" + secrets.token_urlsafe(32))
    _kept(folder / CONTROL_TOKEN, lambda: "offsim_control_" + secrets.token_urlsafe(32))
    write_secret(folder / NATS_AUTHORIZATION, nats_rights.authorization(creds["nats"]))
    for component, entry in creds["nats"].items():
        write_secret(folder / nats_password_file(component), entry["password"])
    for component, entry in creds["postgres"].items():
        write_secret(folder / postgres_password_file(component), entry["password"])
    return sorted(folder.iterdir())
