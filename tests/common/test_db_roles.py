"""A Postgres role per component (db_roles): each made with its password and exactly its rights,
again and again and from several databases at once; each service's real statements run as its
role; and what a role must not do, it cannot.

Roles belong to the cluster, which every test shares: each test makes roles of its own names
(offsim_t<random>_<component>) and drops them after.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import json
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest
from offsim_common import idempotency, subjects
from offsim_common.credentials import POSTGRES_COMPONENTS, new_password
from offsim_common.db_roles import RIGHTS, RolesError, ensure_roles, quote_ident
from offsim_common.events import OrderEvent, OrderStatus, SsdReading
from offsim_common.migrate import migrate
from offsim_common.products import ProductNames
from offsim_common.requests import NewUser
from offsim_dashboard import handlers as dashboard_handlers
from offsim_dashboard import kpis as dashboard_kpis
from offsim_dashboard.app import create_app as dashboard_app
from offsim_etl import load as etl_load
from offsim_etl import run_etl, sample_path
from offsim_etl.settings import EtlSettings
from offsim_etl.transform import Product, transform
from offsim_orders import queries as orders_queries
from offsim_orders import retention as orders_retention
from offsim_orders.app import create_app as orders_app
from offsim_orders.device_orders import CHANNEL
from offsim_users import queries as users_queries
from offsim_users.app import create_app as users_app

from tests.conftest import AS_SERVICE, changed, eventually
from tests.helpers import registration

Section = dict[str, dict[str, str]]
RESTOCK_SIGNATURE = "place_restock_orders(bigint[], text[], integer[], text[])"
# The orders service's function, called with nothing to place.
CALL_RESTOCK = "SELECT * FROM place_restock_orders('{}', '{}', '{}', '{}')"


def fresh_roles() -> Section:
    """A "postgres" section of role names no other test uses."""
    tag = uuid.uuid4().hex[:8]
    return {c: {"user": f"offsim_t{tag}_{c}", "password": new_password()}
            for c in POSTGRES_COMPONENTS}  # fmt: skip


def as_role(dsn: str, user: str, password: str | None = None) -> str:
    """`dsn` connecting as `user` (with `password`) instead of the owner."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    userinfo = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


def dsn_of(dsn: str, roles: Section, component: str) -> str:
    return as_role(dsn, roles[component]["user"], roles[component]["password"])


def with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


async def make_roles(dsn: str, roles: Section) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await ensure_roles(conn, roles)
    finally:
        await conn.close()


async def drop_roles(dsn: str, roles: Section) -> None:
    """Drop the roles (their rights in the database of `dsn` first) that exist."""
    conn = await asyncpg.connect(dsn)
    try:
        names = [entry["user"] for entry in roles.values()]
        rows = await conn.fetch("SELECT rolname FROM pg_roles WHERE rolname = ANY($1)", names)
        if rows:
            listed = ", ".join(quote_ident(row["rolname"]) for row in rows)
            await conn.execute(f"DROP OWNED BY {listed}")
            await conn.execute(f"DROP ROLE {listed}")
    finally:
        await conn.close()


@pytest.fixture
async def roles(database_url: str, pool: asyncpg.Pool) -> AsyncIterator[Section]:
    """Every component's role, made in the test database (after `pool` emptied its tables)."""
    section = fresh_roles()
    await make_roles(database_url, section)
    try:
        yield section
    finally:
        await drop_roles(database_url, section)


