"""The operators' API in the database (migration 0009), against a real PostgreSQL server.

Operators' requests reach the database as Hasura's login, in a mutation, with hasura.user holding their session
(x-hasura-role "operator", x-hasura-user-id). These tests call the operator functions the way Hasura runs a
tracked function exposed as a mutation (SELECT * FROM fn(args)), as each login and session that must be refused,
and show each defence's attack working without it."""

from __future__ import annotations

import json
import pathlib
import re
import uuid

import pytest
import yaml

from test_isolation import A, B, tenants  # noqa: F401  pylint: disable=unused-import
from test_security import ROLES, act_for, error, logins  # noqa: F401  pylint: disable=unused-import

OP = uuid.UUID("0b0b0b0b-0000-4000-8000-0000000000aa")  # listed in platform.operators
USER = uuid.UUID("0c0c0c0c-0000-4000-8000-0000000000bb")  # a member of A, not an operator

ROOT = pathlib.Path(__file__).resolve().parents[2]

SUSPEND = ("SELECT id, status FROM platform.operator_set_tenant_status(tenant_id => %s, status => 'suspended')", (A,))
# POST admin/tenants (migration 0016)
CREATE = ("SELECT id, slug FROM platform.operator_create_tenant(slug => %s, name => %s, plan_code => %s)",
          ("gamma", "Gamma Ltd", "big"))


def session(conn, role=None, user=None, tenant=None):
    """hasura.user as Hasura sets it in a mutation; role None: no session (a query, or the admin secret's)."""
    value = "" if role is None else json.dumps(dict(
        {"x-hasura-role": role, "x-hasura-user-id": str(user)},
        **({"x-hasura-tenant-id": str(tenant)} if tenant else {})))
    conn.execute("SELECT set_config('hasura.user', %s, false)", (value,))


def audit(conn):
    return conn.execute("SELECT actor, entity, entity_key, action, before, after, operator_id FROM platform.audit_log "
                        "WHERE entity_key LIKE 'alpha%%' ORDER BY id").fetchall()


def status(conn, tenant=A):
    return conn.execute("SELECT status FROM platform.tenants WHERE id = %s", (tenant,)).fetchone()["status"]


@pytest.fixture()
def ops(tenants, logins):  # noqa: F811
    tenants.execute("INSERT INTO platform.operators (user_id, note) VALUES (%s, 'on call')", (OP,))
    tenants.execute("INSERT INTO platform.tenant_members (tenant_id, user_id) VALUES (%s, %s)", (A, USER))
    tenants.execute("INSERT INTO platform.plans (code, name, active) VALUES ('big', 'Big', true), "
                    "('gone', 'Retired', false)")
    tenants.execute("DELETE FROM platform.audit_log")
    hasura = logins("hasura")
    session(hasura, "operator", OP)
    return hasura


def test_an_operator_suspends_and_resumes_a_tenant_audited_with_their_id(tenants, ops, logins):  # noqa: F811
    assert ops.execute(*SUSPEND).fetchall() == [{"id": A, "status": "suspended"}]
    assert ops.execute(*SUSPEND).fetchall() == [{"id": A, "status": "suspended"}]  # already: nothing written
    assert status(tenants, B) == "active"
    ops.execute("SELECT * FROM platform.operator_set_tenant_status(%s, 'active')", (A,))
    assert status(tenants) == "active"
    assert audit(tenants) == [
        {"actor": logins.names["hasura"], "entity": "tenant", "entity_key": "alpha", "action": "update",
         "before": {"status": before}, "after": {"status": after}, "operator_id": OP}
        for before, after in (("active", "suspended"), ("suspended", "active"))]


