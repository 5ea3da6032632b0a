"""Contract tests of the shared Stripe client (module_utils/stripe_api.py) and of the fake Stripe server
it is tested against (Stripe's live API cannot be reached here)."""

from __future__ import annotations

import json
import pathlib
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from fakes.stripe_fake import FakeStripe

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / ".cache" / "collections"))
from ansible_collections.selfbase.platform.plugins.module_utils import stripe_api  # noqa: E402


class Module:
    """The bits of AnsibleModule the client uses."""

    def __init__(self, check_mode=False, **params):
        self.check_mode = check_mode
        self.params = dict(api_key=None, api_base=None, request_timeout=5, max_retries=3)
        self.params.update(params)

    def fail_json(self, **kwargs):
        raise AssertionError(kwargs)


def client(fake, **params):
    return stripe_api.StripeClient(Module(api_key=fake.api_key, api_base=fake.url, **params))


def meter(c, event="api_requests", display="API requests"):
    return c.post("/v1/billing/meters", {"event_name": event, "display_name": display, "default_aggregation": {
        "formula": "sum"}, "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"}})


def test_list_follows_pages_of_100(stripe_fake):
    with stripe_fake.lock:
        for i in range(250):
            stripe_fake.product_create({"name": "p%03d" % i, "active": "true" if i % 2 else "false"})
    c = client(stripe_fake)
    items = c.list("/v1/products")
    assert [p["name"] for p in items] == ["p%03d" % i for i in reversed(range(250))]  # newest first, no gap
    assert c.reads == 3 and c.writes == 0
    pages = stripe_fake.reads("/v1/products")
    assert [r.params.get("limit") for r in pages] == ["100"] * 3
    assert [r.params.get("starting_after") for r in pages] == [None, items[99]["id"], items[199]["id"]]
    assert len(c.list("/v1/products", {"active": True})) == 125


def test_search_pages_and_lookup_keys(stripe_fake):
    c = client(stripe_fake)
    with stripe_fake.lock:
        for i in range(150):
            stripe_fake.customer_create({"name": "c%d" % i, "metadata": {"tenant_id": "t%d" % (i % 2)}})
    found = c.list("/v1/customers/search", {"query": "metadata['tenant_id']:'t1'"})
    assert len(found) == 75 and all(x["metadata"]["tenant_id"] == "t1" for x in found)
    assert c.reads == 1
    prod = c.post("/v1/products", {"name": "Pro"})
    for key in ("a", "b", "c"):
        c.post("/v1/prices", {"product": prod["id"], "currency": "usd", "unit_amount": 100, "lookup_key": key,
                              "recurring": {"interval": "month"}})
    assert sorted(p["lookup_key"] for p in c.list("/v1/prices", {"lookup_keys": ["a", "c", "zz"]})) == ["a", "c"]
    assert stripe_fake.reads("/v1/prices")[-1].params == {"lookup_keys[0]": "a", "lookup_keys[1]": "c",
                                                          "lookup_keys[2]": "zz", "limit": "100"}
    # the un-indexed form other clients send works too
    req = urllib.request.Request(stripe_fake.url + "/v1/prices?lookup_keys[]=b&lookup_keys[]=c",
                                 headers={"Authorization": "Bearer " + stripe_fake.api_key})
    with urllib.request.urlopen(req) as resp:
        assert sorted(p["lookup_key"] for p in json.load(resp)["data"]) == ["b", "c"]


def test_idempotency_key_is_stable_and_prefixed():
    k = stripe_api.idempotency_key("/v1/products", {"name": "Pro", "metadata": {"a": "1", "b": "2"}})
    assert k.startswith("selfbase-") and len(k) < 255
    assert k == stripe_api.idempotency_key("/v1/products", {"metadata": {"b": "2", "a": "1"}, "name": "Pro"})
    assert k != stripe_api.idempotency_key("/v1/products", {"name": "Pro2", "metadata": {"a": "1", "b": "2"}})


