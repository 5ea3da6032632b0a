"""Stripe events back into PostgreSQL (migration 0006 and roles/host_services/files/billing/stripe_events.py): contract tests.

The fake Stripe signs events with its endpoint's secret and delivers them to the receiver, a WSGI application
served here on a real socket, writing to a real PostgreSQL server as a login of selfbase_billing. Each delivery
fault ends with the mirror equal to Stripe's state and no effect applied twice."""

from __future__ import annotations

import json
import pathlib
import socketserver
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import psycopg
import pytest
import stripe

from fakes.stripe_fake import API_VERSION
from test_isolation import A, B, tenants  # noqa: F401  pylint: disable=unused-import
from test_security import NON_CONTROL, ROLES, act_for, assert_owner_role, error, logins  # noqa: F401  pylint: disable=unused-import

ROOT = pathlib.Path(__file__).resolve().parents[2]
PATHS = [str(ROOT / ".cache" / "collections"), str(ROOT / "roles" / "host_services" / "files" / "billing")]
sys.path[:0] = PATHS
import stripe_events  # noqa: E402  pylint: disable=wrong-import-position


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture()
def billing_login(tenants, db):  # noqa: F811
    name = f"billing_{uuid.uuid4().hex[:6]}"
    tenants.execute(f'CREATE ROLE "{name}" LOGIN IN ROLE selfbase_billing')
    yield name
    tenants.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'")
    tenants.execute(f'DROP OWNED BY "{name}"')
    tenants.execute(f'DROP ROLE "{name}"')


