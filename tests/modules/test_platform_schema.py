"""platform_schema against a real PostgreSQL server."""

from __future__ import annotations

import concurrent.futures
import hashlib

import pytest
from conftest import Runner

MIGRATION_VERSIONS = ["%04d" % n for n in range(1, 20)]


def _applied(conn):
    if conn.execute("SELECT to_regclass('selfbase_meta.schema_migrations') AS t").fetchone()["t"] is None:
        return []
    return [r["version"] for r in conn.execute("SELECT version FROM selfbase_meta.schema_migrations ORDER BY 1")]


@pytest.mark.through_playbook("platform_schema")
def test_check_then_apply_then_noop(run, conn):
    res = run("platform_schema", {}, check=True, diff=True)
    assert res["changed"] is True
    assert res["pending"] == MIGRATION_VERSIONS
    assert res["diff"]["before"] == {"versions": []}
    assert res["diff"]["after"] == {"versions": MIGRATION_VERSIONS}
    assert _applied(conn) == []
    assert conn.execute("SELECT to_regnamespace('platform') AS s").fetchone()["s"] is None

    res = run("platform_schema", {})
    assert res["changed"] is True
    assert res["applied"] == MIGRATION_VERSIONS
    assert res["current_version"] == MIGRATION_VERSIONS[-1]
    assert _applied(conn) == MIGRATION_VERSIONS
    assert conn.execute("SELECT to_regclass('platform.tenants') IS NOT NULL AS ok").fetchone()["ok"]

    res = run("platform_schema", {})
    assert res["changed"] is False
    assert res["applied"] == []
    assert res["versions"] == MIGRATION_VERSIONS


def test_edited_migration_fails_clearly(run, conn):
    run("platform_schema", {})
    conn.execute("UPDATE selfbase_meta.schema_migrations SET checksum = %s WHERE version = '0001'",
                 (hashlib.sha256(b"something else").hexdigest(),))
    res = run("platform_schema", {})
    assert res["failed"] is True
    assert "Migration 0001 (tenancy_core) was edited after it was applied" in res["msg"]


def test_unknown_applied_migration_fails(run, conn):
    run("platform_schema", {})
    conn.execute("INSERT INTO selfbase_meta.schema_migrations (version, name, checksum) VALUES ('9999', 'future', 'x')")
    res = run("platform_schema", {})
    assert res["failed"] is True
    assert "migration 9999 (future), which this collection does not ship" in res["msg"]


def test_unknown_target_version(run, conn):
    res = run("platform_schema", {"target_version": "0042"})
    assert res["failed"] is True
    assert "target_version 0042 is not a known migration" in res["msg"]
    assert _applied(conn) == []


def test_concurrent_runs_apply_once(pg_server, db, conn):
    # three ansible-playbook processes, as three controllers would run them (a module in the test process is not
    # made to share its interpreter with another)
    run = Runner(pg_server, db, playbook=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda _: run("platform_schema", {}), range(3)))
    assert [r.get("failed", False) for r in results] == [False] * 3
    assert sorted(r["changed"] for r in results) == [False, False, True]
    assert _applied(conn) == MIGRATION_VERSIONS


def test_roles_follow_least_privilege(schema):
    roles = {r["rolname"]: r for r in schema.execute(
        "SELECT rolname, rolcanlogin, rolbypassrls, rolsuper FROM pg_roles WHERE rolname LIKE 'selfbase\\_%'")}
    assert set(roles) == {"selfbase_owner", "selfbase_app", "selfbase_admin", "selfbase_monitor",
                          "selfbase_graphql", "selfbase_meter", "selfbase_meter_definer", "selfbase_billing",
                          "selfbase_billing_definer", "selfbase_quota_definer", "selfbase_choice_definer",
                          "selfbase_operator_definer", "selfbase_quota_reader", "selfbase_mrr_definer",
                          "selfbase_features_reader", "selfbase_billing_sessions"}
    assert not any(r["rolcanlogin"] or r["rolbypassrls"] or r["rolsuper"] for r in roles.values())
    owners = {r["owner"] for r in schema.execute(
        "SELECT DISTINCT pg_get_userbyid(relowner) AS owner FROM pg_class "
        "WHERE relnamespace = 'platform'::regnamespace AND relkind IN ('r', 'S', 'v', 'i')")}
    assert owners == {"selfbase_owner"}


def test_rls_enabled_and_forced_on_tenant_tables(schema):
    rows = schema.execute(
        "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' "
        "WHERE c.relnamespace = 'platform'::regnamespace AND c.relkind = 'r'").fetchall()
    assert len(rows) >= 10
    assert [r["relname"] for r in rows if not (r["relrowsecurity"] and r["relforcerowsecurity"])] == []


def test_check_mode_on_a_fresh_database_predicts_instead_of_failing(run, conn):
    """A whole play in check mode on a fresh host: the schema is not there yet."""
    res = run("tenant", {"slug": "acme", "plan": "pro"}, check=True)
    assert res.get("failed") is not True, res
    assert res["changed"] is True
    res = run("tenant_info", {}, check=True)
    assert (res.get("failed"), res["changed"], res["tenants"]) == (None, False, [])
    res = run("tenant", {"slug": "acme"})
    assert res["failed"] is True
    assert "run selfbase.platform.platform_schema first" in res["msg"]
    assert conn.execute("SELECT to_regnamespace('platform') AS s").fetchone()["s"] is None


def test_modules_check_the_schema_version_in_the_ledger(run, conn):
    """require_schema reads the migration ledger: a schema older than a module needs is named with both versions,
    and the control-plane login (selfbase_admin, not superuser) can read the ledger from 0004 on."""
    run("platform_schema", {"target_version": "0002"})
    res = run("tenant", {"slug": "acme"})
    assert res["failed"] is True and "is at version 0002, this module needs 0017 or newer" in res["msg"], res
    run("platform_schema", {})
    conn.execute("CREATE ROLE ledger_control LOGIN IN ROLE selfbase_admin")
    conn.execute("CREATE ROLE ledger_nobody LOGIN")
    try:
        assert run("tenant_info", {"login_user": "ledger_control"}).get("failed") is not True
        res = run("tenant_info", {"login_user": "ledger_nobody"})
        assert res["failed"] is True and "at version none" in res["msg"] and "selfbase_admin" in res["msg"], res
    finally:
        conn.execute("DROP OWNED BY ledger_control, ledger_nobody")
        conn.execute("DROP ROLE ledger_control, ledger_nobody")
