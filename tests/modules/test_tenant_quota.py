"""tenant_quota against a real PostgreSQL server."""

from __future__ import annotations

from decimal import Decimal

import pytest


@pytest.fixture()
def world(schema):
    """Plan 'pro' with quotas, tenant 'acme' on it, a deleted tenant 'gone'."""
    schema.execute("INSERT INTO platform.plans (code, name) VALUES ('pro', 'Pro')")
    schema.execute(
        "INSERT INTO platform.plan_quotas (plan_code, metric, limit_value, period, mode, overage_unit_price) VALUES "
        "('pro', 'storage_bytes', 5000000000, 'month', 'soft', NULL), "
        "('pro', 'api_requests', 1000000, 'day', 'overage', 0.0005), "
        "('pro', 'members', 10, 'none', 'hard', NULL)")
    schema.execute("INSERT INTO platform.tenants (slug, name, plan_code) VALUES ('acme', 'Acme', 'pro')")
    schema.execute("INSERT INTO platform.tenants (slug, name, plan_code, status, deleted_at) "
                   "VALUES ('gone', 'Gone', 'pro', 'deleted', now())")
    return schema


def _override(conn, metric, slug="acme"):
    return conn.execute(
        "SELECT q.limit_value, q.period, q.mode, q.overage_unit_price FROM platform.tenant_quotas q "
        "JOIN platform.tenants t ON t.id = q.tenant_id WHERE t.slug = %s AND q.metric = %s", (slug, metric)).fetchone()


def _all_overrides(conn):
    return conn.execute("SELECT * FROM platform.tenant_quotas ORDER BY tenant_id, metric").fetchall()


def _audit(conn):
    return conn.execute("SELECT tenant_id, entity, entity_key, action, before, after FROM platform.audit_log "
                        "WHERE entity = 'tenant_quota' ORDER BY id").fetchall()


def _tenant_id(conn, slug="acme"):
    return conn.execute("SELECT id FROM platform.tenants WHERE slug = %s", (slug,)).fetchone()["id"]


@pytest.mark.through_playbook("tenant_quota")
def test_check_then_create_then_noop(run, world):
    args = {"tenant": "acme", "metric": "storage_bytes", "limit": "10GB"}

    res = run("tenant_quota", args, check=True, diff=True)
    assert res.get("failed") is not True, res
    assert res["changed"] is True
    # unspecified period/mode/price come from the plan's quota
    assert res["quota"] == {"tenant": "acme", "metric": "storage_bytes", "limit": 10_000_000_000,
                            "period": "month", "mode": "soft", "overage_price": None}
    assert res["effective"]["limit"] == 10_000_000_000
    assert res["effective"]["source"] == "tenant"
    assert res["diff"]["before"] == {}
    assert res["diff"]["after"]["limit"] == 10_000_000_000
    assert _all_overrides(world) == []
    assert _audit(world) == []

    res = run("tenant_quota", args, diff=True)
    assert res["changed"] is True
    assert _override(world, "storage_bytes") == {"limit_value": 10_000_000_000, "period": "month", "mode": "soft",
                                                 "overage_unit_price": None}
    assert res["quota"]["limit"] == 10_000_000_000
    assert res["effective"] == {"metric": "storage_bytes", "source": "tenant", "limit": 10_000_000_000,
                                "period": "month", "mode": "soft", "overage_price": None}
    assert res["tenant_id"] == str(_tenant_id(world))

    # identical re-run, and the same value written differently, change nothing
    for same in (args, dict(args, limit=10_000_000_000), dict(args, limit="10 GB", mode="soft")):
        res = run("tenant_quota", same, diff=True)
        assert res["changed"] is False, same
        assert res["diff"]["before"] == res["diff"]["after"]
    assert len(_audit(world)) == 1


def test_create_without_plan_quota_uses_defaults(run, world):
    res = run("tenant_quota", {"tenant": "acme", "metric": "bandwidth_bytes", "limit": "1TB"})
    assert res["changed"] is True
    assert _override(world, "bandwidth_bytes") == {"limit_value": 10 ** 12, "period": "month", "mode": "hard",
                                                   "overage_unit_price": None}


def test_update_one_field_leaves_the_others(run, world):
    args = {"tenant": "acme", "metric": "api_requests", "limit": "2M", "overage_price": 0.001}
    assert run("tenant_quota", args)["changed"] is True
    assert _override(world, "api_requests") == {"limit_value": 2_000_000, "period": "day", "mode": "overage",
                                                "overage_unit_price": Decimal("0.001")}

    # price written with other digits is the same price
    res = run("tenant_quota", {"tenant": "acme", "metric": "api_requests", "overage_price": "0.0010"})
    assert res["changed"] is False
    assert res["quota"]["overage_price"] == "0.001"

    # only the period changes, in check mode first
    res = run("tenant_quota", {"tenant": "acme", "metric": "api_requests", "period": "month"}, check=True, diff=True)
    assert res["changed"] is True
    assert res["diff"]["before"]["period"] == "day"
    assert res["diff"]["after"] == dict(res["diff"]["before"], period="month")
    assert _override(world, "api_requests")["period"] == "day"

    res = run("tenant_quota", {"tenant": "acme", "metric": "api_requests", "period": "month"})
    assert res["changed"] is True
    assert _override(world, "api_requests") == {"limit_value": 2_000_000, "period": "month", "mode": "overage",
                                                "overage_unit_price": Decimal("0.001")}
    assert run("tenant_quota", {"tenant": "acme", "metric": "api_requests", "period": "month"})["changed"] is False

    # unlimited, then an empty price clears the price
    res = run("tenant_quota", {"tenant": "acme", "metric": "api_requests", "limit": "unlimited", "overage_price": ""})
    assert res["changed"] is True
    assert res["quota"]["limit"] is None
    assert res["effective"]["limit"] is None
    assert _override(world, "api_requests") == {"limit_value": None, "period": "month", "mode": "overage",
                                                "overage_unit_price": None}
    rows = _audit(world)
    assert [r["action"] for r in rows] == ["create", "update", "update"]
    assert rows[1]["before"]["period"] == "day" and rows[1]["after"]["period"] == "month"


