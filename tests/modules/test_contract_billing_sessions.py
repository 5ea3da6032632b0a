"""Checkout and Customer Portal sessions for a tenant's admins (migration 0019, roles/host_services/files/billing/
sessions.py): contract tests.

The billing service's WSGI application (webhook receiver and sessions, as gunicorn serves it) listens on a real
socket, writes to a real PostgreSQL server as a login of selfbase_billing, and opens sessions at the fake Stripe;
the customer's part on Stripe's pages is the fake's complete_checkout, and the events come back through the
receiver. Attack tests call the new functions as every login."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import hmac
import json
import threading
import time
import urllib.error
import urllib.request
import uuid

import psycopg
import pytest
import stripe

from fakes.stripe_fake import API_VERSION
from test_contract_billing_events import _Quiet, _Server, billing_login, world  # noqa: F401  pylint: disable=unused-import
from test_isolation import A, B, tenants  # noqa: F401  pylint: disable=unused-import
from test_security import NON_CONTROL, assert_owner_role, error, logins  # noqa: F401  pylint: disable=unused-import

import selfbase_billing  # noqa: E402  (on sys.path through test_contract_billing_events)  pylint: disable=wrong-import-order

KEY = "k" * 40
OTHER_KEY = "x" * 40
C = uuid.UUID("cccccccc-0000-4000-8000-000000000003")
OWNER_A, MEMBER_A = (str(uuid.uuid5(A, "user%d" % i)) for i in range(2))
OWNER_B = str(uuid.uuid5(B, "user0"))
OWNER_C, ADMIN_C, GUEST_C = (str(uuid.uuid5(C, n)) for n in ("owner", "admin", "guest"))
BACK = {"success_url": "https://app.example.com/billing/done", "cancel_url": "https://app.example.com/billing"}


def token(user, tenant, key=KEY, exp=None, alg="HS256", claims=None):
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    body = {"sub": user, "exp": int(time.time()) + 900 if exp is None else exp,
            "https://hasura.io/jwt/claims": claims if claims is not None else {
                "x-hasura-user-id": user, "x-hasura-tenant-id": str(tenant), "x-hasura-default-role": "user",
                "x-hasura-allowed-roles": ["user", "me"]}}
    signed = "%s.%s" % (part({"alg": alg, "typ": "JWT"}), part(body))
    sig = base64.urlsafe_b64encode(hmac.new(key.encode(), signed.encode(), hashlib.sha256).digest()).rstrip(b"=")
    return signed + "." + sig.decode()


@pytest.fixture()
def svc(world, pg_server, db):  # noqa: F811
    """Tenant charlie (no Stripe customer, no subscription; an owner, an admin and a guest), plan pro with its
    Stripe price and a portal configuration, and the billing service on a socket."""
    w = world
    client = stripe.StripeClient(w.fake.api_key, stripe_version=API_VERSION, base_addresses={"api": w.fake.url})

    def post(path, **params):
        return client.raw_request("post", path, **params).data

    pro = post("/v1/prices", currency="usd", unit_amount=9900, recurring={"interval": "month"},
               product_data={"name": "Pro"})
    w.db.execute("INSERT INTO platform.plans (code, name) VALUES ('pro', 'Pro')")
    w.db.execute("INSERT INTO platform.plan_quotas (plan_code, metric, limit_value, period, mode) "
                 "VALUES ('pro', 'api_requests', 5000000, 'month', 'hard')")
    w.db.execute("INSERT INTO platform.plan_prices (plan_code, billing_cycle, currency, unit_amount, stripe_price_id) "
                 "VALUES ('pro', 'month', 'usd', 9900, %s)", (pro["id"],))
    w.db.execute("INSERT INTO platform.tenants (id, slug, name, plan_code) VALUES (%s, 'charlie', 'Charlie', 'iso')",
                 (C,))
    for user, role in ((OWNER_C, "owner"), (ADMIN_C, "admin"), (GUEST_C, "guest")):
        w.db.execute("INSERT INTO platform.tenant_members (tenant_id, user_id, role) VALUES (%s, %s, %s)",
                     (C, user, role))
    portal = post("/v1/billing_portal/configurations", features={"invoice_history": {"enabled": True}})
    config = {"conninfo": w.dsn, "api_key": w.fake.api_key, "api_base": w.fake.url, "api_version": API_VERSION,
              "webhook_secrets": [w.fake.secret()], "tolerance": 300,
              "sync": {"reconcile": True, "overlap": 600, "meter_push": False, "meter_api": "v2", "settle": 900,
                       "lookback": 86400, "workers": 1, "metrics_file": "/dev/null"},
              "sessions": {"path": "/billing/", "jwt_keys": [KEY], "return_hosts": ["app.example.com", "*.example.org"],
                           "currency": "usd", "portal_configuration": portal["id"]}}
    assert selfbase_billing.check(config) == []
    server = _Server(("127.0.0.1", 0), _Quiet)
    server.set_app(selfbase_billing.build(config))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    w.base = "http://127.0.0.1:%d" % server.server_address[1]
    w.hook = w.base + "/webhooks/stripe"
    w.pro, w.portal = pro["id"], portal["id"]
    w.new_events()
    w.fake.reset_log()
    yield w
    server.shutdown()
    server.server_close()


def call(w, kind, body, bearer=None, method="POST"):
    """(status, answer) of a request to the service."""
    headers = {"Content-Type": "application/json"}
    if bearer is not None:
        headers["Authorization"] = "Bearer " + bearer
    req = urllib.request.Request(w.base + "/billing/" + kind, data=json.dumps(body).encode() if method == "POST"
                                 else None, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def checkout(w, user=OWNER_C, tenant=C, **body):
    return call(w, "checkout", dict(BACK, plan="pro", **body), token(user, tenant))


def come_back(w):
    """Deliver every event Stripe emitted since the last call to the receiver, in order; all taken."""
    assert {w.fake.deliver(e, w.hook)[0] for e in w.new_events()} <= {200}


def tenant_row(w, tenant=C):
    return w.db.execute("SELECT plan_code, plan_source, status, stripe_customer_id FROM platform.tenants "
                        "WHERE id = %s", (tenant,)).fetchone()


# ---------------------------------------------------------------- the flow

def test_an_owner_subscribes_through_checkout_and_the_tenant_becomes_active_on_the_plan(svc):
    status, answer = checkout(svc)
    assert status == 200, answer
    session = svc.fake.get("checkout/sessions", answer["id"])
    assert answer["url"] == session["url"] and session["url"].startswith("https://checkout.stripe.com/")
    # the session is tied to the tenant, and so is the customer it was opened for
    assert (session["mode"], session["client_reference_id"], session["metadata"]["tenant_id"],
            session["metadata"]["plan_code"]) == ("subscription", str(C), str(C), "pro")
    customer = svc.fake.get("customers", session["customer"])
    assert customer["metadata"] == {"tenant_id": str(C), "tenant_slug": "charlie"}
    assert tenant_row(svc)["stripe_customer_id"] == customer["id"]
    audit = svc.db.execute("SELECT entity, action, after FROM platform.audit_log WHERE tenant_id = %s "
                           "AND entity = 'tenant_billing_customer'", (C,)).fetchall()
    assert audit == [{"entity": "tenant_billing_customer", "action": "create",
                      "after": {"stripe_customer_id": customer["id"], "source": "billing session"}}]
    # the customer pays on Stripe's page; the events come back through the receiver
    done = svc.fake.complete_checkout(answer["id"])
    come_back(svc)
    sub = svc.db.execute("SELECT stripe_subscription_id, status, plan_code FROM platform.subscriptions "
                         "WHERE tenant_id = %s", (C,)).fetchone()
    assert sub == {"stripe_subscription_id": done["subscription"], "status": "active", "plan_code": "pro"}
    assert tenant_row(svc)["plan_code"] == "pro" and tenant_row(svc)["plan_source"] == "customer"
    metadata = svc.fake.get("subscriptions", done["subscription"])["metadata"]
    assert metadata == {"tenant_id": str(C), "tenant_slug": "charlie"}
    # now subscribed: another Checkout would bill it twice; the portal is where plans change
    status, answer = checkout(svc, user=ADMIN_C)
    assert status == 409 and "portal" in answer["error"]
    status, answer = call(svc, "portal", {"return_url": "https://app.example.com/settings"}, token(ADMIN_C, C))
    assert status == 200, answer
    portal = svc.fake.get("billing_portal/sessions", answer["id"])
    assert (portal["customer"], portal["configuration"], portal["return_url"]) == (
        customer["id"], svc.portal, "https://app.example.com/settings")


def test_setup_mode_saves_a_payment_method_for_the_tenants_customer(svc):
    status, answer = call(svc, "checkout", dict(BACK, mode="setup"), token(OWNER_C, C))
    assert status == 200, answer
    session = svc.fake.get("checkout/sessions", answer["id"])
    assert (session["mode"], session["currency"], session["client_reference_id"]) == ("setup", "usd", str(C))
    svc.fake.complete_checkout(answer["id"])
    customer = svc.fake.get("customers", session["customer"])
    assert customer["invoice_settings"]["default_payment_method"]
    assert svc.fake.objects("subscriptions")[-1]["customer"] != customer["id"]  # no subscription from setup


def metered_price(w):
    """A metered overage price of plan pro (its api_requests meter), in Stripe and in the platform's records."""
    client = stripe.StripeClient(w.fake.api_key, stripe_version=API_VERSION, base_addresses={"api": w.fake.url})
    meter = client.raw_request("post", "/v1/billing/meters", display_name="API requests", event_name="api_requests",
                               default_aggregation={"formula": "sum"}).data
    price = client.raw_request("post", "/v1/prices", currency="usd", unit_amount_decimal="0.01",
                               product_data={"name": "Pro overage"}, recurring={
                                   "interval": "month", "usage_type": "metered", "meter": meter["id"]}).data
    w.db.execute("UPDATE platform.plan_quotas SET mode = 'overage', overage_unit_price = 0.0001 "
                 "WHERE plan_code = 'pro' AND metric = 'api_requests'")
    w.db.execute("INSERT INTO platform.plan_overage_prices (plan_code, metric, billing_cycle, currency, "
                 "unit_amount_decimal, stripe_price_id) VALUES ('pro', 'api_requests', 'month', 'usd', 0.01, %s)",
                 (price["id"],))
    return price["id"]


