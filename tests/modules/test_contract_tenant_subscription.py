"""tenant_subscription against a real PostgreSQL server and the stripe_fake Stripe (contract test)."""

from __future__ import annotations

import datetime

import pytest
import stripe

PLANS = [
    {"code": "starter", "name": "Starter", "trial_days": 7,
     "prices": [{"interval": "month", "currency": "usd", "amount": 1000},
                {"interval": "year", "currency": "usd", "amount": 10000}]},
    {"code": "pro", "name": "Pro",
     "prices": [{"interval": "month", "currency": "usd", "amount": 2900},
                {"interval": "year", "currency": "usd", "amount": 29000}],
     "quotas": [{"metric": "api_requests", "limit": "1M", "mode": "overage", "overage_unit_price": "0.0001"}]},
    {"code": "euro", "name": "Euro", "prices": [{"interval": "month", "currency": "eur", "amount": 900}]},
    {"code": "multi", "name": "Multi", "prices": [{"interval": "month", "currency": "usd", "amount": 900},
                                                  {"interval": "month", "currency": "eur", "amount": 800}]},
]


@pytest.fixture()
def bill(run, schema, stripe_fake):
    def call(module, args, **kw):
        return run(module, dict(args, api_key=stripe_fake.api_key, api_base=stripe_fake.url), **kw)
    return call


@pytest.fixture()
def world(bill, schema, stripe_fake):
    """A meter, four plans (through billing_plan) and the tenant acme on starter, monthly."""
    client = stripe.StripeClient(stripe_fake.api_key, base_addresses={"api": stripe_fake.url})
    client.raw_request("post", "/v1/billing/meters", display_name="API requests", event_name="api_requests",
                       default_aggregation={"formula": "sum"})
    res = bill("billing_plan", {"plans": PLANS})
    assert res["changed"] is True, res
    schema.execute("INSERT INTO platform.tenants (slug, name, plan_code, billing_cycle) "
                   "VALUES ('acme', 'ACME', 'starter', 'month')")
    stripe_fake.reset_log()
    return schema


def _price(conn, plan, cycle, currency="usd"):
    return conn.execute("SELECT stripe_price_id FROM platform.plan_prices WHERE plan_code = %s AND billing_cycle = %s "
                        "AND currency = %s", (plan, cycle, currency)).fetchone()["stripe_price_id"]


def _tenant(conn, slug="acme"):
    return conn.execute("SELECT * FROM platform.tenants WHERE slug = %s", (slug,)).fetchone()


def _mirror(conn, slug="acme"):
    return conn.execute("SELECT s.* FROM platform.subscriptions s JOIN platform.tenants t ON t.id = s.tenant_id "
                        "WHERE t.slug = %s", (slug,)).fetchone()


def _snapshot(conn):
    return [conn.execute(f"SELECT * FROM platform.{t} ORDER BY 1").fetchall()
            for t in ("tenants", "subscriptions", "audit_log")]


def _items(stripe_fake, sub_id):
    return [(i["id"], i["price"]["id"]) for i in stripe_fake.get("subscriptions", sub_id)["items"]["data"]]


