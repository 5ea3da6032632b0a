"""tenant_table against a real PostgreSQL server, with real logins for the attacks.

Application tables orders and documents; tenants A and B. The application acts for a tenant through
app.tenant_id, Hasura's login through hasura.user (as Hasura does in mutations)."""

from __future__ import annotations

import json
import pathlib
import uuid

import psycopg
import pytest
import yaml
from conftest import run_play
from fakes.hasura_fake import FakeHasura, initial_metadata

A = uuid.UUID("00000000-0000-4000-8000-00000000000a")
B = uuid.UUID("00000000-0000-4000-8000-00000000000b")
EXAMPLES = yaml.safe_load(__import__("ast").literal_eval(
    pathlib.Path(__file__).resolve().parents[2].joinpath("plugins/modules/tenant_table.py").read_text()
    .split("EXAMPLES = ", 1)[1].split("\n\nRETURN", 1)[0]))
RLS_VIOLATION = "new row violates row-level security policy"


@pytest.fixture()
def app(schema):
    """Tenants A and B, and two single-tenant application tables owned by a non-superuser role."""
    owner = f"appowner_{uuid.uuid4().hex[:6]}"
    schema.execute(f'CREATE ROLE "{owner}" LOGIN')
    schema.execute(f'GRANT CREATE ON SCHEMA public TO "{owner}"')
    schema.execute("INSERT INTO platform.tenants (id, slug, name) VALUES (%s, 'acme', 'Acme'), (%s, 'globex', 'Globex')",
                   (A, B))
    schema.execute(f'SET ROLE "{owner}"')
    schema.execute("CREATE TABLE public.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, item text)")
    schema.execute("CREATE TABLE public.documents (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                   "order_id bigint REFERENCES public.orders (id), title text)")
    schema.execute("RESET ROLE")
    schema.owner = owner
    yield schema
    schema.execute("RESET ROLE")


@pytest.fixture()
def login(app, pg_server, db):
    opened, names = [], []

    def connect(group):
        name = f"{group.split('_')[-1]}_{uuid.uuid4().hex[:6]}"
        app.execute(f'CREATE ROLE "{name}" LOGIN IN ROLE {group}')
        names.append(name)
        c = pg_server.connect(db, user=name)
        opened.append(c)
        return c
    yield connect
    for c in opened:
        c.close()
    for name in names:
        app.execute(f'DROP OWNED BY "{name}"')
        app.execute(f'DROP ROLE "{name}"')


def state(conn, table="orders"):
    """What the module manages, read independently of it."""
    return conn.execute(
        "SELECT c.relrowsecurity AS rls, c.relforcerowsecurity AS forced, "
        "(SELECT a.attnotnull FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id') AS not_null, "
        "(SELECT array_agg(polname ORDER BY polname) FROM pg_policy WHERE polrelid = c.oid) AS policies, "
        "(SELECT count(*) FROM pg_constraint WHERE conrelid = c.oid AND contype = 'f' "
        "  AND confrelid = 'platform.tenants'::regclass) AS fks, "
        "has_table_privilege('public', c.oid, 'SELECT') AS public_select "
        "FROM pg_class c WHERE c.oid = %s::regclass", (f"public.{table}",)).fetchone()


def seed(conn, table, tenant, n):
    """n rows of the tenant, written by the superuser as that tenant."""
    with conn.transaction():
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", (str(tenant),))
        for i in range(n):
            if table == "orders":
                conn.execute("INSERT INTO public.orders (item) VALUES (%s)", (f"{tenant.hex[-1]}-{i}",))
            else:
                conn.execute("INSERT INTO public.documents (order_id, title) SELECT id, %s FROM public.orders "
                             "WHERE tenant_id = %s ORDER BY id LIMIT 1", (f"doc-{i}", tenant))


# Check mode, real run, re-run ------------------------------------------------------------------------------

@pytest.mark.through_playbook("tenant_table")
def test_new_empty_table(run, app):
    res = run("tenant_table", {"tables": [{"name": "orders"}]}, check=True, diff=True)
    assert res["changed"] is True and res["diff"]["after"]["public.orders"]["forced"] is True, res
    assert "public.orders: add column tenant_id uuid" in res["actions"]
    assert state(app)["not_null"] is None and state(app)["rls"] is False          # check mode wrote nothing
    real = run("tenant_table", {"tables": [{"name": "orders"}]}, diff=True)
    assert real["changed"] is True and real["actions"] == res["actions"]
    assert real["tables"][0]["state"] == res["tables"][0]["state"]                  # predicted exactly
    got = state(app)
    assert (got["rls"], got["forced"], got["not_null"], got["fks"], got["public_select"]) == (True, True, True, 1, False)
    assert got["policies"] == ["selfbase_control", "selfbase_graphql_read", "selfbase_tenant"]
    again = run("tenant_table", {"tables": [{"name": "orders"}]})
    assert again["changed"] is False and again["actions"] == []
    audit = app.execute("SELECT action, after FROM platform.audit_log WHERE entity = 'tenant_table'").fetchall()
    assert [(a["action"], a["after"]["forced"]) for a in audit] == [("update", True)]


