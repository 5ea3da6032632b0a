"""Edge metering on real hosts: nginx and the agent on meter-proxy, PostgreSQL and the app upstream on
meter-db. What nginx logged per tenant must be exactly what the database recorded, through agent
crashes (SIGKILL), log rotations and a database outage; quotas and billing states are enforced."""

import json
import pathlib
import random
import sys
import threading
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources"))
from molecule_hosts import docker_host, until  # noqa: E402  pylint: disable=wrong-import-position

testinfra_hosts = []
PROXY = docker_host("meter-proxy")
DB = docker_host("meter-db")
BASE = "meter.test"
# Catch-up bound: read interval + render + installer period + rotation grace, with room for a restart.
LAG = 60

# Sends n requests per tenant (at most rate/s each, 0: no limit) over keep-alive connections and
# prints the status counts as JSON.
SENDER = r"""
import http.client, json, ssl, sys, threading, time
ctx = ssl._create_unverified_context()
n, rate, hosts = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
out = {}
def run(host):
    codes = {}
    c = http.client.HTTPSConnection("127.0.0.1", 443, context=ctx, timeout=10)
    t0 = time.time()
    for i in range(n):
        if rate:
            time.sleep(max(0, t0 + i / rate - time.time()))
        for attempt in (1, 2):
            try:
                c.request("GET", "/m/%d" % i, headers={"Host": host})
                r = c.getresponse(); r.read()
                codes[r.status] = codes.get(r.status, 0) + 1
                break
            except (OSError, http.client.HTTPException) as exc:
                c.close(); c = http.client.HTTPSConnection("127.0.0.1", 443, context=ctx, timeout=10)
                # A reload closes idle keep-alive connections before reading what a client just
                # sent on one; clients retry such a GET once (RFC 9110, 9.2.2). Anything else counts.
                if attempt == 2 or not isinstance(exc, (ConnectionResetError, BrokenPipeError)):
                    codes[type(exc).__name__] = codes.get(type(exc).__name__, 0) + 1
                    break
    out[host] = codes
ts = [threading.Thread(target=run, args=(h,)) for h in hosts]
[t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps(out))
"""

# nginx's own count: every line of the log and its rotated copies, per tenant, without what the
# edge answered itself (the agent's unbilled statuses).
LOGCOUNT = r"""
import glob, gzip, json
req, byt = {}, {}
for p in glob.glob("/var/log/nginx/access.json*"):
    with (gzip.open if p.endswith(".gz") else open)(p, "rt") as fh:
        for line in fh:
            r = json.loads(line)
            if not r["tenant"] or (not r["upstream"] and r["status"] in (402, 403, 429)):
                continue
            req[r["tenant"]] = req.get(r["tenant"], 0) + 1
            byt[r["tenant"]] = byt.get(r["tenant"], 0) + r["bytes_sent"]
print(json.dumps({"requests": req, "bytes": byt}))
"""


def send(n, *slugs, rate=0):
    out = PROXY.run(f"python3 - {n} {rate} " + " ".join(f"{s}.{BASE}" for s in slugs) + f" <<'EOF'\n{SENDER}\nEOF")
    assert out.rc == 0, out.stderr
    return json.loads(out.stdout)


def logged():
    out = PROXY.run(f"python3 - <<'EOF'\n{LOGCOUNT}\nEOF")
    assert out.rc == 0, out.stderr
    return json.loads(out.stdout)


def sql(query):
    out = DB.run(f"runuser -u postgres -- psql -d selfbase -XAtc \"{query}\"")
    assert out.rc == 0, out.stderr
    return out.stdout.strip()


