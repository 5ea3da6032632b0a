"""tenant against a real PostgreSQL server."""

from __future__ import annotations

import datetime

import pytest


@pytest.fixture()
def plans(schema):
    schema.execute("INSERT INTO platform.plans (code, name) VALUES ('starter', 'Starter'), ('pro', 'Pro')")
    schema.execute("INSERT INTO platform.plans (code, name, active) VALUES ('legacy', 'Legacy', false)")
    return schema


def _tenant(conn, slug):
    return conn.execute("SELECT * FROM platform.tenants WHERE slug = %s", (slug,)).fetchone()


def _domains(conn, slug):
    return [(r["domain"], r["is_primary"], r["verified"]) for r in conn.execute(
        "SELECT d.* FROM platform.tenant_domains d JOIN platform.tenants t ON t.id = d.tenant_id "
        "WHERE t.slug = %s ORDER BY d.domain", (slug,))]


def _audit(conn, slug):
    return conn.execute("SELECT * FROM platform.audit_log WHERE entity = 'tenant' AND entity_key = %s ORDER BY id",
                        (slug,)).fetchall()


def _snapshot(conn):
    """Everything these modules write, to prove a failed run wrote nothing."""
    return [conn.execute(f"SELECT * FROM platform.{table} ORDER BY 1").fetchall()
            for table in ("tenants", "tenant_domains", "audit_log")]


@pytest.mark.through_playbook("tenant")
def test_create_check_then_apply_then_noop(plans, run):
    conn = plans
    args = {"slug": "acme", "name": "ACME Corp", "plan": "pro", "billing_cycle": "year", "status": "trial",
            "trial_days": 14, "domains": [{"domain": "App.Acme.Example", "verified": True}, "acme.selfbase.example"],
            "settings": {"locale": "en_GB"}, "branding": {"color": "#ff6600"}, "features": {"beta": True}}

    res = run("tenant", args, check=True, diff=True)
    assert res["changed"] is True, res
    assert res["diff"]["before"] == {}
    predicted = res["diff"]["after"]
    assert predicted["id"] is None
    assert predicted["status"] == "trial" and predicted["plan"] == "pro" and predicted["billing_cycle"] == "year"
    assert predicted["domains"] == [{"domain": "app.acme.example", "primary": True, "verified": True},
                                    {"domain": "acme.selfbase.example", "primary": False, "verified": False}]
    assert _tenant(conn, "acme") is None
    assert _audit(conn, "acme") == []

    res = run("tenant", args, diff=True)
    assert res["changed"] is True, res
    row = _tenant(conn, "acme")
    assert (row["name"], row["status"], row["plan_code"], row["billing_cycle"]) == ("ACME Corp", "trial", "pro", "year")
    assert (row["settings"], row["branding"], row["features"]) == ({"locale": "en_GB"}, {"color": "#ff6600"},
                                                                   {"beta": True})
    assert row["trial_ends_at"] - row["created_at"] == datetime.timedelta(days=14)
    assert row["deleted_at"] is None
    assert _domains(conn, "acme") == [("acme.selfbase.example", False, False), ("app.acme.example", True, True)]
    tenant = res["tenant"]
    assert tenant["id"] == str(row["id"])
    assert tenant["domains"] == predicted["domains"]
    assert res["diff"]["after"] == tenant
    # the prediction was exact, apart from what only a write can know
    assert dict(predicted, id=None, created_at=None, updated_at=None, trial_ends_at=None) == \
        dict(tenant, id=None, created_at=None, updated_at=None, trial_ends_at=None)
    audit = _audit(conn, "acme")
    assert [(a["action"], a["tenant_id"], a["before"]) for a in audit] == [("create", row["id"], None)]
    assert audit[0]["after"]["domains"] == tenant["domains"]

    # identical re-run: trial_days is not applied again
    res = run("tenant", args, check=True)
    assert res["changed"] is False, res
    res = run("tenant", args)
    assert res["changed"] is False, res
    assert res["tenant"] == tenant
    assert _tenant(conn, "acme") == row
    assert len(_audit(conn, "acme")) == 1