def test_existing_rows_are_backfilled(run, app):
    app.execute("INSERT INTO public.orders (item) SELECT 'old-' || i FROM generate_series(1, 120) i")
    res = run("tenant_table", {"tables": [{"name": "orders", "backfill_tenant": "acme"}]}, check=True)
    assert "public.orders: backfill 120 row(s) with tenant acme" in res["actions"], res
    assert run("tenant_table", {"tables": [{"name": "orders", "backfill_tenant": "acme"}]})["changed"] is True
    rows = app.execute("SELECT tenant_id, count(*) AS n FROM public.orders GROUP BY 1").fetchall()
    assert rows == [{"tenant_id": A, "n": 120}]
    assert run("tenant_table", {"tables": [{"name": "orders", "backfill_tenant": "acme"}]})["changed"] is False


def test_a_table_that_already_has_the_column(run, app):
    app.execute("ALTER TABLE public.orders ADD COLUMN tenant_id uuid")
    app.execute("INSERT INTO public.orders (item, tenant_id) VALUES ('a', %s), ('b', %s)", (A, B))
    res = run("tenant_table", {"tables": [{"name": "orders", "index_columns": ["item"]}]})
    assert res["changed"] is True and not any("add column" in a or "backfill" in a for a in res["actions"]), res
    assert res["tables"][0]["state"]["index"] == "orders_tenant_id_tenant_idx"
    assert app.execute("SELECT count(*) AS n FROM public.orders").fetchone()["n"] == 2
    assert run("tenant_table", {"tables": [{"name": "orders", "index_columns": ["item"]}]})["changed"] is False


def test_absent_removes_the_policies_and_optionally_the_column(run, app):
    run("tenant_table", {"tables": [{"name": "orders"}]})
    seed(app, "orders", A, 2)
    res = run("tenant_table", {"tables": [{"name": "orders", "state": "absent", "drop_column": True}]}, check=True)
    assert res["changed"] is True and state(app)["policies"] is not None
    assert run("tenant_table", {"tables": [{"name": "orders", "state": "absent", "drop_column": True}]})["changed"] is True
    got = state(app)
    assert (got["rls"], got["forced"], got["policies"], got["not_null"], got["fks"]) == (False, False, None, None, 0)
    assert run("tenant_table", {"tables": [{"name": "orders", "state": "absent", "drop_column": True}]})["changed"] is False


def test_absent_refuses_while_rows_of_several_tenants_are_there(run, app):
    run("tenant_table", {"tables": [{"name": "orders"}]})
    seed(app, "orders", A, 1)
    seed(app, "orders", B, 1)
    res = run("tenant_table", {"tables": [{"name": "orders", "state": "absent"}]})
    assert res["failed"] is True and res["msg"].startswith("tables[0].state: public.orders holds rows of 2 tenants"), res
    assert state(app)["forced"] is True


def test_policies_it_does_not_own_are_reported_or_dropped(run, app):
    run("tenant_table", {"tables": [{"name": "orders"}]})
    app.execute("CREATE POLICY open_door ON public.orders FOR SELECT TO selfbase_app USING (true)")
    res = run("tenant_table", {"tables": [{"name": "orders"}]})
    assert res["changed"] is False and any("open_door" in w for w in res["warnings"]), res
    res = run("tenant_table", {"tables": [{"name": "orders", "exclusive": True}]})
    assert res["changed"] is True and "public.orders: drop policy open_door (not managed here, exclusive)" in res["actions"]
    assert "open_door" not in state(app)["policies"]


def test_grants_are_exactly_the_declared_ones(run, app):
    app.execute("GRANT SELECT, TRUNCATE ON public.orders TO PUBLIC, selfbase_app")
    grants = [{"role": "selfbase_app", "privileges": ["select"]}, {"role": "selfbase_graphql", "privileges": []}]
    run("tenant_table", {"tables": [{"name": "orders", "grants": grants}]})
    rows = app.execute("SELECT grantee, privilege_type FROM information_schema.role_table_grants "
                       "WHERE table_name = 'orders' AND grantee <> %s ORDER BY 1, 2", (app.owner,)).fetchall()
    assert [(r["grantee"], r["privilege_type"]) for r in rows] == [("selfbase_app", "SELECT")]
    assert state(app)["policies"] == ["selfbase_control", "selfbase_tenant"]   # no graphql_read without its grant