@pytest.mark.through_playbook("tenant_subscription")
def test_subscribe_check_real_rerun(bill, world, stripe_fake):
    conn = world
    res = bill("tenant_subscription", {"tenant": "acme"}, check=True, diff=True)
    assert res["changed"] is True, res
    assert stripe_fake.writes() == []
    assert [r.path for r in stripe_fake.reads()] == ["/v1/customers/search"]
    assert res["actions"] == ["create customer for acme",
                              "create subscription on %s with a 7-day trial" % _price(conn, "starter", "month")]
    assert res["diff"]["before"] == {}
    assert res["diff"]["after"]["status"] == "trialing"
    assert _mirror(conn) is None and _tenant(conn)["stripe_customer_id"] is None

    stripe_fake.reset_log()
    res = bill("tenant_subscription", {"tenant": "acme"}, diff=True)
    assert res["changed"] is True, res
    assert [w.path for w in stripe_fake.writes()] == ["/v1/customers", "/v1/subscriptions"]
    customers = stripe_fake.objects("customers")
    tenant = _tenant(conn)
    assert [(c["name"], c["metadata"]["tenant_id"]) for c in customers] == [("ACME", str(tenant["id"]))]
    [sub] = stripe_fake.objects("subscriptions")
    assert sub["status"] == "trialing" and sub["customer"] == customers[0]["id"]
    assert [i["price"]["id"] for i in sub["items"]["data"]] == [_price(conn, "starter", "month")]
    mirror = _mirror(conn)
    assert (mirror["stripe_subscription_id"], mirror["stripe_customer_id"], mirror["status"], mirror["plan_code"],
            mirror["billing_cycle"], mirror["currency"]) == (sub["id"], customers[0]["id"], "trialing", "starter",
                                                             "month", "usd")
    assert mirror["stripe_item_id"] == sub["items"]["data"][0]["id"]
    assert mirror["trial_end"] - mirror["current_period_start"] == datetime.timedelta(days=7)
    assert (tenant["stripe_customer_id"], tenant["status"]) == (customers[0]["id"], "trial")
    assert tenant["trial_ends_at"] == mirror["trial_end"]
    assert res["diff"]["after"] == res["subscription"]

    before = _snapshot(conn)
    stripe_fake.reset_log()
    res = bill("tenant_subscription", {"tenant": "acme"}, check=True)
    assert res["changed"] is False, res
    res = bill("tenant_subscription", {"tenant": "acme"})
    assert res["changed"] is False, res
    assert stripe_fake.writes() == [] and res["api_calls"] == {"reads": 2, "writes": 0}
    assert _snapshot(conn) == before


def test_plan_swap_updates_the_item(bill, world, stripe_fake):
    conn = world
    assert bill("tenant_subscription", {"tenant": "acme"})["changed"] is True
    sub_id = _mirror(conn)["stripe_subscription_id"]
    [(item, _old)] = _items(stripe_fake, sub_id)

    stripe_fake.reset_log()
    res = bill("tenant_subscription", {"tenant": "acme", "plan": "pro", "proration_behavior": "none"}, check=True)
    assert res["changed"] is True and stripe_fake.writes() == []
    res = bill("tenant_subscription", {"tenant": "acme", "plan": "pro", "proration_behavior": "none"}, diff=True)
    assert res["changed"] is True, res
    [write] = stripe_fake.writes()
    metered = conn.execute("SELECT stripe_price_id FROM platform.plan_overage_prices WHERE plan_code = 'pro' "
                           "AND billing_cycle = 'month'").fetchone()["stripe_price_id"]
    assert write.path == "/v1/subscriptions/%s" % sub_id
    assert {k: v for k, v in write.params.items() if k.startswith("items") or k == "proration_behavior"} == {
        "items[0][id]": item, "items[0][price]": _price(conn, "pro", "month"), "items[1][price]": metered,
        "proration_behavior": "none"}
    items = _items(stripe_fake, sub_id)
    assert items[0] == (item, _price(conn, "pro", "month"))       # the same item, never a second licensed one
    assert [p for _i, p in items[1:]] == [metered]
    mirror = _mirror(conn)
    assert (mirror["plan_code"], mirror["stripe_price_id"], mirror["stripe_item_id"]) == \
        ("pro", _price(conn, "pro", "month"), item)
    assert mirror["metered_items"] == {"api_requests": {"item": items[1][0], "price": metered}}
    assert _tenant(conn)["plan_code"] == "pro"
    assert len(stripe_fake.objects("subscriptions")) == 1

    stripe_fake.reset_log()
    assert bill("tenant_subscription", {"tenant": "acme", "plan": "pro"})["changed"] is False
    assert stripe_fake.writes() == []

    # yearly: the licensed item keeps its id, the monthly metered item makes way for the yearly one
    res = bill("tenant_subscription", {"tenant": "acme", "billing_cycle": "year"})
    assert res["changed"] is True, res
    items = _items(stripe_fake, sub_id)
    yearly_metered = conn.execute("SELECT stripe_price_id FROM platform.plan_overage_prices WHERE plan_code = 'pro' "
                                  "AND billing_cycle = 'year'").fetchone()["stripe_price_id"]
    assert items[0] == (item, _price(conn, "pro", "year"))
    assert [p for _i, p in items[1:]] == [yearly_metered]
    assert (_tenant(conn)["billing_cycle"], _mirror(conn)["billing_cycle"]) == ("year", "year")