def recorded():
    out = DB.run("runuser -u postgres -- psql -d selfbase -XAt -c \"SELECT json_build_object("
                 "'requests', COALESCE(json_object_agg(slug, r) FILTER (WHERE r > 0), '{}'), "
                 "'bytes', COALESCE(json_object_agg(slug, b) FILTER (WHERE b > 0), '{}')) FROM ("
                 "SELECT t.slug, sum(e.quantity) FILTER (WHERE e.metric = 'api_requests') AS r, "
                 "sum(e.quantity) FILTER (WHERE e.metric = 'bandwidth_bytes') AS b "
                 "FROM platform.usage_events e JOIN platform.tenants t ON t.id = e.tenant_id GROUP BY t.slug) s\"")
    assert out.rc == 0, out.stderr
    return json.loads(out.stdout)


def caught_up(timeout=LAG):
    """Wait until the database holds what nginx logged; return both."""
    deadline = time.time() + timeout
    while True:
        log, db = logged(), recorded()
        if log == db or time.time() > deadline:
            return log, db
        time.sleep(2)


def curl(slug, path="/x"):
    out = PROXY.run(f"curl -sk -D - -o /tmp/body --resolve {slug}.{BASE}:443:127.0.0.1 https://{slug}.{BASE}{path}"
                    " && cat /tmp/body")
    assert out.rc == 0, out.stderr
    head, body = out.stdout.split("\r\n\r\n", 1)
    lines = head.split("\r\n")
    headers = dict((x.split(":", 1)[0].lower(), x.split(":", 1)[1].strip()) for x in lines[1:])
    return int(lines[0].split()[1]), headers, body


def until_curl(slug, predicate, timeout=LAG):
    """curl the tenant every second until predicate((status, headers, body)) holds; return the last answer."""
    deadline = time.time() + timeout
    while True:
        res = curl(slug)
        if predicate(res) or time.time() > deadline:
            return res
        time.sleep(1)


def test_the_agent_runs_as_its_own_user():
    svc = PROXY.service("selfbase-meter")
    assert svc.is_running and svc.is_enabled
    pid = PROXY.check_output("systemctl show -p MainPID --value selfbase-meter")
    assert PROXY.check_output(f"ps -o user= -p {pid}").strip() == "selfbase-meter"
    assert PROXY.service("selfbase-edge-apply.timer").is_running


def test_no_request_lost_or_doubled_through_kills_and_rotations():
    before = recorded()
    result = {}
    # about 12 s of traffic; the agent is killed three times and the log rotated twice meanwhile
    sender = threading.Thread(target=lambda: result.update(send(1500, "alpha", "bravo", rate=125)))
    sender.start()
    rng = random.Random(17)
    for event in ["kill", "rotate", "kill", "rotate", "kill"]:
        time.sleep(rng.uniform(1, 2.2))
        if event == "kill":
            PROXY.run("systemctl kill -s KILL selfbase-meter")
        else:
            assert PROXY.run("logrotate -f /etc/logrotate.d/selfbase-nginx").rc == 0
    sender.join()
    assert result[f"alpha.{BASE}"] == {"200": 1500} and result[f"bravo.{BASE}"] == {"200": 1500}
    log, db = caught_up()
    assert db == log
    assert db["requests"]["alpha"] - before["requests"].get("alpha", 0) == 1500
    assert db["requests"]["bravo"] - before["requests"].get("bravo", 0) == 1500
    # two rotations: the log has rotated copies, compressed or not, and the agent read them all
    assert len(PROXY.run("ls /var/log/nginx/access.json.*").stdout.split()) >= 2
    prom = PROXY.file("/var/lib/selfbase-meter/metrics.prom").content_string
    assert "selfbase_meter_lines_total" in prom


def test_bandwidth_is_the_bytes_nginx_sent():
    log, db = caught_up()
    assert db["bytes"] == log["bytes"] and db["bytes"]["alpha"] > 1500 * 100


