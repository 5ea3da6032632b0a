"""billing_coupon against the fake Stripe server (contract test: Stripe's live API cannot be reached here)."""

from __future__ import annotations

import pytest

from conftest import stripe_runner

LAUNCH = {"key": "launch", "name": "Launch offer", "percent_off": 20, "duration": "repeating",
          "duration_in_months": 3, "promotion_codes": [{"code": "LAUNCH20"}, {"code": "PARTNER", "max_redemptions": 2}]}


run = stripe_runner("billing_coupon")


def _live(stripe_fake, kind):
    return [o for o in stripe_fake.objects(kind) if not o.get("_deleted")]


@pytest.mark.through_playbook("billing_coupon")
def test_check_create_noop(stripe_fake, run):
    res = run(LAUNCH, check=True, diff=True)
    assert res["changed"] is True and stripe_fake.writes() == [], res
    predicted = res["coupon"]
    assert predicted["id"] is None and predicted["percent_off"] == 20.0 and predicted["duration_in_months"] == 3
    assert [c["code"] for c in res["promotion_codes"]] == ["LAUNCH20", "PARTNER"]
    assert res["actions"] == ["create coupon launch", "create promotion code LAUNCH20", "create promotion code PARTNER"]

    res = run(LAUNCH, diff=True)
    assert res["changed"] is True, res
    [coupon] = _live(stripe_fake, "coupons")
    assert res["coupon"] == dict(predicted, id=coupon["id"]), res
    assert coupon["metadata"] == {"selfbase_coupon": "launch"} and coupon["percent_off"] == 20.0
    codes = sorted(stripe_fake.objects("promotion_codes"), key=lambda c: c["code"])
    assert [(c["code"], c["promotion"]["coupon"], c["max_redemptions"]) for c in codes] == [
        ("LAUNCH20", coupon["id"], None), ("PARTNER", coupon["id"], 2)]
    assert [dict(c, id=None) for c in res["promotion_codes"]] == [
        dict(c, id=None) for c in run(LAUNCH, check=True)["promotion_codes"]]

    stripe_fake.reset_log()
    res = run(LAUNCH, diff=True)
    assert res["changed"] is False and stripe_fake.writes() == [], res
    assert res["diff"]["before"] == res["diff"]["after"]
    assert res["api_calls"] == {"reads": 2, "writes": 0}


def test_name_and_metadata_change_in_place(stripe_fake, run):
    run(LAUNCH)
    [coupon] = _live(stripe_fake, "coupons")
    stripe_fake.reset_log()
    res = run(dict(LAUNCH, name="Spring offer", metadata={"campaign": "spring"}), check=True)
    assert res["changed"] is True and res["replaced"] is None and stripe_fake.writes() == []
    res = run(dict(LAUNCH, name="Spring offer", metadata={"campaign": "spring"}))
    assert res["replaced"] is None and res["coupon"]["id"] == coupon["id"], res
    assert [(w.method, w.path) for w in stripe_fake.writes()] == [("POST", "/v1/coupons/%s" % coupon["id"])]
    assert stripe_fake.get("coupons", coupon["id"])["name"] == "Spring offer"
    assert res["coupon"]["metadata"] == {"campaign": "spring"}


def test_changed_terms_make_a_new_coupon_and_move_the_codes(stripe_fake, run):
    first = run(LAUNCH)["coupon"]["id"]
    stripe_fake.reset_log()
    changed = dict(LAUNCH, percent_off=25)
    res = run(changed, check=True, diff=True)
    assert res["changed"] is True and res["replaced"] == first and stripe_fake.writes() == [], res
    assert res["actions"][:2] == ["create coupon launch to replace %s (its discount terms cannot change)" % first,
                                  "delete coupon %s" % first]
    res = run(changed)
    assert res["replaced"] == first, res
    [coupon] = _live(stripe_fake, "coupons")
    assert coupon["id"] != first and coupon["percent_off"] == 25.0
    active = [c for c in stripe_fake.promotion_codes() if c["active"]]
    assert sorted((c["code"], c["promotion"]["coupon"]) for c in active) == [
        ("LAUNCH20", coupon["id"]), ("PARTNER", coupon["id"])]
    assert run(changed)["changed"] is False


