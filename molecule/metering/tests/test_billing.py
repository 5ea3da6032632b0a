"""The billing role on a real host: the Stripe webhook receiver (gunicorn, systemd) behind nginx on meter-proxy,
writing to PostgreSQL on meter-db. A fake Stripe (contract fake: Stripe cannot be reached here) runs in this
process on the network's gateway; it signs its events, which are delivered through nginx, and answers the
receiver's re-fetches. A tenant goes through dunning and the edge's answers follow it."""

import base64
import json
import pathlib
import re
import sys

import pytest
import stripe
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3] / "tests" / "modules"))
from molecule_hosts import docker_host, until  # noqa: E402  pylint: disable=wrong-import-position
from fakes.stripe_fake import API_VERSION, FakeStripe  # noqa: E402  pylint: disable=wrong-import-position

testinfra_hosts = []
PROXY = docker_host("meter-proxy")
DB = docker_host("meter-db")
BASE = "meter.test"
KEY = "sk_test_molecule_billing"
SECRET, RETIRED = "whsec_molecule_billing_current", "whsec_molecule_billing_retired"
LAG = 60  # the edge map: render + installer period, with room


def sql(query):
    out = DB.run(f"runuser -u postgres -- psql -d selfbase -XAtc \"{query}\"")
    assert out.rc == 0, out.stderr
    return out.stdout.strip()


def status(slug):
    return sql(f"SELECT status FROM platform.tenants WHERE slug = '{slug}'")


def edge(slug):
    out = PROXY.run(f"curl -sk -o /dev/null -w '%{{http_code}}' --resolve {slug}.{BASE}:443:127.0.0.1 "
                    f"https://{slug}.{BASE}/x")
    return int(out.stdout)


def post(fake, event, secret=SECRET, stamp=None):
    """Deliver one event as Stripe does, through nginx at the api host name; returns the HTTP status."""
    body = json.dumps(event).encode()
    sig = fake.signature(body, secret, fake.now() if stamp is None else stamp)
    out = PROXY.run(f"echo {base64.b64encode(body).decode()} | base64 -d | curl -sk -o /tmp/answer -w '%{{http_code}}' "
                    f"--resolve api.{BASE}:443:127.0.0.1 -H 'Content-Type: application/json' "
                    f"-H 'Stripe-Signature: {sig}' --data-binary @- https://api.{BASE}/webhooks/stripe")
    return int(out.stdout)


@pytest.fixture(scope="module")
def fake():
    server = FakeStripe(host="172.30.91.1", port=12191, api_key=KEY).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tenants(fake):
    """payer and lapsed, each with a Stripe customer, a card and a subscription."""
    client = stripe.StripeClient(KEY, stripe_version=API_VERSION, base_addresses={"api": fake.url})
    price = client.raw_request("post", "/v1/prices", currency="eur", unit_amount=4900,
                               recurring={"interval": "month"}, product_data={"name": "Team"}).data
    subs = {}
    for slug in ("payer", "lapsed"):
        cus = client.raw_request("post", "/v1/customers", name=slug).data
        fake.attach_payment_method(cus["id"])
        subs[slug] = client.raw_request("post", "/v1/subscriptions", customer=cus["id"],
                                        items=[{"price": price["id"]}]).data["id"]
        sql(f"UPDATE platform.tenants SET stripe_customer_id = '{cus['id']}', status = 'active' WHERE slug = '{slug}'")
        for table in ("tenant_dunning", "subscriptions"):  # verify may run again on the same hosts
            sql(f"DELETE FROM platform.{table} WHERE tenant_id = (SELECT id FROM platform.tenants WHERE slug = '{slug}')")
    return subs


class Events:
    """Stripe's events since the last call."""

    def __init__(self, server):
        self.fake, self.seen = server, len(server.events())

    def new(self):
        events = self.fake.events()
        out, self.seen = events[self.seen:], len(events)
        return out


def test_the_receiver_runs_hardened_as_its_own_user():
    svc = PROXY.service("selfbase-billing")
    assert svc.is_running and svc.is_enabled
    pid = PROXY.check_output("systemctl show -p MainPID --value selfbase-billing")
    assert PROXY.check_output(f"ps -o user= -p {pid}").strip() == "selfbase-billing"
    props = PROXY.check_output("systemctl show selfbase-billing -p NoNewPrivileges -p ProtectSystem "
                               "-p CapabilityBoundingSet")
    assert "NoNewPrivileges=yes" in props and "ProtectSystem=strict" in props
    config = PROXY.file("/etc/selfbase/billing/config.json")
    assert (config.mode, config.user, config.group) == (0o640, "root", "selfbase-billing")
    assert KEY not in PROXY.check_output(f"ps -o args= -p {pid}") and SECRET not in PROXY.check_output("ps -eo args")