def test_pinned_version_auth_and_key_never_echoed(stripe_fake):
    c = client(stripe_fake)
    c.list("/v1/products")
    assert stripe_fake.requests[-1].stripe_version == stripe_api.STRIPE_API_VERSION == "2026-10-28.endive"
    strict = FakeStripe(api_key="sk_test_right_key_123456").start()
    try:
        with pytest.raises(stripe_api.StripeError) as err:
            stripe_api.StripeClient(Module(api_key="sk_test_wrong_key_987654", api_base=strict.url)).list("/v1/products")
        assert err.value.status == 401 and "sk_test_wrong_key_987654" not in str(err.value)
    finally:
        strict.stop()


@pytest.mark.parametrize("fault", [
    dict(status=429),
    dict(status=429, should_retry="true"),
    dict(status=503),
    dict(drop=True),
    dict(status=500, after_store=True),
    dict(drop=True, after_store=True),
])
def test_write_faults_end_with_one_object(stripe_fake, fault):
    c = client(stripe_fake)
    stripe_fake.fail_next(count=2, method="POST", path_prefix="/v1/products", **fault)
    created = c.post("/v1/products", {"name": "Pro", "metadata": {"plan_code": "pro"}})
    products = stripe_fake.objects("products")
    assert [p["id"] for p in products] == [created["id"]]
    posts = stripe_fake.writes("/v1/products")
    assert len(posts) == 3 and len({r.idempotency_key for r in posts}) == 1  # same key on every retry
    assert posts[-1].status == 200 and posts[-1].replayed is fault.get("after_store", False)
    assert c.writes == 1


def test_a_stored_500_fails_the_run_and_the_next_run_writes_under_the_next_key(stripe_fake):
    """Stripe stores a 500 under its key and replays it for 24 hours: the run that got it fails (Stripe says not
    to retry); a later run with the same desired state gets the replay, moves on to the next key of the chain, and
    writes once."""
    c = client(stripe_fake)
    stripe_fake.fail_next(status=500, method="POST", path_prefix="/v1/products")
    with pytest.raises(stripe_api.StripeError) as err:
        c.post("/v1/products", {"name": "Pro"})
    assert err.value.status == 500 and not err.value.replayed and stripe_fake.objects("products") == []
    assert len(stripe_fake.writes()) == 1  # Stripe-Should-Retry: false

    later = client(stripe_fake)  # the next run
    created = later.post("/v1/products", {"name": "Pro"})
    posts = stripe_fake.writes("/v1/products")
    assert [(r.status, r.replayed) for r in posts] == [(500, False), (500, True), (200, False)]
    assert posts[0].idempotency_key == posts[1].idempotency_key != posts[2].idempotency_key
    assert posts[2].idempotency_key == stripe_api.idempotency_key(posts[0].idempotency_key)
    assert [p["id"] for p in stripe_fake.objects("products")] == [created["id"]]
    # a crash-retry of that later run replays its success: still one product
    assert client(stripe_fake).post("/v1/products", {"name": "Pro"})["id"] == created["id"]
    assert len(stripe_fake.objects("products")) == 1


def test_a_chain_of_stored_errors_ends(stripe_fake):
    c = client(stripe_fake)
    key = stripe_api.idempotency_key("/v1/products", {"name": "Pro"})
    for _link in range(stripe_api.MAX_REPLAYED_ERRORS + 1):  # errors stored under every key of the chain
        stripe_fake.fail_next(status=500, method="POST")
        with pytest.raises(stripe_api.StripeError):
            c.post("/v1/products", {"name": "Pro"}, key=key)
        key = stripe_api.idempotency_key(key)
    with pytest.raises(stripe_api.StripeError) as err:
        client(stripe_fake).post("/v1/products", {"name": "Pro"})
    assert "idempotency keys in a row replayed errors" in str(err.value)
    assert stripe_fake.objects("products") == []


def test_read_faults_are_retried(stripe_fake):
    c = client(stripe_fake)
    stripe_fake.fail_next(status=502, method="GET")
    stripe_fake.fail_next(drop=True, method="GET")
    assert c.list("/v1/billing/meters") == []
    assert [r.status for r in stripe_fake.reads()] == [502, None, 200]


