"""Authentication on, for the tests that run offsim as deployed (the chaos tests): a user per
component on NATS (nats_rights), a role per component in Postgres (db_roles), and an
operator's NATS user for the test itself, which inspects streams and injects faults."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
from offsim_common import credentials, nats_rights
from offsim_common.db_roles import ensure_roles
from offsim_launcher.embedded import with_user


@dataclass
class Secrets:
    creds: credentials.Credentials = field(default_factory=credentials.generate)
    admin: dict[str, str] = field(
        default_factory=lambda: {"user": "offsim-admin", "password": credentials.new_password()}
    )

    @property
    def authorization(self) -> str:
        """The nats-server block: every component's user, and the operator's."""
        return nats_rights.authorization(self.creds["nats"], extra=[self.admin])

    def nats_env(self, component: str) -> dict[str, str]:
        entry = self.creds["nats"][component]
        return {"NATS_USER": entry["user"], "NATS_PASSWORD": entry["password"]}

    def database_env(self, component: str, owner_url: str) -> dict[str, str]:
        entry = self.creds["postgres"][component]
        return {"DATABASE_URL": with_user(owner_url, entry["user"]),
                "DATABASE_PASSWORD": entry["password"]}  # fmt: skip

    def env(self, component: str, owner_url: str) -> dict[str, str]:
        return {**self.nats_env(component), **self.database_env(component, owner_url)}

    @property
    def as_admin(self) -> dict[str, str]:
        """nats.connect's keywords for the operator."""
        return {"user": self.admin["user"], "password": self.admin["password"]}

    async def make_roles(self, owner_url: str) -> None:
        conn = await asyncpg.connect(owner_url)
        try:
            await ensure_roles(conn, self.creds["postgres"])
        finally:
            await conn.close()