def test_the_plans_overage_price_and_trial_go_on_the_subscription(svc):
    metered = metered_price(svc)
    svc.db.execute("UPDATE platform.plans SET trial_days = 7 WHERE code = 'pro'")
    status, answer = checkout(svc)
    assert status == 200, answer
    done = svc.fake.complete_checkout(answer["id"])
    sub = svc.fake.get("subscriptions", done["subscription"])
    assert sorted((i["price"]["id"], i.get("quantity")) for i in sub["items"]["data"]) == sorted(
        [(svc.pro, 1), (metered, None)])
    assert sub["status"] == "trialing" and sub["trial_end"] - sub["trial_start"] == 7 * 86400
    come_back(svc)
    assert svc.db.execute("SELECT status, plan_code FROM platform.subscriptions WHERE tenant_id = %s",
                          (C,)).fetchone() == {"status": "trialing", "plan_code": "pro"}


def test_concurrent_and_retried_requests_create_one_customer(svc):
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda i: checkout(svc), range(4)))
    assert [a[0] for a in answers] == [200] * 4
    customers = [c for c in svc.fake.objects("customers") if c["metadata"].get("tenant_id") == str(C)]
    assert len(customers) == 1
    assert {svc.fake.get("checkout/sessions", a[1]["id"])["customer"] for a in answers} == {customers[0]["id"]}
    assert svc.db.execute("SELECT count(*) AS n FROM platform.audit_log WHERE tenant_id = %s "
                          "AND entity = 'tenant_billing_customer'", (C,)).fetchone()["n"] == 1
    # an answer lost after Stripe created the customer: the retry gets the same customer
    svc.db.execute("UPDATE platform.tenants SET stripe_customer_id = NULL WHERE id = %s", (C,))
    svc.fake.fail_next(status=500, after_store=True, path_prefix="/v1/customers", method="POST")
    assert checkout(svc)[0] == 200
    assert len([c for c in svc.fake.objects("customers") if c["metadata"].get("tenant_id") == str(C)]) == 1
    assert tenant_row(svc)["stripe_customer_id"] == customers[0]["id"]


