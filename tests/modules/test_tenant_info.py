"""tenant_info against a real PostgreSQL server."""

from __future__ import annotations

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / ".cache" / "collections"))
# pylint: disable-next=wrong-import-position
from ansible_collections.selfbase.platform.plugins.module_utils.tenant_info import read_tenants  # noqa: E402

ALL_STATUSES = ["trial", "active", "past_due", "suspended", "canceled", "deleted"]


def _tenant(conn, slug, plan, status="active"):
    return conn.execute(
        "INSERT INTO platform.tenants (slug, name, plan_code, status, trial_ends_at, deleted_at) "
        "VALUES (%s, %s, %s, %s, CASE WHEN %s = 'trial' THEN now() + interval '14 days' END, "
        "CASE WHEN %s = 'deleted' THEN now() END) RETURNING id",
        (slug, slug.title(), plan, status, status, status)).fetchone()["id"]


def _record(conn, tenant_id, metric, quantity, key):
    """Usage the way applications record it: one tenant per session, through record_usage()."""
    conn.execute("SELECT set_config('app.tenant_id', %s, false)", (str(tenant_id),))
    row = conn.execute("SELECT * FROM platform.record_usage(%s, %s, %s, %s)",
                       (tenant_id, metric, quantity, key)).fetchone()
    conn.execute("RESET app.tenant_id")
    assert row["recorded"] is True
    return row


def _members(conn, tenant_id, n):
    conn.execute("INSERT INTO platform.tenant_members (tenant_id, user_id) "
                 "SELECT %s, gen_random_uuid() FROM generate_series(1, %s)", (tenant_id, n))


@pytest.fixture()
def world(schema):
    c = schema
    c.execute("INSERT INTO platform.plans (code, name) VALUES ('pro', 'Pro'), ('free', 'Free')")
    c.execute(
        "INSERT INTO platform.plan_quotas (plan_code, metric, limit_value, period, mode, overage_unit_price) VALUES "
        "('pro', 'api_requests', 1000, 'month', 'hard', NULL), "
        "('pro', 'storage_bytes', 10000, 'month', 'soft', NULL), "
        "('pro', 'bandwidth_bytes', 100, 'month', 'overage', 0.01), "
        "('pro', 'members', 5, 'none', 'hard', NULL), "
        "('free', 'api_requests', 100, 'day', 'hard', NULL), "
        "('free', 'members', 2, 'none', 'hard', NULL)")
    ids = {}
    ids["acme"] = _tenant(c, "acme", "pro")
    ids["beta"] = _tenant(c, "beta", "pro", "trial")
    ids["gamma"] = _tenant(c, "gamma", "free", "suspended")
    ids["delta"] = _tenant(c, "delta", "free")
    ids["nolimits"] = _tenant(c, "nolimits", None, "canceled")
    ids["gone"] = _tenant(c, "gone", "pro", "deleted")
    c.execute("INSERT INTO platform.tenant_domains (tenant_id, domain, verified, is_primary) VALUES "
              "(%(a)s, 'www.acme.io', false, false), (%(a)s, 'acme.example.com', true, true)", {"a": ids["acme"]})

    # acme: hard 50% ok, soft 90% warning, overage 150% exceeded, hard count 80% warning
    _record(c, ids["acme"], "api_requests", 500, "a1")
    _record(c, ids["acme"], "storage_bytes", 9000, "a2")
    _record(c, ids["acme"], "bandwidth_bytes", 100, "a3")
    over = _record(c, ids["acme"], "bandwidth_bytes", 50, "a4")
    assert over["overage"] == 50
    c.execute("SELECT set_config('app.tenant_id', %s, false)", (str(ids["acme"]),))
    dup = c.execute("SELECT * FROM platform.record_usage(%s, 'bandwidth_bytes', 50, 'a4')", (ids["acme"],)).fetchone()
    c.execute("RESET app.tenant_id")
    assert dup["recorded"] is False  # a re-sent event is not counted twice
    _members(c, ids["acme"], 4)

    # beta: hard at exactly 80% is a warning, soft past the limit is exceeded, unlimited members override
    _record(c, ids["beta"], "api_requests", 800, "b1")
    _record(c, ids["beta"], "storage_bytes", 12000, "b2")
    c.execute("INSERT INTO platform.tenant_quotas (tenant_id, metric, limit_value, period, mode) "
              "VALUES (%s, 'members', NULL, 'none', 'hard')", (ids["beta"],))
    _members(c, ids["beta"], 7)

    # gamma: usage recorded, then the limit lowered below it: hard and exceeded
    _record(c, ids["gamma"], "api_requests", 100, "g1")
    c.execute("INSERT INTO platform.tenant_quotas (tenant_id, metric, limit_value, period, mode) "
              "VALUES (%s, 'api_requests', 50, 'day', 'hard')", (ids["gamma"],))
    _members(c, ids["gamma"], 1)
    return ids