@asynccontextmanager
async def connected(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


@asynccontextmanager
async def pool_of(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


# --- the rights as the catalogue holds them -----------------------------------------------------

Right = tuple[str, str, str | None]  # (object, privilege, column or None for all of it)


async def rights_of(conn: asyncpg.Connection, role: str) -> set[Right]:
    """Everything granted to `role` in this database: on the schema's tables, views, sequences
    (and their columns) and functions, the schema itself, and the database."""
    rows = await conn.fetch(
        """WITH s AS (SELECT oid FROM pg_namespace WHERE nspname = current_schema()),
                r AS (SELECT oid FROM pg_roles WHERE rolname = $1)
           SELECT c.relname AS object, a.privilege_type AS privilege, NULL::text AS col
           FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
           WHERE c.relnamespace = (SELECT oid FROM s) AND a.grantee = (SELECT oid FROM r)
           UNION ALL
           SELECT c.relname, a.privilege_type, att.attname::text
           FROM pg_attribute att JOIN pg_class c ON c.oid = att.attrelid
           CROSS JOIN LATERAL aclexplode(att.attacl) a
           WHERE c.relnamespace = (SELECT oid FROM s) AND a.grantee = (SELECT oid FROM r)
           UNION ALL
           SELECT p.proname || '()', a.privilege_type, NULL
           FROM pg_proc p CROSS JOIN LATERAL aclexplode(p.proacl) a
           WHERE p.pronamespace = (SELECT oid FROM s) AND a.grantee = (SELECT oid FROM r)
           UNION ALL
           SELECT 'schema', a.privilege_type, NULL
           FROM pg_namespace n CROSS JOIN LATERAL aclexplode(n.nspacl) a
           WHERE n.oid = (SELECT oid FROM s) AND a.grantee = (SELECT oid FROM r)
           UNION ALL
           SELECT 'database', a.privilege_type, NULL
           FROM pg_database d CROSS JOIN LATERAL aclexplode(d.datacl) a
           WHERE d.datname = current_database() AND a.grantee = (SELECT oid FROM r)""",
        role,
    )
    return {(row["object"], row["privilege"], row["col"]) for row in rows}


def expected_rights(component: str) -> set[Right]:
    """RIGHTS[component] as the catalogue would hold it."""
    rights = RIGHTS[component]
    out: set[Right] = set()
    for table, privileges in rights.tables.items():
        for privilege, columns in privileges.items():
            out |= (
                {(table, privilege, c) for c in columns} if columns else {(table, privilege, None)}
            )
    out |= {(f"{table}_{column}_seq", "USAGE", None) for table, column in rights.sequences}
    out |= {(f"{name}()", "EXECUTE", None) for name in rights.functions}
    if rights.connects:
        out |= {("schema", "USAGE", None), ("database", "CONNECT", None)}
    if rights.temporary:
        out.add(("database", "TEMPORARY", None))
    return out


async def assert_exact_rights(dsn: str, roles: Section) -> None:
    async with connected(dsn) as conn:
        for component, entry in roles.items():
            assert await rights_of(conn, entry["user"]) == expected_rights(component), component
            attributes = await conn.fetchrow(
                "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
                "WHERE rolname = $1",
                entry["user"],
            )
            assert dict(attributes) == {"rolcanlogin": True, "rolsuper": False,
                                        "rolcreaterole": False, "rolcreatedb": False}  # fmt: skip


# --- making the roles ----------------------------------------------------------------------------


def test_the_rights_name_every_component_and_nothing_for_those_without_a_database():
    assert set(RIGHTS) == set(POSTGRES_COMPONENTS)
    assert expected_rights("notifications") == expected_rights("generator") == set()
    dashboard = expected_rights("dashboard")
    assert {privilege for _, privilege, _ in dashboard} == {"SELECT", "USAGE", "CONNECT"}


async def test_ensure_roles_twice_leaves_each_role_exactly_its_rights(database_url, roles):
    await assert_exact_rights(database_url, roles)
    await make_roles(database_url, roles)
    await assert_exact_rights(database_url, roles)


async def test_rights_granted_by_hand_are_taken_back(database_url, roles):
    users, dashboard, etl = (roles[c]["user"] for c in ("users", "dashboard", "etl"))
    generator = roles["generator"]["user"]
    async with connected(database_url) as conn:
        for grant in (
            f"GRANT UPDATE ON product_orders TO {users}",
            f"GRANT UPDATE (quantity) ON product_orders TO {users}",
            f"GRANT SELECT (password_hash), UPDATE (email) ON users TO {dashboard}",
            f"GRANT INSERT, DELETE ON ssds TO {dashboard}",
            f"GRANT EXECUTE ON FUNCTION {RESTOCK_SIGNATURE} TO {dashboard}",
            f"GRANT USAGE ON SEQUENCE product_orders_id_seq TO {dashboard}",
            f"GRANT SELECT ON api_tokens TO {etl}",
            f"GRANT ALL ON SCHEMA public TO {generator}",
            f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {generator}",
        ):
            await conn.execute(grant)
        assert ("product_orders", "UPDATE", None) in await rights_of(conn, users)
    await make_roles(database_url, roles)
    await assert_exact_rights(database_url, roles)


@asynccontextmanager
async def passwords_checked(postgres_server, database_url: str, names: list[str]):
    """The server checks the passwords of the roles `names` for the length of the block.

    The embedded server trusts every connection on its socket (initdb --auth=trust), so a
    line for each of these roles goes first in its pg_hba.conf until the block ends. A server
    of DATABASE_URL is taken as it is; a test skips if it does not check these passwords."""
    if postgres_server is None:
        try:
            conn = await asyncpg.connect(as_role(database_url, names[0], "not its password"))
        except asyncpg.InvalidPasswordError:
            yield
            return
        await conn.close()
        pytest.skip("the server at DATABASE_URL lets these roles in without their password")
    async with connected(database_url) as owner:
        hba = Path(await owner.fetchval("SHOW hba_file"))
        original = await asyncio.to_thread(hba.read_text)
        first = "".join(f"local all {name} scram-sha-256\n" for name in names)
        await asyncio.to_thread(hba.write_text, first + original)
        try:
            await owner.execute("SELECT pg_reload_conf()")

            async def wrong_one_refused() -> bool:
                try:
                    conn = await asyncpg.connect(as_role(database_url, names[0], "wrong"))
                except asyncpg.InvalidPasswordError:
                    return True
                await conn.close()
                return False

            await eventually(wrong_one_refused, within=10)
            yield
        finally:
            await asyncio.to_thread(hba.write_text, original)
            await owner.execute("SELECT pg_reload_conf()")


def scram_matches(verifier: str, password: str) -> bool:
    """Whether a stored SCRAM-SHA-256 verifier is that of `password`."""
    method, _, rest = verifier.partition("$")
    iterations_salt, _, keys = rest.partition("$")
    iterations, _, salt = iterations_salt.partition(":")
    stored_key, _, server_key = keys.partition(":")
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(salt), int(iterations)
    )
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    return method == "SCRAM-SHA-256" and (
        base64.b64encode(hashlib.sha256(client_key).digest()).decode() == stored_key
        and base64.b64encode(hmac.new(salted, b"Server Key", "sha256").digest()).decode()
        == server_key
    )


async def test_a_changed_password_takes_effect_and_the_old_one_is_refused(
    database_url, roles, postgres_server
):
    user, old = roles["users"]["user"], roles["users"]["password"]
    new = new_password()
    changed_roles = {**roles, "users": {"user": user, "password": new}}
    async with passwords_checked(postgres_server, database_url, [user]):
        await (await asyncpg.connect(as_role(database_url, user, old))).close()
        await make_roles(database_url, changed_roles)
        conn = await asyncpg.connect(as_role(database_url, user, new))
        assert await conn.fetchval("SELECT current_user") == user
        await conn.close()
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(as_role(database_url, user, old))
    async with connected(database_url) as owner:
        if await owner.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
            # What the server keeps: a SCRAM verifier of the new password, never the password.
            stored = await owner.fetchval(
                "SELECT rolpassword FROM pg_authid WHERE rolname = $1", user
            )
            assert new not in stored and old not in stored
            assert scram_matches(stored, new) and not scram_matches(stored, old)


async def test_roles_made_from_several_databases_at_once(database_url, pool):
    """Roles are the cluster's: two databases (and two runners on one of them) make the same
    roles at once; every database ends with the rights, every role with its password."""
    names = [f"roles_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    dsns = [with_database(database_url, name) for name in names]
    section = fresh_roles()
    async with connected(database_url) as admin:
        for name in names:
            await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            await asyncio.gather(*(migrate(dsn) for dsn in dsns))
            runs = [database_url, database_url, *dsns, *dsns]
            await asyncio.gather(*(make_roles(dsn, section) for dsn in runs))
            for dsn in (database_url, *dsns):
                await assert_exact_rights(dsn, section)
        finally:
            for name in names:
                await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            await drop_roles(database_url, section)


def without(section: Section, component: str) -> Section:
    return {c: entry for c, entry in section.items() if c != component}


def with_entry(section: Section, component: str, **entry: str) -> Section:
    return {**section, component: {**section[component], **entry}}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: with_entry(s, "users", user="Offsim_Users"), "postgres.users: role name"),
        (lambda s: with_entry(s, "orders", user="offsim orders"), "postgres.orders: role name"),
        (lambda s: with_entry(s, "orders", user='x"; DROP TABLE users; --'), "role name"),
        (lambda s: with_entry(s, "etl", user="pg_etl"), "postgres.etl: 'pg_etl' is reserved"),
        (lambda s: with_entry(s, "etl", user="public"), "postgres.etl: 'public' is reserved"),
        (lambda s: with_entry(s, "etl", user="x" * 64), "postgres.etl: role name"),
        (lambda s: with_entry(s, "dashboard", user=s["users"]["user"]), "is users's too"),
        (lambda s: with_entry(s, "generator", password=""), "postgres.generator: no password"),
        (lambda s: without(s, "notifications"), "postgres.notifications: missing"),
        (lambda s: {**s, "billing": s["users"]}, "unknown components: billing"),
        (lambda s: with_entry(s, "etl", user="postgres"), "postgres.etl: 'postgres' is the owner"),
    ],
)
async def test_bad_roles_are_refused_before_any_is_made(database_url, change, message):
    section = fresh_roles()
    async with connected(database_url) as conn:
        if await conn.fetchval("SELECT current_user") != "postgres" and "owner" in message:
            pytest.skip("the owner at DATABASE_URL is not `postgres`")
        with pytest.raises(RolesError, match=message):
            await ensure_roles(conn, change(section))
        made = await conn.fetchval(
            "SELECT count(*) FROM pg_roles WHERE rolname = ANY($1)",
            [entry["user"] for entry in section.values()],
        )
    assert made == 0


