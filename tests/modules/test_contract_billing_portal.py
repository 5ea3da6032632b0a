"""billing_portal against the fake Stripe server (contract test: Stripe's live API cannot be reached here)."""

from __future__ import annotations

import pytest
import stripe

from conftest import stripe_runner

run = stripe_runner("billing_portal")

PORTAL = {"key": "default", "headline": "Manage your subscription", "privacy_policy_url": "https://example.com/p",
          "default_return_url": "https://app.example.com/billing", "plans": ["starter", "pro"],
          "plan_changes": {"allowed": ["price", "promotion_code"], "downgrades_at_period_end": True},
          "cancellation": {"reasons": ["too_expensive", "other"]}}


def _client(fake):
    return stripe.StripeClient(fake.api_key, base_addresses={"api": fake.url})


@pytest.fixture()
def plans(stripe_fake):
    """Products of the starter and pro plans as billing_plan makes them: monthly and yearly base prices, and a
    metered overage price that the portal must leave out. Returns code -> (product, base prices)."""
    client, out = _client(stripe_fake), {}
    meter = client.raw_request("post", "/v1/billing/meters", display_name="API requests", event_name="api_requests",
                               default_aggregation={"formula": "sum"}).data
    for code, amount in (("starter", 900), ("pro", 4900)):
        product = client.raw_request("post", "/v1/products", name=code, metadata={"plan_code": code}).data
        prices = sorted(client.raw_request("post", "/v1/prices", product=product["id"], currency="usd",
                                           unit_amount=amount * n, lookup_key="%s_%s_usd" % (code, interval),
                                           recurring={"interval": interval}).data["id"]
                        for interval, n in (("month", 1), ("year", 10)))
        client.raw_request("post", "/v1/prices", product=product["id"], currency="usd", unit_amount_decimal="0.01",
                           lookup_key="%s_month_usd.api_requests" % code,
                           recurring={"interval": "month", "usage_type": "metered", "meter": meter["id"]})
        out[code] = (product["id"], prices)
    stripe_fake.reset_log()
    return out


@pytest.mark.through_playbook("billing_portal")
def test_check_create_noop(stripe_fake, run, plans):
    res = run(PORTAL, check=True, diff=True)
    assert res["changed"] is True and stripe_fake.writes() == [], res
    predicted = res["configuration"]
    assert predicted["id"] is None and predicted["plans"] == ["pro", "starter"], predicted
    assert res["actions"] == ["create portal configuration default"]

    res = run(PORTAL, diff=True)
    assert res["changed"] is True, res
    [config] = stripe_fake.objects("billing_portal/configurations")
    assert res["configuration"] == dict(predicted, id=config["id"]), res
    assert config["metadata"] == {"selfbase_portal": "default"}
    update = config["features"]["subscription_update"]
    # each plan's base prices, never its metered overage price
    assert sorted((e["product"], e["prices"]) for e in update["products"]) == sorted(
        (product, prices) for product, prices in plans.values())
    assert update["enabled"] and update["default_allowed_updates"] == ["price", "promotion_code"]
    assert update["schedule_at_period_end"] == {"conditions": [{"type": "decreasing_item_amount"},
                                                               {"type": "shortening_interval"}]}
    cancel = config["features"]["subscription_cancel"]
    assert cancel["enabled"] and cancel["mode"] == "at_period_end" and cancel["proration_behavior"] == "none"
    assert cancel["cancellation_reason"] == {"enabled": True, "options": ["other", "too_expensive"]}
    assert config["business_profile"]["privacy_policy_url"] == "https://example.com/p"

    stripe_fake.reset_log()
    res = run(PORTAL, diff=True)
    assert res["changed"] is False and stripe_fake.writes() == [], res
    assert res["diff"]["before"] == res["diff"]["after"]


def test_a_change_updates_in_place_and_check_mode_predicts_it(stripe_fake, run, plans):
    first = run(PORTAL)["configuration"]["id"]
    changed = dict(PORTAL, plans=["pro"], cancellation={"mode": "immediately", "prorate": True},
                   customer_update=["email"], invoice_history=False)
    stripe_fake.reset_log()
    predicted = run(changed, check=True)
    assert predicted["changed"] is True and stripe_fake.writes() == [], predicted
    assert predicted["actions"] == ["update portal configuration %s" % first]
    res = run(changed)
    assert [(w.method, w.path) for w in stripe_fake.writes()] == [
        ("POST", "/v1/billing_portal/configurations/%s" % first)]
    assert res["configuration"] == predicted["configuration"], (res, predicted)
    config = stripe_fake.get("billing_portal/configurations", first)
    assert [e["product"] for e in config["features"]["subscription_update"]["products"]] == [plans["pro"][0]]
    assert config["features"]["subscription_cancel"]["proration_behavior"] == "create_prorations"
    assert config["features"]["customer_update"] == {"allowed_updates": ["email"], "enabled": True}
    assert config["features"]["invoice_history"]["enabled"] is False
    # the privacy link, left out, is kept (Stripe cannot unset it)
    assert run(dict(changed, privacy_policy_url=None))["changed"] is False


