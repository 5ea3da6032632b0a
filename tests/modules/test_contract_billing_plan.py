"""billing_plan against a real PostgreSQL server and the stripe_fake Stripe (contract test)."""

from __future__ import annotations

import pytest


@pytest.fixture()
def bill(run, schema, stripe_fake):
    """Run a module with the Stripe options pointing at the stripe_fake."""
    def call(module, args, **kw):
        return run(module, dict(args, api_key=stripe_fake.api_key, api_base=stripe_fake.url, max_retries=3), **kw)
    return call


@pytest.fixture()
def meter(stripe_fake):
    """The api_requests meter, created directly in the stripe_fake (billing_meter is tested on its own)."""
    import stripe
    client = stripe.StripeClient(stripe_fake.api_key, base_addresses={"api": stripe_fake.url})
    m = client.raw_request("post", "/v1/billing/meters", display_name="API requests", event_name="api_requests",
                           default_aggregation={"formula": "sum"})
    stripe_fake.reset_log()
    return m.data["id"]


PRO = {"code": "pro", "name": "Pro", "description": "For teams", "features": {"sso": True}, "trial_days": 14,
       "prices": [{"interval": "month", "currency": "usd", "amount_decimal": "29.00"},
                  {"interval": "year", "currency": "usd", "amount": 29000},
                  {"interval": "month", "currency": "JPY", "amount_decimal": 4000}],
       "quotas": [{"metric": "members", "limit": 25},
                  {"metric": "api_requests", "limit": "1M", "mode": "overage",
                   "overage_unit_price": {"usd": "0.0001", "jpy": "0.015"}}]}


def _db(conn, code="pro"):
    plan = conn.execute("SELECT * FROM platform.plans WHERE code = %s", (code,)).fetchone()
    prices = {(r["billing_cycle"], r["currency"]): r for r in conn.execute(
        "SELECT * FROM platform.plan_prices WHERE plan_code = %s", (code,))}
    quotas = {r["metric"]: r for r in conn.execute("SELECT * FROM platform.plan_quotas WHERE plan_code = %s", (code,))}
    overage = {(r["metric"], r["billing_cycle"], r["currency"]): r for r in conn.execute(
        "SELECT * FROM platform.plan_overage_prices WHERE plan_code = %s", (code,))}
    return plan, prices, quotas, overage


def _snapshot(conn):
    return [conn.execute(f"SELECT * FROM platform.{t} ORDER BY 1, 2").fetchall()
            for t in ("plans", "plan_prices", "plan_quotas", "plan_overage_prices", "audit_log")]


def _active_prices(stripe_fake):
    return {p["lookup_key"]: p for p in stripe_fake.objects("prices") if p["active"]}