async def test_a_superuser_role_is_refused_not_limited(database_url, pool):
    section = fresh_roles()
    name = section["dashboard"]["user"]
    async with connected(database_url) as conn:
        await conn.execute(f"CREATE ROLE {name} SUPERUSER")
        try:
            with pytest.raises(RolesError, match=r"postgres\.dashboard: .* is a superuser"):
                await ensure_roles(conn, section)
            made = await conn.fetch(
                "SELECT rolname, rolsuper FROM pg_roles WHERE rolname = ANY($1)",
                [entry["user"] for entry in section.values()],
            )
        finally:
            await drop_roles(database_url, section)
    # Refused before any other role was made, and the superuser left as it was.
    assert [tuple(row) for row in made] == [(name, True)]


# --- each service's statements, as its role -----------------------------------------------------


def no_permission_problem(text: str) -> bool:
    return "permission denied" not in text and "InsufficientPrivilege" not in text


def new_user(email: str) -> NewUser:
    return NewUser(first_name="Role", last_name="Play", email=email, password="long enough pass")


async def owner_ssd(pool: asyncpg.Pool, email: str = "owner-made@example.org") -> int:
    """An SSD stored by the owner, for tests that need one without the users service."""
    async with pool.acquire() as conn:
        user_id = await conn.fetchval(
            """INSERT INTO users (first_name, last_name, email, password_hash)
               VALUES ('Row', 'Level', $1, 'x') RETURNING id""",
            email,
        )
        return await conn.fetchval(
            "INSERT INTO ssds (user_id, mac_address) VALUES ($1, '02:00:00:00:bb:01') RETURNING id",
            user_id,
        )