def test_a_tenant_over_its_hard_quota_gets_429_and_another_is_served():
    # 40 requests left this month (also when verify runs again on the same hosts)
    sql("UPDATE platform.tenant_quotas q SET limit_value = platform.metric_usage(q.tenant_id, 'api_requests', "
        "'month') + 40 FROM platform.tenants t WHERE t.id = q.tenant_id AND t.slug = 'hardy' "
        "AND q.metric = 'api_requests'")
    assert until(lambda: curl("hardy")[0] == 200)
    limit = int(sql("SELECT limit_value FROM platform.tenant_quotas q JOIN platform.tenants t ON t.id = q.tenant_id "
                    "WHERE t.slug = 'hardy'"))
    sent = send(60, "hardy")[f"hardy.{BASE}"]
    assert sent.get("200", 0) >= 40
    start = time.time()
    blocked = until_curl("hardy", lambda r: r[0] == 429)[0] == 429
    assert blocked, "hardy was still served %d s after crossing its quota" % LAG
    status, headers, body = curl("hardy")
    doc = json.loads(body)
    assert status == 429 and doc["error"] == "quota_exceeded" and doc["limit"] == limit and doc["period"] == "month"
    assert doc["upgrade"] == "https://meter.test/billing" and doc["reset"].endswith("-01T00:00:00Z")
    assert headers["retry-after"].endswith("00:00:00 GMT") and headers["x-quota-limit"] == str(limit)
    assert headers["x-quota-remaining"] == "0"
    assert curl("alpha")[0] == 200
    print("enforcement after the crossing burst: %.1f s" % (time.time() - start))
    # the 429s are not billed: the recorded count stays what was served
    log, db = caught_up()
    assert db == log and db["requests"]["hardy"] >= sent["200"]


def test_a_soft_quota_carries_the_quota_headers():
    send(3, "softy")
    status, headers = until_curl("softy", lambda r: "x-quota-limit" in r[1])[:2]
    assert status == 200 and headers["x-quota-limit"] == "100000"
    assert 0 < int(headers["x-quota-remaining"]) <= 100000 and int(headers["x-quota-reset"]) > time.time()
    assert "x-quota-limit" not in curl("alpha")[1]


def test_a_suspended_tenant_gets_the_configured_status():
    status, body = until_curl("late", lambda r: r[0] == 402)[::2]
    assert status == 402 and json.loads(body)["error"] == "payment_required"


def test_the_agent_catches_up_after_a_database_outage():
    DB.run("systemctl stop postgresql")
    try:
        sent = send(400, "alpha")
        assert sent[f"alpha.{BASE}"] == {"200": 400}  # the edge keeps serving
        time.sleep(8)
        prom = PROXY.file("/var/lib/selfbase-meter/metrics.prom").content_string
        errors = [float(x.split()[1]) for x in prom.splitlines() if x.startswith("selfbase_meter_errors_total")]
        assert errors and errors[0] > 0
    finally:
        DB.run("systemctl start postgresql")
    log, db = caught_up()
    assert db == log


def test_the_installer_refuses_a_map_that_is_not_map_entries():
    PROXY.run("systemctl stop selfbase-meter selfbase-edge-apply.timer")
    try:
        PROXY.run("systemctl start selfbase-edge-apply.service")  # installs what the agent rendered last
        live = PROXY.file("/etc/nginx/selfbase/edge/quota.map").content_string
        PROXY.run("printf '%s\\n' 'include /etc/shadow;' >> /var/lib/selfbase-meter/quota.map")
        out = PROXY.run("systemctl start selfbase-edge-apply.service")
        assert out.rc != 0
        assert PROXY.file("/etc/nginx/selfbase/edge/quota.map").content_string == live
        assert "refused" in PROXY.run("journalctl -u selfbase-edge-apply.service -n 5 --no-pager").stdout
    finally:
        PROXY.run("systemctl reset-failed selfbase-edge-apply.service")
        PROXY.run("systemctl start selfbase-meter selfbase-edge-apply.timer")


@pytest.mark.parametrize("name", ["selfbase_meter_heartbeat_timestamp_seconds", "selfbase_edge_apply_timestamp_seconds",
                                  'selfbase_edge_apply_runs_total{outcome="reloaded"}'])
def test_metrics_reach_node_exporters_directory(name):
    prom = "/var/lib/prometheus/node-exporter/selfbase_meter.prom"
    assert until(lambda: name in PROXY.run(f"cat {prom}").stdout, timeout=20)