def test_an_operator_changes_the_plan_and_overrides_a_quota(tenants, ops):  # noqa: F811
    row = ops.execute("SELECT plan_code FROM platform.operator_change_plan(%s, 'big')", (A,)).fetchone()
    assert row == {"plan_code": "big"}
    ops.execute("SELECT platform.operator_change_plan(%s, 'iso')", (A,))
    ops.execute("SELECT * FROM platform.operator_set_quota(tenant_id => %s, metric => 'members', limit_value => 5)",
                (A,))
    quota = "SELECT limit_value, period, mode FROM platform.tenant_quotas WHERE tenant_id = %s AND metric = 'members'"
    # the period is the plan's for this metric
    assert tenants.execute(quota, (A,)).fetchone() == {"limit_value": 5, "period": "none", "mode": "hard"}
    ops.execute("SELECT * FROM platform.operator_set_quota(%s, 'members', NULL, 'soft')", (A,))
    assert tenants.execute(quota, (A,)).fetchone() == {"limit_value": None, "period": "none", "mode": "soft"}
    ops.execute("SELECT * FROM platform.operator_set_quota(%s, 'members', NULL, 'soft')", (A,))  # unchanged
    ops.execute("SELECT * FROM platform.operator_set_quota(tenant_id => %s, metric => 'members', clear => true)", (A,))
    assert tenants.execute(quota, (A,)).fetchone() is None
    assert [(r["entity"], r["entity_key"], r["action"], r["operator_id"]) for r in audit(tenants)] == [
        ("tenant", "alpha", "update", OP), ("tenant", "alpha", "update", OP),
        ("tenant_quota", "alpha/members", "create", OP), ("tenant_quota", "alpha/members", "update", OP),
        ("tenant_quota", "alpha/members", "delete", OP)]


def test_a_quota_call_without_mode_or_period_keeps_them(tenants, ops):  # noqa: F811
    """The REST endpoint sends every variable, null when not given: null keeps the override's mode and period."""
    quota = "SELECT limit_value, period, mode FROM platform.tenant_quotas WHERE tenant_id = %s AND metric = 'projects'"
    ops.execute("SELECT * FROM platform.operator_set_quota(%s, 'projects', 3, 'soft', 'month', NULL)", (A,))
    ops.execute("SELECT * FROM platform.operator_set_quota(%s, 'projects', 7, NULL, NULL, NULL)", (A,))
    assert tenants.execute(quota, (A,)).fetchone() == {"limit_value": 7, "period": "month", "mode": "soft"}


@pytest.mark.parametrize("sql,params,field", [
    ("SELECT * FROM platform.operator_set_tenant_status(%s, 'deleted')", (A,), "status"),
    ("SELECT * FROM platform.operator_set_tenant_status(%s, 'active')", (uuid.uuid4(),), "tenant_id"),
    ("SELECT * FROM platform.operator_change_plan(%s, 'gone')", (A,), "plan_code"),
    ("SELECT * FROM platform.operator_change_plan(%s, 'nope')", (A,), "plan_code"),
    ("SELECT * FROM platform.operator_set_quota(%s, 'nope', 1)", (A,), "metric"),
    ("SELECT * FROM platform.operator_set_quota(%s, 'members', -1)", (A,), "limit_value"),
    ("SELECT * FROM platform.operator_set_quota(%s, 'members', 1, 'strict')", (A,), "mode"),
    ("SELECT * FROM platform.operator_set_quota(%s, 'members', 1, 'hard', 'week')", (A,), "period"),
])
def test_bad_arguments_are_refused_naming_the_field_and_nothing_is_written(tenants, ops, sql, params, field):  # noqa: F811
    before = tenants.execute("SELECT to_jsonb(t) AS t FROM platform.tenants t ORDER BY id").fetchall()
    err = error(ops, sql, params)
    assert err.sqlstate == "22023" and err.diag.message_primary.startswith(field + ":"), err
    assert tenants.execute("SELECT to_jsonb(t) AS t FROM platform.tenants t ORDER BY id").fetchall() == before
    assert audit(tenants) == []


def tenant_row(conn, slug):
    return conn.execute("SELECT name, status, plan_code, billing_cycle, stripe_customer_id FROM platform.tenants "
                        "WHERE slug = %s", (slug,)).fetchone()