async def test_the_services_run_under_their_own_roles(
    roles, settings, aiohttp_client, nc, notifications, products, pool, caplog
):
    """Users, orders and dashboard as deployed, each with its own role (notifications has none):
    registration, an order to its delivery in stock, readings, a restock order the backend
    places and the orders service announces, the dashboard's every read. Nothing a service
    logs is a refusal."""
    url = settings.database_url
    users = await aiohttp_client(
        users_app(changed(settings, database_url=dsn_of(url, roles, "users"))), headers=AS_SERVICE
    )
    orders = await aiohttp_client(
        orders_app(changed(settings, database_url=dsn_of(url, roles, "orders"))), headers=AS_SERVICE
    )
    dashboard = await aiohttp_client(
        dashboard_app(changed(settings, database_url=dsn_of(url, roles, "dashboard")))
    )

    # Registration, with an Idempotency-Key (sent twice: one user), read back with its token.
    body, key = registration("roles@example.org"), {"Idempotency-Key": "roles-register"}
    first = await users.post("/api/register", json=body, headers=key)
    again = await users.post("/api/register", json=body, headers=key)
    assert first.status == again.status == 201, await first.text()
    user = await first.json()
    assert (await again.json())["id"] == user["id"]
    own = {"Authorization": f"Bearer {user['token']}"}
    ssd_id = user["devices"][0]["id"]

    async def stock() -> dict[str, dict]:
        resp = await users.get(f"/api/users/{user['id']}", headers=own)
        assert resp.status == 200, await resp.text()
        return {item["barcode"]: item for item in (await resp.json())["ssds"][0]["stock"]}

    before = await stock()
    ordered, used = sorted(before)[:2]

    # An order (twice with its key: one order) completes, and its delivery reaches the stock.
    order_body = {"ssd_id": ssd_id, "barcode": ordered, "quantity": 2}
    key = {"Idempotency-Key": "roles-order"}
    placed = await orders.post("/api/orders", json=order_body, headers=key)
    replayed = await orders.post("/api/orders", json=order_body, headers=key)
    assert placed.status == replayed.status == 201, await placed.text()
    order = await placed.json()
    assert (await replayed.json())["id"] == order["id"]

    async def completed() -> bool:
        resp = await orders.get(f"/api/orders/{order['id']}")
        return (await resp.json())["status"] == "completed"

    await eventually(completed)

    async def stocked() -> bool:
        return (await stock())[ordered]["quantity"] == before[ordered]["quantity"] + 2

    await eventually(stocked)

    # Stock used below the reorder point: the backend places a restock order (the orders
    # service's function) and the orders service announces it (LISTEN, then a claim).
    item = before[used]
    resp = await users.post(
        f"/api/ssds/{ssd_id}/consume",
        json={"barcode": used, "quantity": item["quantity"] - item["reorder_point"] + 1},
        headers=own,
    )
    assert resp.status == 200, await resp.text()
    [restock] = (await resp.json())["restock"]

    async def announced() -> bool:
        async with pool.acquire() as conn:
            return await conn.fetchval(
                "SELECT published_at IS NOT NULL FROM product_orders WHERE id = $1",
                restock["order_id"],
            )

    await eventually(announced)

    # A reading over NATS, applied by the users service's consumer.
    reading = SsdReading(ssd_id=ssd_id, barcode=ordered, quantity=1, reading_id="roles-1")
    await nc.jetstream().publish(subjects.ssd_readings(ssd_id), reading.model_dump_json().encode())

    async def applied() -> bool:
        async with pool.acquire() as conn:
            return await conn.fetchval(
                "SELECT true FROM ssd_readings WHERE ssd_id = $1 AND reading_id = 'roles-1'",
                ssd_id,
            )

    await eventually(applied)

    # The generator's population, in bulk.
    population = {"users": [{"first_name": "Pop", "last_name": "Ulation",
                             "email": "pop@offsim.example", "password": "synthetic password",
                             "devices": [{"mac_address": "02:cc:00:00:00:01"}]}]}  # fmt: skip
    resp = await users.post("/api/synthetic-users", json=population)
    assert resp.status == 201, await resp.text()

    for path in ("/api/orders", f"/api/orders?ssd_id={ssd_id}", "/api/orders?status=completed",
                 "/api/products", f"/api/products/{ordered}"):  # fmt: skip
        resp = await orders.get(path)
        assert resp.status == 200, (path, await resp.text())
    for path in ("/api/summary", "/api/recent", "/api/ssds", "/api/throughput"):
        resp = await dashboard.get(path)
        assert resp.status == 200, (path, await resp.text())
    summary = await (await dashboard.get("/api/summary")).json()
    assert summary["users"] == 2 and summary["orders"]["completed"] >= 1, summary
    assert no_permission_problem(caplog.text), caplog.text


