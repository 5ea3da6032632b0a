"""Billing input validation (module_utils/billing.py): currencies, minor units, lookup keys, plans."""

from __future__ import annotations


import pytest

from ansible_collections.selfbase.platform.plugins.module_utils import billing

METRICS = {"api_requests": "requests", "storage_bytes": "bytes", "members": "count"}


@pytest.mark.parametrize("currency, exponent", [("usd", 2), ("eur", 2), ("jpy", 0), ("krw", 0), ("xof", 0),
                                                ("kwd", 3), ("bhd", 3), ("isk", 2)])
def test_exponent(currency, exponent):
    assert billing.exponent(currency) == exponent


@pytest.mark.parametrize("currency, kwargs, minor", [
    ("usd", dict(amount=999), 999),
    ("usd", dict(amount_decimal="9.99"), 999),
    ("usd", dict(amount_decimal=9.99), 999),
    ("usd", dict(amount_decimal="10"), 1000),
    ("usd", dict(amount_decimal="0"), 0),
    ("jpy", dict(amount_decimal="1200"), 1200),
    ("jpy", dict(amount_decimal="1200.00"), 1200),     # trailing zeros are not cents
    ("krw", dict(amount=5000), 5000),
    ("kwd", dict(amount_decimal="5.12"), 5120),
    ("kwd", dict(amount=5120), 5120),
    ("isk", dict(amount_decimal="500"), 50000),
    ("usd", dict(amount="250"), 250),
])
def test_to_minor_units(currency, kwargs, minor):
    assert billing.to_minor_units(currency, field="prices[0].amount", **kwargs) == minor


@pytest.mark.parametrize("currency, kwargs, message", [
    ("usd", dict(amount=-1), "prices[0].amount: must not be negative"),
    ("usd", dict(amount_decimal="-0.01"), "prices[0].amount_decimal: must not be negative"),
    ("jpy", dict(amount_decimal="10.5"), "prices[0].amount_decimal: jpy is a zero-decimal currency"),
    ("krw", dict(amount_decimal=100.5), "prices[0].amount_decimal: krw is a zero-decimal currency"),
    ("usd", dict(amount_decimal="1.999"), "prices[0].amount_decimal: usd has 2 decimal places"),
    ("kwd", dict(amount_decimal="5.124"), "prices[0].amount_decimal: kwd amounts must be rounded to 0.010"),
    ("kwd", dict(amount=5124), "prices[0].amount: kwd amounts must be rounded"),
    ("isk", dict(amount=50050), "prices[0].amount: isk amounts must be whole units"),
    ("usd", dict(amount=9.5), "prices[0].amount: must be a whole number of minor units"),
    ("usd", dict(amount=True), "prices[0].amount: must be a whole number"),
    ("usd", dict(amount_decimal="abc"), "prices[0].amount_decimal: must be a number"),
    ("usd", dict(amount_decimal="NaN"), "prices[0].amount_decimal: must be a finite number"),
    ("usd", dict(), "prices[0].amount: give exactly one of amount"),
    ("usd", dict(amount=1, amount_decimal="1"), "prices[0].amount: give exactly one of amount"),
    ("usd", dict(amount=100000000), "prices[0].amount: at most 99999999 minor units"),
])
def test_to_minor_units_refuses(currency, kwargs, message):
    with pytest.raises(billing.BillingError) as e:
        billing.to_minor_units(currency, field="prices[0].amount", **kwargs)
    assert str(e.value).startswith(message), str(e.value)


@pytest.mark.parametrize("value, code", [("usd", "usd"), ("USD", "usd"), (" eur ", "eur"), ("jpy", "jpy")])
def test_check_currency(value, code):
    assert billing.check_currency(value, "currency") == code


@pytest.mark.parametrize("value", ["xyz", "us", "", None, "dollar", 840])
def test_check_currency_refuses(value):
    with pytest.raises(billing.BillingError) as e:
        billing.check_currency(value, "prices[2].currency")
    assert str(e.value).startswith("prices[2].currency:")


@pytest.mark.parametrize("currency, price, decimal", [
    ("usd", "0.0001", "0.01"), ("usd", 0.5, "50"), ("jpy", "0.015", "0.015"), ("kwd", "0.001", "1"),
    ("usd", "0.00000000000001", "0.000000000001"),
])
def test_unit_amount_decimal(currency, price, decimal):
    assert billing.unit_amount_decimal(currency, price, "f") == decimal


def test_unit_amount_decimal_precision():
    with pytest.raises(billing.BillingError) as e:
        billing.unit_amount_decimal("usd", "0.000000000000001", "quotas[0].overage_unit_price")
    assert str(e.value).startswith("quotas[0].overage_unit_price: ")


def test_lookup_keys_are_stable_and_distinct():
    assert billing.lookup_key("pro", "month", "usd") == "pro_month_usd"
    assert billing.overage_lookup_key("pro", "year", "eur", "api_requests") == "pro_year_eur.api_requests"
    keys = {billing.lookup_key(p, i, c) for p in ("a", "a_month", "a-b") for i in ("month", "year")
            for c in ("usd", "eur")}
    keys |= {billing.overage_lookup_key(p, i, c, m) for p in ("a", "a_month") for i in ("month", "year")
             for c in ("usd",) for m in ("api_requests", "usd")}
    assert len(keys) == 3 * 2 * 2 + 2 * 2 * 2