def test_cancel_at_period_end_then_resume_then_now(bill, world, stripe_fake):
    conn = world
    assert bill("tenant_subscription", {"tenant": "acme"})["changed"] is True
    sub_id = _mirror(conn)["stripe_subscription_id"]
    res = bill("tenant_subscription", {"tenant": "acme", "cancel": "at_period_end"})
    assert res["changed"] is True
    assert stripe_fake.get("subscriptions", sub_id)["cancel_at_period_end"] is True
    assert _mirror(conn)["cancel_at_period_end"] is True
    stripe_fake.reset_log()
    assert bill("tenant_subscription", {"tenant": "acme", "cancel": "at_period_end"})["changed"] is False
    assert stripe_fake.writes() == []
    assert bill("tenant_subscription", {"tenant": "acme"})["changed"] is True
    assert stripe_fake.get("subscriptions", sub_id)["cancel_at_period_end"] is False

    stripe_fake.reset_log()
    res = bill("tenant_subscription", {"tenant": "acme", "state": "absent"}, check=True)
    assert res["changed"] is True and stripe_fake.writes() == []
    res = bill("tenant_subscription", {"tenant": "acme", "state": "absent"})
    assert res["changed"] is True, res
    assert [(w.method, w.path) for w in stripe_fake.writes()] == [("DELETE", "/v1/subscriptions/%s" % sub_id)]
    assert stripe_fake.get("subscriptions", sub_id)["status"] == "canceled"
    assert _mirror(conn)["status"] == "canceled" and _mirror(conn)["canceled_at"] is not None
    assert _tenant(conn)["status"] == "canceled"
    stripe_fake.reset_log()
    assert bill("tenant_subscription", {"tenant": "acme", "state": "absent"})["changed"] is False
    assert stripe_fake.writes() == []
    assert len(stripe_fake.objects("customers")) == 1

    # subscribing again: a new subscription, without a second trial, so paid now with the saved card
    stripe_fake.attach_payment_method(stripe_fake.objects("customers")[0]["id"])
    res = bill("tenant_subscription", {"tenant": "acme"})
    assert res["changed"] is True, res
    assert res["subscription"]["status"] == "active"
    assert len(stripe_fake.objects("subscriptions")) == 2 and len(stripe_fake.objects("customers")) == 1


def test_crash_after_customer_create_finds_it_again(bill, world, stripe_fake):
    conn = world
    # the customer create is stored but answered with a 500 (the retry replays it); the subscription create
    # then gets a 500 that Stripe stores under its key, so the run dies between the Stripe customer and the
    # database write
    stripe_fake.fail_next(status=500, after_store=True, method="POST", path_prefix="/v1/customers")
    stripe_fake.fail_next(status=500, count=10, method="POST", path_prefix="/v1/subscriptions")
    res = bill("tenant_subscription", {"tenant": "acme"})
    assert res["failed"] is True
    assert len(stripe_fake.objects("customers")) == 1 and stripe_fake.objects("subscriptions") == []
    assert _tenant(conn)["stripe_customer_id"] is None
    stripe_fake.faults.clear()

    stripe_fake.reset_log()
    res = bill("tenant_subscription", {"tenant": "acme"})
    assert res["changed"] is True, res
    # the same key replays the stored 500, and the next key of the chain creates the subscription
    assert [(w.path, w.status, w.replayed) for w in stripe_fake.writes()] == [
        ("/v1/subscriptions", 500, True), ("/v1/subscriptions", 200, False)]
    assert len(stripe_fake.objects("customers")) == 1 and len(stripe_fake.objects("subscriptions")) == 1
    assert _tenant(conn)["stripe_customer_id"] == stripe_fake.objects("customers")[0]["id"]