async def test_the_users_role_runs_every_statement_of_the_users_service(
    database_url, roles, pool, products
):
    """The statements the HTTP paths above may not reach: batches of readings and
    deliveries, retention, the bulk inserts, the orders.random answer."""
    async with connected(dsn_of(database_url, roles, "users")) as conn:
        user = await users_queries.insert_user(conn, new_user("u@example.org"), "hash")
        [device] = await users_queries.insert_devices(conn, user["id"], ["02:00:00:00:dd:01"])
        ssd_id = device["id"]
        [barcode, *_] = await users_queries.watch_random_products(conn, ssd_id, 3, random.Random(1))
        await users_queries.insert_token(conn, user["id"], b"\x01" * 32)
        assert (await users_queries.fetch_user(conn, user["id"]))["ssds"][0]["id"] == ssd_id
        assert await users_queries.random_ssd_id(conn) == ssd_id
        assert barcode in await users_queries.watched_barcodes(conn, ssd_id)

        # Readings that empty the product: applied once each, restock order placed.
        async with conn.transaction():
            row = await users_queries.apply_readings(
                conn, [ssd_id, ssd_id], ["r-1", "r-2"], [barcode, barcode], [50, 1]
            )
        assert list(row["applied"]) == [1, 2]
        [restock] = json.loads(row["restocks"])
        assert await users_queries.ssd_stock(conn, ssd_id, [barcode])
        assert await users_queries.consume_stock(conn, ssd_id, None, 1)

        # Its delivery, in a batch, then again alone: added once.
        added = await users_queries.record_deliveries(
            conn, [restock["order_id"]], [ssd_id], [barcode], [restock["quantity"]]
        )
        assert added == {restock["order_id"]}
        assert not await users_queries.record_delivery(
            conn, restock["order_id"], ssd_id, barcode, restock["quantity"]
        )
        assert await users_queries.delivery_recorded(conn, restock["order_id"])
        assert await users_queries.deliveries_recorded(conn, [restock["order_id"]]) == {
            restock["order_id"]
        }

        # Bulk registration (the synthetic users).
        async with conn.transaction():
            [bulk_user] = await users_queries.insert_users_bulk(
                conn, [new_user("bulk@example.org")], ["hash"]
            )
            [bulk_ssd] = await users_queries.insert_devices_bulk(
                conn, [bulk_user], ["02:00:00:00:dd:02"]
            )
            catalogue = await users_queries.all_barcodes(conn)
            await users_queries.copy_stock(conn, [(bulk_ssd, catalogue[0], 5, 1, 5)])

        # The stock samples for the KPIs: the first starts the clock, the next counts.
        assert not await users_queries.sample_stock(conn, 60.0, 5.0)
        await conn.execute("UPDATE stock_sampled SET at = now() - interval '10 seconds'")
        assert await users_queries.sample_stock(conn, 60.0, 5.0)

        # Retention: every reading id and every demand bucket is "old" here.
        assert await users_queries.delete_reading_ids(conn, -60.0, 100) == 2
        assert await users_queries.fold_demand(conn, -60.0, 100) >= 1

    async with pool.acquire() as conn:
        order = await conn.fetchrow(
            "SELECT kind, placed_by FROM product_orders WHERE id = $1", restock["order_id"]
        )
        counted = await conn.fetchval("SELECT sum(stored) FROM order_counts")
    assert dict(order) == {"kind": "restock", "placed_by": "device"}
    assert counted == 1  # the counters' trigger ran, as the function's owner


