"""The cluster's leader killed while tenants are served and metered through both proxies (after test_1_tiers,
whose idempotence and check runs need the converged cluster as site.yml left it).

The edge keeps serving (its routes and quota maps need no database), and each proxy's metering agent,
reaching the leader through its local HAProxy, records exactly what its nginx served: per tenant, the
metered requests equal nginx's own count of billable lines across the failover, nothing lost, nothing doubled.
"""

import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
# pylint: disable=wrong-import-position
from molecule_hosts import docker_host as _host, until  # noqa: E402
from patroni_cluster import docker  # noqa: E402
from production_hosts import CLUSTER, EDGE, leader as _leader, psql  # noqa: E402

testinfra_hosts = []
UNBILLED = {402, 403, 429}  # metering_unbilled_statuses
TRAFFIC = "/tmp/failover-traffic.txt"


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


def _statuses():
    """The traffic's HTTP statuses, once it has ended."""
    return docker("exec", "prod-mon1", "cat", TRAFFIC, check=False).stdout.split()


def test_killing_the_leader_loses_and_doubles_no_metered_request():
    old = _leader()
    # about two requests a second per tenant through each proxy for a minute, for two tenants, from the monitoring host
    loop = ("for i in $(seq 90); do for e in %s; do for t in initech globex; do "
            "curl -sk -o /dev/null -w '%%{http_code}\\n' --max-time 5 --resolve $t.example.com:443:$e "
            "https://$t.example.com/failover; done; done; sleep 0.5; done > %s.tmp; mv %s.tmp %s"
            % (" ".join(EDGE.values()), TRAFFIC, TRAFFIC, TRAFFIC))
    docker("exec", "prod-mon1", "rm", "-f", TRAFFIC)
    docker("exec", "-d", "prod-mon1", "sh", "-c", loop)
    time.sleep(10)
    CLUSTER.kill(old)
    try:
        CLUSTER.wait_for("a new leader", lambda: CLUSTER.leader() not in (None, old), 120)
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
    finally:
        CLUSTER.start(old)
    CLUSTER.wait_for("the old leader back as a replica", CLUSTER.healthy, 300)
