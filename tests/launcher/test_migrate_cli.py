"""`offsim migrate --roles FILE`: the migrations, then each component's Postgres role with its
rights; a bad file is refused, naming what is wrong, before any database is touched; without
--roles, the migrations only."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from offsim_common import credentials
from offsim_common.db_roles import quote_ident
from offsim_common.migrate import migration_files
from offsim_launcher.__main__ import main

# Nothing listens there: a command that reached the database would fail on connecting.
NOWHERE = "postgresql://nobody@127.0.0.1:1/nowhere"


@pytest.fixture
async def fresh_database(database_url: str) -> AsyncIterator[str]:
    """The DSN of a new, empty database on the test server, dropped after the test."""
    name = f"cli_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


def roles_file(path: Path) -> tuple[Path, credentials.Credentials]:
    """A credentials file whose Postgres roles no other test uses."""
    made = credentials.generate()
    tag = uuid.uuid4().hex[:8]
    for component, entry in made["postgres"].items():
        entry["user"] = f"offsim_c{tag}_{component}"
    credentials.write(path, made)
    return path, made


async def offsim(*args: str, database_url: str) -> tuple[int, str, str]:
    """Run `offsim *args` as a user would: its exit code, standard output and error."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}
    env["DATABASE_URL"] = database_url
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "offsim_launcher", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()


async def test_migrate_with_roles_makes_each_components_role_with_its_rights(
    fresh_database, tmp_path
):
    path, made = roles_file(tmp_path / "credentials.json")
    role = {component: entry["user"] for component, entry in made["postgres"].items()}
    try:
        code, out, err = await offsim("migrate", "--roles", str(path), database_url=fresh_database)
        assert code == 0, err
        assert out.startswith("applied: 001_schema.sql, ")
        assert f"{role['users']} (users)" in out and f"{role['etl']} (etl)" in out
        secrets = [entry["password"] for entry in made["postgres"].values()]
        assert not [secret for secret in secrets if secret in out + err]

        conn = await asyncpg.connect(fresh_database)
        try:
            can = await conn.fetchrow(
                """SELECT has_any_column_privilege($1, 'product_orders', 'UPDATE') AS users_update,
                          has_any_column_privilege($2, 'product_orders', 'UPDATE')
                              AS orders_update,
                          has_table_privilege($3, 'products', 'SELECT') AS dashboard_select,
                          has_table_privilege($3, 'products', 'INSERT') AS dashboard_insert,
                          has_table_privilege($4, 'users', 'SELECT') AS etl_select_users,
                          has_function_privilege($1, 'place_restock_orders(bigint[], text[],
                              integer[], text[])', 'EXECUTE') AS users_restock,
                          (SELECT count(*) FROM pg_roles WHERE rolname = ANY($5) AND rolcanlogin)
                              AS logins""",
                role["users"], role["orders"], role["dashboard"], role["etl"], list(role.values()),
            )  # fmt: skip
        finally:
            await conn.close()
        assert dict(can) == {
            "users_update": False, "orders_update": True, "dashboard_select": True,
            "dashboard_insert": False, "etl_select_users": False, "users_restock": True,
            "logins": len(role),
        }  # fmt: skip

        # Again: nothing to apply, the roles made again the same.
        code, out, err = await offsim("migrate", "--roles", str(path), database_url=fresh_database)
        assert code == 0, err
        assert out.startswith("database is up to date\nroles and their rights: ")
    finally:
        conn = await asyncpg.connect(fresh_database)
        try:
            rows = await conn.fetch(
                "SELECT rolname FROM pg_roles WHERE rolname = ANY($1)", list(role.values())
            )
            if rows:
                names = ", ".join(quote_ident(row["rolname"]) for row in rows)
                await conn.execute(f"DROP OWNED BY {names}")
                await conn.execute(f"DROP ROLE {names}")
        finally:
            await conn.close()


async def test_migrate_without_roles_applies_the_migrations_and_makes_no_role(fresh_database):
    admin = await asyncpg.connect(fresh_database)
    try:
        before = {row["rolname"] for row in await admin.fetch("SELECT rolname FROM pg_roles")}
        code, out, err = await offsim("migrate", database_url=fresh_database)
        after = {row["rolname"] for row in await admin.fetch("SELECT rolname FROM pg_roles")}
        applied = await admin.fetchval("SELECT count(*) FROM schema_migrations")
    finally:
        await admin.close()
    assert code == 0, err
    assert out == f"applied: {', '.join(name for _, name, _ in migration_files())}\n"
    assert applied == len(migration_files())
    assert after == before


def without(data: dict, component: str) -> dict:
    postgres = {c: e for c, e in data["postgres"].items() if c != component}
    return {**data, "postgres": postgres}


def renamed(data: dict, component: str, user: str) -> dict:
    postgres = {**data["postgres"], component: {**data["postgres"][component], "user": user}}
    return {**data, "postgres": postgres}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (lambda made: "{ not json", "not JSON"),
        (lambda made: json.dumps({"nats": made["nats"]}), "'postgres' must be an object"),
        (lambda made: json.dumps(without(made, "etl")), "postgres.etl must have a user and a"),
        (lambda made: json.dumps(renamed(made, "users", "Offsim Users")), "postgres.users: role"),
        (
            lambda made: json.dumps(renamed(made, "orders", made["postgres"]["users"]["user"])),
            "postgres.orders: role .* is users's too",
        ),
        # Only the "postgres" section is needed: another one may be missing, not this one.
        (lambda made: json.dumps({"postgres": []}), "'postgres' must be an object"),
    ],
)
def test_a_bad_roles_file_is_refused_before_the_database_is_touched(
    tmp_path, monkeypatch, content, message
):
    path, made = roles_file(tmp_path / "credentials.json")
    path.write_text(content(made))
    monkeypatch.setenv("DATABASE_URL", NOWHERE)
    monkeypatch.delenv("DATABASE_PASSWORD", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(["migrate", "--roles", str(path)])
    said = str(exited.value.code)
    assert said.startswith(f"offsim: {path}: ")
    assert re.search(message, said), said


def test_a_roles_file_without_nats_is_enough_to_get_past_the_check(tmp_path, monkeypatch):
    """The check passes on the "postgres" section alone: the command goes on to the database
    (which is not there)."""
    path, made = roles_file(tmp_path / "credentials.json")
    path.write_text(json.dumps({"postgres": made["postgres"]}))
    monkeypatch.setenv("DATABASE_URL", NOWHERE)
    monkeypatch.delenv("DATABASE_PASSWORD", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(["migrate", "--roles", str(path)])
    said = str(exited.value.code)
    assert said.startswith("offsim: ") and str(path) not in said, said


def test_a_missing_roles_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", NOWHERE)
    missing = tmp_path / "nowhere.json"
    with pytest.raises(SystemExit) as exited:
        main(["migrate", "--roles", str(missing)])
    assert str(missing) in str(exited.value.code)
