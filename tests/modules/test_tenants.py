"""tenants (bulk reconcile) against a real PostgreSQL server."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
import yaml


@pytest.fixture()
def plans(schema):
    schema.execute("INSERT INTO platform.plans (code, name) VALUES ('starter', 'Starter'), ('pro', 'Pro')")
    return schema


def _tenants(conn):
    return {r["slug"]: r for r in conn.execute("SELECT * FROM platform.tenants")}


def _domains(conn):
    return {r["domain"]: (r["slug"], r["is_primary"], r["verified"]) for r in conn.execute(
        "SELECT d.*, t.slug FROM platform.tenant_domains d JOIN platform.tenants t ON t.id = d.tenant_id")}


def _quotas(conn):
    return {(r["slug"], r["metric"]): (r["limit_value"], r["period"], r["mode"], r["overage_unit_price"])
            for r in conn.execute("SELECT q.*, t.slug FROM platform.tenant_quotas q "
                                  "JOIN platform.tenants t ON t.id = q.tenant_id")}


def _audit(conn):
    return [(r["entity"], r["entity_key"], r["action"]) for r in
            conn.execute("SELECT * FROM platform.audit_log ORDER BY id")]


def _snapshot(conn):
    """Everything these modules write, to prove a failed run wrote nothing."""
    return [conn.execute(f"SELECT * FROM platform.{table} ORDER BY 1, 2").fetchall()
            for table in ("tenants", "tenant_domains", "tenant_quotas", "audit_log")]


def _insert(conn, slug, status="active", domain=None):
    tid = conn.execute("INSERT INTO platform.tenants (slug, name, status) VALUES (%s, %s, %s) RETURNING id",
                       (slug, slug, status)).fetchone()["id"]
    if domain:
        conn.execute("INSERT INTO platform.tenant_domains (tenant_id, domain, is_primary) VALUES (%s, %s, true)",
                     (tid, domain))
    return tid


LIST = [
    {"slug": "acme", "name": "ACME", "plan": "pro", "domains": ["app.acme.example"],
     "settings": {"a": 1}, "quotas": [{"metric": "api_requests", "limit": "100k"},
                                      {"metric": "storage_bytes", "limit": "10GB", "mode": "overage",
                                       "overage_price": "0.00000002"}]},
    {"slug": "globex", "status": "trial", "trial_days": 14, "plan": "starter",
     "domains": [{"domain": "globex.example", "verified": True}, "www.globex.example"],
     "quotas": [{"metric": "members", "limit": "unlimited", "period": "none"}]},
    {"slug": "initech", "status": "suspended", "billing_cycle": "year"},
]


def test_check_then_apply_then_noop(plans, run):
    conn = plans
    res = run("tenants", {"tenants": LIST}, check=True, diff=True)
    assert res["changed"] is True, res
    assert res["counts"] == {"created": 3, "updated": 0, "suspended": 0, "deleted": 0, "purged": 0, "unchanged": 0}
    assert res["changed_slugs"] == ["acme", "globex", "initech"]
    assert res["diff"]["before"] == {"tenants": {"acme": {}, "globex": {}, "initech": {}}}
    acme = res["diff"]["after"]["tenants"]["acme"]
    assert acme["quotas"] == [
        {"metric": "api_requests", "limit": 100000, "period": "month", "mode": "hard", "overage_price": None},
        {"metric": "storage_bytes", "limit": 10 ** 10, "period": "month", "mode": "overage",
         "overage_price": "0.00000002"}]
    assert acme["domains"] == [{"domain": "app.acme.example", "primary": True, "verified": False}]
    assert _snapshot(conn) == [[], [], [], []]

    res = run("tenants", {"tenants": LIST})
    assert res["changed"] is True, res
    assert res["counts"]["created"] == 3
    tenants = _tenants(conn)
    assert {s: (t["name"], t["status"], t["plan_code"], t["billing_cycle"]) for s, t in tenants.items()} == {
        "acme": ("ACME", "active", "pro", "month"), "globex": ("globex", "trial", "starter", "month"),
        "initech": ("initech", "suspended", None, "year")}
    assert tenants["acme"]["settings"] == {"a": 1}
    assert (tenants["globex"]["trial_ends_at"] - tenants["globex"]["created_at"]).days == 14
    assert _domains(conn) == {"app.acme.example": ("acme", True, False), "globex.example": ("globex", True, True),
                              "www.globex.example": ("globex", False, False)}
    assert _quotas(conn) == {("acme", "api_requests"): (100000, "month", "hard", None),
                             ("acme", "storage_bytes"): (10 ** 10, "month", "overage", Decimal("0.00000002")),
                             ("globex", "members"): (None, "none", "hard", None)}
    assert sorted(_audit(conn)) == sorted(
        [("tenant", s, "create") for s in ("acme", "globex", "initech")]
        + [("tenant_quota", k, "create") for k in ("acme/api_requests", "acme/storage_bytes", "globex/members")])
    audit = conn.execute("SELECT * FROM platform.audit_log WHERE entity_key = 'acme'").fetchone()
    assert audit["tenant_id"] == tenants["acme"]["id"] and audit["after"]["plan"] == "pro"

    snapshot = _snapshot(conn)
    res = run("tenants", {"tenants": LIST}, diff=True)
    assert res["changed"] is False, res
    assert res["counts"] == {"created": 0, "updated": 0, "suspended": 0, "deleted": 0, "purged": 0, "unchanged": 3}
    assert res["changed_slugs"] == [] and res["diff"]["after"]["tenants"] == {}
    assert _snapshot(conn) == snapshot


def test_updates_merge_purge_quota_sets_and_diff_items(plans, run):
    conn = plans
    assert run("tenants", {"tenants": LIST})["changed"] is True
    acme_id = _tenants(conn)["acme"]["id"]
    changes = [
        # merge settings; quotas: exact set, so storage_bytes goes and api_requests changes
        {"slug": "acme", "settings": {"b": 2}, "quotas": [{"metric": "api_requests", "limit": 5000, "mode": "soft"}]},
        # purge settings; quotas omitted: left alone; domains: exact set
        {"slug": "globex", "settings": {"z": True}, "purge": True, "domains": ["globex.example"]},
        {"slug": "initech", "status": "absent"},
        {"slug": "hooli"},
    ]
    res = run("tenants", {"tenants": changes, "diff_items": 2}, check=True, diff=True)
    assert res["changed"] is True
    assert res["counts"] == {"created": 1, "updated": 2, "suspended": 0, "deleted": 1, "purged": 0, "unchanged": 0}
    assert res["changed_slugs"] == ["acme", "globex"]
    diff = res["diff"]
    assert diff["after"]["summary"] == dict(res["counts"], shown=2, not_shown=2)
    assert list(diff["before"]["tenants"]) == ["acme", "globex"]
    assert diff["before"]["tenants"]["acme"]["settings"] == {"a": 1}
    assert diff["after"]["tenants"]["acme"]["settings"] == {"a": 1, "b": 2}
    assert [q["metric"] for q in diff["after"]["tenants"]["acme"]["quotas"]] == ["api_requests"]
    assert "hooli" not in _tenants(conn)

    res = run("tenants", {"tenants": changes})
    assert res["counts"] == {"created": 1, "updated": 2, "suspended": 0, "deleted": 1, "purged": 0, "unchanged": 0}
    tenants = _tenants(conn)
    assert tenants["acme"]["settings"] == {"a": 1, "b": 2}
    assert tenants["globex"]["settings"] == {"z": True}
    assert tenants["initech"]["status"] == "deleted" and tenants["initech"]["deleted_at"] is not None
    assert tenants["hooli"]["status"] == "active"
    assert _quotas(conn) == {("acme", "api_requests"): (5000, "month", "soft", None),
                             ("globex", "members"): (None, "none", "hard", None)}
    assert set(_domains(conn)) == {"app.acme.example", "globex.example"}
    audit = _audit(conn)[6:]
    assert sorted(audit) == sorted([
        ("tenant", "acme", "update"), ("tenant", "globex", "update"), ("tenant", "initech", "delete"),
        ("tenant", "hooli", "create"), ("tenant_quota", "acme/api_requests", "update"),
        ("tenant_quota", "acme/storage_bytes", "delete")])
    quota_audit = conn.execute("SELECT * FROM platform.audit_log WHERE entity_key = 'acme/storage_bytes' "
                               "AND action = 'delete'").fetchone()
    assert quota_audit["tenant_id"] == acme_id and quota_audit["after"] is None
    assert quota_audit["before"]["limit"] == 10 ** 10

    res = run("tenants", {"tenants": changes})
    assert res["changed"] is False and res["counts"]["unchanged"] == 4


def test_exclusive_suspends_unlisted(plans, run):
    conn = plans
    for slug, status in (("keep", "active"), ("other", "active"), ("trialing", "trial"), ("gone", "deleted"),
                         ("paused", "suspended")):
        _insert(conn, slug, status)
    args = {"tenants": [{"slug": "keep"}, {"slug": "new-one"}], "exclusive": True}
    res = run("tenants", args, check=True)
    assert res["counts"] == {"created": 1, "updated": 0, "suspended": 2, "deleted": 0, "purged": 0, "unchanged": 1}
    assert res["changed_slugs"] == ["new-one", "other", "trialing"]
    assert {s: t["status"] for s, t in _tenants(conn).items()} == {
        "keep": "active", "other": "active", "trialing": "trial", "gone": "deleted", "paused": "suspended"}

    res = run("tenants", args)
    assert res["changed"] is True
    assert {s: t["status"] for s, t in _tenants(conn).items()} == {
        "keep": "active", "new-one": "active", "other": "suspended", "trialing": "suspended", "gone": "deleted",
        "paused": "suspended"}
    assert ("tenant", "other", "update") in _audit(conn)
    assert run("tenants", args)["changed"] is False

    # without exclusive, unlisted tenants are left alone
    res = run("tenants", {"tenants": [{"slug": "keep"}]})
    assert res["changed"] is False and res["counts"]["unchanged"] == 1


def test_purge_deleted(plans, run):
    conn = plans
    gone = _insert(conn, "gone", "deleted", domain="gone.example")
    conn.execute("INSERT INTO platform.tenant_quotas (tenant_id, metric, limit_value) VALUES (%s, 'members', 5)",
                 (gone,))
    _insert(conn, "leaving", "active", domain="leaving.example")
    _insert(conn, "staying", "active")

    # without purge_deleted nothing is ever hard-deleted
    res = run("tenants", {"tenants": [{"slug": "leaving", "status": "absent"}]})
    assert res["counts"]["deleted"] == 1 and res["counts"]["purged"] == 0
    assert set(_tenants(conn)) == {"gone", "leaving", "staying"}
    assert _tenants(conn)["leaving"]["status"] == "deleted"

    args = {"tenants": [{"slug": "staying"}], "purge_deleted": True}
    res = run("tenants", args, check=True, diff=True)
    assert res["counts"] == {"created": 0, "updated": 0, "suspended": 0, "deleted": 0, "purged": 2, "unchanged": 1}
    assert res["diff"]["after"]["tenants"] == {"gone": {}, "leaving": {}}
    assert res["diff"]["before"]["tenants"]["gone"]["quotas"][0]["metric"] == "members"
    assert set(_tenants(conn)) == {"gone", "leaving", "staying"}

    res = run("tenants", args)
    assert res["changed"] is True
    assert set(_tenants(conn)) == {"staying"}
    assert _domains(conn) == {} and _quotas(conn) == {}  # cascaded
    purged = conn.execute("SELECT * FROM platform.audit_log WHERE entity_key IN ('gone', 'leaving') "
                          "AND action = 'delete' AND after IS NULL ORDER BY entity_key").fetchall()
    assert [(r["entity_key"], r["tenant_id"], r["before"]["status"]) for r in purged] == [
        ("gone", None, "deleted"), ("leaving", None, "deleted")]
    assert run("tenants", args)["changed"] is False


def test_domain_moves_between_listed_tenants(plans, run):
    conn = plans
    _insert(conn, "old-owner", domain="shop.example")
    res = run("tenants", {"tenants": [{"slug": "new-owner", "domains": ["shop.example"]},
                                      {"slug": "old-owner", "domains": []}]})
    assert res["changed"] is True, res
    assert _domains(conn) == {"shop.example": ("new-owner", True, False)}


def test_failure_midway_writes_nothing(plans, run):
    conn = plans
    _insert(conn, "existing", domain="existing.example")
    before = _snapshot(conn)
    tenants = [{"slug": f"t{i}", "domains": [f"t{i}.example"], "settings": {"n": i},
                "quotas": [{"metric": "members", "limit": 10}]} for i in range(5)]

    # the third tenant fails in the database, after the tenants themselves were inserted
    conn.execute("""
        CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW.domain = 't2.example' THEN RAISE EXCEPTION 'refused by test trigger: %', NEW.domain; END IF;
          RETURN NEW;
        END $$;
        CREATE TRIGGER refuse BEFORE INSERT ON platform.tenant_domains
          FOR EACH ROW EXECUTE FUNCTION public.refuse();""")
    res = run("tenants", {"tenants": tenants, "exclusive": True})
    assert res["failed"] is True
    assert "refused by test trigger: t2.example" in res["msg"] and "nothing was written" in res["msg"]
    assert _snapshot(conn) == before
    conn.execute("DROP TRIGGER refuse ON platform.tenant_domains")

    # the third tenant fails validation
    tenants[2]["quotas"][0]["limit"] = "lots"
    res = run("tenants", {"tenants": tenants, "exclusive": True})
    assert res["failed"] is True
    assert res["msg"].startswith("tenants[2].quotas[0].limit: must be a number")
    assert _snapshot(conn) == before


BAD_INPUTS = [
    ([{"slug": "ok-1"}, {"slug": "ok-2"}, {"slug": "ok-3"}, {"name": "no slug"}], "tenants[3].slug: required"),
    ([{"slug": "ok-1"}, {"slug": "Not_OK"}], "tenants[1].slug: 'Not_OK' is not a valid slug"),
    ([{"slug": "ok-1"}, {"slug": "ok-1"}], "tenants[1].slug: duplicate slug ok-1 (also tenants[0].slug)"),
    ([{"slug": "ok-1", "domains": ["a.example"]}, {"slug": "ok-2", "domains": ["A.example"]}],
     "tenants[1].domains: domain a.example is also listed for tenants[0] (ok-1)"),
    ([{"slug": "ok-1", "domains": ["owned.example"]}],
     "tenants[0].domains: domain owned.example already belongs to tenant owner"),
    ([{"slug": "ok-1", "plan": "gold"}], "tenants[0].plan: unknown plan 'gold'; known plans: pro, starter"),
    ([{"slug": "ok-1", "status": "gone"}], "tenants[0].status: must be one of present, active, trial, suspended"),
    ([{"slug": "ok-1", "quotas": [{"metric": "members", "limit": -5}]}],
     "tenants[0].quotas[0].limit: must not be negative"),
    ([{"slug": "ok-1", "quotas": [{"metric": "members", "limit": "many"}]}],
     "tenants[0].quotas[0].limit: must be a number"),
    ([{"slug": "ok-1", "quotas": [{"metric": "coffee", "limit": 1}]}],
     "tenants[0].quotas[0].metric: unknown metric 'coffee'"),
    ([{"slug": "ok-1", "quotas": [{"metric": "members", "limit": 1, "mode": "strict"}]}],
     "tenants[0].quotas[0].mode: must be one of hard, soft, overage"),
    ([{"slug": "ok-1", "trial_days": "soon"}], "tenants[0].trial_days: must be of type int"),
    ([{"slug": "ok-1", "colour": "red"}], "tenants[0]: unsupported option(s) colour"),
]


def test_bad_input_fails_and_writes_nothing(plans, run):
    conn = plans
    _insert(conn, "owner", domain="owned.example")
    before = _snapshot(conn)
    for tenants, message in BAD_INPUTS:
        res = run("tenants", {"tenants": tenants})
        assert res.get("failed") is True, (tenants, res)
        assert message in res["msg"], (tenants, res["msg"])
        assert _snapshot(conn) == before, tenants


def test_runs_as_a_selfbase_admin_member(plans, run):
    """Not a superuser: row-level security applies, through the control_plane policy."""
    conn = plans
    conn.execute("DROP ROLE IF EXISTS tenants_operator")
    conn.execute("CREATE ROLE tenants_operator LOGIN IN ROLE selfbase_admin")
    try:
        _insert(conn, "unlisted")
        args = {"tenants": LIST, "exclusive": True, "login_user": "tenants_operator"}
        res = run("tenants", args)
        assert res["changed"] is True, res
        assert res["counts"]["created"] == 3 and res["counts"]["suspended"] == 1
        assert len(_quotas(conn)) == 3 and len(_domains(conn)) == 3
        assert conn.execute("SELECT DISTINCT actor FROM platform.audit_log").fetchall() == [{"actor": "tenants_operator"}]
        assert run("tenants", args)["changed"] is False
    finally:
        conn.execute("REASSIGN OWNED BY tenants_operator TO postgres; DROP OWNED BY tenants_operator")
        conn.execute("DROP ROLE tenants_operator")


# tenants_file: read on the controller by the action plugin ---------------------------------------

@pytest.mark.parametrize("fmt", ["yaml-mapping", "json-list"])
def test_tenants_file_reconciles_like_the_inline_list(run, plans, tmp_path, fmt):
    if fmt == "yaml-mapping":
        path = tmp_path / "tenants.yml"
        path.write_text("---\n# edited by operators\n" + yaml.safe_dump({"tenants": LIST}))
    else:
        path = tmp_path / "tenants.json"
        path.write_text(json.dumps(LIST))
    res = run("tenants", {"tenants_file": str(path)}, check=True)
    assert res["changed"] is True and res["counts"]["created"] == 3, res
    assert _tenants(plans) == {}
    res = run("tenants", {"tenants_file": str(path)}, diff=True)
    assert res["changed"] is True and res["counts"]["created"] == 3, res
    assert "tenants" not in res["invocation"]["module_args"]
    assert sorted(_tenants(plans)) == ["acme", "globex", "initech"]
    assert _quotas(plans)[("acme", "storage_bytes")][2] == "overage"
    assert run("tenants", {"tenants_file": str(path)})["changed"] is False
    assert run("tenants", {"tenants": LIST})["changed"] is False  # the same state as the inline list


def test_tenants_file_errors_name_the_option(run, plans, tmp_path):
    missing = tmp_path / "nope.yml"
    res = run("tenants", {"tenants_file": str(missing)})
    assert res["failed"] and res["msg"].startswith(f"tenants_file: cannot read {missing}"), res
    wrong = tmp_path / "wrong.yml"
    wrong.write_text("selfbase_tenants: []\n")
    res = run("tenants", {"tenants_file": str(wrong)})
    assert res["failed"] and 'is a mapping without a "tenants" key' in res["msg"] and "selfbase_tenants" in res["msg"]
    scalar = tmp_path / "scalar.yml"
    scalar.write_text("42\n")
    assert "must hold a list of tenants, got int" in run("tenants", {"tenants_file": str(scalar)})["msg"]
    res = run("tenants", {"tenants_file": str(scalar), "tenants": LIST})
    assert res["failed"] and "tenants and tenants_file are mutually exclusive" in res["msg"]
    bad = tmp_path / "bad.yml"
    bad.write_text("tenants:\n  - {slug: ok-one}\n  - {slug: Bad Slug}\n")
    res = run("tenants", {"tenants_file": str(bad)})
    assert res["failed"] and "tenants[1].slug" in res["msg"], res
    assert _tenants(plans) == {}


def test_tenants_file_yaml_is_parsed_once_per_content(run, plans, tmp_path, monkeypatch):
    """The action plugin keeps a JSON copy of a parsed YAML file, by content: a re-run with the same bytes reads
    the copy, an edited file is parsed again, and a broken copy is parsed around."""
    home = tmp_path / "home"
    monkeypatch.setenv("ANSIBLE_HOME", str(home))
    path = tmp_path / "tenants.yml"
    path.write_text(yaml.safe_dump({"tenants": LIST}))
    assert run("tenants", {"tenants_file": str(path)})["changed"] is True
    cache = home / "selfbase" / "tenants_file"
    copies = sorted(cache.glob("*.json"))
    assert len(copies) == 1 and json.loads(copies[0].read_text()) == {"tenants": LIST}
    # the copy is what a re-run reads: change it (same name, same bytes of the YAML) and the run follows it
    copies[0].write_text(json.dumps({"tenants": LIST[:1]}))
    res = run("tenants", {"tenants_file": str(path), "exclusive": True}, check=True)
    assert res["changed_slugs"] == ["globex"], res  # initech is suspended already
    copies[0].write_text("{not json")
    assert run("tenants", {"tenants_file": str(path), "exclusive": True})["changed"] is False
    edited = LIST[:2] + [dict(LIST[2], name="Initech renamed")]
    path.write_text(yaml.safe_dump({"tenants": edited}))
    res = run("tenants", {"tenants_file": str(path)})
    assert res["changed"] is True and res["counts"]["updated"] == 1
    assert len(list(cache.glob("*.json"))) == 2


def test_a_list_leaves_the_plans_customers_chose_and_names_them(plans, run):
    """Migration 0017: a tenant whose customer changed plan in Stripe keeps it; the rest of the list applies."""
    conn = plans
    run("tenants", {"tenants": [{"slug": "acme", "plan": "starter"}, {"slug": "globex", "plan": "starter"}]})
    conn.execute("UPDATE platform.tenants SET plan_code = 'pro', plan_source = 'customer' WHERE slug = 'acme'")
    wanted = {"tenants": [{"slug": "acme", "plan": "starter"}, {"slug": "globex", "plan": "pro"}]}
    res = run("tenants", wanted)
    assert res["changed"] is True and res["changed_slugs"] == ["globex"], res
    assert res["plans_kept"] == [{"slug": "acme", "wanted": {"plan": "starter"}, "current": {"plan": "pro"}}]
    assert {s: (t["plan_code"], t["plan_source"]) for s, t in _tenants(conn).items()} == {
        "acme": ("pro", "customer"), "globex": ("pro", "operator")}
    assert run("tenants", wanted)["changed"] is False
    res = run("tenants", {"tenants": [{"slug": "acme", "plan": "starter", "plan_source": "owner"}]})
    assert res["failed"] and res["msg"].startswith("tenants[0].plan_source: must be one of operator, customer"), res