def _usage(tenant):
    return {u["metric"]: u for u in tenant["usage"]}


@pytest.mark.through_playbook("tenant_info")
def test_usage_against_quotas(run, world):
    res = run("tenant_info", {})
    assert res.get("failed") is not True, res
    assert res["changed"] is False
    assert res["count"] == 5
    tenants = {t["slug"]: t for t in res["tenants"]}
    assert [t["slug"] for t in res["tenants"]] == ["acme", "beta", "delta", "gamma", "nolimits"]

    acme = tenants["acme"]
    assert acme["id"] == str(world["acme"])
    assert acme["name"] == "Acme"
    assert acme["status"] == "active"
    assert acme["plan"] == "pro"
    assert acme["billing_cycle"] == "month"
    assert acme["trial_ends_at"] is None
    assert acme["created_at"]
    assert acme["domains"] == [{"domain": "acme.example.com", "primary": True, "verified": True},
                               {"domain": "www.acme.io", "primary": False, "verified": False}]
    usage = _usage(acme)
    assert [u["metric"] for u in acme["usage"]] == ["api_requests", "bandwidth_bytes", "members", "storage_bytes"]
    assert usage["api_requests"] == {"metric": "api_requests", "used": 500, "limit": 1000, "percent": 50.0,
                                     "status": "ok", "mode": "hard", "period": "month"}
    assert usage["storage_bytes"] == {"metric": "storage_bytes", "used": 9000, "limit": 10000, "percent": 90.0,
                                      "status": "warning", "mode": "soft", "period": "month"}
    assert usage["bandwidth_bytes"] == {"metric": "bandwidth_bytes", "used": 150, "limit": 100, "percent": 150.0,
                                        "status": "exceeded", "mode": "overage", "period": "month"}
    assert usage["members"] == {"metric": "members", "used": 4, "limit": 5, "percent": 80.0,
                                "status": "warning", "mode": "hard", "period": "none"}
    assert acme["quota_status"] == "exceeded"

    beta = tenants["beta"]
    assert beta["status"] == "trial"
    assert beta["trial_ends_at"] is not None
    assert beta["domains"] == []
    usage = _usage(beta)
    assert (usage["api_requests"]["percent"], usage["api_requests"]["status"]) == (80.0, "warning")
    assert (usage["storage_bytes"]["used"], usage["storage_bytes"]["percent"], usage["storage_bytes"]["status"]) \
        == (12000, 120.0, "exceeded")
    assert usage["bandwidth_bytes"] == {"metric": "bandwidth_bytes", "used": 0, "limit": 100, "percent": 0.0,
                                        "status": "ok", "mode": "overage", "period": "month"}
    assert usage["members"] == {"metric": "members", "used": 7, "limit": None, "percent": None,
                                "status": "ok", "mode": "hard", "period": "none"}
    assert beta["quota_status"] == "exceeded"

    gamma = tenants["gamma"]
    assert gamma["usage"] == [
        {"metric": "api_requests", "used": 100, "limit": 50, "percent": 200.0, "status": "exceeded",
         "mode": "hard", "period": "day"},
        {"metric": "members", "used": 1, "limit": 2, "percent": 50.0, "status": "ok", "mode": "hard",
         "period": "none"}]
    assert gamma["quota_status"] == "exceeded"

    delta = tenants["delta"]
    assert [(u["metric"], u["used"], u["status"]) for u in delta["usage"]] == [
        ("api_requests", 0, "ok"), ("members", 0, "ok")]
    assert delta["quota_status"] == "ok"

    nolimits = tenants["nolimits"]
    assert nolimits["plan"] is None
    assert nolimits["usage"] == []
    assert nolimits["quota_status"] == "ok"


def test_worst_status_is_warning_when_nothing_exceeded(run, world, schema):
    _members(schema, world["delta"], 2)  # 2 of 2 hard: warning, not exceeded
    res = run("tenant_info", {"slugs": ["delta"]})
    (delta,) = res["tenants"]
    assert _usage(delta)["members"]["status"] == "warning"
    assert delta["quota_status"] == "warning"


