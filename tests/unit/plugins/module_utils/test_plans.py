"""Price planning of billing_plan (module_utils/plans.py) with plain dicts: no Stripe, no database."""

from __future__ import annotations

from ansible_collections.selfbase.platform.plugins.module_utils import billing, plans

METRICS = {"api_requests": "requests"}


class Stripe:
    """What plans.StripeState holds after its reads: active prices by lookup key, meters by event name."""

    def __init__(self, prices=(), meters=(), inactive=()):
        self.prices = {p["lookup_key"]: p for p in prices}
        self.meters = {m["event_name"]: m for m in meters}
        self.active = {p["id"] for p in prices} - set(inactive)

    def active_price(self, price_id):
        return {"id": price_id} if price_id in self.active else None

    def product_prices(self, product_id):
        return [p for p in self.prices.values() if p["product"] == product_id]


def spec(**entry):
    entry.setdefault("code", "pro")
    return billing.normalise_plan(entry, "", METRICS)


def price(pid, key, amount, product="prod_1", interval="month", currency="usd"):
    return dict(id=pid, lookup_key=key, product=product, currency=currency, unit_amount=amount, active=True,
                recurring=dict(interval=interval, interval_count=1, usage_type="licensed"))


PRODUCT = dict(id="prod_1", name="Pro", description="", active=True, metadata={"plan_code": "pro"})
DB = dict(code="pro", name="Pro", description="", features={}, active=True, trial_days=None,
          stripe_product_id="prod_1", quotas={},
          prices={("month", "usd"): dict(amount=1000, lookup_key="pro_month_usd", stripe_price_id="price_1",
                                         active=True)})


def planned(s, db=None, product=None, stripe=None):
    plan = plans.Plan(s, db, product)
    plan.after = plans.plan_present(plan, stripe or Stripe()) if s["state"] == "present" else \
        plans.plan_absent(plan, stripe or Stripe())
    plans._prices_on_an_active_product(plan)
    return plan


def test_a_new_plan_creates_its_product_and_prices():
    plan = planned(spec(name="Pro", prices=[dict(interval="month", currency="usd", amount=1000)]))
    assert [w["what"] for w in plan.writes] == ["product", "price"]
    assert plan.writes[1]["params"]["lookup_key"] == "pro_month_usd"
    assert plan.writes[1]["params"]["unit_amount"] == 1000
    assert plan.after["prices"][("month", "usd")]["stripe_price_id"] is None


def test_an_unchanged_plan_plans_nothing():
    stripe = Stripe([price("price_1", "pro_month_usd", 1000)])
    plan = planned(spec(name="Pro", prices=[dict(interval="month", currency="usd", amount=1000)]), DB, PRODUCT, stripe)
    assert plan.writes == []
    assert plans.public(plan.after) == plans.public(DB)


def test_a_new_amount_creates_a_price_and_archives_the_old_one():
    stripe = Stripe([price("price_1", "pro_month_usd", 1000)])
    plan = planned(spec(name="Pro", prices=[dict(interval="month", currency="usd", amount=2000)]), DB, PRODUCT, stripe)
    assert [(w["what"], w.get("id")) for w in plan.writes] == [("price", None), ("archive_price", "price_1")]
    # the replaced price is part of the idempotency input: 10 -> 20 -> 10 creates a new price each time
    assert plan.writes[0]["replaces"] == ["price_1", "price_1"]


def test_a_price_point_left_out_is_archived_and_kept_inactive():
    stripe = Stripe([price("price_1", "pro_month_usd", 1000), price("price_2", "pro_year_usd", 10000, interval="year")])
    plan = planned(spec(name="Pro", prices=[dict(interval="year", currency="usd", amount=10000)]), DB, PRODUCT, stripe)
    assert ("archive_price", "price_1") in [(w["what"], w.get("id")) for w in plan.writes]
    assert plan.after["prices"][("month", "usd")]["active"] is False


def test_a_stray_price_the_database_points_at_is_archived():
    """A run stopped between create and archive: the database's price lost its key but is still active."""
    stripe = Stripe([price("price_9", "pro_month_usd", 1000), price("price_1", "other_key", 1000)])
    plan = planned(spec(name="Pro", prices=[dict(interval="month", currency="usd", amount=1000)]), DB, PRODUCT, stripe)
    assert [(w["what"], w.get("id")) for w in plan.writes] == [("archive_price", "price_1")]
    assert plan.after["prices"][("month", "usd")]["stripe_price_id"] == "price_9"


def test_an_inactive_plan_gets_new_prices_while_its_product_is_active():
    plan = planned(spec(name="Pro", active=False, prices=[dict(interval="month", currency="usd", amount=1000)]))
    assert [w["what"] for w in plan.writes] == ["product", "price", "product_update"]
    assert plan.writes[0]["params"]["active"] == "true"
    assert plan.writes[-1]["params"] == {"active": "false"}


def test_overage_prices_are_metered_on_the_meter():
    s = spec(name="Pro", prices=[dict(interval="month", currency="usd", amount=1000)],
             quotas=[dict(metric="api_requests", limit="1M", mode="overage", overage_unit_price="0.0001")])
    plan = planned(s, stripe=Stripe(meters=[dict(id="mtr_1", event_name="api_requests")]))
    metered = [w for w in plan.writes if w["what"] == "price" and "meter" in w["params"]["recurring"]]
    assert len(metered) == 1
    assert metered[0]["params"]["recurring"] == dict(interval="month", usage_type="metered", meter="mtr_1")
    assert metered[0]["params"]["unit_amount_decimal"] == "0.01"
    assert metered[0]["params"]["lookup_key"] == "pro_month_usd.api_requests"


def test_absent_archives_every_active_price_and_the_product():
    stripe = Stripe([price("price_1", "pro_month_usd", 1000)])
    plan = planned(spec(state="absent"), DB, PRODUCT, stripe)
    assert [(w["what"], w.get("id")) for w in plan.writes] == [("archive_price", "price_1"), ("product_update", None)]
    assert plan.after["active"] is False and plan.after["prices"][("month", "usd")]["active"] is False


def test_price_keys_cover_wanted_and_stored_keys():
    specs = [spec(name="Pro", prices=[dict(interval="year", currency="usd", amount=10000)])]
    assert sorted(plans.price_keys(specs, {"pro": DB})) == ["pro_month_usd", "pro_year_usd"]