async def test_the_orders_role_runs_every_statement_of_the_orders_service(
    database_url, roles, pool, products
):
    """Placing, the transitions, the re-publisher's and the announcer's claims, the reconciler,
    the counters' fold, retention, idempotency keys' expiry, the reads, and LISTEN."""
    ssd_id = await owner_ssd(pool)
    barcode = products[0]
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    orders_dsn = dsn_of(database_url, roles, "orders")
    notified = asyncio.Event()
    async with connected(orders_dsn) as listener, pool_of(orders_dsn) as orders_pool:
        await listener.add_listener(CHANNEL, lambda *_: notified.set())
        async with orders_pool.acquire() as conn:
            rows = await orders_queries.insert_orders(
                conn, [ssd_id] * 3, [barcode] * 3, [1] * 3, ["order"] * 3, [None] * 3, [None] * 3
            )
            done, cancelled, old = (row["id"] for row in rows)
            assert None not in (done, cancelled, old)
            await orders_queries.mark_published(conn, [done, cancelled])

            def event(order_id: int, status: OrderStatus) -> OrderEvent:
                return OrderEvent(id=order_id, ssd_id=ssd_id, barcode=barcode, quantity=1,
                                  status=status, timestamp=hour_ago)  # fmt: skip

            assert await orders_queries.record_shipped_many(
                conn, [event(done, OrderStatus.SHIPPED)]
            )
            assert await orders_queries.record_completed(conn, event(done, OrderStatus.COMPLETED))
            assert await orders_queries.record_cancelled(
                conn, event(cancelled, OrderStatus.CANCELLED)
            )
            assert await orders_queries.describes_order(conn, event(done, OrderStatus.COMPLETED))

        # The owner backdates one unpublished order and places a device one (as the users
        # service would): the re-publisher and the announcer claim them.
        async with pool.acquire() as conn:
            await conn.execute(
                "UPDATE product_orders SET created_at = now() - interval '1 hour' WHERE id = $1",
                old,
            )
            await conn.fetch(
                "SELECT * FROM place_restock_orders($1, $2, $3, $4)",
                [ssd_id],
                [products[1]],
                [4],
                ["roles-restock"],
            )
            await conn.execute("INSERT INTO stock_deliveries (order_id) VALUES ($1)", done)
        await asyncio.wait_for(notified.wait(), 5)
        async with orders_pool.acquire() as conn:
            assert [r["id"] for r in await orders_queries.claim_unpublished(conn, 60, 30)] == [old]
            device = await orders_queries.claim_device_orders(conn, 30, 10)
            assert [r["barcode"] for r in device] == [products[1]]
            assert await orders_queries.confirm_deliveries(conn) == 1
            # Announced an hour ago and never shipped: overdue.
            await orders_queries.mark_published(conn, [old])
            overdue = await orders_queries.claim_overdue(conn, 60, 60, 60, 86_400)
            assert [r["id"] for r in overdue] == [old]
            await orders_queries.fold_order_counts(conn)
            await orders_queries.fold_order_minutes(conn, 86_400)
            assert await orders_queries.count_orders(conn, None, None) == 4
            assert await orders_queries.count_orders(conn, ssd_id, OrderStatus.COMPLETED) == 1
            assert len(await orders_queries.list_orders(conn, ssd_id, None, None, 10, 0)) == 4
            assert (await orders_queries.fetch_order(conn, done))["status"] == "completed"
            assert isinstance(await orders_queries.random_barcode(conn, ssd_id), str)
            assert await orders_queries.count_products(conn) >= len(products)
            assert await orders_queries.list_products(conn, 10, 0)
            assert (await orders_queries.fetch_product(conn, barcode))["barcode"] == barcode
            await idempotency.purge_expired(conn)
        # Retention: the completed order (in stock) and the cancelled one, an hour old.
        assert await orders_retention.delete_finished(orders_pool, 60.0, 100) == 2

    async with pool.acquire() as conn:
        delivered = await conn.fetchval("SELECT count(*) FROM stock_deliveries")
        stored = await conn.fetchval("SELECT sum(stored) FROM order_counts")
    assert delivered == 0  # gone with its order (the foreign key's cascade, as its owner)
    assert stored == 2  # the counters' triggers ran as the orders role