@pytest.fixture()
def world(tenants, stripe_fake, pg_server, db, billing_login):  # noqa: F811
    """Stripe customers and subscriptions for tenants alpha and bravo (mirrored as tenant_subscription leaves
    them), a webhook endpoint, and the receiver listening on 127.0.0.1."""
    for table in ("stripe_events", "invoices", "customer_payment_state", "tenant_dunning", "tenant_entitlements"):
        tenants.execute(f"DELETE FROM platform.{table}")  # seeded for the isolation tests
    client = stripe.StripeClient(stripe_fake.api_key, stripe_version=API_VERSION,
                                 base_addresses={"api": stripe_fake.url})

    def post(path, **params):
        return client.raw_request("post", path, **params).data

    price = post("/v1/prices", currency="usd", unit_amount=2900, recurring={"interval": "month"},
                 product_data={"name": "Pro"})
    # the price is plan iso's in the platform's own records, as billing_plan leaves them
    tenants.execute("INSERT INTO platform.plan_prices (plan_code, billing_cycle, currency, unit_amount, "
                    "stripe_price_id) VALUES ('iso', 'month', 'usd', 2900, %s)", (price["id"],))
    tenants.execute("UPDATE platform.subscriptions SET stripe_price_id = %s", (price["id"],))
    subs = {}
    for tenant, slug in ((A, "alpha"), (B, "bravo")):
        cus = post("/v1/customers", name=slug, metadata={"tenant_id": str(tenant)})
        stripe_fake.attach_payment_method(cus["id"])
        sub = post("/v1/subscriptions", customer=cus["id"], items=[{"price": price["id"]}])
        tenants.execute("UPDATE platform.tenants SET stripe_customer_id = %s WHERE id = %s", (cus["id"], tenant))
        tenants.execute("UPDATE platform.subscriptions SET stripe_customer_id = %s, stripe_subscription_id = %s, "
                        "status = %s WHERE tenant_id = %s", (cus["id"], sub["id"], sub["status"], tenant))
        subs[slug] = sub["id"]
    post("/v1/webhook_endpoints", url="http://127.0.0.1/webhooks/stripe", enabled_events=["*"])
    dsn = pg_server.conninfo(db, user=billing_login)
    reader = stripe_events.StripeApi(stripe_fake.api_key, stripe_fake.url, API_VERSION, timeout=5, retries=1)
    receiver = stripe_events.Receiver(dsn, [stripe_fake.secret()], reader)
    server = _Server(("127.0.0.1", 0), _Quiet)
    server.set_app(receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    class World:
        fake, db, conn, sub = stripe_fake, tenants, tenants, subs
        url = "http://127.0.0.1:%d/webhooks/stripe" % server.server_address[1]

        def __init__(self):
            self.receiver, self.dsn, self.reader, self.mark = receiver, dsn, reader, 0

        def new_events(self):
            """Events Stripe emitted since the last call, oldest first."""
            events = stripe_fake.events()
            out, self.mark = events[self.mark:], len(events)
            return out

        def deliver(self, events, **kw):
            return [stripe_fake.deliver(e, self.url, **kw) for e in events]

    w = World()
    w.new_events()  # the set-up's events were applied by the modules that made them
    yield w
    server.shutdown()
    server.server_close()


def ledger(conn):
    return conn.execute("SELECT id, type, outcome, source FROM platform.stripe_events ORDER BY received_at, id").fetchall()


def tenant_status(conn, tenant):
    return conn.execute("SELECT status FROM platform.tenants WHERE id = %s", (tenant,)).fetchone()["status"]


def mirror(conn, tenant):
    return conn.execute("SELECT status, items FROM platform.subscriptions WHERE tenant_id = %s", (tenant,)).fetchone()


def transitions(conn, tenant):
    return [(r["before"]["status"], r["after"]["status"], r["after"]["dunning"]) for r in conn.execute(
        "SELECT before, after FROM platform.audit_log WHERE tenant_id = %s AND entity = 'dunning' ORDER BY id",
        (tenant,))]


def assert_in_step(w, *slugs):
    """The mirrors of these tenants equal Stripe's state: the subscription and every invoice of the customer."""
    for slug in slugs or ("alpha",):
        tenant = {"alpha": A, "bravo": B}[slug]
        sub = w.fake.get("subscriptions", w.sub[slug])
        row = w.db.execute("SELECT * FROM platform.subscriptions WHERE tenant_id = %s", (tenant,)).fetchone()
        assert (row["stripe_subscription_id"], row["status"], row["cancel_at_period_end"]) == (
            sub["id"], sub["status"], sub["cancel_at_period_end"]), slug
        assert row["items"] == [{"id": i["id"], "price": i["price"]["id"], "quantity": i.get("quantity"),
                                 "current_period_start": i["current_period_start"],
                                 "current_period_end": i["current_period_end"]} for i in sub["items"]["data"]], slug
        assert (row["canceled_at"] and int(row["canceled_at"].timestamp())) == sub["canceled_at"], slug
        want = {i["id"]: i for i in w.fake.objects("invoices") if i["customer"] == sub["customer"]}
        got = {r["stripe_invoice_id"]: r for r in w.db.execute(
            "SELECT * FROM platform.invoices WHERE tenant_id = %s", (tenant,))}
        assert set(got) == set(want), slug
        for iid, inv in want.items():
            assert {k: got[iid][k] for k in ("status", "amount_due", "amount_paid", "amount_remaining",
                                             "attempt_count", "number")} == \
                {k: inv[k] for k in ("status", "amount_due", "amount_paid", "amount_remaining", "attempt_count",
                                     "number")}, (slug, iid)


def fail_renewal(w, slug="alpha"):
    inv = w.fake.invoice(w.sub[slug])
    w.fake.fail_payment(inv)
    return inv


# ---------------------------------------------------------------- delivery


def test_a_signed_event_is_applied_once_and_a_duplicate_has_no_second_effect(world):
    inv = fail_renewal(world)
    events = world.new_events()
    assert [e["type"] for e in events] == ["invoice.created", "invoice.finalized", "invoice.payment_failed",
                                           "customer.subscription.updated"]
    answers = world.deliver(events)
    assert [a[0] for a in answers] == [200] * 4, answers
    assert [a[1]["outcome"] for a in answers] == ["applied"] * 4
    assert tenant_status(world.db, A) == "past_due" and tenant_status(world.db, B) == "active"
    assert mirror(world.db, A)["status"] == "past_due"
    row = world.db.execute("SELECT status, attempt_count, amount_remaining FROM platform.invoices "
                           "WHERE stripe_invoice_id = %s", (inv,)).fetchone()
    assert row == {"status": "open", "attempt_count": 1, "amount_remaining": 2900}
    before = world.db.execute("SELECT count(*) AS n FROM platform.audit_log").fetchone()["n"]
    again = world.deliver(events + events)  # Stripe retries, and delivers twice
    assert again == [(200, dict(a[1], outcome="duplicate", tenant=None, status_before=None, status_after=None))
                     for a in answers + answers]
    assert world.db.execute("SELECT count(*) AS n FROM platform.audit_log").fetchone()["n"] == before
    assert transitions(world.db, A) == [("active", "past_due", "past_due")]
    assert [r["id"] for r in ledger(world.db)] == [e["id"] for e in events]
    assert_in_step(world)


def post(url, body, headers):
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.parametrize("fault", ["wrong secret", "tampered body", "stale", "future", "no header", "not JSON"])
def test_a_bad_or_stale_signature_gets_400_and_writes_nothing(world, fault):
    fail_renewal(world)
    event = world.new_events()[2]
    body = json.dumps(event).encode()
    now, secret = world.fake.now(), world.fake.secret()
    sign = world.fake.signature
    status = {
        "wrong secret": lambda: post(world.url, body, {"Stripe-Signature": sign(body, "whsec_" + "0" * 32, now)}),
        "tampered body": lambda: post(world.url, body.replace(b'"attempt_count": 1', b'"attempt_count": 0'),
                                      {"Stripe-Signature": sign(body, secret, now)}),
        "stale": lambda: post(world.url, body, {"Stripe-Signature": sign(body, secret, now - 301)}),
        "future": lambda: post(world.url, body, {"Stripe-Signature": sign(body, secret, now + 301)}),
        "no header": lambda: post(world.url, body, {}),
        "not JSON": lambda: post(world.url, b"not json", {"Stripe-Signature": sign(b"not json", secret, now)}),
    }[fault]()
    assert status == 400
    assert ledger(world.db) == [] and tenant_status(world.db, A) == "active"
    assert post(world.url, body, {"Stripe-Signature": sign(body, secret, now - 290)}) == 200  # within tolerance


def test_two_secrets_are_accepted_during_a_rotation(world):
    fail_renewal(world)
    events = world.new_events()
    new_secret = "whsec_" + "1" * 32
    world.receiver.secrets = [new_secret, world.fake.secret()]
    assert world.fake.deliver(events[0], world.url)[0] == 200  # the old secret
    assert world.fake.deliver(events[1], world.url, secret=new_secret)[0] == 200
    world.receiver.secrets = [new_secret]
    assert world.fake.deliver(events[2], world.url)[0] == 400  # the old secret, once rotated away
    assert len(ledger(world.db)) == 2


def test_a_discount_reaches_the_mirror_and_mrr_through_the_receiver(world):
    """Stripe's subscription is re-fetched with its discount's coupon: the mirror, a new version and MRR follow."""
    coupon = world.fake.handle("POST", "/v1/coupons", {"amount_off": "500", "currency": "usd", "duration": "forever"})
    world.fake.handle("POST", "/v1/subscriptions/%s" % world.sub["alpha"],
                      {"discounts": {"0": {"coupon": coupon["id"]}}})
    events = world.new_events()
    assert [e["type"] for e in events] == ["coupon.created", "customer.subscription.updated"]
    assert [a[0] for a in world.deliver(events)] == [200, 200]
    row = world.db.execute("SELECT discount, started_at FROM platform.subscriptions WHERE tenant_id = %s",
                           (A,)).fetchone()
    assert row["discount"] == {"coupon": coupon["id"], "promotion_code": None, "percent_off": None,
                               "amount_off": 500, "duration": "forever", "end": None}, row
    mrr = world.db.execute("SELECT mrr FROM platform.mrr_at(now()) WHERE tenant_id = %s", (A,)).fetchone()
    assert mrr is not None and mrr["mrr"] == 2400, mrr


def test_out_of_order_and_late_delivery_never_moves_the_mirror_back(world):
    inv = fail_renewal(world)
    failed = world.new_events()
    world.fake.pay(inv)
    paid = world.new_events()
    assert [e["type"] for e in paid] == ["invoice.paid", "invoice.payment_succeeded", "customer.subscription.updated"]
    # the newest first, then the old ones (late: past_due snapshots in their bodies)
    assert [a[0] for a in world.deliver(paid[::-1] + failed)] == [200] * 7
    assert mirror(world.db, A)["status"] == "active"
    assert world.db.execute("SELECT status FROM platform.invoices WHERE stripe_invoice_id = %s",
                            (inv,)).fetchone()["status"] == "paid"
    assert tenant_status(world.db, A) == "active" and transitions(world.db, A) == []
    # the snapshot in the event said past_due: only the re-fetched state was applied
    assert failed[-1]["data"]["object"]["status"] == "past_due"
    assert_in_step(world)


def test_the_database_failing_mid_delivery_gives_503_and_writes_nothing(world, pg_server, db, billing_login):
    fail_renewal(world)
    events = world.new_events()
    holder = pg_server.connect(db)
    holder.execute("BEGIN")
    holder.execute("SELECT 1 FROM platform.tenants WHERE id = %s FOR UPDATE", (A,))  # the receiver waits here
    out = []
    t = threading.Thread(target=lambda: out.append(world.fake.deliver(events[2], world.url)))
    t.start()
    for attempt in range(100):
        waiting = world.db.execute("SELECT pid FROM pg_stat_activity WHERE usename = %s AND wait_event_type = "
                                   "'Lock'", (billing_login,)).fetchall()
        if waiting:
            break
        time.sleep(0.05)
    assert waiting, "the receiver never reached the lock in %d checks" % attempt
    world.db.execute("SELECT pg_terminate_backend(%s)", (waiting[0]["pid"],))
    t.join(10)
    holder.execute("ROLLBACK")
    holder.close()
    assert out[0][0] == 503
    assert ledger(world.db) == [] and mirror(world.db, A)["status"] == "active"
    # the database refuses connections: 503 again, and Stripe's next retry is applied once
    with pg_server.connect() as admin:
        admin.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (billing_login,))
        try:
            assert world.fake.deliver(events[2], world.url)[0] == 503
        finally:
            admin.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
    assert [a[0] for a in world.deliver(events + events)] == [200] * 8
    assert [r["outcome"] for r in ledger(world.db)] == ["applied"] * 4
    assert transitions(world.db, A) == [("active", "past_due", "past_due")]
    assert_in_step(world)


