"""The cluster's leader killed while tenants are served and metered through both proxies and a writer commits
every 100 ms through an api host's HAProxy (after test_1_tiers, whose idempotence and check runs need the
converged cluster as site.yml left it).

The edge keeps serving (its routes and quota maps need no database), and each proxy's metering agent,
reaching the leader through its local HAProxy, records exactly what its nginx served: per tenant, the
metered requests equal nginx's own count of billable lines across the failover, nothing lost, nothing doubled.
Every write the writer saw acknowledged is on the new leader (synchronous mode), and writes resume within a bound.
Signed Stripe events, delivered as Stripe does (again until answered 200) through both proxies to the receivers on
both api hosts across the failover, are each taken exactly once, and the mirrors equal the fake's state.
"""

import base64
import concurrent.futures
import json
import pathlib
import sys
import time

import stripe

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3] / "tests" / "modules"))
# pylint: disable=wrong-import-position
from molecule_hosts import docker_host as _host, until  # noqa: E402
from patroni_cluster import docker, outage_end_after  # noqa: E402
from production_hosts import API, CLUSTER, EDGE, MON, STRIPE, VAULT, leader as _leader, prepare_writer, psql, secret  # noqa: E402
from fakes.stripe_fake import API_VERSION, FakeStripe  # noqa: E402

testinfra_hosts = []
UNBILLED = {402, 403, 429}  # metering_unbilled_statuses
TRAFFIC = "/tmp/failover-traffic.txt"
WEBHOOK_URL = "https://api.example.com/webhooks/stripe"
WEBHOOK_SECRET = "stripe-webhook-https_api.example.com_webhooks_stripe.secret"


def _metered(leader):
    """Per tenant, the api_requests the edges' agents recorded."""
    out = psql(
        "SELECT t.slug || ' ' || sum(e.quantity) FROM platform.usage_events e JOIN platform.tenants t ON t.id = e.tenant_id "
        "WHERE e.metric = 'api_requests' AND e.idempotency_key LIKE 'edge/%' GROUP BY t.slug", leader)
    assert out.rc == 0, out.stderr
    return {slug: int(n) for slug, n in (line.split() for line in out.stdout.splitlines())}


def _served():
    """Per tenant, the billable requests both nginx servers logged (their own count)."""
    counts = {}
    for edge in EDGE:
        text = _host(edge).run("cat /var/log/nginx/access.json*").stdout
        for line in text.splitlines():
            entry = json.loads(line)
            if entry.get("tenant") and int(entry["status"]) not in UNBILLED:
                counts[entry["tenant"]] = counts.get(entry["tenant"], 0) + 1
    return counts


def _subscriptions():
    """The paying tenants' Stripe subscriptions, by tenant, from the mirror."""
    out = psql("SELECT t.slug || ' ' || s.stripe_subscription_id FROM platform.subscriptions s "
               "JOIN platform.tenants t ON t.id = s.tenant_id ORDER BY t.slug")
    assert out.rc == 0, out.stderr
    return dict(line.split() for line in out.stdout.splitlines())


def _mirror(sub_id, leader):
    """The mirrored subscription's status and cancel_at_period_end."""
    out = psql("SELECT status || ' ' || cancel_at_period_end FROM platform.subscriptions "
               f"WHERE stripe_subscription_id = '{sub_id}'", leader)
    assert out.rc == 0, out.stderr
    return out.stdout.strip()


def _deliver(event, edge):
    """One event through one proxy as Stripe delivers it: signed anew each attempt, again every second until
    answered 200 (or three minutes). The statuses of the attempts and the last answer."""
    body = base64.b64encode(json.dumps(event).encode()).decode()
    statuses, deadline = [], time.time() + 180
    while time.time() < deadline:
        sig = FakeStripe.signature(base64.b64decode(body), secret(WEBHOOK_SECRET), int(time.time()))
        out = _host(MON).run("echo %s | base64 -d | curl -sk --max-time 30 -w '\n%%{http_code}' --resolve %s "
                             "-H 'Content-Type: application/json' -H %s --data-binary @- %s",
                             body, f"api.example.com:443:{edge}", f"Stripe-Signature: {sig}", WEBHOOK_URL)
        answer, code = out.stdout.rsplit("\n", 1) if "\n" in out.stdout else ("", out.stdout)
        statuses.append(int(code or 0))
        if statuses[-1] == 200:
            return statuses, json.loads(answer)
        time.sleep(1)
    return statuses, None


def _statuses():
    """The traffic's HTTP statuses, once it has ended."""
    return docker("exec", "prod-mon1", "cat", TRAFFIC, check=False).stdout.split()