async def test_the_dashboard_role_reads_what_the_dashboard_and_the_feed_read(
    database_url, roles, pool, products
):
    ssd_id = await owner_ssd(pool)
    async with pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO product_ssds (ssd_id, barcode, quantity, reorder_point, capacity)
               VALUES ($1, $2, 5, 2, 8)""",
            ssd_id,
            products[0],
        )
        await conn.execute(
            "INSERT INTO product_orders (ssd_id, barcode, quantity) VALUES ($1, $2, 3)",
            ssd_id,
            products[0],
        )
        await conn.execute("INSERT INTO ssd_demand VALUES (now() - interval '30 seconds', 2, 3, 1)")
        name = await conn.fetchval("SELECT name FROM products WHERE barcode = $1", products[0])
    async with pool_of(dsn_of(database_url, roles, "dashboard")) as viewer:
        summary = await dashboard_handlers.load_summary(viewer)
        recent = await dashboard_handlers.load_recent(viewer, 10)
        ssds = await dashboard_handlers.load_ssds(viewer, 10)
        throughput = await dashboard_handlers.load_throughput(viewer, 5)
        kpis = await dashboard_kpis.load(viewer, 60.0)
        # The feed's (and the dashboard's event stream's) product names.
        looked_up = await ProductNames(viewer).get(products[0])
    assert (summary["users"], summary["ssds"], summary["orders"]["pending"]) == (1, 1, 1)
    assert summary["demand"]
    assert [order["id"] for order in recent["orders"]] and recent["transitions"]
    assert ssds["ssds"][0]["id"] == ssd_id
    assert sum(minute["placed"] for minute in throughput["series"]) == 1
    assert kpis["kpis"]["fill_rate"] == pytest.approx(2 / 3)
    assert looked_up == name


def sample_records(count: int) -> list[dict]:
    """The first `count` products of the bundled sample that the ETL keeps, with brands."""
    found = []
    with gzip.open(sample_path(), "rb") as lines:
        for line in lines:
            record = json.loads(line)
            product = transform(record)
            if isinstance(product, Product) and product.brands:
                found.append(record)
                if len(found) == count:
                    return found
    raise AssertionError("the sample has too few products with brands")


@pytest.fixture
async def empty_catalogue(pool: asyncpg.Pool) -> AsyncIterator[None]:
    """The ETL's tables empty, and emptied again after (as the ETL tests leave them)."""
    tables = "products, brands, product_brands, etl_positions"
    async with pool.acquire() as conn:
        await conn.execute(f"TRUNCATE {tables} CASCADE")
    yield
    async with pool.acquire() as conn:
        await conn.execute(f"TRUNCATE {tables} CASCADE")


async def test_the_etl_role_loads_the_catalogue(
    database_url, roles, pool, empty_catalogue, tmp_path
):
    settings = EtlSettings(database_url=dsn_of(database_url, roles, "etl"))
    records = sample_records(3)
    dump = tmp_path / "dump.jsonl"
    dump.write_text("".join(json.dumps(record) + "\n" for record in records))
    first = await run_etl(settings, "jsonl", file=dump, progress=False, workers=1)
    assert first.inserted == 3
    # Again, with one product's brands changed: its stale link goes, the product is touched.
    records[0] = {**records[0], "brands_tags": ["offsim-test-brand"], "brands": "Offsim"}
    dump.write_text("".join(json.dumps(record) + "\n" for record in records))
    second = await run_etl(settings, "jsonl", file=dump, progress=False, workers=1)
    assert (second.inserted, second.updated, second.unchanged) == (0, 1, 2)
    async with connected(settings.database_url) as conn:
        await etl_load.save_position(conn, "api roles", 3)
        await etl_load.save_position(conn, "api roles", 4)
        assert await etl_load.read_position(conn, "api roles") == 4
        await etl_load.clear_position(conn, "api roles")
        assert await etl_load.read_position(conn, "api roles") is None
    async with pool.acquire() as conn:
        tags = await conn.fetch(
            "SELECT tag FROM product_brands WHERE barcode = $1", records[0]["code"]
        )
    assert [row["tag"] for row in tags] == ["offsim-test-brand"]


# --- what a role must not do ---------------------------------------------------------------------