@pytest.mark.through_playbook("billing_plan")
def test_check_create_rerun(bill, schema, stripe_fake, meter):
    res = bill("billing_plan", PRO, check=True, diff=True)
    assert res["changed"] is True, res
    assert stripe_fake.writes() == []
    assert [r.path for r in stripe_fake.reads()] == ["/v1/products", "/v1/billing/meters", "/v1/prices",
                                                     "/v1/entitlements/features"]
    # product, its feature created and attached, 3 prices, 3 metered prices (one per price point)
    assert len(res["actions"]) == 1 + 2 + 3 + 3
    assert res["diff"]["before"] == {}
    assert res["diff"]["after"]["stripe_product_id"] is None
    assert _db(schema)[0] is None

    stripe_fake.reset_log()
    res = bill("billing_plan", PRO, diff=True)
    assert res["changed"] is True, res
    writes = stripe_fake.writes()
    products = stripe_fake.objects("products")
    assert [w.path for w in writes] == ["/v1/products", "/v1/entitlements/features",
                                        "/v1/products/%s/features" % products[0]["id"]] + ["/v1/prices"] * 6
    assert all(w.idempotency_key for w in writes)
    assert res["api_calls"]["writes"] == 9
    assert [(f["lookup_key"], f["name"], f["active"]) for f in stripe_fake.objects("entitlements/features")] == [
        ("sso", "Sso", True)]
    assert res["plans"][0]["stripe_features"] == ["sso"]
    assert [(p["name"], p["description"], p["metadata"]["plan_code"], p["active"]) for p in products] == \
        [("Pro", "For teams", "pro", True)]
    prices = _active_prices(stripe_fake)
    assert sorted(prices) == ["pro_month_jpy", "pro_month_jpy.api_requests", "pro_month_usd",
                              "pro_month_usd.api_requests", "pro_year_usd", "pro_year_usd.api_requests"]
    assert (prices["pro_month_usd"]["unit_amount"], prices["pro_year_usd"]["unit_amount"],
            prices["pro_month_jpy"]["unit_amount"]) == (2900, 29000, 4000)
    metered = prices["pro_month_usd.api_requests"]
    assert metered["recurring"]["usage_type"] == "metered" and metered["recurring"]["meter"] == meter
    assert metered["unit_amount_decimal"] == "0.01"          # 0.0001 usd = 0.01 cents
    assert prices["pro_month_jpy.api_requests"]["unit_amount_decimal"] == "0.015"
    assert {p["product"] for p in prices.values()} == {products[0]["id"]}

    plan, db_prices, quotas, overage = _db(schema)
    assert (plan["name"], plan["active"], plan["trial_days"], plan["features"]) == ("Pro", True, 14, {"sso": True})
    assert plan["stripe_product_id"] == products[0]["id"]
    assert {k: (r["unit_amount"], r["stripe_price_id"]) for k, r in db_prices.items()} == {
        ("month", "usd"): (2900, prices["pro_month_usd"]["id"]), ("year", "usd"): (29000, prices["pro_year_usd"]["id"]),
        ("month", "jpy"): (4000, prices["pro_month_jpy"]["id"])}
    assert quotas["members"]["limit_value"] == 25 and quotas["api_requests"]["limit_value"] == 1_000_000
    assert quotas["api_requests"]["stripe_meter_id"] == meter
    assert {k: r["stripe_price_id"] for k, r in overage.items()} == {
        ("api_requests", "month", "usd"): metered["id"],
        ("api_requests", "year", "usd"): prices["pro_year_usd.api_requests"]["id"],
        ("api_requests", "month", "jpy"): prices["pro_month_jpy.api_requests"]["id"]}
    assert res["diff"]["after"] == res["plans"][0]
    audit = schema.execute("SELECT action FROM platform.audit_log WHERE entity = 'plan'").fetchall()
    assert [a["action"] for a in audit] == ["create"]

    # identical re-run: reads only, no write anywhere
    before = _snapshot(schema)
    stripe_fake.reset_log()
    res = bill("billing_plan", PRO, check=True)
    assert res["changed"] is False, res
    res = bill("billing_plan", PRO)
    assert res["changed"] is False, res
    assert res["actions"] == [] and stripe_fake.writes() == []
    # the reads of the first run, and the product's features
    assert res["api_calls"] == {"reads": 5, "writes": 0}
    assert _snapshot(schema) == before