def test_normalise_plan():
    spec = billing.normalise_plan({
        "code": "pro", "name": "Pro", "trial_days": 14,
        "prices": [{"interval": "month", "currency": "USD", "amount_decimal": "29"},
                   {"interval": "month", "currency": "jpy", "amount": 4000}],
        "quotas": [{"metric": "api_requests", "limit": "1M", "mode": "overage",
                    "overage_unit_price": {"usd": "0.0001", "jpy": "0.02"}},
                   {"metric": "storage_bytes", "limit": "10GB"}]}, "", METRICS)
    assert spec["prices"] == {("month", "usd"): 2900, ("month", "jpy"): 4000}
    assert spec["quotas"]["api_requests"]["overage"] == {"usd": "0.01", "jpy": "0.02"}
    assert str(spec["quotas"]["api_requests"]["overage_price"]) == "0.0001"
    assert spec["quotas"]["storage_bytes"] == dict(limit=10 ** 10, period="month", mode="hard", overage_price=None,
                                                   overage={})
    # a number applies in every currency of the plan
    spec = billing.normalise_plan({
        "code": "pro", "prices": [{"interval": "month", "currency": "usd", "amount": 1},
                                  {"interval": "year", "currency": "eur", "amount": 1}],
        "quotas": [{"metric": "api_requests", "limit": 1, "mode": "overage", "overage_unit_price": 0.001}]},
        "", METRICS)
    assert spec["quotas"]["api_requests"]["overage"] == {"usd": "0.1", "eur": "0.1"}


@pytest.mark.parametrize("entry, message", [
    ({"code": "Pro"}, "plans[1].code: 'Pro' is not a valid plan code"),
    ({"code": "pro", "trial_days": 731}, "plans[1].trial_days:"),
    ({"code": "pro", "prices": [{"interval": "week", "currency": "usd", "amount": 1}]}, "plans[1].prices[0].interval:"),
    ({"code": "pro", "prices": [{"interval": "month", "currency": "usd", "amount": 1},
                                {"interval": "month", "currency": "usd", "amount": 2}]},
     "plans[1].prices[1]: the month price in usd is listed twice"),
    ({"code": "pro", "prices": [{"interval": "month", "currency": "usd", "amount": 1, "tiers": []}]},
     "plans[1].prices[0]: unsupported key(s) tiers"),
    ({"code": "pro", "quotas": [{"metric": "cpu", "limit": 1}]}, "plans[1].quotas[0].metric: unknown metric 'cpu'"),
    ({"code": "pro", "quotas": [{"metric": "members", "limit": "10GB"}]}, "plans[1].quotas[0].limit: byte unit"),
    ({"code": "pro", "quotas": [{"metric": "members", "limit": 1, "overage_unit_price": 1}]},
     "plans[1].quotas[0].overage_unit_price: only valid with mode overage"),
    ({"code": "pro", "quotas": [{"metric": "members", "limit": 1, "mode": "overage", "overage_unit_price": 1}]},
     "plans[1].quotas[0].mode: an overage quota needs the plan's prices"),
    ({"code": "pro", "prices": [{"interval": "month", "currency": "usd", "amount": 1}],
      "quotas": [{"metric": "members", "limit": 1, "mode": "overage"}]},
     "plans[1].quotas[0].overage_unit_price: required with mode overage"),
    ({"code": "pro", "prices": [{"interval": "month", "currency": "usd", "amount": 1}],
      "quotas": [{"metric": "members", "limit": 1, "mode": "overage", "overage_unit_price": {"eur": 1}}]},
     "plans[1].quotas[0].overage_unit_price: give a price for each currency of the plan (usd); eur is not one"),
    ({"code": "pro", "prices": [{"interval": "month", "currency": "usd", "amount": 1}],
      "quotas": [{"metric": "members", "limit": 1, "mode": "overage", "overage_unit_price": -1}]},
     "plans[1].quotas[0].overage_unit_price: must not be negative"),
])
def test_normalise_plan_refuses(entry, message):
    with pytest.raises(billing.BillingError) as e:
        billing.normalise_plan(entry, "plans[1].", METRICS)
    assert str(e.value).startswith(message), str(e.value)


def test_templated_strings_in_plans_entries():
    spec = billing.normalise_plan({"code": "pro", "active": "false", "trial_days": "14"}, "plans[0].", METRICS)
    assert (spec["active"], spec["trial_days"]) == (False, 14)
    with pytest.raises(billing.BillingError) as e:
        billing.normalise_plan({"code": "pro", "active": "maybe"}, "plans[0].", METRICS)
    assert str(e.value).startswith("plans[0].active: must be a boolean")


def test_duplicate_codes():
    specs = [billing.normalise_plan({"code": "a"}, "plans[%d]." % i, METRICS) for i in range(2)]
    with pytest.raises(billing.BillingError) as e:
        billing.check_unique_codes(specs)
    assert str(e.value) == "plans[1].code: plan a is listed twice (also plans[0].code)"


def test_feature_lookup_keys():
    features = {"custom_domains": True, "sso": False, "support": "priority", "region": "eu-west_1"}
    billing.check_features(features, "features")
    assert billing.feature_lookup_keys(features) == ["custom_domains", "region.eu-west_1", "support.priority"]
    assert billing.feature_lookup_keys({}) == []
    # the longest name and level fit Stripe's 80 characters
    assert len(billing.feature_lookup_keys({"a" * 40: "b" * 39})[0]) == 80


@pytest.mark.parametrize("features, message", [
    ({"seats": 10}, "features.seats: must be true, false or a level"),
    ({"sso": None}, "features.sso: must be true, false or a level"),
    ({"support": "Priority"}, "features.support: must be true, false or a level"),
    ({"support": "b" * 40}, "features.support: must be true, false or a level"),
    ({"2fa": True}, "features: '2fa' is not a feature name"),
    ({"a" * 41: True}, "features: 'aaaa"),
    (["sso"], "features: must be a dict"),
])
def test_check_features_refuses(features, message):
    with pytest.raises(billing.BillingError, match="^" + message.replace("(", r"\(")):
        billing.check_features(features, "features")