@pytest.mark.parametrize("args, field", [
    ({"tenant": "nobody"}, "tenant"),
    ({"tenant": "acme", "plan": "nope"}, "plan"),
    ({"tenant": "acme", "plan": "euro", "billing_cycle": "year"}, "billing_cycle"),
    ({"tenant": "acme", "plan": "multi"}, "currency"),
    ({"tenant": "acme", "currency": "eur"}, "currency"),
    ({"tenant": "acme", "currency": "xyz"}, "currency"),
    ({"tenant": "acme", "trial_days": 1000}, "trial_days"),
])
def test_bad_input_fails_before_any_write(bill, world, stripe_fake, args, field):
    before = _snapshot(world)
    res = bill("tenant_subscription", args)
    assert res["failed"] is True
    assert res["msg"].startswith(field + ":"), res["msg"]
    assert stripe_fake.writes() == []
    assert _snapshot(world) == before


def test_tenant_cycle_without_price(bill, world, stripe_fake):
    """The plan has no price for the tenant's own billing cycle."""
    world.execute("UPDATE platform.tenants SET plan_code = 'euro', billing_cycle = 'year' WHERE slug = 'acme'")
    before = _snapshot(world)
    res = bill("tenant_subscription", {"tenant": "acme"})
    assert res["failed"] is True
    assert res["msg"].startswith("billing_cycle: plan euro has no active Stripe price for the year cycle"), res["msg"]
    assert stripe_fake.writes() == [] and _snapshot(world) == before


# Payment states (the fake follows Stripe: no payment method and no trial means incomplete) ---------------------


def _on_pro(conn):
    conn.execute("UPDATE platform.tenants SET plan_code = 'pro' WHERE slug = 'acme'")  # pro has no trial


def test_error_if_incomplete_without_payment_method_is_refused_before_any_write(bill, world, stripe_fake):
    _on_pro(world)
    before = _snapshot(world)
    for check in (True, False):  # check mode predicts the refusal exactly
        res = bill("tenant_subscription", {"tenant": "acme"}, check=check)
        assert res["failed"] is True and res["msg"].startswith("payment_behavior:"), res["msg"]
        assert "no default payment method" in res["msg"]
    assert stripe_fake.writes() == [] and _snapshot(world) == before


def test_allow_incomplete_creates_one_incomplete_subscription_until_it_expires(bill, world, stripe_fake):
    conn = world
    _on_pro(conn)
    args = {"tenant": "acme", "payment_behavior": "allow_incomplete"}
    predicted = bill("tenant_subscription", args, check=True, diff=True)
    assert predicted["diff"]["after"]["status"] == "incomplete", predicted
    res = bill("tenant_subscription", args)
    assert res["changed"] is True and res["subscription"]["status"] == "incomplete", res
    sub_id = res["subscription"]["stripe_subscription_id"]
    assert stripe_fake.writes("/v1/subscriptions")[0].params["payment_behavior"] == "allow_incomplete"
    assert (_mirror(conn)["status"], _tenant(conn)["status"]) == ("incomplete", "past_due")
    # while it is incomplete, no run creates a second one
    stripe_fake.reset_log()
    assert bill("tenant_subscription", args)["changed"] is False
    assert stripe_fake.writes() == [] and len(stripe_fake.objects("subscriptions")) == 1
    # 23 hours unpaid: Stripe expires it; the mirror follows, and the next run subscribes again
    stripe_fake.advance(23 * 3600)
    assert stripe_fake.get("subscriptions", sub_id)["status"] == "incomplete_expired"
    res = bill("tenant_subscription", args)
    assert res["changed"] is True and res["subscription"]["stripe_subscription_id"] != sub_id
    assert len(stripe_fake.objects("subscriptions")) == 2