def test_timeout_is_retried_with_the_same_key(stripe_fake):
    c = client(stripe_fake, request_timeout=1)
    stripe_fake.fail_next(status=None, delay=2.5, method="POST")
    created = c.post("/v1/webhook_endpoints", {"url": "https://example.com/hook", "enabled_events": ["*"]})
    time.sleep(2)  # let the slow first attempt finish: it must be a replay, not a second endpoint
    assert [w["id"] for w in stripe_fake.objects("webhook_endpoints")] == [created["id"]]
    assert sorted(r.replayed for r in stripe_fake.writes()) == [False, True]


def test_should_retry_false_and_exhausted_retries_fail(stripe_fake):
    c = client(stripe_fake, max_retries=2)
    stripe_fake.fail_next(status=500, should_retry="false", method="POST")
    with pytest.raises(stripe_api.StripeError) as err:
        c.post("/v1/products", {"name": "Pro"})
    assert err.value.status == 500 and len(stripe_fake.writes()) == 1
    stripe_fake.fail_next(status=429, count=5, method="POST")
    with pytest.raises(stripe_api.StripeError) as err:
        c.post("/v1/products", {"name": "Pro"})
    assert err.value.status == 429 and len(stripe_fake.writes()) == 1 + 3
    assert stripe_fake.objects("products") == []


def test_unreachable_api_base(stripe_fake):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = stripe_api.StripeClient(Module(api_key="sk_test_secret_value_42", api_base="http://127.0.0.1:%d" % port,
                                       max_retries=1))
    with pytest.raises(stripe_api.StripeError) as err:
        c.list("/v1/products")
    assert err.value.status is None and "127.0.0.1:%d" % port in str(err.value)
    assert "sk_test_secret_value_42" not in str(err.value)


def test_errors_name_the_param(stripe_fake):
    c = client(stripe_fake)
    prod = c.post("/v1/products", {"name": "Pro"})
    price = c.post("/v1/prices", {"product": prod["id"], "currency": "usd", "unit_amount": 100,
                                  "recurring": {"interval": "month"}})
    for params, param in [({"unit_amount": 200}, "unit_amount"), ({"currency": "eur"}, "currency"),
                          ({"recurring": {"interval": "year"}}, "recurring")]:
        with pytest.raises(stripe_api.StripeError) as err:
            c.post("/v1/prices/" + price["id"], params)
        assert (err.value.status, err.value.param, err.value.type) == (400, param, "invalid_request_error")
        assert "Received unknown parameter: %s" % param in str(err.value)
    with pytest.raises(stripe_api.StripeError) as err:
        c.post("/v1/prices", {"product": prod["id"], "currency": "usd", "unit_amount": 100,
                              "recurring": {"interval": "month", "aggregate_usage": "sum"}})
    assert err.value.param == "recurring[aggregate_usage]"
    with pytest.raises(stripe_api.StripeError) as err:
        c.post("/v1/prices", {"product": prod["id"], "currency": "xyz", "unit_amount": 100})
    assert err.value.param == "currency"


def test_same_key_other_params_is_an_idempotency_error(stripe_fake):
    c = client(stripe_fake)
    c.post("/v1/products", {"name": "A"}, key="selfbase-fixed")
    with pytest.raises(stripe_api.StripeError) as err:
        c.post("/v1/products", {"name": "B"}, key="selfbase-fixed")
    assert err.value.type == "idempotency_error" and err.value.status == 400
    assert len(stripe_fake.objects("products")) == 1


def test_check_mode_refuses_writes(stripe_fake):
    c = stripe_api.StripeClient(Module(check_mode=True, api_key=stripe_fake.api_key, api_base=stripe_fake.url))
    c.list("/v1/products")
    with pytest.raises(stripe_api.StripeError):
        c.post("/v1/products", {"name": "Pro"})
    with pytest.raises(stripe_api.StripeError):
        c.delete("/v1/products/prod_x")
    assert stripe_fake.writes() == [] and c.writes == 0