def test_absent_reverts_to_plan(run, world):
    run("tenant_quota", {"tenant": "acme", "metric": "members", "limit": 50, "mode": "soft"})
    assert _override(world, "members")["limit_value"] == 50

    res = run("tenant_quota", {"tenant": "acme", "metric": "members", "state": "absent"}, check=True, diff=True)
    assert res["changed"] is True
    assert res["quota"] is None
    assert res["effective"] == {"metric": "members", "source": "plan", "limit": 10, "period": "none",
                                "mode": "hard", "overage_price": None}
    assert res["diff"]["after"] == {}
    assert _override(world, "members") is not None

    res = run("tenant_quota", {"tenant": "acme", "metric": "members", "state": "absent"})
    assert res["changed"] is True
    assert res["quota"] is None
    assert res["effective"] == {"metric": "members", "source": "plan", "limit": 10, "period": "none",
                                "mode": "hard", "overage_price": None}
    assert _override(world, "members") is None

    res = run("tenant_quota", {"tenant": "acme", "metric": "members", "state": "absent"})
    assert res["changed"] is False

    # no override and no plan quota: nothing in force
    res = run("tenant_quota", {"tenant": "acme", "metric": "projects", "state": "absent"})
    assert res["changed"] is False
    assert res["effective"] is None

    tenant_id = _tenant_id(world)
    rows = _audit(world)
    assert [(r["entity_key"], r["action"]) for r in rows] == [("acme/members", "create"), ("acme/members", "delete")]
    assert all(r["tenant_id"] == tenant_id for r in rows)
    assert rows[0]["before"] is None
    assert rows[0]["after"] == {"tenant": "acme", "metric": "members", "limit": 50, "period": "none",
                                "mode": "soft", "overage_price": None}
    assert rows[1]["before"] == rows[0]["after"]
    assert rows[1]["after"] is None


def test_overage_without_any_price_is_allowed(run, world):
    res = run("tenant_quota", {"tenant": "acme", "metric": "bandwidth_bytes", "limit": "100GB", "mode": "overage"})
    assert res.get("failed") is not True, res
    assert _override(world, "bandwidth_bytes") == {"limit_value": 100_000_000_000, "period": "month",
                                                   "mode": "overage", "overage_unit_price": None}


@pytest.mark.parametrize("args, field", [
    ({"tenant": "nobody", "metric": "members", "limit": 5}, "tenant"),
    ({"tenant": "gone", "metric": "members", "limit": 5}, "tenant"),
    ({"tenant": "acme", "metric": "widgets", "limit": 5}, "metric"),
    ({"tenant": "acme", "metric": "members", "limit": -5}, "limit"),
    ({"tenant": "acme", "metric": "members", "limit": "-5"}, "limit"),
    ({"tenant": "acme", "metric": "members", "limit": "lots"}, "limit"),
    ({"tenant": "acme", "metric": "members", "limit": "10GB"}, "limit"),
    ({"tenant": "acme", "metric": "storage_bytes", "limit": "1.5B"}, "limit"),
    ({"tenant": "acme", "metric": "storage_bytes", "limit": "100000000PB"}, "limit"),
    ({"tenant": "acme", "metric": "members", "mode": "bogus"}, "mode"),
    ({"tenant": "acme", "metric": "members", "period": "week"}, "period"),
    ({"tenant": "acme", "metric": "api_requests", "overage_price": -1}, "overage_price"),
    ({"tenant": "acme", "metric": "api_requests", "overage_price": "cheap"}, "overage_price"),
    ({"tenant": "acme", "metric": "api_requests", "overage_price": "0.00000000001"}, "overage_price"),
])
def test_bad_input_fails_and_changes_nothing(run, world, args, field):
    run("tenant_quota", {"tenant": "acme", "metric": "storage_bytes", "limit": "1GB"})
    before, audit_before = _all_overrides(world), _audit(world)
    res = run("tenant_quota", args)
    assert res["failed"] is True
    assert field in res["msg"], res["msg"]
    assert _all_overrides(world) == before
    assert _audit(world) == audit_before


def test_unknown_metric_lists_known_metrics(run, world):
    res = run("tenant_quota", {"tenant": "acme", "metric": "widgets", "limit": 5})
    assert res["failed"] is True
    assert "metric: unknown metric 'widgets'" in res["msg"]
    assert "api_requests, bandwidth_bytes, members, projects, storage_bytes" in res["msg"]


def test_byte_unit_on_count_metric_is_explained(run, world):
    res = run("tenant_quota", {"tenant": "acme", "metric": "members", "limit": "10GB"})
    assert res["failed"] is True
    assert "limit: byte unit 'GB' used on a count metric" in res["msg"]


def test_new_override_without_limit_takes_the_plans_limit(run, world):
    res = run("tenant_quota", {"tenant": "acme", "metric": "members", "mode": "soft"})
    assert res.get("failed") is not True, res
    assert res["changed"] is True
    row = _override(world, "members")
    assert (row["limit_value"], row["period"], row["mode"]) == (10, "none", "soft")