def test_an_existing_customer_is_kept_never_replaced(svc):
    status, answer = checkout(svc, user=OWNER_A, tenant=A)  # alpha is subscribed (the world's set-up)
    assert status == 409
    svc.db.execute("DELETE FROM platform.subscriptions WHERE tenant_id = %s", (A,))
    before = tenant_row(svc, A)["stripe_customer_id"]
    status, answer = checkout(svc, user=OWNER_A, tenant=A)
    assert status == 200, answer
    assert svc.fake.get("checkout/sessions", answer["id"])["customer"] == before
    assert svc.fake.writes("/v1/customers") == []


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("user, tenant", [(MEMBER_A, A), (GUEST_C, C), (OWNER_B, A), (OWNER_C, uuid.uuid4())],
                         ids=["member", "guest", "owner-of-another-tenant", "no-such-tenant"])
def test_a_user_who_is_not_an_owner_or_admin_of_the_tenant_is_refused_and_nothing_is_written(svc, user, tenant):
    for kind, body in (("checkout", dict(BACK, plan="pro")), ("portal", {"return_url": BACK["cancel_url"]})):
        status, answer = call(svc, kind, body, token(user, tenant))
        refused = "billing sessions are for an owner or admin of the tenant"
        assert (status, answer) == (403, {"error": refused, "message": refused})
    assert svc.fake.writes() == []
    assert tenant_row(svc)["stripe_customer_id"] is None