def test_stale_replays_are_written_again(stripe_fake):
    """Desired-state keys replay for 24 h at Stripe: an earlier result that no longer holds must not be taken."""
    c = client(stripe_fake)
    hook = {"url": "https://example.com/hook", "enabled_events": ["invoice.paid"]}
    first = c.post("/v1/webhook_endpoints", hook)
    c.delete("/v1/webhook_endpoints/" + first["id"])
    again = c.post("/v1/webhook_endpoints", hook)  # same key: Stripe replays the deleted endpoint
    assert again["id"] != first["id"] and again["secret"].startswith("whsec_")
    assert [w["id"] for w in stripe_fake.objects("webhook_endpoints")] == [again["id"]]

    prod = c.post("/v1/products", {"name": "Pro"})
    c.post("/v1/products/" + prod["id"], {"active": False})
    c.post("/v1/products/" + prod["id"], {"active": True})
    assert c.post("/v1/products/" + prod["id"], {"active": False})["active"] is False
    assert stripe_fake.get("products", prod["id"])["active"] is False


def test_fake_price_rules(stripe_fake):
    c = client(stripe_fake)
    prod = c.post("/v1/products", {"name": "Pro", "metadata": {"plan_code": "pro"}})
    old = c.post("/v1/prices", {"product": prod["id"], "currency": "eur", "unit_amount": 900,
                                "recurring": {"interval": "month"}, "lookup_key": "pro_month_eur"})
    with pytest.raises(stripe_api.StripeError) as err:
        c.post("/v1/prices", {"product": prod["id"], "currency": "eur", "unit_amount": 1000,
                              "recurring": {"interval": "month"}, "lookup_key": "pro_month_eur"})
    assert err.value.param == "lookup_key"
    new = c.post("/v1/prices", {"product": prod["id"], "currency": "eur", "unit_amount": 1000,
                                "recurring": {"interval": "month"}, "lookup_key": "pro_month_eur",
                                "transfer_lookup_key": True})
    c.post("/v1/prices/" + old["id"], {"active": False})
    assert stripe_fake.get("prices", old["id"])["lookup_key"] is None
    assert [p["id"] for p in c.list("/v1/prices", {"lookup_keys": ["pro_month_eur"]})] == [new["id"]]
    assert [p["id"] for p in c.list("/v1/prices", {"product": prod["id"], "active": False})] == [old["id"]]
    with pytest.raises(stripe_api.StripeError) as err:  # metered prices need a meter since 2025-03-31.basil
        c.post("/v1/prices", {"product": prod["id"], "currency": "eur", "unit_amount_decimal": "0.5",
                              "recurring": {"interval": "month", "usage_type": "metered"}})
    assert err.value.param == "recurring[meter]"
    mtr = meter(c)
    metered = c.post("/v1/prices", {"product": prod["id"], "currency": "eur", "unit_amount_decimal": "0.5000",
                                    "recurring": {"interval": "month", "usage_type": "metered", "meter": mtr["id"]}})
    assert (metered["unit_amount"], metered["unit_amount_decimal"]) == (None, "0.5")
    assert metered["recurring"]["meter"] == mtr["id"]


def test_fake_meters(stripe_fake):
    c = client(stripe_fake)
    mtr = meter(c)
    with pytest.raises(stripe_api.StripeError) as err:
        meter(c, display="Another name")  # other params, so another key: not a replay
    assert err.value.param == "event_name"
    assert c.post("/v1/billing/meters/%s/deactivate" % mtr["id"], {})["status"] == "inactive"
    assert c.list("/v1/billing/meters", {"status": "active"}) == []
    assert c.post("/v1/billing/meters/%s/reactivate" % mtr["id"], {})["status"] == "active"
    with pytest.raises(stripe_api.StripeError) as err:
        c.post("/v1/billing/meters/" + mtr["id"], {"event_name": "other"})
    assert err.value.param == "event_name"


