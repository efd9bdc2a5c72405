"""What each component's Postgres role may do, and `ensure_roles`, which makes it so.

Each component connects as a LOGIN role of its own (credentials.py names them) with exactly
the rights its statements need in the offsim schema: RIGHTS, from an audit of every statement
each one runs. The owner runs `ensure_roles` after the migrations, at every `offsim migrate
--roles` and `offsim up`, so a table a later migration adds gets its grants as soon as RIGHTS
lists it.

What Postgres checks, and so what RIGHTS holds:
- SELECT on every column a statement reads: WHERE, RETURNING, ON CONFLICT's target and SET;
- UPDATE on some column of a table whose rows a statement locks (FOR UPDATE SKIP LOCKED);
- the invoker's rights inside trigger functions: whoever writes product_orders writes the
  counters' ledgers (migration 014) too;
- nothing on what a view reads (checked as the view's owner), nor for a foreign key's check
  or cascade (run as the table's owner), nor for an identity column's default (only an
  explicit nextval needs USAGE on its sequence);
- LISTEN, advisory locks and to_regclass need no right.

Roles are the cluster's, rights the database's: several databases of one cluster may run this
at once (each making or updating the same roles), and so may several runners on one database.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import asyncpg

from .credentials import POSTGRES_COMPONENTS

log = logging.getLogger(__name__)

# Every column of a table (a table-level right).
ALL: tuple[str, ...] = ()
READ: Mapping[str, tuple[str, ...]] = {"SELECT": ALL}
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")


@dataclass(frozen=True)
class Rights:
    """A role's rights in the offsim schema; anything not listed is revoked."""

    # table or view -> privilege -> the columns it covers (ALL: the whole table).
    tables: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)
    # (table, column) whose sequence it draws ids from with an explicit nextval (USAGE).
    sequences: tuple[tuple[str, str], ...] = ()
    # Functions it calls (EXECUTE), by name.
    functions: tuple[str, ...] = ()
    # May make temporary tables (the ETL stages each batch in two).
    temporary: bool = False

    def __post_init__(self) -> None:
        for table, privileges in self.tables.items():
            unknown = set(privileges) - set(TABLE_PRIVILEGES)
            if unknown:
                raise ValueError(f"{table}: not a table privilege: {', '.join(sorted(unknown))}")

    @property
    def connects(self) -> bool:
        return bool(self.tables or self.sequences or self.functions)


# The columns an idempotency key's answer is replaced in (idempotency.record_many's upsert).
_IDEMPOTENT_ANSWER = ("fingerprint", "status", "body", "created_at")
# What the orders service moves on an order: its transitions, publish and reconcile claims,
# the confirmation of its delivery. Never what was ordered (SSD, product, quantity, kind).
_ORDER_PROGRESS = (
    "status", "shipped_at", "completed_at", "cancelled_at", "published_at",
    "publish_claimed_until", "reconcile_claimed_until", "delivery_confirmed",
)  # fmt: skip
# A product's data, which the ETL's upsert rewrites (offsim_etl.load.UPSERT_PRODUCTS).
_PRODUCT_DATA = (
    "name", "quantity", "image_url", "energy_100g", "energy_serving", "nova_group",
    "nutriscore_score", "nutriscore_grade", "fat_level", "saturated_fat_level", "sugars_level",
    "salt_level", "categories", "updated_at",
)  # fmt: skip
# The counters' ledgers: the triggers on product_orders append to them in the statement that
# writes the orders (INSERT), the fold replaces each key's rows by their sum (SELECT, DELETE).
_LEDGER = {"SELECT": ALL, "INSERT": ALL, "DELETE": ALL}

# The sums of a demand bucket (migrations 013 and 017).
_DEMAND_SUMS = ("readings", "units_wanted", "units_short", "restocks", "empty_product_s",
                "watched_product_s", "ssd_s")  # fmt: skip

