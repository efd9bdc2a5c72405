"""offsim: `offsim up` runs the whole simulation; `offsim migrate` applies the migrations;
`offsim credentials` makes a container deployment's secrets; `offsim feed` shows the live feed
of a simulation running elsewhere; `offsim report` writes a run's report and `offsim compare`
sets two side by side."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

import asyncpg
from offsim_common import credentials
from offsim_common.credentials import CredentialsError
from offsim_common.db_roles import RolesError, ensure_roles, role_names
from offsim_common.migrate import migrate
from offsim_common.settings import ConfigError, DatabaseSettings, GeneratorUrl, ServiceSettings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="offsim", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="run the whole simulation and show it live")
    up.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("OFFSIM_DATA_DIR", ".offsim")),
        help="where the embedded NATS and Postgres keep their data (env OFFSIM_DATA_DIR)",
    )
    up.add_argument("--no-sample", action="store_true", help="do not load the bundled products")
    migrating = commands.add_parser("migrate", help="apply the database migrations to DATABASE_URL")
    migrating.add_argument(
        "--roles",
        type=Path,
        metavar="FILE",
        help="then make each component's Postgres role, with its password and its rights, from "
        'the "postgres" section of FILE (shaped as credentials.json)',
    )
    creds = commands.add_parser(
        "credentials",
        help="make the secrets of a container deployment (compose, Kubernetes) in a folder",
    )
    creds.add_argument("folder", type=Path, help="where to keep them, e.g. .secrets")
    commands.add_parser(
        "feed", help="print the live feed of the simulation at NATS_URL / DATABASE_URL"
    )
    reporting = commands.add_parser(
        "report",
        help="write a run's report: an HTML page and report.json beside it (docs/kpis.md)",
    )
    reporting.add_argument(
        "--out", type=Path, default=Path("report.html"), help="the HTML file (default report.html)"
    )
    reporting.add_argument(
        "--events",
        type=Path,
        metavar="FILE",
        help="a dry run's JSON lines (offsim-generator --dry-run > FILE); without it, the live "
        "simulation at DATABASE_URL (and its generator at GENERATOR_URL)",
    )
    comparing = commands.add_parser("compare", help="two runs' KPIs side by side (report.json)")
    comparing.add_argument("a", type=Path, metavar="A.json")
    comparing.add_argument("b", type=Path, metavar="B.json")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            from .up import run_up

            run_up(args.data_dir, load_sample=not args.no_sample)
        elif args.command == "credentials":
            from .secrets_dir import write_secrets

            files = write_secrets(args.folder)
            print(f"{len(files)} secret files in {args.folder} (readable by you only)")
        elif args.command == "feed":
            from .feed import follow
            from .up import run_until_signal

            generator = GeneratorUrl.from_env().generator_url
            run_until_signal(
                lambda settings, stop: follow(settings, stop, generator), ServiceSettings.from_env()
            )
        elif args.command == "report":
            run_report(args.out, args.events)
        elif args.command == "compare":
            from .compare import load, table

            print("\n".join(table(load(args.a), load(args.b), str(args.a), str(args.b))))
        else:
            run_migrate(DatabaseSettings.from_env().database_url, args.roles)
    except (ConfigError, CredentialsError, OSError, RuntimeError, ValueError) as exc:
        sys.exit(f"offsim: {exc}")


def run_report(out: Path, events: Path | None) -> None:
    """`offsim report`: of a dry run's events, or of the live simulation."""
    from . import report

    if events is not None:
        made = report.from_events(events)
    else:
        settings = ServiceSettings.from_env()
        generator = GeneratorUrl.from_env().generator_url
        try:
            made = asyncio.run(
                report.from_live(settings.database_url, generator, settings.sim_speed)
            )
        except asyncpg.PostgresError as exc:
            raise RuntimeError(f"report: {exc}") from None
    json_path = report.write(made, out)
    print("\n".join(report.kpi_lines(made)))
    print(f"report: {out} and {json_path}")


def run_migrate(database_url: str, roles_file: Path | None) -> None:
    """`offsim migrate [--roles FILE]`. The file is checked whole before the database is
    touched: a typo never leaves a database migrated with half its roles."""
    roles = read_roles(roles_file) if roles_file is not None else None
    try:
        applied = asyncio.run(migrate_database(database_url, roles))
    except (asyncpg.PostgresError, RolesError) as exc:
        raise RuntimeError(f"migrate: {exc}") from None
    print(f"applied: {', '.join(applied)}" if applied else "database is up to date")
    if roles is not None:
        made = ", ".join(f"{entry['user']} ({component})" for component, entry in roles.items())
        print(f"roles and their rights: {made}")


def read_roles(path: Path) -> dict[str, dict[str, str]]:
    """The "postgres" section of the credentials file at `path` (its other sections are not
    needed), or a CredentialsError naming the file and what is missing or wrong."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CredentialsError(f"{path}: not JSON ({exc})") from None
    try:
        section = credentials.validate_postgres(data)
        role_names(section)
    except (CredentialsError, RolesError) as exc:
        raise CredentialsError(f"{path}: {exc}") from None
    return section


async def migrate_database(database_url: str, roles: dict[str, dict[str, str]] | None) -> list[str]:
    """Apply the migrations, then, with `roles`, make each component's role and rights (which
    name the tables the migrations made)."""
    applied = await migrate(database_url)
    if roles is not None:
        conn = await asyncpg.connect(database_url)
        try:
            await ensure_roles(conn, roles)
        finally:
            await conn.close()
    return applied


if __name__ == "__main__":
    main()