def test_fake_subscription_swap_and_cancel(stripe_fake):
    c = client(stripe_fake)
    prod = c.post("/v1/products", {"name": "Pro"})
    month, year = [c.post("/v1/prices", {"product": prod["id"], "currency": "usd", "unit_amount": a,
                                         "recurring": {"interval": i}}) for a, i in ((1000, "month"), (10000, "year"))]
    cus = c.post("/v1/customers", {"name": "ACME", "metadata": {"tenant_id": "t-1"}})
    sub = c.post("/v1/subscriptions", {"customer": cus["id"], "items": [{"price": month["id"]}], "trial_period_days": 7})
    item = sub["items"]["data"][0]
    assert sub["status"] == "trialing" and item["price"]["id"] == month["id"] and item["quantity"] == 1
    assert item["current_period_end"] - item["current_period_start"] == 7 * 86400
    swapped = c.post("/v1/subscriptions/" + sub["id"], {"items": [{"id": item["id"], "price": year["id"]}],
                                                        "proration_behavior": "none"})
    assert [(i["id"], i["price"]["id"]) for i in swapped["items"]["data"]] == [(item["id"], year["id"])]
    assert [s["id"] for s in c.list("/v1/subscriptions", {"customer": cus["id"]})] == [sub["id"]]
    canceled = c.delete("/v1/subscriptions/" + sub["id"])
    assert canceled["status"] == "canceled"
    assert c.list("/v1/subscriptions", {"customer": cus["id"]}) == []
    assert len(c.list("/v1/subscriptions", {"customer": cus["id"], "status": "all"})) == 1


def test_fake_webhook_secret_only_on_create(stripe_fake):
    c = client(stripe_fake)
    hook = c.post("/v1/webhook_endpoints", {"url": "https://example.com/h", "enabled_events": ["invoice.paid"]})
    assert hook["secret"].startswith("whsec_")
    assert "secret" not in c.get("/v1/webhook_endpoints/" + hook["id"])
    assert all("secret" not in w for w in c.list("/v1/webhook_endpoints"))
    updated = c.post("/v1/webhook_endpoints/" + hook["id"], {"disabled": True, "description": "x"})
    assert "secret" not in updated and updated["status"] == "disabled"


def test_fake_standalone_keeps_state_across_restarts(tmp_path):
    state = tmp_path / "stripe.json"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = pathlib.Path(__file__).parent / "fakes" / "stripe_fake.py"

    def serve():
        proc = subprocess.Popen([sys.executable, str(script), "--port", str(port), "--state-file", str(state)],
                                stdout=subprocess.PIPE, text=True)
        assert "listening" in proc.stdout.readline()
        return proc

    def call(method, path, body=None):
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=body, method=method,
                                     headers={"Authorization": "Bearer sk_test_demo"})
        with urllib.request.urlopen(req) as resp:
            return json.load(resp)

    proc = serve()
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen("http://127.0.0.1:%d/v1/products" % port)
        assert err.value.code == 401
        created = call("POST", "/v1/products", b"name=Pro&metadata[plan_code]=pro")
    finally:
        proc.terminate()
        proc.wait()
    proc = serve()
    try:
        listed = call("GET", "/v1/products")
        assert [(p["id"], p["metadata"]) for p in listed["data"]] == [(created["id"], {"plan_code": "pro"})]
    finally:
        proc.terminate()
        proc.wait()


# The fake is as strict as the pinned SDK's typed parameters ------------------------------------------------------