def test_stripe_unreachable_during_the_re_fetch_gives_503_and_writes_nothing(world):
    fail_renewal(world)
    events = world.new_events()
    event = events[2]
    world.fake.fail_next(status=500, count=2, path_prefix="/v1/invoices", method="GET")  # the reader tries twice
    assert world.fake.deliver(event, world.url)[0] == 503
    assert ledger(world.db) == []
    assert world.fake.deliver(event, world.url)[0] == 200 and tenant_status(world.db, A) == "past_due"
    world.deliver([e for e in events if e["id"] != event["id"]])
    assert_in_step(world)


KILLED_RECEIVER = """
import os, signal, sys
from wsgiref.simple_server import make_server
sys.path[:0] = sys.argv[1].split(":")
import stripe_events
reader = stripe_events.StripeApi(sys.argv[3], sys.argv[4], sys.argv[5], timeout=5, retries=0)
app = stripe_events.Receiver(sys.argv[2], [sys.argv[6]], reader)
app.after_commit = lambda event: os.kill(os.getpid(), signal.SIGKILL)  # dies before it answers
server = make_server("127.0.0.1", 0, app)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def test_a_receiver_killed_after_commit_applies_nothing_twice(world):
    fail_renewal(world)
    events = world.new_events()
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RECEIVER, ":".join(PATHS), world.dsn,
                             world.fake.api_key, world.fake.url, API_VERSION, world.fake.secret()],
                            stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    status = world.fake.deliver(events[2], "http://127.0.0.1:%d/webhooks/stripe" % port)[0]
    assert proc.wait(10) == -9 and status == 0  # no answer: Stripe will deliver again
    assert [r["outcome"] for r in ledger(world.db)] == ["applied"] and tenant_status(world.db, A) == "past_due"
    assert [a[1]["outcome"] for a in world.deliver(events)] == ["applied", "applied", "duplicate", "applied"]
    assert transitions(world.db, A) == [("active", "past_due", "past_due")]
    assert_in_step(world)


# ---------------------------------------------------------------- plan changes made in Stripe (migration 0017)


def team_plan(world, cycle="month", amount=9900, in_price_book=True):
    """Plan team, with a larger API quota than iso's, and a Stripe price; recorded as team's unless told not to."""
    world.db.execute("INSERT INTO platform.plans (code, name) VALUES ('team', 'Team') ON CONFLICT DO NOTHING")
    world.db.execute("INSERT INTO platform.plan_quotas (plan_code, metric, limit_value, period, mode) "
                     "VALUES ('team', 'api_requests', 5000000, 'month', 'hard') ON CONFLICT DO NOTHING")
    price = world.fake.handle("POST", "/v1/prices", {"currency": "usd", "unit_amount": str(amount),
                                                     "recurring": {"interval": cycle},
                                                     "product_data": {"name": "Team"}})
    if in_price_book:
        world.db.execute("INSERT INTO platform.plan_prices (plan_code, billing_cycle, currency, unit_amount, "
                         "stripe_price_id) VALUES ('team', %s, 'usd', %s, %s)", (cycle, amount, price["id"]))
    return price["id"]


def switch_price(world, price, metadata=None, slug="alpha"):
    """What the Customer Portal or the dashboard does: the subscription's item gets another price."""
    sub = world.fake.get("subscriptions", world.sub[slug])
    params = {"items": {"0": {"id": sub["items"]["data"][0]["id"], "price": price}}}
    if metadata:
        params["metadata"] = metadata
    world.fake.handle("POST", "/v1/subscriptions/%s" % world.sub[slug], params)
    return world.new_events()


def plan_of(conn, tenant):
    return conn.execute("SELECT t.plan_code, t.billing_cycle, t.plan_source, s.plan_code AS mirrored "
                        "FROM platform.tenants t JOIN platform.subscriptions s ON s.tenant_id = t.id "
                        "WHERE t.id = %s", (tenant,)).fetchone()


def api_quota(conn, tenant):
    return conn.execute("SELECT limit_value FROM platform.effective_quotas(%s) WHERE metric = 'api_requests'",
                        (tenant,)).fetchone()["limit_value"]


def plan_audit(conn, tenant):
    return [(r["before"]["plan"], r["after"]["plan"], r["after"]["plan_source"]) for r in conn.execute(
        "SELECT before, after FROM platform.audit_log WHERE tenant_id = %s AND entity = 'tenant_plan' ORDER BY id",
        (tenant,))]


def test_a_price_changed_in_stripe_moves_the_tenant_to_the_plan_that_owns_it_once(world):
    """An upgrade in the portal changes the price and not the metadata: the plan comes from the price book, and
    the tenant's plan, cycle and quotas follow, once, however often or late the event comes."""
    assert api_quota(world.db, A) == 1000000
    events = switch_price(world, team_plan(world, cycle="year", amount=99000), metadata={"plan_code": "iso"})
    assert events[-1]["type"] == "customer.subscription.updated", [e["type"] for e in events]
    answers = world.deliver(events + events[::-1])
    assert [a[0] for a in answers] == [200] * len(answers)
    assert plan_of(world.db, A) == {"plan_code": "team", "billing_cycle": "year", "plan_source": "customer",
                                    "mirrored": "team"}
    assert api_quota(world.db, A) == 5000000
    assert plan_of(world.db, B)["plan_code"] == "iso" and plan_of(world.db, B)["plan_source"] == "operator"
    assert plan_audit(world.db, A) == [("iso", "team", "customer")]
    # a later event about the same subscription (a renewal, a metadata edit) changes the plan no more
    world.fake.handle("POST", "/v1/subscriptions/%s" % world.sub["alpha"], {"metadata": {"note": "x"}})
    world.deliver(world.new_events())
    assert plan_audit(world.db, A) == [("iso", "team", "customer")]
    assert_in_step(world)


def test_back_to_the_first_plan_in_the_portal_follows_too(world):
    first = world.fake.get("subscriptions", world.sub["alpha"])["items"]["data"][0]["price"]["id"]
    world.deliver(switch_price(world, team_plan(world)))
    world.deliver(switch_price(world, first))
    assert plan_of(world.db, A) == {"plan_code": "iso", "billing_cycle": "month", "plan_source": "customer",
                                    "mirrored": "iso"}
    assert api_quota(world.db, A) == 1000000
    assert plan_audit(world.db, A) == [("iso", "team", "customer"), ("team", "iso", "customer")]


def test_a_price_no_plan_owns_is_refused_and_the_tenant_keeps_its_plan(world):
    """A price made in the dashboard and never given to a plan: recorded as unknown_price (an alert reads it),
    the subscription's state is still mirrored, the tenant's plan and quotas stay."""
    events = switch_price(world, team_plan(world, in_price_book=False), metadata={"plan_code": "team"})
    answers = world.deliver(events)
    assert answers[-1][1]["outcome"] == "unknown_price", answers
    assert plan_of(world.db, A) == {"plan_code": "iso", "billing_cycle": "month", "plan_source": "operator",
                                    "mirrored": "iso"}
    assert api_quota(world.db, A) == 1000000 and plan_audit(world.db, A) == []
    assert_in_step(world)  # status and items are Stripe's
    assert ("customer.subscription.updated", "unknown_price") in [(r["type"], r["outcome"]) for r in ledger(world.db)]


