"""tenant_export against a real PostgreSQL server: one tenant's rows out of one
database and into another that has the same schema but not the tenant."""

from __future__ import annotations

import json
import os
import uuid

import pytest
from conftest import Runner

A = uuid.UUID("00000000-0000-4000-8000-00000000000a")
B = uuid.UUID("00000000-0000-4000-8000-00000000000b")
ROWS = ("SELECT coalesce(json_agg(r ORDER BY row_to_json(r)::text), '[]') AS rows FROM {table} r "
        "WHERE {col} = %s")
TABLES = [("platform.tenants", "id"), ("platform.tenant_domains", "tenant_id"), ("platform.tenant_members", "tenant_id"),
          ("platform.tenant_quotas", "tenant_id"), ("platform.usage_events", "tenant_id"),
          ("platform.usage_rollups_daily", "tenant_id"), ("platform.audit_log", "tenant_id"), ("public.orders", "tenant_id")]


def rows(conn, table, col, tenant=A):
    return conn.execute(ROWS.format(table=table, col=col), (tenant,)).fetchone()["rows"]


def app_table(conn, runner):
    conn.execute("CREATE TABLE IF NOT EXISTS public.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, item text)")
    assert runner("tenant_table", {"tables": [{"name": "orders"}]}).get("failed") is not True


@pytest.fixture()
def source(schema, run):
    """acme and globex with domains, members, a quota, usage (and its rollups), audit rows and orders."""
    schema.execute("INSERT INTO platform.plans (code, name) VALUES ('pro', 'Pro')")
    schema.execute("INSERT INTO platform.tenants (id, slug, name, plan_code) VALUES (%s, 'acme', 'Acme', 'pro'), "
                   "(%s, 'globex', 'Globex', NULL)", (A, B))
    for t in (A, B):
        schema.execute("INSERT INTO platform.tenant_domains (tenant_id, domain, is_primary) VALUES (%s, %s, true)",
                       (t, f"{t.hex[-1]}.example.com"))
        schema.execute("INSERT INTO platform.tenant_members (tenant_id, user_id, role) VALUES (%s, gen_random_uuid(), 'owner')",
                       (t,))
        schema.execute("INSERT INTO platform.tenant_quotas (tenant_id, metric, limit_value) VALUES (%s, 'api_requests', 1000)",
                       (t,))
        with schema.transaction():
            schema.execute("SELECT set_config('app.tenant_id', %s, true)", (str(t),))
            for i in range(3):
                schema.execute("SELECT * FROM platform.record_usage(%s, 'api_requests', 5, %s)", (t, f"k{i}"))
    app_table(schema, run)
    for t, n in ((A, 4), (B, 2)):
        with schema.transaction():
            schema.execute("SELECT set_config('app.tenant_id', %s, true)", (str(t),))
            schema.execute("INSERT INTO public.orders (item) SELECT 'o' || i FROM generate_series(1, %s) i", (n,))
    return schema


@pytest.fixture()
def target(pg_server, schema_template, db):
    """A second database with the same schema and application table, without the tenants."""
    name = db + "_target"
    with pg_server.connect() as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')
        c.execute(f'CREATE DATABASE "{name}" TEMPLATE "{schema_template}"')
    runner = Runner(pg_server, name)
    with pg_server.connect(name) as conn:
        conn.execute("INSERT INTO platform.plans (code, name) VALUES ('pro', 'Pro')")
        app_table(conn, runner)
        yield conn, runner
    with pg_server.connect() as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.through_playbook("tenant_export")
def test_export_then_import_moves_exactly_one_tenant(source, run, target, tmp_path):
    path = str(tmp_path / "acme.json")
    args = {"tenant": "acme", "path": path}
    check = run("tenant_export", args, check=True, diff=True)
    assert check["changed"] is True and not os.path.exists(path), json.dumps(check)[:3000]
    assert check["diff"]["after"]["public.orders"] == 4
    res = run("tenant_export", args)
    assert res["changed"] is True and res["rows"] == check["rows"]
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    doc = json.load(open(path, encoding="utf-8"))
    assert str(B) not in json.dumps(doc)                          # nothing of globex
    assert res["rows"]["platform.usage_rollups_daily"] == 1 and res["rows"]["platform.usage_events"] == 3
    assert run("tenant_export", args)["changed"] is False          # same rows, same file

    tconn, trun = target
    check = trun("tenant_export", dict(args, state="imported"), check=True)
    assert check["changed"] is True, check
    assert tconn.execute("SELECT count(*) AS n FROM platform.tenants").fetchone()["n"] == 0   # rolled back
    res = trun("tenant_export", dict(args, state="imported"), diff=True)
    assert res["changed"] is True, json.dumps(res)[:1500]
    for table, col in TABLES:
        assert rows(tconn, table, col) == rows(source, table, col), table
    # the rollups were not counted twice, and new rows get fresh ids
    tconn.execute("INSERT INTO platform.tenant_domains (tenant_id, domain) VALUES (%s, 'more.example.com')", (A,))
    assert trun("tenant_export", dict(args, state="imported"))["changed"] is False