@pytest.mark.parametrize("args, slugs", [
    ({"status": ["deleted"]}, ["gone"]),
    ({"status": ["active", "trial"]}, ["acme", "beta", "delta"]),
    ({"status": ALL_STATUSES}, ["acme", "beta", "delta", "gamma", "gone", "nolimits"]),
    ({"plan": ["free"]}, ["delta", "gamma"]),
    ({"plan": ["pro"], "status": ALL_STATUSES}, ["acme", "beta", "gone"]),
    ({"slugs": ["gamma", "acme", "gone", "nobody"]}, ["acme", "gamma"]),
    ({"slugs": ["gamma", "acme", "gone"], "status": ALL_STATUSES}, ["acme", "gamma", "gone"]),
    ({"slugs": ["acme", "gamma"], "plan": ["free"], "status": ["suspended"]}, ["gamma"]),
    ({"plan": ["enterprise"]}, []),
])
def test_filters(run, world, args, slugs):
    res = run("tenant_info", args)
    assert res.get("failed") is not True, res
    assert [t["slug"] for t in res["tenants"]] == slugs
    assert res["count"] == len(slugs)


def test_without_usage(run, world):
    res = run("tenant_info", {"slugs": ["acme"], "include_usage": False})
    (acme,) = res["tenants"]
    assert "usage" not in acme and "quota_status" not in acme
    assert acme["domains"][0]["domain"] == "acme.example.com"


def test_check_mode_reads_the_same_and_changes_nothing(run, world, schema):
    audit = schema.execute("SELECT count(*) AS n FROM platform.audit_log").fetchone()["n"]
    res = run("tenant_info", {}, check=True, diff=True)
    assert res.get("failed") is not True, res
    assert res["changed"] is False
    assert res["tenants"] == run("tenant_info", {})["tenants"]
    assert res["count"] == 5
    assert schema.execute("SELECT count(*) AS n FROM platform.audit_log").fetchone()["n"] == audit


def test_bad_status_fails_naming_the_field(run, world):
    res = run("tenant_info", {"status": ["gone"]})
    assert res["failed"] is True
    assert "status" in res["msg"]


def test_usage_is_what_quota_status_gives_for_every_tenant(run, world, schema):
    """The module computes every tenant's usage at once; platform.quota_status(tenant) defines it. Every source and
    period, usage outside the period, a zero limit, and a session that may act for no tenant but its own."""
    c = schema
    c.execute("INSERT INTO platform.projects (tenant_id, name) VALUES (%s, 'one'), (%s, 'two')",
              (world["delta"], world["delta"]))
    c.execute("INSERT INTO platform.plan_quotas (plan_code, metric, limit_value, period, mode) VALUES "
              "('free', 'projects', 0, 'none', 'hard'), ('free', 'bandwidth_bytes', 1000, 'hour', 'soft'), "
              "('free', 'storage_bytes', NULL, 'none', 'soft')")
    _record(c, world["delta"], "bandwidth_bytes", 700, "d1")
    _record(c, world["delta"], "storage_bytes", 300, "d2")
    # last hour's and last month's usage: outside the hour and month windows, inside period none's
    for tenant, metric, quantity, age in (("delta", "bandwidth_bytes", 400, "2 hours"),
                                          ("delta", "storage_bytes", 50, "40 days"),
                                          ("acme", "api_requests", 999, "40 days")):
        # the rollup trigger writes under the tenant's row-level security
        c.execute("SELECT set_config('app.tenant_id', %s, false)", (str(world[tenant]),))
        c.execute("INSERT INTO platform.usage_events (tenant_id, metric, quantity, idempotency_key, occurred_at) "
                  "VALUES (%s, %s, %s, %s, now() - %s::interval)", (world[tenant], metric, quantity, age, age))
    c.execute("RESET app.tenant_id")
    expected = {}
    for slug, tenant in world.items():
        rows = c.execute("SELECT metric, used, limit_value AS limit, percent, status, mode, period "
                         "FROM platform.quota_status(%s)", (tenant,)).fetchall()
        expected[slug] = [dict(r, percent=None if r["percent"] is None else float(r["percent"])) for r in rows]
    assert expected["delta"] and any(r["period"] == "hour" for r in expected["delta"])
    res = run("tenant_info", {"status": ALL_STATUSES})
    assert res.get("failed") is not True, res
    assert {t["slug"]: t["usage"] for t in res["tenants"]} == expected
    # a tenant's own session: quota_status answers for it alone, and so does the module's query
    c.execute("SELECT set_config('app.tenant_id', %s, false)", (str(world["delta"]),))
    c.execute("SET ROLE selfbase_app")
    try:
        own = read_tenants(c, ALL_STATUSES, None, None, True)
    finally:
        c.execute("RESET ROLE")
        c.execute("RESET app.tenant_id")
    assert {t["slug"]: t["usage"] for t in own} == {"delta": expected["delta"]}