def test_an_event_waits_for_a_subscription_run_that_holds_the_tenant(world):
    """tenant_subscription holds the tenant's row from its Stripe writes to its mirror write: an event that
    arrives meanwhile waits, then finds the mirror in step and takes nothing for the customer's doing."""
    price = team_plan(world)
    events = switch_price(world, price)
    holder = psycopg.connect(world.conn.info.dsn)  # the control plane's connection, as the module's
    try:
        holder.execute("SELECT 1 FROM platform.tenants WHERE id = %s FOR UPDATE", (A,))
        done = []
        thread = threading.Thread(target=lambda: done.append(world.deliver(events)))
        thread.start()
        time.sleep(1.0)
        assert not done, "the event did not wait for the tenant's row"
        # the operator's run writes the mirror and the plan as tenant_subscription does, then commits
        holder.execute("UPDATE platform.subscriptions SET stripe_price_id = %s, plan_code = 'team' "
                       "WHERE tenant_id = %s", (price, A))
        holder.execute("UPDATE platform.tenants SET plan_code = 'team' WHERE id = %s", (A,))
        holder.commit()
        thread.join(30)
        assert done and [a[0] for a in done[0]] == [200] * len(events)
    finally:
        holder.close()
    assert plan_of(world.db, A)["plan_source"] == "operator" and plan_audit(world.db, A) == []


# ---------------------------------------------------------------- dunning


def test_the_dunning_path_past_due_then_suspended_then_paid(world, billing_login):
    conn = stripe_events.connect(world.dsn)
    inv = fail_renewal(world)
    world.deliver(world.new_events())
    assert tenant_status(world.db, A) == "past_due"
    assert stripe_events.dunning_tick(conn) == []  # within the grace period: access is kept
    edge = {r["slug"]: r["status"] for r in world.db.execute("SELECT * FROM platform.edge_enforcement(80)")}
    assert edge["alpha"] == "past_due"
    world.db.execute("UPDATE platform.tenant_dunning SET grace_ends_at = now() - interval '1 second'")
    assert stripe_events.dunning_tick(conn) == [
        {"tenant": "alpha", "status_before": "past_due", "status_after": "suspended"}]
    assert stripe_events.dunning_tick(conn) == []
    edge = {r["slug"]: r["status"] for r in world.db.execute("SELECT * FROM platform.edge_enforcement(80)")}
    assert edge["alpha"] == "suspended"
    world.fake.pay(inv)
    world.deliver(world.new_events())
    assert tenant_status(world.db, A) == "active"
    assert "alpha" not in {r["slug"] for r in world.db.execute("SELECT * FROM platform.edge_enforcement(80)")}
    assert transitions(world.db, A) == [("active", "past_due", "past_due"), ("past_due", "suspended", "suspended"),
                                        ("suspended", "active", None)]
    assert_in_step(world)
    actors = {r["actor"] for r in world.db.execute("SELECT actor FROM platform.audit_log WHERE entity = 'dunning'")}
    assert actors == {billing_login}
    conn.close()


@pytest.mark.parametrize("status", ["unpaid", "canceled"])
def test_an_unpaid_or_canceled_subscription_suspends_at_once(world, status):
    world.fake.set_status(world.sub["alpha"], status)
    assert [a[1]["outcome"] for a in world.deliver(world.new_events())] == ["applied"]
    assert tenant_status(world.db, A) == "suspended" and mirror(world.db, A)["status"] == status
    assert transitions(world.db, A) == [("active", "suspended", "suspended")]
    assert_in_step(world)


def test_an_incomplete_subscription_that_expires_voids_its_invoice_and_suspends_the_tenant(world):
    """Stripe's path when a first invoice is never paid: the subscription starts incomplete with an open invoice;
    23 hours later the invoice is voided and the subscription is incomplete_expired. The receiver brings both to
    the mirrors and suspends the tenant."""
    client = stripe.StripeClient(world.fake.api_key, stripe_version=API_VERSION,
                                 base_addresses={"api": world.fake.url})
    old = world.fake.get("subscriptions", world.sub["alpha"])
    client.raw_request("delete", "/v1/subscriptions/%s" % old["id"])
    sub = client.raw_request("post", "/v1/subscriptions", customer=old["customer"],
                             items=[{"price": old["items"]["data"][0]["price"]["id"]}],
                             payment_behavior="default_incomplete").data
    world.db.execute("UPDATE platform.subscriptions SET stripe_subscription_id = %s WHERE tenant_id = %s",
                     (sub["id"], A))
    world.sub["alpha"] = sub["id"]
    assert sub["status"] == "incomplete" and sub["latest_invoice"]
    first = world.fake.get("invoices", sub["latest_invoice"])
    assert (first["status"], first["billing_reason"]) == ("open", "subscription_create")
    world.deliver(world.new_events())
    assert mirror(world.db, A)["status"] == "incomplete"
    world.fake.advance(23 * 3600)
    events = world.new_events()
    assert [e["type"] for e in events] == ["invoice.voided", "customer.subscription.updated"]
    answers = world.deliver(events, timestamp=int(time.time()))  # the receiver's clock, not the fake's advanced one
    assert [a[1].get("outcome") for a in answers] == ["applied", "applied"], answers
    assert world.fake.get("invoices", first["id"])["status"] == "void"
    assert mirror(world.db, A)["status"] == "incomplete_expired" and tenant_status(world.db, A) == "suspended"
    assert_in_step(world)


@pytest.mark.parametrize("reactivate", [False, True])
def test_a_tenant_an_operator_suspended_is_reactivated_only_if_the_policy_says_so(world, reactivate):
    world.db.execute("UPDATE platform.tenants SET status = 'suspended' WHERE id = %s", (A,))
    world.db.execute("UPDATE platform.billing_policy SET reactivate_suspended = %s", (reactivate,))
    inv = fail_renewal(world)
    world.deliver(world.new_events())
    assert tenant_status(world.db, A) == "suspended"
    world.fake.pay(inv)
    world.deliver(world.new_events())
    assert tenant_status(world.db, A) == ("active" if reactivate else "suspended")
    assert world.db.execute("SELECT count(*) AS n FROM platform.tenant_dunning").fetchone()["n"] == 0