def test_killing_the_leader_loses_and_doubles_no_metered_request():
    old = _leader()
    # about two requests a second per tenant through each proxy for a minute, for two tenants, from the monitoring host
    # (each may take 15 s: on a loaded CI machine one answer of 360 once took over 5 s)
    loop = ("for i in $(seq 90); do for e in %s; do for t in initech globex; do "
            "curl -sk -o /dev/null -w '%%{http_code}\\n' --max-time 15 --resolve $t.example.com:443:$e "
            "https://$t.example.com/failover; done; done; sleep 0.5; done > %s.tmp; mv %s.tmp %s"
            % (" ".join(EDGE.values()), TRAFFIC, TRAFFIC, TRAFFIC))
    prepare_writer()
    client = stripe.StripeClient(VAULT["vault_stripe_api_key"], stripe_version=API_VERSION, base_addresses={"api": STRIPE})
    subs = _subscriptions()
    seen = {e["id"] for e in client.raw_request("get", "/v1/events", limit=100).data["data"]}
    for sub in subs.values():
        client.raw_request("post", f"/v1/subscriptions/{sub}", cancel_at_period_end=True)
    docker("exec", "prod-mon1", "rm", "-f", TRAFFIC)
    docker("exec", "-d", "prod-mon1", "sh", "-c", loop)
    writes = CLUSTER.start_writer(150, "failover")
    time.sleep(10)
    killed = time.time()
    CLUSTER.kill(old)
    pool = concurrent.futures.ThreadPoolExecutor(8)
    try:
        # events made before and during the failover, each delivered through both proxies
        client.raw_request("post", f"/v1/subscriptions/{subs['initech']}", cancel_at_period_end=False)
        events = [e for e in client.raw_request("get", "/v1/events", limit=100).data["data"] if e["id"] not in seen]
        assert len(events) == len(subs) + 1, [e["type"] for e in events]
        deliveries = {(e["id"], edge): pool.submit(_deliver, e, edge) for e in events for edge in EDGE.values()}
        CLUSTER.wait_for("a new leader", lambda: CLUSTER.leader() not in (None, old), 120)
        time.sleep(8)  # HAProxy's checks find the new leader and the writer commits again
        CLUSTER.stop_writer(writes)
        written = CLUSTER.writer_result(writes, 10)
        resumed = outage_end_after(written, killed)
        assert resumed is not None, f"writes never resumed after the leader died: {written['failed'][-3:]}"
        # every acknowledged write survived; a bound only, so that a broken failover fails (bench_failover.py measures)
        assert not CLUSTER.lost(written, writes)
        assert resumed - killed < 60, resumed - killed
        statuses = until(_statuses, 150)
        # the edge kept serving: every request answered by the app through both proxies
        assert len(statuses) == 90 * 2 * 2 and set(statuses) == {"200"}, sorted(set(statuses))
        leader = CLUSTER.leader()
        assert leader not in (None, old)
        # the agents catch up through HAProxy's leader port once the new leader is up
        until(lambda: _metered(leader) == _served(), 120)
        metered, served = _metered(leader), _served()
        assert metered == served, (metered, served)
        assert served["initech"] >= 180 and served["globex"] >= 180

        answers = {key: future.result() for key, future in deliveries.items()}
        print({key: tries for key, (tries, last) in answers.items()})
        assert all(last is not None for tries, last in answers.values()), answers
        for event in events:
            # taken once: one ledger row, and no two answers that both applied it
            rows = psql(f"SELECT count(*) FROM platform.stripe_events WHERE id = '{event['id']}'", leader).stdout.strip()
            applied = [last for (eid, edge), (tries, last) in answers.items()
                       if eid == event["id"] and last["outcome"] != "duplicate"]
            assert rows == "1" and len(applied) <= 1, (event["id"], rows, applied)
        for sub in subs.values():
            fake = client.raw_request("get", f"/v1/subscriptions/{sub}").data
            assert _mirror(sub, leader) == f"{fake['status']} {str(fake['cancel_at_period_end']).lower()}", (sub, fake)
        assert _mirror(subs["initech"], leader).endswith("false") and _mirror(subs["acme"], leader).endswith("true")
        # both receivers took deliveries
        for api in API:
            journal = _host(api).run("journalctl -u selfbase-billing --no-pager -o cat").stdout
            assert any(e["id"] in journal for e in events), api
    finally:
        pool.shutdown(wait=True)
        CLUSTER.start(old)
    CLUSTER.wait_for("the old leader back as a replica", CLUSTER.healthy, 300)