@pytest.mark.parametrize("login,role", [("billing_meter_proxy", "billing"), ("meter_meter_proxy", "metering")])
def test_the_service_logins_have_every_session_limit(login, role):
    """An open transaction of the receiver or the agent cannot hold tenants' rows without bound (migration 0007's
    round: every login has statement, lock and idle-in-transaction limits)."""
    wanted = yaml.safe_load((ROOT / f"roles/{role}/defaults/main.yml").read_text())[f"{role}_db_session_settings"]
    settings = sql("SELECT array_to_string(s.setconfig, ',') FROM pg_db_role_setting s "
                   "JOIN pg_roles r ON r.oid = s.setrole JOIN pg_database d ON d.oid = s.setdatabase "
                   f"WHERE r.rolname = '{login}' AND d.datname = 'selfbase'").split(",")
    assert sorted(settings) == sorted(f"{k}={v}" for k, v in wanted.items())


def test_the_dunning_policy_is_stored_by_the_control_plane():
    """The role's billing_dunning_* values, in the row only the control plane writes (the receiver reads it)."""
    assert sql("SELECT grace_days || ',' || reactivate_suspended FROM platform.billing_policy") == "7,false"


def test_a_tenant_goes_through_dunning_and_the_edge_follows(fake, tenants):
    events = Events(fake)
    start = sql("SELECT now()")
    inv = fake.invoice(tenants["payer"])
    fake.fail_payment(inv)
    assert [post(fake, e) for e in events.new()] == [200] * 4
    assert status("payer") == "past_due"
    assert until(lambda: edge("payer") == 200)  # access is kept during the grace period
    # the grace period ends; the sync job (the timer's unit) suspends the tenant
    sql("UPDATE platform.tenant_dunning SET grace_ends_at = now() - interval '1 second'")
    assert PROXY.run("systemctl start selfbase-billing-sync.service").rc == 0
    assert status("payer") == "suspended"
    assert until(lambda: edge("payer") == 402), "the edge still served a suspended tenant"
    fake.pay(inv)
    assert [post(fake, e) for e in events.new()] == [200] * 3
    assert status("payer") == "active"
    assert until(lambda: edge("payer") == 200), "the edge still refused a tenant that paid"
    steps = sql("SELECT string_agg((before->>'status') || '>' || (after->>'status'), ' ' ORDER BY a.id) "
                "FROM platform.audit_log a JOIN platform.tenants t ON t.id = a.tenant_id "
                f"WHERE t.slug = 'payer' AND a.entity = 'dunning' AND a.at >= '{start}'")
    assert steps == "active>past_due past_due>suspended suspended>active"
    assert sql("SELECT paid FROM (SELECT bool_and(i.status = 'paid') AS paid FROM platform.invoices i "
               "JOIN platform.tenants t ON t.id = i.tenant_id WHERE t.slug = 'payer') s") == "t"


def test_signatures_are_checked_behind_nginx(fake, tenants):
    events = Events(fake)
    fake.set_status(tenants["lapsed"], "active")  # an event about lapsed, changing nothing
    (event,) = events.new()
    assert post(fake, event, secret="whsec_someone_else") == 400
    assert post(fake, event, stamp=fake.now() - 400) == 400
    assert sql(f"SELECT count(*) FROM platform.stripe_events WHERE id = '{event['id']}'") == "0"
    assert post(fake, event, secret=RETIRED) == 200  # the secret being rotated out still counts
    assert post(fake, event) == 200
    assert sql(f"SELECT count(*) FROM platform.stripe_events WHERE id = '{event['id']}'") == "1"


def test_events_missed_while_the_receiver_was_down_are_reconciled(fake, tenants):
    events = Events(fake)
    start = sql("SELECT now()")
    assert PROXY.run("systemctl stop selfbase-billing").rc == 0
    try:
        fake.set_status(tenants["lapsed"], "unpaid")
        (event,) = events.new()
        assert post(fake, event) == 502  # nginx: no receiver; Stripe would retry for days
        assert status("lapsed") == "active"
        assert PROXY.run("systemctl start selfbase-billing-sync.service").rc == 0
        assert status("lapsed") == "suspended"
        assert sql(f"SELECT source FROM platform.stripe_events WHERE id = '{event['id']}'") == "reconcile"
    finally:
        assert PROXY.run("systemctl start selfbase-billing").rc == 0
    assert until(lambda: post(fake, event) == 200)  # Stripe's retry, now a duplicate
    assert sql("SELECT count(*) FROM platform.audit_log a JOIN platform.tenants t ON t.id = a.tenant_id "
               f"WHERE t.slug = 'lapsed' AND a.entity = 'dunning' AND a.at >= '{start}'") == "1"
    metrics = PROXY.file("/var/lib/prometheus/node-exporter/selfbase_billing.prom").content_string
    assert "selfbase_billing_sync_success 1" in metrics and "selfbase_billing_events_reconciled" in metrics
    # with sync_success 1: the sync read the fake's meter error reports
    assert re.search(r"^selfbase_billing_meter_events_refused \d+$", metrics, re.M), metrics


def test_a_killed_receiver_is_restarted_and_takes_events_again(fake, tenants):
    events = Events(fake)
    PROXY.run("systemctl kill -s KILL selfbase-billing")
    fake.set_status(tenants["lapsed"], "active")  # lapsed pays its way back
    (event,) = events.new()
    assert until(lambda: post(fake, event) == 200)
    assert status("lapsed") == "active"