def test_amount_change_moves_lookup_key_and_archives(bill, schema, stripe_fake, meter):
    assert bill("billing_plan", PRO)["changed"] is True
    old = _active_prices(stripe_fake)["pro_month_usd"]
    changed = dict(PRO, prices=[dict(PRO["prices"][0], amount_decimal="35")] + PRO["prices"][1:])

    stripe_fake.reset_log()
    res = bill("billing_plan", changed, check=True, diff=True)
    assert res["changed"] is True and stripe_fake.writes() == []
    assert res["actions"] == ["create price pro_month_usd (3500 usd/month)",
                              "archive price %s (pro_month_usd)" % old["id"]]
    assert [p["amount"] for p in res["diff"]["before"]["prices"] if p["lookup_key"] == "pro_month_usd"] == [2900]

    stripe_fake.reset_log()
    res = bill("billing_plan", changed)
    assert res["changed"] is True, res
    writes = stripe_fake.writes()
    assert [(w.path, w.params.get("transfer_lookup_key"), w.params.get("active")) for w in writes] == [
        ("/v1/prices", "true", None), ("/v1/prices/%s" % old["id"], None, "false")]
    new = _active_prices(stripe_fake)["pro_month_usd"]
    assert new["unit_amount"] == 3500 and new["id"] != old["id"]
    assert stripe_fake.get("prices", old["id"])["active"] is False
    assert stripe_fake.get("prices", old["id"])["lookup_key"] is None
    _plan, prices, _q, _o = _db(schema)
    assert (prices[("month", "usd")]["unit_amount"], prices[("month", "usd")]["stripe_price_id"]) == (3500, new["id"])

    stripe_fake.reset_log()
    assert bill("billing_plan", changed)["changed"] is False
    assert stripe_fake.writes() == []

    # back to the old amount: a third price (Stripe prices are immutable), not a replay of the first
    res = bill("billing_plan", PRO)
    assert res["changed"] is True
    third = _active_prices(stripe_fake)["pro_month_usd"]
    assert third["unit_amount"] == 2900 and third["id"] not in (old["id"], new["id"])
    assert stripe_fake.get("prices", new["id"])["active"] is False


def test_crash_between_stripe_and_database_is_safe_to_rerun(bill, schema, stripe_fake, meter):
    """A 500 after Stripe stored the product: the retry replays it; a run that dies before the database
    write is finished by the next run without duplicates."""
    stripe_fake.fail_next(status=500, after_store=True, method="POST", path_prefix="/v1/products")
    stripe_fake.fail_next(status=429, method="POST", path_prefix="/v1/prices")
    stripe_fake.fail_next(drop=True, method="POST", path_prefix="/v1/prices")
    res = bill("billing_plan", PRO)
    assert res["changed"] is True, res
    assert len(stripe_fake.objects("products")) == 1
    assert len(stripe_fake.objects("prices")) == 6

    # Stripe written, database not: simulate by removing the database rows, then run again
    schema.execute("DELETE FROM platform.plans WHERE code = 'pro'")
    stripe_fake.reset_log()
    res = bill("billing_plan", PRO)
    assert res["changed"] is True, res
    assert stripe_fake.writes() == []
    assert len(stripe_fake.objects("products")) == 1 and len(stripe_fake.objects("prices")) == 6
    assert _db(schema)[0]["stripe_product_id"] == stripe_fake.objects("products")[0]["id"]


def test_archive_left_behind_is_finished(bill, schema, stripe_fake, meter):
    """A run stopped after the new price was created but before the old one was archived."""
    assert bill("billing_plan", PRO)["changed"] is True
    old = _active_prices(stripe_fake)["pro_month_usd"]
    changed = dict(PRO, prices=[dict(PRO["prices"][0], amount_decimal="35")] + PRO["prices"][1:])
    stripe_fake.fail_next(status=400, count=10, method="POST", path_prefix="/v1/prices/")
    res = bill("billing_plan", changed)
    assert res["failed"] is True
    assert stripe_fake.get("prices", old["id"])["active"] is True       # left behind, without its lookup key
    assert _db(schema)[1][("month", "usd")]["stripe_price_id"] == old["id"]   # database untouched
    stripe_fake.faults.clear()
    stripe_fake.reset_log()
    res = bill("billing_plan", changed)
    assert res["changed"] is True, res
    assert [w.path for w in stripe_fake.writes()] == ["/v1/prices/%s" % old["id"]]
    assert stripe_fake.get("prices", old["id"])["active"] is False
    assert bill("billing_plan", changed)["changed"] is False