async def relations(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """The schema's tables and views: name, kind ('r' table, 'v' view), whether a view is
    writable, a plain column to update."""
    return await conn.fetch(
        """SELECT c.relname AS name, c.relkind::text AS kind,
                  coalesce(v.is_insertable_into = 'YES', false) AS writable_view,
                  (SELECT quote_ident(attname) FROM pg_attribute
                   WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped
                     AND attidentity = '' AND attgenerated = ''
                   ORDER BY attnum LIMIT 1) AS col
           FROM pg_class c
           LEFT JOIN information_schema.views v
                  ON v.table_schema = current_schema() AND v.table_name = c.relname
           WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())
             AND c.relkind IN ('r', 'p', 'v', 'm')
           ORDER BY c.relname"""
    )


async def refused(conn: asyncpg.Connection, statement: str, *args) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.execute(statement, *args)


async def refused_writes(conn: asyncpg.Connection, relation: asyncpg.Record) -> None:
    """Every write to `relation` is refused for want of a right."""
    name = quote_ident(relation["name"])
    if relation["kind"] == "v" and not relation["writable_view"]:
        return  # nobody can write to it (an aggregate), whatever their rights
    await refused(conn, f"INSERT INTO {name} DEFAULT VALUES")
    await refused(conn, f"DELETE FROM {name} WHERE false")
    if relation["kind"] != "v":
        await refused(conn, f"UPDATE {name} SET {relation['col']} = {relation['col']} WHERE false")
        await refused(conn, f"TRUNCATE {name}")


async def test_the_dashboard_role_cannot_write_anything(database_url, roles, pool):
    async with connected(database_url) as owner:
        found = await relations(owner)
    assert {r["name"] for r in found} >= set(RIGHTS["dashboard"].tables)
    async with connected(dsn_of(database_url, roles, "dashboard")) as conn:
        for relation in found:
            await refused_writes(conn, relation)
        await refused(conn, CALL_RESTOCK)
        await refused(conn, "SELECT nextval('product_orders_id_seq')")
        await refused(conn, "CREATE TABLE dashboard_notes (note text)")
        # It reads what it shows, and names only of its users.
        assert await conn.fetchval("SELECT count(*) FROM product_orders") == 0
        await refused(conn, "SELECT email FROM users")
        await refused(conn, "SELECT * FROM api_tokens")


async def test_the_users_role_cannot_update_an_order_nor_change_stock_by_trying(
    database_url, roles, pool, products
):
    ssd_id = await owner_ssd(pool)
    async with pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO product_ssds (ssd_id, barcode, quantity, reorder_point, capacity)
               VALUES ($1, $2, 5, 2, 8)""",
            ssd_id,
            products[0],
        )
        order_id = await conn.fetchval(
            """INSERT INTO product_orders (ssd_id, barcode, quantity) VALUES ($1, $2, 3)
               RETURNING id""",
            ssd_id,
            products[0],
        )
    async with connected(dsn_of(database_url, roles, "users")) as conn:
        # Its delivery added to stock, then the order marked completed by the users service
        # itself: refused, and the transaction with it.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                assert await users_queries.record_delivery(conn, order_id, ssd_id, products[0], 3)
                await conn.execute(
                    "UPDATE product_orders SET status = 'completed' WHERE id = $1", order_id
                )
        await refused(conn, "UPDATE product_orders SET quantity = 99 WHERE id = $1", order_id)
        await refused(conn, "UPDATE product_orders SET published_at = now()")
        await refused(conn, "DELETE FROM product_orders WHERE id = $1", order_id)
        await refused(
            conn,
            "INSERT INTO product_orders (ssd_id, barcode, quantity) VALUES ($1, $2, 1)",
            ssd_id,
            products[1],
        )
        await refused(conn, "INSERT INTO order_counts VALUES ('completed', 1, 1)")
        await refused(conn, "SELECT password_hash FROM users")
    async with pool.acquire() as conn:
        order = await conn.fetchrow(
            "SELECT status, quantity FROM product_orders WHERE id = $1", order_id
        )
        quantity = await conn.fetchval(
            "SELECT quantity FROM product_ssds WHERE ssd_id = $1 AND barcode = $2",
            ssd_id,
            products[0],
        )
        delivered = await conn.fetchval("SELECT count(*) FROM stock_deliveries")
        orders = await conn.fetchval("SELECT count(*) FROM product_orders")
    assert dict(order) == {"status": "pending", "quantity": 3}
    assert (quantity, delivered, orders) == (5, 0, 1)


async def test_the_etl_role_cannot_touch_the_users_nor_the_orders(database_url, roles, pool):
    async with connected(database_url) as owner:
        others = [r for r in await relations(owner) if r["name"] not in RIGHTS["etl"].tables]
    assert {"users", "product_orders", "ssds", "api_tokens"} <= {r["name"] for r in others}
    async with connected(dsn_of(database_url, roles, "etl")) as conn:
        for relation in others:
            await refused(conn, f"SELECT 1 FROM {quote_ident(relation['name'])} LIMIT 1")
            await refused_writes(conn, relation)
        await refused(conn, CALL_RESTOCK)


@pytest.mark.parametrize("component", ["notifications", "generator"])
async def test_roles_without_a_database_job_cannot_read_anything(
    database_url, roles, pool, component
):
    async with connected(database_url) as owner:
        found = await relations(owner)
    async with connected(dsn_of(database_url, roles, component)) as conn:
        for relation in found:
            await refused(conn, f"SELECT 1 FROM {quote_ident(relation['name'])} LIMIT 1")
        await refused(conn, "SELECT nextval('product_orders_id_seq')")
        await refused(conn, CALL_RESTOCK)