def test_an_operator_creates_a_tenant_audited_with_their_id(tenants, ops):  # noqa: F811
    row = ops.execute(*CREATE).fetchone()
    assert row["slug"] == "gamma"
    assert tenant_row(tenants, "gamma") == {"name": "Gamma Ltd", "status": "active", "plan_code": "big",
                                            "billing_cycle": "month", "stripe_customer_id": None}
    # pooled: no placement row
    assert tenants.execute("SELECT count(*) AS n FROM platform.tenant_placements WHERE tenant_id = %s",
                           (row["id"],)).fetchone()["n"] == 0
    audited = tenants.execute("SELECT tenant_id, entity, entity_key, action, before, after, operator_id "
                              "FROM platform.audit_log WHERE entity_key = 'gamma'").fetchall()
    assert audited == [{"tenant_id": row["id"], "entity": "tenant", "entity_key": "gamma", "action": "create",
                        "before": None, "after": {"name": "Gamma Ltd", "status": "active", "plan_code": "big",
                                                  "billing_cycle": "month"}, "operator_id": OP}]
    yearly = ops.execute("SELECT billing_cycle, plan_code FROM platform.operator_create_tenant('delta', ' Delta ', "
                         "billing_cycle => 'year')").fetchone()
    assert yearly == {"billing_cycle": "year", "plan_code": None}
    assert tenant_row(tenants, "delta")["name"] == "Delta"
    # a REST call that leaves billing_cycle out passes NULL
    assert ops.execute("SELECT billing_cycle FROM platform.operator_create_tenant('epsilon', 'E', NULL, NULL)"
                       ).fetchone() == {"billing_cycle": "month"}


@pytest.mark.parametrize("args,field,sqlstate", [
    (("Gamma", "Gamma", None, "month"), "slug", "22023"),
    (("-gamma", "Gamma", None, "month"), "slug", "22023"),
    ((None, "Gamma", None, "month"), "slug", "22023"),
    (("alpha", "Again", None, "month"), "slug", "23505"),  # taken: a retried request creates nothing twice
    (("gamma", "  ", None, "month"), "name", "22023"),
    (("gamma", "x" * 201, None, "month"), "name", "22023"),
    (("gamma", "Gamma", "gone", "month"), "plan_code", "22023"),  # inactive
    (("gamma", "Gamma", "nope", "month"), "plan_code", "22023"),
    (("gamma", "Gamma", None, "week"), "billing_cycle", "22023"),
])
def test_a_bad_new_tenant_is_refused_by_field_and_nothing_is_written(tenants, ops, args, field, sqlstate):  # noqa: F811
    before = tenants.execute("SELECT count(*) AS n FROM platform.tenants").fetchone()["n"]
    err = error(ops, "SELECT * FROM platform.operator_create_tenant(%s, %s, %s, %s)", args)
    assert err.sqlstate == sqlstate and str(err).startswith(field + ":"), str(err)
    assert tenants.execute("SELECT count(*) AS n FROM platform.tenants").fetchone()["n"] == before
    assert audit(tenants) == [] and tenant_row(tenants, "gamma") is None


def test_with_execute_granted_the_app_created_a_tenant_as_an_operator(tenants, ops, logins):  # noqa: F811
    """The EXECUTE wall: selfbase_app sets hasura.user itself."""
    tenants.execute("GRANT EXECUTE ON FUNCTION platform.operator_create_tenant(text, text, text, text) TO selfbase_app")
    app = logins("app")
    session(app, "operator", OP)
    app.execute(*CREATE)
    assert tenant_row(tenants, "gamma")["name"] == "Gamma Ltd"


def test_a_deleted_tenant_is_not_resumed_by_an_operator(tenants, ops):  # noqa: F811
    tenants.execute("UPDATE platform.tenants SET status = 'deleted' WHERE id = %s", (A,))
    assert error(ops, "SELECT * FROM platform.operator_set_tenant_status(%s, 'active')", (A,)).sqlstate == "55000"
    assert status(tenants) == "deleted"


# Who may act: the operator role of a listed user, through Hasura's login, in a mutation ----------------------

@pytest.mark.parametrize("role,user", [
    ("user", USER),        # a tenant's user, whatever tenant their token carries
    ("user", OP),          # a listed operator's user id, without the operator role
    ("operator", USER),    # the operator role for a user the control plane did not list
    (None, None),          # a query, or the admin secret (hasura.user holds no operator)
])
def test_only_a_listed_operator_in_the_operator_role_may_act(tenants, ops, role, user):  # noqa: F811
    session(ops, role, user, tenant=A)
    for sql, params in (SUSPEND, ("SELECT * FROM platform.operator_change_plan(%s, 'big')", (A,)),
                        ("SELECT * FROM platform.operator_set_quota(%s, 'members', 0)", (A,)), CREATE):
        assert error(ops, sql, params).sqlstate == "42501", (role, user, sql)
    assert status(tenants) == "active" and audit(tenants) == [] and tenant_row(tenants, "gamma") is None