def test_absent_archives_and_keeps_history(bill, schema, stripe_fake, meter):
    assert bill("billing_plan", PRO)["changed"] is True
    schema.execute("INSERT INTO platform.tenants (slug, name, plan_code) VALUES ('acme', 'ACME', 'pro')")
    stripe_fake.reset_log()
    res = bill("billing_plan", {"code": "pro", "state": "absent"}, check=True)
    assert res["changed"] is True and stripe_fake.writes() == []
    res = bill("billing_plan", {"code": "pro", "state": "absent"})
    assert res["changed"] is True, res
    assert [p for p in stripe_fake.objects("prices") if p["active"]] == []
    assert [p["active"] for p in stripe_fake.objects("products")] == [False]
    plan, prices, quotas, overage = _db(schema)
    assert plan["active"] is False
    assert not any(r["active"] for r in prices.values()) and not any(r["active"] for r in overage.values())
    assert len(quotas) == 2
    assert schema.execute("SELECT plan_code FROM platform.tenants").fetchone()["plan_code"] == "pro"
    stripe_fake.reset_log()
    assert bill("billing_plan", {"code": "pro", "state": "absent"})["changed"] is False
    assert stripe_fake.writes() == []
    # and back
    res = bill("billing_plan", PRO)
    assert res["changed"] is True
    assert [p["active"] for p in stripe_fake.objects("products")] == [True]
    assert len(_active_prices(stripe_fake)) == 6


def test_removed_price_point_is_archived(bill, schema, stripe_fake, meter):
    assert bill("billing_plan", PRO)["changed"] is True
    jpy = _active_prices(stripe_fake)["pro_month_jpy"]
    fewer = dict(PRO, prices=PRO["prices"][:2], quotas=PRO["quotas"][:1])
    res = bill("billing_plan", fewer)
    assert res["changed"] is True, res
    assert sorted(_active_prices(stripe_fake)) == ["pro_month_usd", "pro_year_usd"]
    assert stripe_fake.get("prices", jpy["id"])["active"] is False
    _plan, prices, quotas, overage = _db(schema)
    assert prices[("month", "jpy")]["active"] is False
    assert sorted(quotas) == ["members"] and overage == {}
    assert bill("billing_plan", fewer)["changed"] is False


@pytest.mark.parametrize("change, field", [
    ({"prices": [{"interval": "month", "currency": "xyz", "amount": 100}]}, "prices[0].currency"),
    ({"prices": [{"interval": "month", "currency": "usd", "amount": -5}]}, "prices[0].amount"),
    ({"prices": [{"interval": "month", "currency": "jpy", "amount_decimal": "10.5"}]}, "prices[0].amount_decimal"),
    ({"prices": [{"interval": "month", "currency": "usd", "amount_decimal": "1.999"}]}, "prices[0].amount_decimal"),
    ({"prices": [{"interval": "month", "currency": "usd"}]}, "prices[0].amount"),
    ({"quotas": [{"metric": "api_requests", "limit": 10, "mode": "overage", "overage_unit_price": 1}],
      "prices": [{"interval": "month", "currency": "usd", "amount": 100}]}, "quotas[0].metric"),
    ({"quotas": [{"metric": "nope", "limit": 10}]}, "quotas[0].metric"),
    ({"trial_days": -1}, "trial_days"),
    ({"features": {"max_projects": 5}}, "features.max_projects"),
    ({"features": {"Custom-Domains": True}}, "features"),
    ({"features": {"support": "Priority level"}}, "features.support"),
])
def test_bad_input_fails_before_any_write(bill, schema, stripe_fake, change, field):
    before = _snapshot(schema)
    res = bill("billing_plan", dict({"code": "pro"}, **change))
    assert res["failed"] is True
    assert res["msg"].startswith(field + ":"), res["msg"]
    assert stripe_fake.writes() == []
    assert _snapshot(schema) == before


def test_plans_list_names_the_entry(bill, schema, stripe_fake):
    plans = [{"code": "a", "prices": [{"interval": "month", "currency": "usd", "amount": 1}]},
             {"code": "b", "prices": [{"interval": "week", "currency": "usd", "amount": 1}]}]
    res = bill("billing_plan", {"plans": plans})
    assert res["failed"] is True
    assert res["msg"].startswith("plans[1].prices[0].interval:"), res["msg"]
    assert stripe_fake.writes() == []