def test_invoices_and_payment_state_are_mirrored_without_card_data(world):
    inv = fail_renewal(world)
    world.fake.attach_payment_method(world.db.execute("SELECT stripe_customer_id AS c FROM platform.tenants "
                                                      "WHERE id = %s", (A,)).fetchone()["c"], "mastercard", "4444")
    world.deliver(world.new_events())
    want = world.fake.get("invoices", inv)
    row = world.db.execute("SELECT * FROM platform.invoices WHERE stripe_invoice_id = %s", (inv,)).fetchone()
    for key in ("number", "status", "currency", "amount_due", "amount_paid", "amount_remaining", "total",
                "hosted_invoice_url", "invoice_pdf"):
        assert row[key] == want[key], key
    assert row["lines"] == [{"description": line["description"], "amount": line["amount"], "quantity": line["quantity"],
                             "period_start": line["period"]["start"], "period_end": line["period"]["end"]}
                            for line in want["lines"]["data"]]
    pay = world.db.execute("SELECT * FROM platform.customer_payment_state WHERE tenant_id = %s", (A,)).fetchone()
    assert (pay["has_payment_method"], pay["brand"], pay["last4"]) == (True, "mastercard", "4444")
    columns = {r["column_name"] for r in world.db.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'customer_payment_state'")}
    assert not columns & {"exp_month", "exp_year", "number", "cvc", "fingerprint"}


def test_tax_reaches_the_invoice_and_customer_mirrors(world):
    """Stripe Tax on an invoice, and a customer's address, tax status and tax IDs as the application sets them at
    Stripe (Checkout, the Customer Portal): the receiver re-fetches the customer with its tax and tax IDs."""
    fake = world.fake
    customer = world.db.execute("SELECT stripe_customer_id AS c FROM platform.tenants WHERE id = %s",
                                (A,)).fetchone()["c"]
    fake.handle("POST", "/v1/tax/settings", {"head_office": {"address": {"country": "DE"}}})
    fake.handle("POST", "/v1/tax/registrations", {"country": "DE", "active_from": "now",
                                                  "country_options": {"de": {"type": "standard"}}})
    fake.handle("POST", "/v1/customers/%s" % customer, {"address": {"country": "DE", "city": "Berlin"}})
    tax_id = fake.handle("POST", "/v1/customers/%s/tax_ids" % customer, {"type": "eu_vat", "value": "DE123456789"})
    fake.handle("POST", "/v1/subscriptions/%s" % world.sub["alpha"], {"automatic_tax": {"enabled": "true"}})
    inv = fake.invoice(world.sub["alpha"])
    events = world.new_events()
    assert [e["type"] for e in events] == ["customer.updated", "customer.tax_id.created",
                                           "customer.subscription.updated", "invoice.created", "invoice.finalized"]
    assert [a[1]["outcome"] for a in world.deliver(events)] == ["applied"] * 5
    want = fake.get("invoices", inv)
    row = world.db.execute("SELECT tax, total, total_excluding_tax FROM platform.invoices "
                           "WHERE stripe_invoice_id = %s", (inv,)).fetchone()
    assert row["tax"] == sum(t["amount"] for t in want["total_taxes"]) > 0
    assert (row["total"], row["total_excluding_tax"]) == (want["total"], want["total_excluding_tax"])
    state = world.db.execute("SELECT * FROM platform.customer_payment_state WHERE tenant_id = %s", (A,)).fetchone()
    assert state["address"] == {"line1": None, "line2": None, "city": "Berlin", "state": None, "postal_code": None,
                                "country": "DE"}
    assert (state["tax_exempt"], state["tax_location"]) == ("none", "supported")
    assert state["tax_ids"] == [{"type": "eu_vat", "value": "DE123456789", "verification": "pending"}]
    # the tax ID removed: its event alone brings the mirror along
    fake.handle("DELETE", "/v1/customers/%s/tax_ids/%s" % (customer, tax_id["id"]), {})
    events = world.new_events()
    assert [e["type"] for e in events] == ["customer.tax_id.deleted"]
    assert [a[1]["outcome"] for a in world.deliver(events)] == ["applied"]
    assert world.db.execute("SELECT tax_ids FROM platform.customer_payment_state WHERE tenant_id = %s",
                            (A,)).fetchone()["tax_ids"] == []


def test_a_detached_card_leaves_the_customer_without_a_payment_method(world):
    """payment_method.detached no longer names the customer: the receiver finds it in previous_attributes."""
    customer = world.db.execute("SELECT stripe_customer_id AS c FROM platform.tenants WHERE id = %s",
                                (A,)).fetchone()["c"]
    pm = world.fake.attach_payment_method(customer, "mastercard", "4444")
    world.deliver(world.new_events())
    pay = world.db.execute("SELECT * FROM platform.customer_payment_state WHERE tenant_id = %s", (A,)).fetchone()
    assert (pay["has_payment_method"], pay["last4"]) == (True, "4444")
    world.fake.detach_payment_method(pm)
    events = world.new_events()
    assert [e["type"] for e in events] == ["payment_method.detached", "customer.updated"]
    assert events[0]["data"]["object"]["customer"] is None
    assert events[0]["data"]["previous_attributes"] == {"customer": customer}
    assert events[1]["data"]["previous_attributes"]["invoice_settings"]["default_payment_method"] == pm
    # the detached event alone (customer.updated lost) is enough
    assert [a[1]["outcome"] for a in world.deliver(events[:1])] == ["applied"]
    pay = world.db.execute("SELECT * FROM platform.customer_payment_state WHERE tenant_id = %s", (A,)).fetchone()
    assert (pay["has_payment_method"], pay["brand"], pay["last4"]) == (False, None, None)


def test_the_event_list_is_as_strict_as_stripes(world):
    """type and types together are refused; events older than 30 days are no longer served."""
    client = stripe.StripeClient(world.fake.api_key, stripe_version=API_VERSION,
                                 base_addresses={"api": world.fake.url})
    with pytest.raises(stripe.InvalidRequestError, match="one of these parameters"):
        client.raw_request("get", "/v1/events", type="invoice.paid", types=["invoice.created"])
    old = world.fake.events()[0]
    assert client.raw_request("get", "/v1/events/%s" % old["id"]).data["id"] == old["id"]
    world.fake.advance(30 * 86400 + 1)
    with pytest.raises(stripe.InvalidRequestError, match="No such event"):
        client.raw_request("get", "/v1/events/%s" % old["id"])
    assert world.reader.events_since(0) == []


def test_events_of_an_unknown_customer_or_kind_are_recorded_not_applied(world, stripe_fake):
    client = stripe.StripeClient(stripe_fake.api_key, stripe_version=API_VERSION,
                                 base_addresses={"api": stripe_fake.url})
    client.raw_request("post", "/v1/customers", name="stranger")
    other = {"id": "evt_" + uuid.uuid4().hex, "object": "event", "api_version": API_VERSION,
             "created": stripe_fake.now(), "livemode": False, "type": "charge.refunded",
             "data": {"object": {"id": "ch_1", "object": "charge"}}}
    answers = world.deliver(world.new_events() + [other])
    assert [a[0] for a in answers] == [200, 200], answers
    assert [a[1]["outcome"] for a in answers] == ["unknown_customer", "ignored"]
    assert [(r["type"], r["outcome"]) for r in ledger(world.db)] == [("customer.created", "unknown_customer"),
                                                                     ("charge.refunded", "ignored")]


# ---------------------------------------------------------------- reconcile


def test_reconcile_recovers_the_events_missed_while_the_receiver_was_down(world):
    inv = fail_renewal(world)
    world.fake.pay(inv)
    world.fake.set_status(world.sub["bravo"], "unpaid")
    missed = world.new_events()
    conn = stripe_events.connect(world.dsn)
    counts = stripe_events.reconcile(conn, world.reader)
    # the set-up's events too: the cursor starts 30 days back
    assert counts["applied"] >= len(missed) and "duplicate" not in counts
    assert tenant_status(world.db, A) == "active" and tenant_status(world.db, B) == "suspended"
    assert {r["id"] for r in ledger(world.db)} >= {e["id"] for e in missed}
    assert set(r["source"] for r in ledger(world.db)) == {"reconcile"}
    # a second run finds nothing new, and so does a delivery arriving late
    assert set(stripe_events.reconcile(conn, world.reader)) <= {"duplicate"}
    assert {a[1]["outcome"] for a in world.deliver(missed)} == {"duplicate"}
    assert transitions(world.db, B) == [("active", "suspended", "suspended")]
    assert_in_step(world, "alpha", "bravo")
    conn.close()


GAP = ("SELECT COALESCE((SELECT extract(epoch FROM gap_to - gap_from) FROM platform.stripe_sync_state "
       "WHERE gap_found_at > now() - interval '7 days'), 0)::float8 AS g")


def test_a_cursor_older_than_stripes_30_days_is_recorded_as_lost_events(world, logins):  # noqa: F811
    conn = stripe_events.connect(world.dsn)
    assert "lost_seconds" not in stripe_events.reconcile(conn, world.reader)
    monitor = logins("monitor")
    assert monitor.execute(GAP).fetchone()["g"] == 0
    # the sync did not run for 40 days: Stripe lists only the last 30 of them
    world.db.execute("UPDATE platform.stripe_sync_state SET cursor = now() - interval '40 days'")
    counts = stripe_events.reconcile(conn, world.reader)
    assert abs(counts["lost_seconds"] - 10 * 86400) < 60, counts
    assert abs(monitor.execute(GAP).fetchone()["g"] - 10 * 86400) < 60
    # the cursor moved on: the next run loses nothing, and the gap stays on record for the alert
    assert "lost_seconds" not in stripe_events.reconcile(conn, world.reader)
    assert monitor.execute(GAP).fetchone()["g"] > 0
    err = error(conn, "SELECT platform.stripe_sync_gap(now() - interval '30 days')")
    assert err.sqlstate == "22023"  # no gap behind a recent cursor
    conn.close()


def test_with_execute_left_to_public_the_app_rewrote_the_recorded_gap(tenants, logins):  # noqa: F811
    """The defence is the REVOKE from PUBLIC: the app wrote what the on-call engineer is told was lost."""
    tenants.execute("INSERT INTO platform.stripe_sync_state (name, cursor) VALUES ('events', now() - interval '40 days') "
                    "ON CONFLICT (name) DO UPDATE SET cursor = EXCLUDED.cursor")
    tenants.execute("GRANT EXECUTE ON FUNCTION platform.stripe_sync_gap(timestamptz) TO PUBLIC")
    logins("app").execute("SELECT platform.stripe_sync_gap(now() - interval '40 days' + interval '1 second')")
    assert 0 < logins("monitor").execute(GAP).fetchone()["g"] < 60


# ---------------------------------------------------------------- attacks

BILLING_FUNCTIONS = [
    ("SELECT platform.stripe_event_begin('evt_forged', 'invoice.paid', now(), false, 'in_x', 'webhook')", ()),
    ("SELECT * FROM platform.stripe_event_apply('evt_forged', '{}')", ()),
    ("SELECT * FROM platform.billing_dunning_tick()", ()),
    ("SELECT platform.stripe_sync_cursor(now() + interval '1 year')", ()),
    ("SELECT platform.stripe_sync_gap(now() - interval '40 days')", ()),
    ("SELECT * FROM platform.billing_settle(%s)", (str(A),)),
]


def test_the_billing_login_reads_and_writes_no_table_directly(world):
    conn = stripe_events.connect(world.dsn)
    for sql in ("SELECT * FROM platform.stripe_events", "SELECT * FROM platform.invoices",
                "SELECT * FROM platform.tenants", "UPDATE platform.tenants SET status = 'active'",
                "UPDATE platform.tenants SET plan_code = 'iso', plan_source = 'customer'",
                "INSERT INTO platform.stripe_events (id, type, created, livemode, source) "
                "VALUES ('evt_x', 'a.b', now(), false, 'webhook')", "DELETE FROM platform.tenant_dunning",
                "SELECT * FROM platform.billing_settle('%s')" % A):
        assert isinstance(error(conn, sql), psycopg.errors.InsufficientPrivilege), sql
    conn.close()


@pytest.mark.parametrize("who", list(ROLES))
def test_no_other_login_can_take_events_or_settle_dunning(tenants, logins, who):  # noqa: F811
    c = logins(who)
    for sql, args in BILLING_FUNCTIONS:
        assert isinstance(error(c, sql, args), psycopg.errors.InsufficientPrivilege), (who, sql)


@pytest.mark.parametrize("who", [w for w in ROLES if w != "control"])
def test_the_event_ledger_is_append_only_for_every_login(world, logins, who):
    fail_renewal(world)
    world.deliver(world.new_events())
    c = logins(who)
    for sql in ("UPDATE platform.stripe_events SET outcome = 'ignored'", "DELETE FROM platform.stripe_events",
                "DELETE FROM platform.invoices", "UPDATE platform.tenant_dunning SET state = 'past_due'"):
        assert isinstance(error(c, sql), psycopg.errors.InsufficientPrivilege), (who, sql)


@pytest.mark.parametrize("who", NON_CONTROL)
def test_no_other_login_changes_a_tenants_plan_or_who_chose_it(tenants, logins, who):  # noqa: F811
    c = logins(who)
    act_for(c, A)
    for sql in ("UPDATE platform.tenants SET plan_source = 'operator' WHERE id = '%s'" % A,
                "UPDATE platform.tenants SET plan_code = 'iso' WHERE id = '%s'" % A):
        assert isinstance(error(c, sql), psycopg.errors.InsufficientPrivilege), (who, sql)


def test_with_the_column_granted_the_app_could_hand_a_customers_plan_back_to_the_file(tenants, logins):  # noqa: F811
    """The defence is the column privilege: with it granted, a tenant's application could make the tenants file
    overrule the plan its customer chose (or the other way round)."""
    tenants.execute("UPDATE platform.tenants SET plan_source = 'customer' WHERE id = %s", (A,))
    tenants.execute("GRANT UPDATE (plan_source) ON platform.tenants TO selfbase_app")
    app = logins("app")
    act_for(app, A)
    app.execute("UPDATE platform.tenants SET plan_source = 'operator' WHERE id = %s", (str(A),))
    assert tenants.execute("SELECT plan_source FROM platform.tenants WHERE id = %s", (A,)).fetchone() == {
        "plan_source": "operator"}


def test_with_execute_left_to_public_the_app_could_reactivate_a_suspended_tenant(tenants, logins):  # noqa: F811
    """The defence is the REVOKE from PUBLIC: without it, any login could settle a tenant's dunning."""
    tenants.execute("UPDATE platform.tenants SET status = 'suspended' WHERE id = %s", (B,))
    tenants.execute("DELETE FROM platform.tenant_dunning WHERE tenant_id = %s", (B,))
    tenants.execute("INSERT INTO platform.tenant_dunning (tenant_id, state, reason, prior_status, owns_status, "
                    "grace_ends_at) VALUES (%s, 'suspended', 'x', 'active', true, now())", (B,))
    tenants.execute("GRANT EXECUTE ON FUNCTION platform.billing_settle(uuid) TO PUBLIC")
    app = logins("app")
    app.execute("SELECT * FROM platform.billing_settle(%s)", (str(B),))
    assert tenant_status(tenants, B) == "active"


def test_the_definer_functions_pin_their_search_path_and_owner(tenants):  # noqa: F811
    rows = tenants.execute("""
        SELECT p.proname, p.proconfig, p.prosecdef, pg_get_userbyid(p.proowner) AS owner FROM pg_proc p
         WHERE p.pronamespace = 'platform'::regnamespace
           AND p.proname IN ('billing_standing', 'billing_settle', 'stripe_event_begin', 'stripe_event_apply',
                             'billing_dunning_tick', 'stripe_sync_cursor')""").fetchall()
    assert len(rows) == 6
    for r in rows:
        assert r["prosecdef"] and r["proconfig"] == ["search_path=pg_catalog, platform, pg_temp"], r
        assert r["owner"] == "selfbase_billing_definer", r
    roles = tenants.execute("SELECT rolname, rolcanlogin, rolbypassrls FROM pg_roles "
                            "WHERE rolname IN ('selfbase_billing', 'selfbase_billing_definer')").fetchall()
    assert len(roles) == 2 and all(not r["rolcanlogin"] and not r["rolbypassrls"] for r in roles)
    assert tenants.execute("SELECT count(*) AS n FROM pg_auth_members WHERE roleid = "
                           "'selfbase_billing_definer'::regrole").fetchone()["n"] == 0


@pytest.mark.parametrize("sql", [
    "SELECT hosted_invoice_url FROM platform.invoices", "SELECT stripe_customer_id FROM platform.invoices",
    "SELECT object_id FROM platform.stripe_events", "SELECT * FROM platform.customer_payment_state",
    "SELECT stripe_customer_id FROM platform.meter_pushes", "SELECT reason FROM platform.tenant_dunning",
    "SELECT stripe_subscription_id FROM platform.subscriptions", "SELECT * FROM platform.stripe_sync_state",
    "SELECT address, tax_ids FROM platform.customer_payment_state"])
def test_the_monitor_login_reads_no_stripe_id_or_invoice_url(tenants, logins, sql):  # noqa: F811
    assert error(logins("monitor"), sql).sqlstate == "42501"


# ---------------------------------------------------------------- features as Stripe entitlements (migration 0018)


def attach_feature(world, price, key):
    """What billing_plan does for a plan's feature: the Entitlements feature on the price's product."""
    product = world.fake.get("prices", price)["product"]
    found = [f for f in world.fake.objects("entitlements/features") if f["lookup_key"] == key]
    feature = found[0] if found else world.fake.handle("POST", "/v1/entitlements/features",
                                                       {"lookup_key": key, "name": key})
    world.fake.handle("POST", "/v1/products/%s/features" % product, {"entitlement_feature": feature["id"]})


def features(world, tenant):
    """The tenant's features, as the control plane reads them."""
    return world.db.execute("SELECT platform.features_of(%s) AS f", (tenant,)).fetchone()["f"]


def entitlement_audit(conn, tenant):
    return [r["after"] for r in conn.execute(
        "SELECT after FROM platform.audit_log WHERE tenant_id = %s AND entity = 'tenant_entitlements' ORDER BY id",
        (tenant,))]


def test_a_tenants_features_follow_its_entitlements_once_whatever_the_delivery(world):
    """Plan iso declares sso (off) and support (standard): the tenants have those until Stripe lists their
    entitlements; a feature attached to their product reaches both, a canceled subscription takes it away, and a
    duplicated, replayed or reordered summary has one effect (the receiver re-fetches the list)."""
    world.db.execute("UPDATE platform.plans SET features = %s WHERE code = 'iso'",
                     (json.dumps({"sso": False, "support": "standard"}),))
    assert features(world, A) == {"sso": False, "support": "standard"}
    price = world.fake.get("subscriptions", world.sub["alpha"])["items"]["data"][0]["price"]["id"]
    attach_feature(world, price, "sso")
    attach_feature(world, price, "support.priority")
    events = world.new_events()
    summaries = [e for e in events if e["type"] == "entitlements.active_entitlement_summary.updated"]
    assert len(summaries) == 4  # two customers, two changes each
    answers = world.deliver(summaries[::-1] + summaries)
    assert [a[0] for a in answers] == [200] * 8
    assert [a[1]["outcome"] for a in answers[:4]] == ["applied"] * 4, answers
    assert {a[1]["outcome"] for a in answers[4:]} == {"duplicate"}
    for tenant in (A, B):
        assert features(world, tenant) == {"sso": True, "support": "priority"}
        # the first summary applied (the newest, delivered first) already saw the whole set: one audit row
        assert entitlement_audit(world.db, tenant) == [["sso", "support.priority"]]

    world.fake.handle("DELETE", "/v1/subscriptions/%s" % world.sub["bravo"], {})
    answers = world.deliver(world.new_events())
    assert all(a[0] == 200 for a in answers)
    assert features(world, B) == {"sso": False, "support": False}
    assert features(world, A) == {"sso": True, "support": "priority"}
    assert entitlement_audit(world.db, B) == [["sso", "support.priority"], []]


def test_an_upgrade_in_the_portal_brings_the_new_plans_quota_and_features(world):
    """The price changes to team's (whose product has sso): the plan and quota follow the subscription event,
    the feature the summary event, each once."""
    team = team_plan(world)
    attach_feature(world, team, "sso")
    world.new_events()
    events = switch_price(world, team)
    assert {e["type"] for e in events} == {
        "customer.subscription.updated", "entitlements.active_entitlement_summary.updated"}
    world.deliver(events + events)
    assert plan_of(world.db, A)["plan_code"] == "team" and api_quota(world.db, A) == 5000000
    assert features(world, A) == {"sso": True}
    assert features(world, B) == {}
    assert entitlement_audit(world.db, A) == [["sso"]] and entitlement_audit(world.db, B) == []


def test_a_downgrade_at_period_end_keeps_the_plan_and_features_until_then(world):
    """Back from team to iso in the portal, for the end of the period: Stripe schedules the change, and the
    tenant keeps team's quota and features until the period ends; then iso's, each change applied once."""
    iso = world.fake.get("subscriptions", world.sub["alpha"])["items"]["data"][0]["price"]["id"]
    team = team_plan(world)
    attach_feature(world, team, "sso")
    world.deliver(switch_price(world, team))
    world.fake.schedule_price_change(world.sub["alpha"], iso)
    events = world.new_events()
    world.deliver(events + events[::-1])
    assert plan_of(world.db, A)["plan_code"] == "team" and api_quota(world.db, A) == 5000000
    assert features(world, A) == {"sso": True}
    world.fake.advance(31 * 86400)
    events = world.new_events()
    assert {e["type"] for e in events} == {"customer.subscription.updated",
                                           "entitlements.active_entitlement_summary.updated"}
    # the receiver's clock, not the fake's advanced one
    assert {a[0] for a in world.deliver(events + events, timestamp=int(time.time()))} == {200}
    assert plan_of(world.db, A)["plan_code"] == "iso" and api_quota(world.db, A) == 1000000
    assert features(world, A) == {}  # Stripe no longer entitles sso, and iso does not declare it
    assert plan_audit(world.db, A) == [("iso", "team", "customer"), ("team", "iso", "customer")]
    assert_in_step(world)


def test_a_cancellation_at_period_end_keeps_the_features_until_the_end(world):
    team = team_plan(world)
    attach_feature(world, team, "sso")
    world.deliver(switch_price(world, team))
    world.fake.handle("POST", "/v1/subscriptions/%s" % world.sub["alpha"], {"cancel_at_period_end": "true"})
    world.deliver(world.new_events())
    assert mirror(world.conn, A)["status"] == "active" and features(world, A) == {"sso": True}
    assert tenant_status(world.conn, A) == "active"
    world.fake.advance(31 * 86400)
    assert {a[0] for a in world.deliver(world.new_events(), timestamp=int(time.time()))} == {200}
    assert mirror(world.conn, A)["status"] == "canceled" and features(world, A) == {}
    assert_in_step(world)


def test_the_application_reads_its_own_tenants_features_only(world, logins):
    world.db.execute("INSERT INTO platform.tenant_entitlements (tenant_id, lookup_keys) VALUES (%s, '{sso}'), "
                     "(%s, '{}')", (A, B))
    world.db.execute("UPDATE platform.plans SET features = '{\"sso\": false}' WHERE code = 'iso'")
    for who in ("app", "hasura"):
        c = logins(who)
        if who == "app":
            act_for(c, A)
        else:
            c.execute("SELECT set_config('hasura.user', %s, false)", (json.dumps({"x-hasura-tenant-id": str(A)}),))
        got = c.execute("SELECT platform.my_features() AS f, platform.has_feature('sso') AS on_, "
                        "platform.has_feature('nope') AS off").fetchone()
        assert got == {"f": {"sso": True}, "on_": True, "off": False}, who
        assert [r["tenant_id"] for r in c.execute("SELECT tenant_id FROM platform.tenant_entitlements")] == [A]
    hasura = logins("hasura")  # a query: Hasura's permissions pick the rows, as for its tables
    rows = {r["tenant_id"]: r["features"] for r in hasura.execute("SELECT * FROM platform.tenant_active_features")}
    assert rows[A] == {"sso": True} and rows[B] == {"sso": False}


FEATURE_WRITES = [
    "INSERT INTO platform.tenant_entitlements (tenant_id, lookup_keys) VALUES ('%s', '{sso}')" % B,
    "UPDATE platform.tenant_entitlements SET lookup_keys = '{sso}'",
    "DELETE FROM platform.tenant_entitlements",
    "SELECT platform.features_of('%s')" % B,
]


@pytest.mark.parametrize("who", NON_CONTROL)
def test_no_login_but_the_billing_definer_writes_entitlements_or_reads_another_tenants(world, logins, who):
    world.db.execute("INSERT INTO platform.tenant_entitlements (tenant_id, lookup_keys) VALUES (%s, '{sso}')", (B,))
    c = logins(who)
    act_for(c, A)
    for sql in FEATURE_WRITES:
        assert isinstance(error(c, sql), psycopg.errors.InsufficientPrivilege), (who, sql)
    if who != "hasura":
        for sql in ("SELECT * FROM platform.tenant_active_features", "SELECT * FROM platform.graphql_tenant_features()"):
            assert isinstance(error(c, sql), psycopg.errors.InsufficientPrivilege), (who, sql)
    if who in ("app", "hasura"):  # another tenant's entitlements are not its rows (Hasura: in a mutation)
        c.execute("SELECT set_config('hasura.user', %s, false)", (json.dumps({"x-hasura-tenant-id": str(A)}),))
        assert c.execute("SELECT count(*) AS n FROM platform.tenant_entitlements").fetchone()["n"] == 0
    # the billing login itself only through stripe_event_apply
    billing = psycopg.connect(world.dsn, row_factory=psycopg.rows.dict_row, autocommit=True)
    for sql in FEATURE_WRITES:
        assert isinstance(error(billing, sql), psycopg.errors.InsufficientPrivilege), ("billing", sql)
    billing.close()
    assert world.db.execute("SELECT lookup_keys FROM platform.tenant_entitlements").fetchall() == [
        {"lookup_keys": ["sso"]}]


def test_with_a_write_grant_and_policy_the_app_gave_its_tenant_a_paid_feature(world, logins):
    """The defence is the missing grant and the select-only policy: with them, a tenant's application entitles
    itself to a feature its plan does not pay for."""
    world.db.execute("UPDATE platform.plans SET features = '{\"sso\": false}' WHERE code = 'iso'")
    world.db.execute("GRANT INSERT ON platform.tenant_entitlements TO selfbase_app")
    world.db.execute("CREATE POLICY app_write ON platform.tenant_entitlements FOR INSERT TO selfbase_app "
                     "WITH CHECK (tenant_id = platform.current_tenant_id())")
    app = logins("app")
    act_for(app, A)
    app.execute("INSERT INTO platform.tenant_entitlements (tenant_id, lookup_keys) VALUES (%s, '{sso}')", (str(A),))
    assert app.execute("SELECT platform.has_feature('sso') AS on_").fetchone() == {"on_": True}


def test_the_features_reader_owns_only_its_functions_reads_only_and_nobody_logs_in_as_it(tenants):  # noqa: F811
    assert_owner_role(tenants, "selfbase_features_reader", [
        "platform.features_of(uuid)", "platform.graphql_tenant_features()", "platform.has_feature(text)",
        "platform.my_features()"])
    grants = tenants.execute("SELECT DISTINCT table_name, privilege_type FROM information_schema.role_table_grants "
                             "WHERE grantee = 'selfbase_features_reader' ORDER BY 1").fetchall()
    assert {(r["table_name"], r["privilege_type"]) for r in grants} == {("tenant_entitlements", "SELECT")}
    columns = tenants.execute("SELECT table_name, column_name, privilege_type FROM "
                              "information_schema.column_privileges WHERE grantee = 'selfbase_features_reader' "
                              "AND table_name <> 'tenant_entitlements' ORDER BY 1, 2").fetchall()
    assert [(r["table_name"], r["column_name"], r["privilege_type"]) for r in columns] == [
        ("plans", "code", "SELECT"), ("plans", "features", "SELECT"), ("tenants", "id", "SELECT"),
        ("tenants", "plan_code", "SELECT")]


def test_the_receiver_reads_every_page_of_a_list(world):
    price = world.fake.get("subscriptions", world.sub["alpha"])["items"]["data"][0]["price"]["id"]
    for key in ("a", "b", "c"):
        attach_feature(world, price, key)
    customer = world.fake.get("subscriptions", world.sub["alpha"])["customer"]
    calls = world.reader.calls
    listed = world.reader.get("/v1/entitlements/active_entitlements", {"customer": customer, "limit": 2})
    assert sorted(e["lookup_key"] for e in listed["data"]) == ["a", "b", "c"] and world.reader.calls == calls + 2