def test_plan_changes_can_be_turned_off(stripe_fake, run, plans):
    first = run(dict(PORTAL, plan_changes={"allowed": ["price"]}))["configuration"]["id"]
    res = run(dict(PORTAL, plans=[], plan_changes={}))
    assert res["changed"] is True and res["configuration"]["plans"] == [], res
    assert stripe_fake.get("billing_portal/configurations", first)["features"]["subscription_update"]["enabled"] \
        is False
    assert run(dict(PORTAL, plans=[], plan_changes={}))["changed"] is False


@pytest.mark.parametrize("args,field", [
    ({"plans": ["starter", "gold"]}, "plans: no Stripe product has metadata.plan_code gold"),
    ({"plans": ["pro", "pro"]}, "plans: pro listed twice"),
    ({"plans": ["p%d" % i for i in range(11)]}, "plans: Stripe allows at most 10"),
    ({"cancellation": {"prorate": True}}, "cancellation.prorate:"),
    ({"default_return_url": "app.example.com"}, "default_return_url: must be an http(s) URL"),
    ({"key": "Default"}, "key:"),
    ({"metadata": {"selfbase_portal": "x"}}, "metadata:"),
    ({"plan_changes": {"allowed": []}}, "plan_changes.allowed:"),
])
def test_bad_input_is_refused_by_field_before_any_write(stripe_fake, run, plans, args, field):
    res = run(dict(PORTAL, **args))
    assert res.get("failed") and field in res["msg"], res
    assert stripe_fake.writes() == []


def test_a_plan_without_a_base_price_is_refused(stripe_fake, run, plans):
    _client(stripe_fake).raw_request("post", "/v1/products", name="Gold", metadata={"plan_code": "gold"})
    res = run(dict(PORTAL, plans=["gold"]))
    assert res.get("failed") and "plans: gold has no active recurring price" in res["msg"], res


def test_downgrades_at_period_end_cannot_be_turned_off(stripe_fake, run, plans):
    run(PORTAL)
    stripe_fake.reset_log()
    res = run(dict(PORTAL, plan_changes={"allowed": ["price", "promotion_code"]}))
    assert res.get("failed") and "plan_changes.downgrades_at_period_end:" in res["msg"], res
    assert stripe_fake.writes() == []


def test_absent_deactivates_and_present_reactivates(stripe_fake, run, plans):
    first = run(PORTAL)["configuration"]["id"]
    res = run({"key": "default", "state": "absent"}, check=True)
    assert res["changed"] is True and res["configuration"]["active"] is False and stripe_fake.get(
        "billing_portal/configurations", first)["active"] is True
    res = run({"key": "default", "state": "absent"})
    assert res["changed"] is True and stripe_fake.get("billing_portal/configurations", first)["active"] is False
    assert run({"key": "default", "state": "absent"})["changed"] is False
    res = run(PORTAL)
    assert res["changed"] is True and res["configuration"]["id"] == first and res["configuration"]["active"] is True
    assert len(stripe_fake.objects("billing_portal/configurations")) == 1


# The fake refuses what Stripe refuses (the module never sends these; a fake that took them would hide a defect).
@pytest.mark.parametrize("features,param", [
    ({"subscription_update": {"enabled": True, "default_allowed_updates": ["price"]}},
     "features[subscription_update][products]"),
    ({"subscription_cancel": {"enabled": True, "mode": "at_period_end", "proration_behavior": "create_prorations"}},
     "features[subscription_cancel][proration_behavior]"),
    ({"subscription_cancel": {"enabled": True, "mode": "immediately", "proration_behavior": "always_invoice"}},
     "features[subscription_cancel][proration_behavior]"),
    ({"subscription_cancel": {"enabled": True, "cancellation_reason": {"enabled": True}}},
     "features[subscription_cancel][cancellation_reason][options]"),
    ({"customer_update": {"enabled": True, "allowed_updates": ["birthday"]}},
     "features[customer_update][allowed_updates][0]"),
])
def test_the_fake_refuses_what_stripe_refuses(stripe_fake, features, param):
    with pytest.raises(stripe.InvalidRequestError) as err:
        _client(stripe_fake).raw_request("post", "/v1/billing_portal/configurations", features=features)
    assert err.value.param == param, err.value


def test_the_fake_refuses_foreign_and_one_time_prices(stripe_fake, plans):
    client = _client(stripe_fake)
    (starter, starter_prices), (pro, _pro_prices) = plans["starter"], plans["pro"]
    once = client.raw_request("post", "/v1/prices", product=pro, currency="usd", unit_amount=100).data["id"]
    for product, price in ((pro, starter_prices[0]), (pro, once)):
        with pytest.raises(stripe.InvalidRequestError) as err:
            client.raw_request("post", "/v1/billing_portal/configurations", features={"subscription_update": {
                "enabled": True, "default_allowed_updates": ["price"],
                "products": [{"product": product, "prices": [price]}]}})
        assert err.value.param == "features[subscription_update][products][0][prices][0]", err.value
    too_many = [{"product": starter, "prices": [starter_prices[0]]}] * 11
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.raw_request("post", "/v1/billing_portal/configurations", features={"subscription_update": {
            "enabled": True, "default_allowed_updates": ["price"], "products": too_many}})
    assert err.value.param == "features[subscription_update][products]"