def test_inactive_plan_gets_its_prices_before_its_product_is_archived(bill, schema, stripe_fake, meter):
    """Stripe refuses a price on an inactive product (the fake too): a plan that is not offered (active: false)
    but needs prices gets them while its product is active, then the product is archived."""
    legacy = {"code": "legacy", "name": "Legacy", "active": False,
              "prices": [{"interval": "month", "currency": "usd", "amount": 500}]}
    res = bill("billing_plan", legacy)
    assert res["changed"] is True, {k: res.get(k) for k in ("msg", "failed", "actions", "plans")}
    [product] = stripe_fake.objects("products")
    assert product["active"] is False and [p["product"] for p in stripe_fake.objects("prices")] == [product["id"]]
    # a new price point later: reactivated for it, archived again
    stripe_fake.reset_log()
    more = dict(legacy, prices=legacy["prices"] + [{"interval": "year", "currency": "usd", "amount": 5000}])
    res = bill("billing_plan", more)
    assert res["changed"] is True, res
    writes = [(w.path, w.params.get("active"), w.status) for w in stripe_fake.writes()]
    assert writes == [("/v1/products/%s" % product["id"], "true", 200), ("/v1/prices", None, 200),
                      ("/v1/products/%s" % product["id"], "false", 200)], writes
    assert stripe_fake.get("products", product["id"])["active"] is False
    stripe_fake.reset_log()
    assert bill("billing_plan", more)["changed"] is False and stripe_fake.writes() == []


def test_overage_on_an_inactive_meter_is_refused_before_any_write(bill, schema, stripe_fake, meter):
    import stripe
    stripe.StripeClient(stripe_fake.api_key, base_addresses={"api": stripe_fake.url}).raw_request(
        "post", "/v1/billing/meters/%s/deactivate" % meter)
    stripe_fake.reset_log()
    before = _snapshot(schema)
    res = bill("billing_plan", {"code": "pro", "prices": [{"interval": "month", "currency": "usd", "amount": 100}],
                                "quotas": [{"metric": "api_requests", "limit": 10, "mode": "overage",
                                            "overage_unit_price": "0.01"}]})
    assert res["failed"] is True and "no active Stripe billing meter" in res["msg"], res["msg"]
    assert stripe_fake.writes() == [] and _snapshot(schema) == before


def _features(stripe_fake, product_id):
    """lookup key -> attached, of every active feature in the fake (attached to the product or not)."""
    attached = {stripe_fake.get("entitlements/features", pf["_feature"])["lookup_key"]
                for pf in stripe_fake.db["product_features"].values() if pf["_product"] == product_id}
    return {f["lookup_key"]: f["lookup_key"] in attached for f in stripe_fake.objects("entitlements/features")
            if f["active"]}


TEAM = {"code": "team", "prices": [{"interval": "month", "currency": "usd", "amount": 4900}],
        "features": {"custom_domains": True, "sso": False, "support": "priority"}}