def test_name_defaults_to_slug_and_status_present_creates_active(plans, run):
    res = run("tenant", {"slug": "globex"})
    assert res["changed"] is True, res
    row = _tenant(plans, "globex")
    assert (row["name"], row["status"], row["plan_code"], row["billing_cycle"]) == ("globex", "active", None, "month")
    assert res["tenant"]["domains"] == [] and res["tenant"]["settings"] == {}


def test_update_merge_purge_and_domains(plans, run):
    conn = plans
    res = run("tenant", {"slug": "acme", "settings": {"a": 1, "b": 2}, "branding": {"logo": "x.png"},
                         "domains": ["a.example.com", {"domain": "b.example.com", "primary": True, "verified": True}]})
    assert res["changed"] is True, res
    created = _tenant(conn, "acme")

    # merge (default): top-level keys are merged; other options untouched
    update = {"slug": "acme", "settings": {"b": 3, "c": {"d": 4}}}
    res = run("tenant", update, check=True, diff=True)
    assert res["changed"] is True
    assert res["diff"]["before"]["settings"] == {"a": 1, "b": 2}
    assert res["diff"]["after"]["settings"] == {"a": 1, "b": 3, "c": {"d": 4}}
    assert _tenant(conn, "acme") == created
    res = run("tenant", update)
    assert res["changed"] is True
    row = _tenant(conn, "acme")
    assert row["settings"] == {"a": 1, "b": 3, "c": {"d": 4}}
    assert row["branding"] == {"logo": "x.png"}
    assert row["updated_at"] > created["updated_at"]
    assert row["created_at"] == created["created_at"]
    audit = _audit(conn, "acme")
    assert audit[-1]["action"] == "update"
    assert audit[-1]["before"]["settings"] == {"a": 1, "b": 2}
    assert audit[-1]["after"]["settings"] == {"a": 1, "b": 3, "c": {"d": 4}}
    assert run("tenant", update)["changed"] is False

    # purge: the given object replaces the stored one; the others stay
    purge = {"slug": "acme", "settings": {"z": True}, "purge": True}
    res = run("tenant", purge)
    assert res["changed"] is True
    row = _tenant(conn, "acme")
    assert row["settings"] == {"z": True}
    assert row["branding"] == {"logo": "x.png"}
    assert run("tenant", purge)["changed"] is False

    # domains: exact set; unmarked list makes the first primary; verified is kept when not given
    domains = {"slug": "acme", "domains": ["C.example.com", "b.example.com"]}
    res = run("tenant", domains, diff=True)
    assert res["changed"] is True, res
    assert _domains(conn, "acme") == [("b.example.com", False, True), ("c.example.com", True, False)]
    assert res["diff"]["before"]["domains"] == [{"domain": "b.example.com", "primary": True, "verified": True},
                                                {"domain": "a.example.com", "primary": False, "verified": False}]
    assert res["tenant"]["domains"] == [{"domain": "c.example.com", "primary": True, "verified": False},
                                        {"domain": "b.example.com", "primary": False, "verified": True}]
    assert run("tenant", domains)["changed"] is False
    # omitted: untouched; empty list: all removed
    assert run("tenant", {"slug": "acme", "name": "ACME"})["changed"] is True
    assert len(_domains(conn, "acme")) == 2
    assert run("tenant", {"slug": "acme", "domains": []})["changed"] is True
    assert _domains(conn, "acme") == []


def test_plan_changes_and_inactive_plan(plans, run):
    conn = plans
    assert run("tenant", {"slug": "acme", "plan": "starter"})["changed"] is True
    # a tenant may stay on a plan that was deactivated later...
    conn.execute("UPDATE platform.plans SET active = false WHERE code = 'starter'")
    assert run("tenant", {"slug": "acme", "plan": "starter"})["changed"] is False
    # ...but an inactive plan cannot be assigned
    before = _snapshot(conn)
    res = run("tenant", {"slug": "acme", "plan": "legacy"})
    assert res["failed"] is True
    assert "plan: plan legacy is not active" in res["msg"]
    assert _snapshot(conn) == before
    res = run("tenant", {"slug": "acme", "plan": "pro", "billing_cycle": "year"})
    assert res["changed"] is True
    assert (_tenant(conn, "acme")["plan_code"], _tenant(conn, "acme")["billing_cycle"]) == ("pro", "year")