@pytest.mark.parametrize("path,params,param,code", [
    # a nested key the SDK does not have
    ("/v1/customers", {"name": "A", "invoice_settings": {"default_payment_methd": "pm_1"}},
     "invoice_settings[default_payment_methd]", "parameter_unknown"),
    # an enum value the API version does not know
    ("/v1/subscriptions", {"customer": "cus_x", "items": [{"price": "price_x"}], "payment_behavior": "sometimes"},
     "payment_behavior", "parameter_invalid_enum"),
    # a required key (SubscriptionCreateParams: customer)
    ("/v1/subscriptions", {"items": [{"price": "price_x"}]}, "customer", "parameter_missing"),
    # a required nested key (MeterCreateParams.default_aggregation.formula)
    ("/v1/billing/meters", {"display_name": "A", "event_name": "a", "default_aggregation": {"formula": "avg"}},
     "default_aggregation[formula]", "parameter_invalid_enum"),
    # the wrong type
    ("/v1/prices", {"currency": "usd", "unit_amount": "ten"}, "unit_amount", "parameter_invalid_integer"),
    # an empty string where the parameter cannot be unset
    ("/v1/products", {"name": ""}, "name", "parameter_invalid_empty"),
    # an API version that does not exist
    ("/v1/webhook_endpoints", {"url": "https://example.com/h", "enabled_events": ["*"], "api_version": "2099-01-01"},
     "api_version", "parameter_invalid_enum"),
])
def test_fake_refuses_what_the_sdk_types_refuse(stripe_fake, path, params, param, code):
    with pytest.raises(stripe_api.StripeError) as err:
        client(stripe_fake).post(path, params)
    assert (err.value.status, err.value.param, err.value.code) == (400, param, code), str(err.value)
    assert all(r.replayed is False for r in stripe_fake.writes())
    # validation errors are not stored under the key: the corrected request is not an idempotency error
    assert stripe_fake.idem == {}


def test_every_route_of_the_fake_has_its_sdk_params_class():
    from fakes import stripe_sdk_params
    # each route of the fake, its groups filled in ("x", or each alternative)
    routes = set()
    for method, pattern, _handler in FakeStripe().routes():
        for alternative in (re.findall(r"\(([a-z|]+)\)", pattern) or ["x"])[0].split("|"):
            routes.add((method, re.sub(r"\([a-z|]+\)", alternative, pattern.replace("([^/]+)", "x"))))
    assert len(routes) > 60
    assert {r for r in routes if stripe_sdk_params.params_class(*r) is None} == set()
    events = stripe_sdk_params.known_values(stripe_sdk_params.P.WebhookEndpointCreateParams, "enabled_events")
    assert "*" in events and "invoice.paid" in events and "customer.subscription.*" not in events
    assert stripe_api.event_types() == frozenset(events)


def test_fake_refuses_prices_on_an_inactive_product_or_meter(stripe_fake):
    c = client(stripe_fake)
    prod = c.post("/v1/products", {"name": "Old", "active": False})
    with pytest.raises(stripe_api.StripeError) as err:
        c.post("/v1/prices", {"product": prod["id"], "currency": "usd", "unit_amount": 100})
    assert err.value.param == "product" and "inactive" in str(err.value)
    live = c.post("/v1/products", {"name": "Live"})
    mtr = meter(c)
    c.post("/v1/billing/meters/%s/deactivate" % mtr["id"], {})
    with pytest.raises(stripe_api.StripeError) as err:
        c.post("/v1/prices", {"product": live["id"], "currency": "usd", "unit_amount_decimal": "0.5",
                              "recurring": {"interval": "month", "usage_type": "metered", "meter": mtr["id"]}})
    assert err.value.param == "recurring[meter]" and "inactive" in str(err.value)


def test_fake_lists_expired_incomplete_subscriptions_by_default(stripe_fake):
    c = client(stripe_fake)
    cus = c.post("/v1/customers", {"name": "A"})
    prod = c.post("/v1/products", {"name": "P"})
    price = c.post("/v1/prices", {"product": prod["id"], "currency": "usd", "unit_amount": 500,
                                  "recurring": {"interval": "month"}})
    sub = c.post("/v1/subscriptions", {"customer": cus["id"], "items": [{"price": price["id"]}]})
    assert sub["status"] == "incomplete"  # allow_incomplete, Stripe's default, and no payment method
    with pytest.raises(stripe_api.StripeError) as err:
        c.post("/v1/subscriptions", {"customer": cus["id"], "items": [{"price": price["id"]}],
                                     "payment_behavior": "error_if_incomplete"})
    assert err.value.status == 402
    stripe_fake.advance(23 * 3600)
    listed = c.list("/v1/subscriptions", {"customer": cus["id"]})
    assert [(s["id"], s["status"]) for s in listed] == [(sub["id"], "incomplete_expired")]
    with pytest.raises(stripe_api.StripeError) as err:  # days_until_due without send_invoice
        c.post("/v1/subscriptions", {"customer": cus["id"], "items": [{"price": price["id"]}], "days_until_due": 3,
                                     "trial_period_days": 3})
    assert err.value.param == "days_until_due"