@pytest.mark.parametrize("bearer", [
    None, "not-a-jwt", token(OWNER_C, C, key=OTHER_KEY), token(OWNER_C, C, exp=int(time.time()) - 120),
    token(OWNER_C, C, alg="none"), token(OWNER_C, C, alg="HS512"), token(OWNER_C, C, claims={}),
    token(OWNER_C, C, claims={"x-hasura-user-id": OWNER_C})],
    ids=["none", "garbage", "other-key", "expired", "alg-none", "alg-hs512", "no-claims", "no-tenant"])
def test_a_token_that_is_not_a_valid_platform_jwt_gets_401(svc, bearer):
    status, answer = call(svc, "checkout", dict(BACK, plan="pro"), bearer)
    assert status == 401, answer
    assert svc.fake.writes() == []


def test_an_unsigned_token_is_refused_even_with_an_empty_signature(svc):
    unsigned = token(OWNER_C, C, alg="none").rsplit(".", 1)[0] + "."
    assert call(svc, "checkout", dict(BACK, plan="pro"), unsigned)[0] == 401


@pytest.mark.parametrize("body, field", [
    (dict(BACK, plan="nope"), "plan"),
    (dict(BACK, plan="pro", cycle="year"), "plan"),  # pro has no yearly price
    (dict(BACK, plan="pro", currency="eur"), "plan"),
    (dict(BACK, plan="pro", cycle="week"), "cycle"),
    (dict(BACK, plan="pro", currency="USD"), "currency"),
    (dict(BACK), "plan"),
    (dict(BACK, plan="pro", success_url="https://evil.example.net/x"), "success_url"),
    (dict(BACK, plan="pro", cancel_url="http://app.example.com/"), "cancel_url"),
    (dict(BACK, plan="pro", cancel_url="https://app.example.com@evil.example.net/"), "cancel_url"),
    (dict(BACK, plan="pro", coupon="FREE"), "coupon"),
    (dict(BACK, mode="setup", plan="pro"), "plan"),
    (dict(BACK, plan="pro", mode="payment"), "mode"),
])
def test_a_bad_request_is_refused_naming_the_field_before_any_write(svc, body, field):
    status, answer = call(svc, "checkout", body, token(OWNER_C, C))
    assert status == 400 and answer["error"].startswith(field + ":"), answer
    assert svc.fake.writes() == []