@pytest.mark.parametrize("args,fields", [
    ({"plan": "starter"}, "plan"),
    ({"cancel": "at_period_end"}, "cancel"),
    ({"collection_method": "send_invoice", "days_until_due": 14}, "collection_method, days_until_due"),
])
def test_an_incomplete_subscription_changes_only_its_metadata(bill, world, stripe_fake, args, fields):
    """Stripe refuses every change but metadata (and default_source) to an incomplete subscription: the module
    refuses it first, naming the options, in check mode too; cancelling it stays possible."""
    conn = world
    _on_pro(conn)
    sub_id = bill("tenant_subscription", {"tenant": "acme", "payment_behavior": "allow_incomplete"}
                  )["subscription"]["stripe_subscription_id"]
    first = stripe_fake.get("invoices", stripe_fake.get("subscriptions", sub_id)["latest_invoice"])
    assert (first["status"], first["billing_reason"]) == ("open", "subscription_create")
    before = _snapshot(conn)
    stripe_fake.reset_log()
    for check in (True, False):
        res = bill("tenant_subscription", dict(args, tenant="acme", payment_behavior="allow_incomplete"), check=check)
        assert res["failed"] is True and res["msg"].startswith(fields + ": subscription " + sub_id), res["msg"]
        assert "incomplete" in res["msg"] and "cancel=immediately" in res["msg"]
    assert stripe_fake.writes() == [] and _snapshot(conn) == before
    # without the module's check, Stripe (the fake, as strict) refuses the update the module would send
    client = stripe.StripeClient(stripe_fake.api_key, base_addresses={"api": stripe_fake.url})
    with pytest.raises(stripe.InvalidRequestError, match="only update its metadata"):
        client.raw_request("post", "/v1/subscriptions/%s" % sub_id, cancel_at_period_end=True)
    client.raw_request("post", "/v1/subscriptions/%s" % sub_id, metadata={"note": "allowed"})
    res = bill("tenant_subscription", {"tenant": "acme", "cancel": "immediately"})
    assert res["changed"] is True and stripe_fake.get("subscriptions", sub_id)["status"] == "canceled"


def test_with_a_payment_method_the_subscription_starts_active(bill, world, stripe_fake):
    conn = world
    _on_pro(conn)
    res = bill("tenant_subscription", {"tenant": "acme", "payment_behavior": "allow_incomplete"})
    customer = res["subscription"]["stripe_customer_id"]
    bill("tenant_subscription", {"tenant": "acme", "cancel": "immediately"})
    stripe_fake.attach_payment_method(customer)
    predicted = bill("tenant_subscription", {"tenant": "acme"}, check=True, diff=True)
    assert predicted["diff"]["after"]["status"] == "active"
    res = bill("tenant_subscription", {"tenant": "acme"})
    assert res["subscription"]["status"] == "active" and _tenant(conn)["status"] == "active"


def test_a_declined_first_payment_is_not_replayed_once_the_customer_saved_another_card(bill, world, stripe_fake):
    """Stripe keeps a request's answer under its idempotency key for 24 hours, a 402 included: a run retried after
    the customer replaced a declined card must not send the same key again."""
    conn = world
    _on_pro(conn)
    customer = bill("tenant_subscription", {"tenant": "acme", "payment_behavior": "allow_incomplete"}
                    )["subscription"]["stripe_customer_id"]
    bill("tenant_subscription", {"tenant": "acme", "cancel": "immediately"})
    stripe_fake.attach_payment_method(customer, last4="0002", declines=True)
    stripe_fake.reset_log()
    res = bill("tenant_subscription", {"tenant": "acme"})
    assert res["failed"] is True and "card was declined" in res["msg"], res
    assert [w.status for w in stripe_fake.writes("/v1/subscriptions")] == [402]
    # the defect this guards against: Stripe answers the same request under the same key with the stored 402,
    # even once the customer's new card would pay
    client = stripe.StripeClient(stripe_fake.api_key, base_addresses={"api": stripe_fake.url})
    ask = dict(customer=customer, payment_behavior="error_if_incomplete", items=[{"price": _price(conn, "pro", "month")}])
    with pytest.raises(stripe.CardError):
        client.raw_request("post", "/v1/subscriptions", **ask, idempotency_key="same-key")
    stripe_fake.attach_payment_method(customer)  # a card that pays, now the default
    stripe_fake.reset_log()
    with pytest.raises(stripe.CardError):
        client.raw_request("post", "/v1/subscriptions", **ask, idempotency_key="same-key")
    assert [w.replayed for w in stripe_fake.writes()] == [True]
    res = bill("tenant_subscription", {"tenant": "acme"})
    assert res["changed"] is True and res["subscription"]["status"] == "active", res
    assert _tenant(conn)["status"] == "active"