def test_status_suspend_soft_delete_restore(plans, run):
    conn = plans
    run("tenant", {"slug": "acme", "domains": ["acme.example.com"], "settings": {"k": "v"}})
    created = _tenant(conn, "acme")

    assert run("tenant", {"slug": "acme", "status": "suspended"})["changed"] is True
    assert _tenant(conn, "acme")["status"] == "suspended"
    # present leaves a status other than deleted alone
    assert run("tenant", {"slug": "acme"})["changed"] is False

    res = run("tenant", {"slug": "acme", "status": "absent"}, check=True)
    assert res["changed"] is True and res["tenant"]["status"] == "deleted"
    assert _tenant(conn, "acme")["status"] == "suspended"
    res = run("tenant", {"slug": "acme", "status": "absent", "name": "ignored"})
    assert res["changed"] is True
    row = _tenant(conn, "acme")
    assert row["status"] == "deleted" and row["deleted_at"] is not None
    assert row["name"] == "acme" and row["settings"] == {"k": "v"}  # data kept, other options ignored
    assert _domains(conn, "acme") == [("acme.example.com", True, False)]
    assert res["tenant"]["deleted_at"] == str(row["deleted_at"])
    assert _audit(conn, "acme")[-1]["action"] == "delete"
    assert run("tenant", {"slug": "acme", "status": "absent"})["changed"] is False
    assert _tenant(conn, "acme")["deleted_at"] == row["deleted_at"]

    res = run("tenant", {"slug": "acme"})
    assert res["changed"] is True
    row = _tenant(conn, "acme")
    assert (row["status"], row["deleted_at"], row["id"]) == ("active", None, created["id"])
    assert _audit(conn, "acme")[-1]["action"] == "update"

    # absent on a tenant that does not exist: nothing to do
    res = run("tenant", {"slug": "nobody", "status": "absent"}, diff=True)
    assert res["changed"] is False and res["tenant"] == {}
    assert res["diff"] == {"before": {}, "after": {}}
    assert _tenant(conn, "nobody") is None


def test_trial_days_apply_when_moving_into_trial(plans, run):
    conn = plans
    run("tenant", {"slug": "acme"})
    res = run("tenant", {"slug": "acme", "status": "trial", "trial_days": 30})
    assert res["changed"] is True
    row = _tenant(conn, "acme")
    assert row["status"] == "trial"
    assert row["trial_ends_at"] - row["updated_at"] == datetime.timedelta(days=30)
    # already in trial: a different trial_days is not applied again
    assert run("tenant", {"slug": "acme", "status": "trial", "trial_days": 7})["changed"] is False
    assert _tenant(conn, "acme")["trial_ends_at"] == row["trial_ends_at"]


BAD_INPUTS = [
    ({"slug": "Bad_Slug"}, "slug: 'Bad_Slug' is not a valid slug"),
    ({"slug": "acme", "domains": ["x.example.com", "X.example.com"]}, "domains: domain x.example.com is listed twice"),
    ({"slug": "acme", "domains": ["owned.example.com"]}, "domains: domain owned.example.com already belongs to tenant other"),
    ({"slug": "acme", "domains": ["not a domain"]}, "domains[0]: 'not a domain' is not a valid domain name"),
    ({"slug": "acme", "domains": [{"domain": "a.example.com", "primary": True},
                                  {"domain": "b.example.com", "primary": True}]},
     "domains: at most one domain may be primary"),
    ({"slug": "acme", "plan": "gold"}, "plan: unknown plan 'gold'; known plans: legacy, pro, starter"),
    ({"slug": "acme", "status": "gone"}, "value of status must be one of: present, active, trial, suspended, absent"),
    ({"slug": "acme", "status": "trial", "trial_days": -1}, "trial_days: must be a whole number of days"),
]


def test_bad_input_fails_and_writes_nothing(plans, run):
    conn = plans
    assert run("tenant", {"slug": "other", "domains": ["owned.example.com"]})["changed"] is True
    before = _snapshot(conn)
    for args, message in BAD_INPUTS:
        res = run("tenant", args)
        assert res.get("failed") is True, (args, res)
        assert message in res["msg"], (args, res["msg"])
        assert _snapshot(conn) == before, args


