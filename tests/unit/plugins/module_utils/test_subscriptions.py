"""Subscription planning of tenant_subscription (module_utils/subscriptions.py) with plain dicts."""

from __future__ import annotations

import uuid

import pytest

from ansible_collections.selfbase.platform.plugins.module_utils import subscriptions as subs
from ansible_collections.selfbase.platform.plugins.module_utils.errors import InputError

TENANT = dict(id=uuid.UUID(int=1), slug="acme", name="Acme", status="active", plan_code="pro", billing_cycle="month",
              trial_ends_at=None, stripe_customer_id="cus_1")
CUSTOMER = dict(id="cus_1", name="Acme", email=None, metadata={"tenant_id": str(uuid.UUID(int=1))},
                invoice_settings={"default_payment_method": "pm_1"})
WANT = dict(plan="pro", plan_active=True, trial_days=None, cycle="month", currency="usd", price="price_pro",
            amount=1000, metered={"api_requests": "price_api"})


def params(**kw):
    p = dict(tenant="acme", trial_days=None, cancel="none", collection_method=None, days_until_due=None,
             payment_behavior="error_if_incomplete", proration_behavior="create_prorations", email=None,
             promotion_code=None, update_tenant=True, state="present", automatic_tax=None, billing_address=None,
             tax_exempt=None, tax_ids=None)
    p.update(kw)
    return p


def sub(price="price_pro", metered=("price_api",), **kw):
    items = [dict(id="si_base", price=dict(id=price, recurring=dict(interval="month", usage_type="licensed")),
                  current_period_start=100, current_period_end=200)]
    items += [dict(id="si_%s" % m, price=dict(id=m, recurring=dict(interval="month", usage_type="metered")))
              for m in metered]
    s = dict(id="sub_1", status="active", currency="usd", cancel_at_period_end=False, items=dict(data=items),
             metadata={"tenant_id": str(TENANT["id"]), "plan_code": "pro", "billing_cycle": "month"})
    s.update(kw)
    return s


def test_a_new_tenant_gets_a_customer_and_a_subscription_with_its_metered_items():
    p = params(payment_behavior="default_incomplete")
    writes = subs.plan_writes(p, TENANT, None, None, None, WANT)
    assert [w["what"] for w in writes] == ["customer", "subscription"]
    assert writes[1]["params"]["items"] == [{"price": "price_pro"}, {"price": "price_api"}]
    assert writes[1]["status"] == "incomplete" and "(incomplete until paid)" in writes[1]["label"]


def test_a_subscription_in_step_plans_nothing():
    assert subs.plan_writes(params(), TENANT, CUSTOMER, sub(), None, WANT) == []


def test_a_plan_change_swaps_the_base_item_and_prorates():
    writes = subs.plan_writes(params(), TENANT, CUSTOMER, sub(price="price_old"), None, WANT)
    assert [w["what"] for w in writes] == ["subscription_update"]
    assert writes[0]["params"]["items"] == [{"id": "si_base", "price": "price_pro"}]
    assert writes[0]["params"]["proration_behavior"] == "create_prorations"


def test_metered_items_follow_the_plan():
    want = dict(WANT, metered={"storage": "price_sto"})
    writes = subs.plan_writes(params(), TENANT, CUSTOMER, sub(), None, want)
    assert writes[0]["params"]["items"] == [{"id": "si_price_api", "deleted": "true"}, {"price": "price_sto"}]
    assert "metered items" in writes[0]["label"]


def test_cancel_now_plans_one_cancellation():
    writes = subs.plan_writes(params(state="absent"), TENANT, CUSTOMER, sub(), None, None)
    assert writes == [dict(what="cancel", label="cancel subscription sub_1 now", id="sub_1")]
    assert subs.plan_writes(params(state="absent"), TENANT, CUSTOMER, None, None, None) == []


def test_an_inactive_plan_cannot_be_subscribed_to():
    with pytest.raises(InputError, match="^plan: plan pro is not active"):
        subs.plan_writes(params(), TENANT, CUSTOMER, None, None, dict(WANT, plan_active=False))


@pytest.mark.parametrize("kw, customer, status", [
    (dict(), CUSTOMER, "active"),
    (dict(payment_behavior="default_incomplete"), CUSTOMER, "incomplete"),
    (dict(payment_behavior="allow_incomplete"), dict(CUSTOMER, invoice_settings={}), "incomplete"),
    (dict(collection_method="send_invoice", days_until_due=30), dict(CUSTOMER, invoice_settings={}), "active"),
    (dict(trial_days=14), None, "trialing"),
])
def test_the_status_stripe_gives_a_new_subscription(kw, customer, status):
    p = params(**kw)
    assert subs.create_write(p, customer, None, WANT, {})["status"] == status


def test_error_if_incomplete_without_a_payment_method_is_refused():
    with pytest.raises(InputError, match="^payment_behavior:"):
        subs.create_write(params(), dict(CUSTOMER, invoice_settings={}), None, WANT, {})


def test_a_trial_only_for_the_first_subscription():
    first = subs.create_write(params(trial_days=14), CUSTOMER, None, WANT, {})
    again = subs.create_write(params(trial_days=14), CUSTOMER, dict(stripe_subscription_id="sub_0"), WANT, {})
    assert first["params"]["trial_period_days"] == 14 and "trial_period_days" not in again["params"]


def test_checks_refuse_what_stripe_refuses():
    with pytest.raises(InputError, match="^days_until_due:"):
        subs.check_subscription(params(days_until_due=30), sub(), WANT)
    with pytest.raises(InputError, match="^currency:"):
        subs.check_subscription(params(), sub(currency="eur"), WANT)
    with pytest.raises(InputError, match="^trial_days:"):
        subs.check_params(params(trial_days=731))


def test_check_mode_predicts_a_new_subscription():
    writes = subs.plan_writes(params(), TENANT, CUSTOMER, None, None, WANT)
    after = subs.predict(params(), writes, "cus_1", None, None, None, WANT, {"price_api": "api_requests"})
    assert after["status"] == "active" and after["stripe_subscription_id"] is None
    assert after["metered_items"] == {"api_requests": dict(item=None, price="price_api")}


def test_the_tenant_follows_the_subscription_unless_suspended():
    after = subs.mirror_of(sub(status="past_due"), "cus_1", WANT, {"price_api": "api_requests"})
    assert subs.tenant_after(params(), TENANT, after, False, False)["status"] == "past_due"
    assert subs.tenant_after(params(), dict(TENANT, status="suspended"), after, False, False)["status"] == "suspended"
    assert subs.tenant_after(params(update_tenant=False), TENANT, after, False, False)["status"] == "active"