def test_without_the_operators_table_any_token_with_the_role_acted(tenants, ops):  # noqa: F811
    """If the role claim alone decided, an auth user who got the role by mistake (or a forged signup role) acted."""
    tenants.execute("CREATE OR REPLACE FUNCTION platform.current_operator_id() RETURNS uuid LANGUAGE sql STABLE AS "
                    "$$ SELECT CASE WHEN current_setting('hasura.user', true)::jsonb ->> 'x-hasura-role' = 'operator' "
                    "THEN platform.current_user_id() END $$")
    session(ops, "operator", USER)
    ops.execute(*SUSPEND)
    assert status(tenants) == "suspended"
    ops.execute(*CREATE)
    assert tenant_row(tenants, "gamma")["name"] == "Gamma Ltd"


@pytest.mark.parametrize("who", [w for w in ROLES if w != "hasura"])
def test_other_logins_cannot_call_the_actions_even_with_an_operators_session(tenants, ops, logins, who):  # noqa: F811
    """selfbase_app can set hasura.user itself; without EXECUTE it cannot pose as an operator."""
    c = logins(who)
    act_for(c, A)
    session(c, "operator", OP)
    for sql, params in (SUSPEND, ("SELECT * FROM platform.operator_change_plan(%s, 'big')", (A,)),
                        ("SELECT * FROM platform.operator_set_quota(%s, 'members', 0)", (A,)), CREATE,
                        ("SELECT platform.current_operator_id()", ())):
        assert error(c, sql, params).sqlstate == "42501", (who, sql)
    assert status(tenants) == "active" and tenant_row(tenants, "gamma") is None


@pytest.mark.parametrize("who", list(ROLES))
def test_no_login_calls_the_inner_steps_which_skip_the_operator_check(tenants, ops, logins, who):  # noqa: F811
    c = ops if who == "hasura" else logins(who)
    row = "(SELECT t FROM platform.tenants t LIMIT 1)"
    for sql in (f"SELECT platform.operator_update_tenant({row}, 'status', 'suspended')",
                f"SELECT platform.operator_audit({row}, 'tenant', 'alpha', 'update', NULL, NULL)",
                f"SELECT platform.operator_tenant('{A}')"):
        assert error(c, sql).sqlstate == "42501", (who, sql)
    assert status(tenants) == "active" and audit(tenants) == []


def test_with_execute_granted_the_app_posed_as_an_operator(tenants, ops, logins):  # noqa: F811
    tenants.execute("GRANT EXECUTE ON FUNCTION platform.operator_set_tenant_status(uuid, text) TO selfbase_app")
    app = logins("app")
    session(app, "operator", OP)
    app.execute(*SUSPEND)
    assert status(tenants) == "suspended"


@pytest.mark.parametrize("who", [w for w in ROLES if w != "control"])
def test_only_the_control_plane_reads_and_lists_operators(tenants, ops, logins, who):  # noqa: F811
    c = ops if who == "hasura" else logins(who)
    act_for(c, A)
    for sql, params in (("SELECT user_id FROM platform.operators", ()),
                        ("INSERT INTO platform.operators (user_id) VALUES (%s)", (USER,)),
                        ("DELETE FROM platform.operators", ())):
        assert error(c, sql, params).sqlstate == "42501", (who, sql)
    control = logins("control")
    control.execute("INSERT INTO platform.operators (user_id) VALUES (%s)", (USER,))
    assert tenants.execute("SELECT created_by FROM platform.operators WHERE user_id = %s",
                           (USER,)).fetchone() == {"created_by": logins.names["control"]}


def test_no_other_writer_of_the_audit_log_can_credit_an_operator(tenants, ops, logins):  # noqa: F811
    control = logins("control")
    control.execute("INSERT INTO platform.audit_log (tenant_id, entity, entity_key, action, operator_id) "
                    "VALUES (%s, 'tenant', 'alpha-forged', 'update', %s)", (A, OP))
    assert [r["operator_id"] for r in audit(tenants)] == [None]