@pytest.mark.parametrize("status,tenant_status", [
    ("past_due", "past_due"), ("unpaid", "past_due"), ("paused", "past_due"), ("canceled", "canceled")])
def test_dunning_states_reach_the_mirror_and_the_tenant(bill, world, stripe_fake, status, tenant_status):
    conn = world
    sub_id = bill("tenant_subscription", {"tenant": "acme"})["subscription"]["stripe_subscription_id"]
    stripe_fake.set_status(sub_id, status)
    stripe_fake.reset_log()
    res = bill("tenant_subscription", {"tenant": "acme", "cancel": "none"} if status != "canceled" else
               {"tenant": "acme", "state": "absent"})
    assert res["changed"] is True, res
    assert (_mirror(conn)["status"], _tenant(conn)["status"]) == (status, tenant_status)
    assert stripe_fake.writes() == []


def test_currency_of_a_subscription_is_never_switched(bill, world, stripe_fake):
    conn = world
    conn.execute("UPDATE platform.tenants SET plan_code = 'multi' WHERE slug = 'acme'")
    bill("tenant_subscription", {"tenant": "acme", "currency": "usd", "collection_method": "send_invoice",
                                 "days_until_due": 14})
    before = _snapshot(conn)
    stripe_fake.reset_log()
    res = bill("tenant_subscription", {"tenant": "acme", "currency": "eur"})
    assert res["failed"] is True and res["msg"].startswith("currency:") and "cannot change the currency" in res["msg"]
    assert stripe_fake.writes() == [] and _snapshot(conn) == before and _mirror(conn)["currency"] == "usd"


def test_days_until_due_needs_send_invoice(bill, world, stripe_fake):
    before = _snapshot(world)
    res = bill("tenant_subscription", {"tenant": "acme", "days_until_due": 30})
    assert res["failed"] is True and res["msg"].startswith("days_until_due:"), res["msg"]
    assert stripe_fake.writes() == [] and _snapshot(world) == before


def test_immediate_cancel_bills_uninvoiced_usage(bill, world, stripe_fake):
    sub_id = bill("tenant_subscription", {"tenant": "acme"})["subscription"]["stripe_subscription_id"]
    stripe_fake.reset_log()
    assert bill("tenant_subscription", {"tenant": "acme", "cancel": "immediately"})["changed"] is True
    [cancel] = stripe_fake.writes()
    assert (cancel.method, cancel.path) == ("DELETE", "/v1/subscriptions/%s" % sub_id)
    assert (cancel.params["invoice_now"], cancel.params["prorate"]) == ("true", "true")
    assert stripe_fake.db["subscriptions"][sub_id]["_final_invoice"] == {"invoice_now": True, "prorate": True}


def _coupon(bill, **codes):
    """The coupon 'welcome' (25% off for 2 months) with promotion codes given as code=options."""
    res = bill("billing_coupon", {"key": "welcome", "percent_off": 25, "duration": "repeating",
                                  "duration_in_months": 2,
                                  "promotion_codes": [dict(o, code=c) for c, o in codes.items()]}, login=False)
    assert res["changed"] is True, res
    return res