def test_database_error_is_reported_and_rolled_back(plans, run):
    conn = plans
    conn.execute("""
        CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'refused by test trigger'; END $$;
        CREATE TRIGGER refuse BEFORE INSERT ON platform.tenant_domains
          FOR EACH ROW EXECUTE FUNCTION public.refuse();""")
    res = run("tenant", {"slug": "acme", "domains": ["acme.example.com"]})
    assert res["failed"] is True
    assert "refused by test trigger" in res["msg"] and "nothing was written" in res["msg"]
    assert _tenant(conn, "acme") is None
    assert _audit(conn, "acme") == []


# ---------------------------------------------------------------- a plan the customer chose (migration 0017)


def test_a_plan_the_customer_chose_in_stripe_is_kept_and_reported(plans, run):
    """The webhook receiver moved acme to starter, yearly, after its customer changed plan in the portal: the
    file's pro and month are not applied (no change, in check mode either), and the result says so."""
    conn = plans
    assert run("tenant", {"slug": "acme", "plan": "pro"})["tenant"]["plan_source"] == "operator"
    conn.execute("UPDATE platform.tenants SET plan_code = 'starter', billing_cycle = 'year', "
                 "plan_source = 'customer' WHERE slug = 'acme'")
    args = {"slug": "acme", "plan": "pro", "billing_cycle": "month", "name": "ACME"}
    kept = [{"slug": "acme", "wanted": {"plan": "pro", "billing_cycle": "month"},
             "current": {"plan": "starter", "billing_cycle": "year"}}]
    predicted = run("tenant", args, check=True, diff=True)
    res = run("tenant", args, diff=True)
    for r in (predicted, res):
        assert r["changed"] is True and r["plans_kept"] == kept, r  # the name is the file's to change
        assert (r["tenant"]["plan"], r["tenant"]["billing_cycle"], r["tenant"]["plan_source"]) == (
            "starter", "year", "customer")
        assert any("acme (billing_cycle year, not month, plan starter, not pro)" in w for w in r["warnings"]), r
    row = _tenant(conn, "acme")
    assert (row["name"], row["plan_code"], row["billing_cycle"], row["plan_source"]) == (
        "ACME", "starter", "year", "customer")
    again = run("tenant", args)
    assert again["changed"] is False and again["plans_kept"] == kept


def test_plan_source_operator_takes_the_plan_back_once(plans, run):
    conn = plans
    run("tenant", {"slug": "acme", "plan": "starter"})
    conn.execute("UPDATE platform.tenants SET plan_code = 'pro', plan_source = 'customer' WHERE slug = 'acme'")
    args = {"slug": "acme", "plan": "starter", "plan_source": "operator"}
    predicted = run("tenant", args, check=True, diff=True)
    assert predicted["changed"] is True and predicted["plans_kept"] == []
    assert (predicted["diff"]["before"]["plan"], predicted["diff"]["before"]["plan_source"]) == ("pro", "customer")
    assert (predicted["diff"]["after"]["plan"], predicted["diff"]["after"]["plan_source"]) == ("starter", "operator")
    assert _tenant(conn, "acme")["plan_code"] == "pro"
    res = run("tenant", args)
    assert res["changed"] is True and _tenant(conn, "acme")["plan_source"] == "operator"
    assert res["tenant"]["plan"] == "starter"
    audit = _audit(conn, "acme")[-1]
    assert (audit["before"]["plan_source"], audit["after"]["plan_source"]) == ("customer", "operator")
    assert run("tenant", args)["changed"] is False


def test_a_new_tenant_left_to_its_customer_starts_on_the_given_plan(plans, run):
    res = run("tenant", {"slug": "newco", "plan": "pro", "plan_source": "customer"})
    assert res["changed"] is True and res["plans_kept"] == []
    assert (res["tenant"]["plan"], res["tenant"]["plan_source"]) == ("pro", "customer")


def test_a_bad_plan_source_names_the_field_and_writes_nothing(plans, run):
    before = _snapshot(plans)
    res = run("tenant", {"slug": "acme", "plan": "pro", "plan_source": "stripe"})
    assert res["failed"] and "plan_source" in res["msg"], res
    assert _snapshot(plans) == before