# Bad input: refused before any write, naming the field ----------------------------------------------------

@pytest.mark.parametrize("args, start", [
    ([{"name": "nope"}], "tables[0].name: there is no table public.nope"),
    ([{"name": "orders", "tenant_column": "item"}], "tables[0].tenant_column: public.orders.item is of type text"),
    ([{"name": "orders"}], "tables[0].backfill_tenant: public.orders has 3 row(s) without a tenant_id"),
    ([{"name": "orders", "backfill_tenant": "nobody"}], "tables[0].backfill_tenant: no tenant has the slug 'nobody'"),
    ([{"name": "orders", "backfill_tenant": "acme", "grants": [{"role": "ghost", "privileges": ["select"]}]}],
     "tables[0].grants[0].role: role ghost does not exist"),
    ([{"schema": "platform", "name": "projects"}], "tables[0].schema: platform is not an application schema"),
    ([{"name": "documents"}, {"name": "orders"}], "tables[1].backfill_tenant: public.orders has 3"),
    ([{"name": "documents"}, {"name": "documents"}], "tables[1].name: public.documents is listed twice"),
])
def test_bad_input_fails_before_any_write(run, app, args, start):
    app.execute("INSERT INTO public.orders (item) VALUES ('x'), ('y'), ('z')")
    res = run("tenant_table", {"tables": args})
    assert res["failed"] is True and res["msg"].startswith(start), res["msg"]
    for table in ("orders", "documents"):
        got = state(app, table)
        assert (got["rls"], got["not_null"], got["policies"]) == (False, None, None)
    assert app.execute("SELECT count(*) AS n FROM platform.audit_log WHERE entity = 'tenant_table'").fetchone()["n"] == 0


# Attacks: tenant A against tenant B's rows ----------------------------------------------------------------

@pytest.fixture()
def isolated(run, app):
    res = run("tenant_table", {"tables": [{"name": "orders"}, {"name": "documents"}]})
    assert res["changed"] is True, res
    for tenant in (A, B):
        seed(app, "orders", tenant, 3)
        seed(app, "documents", tenant, 2)
    return app


def as_tenant(conn, who, tenant):
    """Act for the tenant the way each layer does: the application sets app.tenant_id, Hasura hasura.user."""
    if who == "app":
        conn.execute("SELECT set_config('app.tenant_id', %s, false)", (str(tenant),))
    else:
        conn.execute("SELECT set_config('hasura.user', %s, false)",
                     (json.dumps({"x-hasura-role": "user", "x-hasura-tenant-id": str(tenant)}),))


def b_rows(conn):
    return conn.execute("SELECT xmin::text, to_jsonb(o) AS row FROM public.orders o WHERE tenant_id = %s ORDER BY id",
                        (B,)).fetchall()


def b_id(conn):
    """An order of B that no document references."""
    return conn.execute("SELECT max(id) AS id FROM public.orders WHERE tenant_id = %s", (B,)).fetchone()["id"]


WRITES = [
    ("insert into B", "INSERT INTO public.orders (item, tenant_id) VALUES ('planted', %(b)s)"),
    ("move rows to B", "UPDATE public.orders SET tenant_id = %(b)s"),
    ("update B's row", "UPDATE public.orders SET item = 'hit' WHERE id = %(order)s"),
    ("delete B's row", "DELETE FROM public.orders WHERE id = %(order)s"),
    ("upsert over B's row", "INSERT INTO public.orders (id, item) OVERRIDING SYSTEM VALUE VALUES (%(order)s, 'x') "
                            "ON CONFLICT (id) DO UPDATE SET item = 'conflict'"),
    ("delete B's documents", "DELETE FROM public.documents d USING public.orders o WHERE o.id = d.order_id "
                             "AND o.tenant_id = %(b)s"),
]