def test_a_promotion_code_discounts_the_subscription_once(bill, world, stripe_fake):
    """The code is resolved before any write, redeemed with the subscription, recorded in its metadata, and not
    redeemed again when the discount has run out; an empty code removes the discount."""
    conn = world
    _on_pro(conn)
    coupon = _coupon(bill, WELCOME={})
    promo = coupon["promotion_codes"][0]["id"]
    stripe_fake.reset_log()
    args = {"tenant": "acme", "promotion_code": "WELCOME", "collection_method": "send_invoice", "days_until_due": 7}
    predicted = bill("tenant_subscription", args, check=True)
    discount = {"coupon": coupon["coupon"]["id"], "promotion_code": promo, "percent_off": 25.0, "amount_off": None,
                "duration": "repeating", "end": None}
    assert predicted["subscription"]["discount"] == discount, predicted
    assert stripe_fake.writes() == []
    res = bill("tenant_subscription", args)
    sub = stripe_fake.get("subscriptions", res["subscription"]["stripe_subscription_id"])
    [di] = [stripe_fake.get("discounts", d) for d in sub["discounts"]]
    assert di["end"] is not None and res["subscription"]["discount"] == dict(discount, end=di["end"]), res
    assert (di["promotion_code"], di["source"]["coupon"]) == (promo, coupon["coupon"]["id"])
    assert sub["metadata"]["promotion_code"] == "WELCOME"
    assert stripe_fake.promotion_codes()[0]["times_redeemed"] == 1
    # mirrored, and counted in MRR: 25% off pro's 2900
    assert _mirror(conn)["discount"] == res["subscription"]["discount"]
    assert conn.execute("SELECT mrr FROM platform.mrr_at(now())").fetchone()["mrr"] == 2175
    # the invoice is discounted: 25% off pro's 2900
    assert stripe_fake.get("invoices", stripe_fake.invoice(sub["id"]))["amount_due"] == 2175

    stripe_fake.reset_log()
    res = bill("tenant_subscription", args)
    assert res["changed"] is False and stripe_fake.writes() == [], res
    # Stripe ends the discount after two months; the mirror follows, and the code is not redeemed again
    stripe_fake.db["subscriptions"][sub["id"]]["discounts"] = []
    res = bill("tenant_subscription", args)
    assert res["changed"] is True and res["subscription"]["discount"] is None and stripe_fake.writes() == [], res
    assert conn.execute("SELECT mrr FROM platform.mrr_at(now())").fetchone()["mrr"] == 2900
    assert bill("tenant_subscription", args)["changed"] is False

    stripe_fake.db["subscriptions"][sub["id"]]["discounts"] = [di["id"]]
    res = bill("tenant_subscription", dict(args, promotion_code=""))
    assert res["changed"] is True and res["subscription"]["discount"] is None, res
    assert stripe_fake.get("subscriptions", sub["id"])["discounts"] == []
    assert "promotion_code" not in stripe_fake.get("subscriptions", sub["id"])["metadata"]
    assert bill("tenant_subscription", dict(args, promotion_code=""))["changed"] is False


@pytest.mark.parametrize("codes, message", [
    ({}, "promotion_code: no active promotion code WELCOME that tenant acme can redeem"),
    ({"WELCOME": {"active": False}}, "promotion_code: no active promotion code WELCOME"),
    ({"WELCOME": {"minimum_amount": 5000, "minimum_amount_currency": "usd"}},
     "promotion_code: WELCOME needs a first invoice of at least 5000 (minor units of usd); plan pro costs 2900"),
])
def test_an_unusable_promotion_code_fails_before_any_write(bill, world, stripe_fake, codes, message):
    conn = world
    _on_pro(conn)
    if codes:
        _coupon(bill, **codes)
    before = _snapshot(conn)
    stripe_fake.reset_log()
    for check in (True, False):
        res = bill("tenant_subscription", {"tenant": "acme", "promotion_code": "WELCOME"}, check=check)
        assert res["failed"] is True and res["msg"].startswith(message), res["msg"]
    assert stripe_fake.writes() == [] and _snapshot(conn) == before