def test_a_plan_the_platform_retired_is_refused(svc):
    svc.db.execute("UPDATE platform.plans SET active = false WHERE code = 'pro'")
    status, answer = checkout(svc)
    assert status == 400 and answer["error"].startswith("plan:")


def test_the_portal_needs_a_customer_and_only_post_is_served(svc):
    status, answer = call(svc, "portal", {"return_url": "https://a.example.org/"}, token(OWNER_C, C))
    assert status == 409 and "checkout first" in answer["error"]
    assert call(svc, "portal", {}, token(OWNER_C, C), method="GET")[0] == 405


def test_stripe_refusing_gives_502_and_stripe_down_gives_503(svc):
    # an inactive portal configuration: Stripe refuses the session
    stripe.StripeClient(svc.fake.api_key, stripe_version=API_VERSION, base_addresses={"api": svc.fake.url}).raw_request(
        "post", "/v1/billing_portal/configurations/%s" % svc.portal, active=False)
    status, answer = call(svc, "portal", {"return_url": BACK["cancel_url"]}, token(OWNER_A, A))
    assert status == 502 and "inactive configuration" in answer["error"], answer
    svc.fake.fail_next(status=500, count=10, path_prefix="/v1/checkout/sessions")
    status, answer = checkout(svc)
    assert (status, answer["error"]) == (503, "stripe unavailable")


def test_the_webhook_path_is_still_the_receivers(svc):
    svc.fake.set_status(svc.sub["alpha"], "past_due")
    come_back(svc)
    assert tenant_row(svc, A)["status"] == "past_due"


# ---------------------------------------------------------------- the fake is as strict as Stripe

@pytest.mark.parametrize("params, param", [
    ({"mode": "setup", "success_url": BACK["success_url"]}, "currency"),
    ({"mode": "subscription", "success_url": BACK["success_url"]}, "line_items"),
    ({"mode": "subscription", "line_items": [{"price": "PRICE"}], "success_url": BACK["success_url"]},
     "line_items[0][quantity]"),
    ({"mode": "subscription", "line_items": [{"price": "PRICE", "quantity": 1}]}, "success_url"),
    ({"mode": "subscription", "line_items": [{"price": "PRICE", "quantity": 1}, {"price": "METERED", "quantity": 1}],
      "success_url": BACK["success_url"]}, "line_items[1][quantity]"),
    ({"mode": "payment", "line_items": [{"price": "PRICE", "quantity": 1}], "success_url": BACK["success_url"]},
     "line_items"),
    ({"mode": "subscription", "line_items": [{"price": "PRICE", "quantity": 1}], "ui_mode": "embedded_page",
      "success_url": BACK["success_url"]}, "success_url"),
    ({"mode": "setup", "currency": "usd", "success_url": BACK["success_url"],
      "subscription_data": {"metadata": {"a": "b"}}}, "subscription_data"),
    ({"mode": "subscription", "line_items": [{"price": "PRICE", "quantity": 1}], "success_url": BACK["success_url"],
      "customer_creation": "always"}, "customer_creation"),
    ({"mode": "setup", "currency": "usd", "success_url": BACK["success_url"], "customer": "CUSTOMER",
      "customer_email": "a@example.com"}, "customer_email"),
    ({"mode": "setup", "currency": "usd", "success_url": BACK["success_url"], "client_reference_id": "x" * 201},
     "client_reference_id"),
    ({"mode": "setup", "currency": "usd", "success_url": BACK["success_url"], "customer": "cus_missing"},
     "customer"),
    ({"mode": "setup", "currency": "usd", "success_url": BACK["success_url"], "expires_at": "SOON"}, "expires_at"),
])
def test_the_fakes_checkout_refuses_what_stripe_refuses(svc, params, param):
    client = stripe.StripeClient(svc.fake.api_key, stripe_version=API_VERSION, base_addresses={"api": svc.fake.url})
    params = json.loads(json.dumps(params).replace("PRICE", svc.pro).replace("METERED", metered_price(svc)).replace(
        "CUSTOMER", tenant_row(svc, A)["stripe_customer_id"]).replace('"SOON"', str(svc.fake.now() + 600)))
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.raw_request("post", "/v1/checkout/sessions", **params)
    assert err.value.param == param, err.value