def test_changed_code_restriction_deactivates_and_recreates(stripe_fake, run):
    run(LAUNCH)
    old = [c for c in stripe_fake.objects("promotion_codes") if c["code"] == "PARTNER"][0]
    later = dict(LAUNCH, promotion_codes=[{"code": "LAUNCH20"}, {"code": "PARTNER", "max_redemptions": 5}])
    res = run(later)
    assert res["actions"] == ["deactivate promotion code PARTNER (%s)" % old["id"], "create promotion code PARTNER"]
    assert [(c["code"], c["active"], c["max_redemptions"]) for c in res["promotion_codes"]] == [
        ("LAUNCH20", True, None), ("PARTNER", True, 5), ("PARTNER", False, 2)]
    assert run(later)["changed"] is False
    # an unlisted code is deactivated, and comes back when listed again
    res = run(dict(LAUNCH, promotion_codes=[{"code": "PARTNER", "max_redemptions": 5}]))
    assert [(c["code"], c["active"]) for c in res["promotion_codes"]][0] == ("LAUNCH20", False), res
    res = run(later)
    assert res["actions"] == ["activate promotion code LAUNCH20 (%s)" % res["promotion_codes"][0]["id"]], res


def test_amount_coupon_adds_a_currency_in_place(stripe_fake, run):
    base = {"key": "sorry", "amount_off": 1000, "currency": "usd"}
    first = run(base)["coupon"]["id"]
    res = run(dict(base, currency_options={"eur": 900}))
    assert res["replaced"] is None and res["coupon"]["currency_options"] == {"eur": 900}, res
    assert stripe_fake.get("coupons", first)["currency_options"] == {"eur": {"amount_off": 900}}
    res = run(dict(base, currency_options={"eur": 800}))
    assert res["replaced"] == first, res


def test_plans_resolve_to_products(stripe_fake, run):
    res = run({"key": "pro-only", "percent_off": 10, "plans": ["pro"]})
    assert res["failed"] and res["msg"].startswith("Stripe coupon pro-only: plans: no Stripe product"), res
    assert stripe_fake.writes() == []
    import stripe  # noqa: PLC0415
    client = stripe.StripeClient(stripe_fake.api_key, base_addresses={"api": stripe_fake.url})
    product = client.raw_request("post", "/v1/products", name="Pro", metadata={"plan_code": "pro"}).data
    res = run({"key": "pro-only", "percent_off": 10, "plans": ["pro"]})
    assert res["coupon"]["plans"] == ["pro"], res
    [coupon] = _live(stripe_fake, "coupons")
    assert coupon["applies_to"] == {"products": [product["id"]]}
    assert run({"key": "pro-only", "percent_off": 10, "plans": ["pro"]})["changed"] is False


def test_absent_deletes_the_coupon(stripe_fake, run):
    first = run(LAUNCH)["coupon"]["id"]
    stripe_fake.reset_log()
    res = run({"key": "launch", "state": "absent"}, check=True)
    assert res["changed"] is True and res["actions"] == ["delete coupon %s" % first] and stripe_fake.writes() == []
    res = run({"key": "launch", "state": "absent"})
    assert res["changed"] is True and res["coupon"] == {}
    assert _live(stripe_fake, "coupons") == []
    assert not any(c["active"] for c in stripe_fake.promotion_codes())
    assert run({"key": "launch", "state": "absent"})["changed"] is False