def test_a_first_time_code_is_refused_after_a_first_invoice(bill, world, stripe_fake):
    conn = world
    _on_pro(conn)
    _coupon(bill, NEWHERE={"first_time_transaction": True})
    args = {"tenant": "acme", "collection_method": "send_invoice", "days_until_due": 7}
    sub_id = bill("tenant_subscription", args)["subscription"]["stripe_subscription_id"]
    stripe_fake.invoice(sub_id)
    stripe_fake.reset_log()
    res = bill("tenant_subscription", dict(args, promotion_code="NEWHERE"))
    assert res["failed"] and res["msg"].startswith("promotion_code: NEWHERE is for first-time customers"), res
    assert stripe_fake.writes() == []
    # the fake, as strict as Stripe, refuses the redemption the module would have sent
    client = stripe.StripeClient(stripe_fake.api_key, base_addresses={"api": stripe_fake.url})
    other = client.raw_request("post", "/v1/subscriptions", customer=stripe_fake.get("subscriptions", sub_id)["customer"],
                               items=[{"price": _price(conn, "starter", "month")}], collection_method="send_invoice",
                               days_until_due=7).data
    with pytest.raises(stripe.InvalidRequestError, match="prior transactions"):
        client.raw_request("post", "/v1/subscriptions/%s" % other["id"],
                           discounts=[{"promotion_code": stripe_fake.promotion_codes()[0]["id"]}])


def test_an_incomplete_subscription_takes_no_promotion_code(bill, world, stripe_fake):
    conn = world
    _on_pro(conn)
    _coupon(bill, WELCOME={})
    sub_id = bill("tenant_subscription", {"tenant": "acme", "payment_behavior": "allow_incomplete"}
                  )["subscription"]["stripe_subscription_id"]
    res = bill("tenant_subscription", {"tenant": "acme", "payment_behavior": "allow_incomplete",
                                       "promotion_code": "WELCOME"})
    assert res["failed"] and res["msg"].startswith("promotion_code: subscription %s" % sub_id), res


def test_a_plan_the_customer_chose_in_stripe_is_not_switched_back(bill, world, stripe_fake):
    """Migration 0017: the customer moved to pro in the Customer Portal (the price changed, the metadata did not)
    and the webhook receiver moved the tenant. A run without a plan keeps pro and brings the metadata in step; a
    run that names starter leaves the customer's plan, says so, and writes nothing to the subscription's items."""
    conn = world
    assert bill("tenant_subscription", {"tenant": "acme"})["changed"] is True
    [sub] = stripe_fake.objects("subscriptions")
    pro = _price(conn, "pro", "month")
    stripe_fake.handle("POST", "/v1/subscriptions/%s" % sub["id"],
                       {"items": {"0": {"id": sub["items"]["data"][0]["id"], "price": pro}}})
    # what stripe_event_apply leaves (tests/modules/test_contract_billing_events.py drives it for real)
    conn.execute("UPDATE platform.tenants SET plan_code = 'pro', plan_source = 'customer' WHERE slug = 'acme'")
    conn.execute("UPDATE platform.subscriptions SET plan_code = 'pro', stripe_price_id = %s", (pro,))
    stripe_fake.reset_log()
    res = bill("tenant_subscription", {"tenant": "acme"})
    assert res["changed"] is True and "plan_kept" not in res, res
    # one update: the metadata in step, pro's metered items in place of starter's; the base price stays
    [write] = stripe_fake.writes()
    assert write.params["metadata[plan_code]"] == "pro", write.params
    assert sub["items"]["data"][0]["id"] not in [v for k, v in write.params.items() if k.endswith("[id]")]
    assert _items(stripe_fake, sub["id"])[0] == (sub["items"]["data"][0]["id"], pro)
    assert bill("tenant_subscription", {"tenant": "acme"})["changed"] is False
    stripe_fake.reset_log()
    for check in (True, False):
        res = bill("tenant_subscription", {"tenant": "acme", "plan": "starter"}, check=check)
        assert res["changed"] is False and stripe_fake.writes() == [], res
        assert res["plan_kept"] == {"slug": "acme", "wanted": {"plan": "starter", "billing_cycle": "month"},
                                    "current": {"plan": "pro", "billing_cycle": "month"}}
        assert any("keeps the plan its customer chose" in w for w in res["warnings"]), res
    assert _items(stripe_fake, sub["id"])[0][1] == pro and _tenant(conn)["plan_code"] == "pro"