def test_the_fakes_portal_session_needs_a_configuration_when_the_account_has_no_default(svc):
    client = stripe.StripeClient(svc.fake.api_key, stripe_version=API_VERSION, base_addresses={"api": svc.fake.url})
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.raw_request("post", "/v1/billing_portal/sessions", customer=tenant_row(svc, A)["stripe_customer_id"])
    assert err.value.param == "configuration"
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.raw_request("post", "/v1/billing_portal/sessions", customer=tenant_row(svc, A)["stripe_customer_id"],
                           configuration=svc.portal, flow_data={"type": "teleport"})
    assert err.value.param.startswith("flow_data")  # the SDK's enum


# ---------------------------------------------------------------- attack tests (migration 0019)

CONTEXT = "SELECT platform.billing_session_context(%s, %s, 'pro', 'month', 'usd')"
LINK = "SELECT platform.billing_link_customer(%s, 'cus_attacker')"


@pytest.mark.parametrize("who", NON_CONTROL + ["control"])
def test_no_login_but_the_billing_service_opens_a_sessions_context_or_links_a_customer(tenants, logins, who):  # noqa: F811
    conn = logins(who)
    assert error(conn, CONTEXT, (str(A), OWNER_A)).sqlstate == "42501"
    assert error(conn, LINK, (str(C),)).sqlstate == "42501"
    assert tenants.execute("SELECT count(*) AS n FROM platform.tenants WHERE stripe_customer_id = 'cus_attacker'"
                           ).fetchone()["n"] == 0


def test_with_execute_left_to_public_the_app_could_bill_a_tenant_to_its_own_customer(tenants, logins):  # noqa: F811
    """Without the defence (EXECUTE revoked from PUBLIC), any login links a customer it controls to a tenant that has
    none, and every later Checkout of that tenant bills the attacker's customer."""
    tenants.execute("UPDATE platform.tenants SET stripe_customer_id = NULL WHERE id = %s", (B,))
    tenants.execute("GRANT EXECUTE ON FUNCTION platform.billing_link_customer(uuid, text) TO PUBLIC")
    conn = logins("app")
    assert conn.execute(LINK, (str(B),)).fetchone() == {"billing_link_customer": "cus_attacker"}


def test_the_billing_login_never_replaces_a_tenants_customer(svc, billing_login, pg_server, db):  # noqa: F811
    with pg_server.connect(db, user=billing_login) as conn:
        before = tenant_row(svc, A)["stripe_customer_id"]
        assert conn.execute(LINK, (str(A),)).fetchone() == {"billing_link_customer": before}
        assert error(conn, "SELECT platform.billing_link_customer(%s, 'acct_1')", (str(C),)).sqlstate == "22023"
        # and reads no table itself: the definer answers what a session needs
        assert error(conn, "SELECT stripe_customer_id FROM platform.tenants").sqlstate == "42501"
        assert error(conn, "UPDATE platform.tenants SET stripe_customer_id = 'cus_x' WHERE id = %s",
                     (str(C),)).sqlstate == "42501"