def test_features_are_entitlements_features_on_the_plans_product(bill, schema, stripe_fake):
    """Features that are on are attached to the product as Entitlements features (created once, an existing one
    adopted by its lookup key); a changed set detaches the old ones, which stay in the account; check mode and
    diff predict it; a re-run writes nothing."""
    import stripe
    client = stripe.StripeClient(stripe_fake.api_key, base_addresses={"api": stripe_fake.url})
    made_by_hand = client.raw_request("post", "/v1/entitlements/features", lookup_key="support.priority",
                                      name="Priority support").data
    res = bill("billing_plan", TEAM)
    assert res["changed"] is True, res
    product = stripe_fake.objects("products")[0]["id"]
    assert _features(stripe_fake, product) == {"custom_domains": True, "support.priority": True}
    assert stripe_fake.get("entitlements/features", made_by_hand["id"])["name"] == "Priority support"
    assert res["plans"][0]["stripe_features"] == ["custom_domains", "support.priority"]
    assert _db(schema, "team")[0]["features"] == TEAM["features"]

    changed = dict(TEAM, features={"custom_domains": False, "sso": True, "support": "standard"})
    stripe_fake.reset_log()
    res = bill("billing_plan", changed, check=True, diff=True)
    assert res["changed"] is True and stripe_fake.writes() == []
    assert res["diff"]["before"]["stripe_features"] == ["custom_domains", "support.priority"]
    assert res["diff"]["after"]["stripe_features"] == ["sso", "support.standard"]
    assert res["actions"] == [
        "create entitlement feature sso", "attach feature sso to product %s" % product,
        "create entitlement feature support.standard", "attach feature support.standard to product %s" % product,
        "detach feature custom_domains from product %s" % product,
        "detach feature support.priority from product %s" % product]
    applied = bill("billing_plan", changed, diff=True)
    assert applied["actions"] == res["actions"] and applied["diff"] == res["diff"]
    assert _features(stripe_fake, product) == {"custom_domains": False, "support.priority": False, "sso": True,
                                               "support.standard": True}
    audit = schema.execute("SELECT after FROM platform.audit_log WHERE entity = 'plan' ORDER BY id").fetchall()
    assert audit[-1]["after"]["stripe_features"] == ["sso", "support.standard"]

    stripe_fake.reset_log()
    res = bill("billing_plan", changed)
    assert res["changed"] is False and stripe_fake.writes() == [], res
    # a task without features leaves Stripe's alone, and reads none
    stripe_fake.reset_log()
    res = bill("billing_plan", {"code": "team"})
    assert res["changed"] is False and "stripe_features" not in res["plans"][0], res
    assert not [r for r in stripe_fake.reads() if "features" in r.path]


def test_a_feature_two_plans_share_is_created_once(bill, schema, stripe_fake):
    plans = [dict(TEAM, code=code) for code in ("team", "business")]
    res = bill("billing_plan", {"plans": plans})
    assert res["changed"] is True, res
    assert sorted(f["lookup_key"] for f in stripe_fake.objects("entitlements/features")) == [
        "custom_domains", "support.priority"]
    for product in stripe_fake.objects("products"):
        assert _features(stripe_fake, product["id"]) == {"custom_domains": True, "support.priority": True}
    assert bill("billing_plan", {"plans": plans})["changed"] is False


def test_a_run_stopped_before_its_attach_is_finished_without_duplicates(bill, schema, stripe_fake):
    """The feature was created, its attach refused: the next run adopts the feature and attaches it; a lost
    answer to an attach is retried under the same key and attaches once."""
    stripe_fake.fail_next(status=400, count=10, method="POST", path_prefix="/v1/products/prod_")
    res = bill("billing_plan", TEAM)
    assert res["failed"] is True, res
    assert [f["lookup_key"] for f in stripe_fake.objects("entitlements/features")] == ["custom_domains"]
    stripe_fake.faults.clear()
    stripe_fake.fail_next(drop=True, after_store=True, method="POST", path_prefix="/v1/products/prod_")
    res = bill("billing_plan", TEAM)
    assert res["changed"] is True, res["msg"]
    assert len(stripe_fake.objects("entitlements/features")) == 2
    product = stripe_fake.objects("products")[0]["id"]
    assert _features(stripe_fake, product) == {"custom_domains": True, "support.priority": True}
    assert len(stripe_fake.db["product_features"]) == 2
    assert bill("billing_plan", TEAM)["changed"] is False


def test_a_detach_whose_answer_was_lost_is_done(bill, schema, stripe_fake):
    """The product feature was deleted and the answer lost: the retried DELETE finds it gone, which is done."""
    assert bill("billing_plan", TEAM)["changed"] is True
    fewer = dict(TEAM, features={"custom_domains": True})
    stripe_fake.fail_next(drop=True, after_store=True, method="DELETE", path_prefix="/v1/products/prod_")
    res = bill("billing_plan", fewer)
    assert res["changed"] is True and res.get("failed") is not True, res
    assert [r.method for r in stripe_fake.requests if r.path.count("/features/")] == ["DELETE", "DELETE"]
    product = stripe_fake.objects("products")[0]["id"]
    assert _features(stripe_fake, product) == {"custom_domains": True, "support.priority": False}
    assert bill("billing_plan", fewer)["changed"] is False
