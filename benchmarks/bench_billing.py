"""Billing: webhook events per second and their latency, and usage pushed to Stripe's billing meters.

Measured in one run, against a throwaway PostgreSQL server (durable settings: fsync and synchronous commit on)
with the platform schema, and the fake Stripe (tests/modules/fakes: Stripe cannot be reached here):
1. webhooks: the receiver (roles/host_services/files/billing/selfbase_billing.py under gunicorn, the role's defaults: 2 workers
   x 4 threads) takes --events signed deliveries from --clients concurrent senders; each event is re-fetched from
   the fake and written with the ledger, mirror and dunning in one transaction. Events/s and latency per delivery.
   Measured in the same run: the database path alone (stripe_events.apply_event with the object handed over,
   --clients threads), to separate the fake's share.
2. meter push: --tenants tenants x 2 metered metrics x 1 closed hour of overage, pushed with push_usage
   (--workers concurrent calls) on v1 (one meter event a call), then another hour on the v2 meter event stream
   (100 a call); Stripe calls made and seconds, then a re-run (nothing to send: 0 calls), and the fake's meter
   events compared with the platform's pushes. The fake answers both in one Python process: the ratio shows the
   calls saved, not Stripe's own speed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import _pg

sys.path.insert(0, str(_pg.ROOT / "tests" / "modules"))
BILLING = [str(_pg.COLLECTIONS), str(_pg.ROOT / "roles" / "host_services" / "files" / "billing")]
sys.path[:0] = BILLING
from fakes.stripe_fake import API_VERSION, FakeStripe  # noqa: E402  pylint: disable=wrong-import-position
import stripe_events  # noqa: E402  pylint: disable=wrong-import-position

SECRET = "whsec_bench_" + "0" * 20


def prepare(server, workdir):
    with server.connect("postgres") as conn:
        conn.execute("DROP DATABASE IF EXISTS bench")
        conn.execute("CREATE DATABASE bench")
    _pg.run_task(workdir, {"selfbase.platform.platform_schema": server.login("bench")})
    _pg.create_login(server, "billing_bench", "selfbase_billing")
    with server.connect("bench") as conn:
        conn.execute("INSERT INTO platform.plans (code, name) VALUES ('pro', 'Pro')")
        conn.execute("INSERT INTO platform.plan_quotas (plan_code, metric, limit_value, period, mode, "
                     "overage_unit_price) VALUES ('pro', 'api_requests', 0, 'month', 'overage', 0.001), "
                     "('pro', 'bandwidth_bytes', 0, 'month', 'overage', 0.000001)")


def customers(fake, server, n, start=0):
    """n tenants, each with a Stripe customer (created in the fake's store directly: setup, not measured)."""
    ids = []
    with fake.lock:
        for i in range(start, start + n):
            cus = fake._new("customers", {"name": "t%d" % i, "invoice_settings": {"default_payment_method": None},  # pylint: disable=protected-access
                                          "metadata": {}, "delinquent": False, "deleted": False})
            ids.append(cus["id"])
    with server.connect("bench") as conn:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO platform.tenants (slug, name, plan_code, stripe_customer_id) "
                            "VALUES (%s, %s, 'pro', %s)", [("t%d" % (start + i), "t%d" % (start + i), c)
                                                           for i, c in enumerate(ids)])
    return ids


def subscription_events(fake, customer_ids):
    """customer.subscription.created for each customer (the fake's sub_create emits them)."""
    price = fake.handle("POST", "/v1/prices", {"currency": "usd", "unit_amount": "2900",
                                               "recurring": {"interval": "month"}, "product_data": {"name": "Pro"}})
    mark = len(fake.db["events"])
    for cus in customer_ids:
        with fake.lock:
            fake.handle("POST", "/v1/subscriptions", {"customer": cus, "items": {"0": {"price": price["id"]}},
                                                      "collection_method": "send_invoice", "days_until_due": "30"})
    with fake.lock:
        events = sorted(fake.db["events"].values(), key=lambda e: e["_seq"])[mark:]
        return [fake.out(e) for e in events]