def test_the_sessions_role_owns_two_functions_no_login_and_only_the_columns_it_needs(tenants):  # noqa: F811
    assert_owner_role(tenants, "selfbase_billing_sessions", [
        "platform.billing_link_customer(uuid,text)", "platform.billing_session_context(uuid,uuid,text,text,text)"])
    assert tenants.execute("SELECT count(*) AS n FROM information_schema.role_table_grants "
                           "WHERE grantee = 'selfbase_billing_sessions'").fetchone()["n"] == 0
    columns = tenants.execute("SELECT table_name, privilege_type, string_agg(column_name, ',' ORDER BY column_name) "
                              "AS cols FROM information_schema.column_privileges WHERE grantee = "
                              "'selfbase_billing_sessions' GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
    assert [(r["table_name"], r["privilege_type"], r["cols"]) for r in columns] == [
        ("audit_log", "INSERT", "action,after,before,entity,entity_key,tenant_id"),
        ("plan_overage_prices", "SELECT", "active,billing_cycle,currency,metric,plan_code,stripe_price_id"),
        ("plan_prices", "SELECT", "active,billing_cycle,currency,plan_code,stripe_price_id"),
        ("plans", "SELECT", "active,code,trial_days"),
        ("subscriptions", "SELECT", "billing_cycle,plan_code,status,stripe_subscription_id,tenant_id"),
        ("tenant_members", "SELECT", "role,tenant_id,user_id"),
        ("tenants", "SELECT", "deleted_at,id,slug,status,stripe_customer_id"),
        ("tenants", "UPDATE", "stripe_customer_id,updated_at")]
    executors = {r["grantee"] for r in tenants.execute(
        "SELECT grantee FROM information_schema.routine_privileges WHERE routine_schema = 'platform' AND "
        "routine_name IN ('billing_session_context', 'billing_link_customer') AND privilege_type = 'EXECUTE'")}
    assert executors == {"selfbase_billing", "selfbase_billing_sessions"}
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        tenants.execute("SET ROLE selfbase_billing_sessions; SELECT settings FROM platform.tenants")
    tenants.execute("RESET ROLE")


def test_a_browser_on_a_return_host_may_call_and_another_origin_may_not(svc):
    def preflight(origin):
        req = urllib.request.Request(svc.base + "/billing/checkout", method="OPTIONS", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers)
    status, headers = preflight("https://app.example.com")
    assert status == 204 and headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "Authorization" in headers["Access-Control-Allow-Headers"]
    for origin in ("https://evil.example.net", "http://app.example.com", "https://app.example.com.evil.net"):
        assert "Access-Control-Allow-Origin" not in preflight(origin)[1], origin
    req = urllib.request.Request(svc.base + "/billing/checkout", data=json.dumps(dict(BACK, plan="pro")).encode(),
                                 method="POST", headers={"Origin": "https://shop.example.org",
                                                         "Authorization": "Bearer " + token(OWNER_C, C)})
    with urllib.request.urlopen(req, timeout=20) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == "https://shop.example.org"


def test_the_fakes_control_completes_a_session_over_http_once(svc):
    """The scenarios reach the fake over HTTP only: its control path does what complete_checkout does."""
    status, answer = checkout(svc)
    assert status == 200, answer

    def complete(sid):
        req = urllib.request.Request(svc.fake.url + "/_fake/checkout/sessions/%s/complete" % sid, data=b"",
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
    status, session = complete(answer["id"])
    assert status == 200 and session["status"] == "complete" and session["subscription"]
    assert complete(answer["id"])[0] == 409  # a session completes once
    assert complete("cs_test_missing")[0] == 404


def test_hasuras_action_call_is_served_with_the_callers_own_token(svc):
    """Hasura posts {action, input, session_variables} and forwards the caller's headers: the token decides, never
    the session variables Hasura sends beside it."""
    def action(user, tenant, name, args):
        body = {"action": {"name": name}, "input": args, "request_query": "mutation { %s }" % name,
                "session_variables": {"x-hasura-role": "user", "x-hasura-user-id": OWNER_C,
                                      "x-hasura-tenant-id": str(C)}}
        return call(svc, name.replace("billing", "").lower(), body, token(user, tenant))
    status, answer = action(OWNER_C, C, "billingCheckout", dict(BACK, plan="pro", cycle=None, currency=None))
    assert status == 200 and svc.fake.get("checkout/sessions", answer["id"])["client_reference_id"] == str(C)
    status, answer = action(GUEST_C, C, "billingCheckout", dict(BACK, plan="pro"))
    assert status == 403 and answer["message"] == "billing sessions are for an owner or admin of the tenant"
    status, answer = action(OWNER_C, C, "billingPortal", {"return_url": "https://evil.example.net/"})
    assert status == 400 and answer["message"].startswith("return_url:")


def checkout_elsewhere(w, tenant):
    """A Checkout opened with the platform's key outside the service: a new customer, the tenant named only by
    client_reference_id; the customer completes it."""
    session = w.fake.handle("POST", "/v1/checkout/sessions", {
        "mode": "subscription", "line_items": {"0": {"price": w.pro, "quantity": "1"}},
        "customer_email": "owner@example.com", "client_reference_id": str(tenant),
        "success_url": BACK["success_url"]})
    return w.fake.complete_checkout(session["id"])


def ledger_outcomes(w):
    return [(r["type"], r["outcome"]) for r in w.db.execute(
        "SELECT type, outcome FROM platform.stripe_events ORDER BY received_at, id")]


@pytest.mark.parametrize("order", ["as-sent", "completion-first"])
def test_a_checkout_opened_elsewhere_links_its_new_customer_when_it_completes(svc, order):
    done = checkout_elsewhere(svc, C)
    events = svc.new_events()
    types = [e["type"] for e in events]
    assert types.index("customer.subscription.created") < types.index("checkout.session.completed")
    if order == "completion-first":
        events = sorted(events, key=lambda e: e["type"] != "checkout.session.completed")
    for _round in range(2):  # every delivery twice: one effect
        assert {svc.fake.deliver(e, svc.hook)[0] for e in events} == {200}
    assert tenant_row(svc)["stripe_customer_id"] == done["customer"]
    sub = svc.db.execute("SELECT stripe_subscription_id, status, plan_code FROM platform.subscriptions "
                         "WHERE tenant_id = %s", (C,)).fetchone()
    assert sub == {"stripe_subscription_id": done["subscription"], "status": "active", "plan_code": "pro"}
    assert tenant_row(svc)["plan_code"] == "pro"
    assert svc.db.execute("SELECT count(*) AS n FROM platform.audit_log WHERE tenant_id = %s "
                          "AND entity = 'tenant_billing_customer'", (C,)).fetchone()["n"] == 1
    assert ("checkout.session.completed", "applied") in ledger_outcomes(svc)


def test_a_completed_checkout_never_replaces_a_tenants_customer(svc):
    before = tenant_row(svc, A)["stripe_customer_id"]
    done = checkout_elsewhere(svc, A)
    assert {svc.fake.deliver(e, svc.hook)[0] for e in svc.new_events()} == {200}
    assert tenant_row(svc, A)["stripe_customer_id"] == before != done["customer"]
    assert ("checkout.session.completed", "unknown_customer") in ledger_outcomes(svc)
    assert mirror_of(svc, A) == svc.sub["alpha"]


def mirror_of(w, tenant):
    return w.db.execute("SELECT stripe_subscription_id FROM platform.subscriptions WHERE tenant_id = %s",
                        (tenant,)).fetchone()["stripe_subscription_id"]
