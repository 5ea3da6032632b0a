"""tenant_subscription's tax options (Stripe Tax, billing address, tax IDs) against a real PostgreSQL server and the
stripe_fake Stripe (contract test)."""

from __future__ import annotations

import pytest
import stripe

from test_contract_tenant_subscription import _snapshot, bill, world  # noqa: F401  pylint: disable=unused-import

ADDRESS = {"line1": "1 Main St", "city": "New York", "state": "NY", "postal_code": "10001", "country": "US"}
EIN = {"type": "us_ein", "value": "12-3456789"}
# pro has no trial; invoiced, so it starts active without a card
PRO = {"tenant": "acme", "plan": "pro", "collection_method": "send_invoice", "days_until_due": 30}


def _client(stripe_fake):
    return stripe.StripeClient(stripe_fake.api_key, base_addresses={"api": stripe_fake.url})


def _stripe_tax(stripe_fake):
    """What the operator sets in Stripe: the head office, a default tax behaviour, a registration in New York."""
    client = _client(stripe_fake)
    client.raw_request("post", "/v1/tax/settings", head_office={"address": {"country": "US", "state": "NY",
                                                                            "postal_code": "10001"}},
                       defaults={"tax_behavior": "exclusive"})
    client.raw_request("post", "/v1/tax/registrations", country="US", active_from="now",
                       country_options={"us": {"type": "state_sales_tax", "state": "NY"}})
    stripe_fake.reset_log()


def test_tax_details_reach_the_customer_and_stripe_tax_the_invoices(bill, world, stripe_fake):
    conn = world
    _stripe_tax(stripe_fake)
    args = dict(PRO, automatic_tax=True, billing_address=ADDRESS, tax_ids=[EIN])
    res = bill("tenant_subscription", args, check=True, diff=True)
    assert res["changed"] is True and stripe_fake.writes() == [], res
    assert res["actions"][0] == "create customer for acme"
    assert res["diff"]["before"]["tax"]["billing_address"] is None
    assert res["diff"]["after"]["tax"] == res["tax"] == {
        "automatic_tax": True, "billing_address": dict(ADDRESS, line2=None), "tax_exempt": "none", "tax_ids": [EIN]}

    res = bill("tenant_subscription", args)
    assert res["changed"] is True, res
    [customer] = stripe_fake.objects("customers")
    assert customer["address"] == dict(ADDRESS, line2=None)
    [tax_id] = stripe_fake.objects("tax_ids")
    assert (tax_id["customer"], tax_id["type"], tax_id["value"]) == (customer["id"], "us_ein", "12-3456789")
    [sub] = stripe_fake.objects("subscriptions")
    assert sub["automatic_tax"]["enabled"] is True and sub["status"] == "active"

    before = _snapshot(conn)
    stripe_fake.reset_log()
    for check in (True, False):
        res = bill("tenant_subscription", args, check=check)
        assert res["changed"] is False and stripe_fake.writes() == [], res
    assert _snapshot(conn) == before

    # Stripe Tax's amount is on the invoice, added to the price (exclusive)
    invoice = stripe_fake.get("invoices", stripe_fake.invoice(sub["id"]))
    [tax] = invoice["total_taxes"]
    assert tax["taxability_reason"] == "standard_rated" and tax["amount"] > 0
    assert invoice["total"] == 2900 + tax["amount"] and invoice["total_excluding_tax"] == 2900

    # reverse charge, then automatic tax off: each one update
    stripe_fake.reset_log()
    res = bill("tenant_subscription", dict(args, tax_exempt="reverse"))
    assert res["actions"] == ["update customer %s (tax_exempt)" % customer["id"]]
    invoice = stripe_fake.get("invoices", stripe_fake.invoice(sub["id"]))
    assert [(t["amount"], t["taxability_reason"]) for t in invoice["total_taxes"]] == [(0, "reverse_charge")]
    res = bill("tenant_subscription", dict(args, tax_exempt="reverse", automatic_tax=False))
    assert res["actions"] == ["update subscription %s (automatic_tax)" % sub["id"]]
    assert stripe_fake.get("subscriptions", sub["id"])["automatic_tax"]["enabled"] is False
    assert stripe_fake.get("invoices", stripe_fake.invoice(sub["id"]))["total_taxes"] == []