def serve_receiver(server, fake, workdir, port):
    config = {"conninfo": server.conninfo("bench", user="billing_bench"), "api_key": fake.api_key,
              "api_base": fake.url, "api_version": API_VERSION, "webhook_secrets": [SECRET], "tolerance": 300,
              "sync": {"reconcile": True, "overlap": 600, "meter_push": True, "meter_api": "v1", "settle": 900,
                       "lookback": 86400,
                       "workers": 8, "metrics_file": os.path.join(workdir, "metrics.prom")}}
    path = os.path.join(workdir, "config.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(config, fh)
    env = dict(os.environ, SELFBASE_BILLING_CONFIG=path,
               PYTHONPATH=os.pathsep.join(BILLING))
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:%d" % port, "--workers", "2",
                             "--threads", "4", "--worker-class", "gthread", "selfbase_billing:application"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for attempt in range(100):  # pylint: disable=unused-variable
        try:
            urllib.request.urlopen("http://127.0.0.1:%d/" % port, timeout=1)
        except urllib.error.HTTPError:
            return proc  # 405: up
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("gunicorn did not start")


def timed(one, events, clients):
    """Run one(event) -> milliseconds over the events from `clients` threads; rate and latency percentiles."""
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        latencies = sorted(pool.map(one, events))
    seconds = time.perf_counter() - t0
    return {"events": len(events), "seconds": round(seconds, 2), "events_per_second": round(len(events) / seconds, 1),
            "latency_p50_ms": _pg.percentile(latencies, 50), "latency_p95_ms": _pg.percentile(latencies, 95),
            "latency_max_ms": round(latencies[-1], 2)}


def deliver_all(fake, url, events, clients):
    statuses = {}
    lock = threading.Lock()

    def one(event):
        body = json.dumps(event).encode()
        req = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/json", "Stripe-Signature": fake.signature(body, SECRET, int(time.time()))})
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status = resp.status
        except urllib.error.HTTPError as e:
            status = e.code
        elapsed = (time.perf_counter() - t0) * 1000
        with lock:
            statuses[status] = statuses.get(status, 0) + 1
        return elapsed

    return dict(timed(one, events, clients), statuses=statuses)


def database_path(server, events, clients):
    by_thread = threading.local()

    def one(event):
        conn = getattr(by_thread, "conn", None)
        if conn is None:
            conn = by_thread.conn = stripe_events.connect(server.conninfo("bench", user="billing_bench"))
        reader = type("R", (), {"get": staticmethod(lambda path, params=None: event["data"]["object"])})
        t0 = time.perf_counter()
        stripe_events.apply_event(conn, reader, dict(event, id=event["id"] + "_db"), "webhook")
        return (time.perf_counter() - t0) * 1000

    return timed(one, events, clients)


def meter_push(server, fake, tenants, workers):
    """v1 (one meter event a call) on one closed hour, then v2 (the stream, 100 a call) on another, same size."""
    ids = customers(fake, server, tenants, start=100000)
    meters = {}
    for metric in ("api_requests", "bandwidth_bytes"):
        with fake.lock:
            meters[metric] = fake.handle("POST", "/v1/billing/meters", {
                "display_name": metric, "event_name": metric, "default_aggregation": {"formula": "sum"}})["id"]
    with server.connect("bench") as conn:
        for metric, mid in meters.items():
            conn.execute("UPDATE platform.plan_quotas SET stripe_meter_id = %s WHERE metric = %s", (mid, metric))
    out = {"tenants": tenants, "meters": 2}
    for api_name, hours_ago in (("v1", 2), ("v2", 3)):
        with server.connect("bench") as conn:
            conn.execute("SET session_replication_role = replica")  # setup: no per-tenant rollup trigger
            # one closed hour of overage per tenant and metric (set-based: setup, not measured)
            conn.execute("""
                WITH e AS (
                  INSERT INTO platform.usage_events (tenant_id, metric, quantity, idempotency_key, occurred_at)
                  SELECT t.id, m.metric, 100 + (abs(hashtext(t.slug || m.metric || %s)) %% 900),
                         'bench/' || %s || t.slug || m.metric,
                         date_bin('1 hour', now() - make_interval(hours => %s), 'epoch') + interval '17 minutes'
                    FROM platform.tenants t, (VALUES ('api_requests'), ('bandwidth_bytes')) m(metric)
                   WHERE t.stripe_customer_id = ANY(%s)
                  RETURNING id, tenant_id, metric, quantity)
                INSERT INTO platform.usage_overages (tenant_id, metric, usage_event_id, quantity)
                SELECT tenant_id, metric, id, quantity FROM e""", (api_name, api_name, hours_ago, ids))
        conn = stripe_events.connect(server.conninfo("bench", user="billing_bench"))
        runs = {}
        for run in ("first_run", "re_run"):
            api = stripe_events.StripeApi(fake.api_key, fake.url, API_VERSION)
            t0 = time.perf_counter()
            runs[run] = stripe_events.push_usage(conn, api, settle=0, lookback=86400, workers=workers,
                                                 stream=api_name == "v2")
            runs[run]["seconds"] = round(time.perf_counter() - t0, 2)
        conn.close()
        out[api_name] = runs
    with server.connect("bench") as c:
        out["platform_total"] = int(c.execute("SELECT sum(quantity) AS q FROM platform.meter_pushes").fetchone()["q"])
    with fake.lock:
        out["stripe_total"] = sum(int(e["payload"]["value"]) for e in fake.db["meter_events"])
        out["identifiers_taken"] = len(fake.db["meter_identifiers"])
    out["meter_errors"] = len(fake.meter_errors)
    out["v2_over_v1_seconds"] = round(out["v2"]["first_run"]["seconds"] / out["v1"]["first_run"]["seconds"], 3)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tenants", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--port", type=int, default=18095)
    parser.add_argument("--name", default="billing")
    opts = parser.parse_args()
    with _pg.pgserver.PostgresServer(settings={"max_connections": "100"}) as server, FakeStripe() as fake, \
            tempfile.TemporaryDirectory() as workdir:
        os.chmod(workdir, 0o755)
        _pg.log("schema and %d tenants" % opts.events)
        prepare(server, workdir)
        events = subscription_events(fake, customers(fake, server, opts.events))
        _pg.log("%d events; the receiver under gunicorn" % len(events))
        proc = serve_receiver(server, fake, workdir, opts.port)
        try:
            hooks = deliver_all(fake, "http://127.0.0.1:%d/webhooks/stripe" % opts.port, events, opts.clients)
        finally:
            proc.terminate()
            proc.wait(10)
        _pg.log("the database path alone")
        direct = database_path(server, events, opts.clients)
        _pg.log("meter push: %d tenants x 2 meters" % opts.tenants)
        push = meter_push(server, fake, opts.tenants, opts.workers)
        machine = _pg.machine(server)
    print()
    _pg.table([["webhook deliveries through gunicorn (re-fetch from the fake)", hooks["events_per_second"],
                hooks["latency_p50_ms"], hooks["latency_p95_ms"]],
               ["database path alone (ledger, mirror, dunning)", direct["events_per_second"], direct["latency_p50_ms"],
                direct["latency_p95_ms"]]],
              ["path", "events/s", "p50 ms", "p95 ms"])
    print()
    rows = [[api + " " + run.replace("_", " "), push[api][run]["calls"], push[api][run]["sent"], push[api][run]["seconds"]]
            for api in ("v1", "v2") for run in ("first_run", "re_run")]
    _pg.table(rows,
              ["meter push (%d tenants x 2 meters x 1 hour)" % opts.tenants, "Stripe calls", "events sent", "seconds"])
    print("\nStripe's summaries total %d, the platform's pushes %d; identifiers taken %d; meter errors %d"
          % (push["stripe_total"], push["platform_total"], push["identifiers_taken"], push["meter_errors"]))
    _pg.write_results(opts.name, {"machine": machine, "options": vars(opts), "webhooks": hooks,
                                  "database_path": direct, "meter_push": push})


if __name__ == "__main__":
    main()
