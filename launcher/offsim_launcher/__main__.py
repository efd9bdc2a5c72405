"""offsim: `offsim up` runs the whole simulation; `offsim migrate` applies the migrations;
`offsim feed` shows the live feed of a simulation running elsewhere."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

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
    commands.add_parser("migrate", help="apply the database migrations to DATABASE_URL")
    commands.add_parser(
        "feed", help="print the live feed of the simulation at NATS_URL / DATABASE_URL"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            from .up import run_up

            run_up(args.data_dir, load_sample=not args.no_sample)
        elif args.command == "feed":
            from .feed import follow
            from .up import run_until_signal

            generator = GeneratorUrl.from_env().generator_url
            run_until_signal(
                lambda settings, stop: follow(settings, stop, generator), ServiceSettings.from_env()
            )
        else:
            applied = asyncio.run(migrate(DatabaseSettings.from_env().database_url))
            print(f"applied: {', '.join(applied)}" if applied else "database is up to date")
    except (ConfigError, OSError, RuntimeError) as exc:
        sys.exit(f"offsim: {exc}")


if __name__ == "__main__":
    main()