def test_without_the_stamp_the_control_plane_credited_an_operator(tenants, ops, logins):  # noqa: F811
    tenants.execute("DROP TRIGGER stamp_audit_row ON platform.audit_log")
    logins("control").execute("INSERT INTO platform.audit_log (tenant_id, entity, entity_key, action, operator_id) "
                              "VALUES (%s, 'tenant', 'alpha-forged', 'update', %s)", (A, OP))
    assert [r["operator_id"] for r in audit(tenants)] == [OP]


# What operators read: every tenant's rows, in a query; Hasura's operator permissions are the wall -----------

OPERATOR_READS = ["tenants", "tenant_quotas", "usage_rollups_daily", "subscriptions", "invoices"]


@pytest.mark.parametrize("table", OPERATOR_READS)
def test_graphql_reads_every_tenants_rows_in_a_query_and_one_tenants_in_a_mutation(tenants, ops, table):  # noqa: F811
    col = "id" if table == "tenants" else "tenant_id"
    sql = f"SELECT DISTINCT {col} AS t FROM platform.{table} ORDER BY 1"
    session(ops)
    assert [r["t"] for r in ops.execute(sql)] == sorted([A, B])
    session(ops, "user", USER, tenant=A)
    assert [r["t"] for r in ops.execute(sql)] == [A]


def test_the_new_read_policies_are_hasuras_only(tenants, ops, logins):  # noqa: F811
    """The app still reads its tenant's subscriptions and invoices only; auth's login reads none."""
    app, auth = logins("app"), logins("auth")
    act_for(app, A)
    session(app)
    for table in ("subscriptions", "invoices", "tenant_quotas", "usage_rollups_daily"):
        assert {r["tenant_id"] for r in app.execute(f"SELECT tenant_id FROM platform.{table}")} == {A}, table
        assert error(auth, f"SELECT tenant_id FROM platform.{table}").sqlstate == "42501", table


# Quota status through GraphQL (migration 0011): a view of every tenant's quota_status(), for Hasura's login only --

STATUS = "SELECT tenant_id, metric, used, limit_value, status FROM platform.tenant_quota_status ORDER BY 1, 2"


def quota_status(conn, tenant):
    rows = conn.execute("SELECT metric, used, limit_value, status FROM platform.quota_status(%s) ORDER BY 1",
                        (tenant,)).fetchall()
    return [dict(r, tenant_id=tenant) for r in rows]


def test_graphql_reads_every_tenants_quota_status_in_a_query_and_its_own_in_a_mutation(tenants, ops):  # noqa: F811
    tenants.execute("INSERT INTO platform.tenant_quotas (tenant_id, metric, limit_value, period, mode) "
                    "VALUES (%s, 'members', 3, 'none', 'hard')", (A,))
    expected = quota_status(tenants, A) + quota_status(tenants, B)  # as the control plane reads them
    assert {(r["tenant_id"], r["metric"]): r["status"] for r in expected}[(A, "members")] == "warning"
    assert len({r["tenant_id"] for r in expected}) == 2
    session(ops)
    assert [dict(r) for r in ops.execute(STATUS)] == sorted(expected, key=lambda r: (r["tenant_id"], r["metric"]))
    session(ops, "user", USER, tenant=A)
    assert {r["tenant_id"] for r in ops.execute(STATUS)} == {A}
    session(ops, "user", USER)  # a session with no tenant claim: no rows
    assert ops.execute(STATUS).fetchall() == []


@pytest.mark.parametrize("who", [w for w in ROLES if w != "hasura"])
def test_no_other_login_reads_the_quota_status_of_every_tenant(tenants, ops, logins, who):  # noqa: F811
    c = logins(who)
    act_for(c, A)
    session(c)
    for sql in (STATUS, "SELECT * FROM platform.graphql_quota_status()"):
        assert error(c, sql).sqlstate == "42501", (who, sql)


