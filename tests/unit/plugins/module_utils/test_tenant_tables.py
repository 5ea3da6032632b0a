"""tenant_table planning (module_utils/tenant_tables.py) with plain dicts: which statements a state leads to."""

from __future__ import annotations

import copy

from ansible_collections.selfbase.platform.plugins.module_utils import tenant_tables as tt

BARE = dict(oid=1, owner="app_owner", rls=False, forced=False, column=None, fks=[], index=None, policies={}, grants={})


def spec(**kw):
    s = dict((k, copy.deepcopy(v.get("default"))) for k, v in tt.TABLE_OPTIONS.items())
    s.update(name="orders")
    s.update(kw)
    return s


def labels(s, before, tenant_id=None, rows=0):
    t = tt.Table(s, "", before)
    if s["state"] == "present":
        tt.plan_present(t, tenant_id, rows)
    else:
        tt.plan_absent(t)
    return [s[0] for s in t.statements], t


def test_a_bare_table_gets_everything_in_order():
    got, _t = labels(spec(), BARE, tenant_id="A", rows=3)
    assert got[:5] == ["add column tenant_id uuid", "backfill 3 row(s) with tenant None",
                       "default tenant_id to the session tenant", "set tenant_id NOT NULL",
                       "add foreign key to platform.tenants on delete cascade"]
    assert "enable row level security" in got and "force row level security" in got
    assert [g for g in got if g.startswith("grant")] == [
        "grant delete, insert, select, update to selfbase_admin", "grant delete, insert, select, update to selfbase_app",
        "grant delete, insert, select, update to selfbase_graphql"]


def test_only_the_backfill_runs_as_the_table_owner():
    """DML on an application table fires its owner's triggers and CHECKs: never with the module's rights."""
    _got, t = labels(spec(), BARE, tenant_id="A", rows=3)
    assert [s[0] for s in t.statements if s[3]] == ["backfill 3 row(s) with tenant None"]


def test_the_predicted_state_plans_nothing_more():
    s = spec()
    _got, t = labels(s, BARE)
    again, _t = labels(s, tt.predict(t))
    assert again == []


def test_policies_filter_once_per_statement_with_a_tenant_check():
    p = tt.wanted_policies(spec())
    assert p["selfbase_tenant"]["using"] == p["selfbase_tenant"]["check"] == \
        "tenant_id = (SELECT platform.current_tenant_id())"
    assert p["selfbase_tenant"]["roles"] == ["selfbase_app", "selfbase_graphql"]
    assert p["selfbase_control"]["roles"] == ["selfbase_admin"]
    assert "selfbase_graphql_read" not in tt.wanted_policies(spec(graphql_read=False))


def test_expressions_compare_as_postgresql_prints_them():
    printed = "(tenant_id = ( SELECT platform.current_tenant_id() AS current_tenant_id))"
    assert tt._expr(printed) == tt._expr("tenant_id = (SELECT platform.current_tenant_id())")
    assert tt._expr("(NULLIF(current_setting('hasura.user'::text, true), ''::text) IS NULL)") == tt._expr(tt.GRAPHQL_READ)
    assert tt._expr("(tenant_id = platform.current_tenant_id())") != tt._expr(tt.TENANT)


def test_foreign_policies_are_kept_unless_exclusive():
    before = dict(BARE, policies={"open": dict(cmd="r", permissive=True, roles=["public"], using="true", check=None)})
    kept, t = labels(spec(), before)
    assert not any("open" in g for g in kept) and t.warnings and "exclusive" in t.warnings[0]
    dropped, _t = labels(spec(exclusive=True), before)
    assert "drop policy open (not managed here, exclusive)" in dropped


def test_public_loses_its_grants_and_undeclared_roles_keep_theirs():
    before = dict(BARE, grants={"PUBLIC": ["select"], "reporting": ["select"]})
    got, _t = labels(spec(), before)
    assert "revoke select from PUBLIC" in got and not any("reporting" in g for g in got)
    got, _t = labels(spec(exclusive=True), before)
    assert "revoke select from reporting" in got


def test_absent_keeps_the_column_unless_told():
    before = tt.predict(labels(spec(), BARE)[1])
    got, _t = labels(spec(state="absent"), before)
    assert got == ["drop policy selfbase_control (state=absent)", "drop policy selfbase_graphql_read (state=absent)",
                   "drop policy selfbase_tenant (state=absent)", "no force row level security",
                   "disable row level security"]
    got, _t = labels(spec(state="absent", drop_column=True), before)
    assert got[-1] == "drop column tenant_id (with its foreign key and index)"
