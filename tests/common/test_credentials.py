"""The credentials file and the secrets folder: their shape, their modes, and that a second run
keeps what a running deployment uses; secrets read from files (NAME_FILE)."""

from __future__ import annotations

import json
import stat

import pytest
from offsim_common import credentials
from offsim_common.settings import ConfigError, ServiceSettings
from offsim_launcher.secrets_dir import write_secrets


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_credentials_have_a_user_and_password_per_component(tmp_path):
    path = tmp_path / "credentials.json"
    made = credentials.load_or_create(path)
    assert mode(path) == 0o600
    stored = json.loads(path.read_text())
    assert stored == made
    assert set(stored["nats"]) == {"users", "orders", "notifications", "generator", "dashboard",
                                   "etl", "device"}  # fmt: skip
    assert set(stored["postgres"]) == set(stored["nats"]) - {"device"}
    passwords = [e["password"] for section in stored.values() for e in section.values()]
    assert len(set(passwords)) == len(passwords) and all(len(p) >= 24 for p in passwords)
    # A second run keeps them: a running deployment's passwords never change under it.
    assert credentials.load_or_create(path) == made


def test_a_credentials_file_missing_a_component_is_refused_naming_it(tmp_path):
    path = tmp_path / "credentials.json"
    broken = credentials.generate()
    del broken["nats"]["device"]
    path.write_text(json.dumps(broken))
    with pytest.raises(credentials.CredentialsError, match=r"nats\.device"):
        credentials.read(path)


def test_the_secrets_folder_holds_one_file_per_secret_for_its_owner_only(tmp_path):
    folder = tmp_path / "secrets"
    files = {p.name for p in write_secrets(folder)}
    # The folder is its owner's; the files in it readable by the containers' own user.
    assert mode(folder) == 0o700
    assert all(mode(folder / name) == 0o644 for name in files)
    creds = credentials.read(folder / "credentials.json")
    for component, entry in creds["nats"].items():
        assert (folder / f"nats-{component}.password").read_text() == entry["password"]
        assert entry["password"] in (folder / "nats-auth.conf").read_text()
    for component, entry in creds["postgres"].items():
        assert (folder / f"postgres-{component}.password").read_text() == entry["password"]
    assert {"postgres-owner.password", "service-token", "control-token"} <= files
    owner = (folder / "postgres-owner.password").read_text()
    # Made again: nothing that exists changes.
    write_secrets(folder)
    assert credentials.read(folder / "credentials.json") == creds
    assert (folder / "postgres-owner.password").read_text() == owner


def test_a_secret_comes_from_its_file_and_the_variable_wins(tmp_path):
    secret = tmp_path / "nats-password"
    secret.write_text("from-the-file\n")
    settings = ServiceSettings.from_env({"NATS_USER": "users", "NATS_PASSWORD_FILE": str(secret)})
    assert settings.nats_password == "from-the-file"
    both = {"NATS_PASSWORD": "from-the-variable", "NATS_PASSWORD_FILE": str(secret)}
    assert ServiceSettings.from_env(both).nats_password == "from-the-variable"
    with pytest.raises(ConfigError, match="NATS_PASSWORD_FILE"):
        ServiceSettings.from_env({"NATS_PASSWORD_FILE": str(tmp_path / "missing")})


def test_the_database_password_joins_the_url_and_is_never_shown(tmp_path):
    settings = ServiceSettings.from_env(
        {"DATABASE_URL": "postgresql://offsim_users@db:5432/offsim", "DATABASE_PASSWORD": "p@ss/w"}
    )
    assert settings.database_url == "postgresql://offsim_users:p%40ss%2Fw@db:5432/offsim"
    assert "p@ss" not in repr(settings) and "p%40ss" not in repr(settings)
    with pytest.raises(ConfigError, match="DATABASE_URL must name its user"):
        ServiceSettings.from_env(
            {"DATABASE_URL": "postgresql:///offsim?host=/tmp", "DATABASE_PASSWORD": "x"}
        )