RIGHTS: dict[str, Rights] = {
    # offsim_users: queries.py (registration, synthetic users, readings, deliveries,
    # retention), offsim_common.auth and .idempotency.
    "users": Rights(
        tables={
            # Never password_hash: the service writes hashes and never reads one back.
            "users": {
                "SELECT": ("id", "first_name", "last_name", "email", "created_at"),
                "INSERT": ALL,
            },
            "ssds": {"SELECT": ALL, "INSERT": ALL},
            "product_ssds": {
                "SELECT": ALL,
                "INSERT": ALL,  # and COPY, the synthetic users' stock
                "UPDATE": ("quantity", "units_wanted", "units_short"),
            },
            "stock_deliveries": {"SELECT": ALL, "INSERT": ALL},
            # Written at registration, read only through the bearer_tokens view.
            "api_tokens": {"INSERT": ALL},
            # UPDATE only for retention's row locks (FOR UPDATE SKIP LOCKED before its DELETE):
            # no statement updates a reading id.
            "ssd_readings": {
                "SELECT": ALL,
                "INSERT": ALL,
                "UPDATE": ("applied_at",),
                "DELETE": ALL,
            },
            "ssd_demand": {
                "SELECT": ALL,
                "INSERT": ALL,
                "DELETE": ALL,
                "UPDATE": _DEMAND_SUMS,
            },
            # The stock sampler's clock (stock_samples.py).
            "stock_sampled": {"SELECT": ALL, "UPDATE": ("at",)},
            # Its own keys; the orders service purges the expired ones of both.
            "idempotency_keys": {"SELECT": ALL, "INSERT": ALL, "UPDATE": _IDEMPOTENT_ANSWER},
            "products": READ,
            "open_orders": READ,
            "deliverable_orders": READ,
            "ssd_owners": READ,
            "bearer_tokens": READ,
        },
        # Its one write to the orders: a function that runs as its owner (migration 016), so
        # the role has no right on product_orders or the counters at all.
        functions=("place_restock_orders",),
    ),
    # offsim_orders: queries.py, retention.py, counters.py, device_orders.py (LISTEN),
    # offsim_common.auth and .idempotency.
    "orders": Rights(
        tables={
            "product_orders": {
                "SELECT": ALL,
                "INSERT": ALL,
                "UPDATE": _ORDER_PROGRESS,
                "DELETE": ALL,
            },
            "order_counts": _LEDGER,
            "order_minutes": _LEDGER,
            "idempotency_keys": {
                "SELECT": ALL,
                "INSERT": ALL,
                "UPDATE": _IDEMPOTENT_ANSWER,
                "DELETE": ALL,
            },
            "products": READ,
            "product_brands": READ,
            "ssd_owners": READ,
            "watched_products": READ,
            "delivered_orders": READ,
            "bearer_tokens": READ,
        },
        # insert_orders takes its ids up front (nextval), to match rows to their inputs.
        sequences=(("product_orders", "id"),),
    ),
    # offsim_dashboard.queries and offsim_common.products; `offsim feed` and `offsim up`'s feed
    # connect as this role too. Read only.
    "dashboard": Rights(
        tables={
            # Names only: never an email or a password hash.
            "users": {"SELECT": ("id", "first_name", "last_name")},
            "ssds": READ,
            "products": READ,
            "product_ssds": READ,
            "product_orders": READ,
            "ssd_demand": READ,
            "order_totals": READ,
            "orders_per_minute": READ,
        },
    ),
    # offsim_etl.load: the catalogue's tables only. Its "is the database migrated" check
    # (to_regclass) and its run lock (an advisory lock) need no right.
    "etl": Rights(
        tables={
            "products": {"SELECT": ALL, "INSERT": ALL, "UPDATE": _PRODUCT_DATA},
            "brands": {"SELECT": ALL, "INSERT": ALL},
            "product_brands": {"SELECT": ALL, "INSERT": ALL, "DELETE": ALL},
            "etl_positions": {
                "SELECT": ALL,
                "INSERT": ALL,
                "DELETE": ALL,
                "UPDATE": ("next_page", "updated_at"),
            },
        },
        temporary=True,
    ),
    # Neither connects to Postgres (their apps are made with database=False): a role with a
    # password, for the day one does, and no right on anything.
    "notifications": Rights(),
    "generator": Rights(),
}
assert set(RIGHTS) == set(POSTGRES_COMPONENTS)

# A role name as offsim makes it: lower case, so that it needs no quoting in a DSN or in psql,
# and at most NAMEDATALEN - 1 bytes (Postgres would cut a longer one short, silently).
ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Names Postgres reserves or reads as something else than a role.
_RESERVED = {"public", "none", "current_user", "current_role", "session_user", "user"}

# One runner at a time makes a database's grants (two GRANTs on one object at once fail with
# "tuple concurrently updated"). Transaction-scoped: "off" "role".
_LOCK_KEY = 0x6F6666_726F6C65
# Making or updating a role races with other databases of the cluster doing the same.
_ROLE_ATTEMPTS = 8
# The SCRAM-SHA-256 iteration count Postgres uses by default (scram_iterations).
_SCRAM_ITERATIONS = 4096