def test_imported_members_get_a_tenant_choice(source, run, target, tmp_path):
    """Choices are the users' and stay out of the file; the load turns the trigger off, so the import gives each
    loaded member without a choice their oldest membership, and keeps the choice of one who has one."""
    owner = source.execute("SELECT user_id FROM platform.tenant_members WHERE tenant_id = %s", (A,)).fetchone()["user_id"]
    path = str(tmp_path / "acme.json")
    assert "platform.tenant_choices" not in run("tenant_export", {"tenant": "acme", "path": path})["rows"]
    tconn, trun = target
    other = uuid.uuid4()
    tconn.execute("INSERT INTO platform.tenants (id, slug, name) VALUES (%s, 'initech', 'Initech')", (other,))
    for n, user in enumerate((owner, uuid.uuid4())):  # ids past the file's: the load keeps its ids
        tconn.execute("INSERT INTO platform.tenant_members (id, tenant_id, user_id) OVERRIDING SYSTEM VALUE "
                      "VALUES (%s, %s, %s)", (1000 + n, other, user))
    tconn.execute("DELETE FROM platform.tenant_choices WHERE user_id <> %s", (owner,))  # a member of before 0008
    res = trun("tenant_export", {"tenant": "acme", "path": path, "state": "imported"})
    assert res["changed"] is True, json.dumps(res)[:1500]
    chosen = dict((r["user_id"], r["tenant_id"]) for r in tconn.execute(
        "SELECT user_id, tenant_id FROM platform.tenant_choices").fetchall())
    assert chosen[owner] == other  # kept
    added = source.execute("SELECT user_id FROM platform.tenant_members WHERE tenant_id = %s", (A,)).fetchall()
    assert all(r["user_id"] in chosen for r in added)


def test_a_loaded_member_without_a_choice_gets_one(source, run, target, tmp_path):
    path = str(tmp_path / "acme.json")
    run("tenant_export", {"tenant": "acme", "path": path})
    tconn, trun = target
    assert trun("tenant_export", {"tenant": "acme", "path": path, "state": "imported"})["changed"] is True
    members = tconn.execute("SELECT user_id FROM platform.tenant_members WHERE tenant_id = %s", (A,)).fetchall()
    assert members and all(tconn.execute("SELECT tenant_id FROM platform.tenant_choices WHERE user_id = %s",
                                         (r["user_id"],)).fetchone()["tenant_id"] == A for r in members)


def test_a_tenant_that_exists_with_other_rows_is_refused(source, run, target, tmp_path):
    path = str(tmp_path / "acme.json")
    run("tenant_export", {"tenant": "acme", "path": path})
    tconn, trun = target
    tconn.execute("INSERT INTO platform.tenants (id, slug, name) VALUES (%s, 'acme', 'Other Acme')", (A,))
    res = trun("tenant_export", {"tenant": "acme", "path": path, "state": "imported"})
    assert res.get("failed") is True and "tenant: acme already exists" in res["msg"], res


def test_missing_referenced_rows_fail_and_load_nothing(source, run, target, tmp_path):
    path = str(tmp_path / "acme.json")
    run("tenant_export", {"tenant": "acme", "path": path})
    tconn, trun = target
    tconn.execute("DELETE FROM platform.plans WHERE code = 'pro'")
    res = trun("tenant_export", {"tenant": "acme", "path": path, "state": "imported"})
    assert res.get("failed") is True, res
    assert "platform.tenants refer to rows of platform.plans" in res["msg"] and "plan_code" in res["msg"]
    assert tconn.execute("SELECT count(*) AS n FROM platform.tenant_domains").fetchone()["n"] == 0


def test_bad_input_names_the_field(run, schema, tmp_path):
    res = run("tenant_export", {"tenant": "nobody", "path": str(tmp_path / "x.json")})
    assert res.get("failed") is True and res["msg"].startswith("tenant: no tenant with slug nobody"), res
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    res = run("tenant_export", {"tenant": "acme", "path": str(bad), "state": "imported"})
    assert res.get("failed") is True and res["msg"].startswith("path:") and "not a tenant export" in res["msg"], res


def test_a_login_that_row_level_security_filters_is_refused(run, source, pg_server, db, tmp_path):
    """Row-level security filters what any other login reads (here the application's role sees no
    order at all): an export would be silently incomplete, so non-superusers are refused."""
    source.execute("CREATE ROLE exporter LOGIN IN ROLE selfbase_app")
    try:
        with pg_server.connect(db, user="exporter") as conn:
            assert conn.execute("SELECT count(*) AS n FROM public.orders").fetchone()["n"] == 0   # what it would see
        args = dict(pg_server.login(db), login_user="exporter", tenant="acme", path=str(tmp_path / "a.json"))
        res = run("tenant_export", args, login=False)
        assert res.get("failed") is True and res["msg"].startswith("login_user: tenant_export needs a superuser"), res
        assert not (tmp_path / "a.json").exists()
    finally:
        source.execute("DROP ROLE exporter")