def test_fake_entitlements_follow_subscriptions_and_product_features(stripe_fake):
    """Features: a lookup key once among active features, an archived one not attachable, attached once; a
    customer's active entitlements are its live subscriptions' products' features, and each change of that set is
    one summary event with the whole set."""
    c = client(stripe_fake)
    sso = c.post("/v1/entitlements/features", {"lookup_key": "sso", "name": "SSO"})
    with pytest.raises(stripe_api.StripeError) as err:
        c.post("/v1/entitlements/features", {"lookup_key": "sso", "name": "Again"})
    assert err.value.param == "lookup_key"
    old = c.post("/v1/entitlements/features", {"lookup_key": "legacy", "name": "Legacy"})
    c.post("/v1/entitlements/features/" + old["id"], {"active": False})
    assert [f["lookup_key"] for f in c.list("/v1/entitlements/features")] == ["sso"]
    assert [f["lookup_key"] for f in c.list("/v1/entitlements/features", {"archived": True})] == ["legacy"]
    with pytest.raises(stripe_api.StripeError) as err:
        c.post("/v1/entitlements/features", {"lookup_key": "x" * 81, "name": "Long"})
    assert err.value.param == "lookup_key"

    prod = c.post("/v1/products", {"name": "Team"})
    price = c.post("/v1/prices", {"product": prod["id"], "currency": "usd", "unit_amount": 4900,
                                  "recurring": {"interval": "month"}})
    with pytest.raises(stripe_api.StripeError) as err:
        c.post("/v1/products/%s/features" % prod["id"], {"entitlement_feature": old["id"]})
    assert err.value.param == "entitlement_feature"
    cus = c.post("/v1/customers", {"name": "ACME"})
    stripe_fake.attach_payment_method(cus["id"])
    sub = c.post("/v1/subscriptions", {"customer": cus["id"], "items": [{"price": price["id"]}]})
    assert sub["status"] == "active"
    assert c.list("/v1/entitlements/active_entitlements", {"customer": cus["id"]}) == []
    with pytest.raises(stripe_api.StripeError) as err:
        c.get("/v1/entitlements/active_entitlements")
    assert err.value.param == "customer"

    attached = c.post("/v1/products/%s/features" % prod["id"], {"entitlement_feature": sso["id"]})
    assert attached["entitlement_feature"]["lookup_key"] == "sso"
    # (under another key: the same request replays the first attach)
    with pytest.raises(stripe_api.StripeError) as err:
        c.post("/v1/products/%s/features" % prod["id"], {"entitlement_feature": sso["id"]}, key="again")
    assert err.value.code == "resource_already_exists"
    active = c.list("/v1/entitlements/active_entitlements", {"customer": cus["id"]})
    assert [(e["object"], e["feature"], e["lookup_key"]) for e in active] == [
        ("entitlements.active_entitlement", sso["id"], "sso")]

    def summaries():
        return [[e["lookup_key"] for e in ev["data"]["object"]["entitlements"]["data"]]
                for ev in stripe_fake.events("entitlements.active_entitlement_summary.updated")
                if ev["data"]["object"]["customer"] == cus["id"]]
    assert summaries() == [["sso"]]
    c.post("/v1/subscriptions/" + sub["id"], {"metadata": {"note": "no change to the set"}})
    assert summaries() == [["sso"]]
    c.delete("/v1/subscriptions/" + sub["id"])
    assert summaries() == [["sso"], []]
    assert c.list("/v1/entitlements/active_entitlements", {"customer": cus["id"]}) == []
    c.delete("/v1/products/%s/features/%s" % (prod["id"], attached["id"]))
    assert c.list("/v1/products/%s/features" % prod["id"]) == []