def test_with_select_granted_the_app_read_every_tenants_quota_status(tenants, ops, logins):  # noqa: F811
    tenants.execute("GRANT SELECT ON platform.tenant_quota_status TO selfbase_app")
    tenants.execute("GRANT EXECUTE ON FUNCTION platform.graphql_quota_status() TO selfbase_app")
    app = logins("app")
    act_for(app, A)
    session(app)
    assert {r["tenant_id"] for r in app.execute(STATUS)} == {A, B}


def test_without_the_mutation_wall_a_users_session_read_another_tenants_status(tenants, ops):  # noqa: F811
    tenants.execute("""
        CREATE OR REPLACE FUNCTION platform.graphql_quota_status()
        RETURNS TABLE (tenant_id uuid, metric text, used bigint, limit_value bigint, percent numeric, status text,
                       mode text, period text)
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
          SELECT t.id, s.metric, s.used, s.limit_value, s.percent, s.status, s.mode, s.period
            FROM platform.tenants t CROSS JOIN LATERAL platform.quota_status(t.id) s
        $$""")
    session(ops, "user", USER, tenant=A)
    assert {r["tenant_id"] for r in ops.execute(STATUS)} == {A, B}


def test_the_status_reader_owns_only_its_function_and_nobody_logs_in_as_it(tenants):  # noqa: F811
    role = tenants.execute("SELECT rolcanlogin, rolbypassrls, rolsuper FROM pg_roles "
                           "WHERE rolname = 'selfbase_quota_reader'").fetchone()
    assert role == {"rolcanlogin": False, "rolbypassrls": False, "rolsuper": False}
    assert tenants.execute("SELECT count(*) AS n FROM pg_auth_members "
                           "WHERE roleid = 'selfbase_quota_reader'::regrole").fetchone()["n"] == 0
    owned = tenants.execute("SELECT p.oid::regprocedure::text AS fn FROM pg_proc p "
                            "WHERE p.proowner = 'selfbase_quota_reader'::regrole").fetchall()
    assert [r["fn"] for r in owned] == ["platform.graphql_quota_status()"]
    # it reads what monitoring reads and writes nothing
    writes = tenants.execute("SELECT count(*) AS n FROM information_schema.role_table_grants "
                             "WHERE grantee = 'selfbase_quota_reader' AND privilege_type <> 'SELECT'").fetchone()
    assert writes["n"] == 0


def test_every_column_and_mapping_the_hasura_role_exposes_exists_in_the_schema(tenants):  # noqa: F811
    """The hasura role's default tables, views and manual relationships against the real schema (the Hasura fake
    takes any column)."""
    defaults = yaml.safe_load((ROOT / "roles/hasura/defaults/main.yml").read_text())
    real = {}
    for r in tenants.execute("SELECT table_name, column_name FROM information_schema.columns "
                             "WHERE table_schema = 'platform'"):
        real.setdefault(r["table_name"], set()).add(r["column_name"])
    for table in defaults["hasura_metadata_tables"]:
        name = table["name"]
        assert set(table["columns"]) <= real[name], name
        for rel in table.get("object_relationships", []) + table.get("array_relationships", []):
            manual = (rel.get("using") or {}).get("manual_configuration")
            if manual:
                remote = manual["remote_table"]["name"]
                assert set(manual["column_mapping"]) <= real[name], (name, rel["name"])
                assert set(manual["column_mapping"].values()) <= real[remote], (name, rel["name"])


def test_every_function_argument_the_rest_endpoints_pass_is_one_the_function_takes(tenants):  # noqa: F811
    """The Hasura fake does not know the functions' arguments: the default endpoints' args against the real ones."""
    defaults = yaml.safe_load((ROOT / "roles/hasura/defaults/main.yml").read_text())
    tracked = {f["name"] for f in defaults["hasura_metadata_functions"]}
    called = set()
    for endpoint in defaults["hasura_rest_endpoints"]:
        for name, args in re.findall(r"platform_(\w+)\(args: \{([^}]*)\}", endpoint["query"]):
            takes = tenants.execute("SELECT proargnames FROM pg_proc WHERE oid = %s::regproc",
                                    ("platform." + name,)).fetchone()["proargnames"]
            assert set(re.findall(r"(\w+):", args)) <= set(takes), (endpoint["name"], args, takes)
            called.add(name)
    assert called == tracked  # every operator action has its endpoint