class RolesError(ValueError):
    """Roles that cannot be made as asked: a bad or duplicated name, a missing component, a
    role whose rights cannot be limited, or a database that is not migrated."""


def quote_ident(name: str) -> str:
    """`name` as an SQL identifier, quoted whatever it holds (asyncpg cannot bind one)."""
    return '"' + name.replace('"', '""') + '"'


def role_names(roles: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """component -> role name for the "postgres" section `roles`, or a RolesError naming the
    component at fault."""
    unknown = sorted(set(roles) - set(RIGHTS))
    if unknown:
        raise RolesError(f"postgres: unknown components: {', '.join(unknown)}")
    names: dict[str, str] = {}
    for component in RIGHTS:
        entry = roles.get(component)
        if not isinstance(entry, Mapping):
            raise RolesError(
                f"postgres.{component}: missing (a role for each of {', '.join(RIGHTS)})"
            )
        name, password = entry.get("user"), entry.get("password")
        if not (isinstance(password, str) and password):
            raise RolesError(f"postgres.{component}: no password")
        if not (isinstance(name, str) and ROLE_NAME.fullmatch(name)):
            raise RolesError(
                f"postgres.{component}: role name {name!r} must match {ROLE_NAME.pattern}"
            )
        if name in _RESERVED or name.startswith("pg_"):
            raise RolesError(f"postgres.{component}: {name!r} is reserved by Postgres")
        if name in names.values():
            other = next(c for c, n in names.items() if n == name)
            raise RolesError(
                f"postgres.{component}: role {name!r} is {other}'s too: each "
                "component needs a role of its own"
            )
        names[component] = name
    return names


async def ensure_roles(conn: asyncpg.Connection, roles: Mapping[str, Mapping[str, str]]) -> None:
    """As the owner, after the migrations: make each component's LOGIN role with its password
    (or give an existing one that password), then make its rights in this database exactly
    RIGHTS: everything it had on the schema's tables, views, sequences and functions revoked,
    its list granted, in one transaction. `roles` is the "postgres" section of the
    credentials (component -> {"user", "password"}). Idempotent."""
    names = role_names(roles)
    owner = await conn.fetchval("SELECT current_user")
    for component, name in names.items():
        if name == owner:
            raise RolesError(
                f"postgres.{component}: {name!r} is the owner running this: "
                "a component needs a role of its own"
            )
    # Checked for every role before any is made or changed (and again as each is).
    unlimited = await conn.fetch(
        """SELECT rolname FROM pg_roles
           WHERE rolname = ANY($1::text[]) AND (rolsuper OR rolbypassrls)""",
        list(names.values()),
    )
    for row in unlimited:
        component = next(c for c, n in names.items() if n == row["rolname"])
        raise _unlimited(component, row["rolname"])
    for component, name in names.items():
        await _ensure_login(conn, component, name, roles[component]["password"])
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        schema = await conn.fetchval("SELECT current_schema()")
        if schema is None:
            raise RolesError("no schema to grant on: the search_path names none that exists")
        database = await conn.fetchval("SELECT current_database()")
        await _require_objects(conn, schema)
        for component, name in names.items():
            rights = RIGHTS[component]
            statements = _revocations(schema, database, name)
            statements += await _grants(conn, schema, database, name, rights)
            for statement in statements:
                await conn.execute(statement)
    log.info(
        "Postgres roles and their rights in %s.%s: %s", database, schema, ", ".join(names.values())
    )


async def _ensure_login(conn: asyncpg.Connection, component: str, name: str, password: str) -> None:
    """Make `name` a LOGIN role with `password`, whether or not it exists: another database of
    the cluster may be making or updating it at this moment, so a clash is tried again."""
    secret = _scram_verifier(password) if _printable_ascii(password) else password
    for attempt in range(1, _ROLE_ATTEMPTS + 1):
        try:
            async with conn.transaction():
                found = await conn.fetchrow(
                    "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1", name
                )
                if found is not None and (found["rolsuper"] or found["rolbypassrls"]):
                    raise _unlimited(component, name)
                verb = "ALTER" if found is not None else "CREATE"
                # format() quotes both on the server; the statement is never logged here.
                statement = await conn.fetchval(
                    f"SELECT format('{verb} ROLE %I WITH LOGIN PASSWORD %L', $1::text, $2::text)",
                    name,
                    secret,
                )
                await conn.execute(statement)
            return
        except asyncpg.PostgresError as exc:
            if attempt == _ROLE_ATTEMPTS or not _raced(exc):
                raise
        await asyncio.sleep(random.uniform(0.01, 0.05) * attempt)


def _unlimited(component: str, name: str) -> RolesError:
    return RolesError(f"postgres.{component}: role {name!r} is a superuser or bypasses row "
                      "security: its rights cannot be limited")  # fmt: skip


def _raced(exc: asyncpg.PostgresError) -> bool:
    """A clash with a concurrent CREATE ROLE (it exists now: ALTER it) or ALTER ROLE."""
    return isinstance(exc, asyncpg.DuplicateObjectError | asyncpg.UniqueViolationError) or (
        isinstance(exc, asyncpg.InternalServerError) and "concurrently" in str(exc)
    )


def _printable_ascii(password: str) -> bool:
    # SASLprep, which Postgres applies to a password before hashing it, leaves these as they
    # are: hashed here, the result is what the server would have stored.
    return all(" " <= c <= "~" for c in password)


def _scram_verifier(password: str) -> str:
    """The SCRAM-SHA-256 verifier Postgres stores for `password` (RFC 5802, 7677), made here so
    that the password itself never reaches the server, nor any statement log there. Postgres
    stores a verifier it is given as it is."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${_SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


async def _require_objects(conn: asyncpg.Connection, schema: str) -> None:
    """Every table and function RIGHTS names exists: a RolesError if the database is older than
    the code (its migrations not applied)."""
    tables = sorted({table for rights in RIGHTS.values() for table in rights.tables})
    missing = await conn.fetch(
        """SELECT t FROM unnest($1::text[]) AS t
           WHERE to_regclass(quote_ident($2) || '.' || quote_ident(t)) IS NULL""",
        tables,
        schema,
    )
    functions = sorted({name for rights in RIGHTS.values() for name in rights.functions})
    missing += await conn.fetch(
        """SELECT f || '()' AS t FROM unnest($1::text[]) AS f
           WHERE NOT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                             WHERE n.nspname = $2 AND p.proname = f)""",
        functions,
        schema,
    )
    if missing:
        raise RolesError(
            f"schema {schema} has no {', '.join(row['t'] for row in missing)}: "
            "apply the migrations first"
        )


def _revocations(schema: str, database: str, role: str) -> list[str]:
    """Whatever `role` was granted on the schema and its objects, taken back (column rights
    go with their table's)."""
    s, d, r = quote_ident(schema), quote_ident(database), quote_ident(role)
    return [
        f"REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM {r}",
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {s} FROM {r}",
        f"REVOKE ALL ON ALL ROUTINES IN SCHEMA {s} FROM {r}",
        f"REVOKE ALL ON SCHEMA {s} FROM {r}",
        f"REVOKE ALL ON DATABASE {d} FROM {r}",
    ]


async def _grants(
    conn: asyncpg.Connection, schema: str, database: str, role: str, rights: Rights
) -> list[str]:
    s, r = quote_ident(schema), quote_ident(role)
    if not rights.connects:
        return []
    database_rights = "CONNECT, TEMPORARY" if rights.temporary else "CONNECT"
    # CONNECT and USAGE are PUBLIC's by default; granted here too, so that a database that took
    # them back from PUBLIC still lets the components in.
    out = [
        f"GRANT {database_rights} ON DATABASE {quote_ident(database)} TO {r}",
        f"GRANT USAGE ON SCHEMA {s} TO {r}",
    ]
    for table, privileges in rights.tables.items():
        for privilege, columns in privileges.items():
            listed = f" ({', '.join(map(quote_ident, columns))})" if columns else ""
            out.append(f"GRANT {privilege}{listed} ON TABLE {s}.{quote_ident(table)} TO {r}")
    for table, column in rights.sequences:
        # pg_get_serial_sequence answers the name quoted and qualified.
        sequence = await conn.fetchval(
            "SELECT pg_get_serial_sequence($1, $2)", f"{s}.{quote_ident(table)}", column
        )
        if sequence is None:
            raise RolesError(f"{schema}.{table}.{column} draws from no sequence")
        out.append(f"GRANT USAGE ON SEQUENCE {sequence} TO {r}")
    for name in rights.functions:
        # Every signature of the name, as regprocedure spells it (quoted, and qualified when
        # the search_path would not find it).
        signatures = await conn.fetch(
            """SELECT p.oid::regprocedure::text AS signature
               FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
               WHERE n.nspname = $1 AND p.proname = $2""",
            schema,
            name,
        )
        out += [f"GRANT EXECUTE ON FUNCTION {row['signature']} TO {r}" for row in signatures]
    return out