def attacks(c, b_order):
    """Every way tenant A's session could reach tenant B's rows; returns what leaked (nothing, when isolated).
    Each write runs in a transaction that is rolled back."""
    leaks = []
    seen = {r["tenant_id"] for r in c.execute("SELECT tenant_id FROM public.orders")} - {A}
    if seen:
        leaks.append(("select", seen))
    if c.execute("SELECT count(*) AS n FROM public.documents d JOIN public.orders o ON o.id = d.order_id "
                 "WHERE o.tenant_id = %s OR d.tenant_id = %s", (B, B)).fetchone()["n"]:
        leaks.append(("join",))
    if c.execute("SELECT count(*) AS n FROM public.orders o WHERE o.id = %s OR EXISTS (SELECT 1 FROM "
                 "public.documents d WHERE d.order_id = o.id AND d.tenant_id = %s)", (b_order, B)).fetchone()["n"]:
        leaks.append(("subquery",))
    params = dict(a=A, b=B, order=b_order)
    for label, statement in WRITES:
        try:
            with c.transaction():
                if c.execute(statement, params).rowcount:
                    leaks.append((label,))
                raise psycopg.Rollback()
        except psycopg.Error as e:
            if RLS_VIOLATION not in str(e):
                raise
    for statement in ("UPDATE public.orders SET item = item RETURNING tenant_id",
                      "DELETE FROM public.documents RETURNING tenant_id"):
        with c.transaction():
            returned = {r["tenant_id"] for r in c.execute(statement)} - {A}
            if returned:
                leaks.append((statement.split()[0].lower() + " returning", returned))
            raise psycopg.Rollback()
    return leaks


@pytest.mark.parametrize("who, group", [("app", "selfbase_app"), ("hasura", "selfbase_graphql")])
def test_tenant_a_cannot_reach_tenant_b(isolated, login, who, group):
    c = login(group)
    before = b_rows(isolated)
    as_tenant(c, who, A)
    assert attacks(c, b_id(isolated)) == []
    assert b_rows(isolated) == before
    # and it still works for its own tenant
    c.execute("INSERT INTO public.orders (item) VALUES ('own')")
    assert isolated.execute("SELECT tenant_id FROM public.orders WHERE item = 'own'").fetchone()["tenant_id"] == A


def test_without_force_the_owner_sees_every_tenant(isolated, pg_server, db):
    """Counterpart: the same table without FORCE leaks every row to its owner (an application that logs in as
    the owner of its tables, as a member of selfbase_app)."""
    isolated.execute(f'GRANT selfbase_app TO "{isolated.owner}"')
    with pg_server.connect(db, user=isolated.owner) as c:
        as_tenant(c, "app", A)
        assert attacks(c, b_id(isolated)) == []
        isolated.execute("ALTER TABLE public.orders NO FORCE ROW LEVEL SECURITY")
        assert ("select", {B}) in attacks(c, b_id(isolated))


def test_without_a_tenant_with_check_rows_move_to_another_tenant(isolated, login):
    """Counterpart: a policy that filters reads but checks nothing on write lets A plant rows in B."""
    isolated.execute("DROP POLICY selfbase_tenant ON public.orders")
    isolated.execute("CREATE POLICY selfbase_tenant ON public.orders TO selfbase_app "
                     "USING (tenant_id = (SELECT platform.current_tenant_id())) WITH CHECK (true)")
    c = login("selfbase_app")
    as_tenant(c, "app", A)
    leaked = [leak[0] for leak in attacks(c, b_id(isolated))]
    assert leaked == ["insert into B", "move rows to B"]


# With hasura_metadata: the documented playbook, run as it is -----------------------------------------------

def test_the_documented_playbook_with_hasura_metadata(pg_server, db, app):
    app.execute("CREATE TABLE public.products (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text)")
    block = next(t for t in EXAMPLES if t["name"].startswith("Two tables"))
    secret = "s3cr3t-admin-Secret-value-4f1c"
    auth = {("auth", t["table"]["name"]): None for t in initial_metadata()["sources"][0]["tables"]}
    auth[("auth", "user_security_keys")] = None
    with FakeHasura(admin_secret=secret, db_tables={**auth, ("public", "products"): None,
                                                    ("public", "orders"): None}) as fake:
        login = pg_server.login(db)
        login.pop("login_db")
        play = {"hosts": "localhost", "gather_facts": False,
                "vars": {"selfbase_db_name": db, "vault_hasura_admin_secret": secret},
                "module_defaults": {"selfbase.platform.tenant_table": login,
                                    "selfbase.platform.hasura_metadata": {"endpoint": fake.endpoint}},
                "tasks": [block]}
        results = run_play(play)
        assert [r.get("failed", False) for r in results] == [False, False], results
        tables = {(t["table"]["schema"], t["table"]["name"]): t for t in fake.metadata["sources"][0]["tables"]}
    for name in ("products", "orders"):
        assert state(app, name)["policies"] == ["selfbase_control", "selfbase_graphql_read", "selfbase_tenant"]
        perm = tables[("public", name)]["select_permissions"][0]
        assert perm["role"] == "user" and perm["permission"]["filter"] == {"tenant_id": {"_eq": "X-Hasura-Tenant-Id"}}
