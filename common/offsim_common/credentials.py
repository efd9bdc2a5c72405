"""The credentials of a deployment: one NATS user and one Postgres role per component.

Shaped as `offsim up` keeps them in `<data dir>/credentials.json` (readable by its owner only)
and as `offsim credentials` writes them for compose and Kubernetes:

    {"nats": {"users": {"user": "users", "password": "..."}, ..., "device": {...}},
     "postgres": {"users": {"user": "offsim_users", "password": "..."}, ...}}

What each may do is offsim_common.nats_rights (NATS) and offsim_common.db_roles (Postgres).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Every component that connects, or may one day; `device` is every SSD (NATS and MQTT).
POSTGRES_COMPONENTS = ("users", "orders", "notifications", "generator", "dashboard", "etl")
NATS_COMPONENTS = (*POSTGRES_COMPONENTS, "device")

Credentials = dict[str, dict[str, dict[str, str]]]


class CredentialsError(ValueError):
    """A credentials file that is missing a component or is not shaped as above."""


def new_password() -> str:
    """URL-safe, so that it can sit in a DSN or a NATS URL unescaped."""
    return secrets.token_urlsafe(24)


def generate() -> Credentials:
    """Fresh credentials for every component: NATS users named as the components, Postgres
    roles named offsim_<component>."""
    return {
        "nats": {c: {"user": c, "password": new_password()} for c in NATS_COMPONENTS},
        "postgres": {
            c: {"user": f"offsim_{c}", "password": new_password()} for c in POSTGRES_COMPONENTS
        },
    }


def validate(data: Any) -> Credentials:
    """`data` as Credentials, or a CredentialsError naming what is missing or wrong."""
    if not isinstance(data, dict):
        raise CredentialsError("credentials: must be a JSON object")
    for kind, components in (("nats", NATS_COMPONENTS), ("postgres", POSTGRES_COMPONENTS)):
        _section(data, kind, components)
    return data


def validate_postgres(data: Any) -> dict[str, dict[str, str]]:
    """The "postgres" section of credentials-shaped `data` (what `offsim migrate --roles` needs:
    the other sections may be absent), or a CredentialsError naming what is missing or wrong."""
    if not isinstance(data, dict):
        raise CredentialsError("credentials: must be a JSON object")
    return _section(data, "postgres", POSTGRES_COMPONENTS)


def _section(data: dict, kind: str, components: tuple[str, ...]) -> dict[str, dict[str, str]]:
    section = data.get(kind)
    if not isinstance(section, dict):
        raise CredentialsError(f"credentials: {kind!r} must be an object")
    for component in components:
        entry = section.get(component)
        if not (
            isinstance(entry, dict)
            and all(isinstance(entry.get(k), str) and entry[k] for k in ("user", "password"))
        ):
            raise CredentialsError(
                f"credentials: {kind}.{component} must have a user and a password"
            )
    return section


def write(path: Path, credentials: Mapping[str, Any]) -> None:
    """Write `credentials` to `path`, readable and writable by its owner only (made so before a
    byte is written; an existing file is replaced the same way)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(credentials, out, indent=2)
        out.write("\n")
    os.chmod(partial, 0o600)
    os.replace(partial, path)


def read(path: Path) -> Credentials:
    try:
        return validate(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise CredentialsError(f"{path}: not JSON ({exc})") from None


def load_or_create(path: Path) -> Credentials:
    """The credentials kept in `path`, made (and written) the first time."""
    if path.exists():
        return read(path)
    credentials = generate()
    write(path, credentials)
    return credentials