@pytest.mark.parametrize("args, message", [
    ({"percent_off": 20, "amount_off": 100}, "parameters are mutually exclusive: percent_off|amount_off"),
    ({}, "percent_off: give exactly one of percent_off or amount_off"),
    ({"percent_off": 120}, "percent_off: must be greater than 0 and at most 100"),
    ({"amount_off": 100}, "currency: required with amount_off"),
    ({"amount_off": 100, "currency": "usx"}, "currency: unknown currency"),
    ({"percent_off": 5, "currency": "usd"}, "currency: only with amount_off"),
    ({"percent_off": 5, "duration": "repeating"}, "duration_in_months: required with duration=repeating"),
    ({"percent_off": 5, "duration_in_months": 2}, "duration_in_months: required with duration=repeating, and only"),
    ({"percent_off": 5, "name": "x" * 41}, "name: must be 1 to 40 characters"),
    ({"percent_off": 5, "redeem_by": "soon"}, "redeem_by: must be an ISO 8601 date"),
    ({"percent_off": 5, "promotion_codes": [{"code": "NOT-OK"}]}, "promotion_codes[0].code: 'NOT-OK' must be"),
    ({"percent_off": 5, "promotion_codes": [{"code": "A1"}, {"code": "a1"}]}, "promotion_codes[1].code: a1 is listed"),
    ({"percent_off": 5, "promotion_codes": [{"code": "A1", "expires_at": "2020-01-01"}]},
     "promotion_codes[0].expires_at: 2020-01-01T00:00:00+00:00 has passed"),
    ({"percent_off": 5, "redeem_by": "2090-01-01", "promotion_codes": [{"code": "A1", "expires_at": "2091-01-01"}]},
     "promotion_codes[0].expires_at: must not be after the coupon's redeem_by"),
    ({"percent_off": 5, "promotion_codes": [{"code": "A1", "minimum_amount": 500}]},
     "promotion_codes[0].minimum_amount_currency: give minimum_amount and minimum_amount_currency together"),
])
def test_bad_input_names_the_field_before_any_call(stripe_fake, run, args, message):
    res = run(dict({"key": "bad"}, **args))
    assert res["failed"] and message in res["msg"], res
    assert stripe_fake.requests == [] or stripe_fake.writes() == []


def test_the_fake_refuses_what_stripe_refuses(stripe_fake):
    """The fake's rules, each shown against a request that the module never sends."""
    import stripe  # noqa: PLC0415
    client = stripe.StripeClient(stripe_fake.api_key, base_addresses={"api": stripe_fake.url})

    def refused(path, **params):
        with pytest.raises(stripe.InvalidRequestError) as err:
            client.raw_request("post", path, **params)
        return err.value.user_message

    coupon = client.raw_request("post", "/v1/coupons", percent_off=10, redeem_by=stripe_fake.now() + 3600).data
    assert "unknown parameter: percent_off" in refused("/v1/coupons/%s" % coupon["id"], percent_off=5)
    assert "exactly one of amount_off or percent_off" in refused("/v1/coupons", percent_off=5, amount_off=5,
                                                                 currency="usd")
    assert "duration_in_months" in refused("/v1/coupons", percent_off=5, duration="repeating")
    promo = dict(type="coupon", coupon=coupon["id"])
    assert "after the coupon's redeem_by" in refused("/v1/promotion_codes", promotion=promo, code="X1",
                                                     expires_at=stripe_fake.now() + 7200)
    client.raw_request("post", "/v1/promotion_codes", promotion=promo, code="X1")
    assert "already exists" in refused("/v1/promotion_codes", promotion=promo, code="x1")
    assert "Invalid code" in refused("/v1/promotion_codes", promotion=promo, code="X-1")
    stripe_fake.advance(7200)  # past redeem_by: the coupon is no longer valid, nor its code
    assert "no longer valid" in refused("/v1/promotion_codes", promotion=promo, code="X2")
    [code] = stripe_fake.objects("promotion_codes")
    assert client.raw_request("get", "/v1/promotion_codes/%s" % code["id"]).data["active"] is False
    assert "cannot be reactivated" in refused("/v1/promotion_codes/%s" % code["id"], active="true")