def test_tax_ids_are_kept_exactly_as_listed(bill, world, stripe_fake):
    res = bill("tenant_subscription", dict(PRO, tax_ids=[EIN]))
    customer = res["subscription"]["stripe_customer_id"]
    vat = {"type": "eu_vat", "value": "DE123456789"}
    res = bill("tenant_subscription", dict(PRO, tax_ids=[vat]), check=True)
    assert res["actions"] == ["add tax ID eu_vat DE123456789", "remove tax ID us_ein 12-3456789"]
    assert [(t["type"], t["value"]) for t in stripe_fake.objects("tax_ids")] == [("us_ein", "12-3456789")]
    res = bill("tenant_subscription", dict(PRO, tax_ids=[vat]))
    assert res["changed"] is True and res["tax"]["tax_ids"] == [vat]
    assert [(t["customer"], t["type"], t["value"]) for t in stripe_fake.objects("tax_ids")] == [
        (customer, "eu_vat", "DE123456789")]
    assert [e["type"] for e in stripe_fake.events("customer.tax_id")] == [
        "customer.tax_id.created", "customer.tax_id.created", "customer.tax_id.deleted"]
    # not set: left as the customer (or the application) made them; empty: none
    assert bill("tenant_subscription", PRO)["changed"] is False
    res = bill("tenant_subscription", dict(PRO, tax_ids=[]))
    assert res["actions"] == ["remove tax ID eu_vat DE123456789"] and stripe_fake.objects("tax_ids") == []
    # added again: created again, not an idempotent replay of the first add
    res = bill("tenant_subscription", dict(PRO, tax_ids=[vat]))
    assert res["actions"] == ["add tax ID eu_vat DE123456789"]
    assert [(t["type"], t["value"]) for t in stripe_fake.objects("tax_ids")] == [("eu_vat", "DE123456789")]


@pytest.mark.parametrize("args,field", [
    ({"billing_address": dict(ADDRESS, country="usa")}, "billing_address.country"),
    ({"billing_address": dict(ADDRESS, postal_code="NY 10001")}, "billing_address.postal_code"),
    ({"tax_ids": [{"type": "xx_vat", "value": "1"}]}, "tax_ids[0].type"),
    ({"tax_ids": [EIN, {"type": "eu_vat", "value": "US123456789"}]}, "tax_ids[1].value"),
    ({"tax_ids": [EIN, EIN]}, "tax_ids[1]"),
])
def test_bad_tax_details_fail_before_any_write_naming_the_field(bill, world, stripe_fake, args, field):
    before = _snapshot(world)
    res = bill("tenant_subscription", dict(PRO, **args))
    assert res["failed"] is True and res["msg"].startswith(field + ":"), res["msg"]
    assert stripe_fake.writes() == [] and stripe_fake.reads() == [] and _snapshot(world) == before


def test_automatic_tax_needs_stripe_tax_and_a_customer_it_can_place(bill, world, stripe_fake):
    before = _snapshot(world)
    res = bill("tenant_subscription", dict(PRO, automatic_tax=True, billing_address=ADDRESS))
    assert res["failed"] is True and res["msg"].startswith("automatic_tax: Stripe Tax is not active"), res["msg"]
    assert "head_office" in res["msg"] and stripe_fake.writes() == []
    _stripe_tax(stripe_fake)
    res = bill("tenant_subscription", dict(PRO, automatic_tax=True))
    assert res["failed"] is True and res["msg"].startswith("billing_address: tenant acme has no address"), res["msg"]
    assert stripe_fake.writes() == [] and _snapshot(world) == before
    # without the module's checks, Stripe (the fake, as strict) refuses the subscription the module would send
    sub = bill("tenant_subscription", PRO)["subscription"]
    client = _client(stripe_fake)
    with pytest.raises(stripe.InvalidRequestError, match="location isn't recognized"):
        client.raw_request("post", "/v1/subscriptions/%s" % sub["stripe_subscription_id"],
                           automatic_tax={"enabled": True})
    # an address Stripe Tax cannot place is refused by Stripe when validated at once
    with pytest.raises(stripe.InvalidRequestError, match="location isn't recognized"):
        client.raw_request("post", "/v1/customers/%s" % sub["stripe_customer_id"], address={"country": "US"},
                           tax={"validate_location": "immediately"})


def test_an_incomplete_subscription_takes_no_automatic_tax(bill, world, stripe_fake):
    conn = world
    _stripe_tax(stripe_fake)
    args = {"tenant": "acme", "plan": "pro", "payment_behavior": "allow_incomplete", "billing_address": ADDRESS}
    sub_id = bill("tenant_subscription", args)["subscription"]["stripe_subscription_id"]
    assert stripe_fake.get("subscriptions", sub_id)["status"] == "incomplete"
    before = _snapshot(conn)
    stripe_fake.reset_log()
    res = bill("tenant_subscription", dict(args, automatic_tax=True))
    assert res["failed"] is True and res["msg"].startswith("automatic_tax: subscription %s" % sub_id), res["msg"]
    assert stripe_fake.writes() == [] and _snapshot(conn) == before
