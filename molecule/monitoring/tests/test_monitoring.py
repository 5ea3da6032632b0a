"""Verify the monitoring role: targets, private listen addresses, rules, tenant
quota, replication, backup and nginx status metrics, and alerts' way to the
test webhook receiver (a stopped PostgreSQL, real 5xx responses, no backup)."""

import json
import os
import pathlib
import re
import shlex
import sys
import time
import warnings
from urllib.parse import quote

import pytest
import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources"))
from molecule_hosts import ansible_host as _host  # noqa: E402  pylint: disable=wrong-import-position

testinfra_hosts = ["monitoring"]

PROM = "172.30.96.12:9090"
ADDRESSES = {"mon-db": "172.30.96.11", "mon-prom": "172.30.96.12", "mon-proxy": "172.30.96.13"}
EXPECTED_TARGETS = {
    ("prometheus", PROM),
    ("alertmanager", "mon-prom:9093"),
    ("node", "mon-db:9100"),
    ("node", "mon-prom:9100"),
    ("node", "mon-proxy:9100"),
    ("postgres", "mon-db:9187"),
    ("nginx", "mon-proxy:9113"),
    ("nginx_log", "mon-proxy:3903"),
    ("blackbox", "https://api.selfbase.test/healthz"),
}
# Every listening socket of the exporters and servers, per host.
EXPECTED_LISTENERS = {
    "mon-db": {"172.30.96.11:9100", "172.30.96.11:9187"},
    "mon-prom": {"172.30.96.12:9100", "172.30.96.12:9090", "172.30.96.12:9093", "127.0.0.1:9115"},
    "mon-proxy": {"172.30.96.13:9100", "172.30.96.13:9113", "172.30.96.13:3903"},
}
EXPECTED_ALERTS = {
    "InstanceDown", "DiskAbove85", "MemoryPressure", "PostgresDown", "PostgresTooManyConnections",
    "PostgresReplicationLag", "BackupMissing", "Nginx5xxRate", "CertificateExpiresSoon",
    "TenantQuotaWarning", "TenantQuotaExceeded", "TenantClusterNearCapacity", "WalArchivingFailing",
    "WalArchiveLagging", "MeteringAgentDown",
    "MeteringLagHigh",
    "PatroniNoLeader", "PatroniMemberNotRunning", "EtcdUnhealthy", "HAProxyBackendDown",
    "BillingSyncFailing", "MeterPushBacklog", "MeterPushNearStripeWindow", "StripeEventsDelayed",
    "MeterPushUnverified", "OverageNotBilled", "MeterEventsRefused", "StripeEventsLost",
}
TEXTFILE = "/var/lib/prometheus/node-exporter/selfbase_backup.prom"
WEBHOOK_LOG = "/var/lib/webhook-receiver/alerts.jsonl"


@pytest.fixture(scope="module")
def db():
    return _host("mon-db")


@pytest.fixture(scope="module")
def proxy():
    return _host("mon-proxy")


@pytest.fixture(scope="module")
def hvars(host):
    return host.ansible.get_variables()


def _api(host, hvars, path):
    out = host.check_output(
        f"curl -sf -u 'admin:{hvars['monitoring_prometheus_web_password']}' 'http://{PROM}{path}'")
    return json.loads(out)["data"]


def _poll(fn, timeout=60, delay=1):
    deadline = time.time() + timeout
    while True:
        try:
            result = fn()
            if result:
                return result
        except Exception:  # pylint: disable=broad-except
            if time.time() > deadline:
                raise
        if time.time() > deadline:
            return fn()
        time.sleep(delay)


def _seconds(value):
    return float(value[:-1]) * {"s": 1, "m": 60}[value[-1]]


def test_web_needs_basic_auth_and_listens_privately(host, hvars):
    assert host.run(f"curl -s -o /dev/null -w '%{{http_code}}' http://{PROM}/api/v1/targets").stdout == "401"
    assert host.run(f"curl -s -o /dev/null -w '%{{http_code}}' -u admin:wrong http://{PROM}/-/ready").stdout == "401"
    assert host.socket(f"tcp://{PROM}").is_listening
    assert not host.socket("tcp://0.0.0.0:9090").is_listening
    web = host.file("/etc/prometheus/web.yml")
    assert web.mode == 0o640
    content = host.check_output("cat /etc/prometheus/web.yml")
    assert "$2b$12$" in content
    assert hvars["monitoring_prometheus_web_password"] not in content


def test_every_expected_target_is_up(host, hvars):
    def all_up():
        targets = _api(host, hvars, "/api/v1/targets")["activeTargets"]
        seen = {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in targets}
        return seen if set(seen) == EXPECTED_TARGETS and set(seen.values()) == {"up"} else None
    seen = _poll(all_up, timeout=90)
    assert seen, _api(host, hvars, "/api/v1/targets")


def test_exporters_listen_on_the_private_address_only():
    ports = {9100, 9187, 9113, 3903, 9090, 9093, 9094, 9115}
    for name, expected in EXPECTED_LISTENERS.items():
        out = _host(name).check_output("ss -Hltn")
        local = {line.split()[3] for line in out.splitlines()}
        got = {a for a in local if int(a.rsplit(":", 1)[1]) in ports}
        assert got == expected, (name, out)


def test_nginx_exporter_reads_stub_status(host, hvars):
    result = _api(host, hvars, "/api/v1/query?query=nginx_up")["result"]
    assert [(r["metric"]["instance"], r["value"][1]) for r in result] == [("mon-proxy:9113", "1")]


def test_blackbox_reads_the_certificate_expiry(host, hvars):
    result = _api(host, hvars, "/api/v1/query?query=" + quote("probe_ssl_earliest_cert_expiry - time()"))["result"]
    assert [r["metric"]["instance"] for r in result] == ["https://api.selfbase.test/healthz"]
    assert float(result[0]["value"][1]) > 14 * 86400
    firing = _api(host, hvars, "/api/v1/query?query=" + quote('ALERTS{alertname="CertificateExpiresSoon"}'))["result"]
    assert firing == []


def test_rules_are_loaded(host, hvars):
    groups = _api(host, hvars, "/api/v1/rules")["groups"]
    names = {r["name"] for g in groups for r in g["rules"]}
    assert names == EXPECTED_ALERTS
    assert all(r["health"] == "ok" for g in groups for r in g["rules"])


def test_alert_rules_unit_tests_pass(host):
    res = host.run("promtool test rules /etc/prometheus/rules/tests/selfbase-alerts.test.yml")
    assert res.rc == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr


def test_alertmanager_config(host):
    res = host.run("amtool check-config /etc/prometheus/alertmanager.yml")
    assert res.rc == 0, res.stdout + res.stderr
    assert "molecule-webhook" in host.check_output("cat /etc/prometheus/alertmanager.yml")


def test_exporter_role_is_least_privilege(db):
    def sql(query, user="postgres"):
        return db.run(f"runuser -u postgres -- psql -d appdb -XAtc \"{query}\"")
    row = sql("SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin "
              "FROM pg_roles WHERE rolname = 'selfbase_exporter'").stdout.strip()
    assert row == "f|f|f|f|f|t"
    groups = sql("SELECT string_agg(b.rolname, ',' ORDER BY b.rolname) FROM pg_auth_members m "
                 "JOIN pg_roles b ON b.oid = m.roleid JOIN pg_roles r ON r.oid = m.member "
                 "WHERE r.rolname = 'selfbase_exporter'").stdout.strip()
    assert groups == "pg_monitor,selfbase_monitor"
    # It may call quota_status() for every tenant, and read nothing else of tenants.
    as_exporter = "SET ROLE selfbase_exporter; "
    assert sql(as_exporter + "SELECT count(*) FROM platform.tenants t, platform.quota_status(t.id)").rc == 0
    denied = sql(as_exporter + "SELECT count(*) FROM platform.tenant_invitations")
    assert denied.rc != 0 and "permission denied" in denied.stderr
    assert db.file("/etc/default/prometheus-postgres-exporter").mode == 0o640


def test_tenant_quota_ratios(host, hvars):
    def ratios():
        result = _api(host, hvars, "/api/v1/query?query=selfbase_tenant_quota_used_ratio")["result"]
        return {(r["metric"]["tenant"], r["metric"]["metric"], r["metric"]["mode"]): float(r["value"][1])
                for r in result}
    got = _poll(ratios, timeout=60)
    assert got == {("acme", "members", "hard"): 0.8, ("globex", "projects", "hard"): 1.0}

    def by_status():
        result = _api(host, hvars, "/api/v1/query?query=selfbase_tenants")["result"]
        return {r["metric"]["status"]: float(r["value"][1]) for r in result}
    assert _poll(by_status) == {"active": 1.0, "trial": 1.0}


def test_tenant_cluster_capacity(host, hvars, db):
    def capacity():
        result = _api(host, hvars, "/api/v1/query?query=selfbase_cluster_databases/selfbase_cluster_max_databases")
        return {r["metric"]["cluster"]: float(r["value"][1]) for r in result["result"]} or None
    assert _poll(capacity, timeout=60) == {"shared-1": 0.5}
    # acme's database exists on the cluster and only its login may connect
    acl = db.run("runuser -u postgres -- psql -XAtc \"SELECT datacl FROM pg_database WHERE datname = 'tenant_acme'\"")
    assert acl.stdout.strip() == "{tenant_acme=CTc/tenant_acme}", acl.stdout + acl.stderr


def test_tenant_router_reaches_acme_by_name(host, db):
    # the tenant's password, as the router keeps it (the controller's secrets file)
    line = host.check_output("cat /etc/selfbase/tenant-router/userlist.txt")
    login, password = [part.strip('"') for part in line.split()]
    assert login == "tenant_acme"
    assert host.service("selfbase-tenant-router").is_running
    query = ("PGPASSWORD=%s psql 'host=172.30.96.12 port=6433 dbname=acme user=tenant_acme' -XAtc "
             "'SELECT current_database(), current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()'")
    res = db.run(query % password)
    assert res.stdout.strip() == "tenant_acme|tenant_acme|t", res.stdout + res.stderr
    wrong = db.run(query % "not-the-password")
    assert wrong.rc != 0 and "SASL authentication failed" in wrong.stderr, wrong.stderr  # PgBouncer's own refusal


def test_quota_alerts_are_pending_or_firing(host, hvars):
    def quota_alerts():
        alerts = _api(host, hvars, "/api/v1/alerts")["alerts"]
        got = {(a["labels"]["alertname"], a["labels"]["tenant"]) for a in alerts if "tenant" in a["labels"]}
        return got if len(got) == 3 else None
    assert _poll(quota_alerts, timeout=30) == {
        ("TenantQuotaWarning", "acme"), ("TenantQuotaWarning", "globex"), ("TenantQuotaExceeded", "globex")}


def _delivered(host, since, alertname):
    log = host.file(WEBHOOK_LOG)
    if not log.exists:
        return None
    for line in log.content_string.splitlines():
        entry = json.loads(line)
        if entry["received"] < since:
            continue
        for alert in entry["body"]["alerts"]:
            if alert["labels"]["alertname"] == alertname and alert["status"] == "firing":
                return entry["received"]
    return None


def _alerts(host, hvars, alertname, state=None):
    alerts = _api(host, hvars, "/api/v1/alerts")["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == alertname and state in (None, a["state"])]


def _mtail_count(host, status):
    out = host.check_output(f"curl -sf http://{ADDRESSES['mon-proxy']}:3903/metrics")
    match = re.search(rf'^selfbase_nginx_http_responses_total{{status="{status}"}} (\d+)$', out, re.M)
    return int(match.group(1)) if match else 0


def test_real_5xx_through_nginx_raise_the_metric_and_fire_the_alert(host, hvars):
    """Requests through nginx on mon-proxy that its upstream answers with 500:
    mtail counts each one from the access log, Prometheus scrapes the count, and
    Nginx5xxRate fires and reaches the webhook receiver."""
    assert _alerts(host, hvars, "Nginx5xxRate") == []
    before = _mtail_count(host, 500)
    started = time.time()
    # Spread over several scrapes, so that rate() sees the new series grow.
    codes = host.check_output(
        "for i in $(seq 30); do curl -sk -o /dev/null -w '%{http_code} ' https://api.selfbase.test/status/500;"
        " sleep 0.2; done")
    assert codes.split() == ["500"] * 30
    assert _poll(lambda: _mtail_count(host, 500) == before + 30, timeout=20)

    def scraped():
        result = _api(host, hvars, "/api/v1/query?query=" + quote('selfbase_nginx_http_responses_total{status="500"}'))
        return result["result"] and int(result["result"][0]["value"][1]) == before + 30
    assert _poll(scraped, timeout=20)
    assert _poll(lambda: _alerts(host, hvars, "Nginx5xxRate", "firing"), timeout=60)
    [alert] = _alerts(host, hvars, "Nginx5xxRate", "firing")
    assert alert["labels"]["instance"] == "mon-proxy:3903"
    assert _poll(lambda: _delivered(host, started, "Nginx5xxRate"), timeout=30)


def _write_backup_metric(db, timestamp):
    db.check_output(
        f"printf 'selfbase_backup_last_success_timestamp_seconds %d\\n' {int(timestamp)} > {TEXTFILE}.tmp"
        f" && mv {TEXTFILE}.tmp {TEXTFILE}")


def test_backup_missing(host, db, hvars):
    """mon-db expects backups: BackupMissing fires while it reports none, clears
    when a fresh backup is reported, and fires again for a 3-day-old one."""
    db.run(f"rm -f {TEXTFILE}")

    def firing(reason):
        got = [(a["labels"]["instance"], a["labels"]["reason"]) for a in _alerts(host, hvars, "BackupMissing", "firing")]
        return got if got == [("mon-db:9100", reason)] else None
    assert _poll(lambda: firing("absent"), timeout=30)
    _write_backup_metric(db, time.time())
    assert _poll(lambda: _alerts(host, hvars, "BackupMissing") == [], timeout=30)
    _write_backup_metric(db, time.time() - 3 * 86400)
    assert _poll(lambda: firing("stale"), timeout=30)
    [alert] = _alerts(host, hvars, "BackupMissing", "firing")
    assert alert["annotations"]["summary"].startswith("The last successful backup of mon-db:9100 is 3d ")
    _write_backup_metric(db, time.time())


def _psql(db, sql, port=5432, host="/var/run/postgresql"):
    return db.check_output(f"runuser -u postgres -- psql -h {host} -p {port} -d appdb -XAtc {shlex.quote(sql)}")


def test_replication_lag_metric(host, db, hvars):
    """On the primary the exporter reports no lag; on a real standby (streamed
    from mon-db for this test) the shipped query, run as the exporter role,
    reports 0 while it keeps up and a growing lag once replay is paused."""
    result = _api(host, hvars, "/api/v1/query?query=" + quote("{__name__=~'selfbase_pg_replication_.*'}"))["result"]
    assert {(r["metric"]["__name__"], r["metric"]["instance"], r["value"][1]) for r in result} == {
        ("selfbase_pg_replication_is_replica", "mon-db:9187", "0"),
        ("selfbase_pg_replication_lag_seconds", "mon-db:9187", "0")}
    query = yaml.safe_load(db.file("/etc/prometheus/postgres-exporter-queries.yml").content_string)[
        "selfbase_pg_replication"]["query"]
    standby = "/var/lib/postgresql/selfbase-standby"
    db.check_output(f"rm -rf {standby} && runuser -u postgres -- pg_basebackup -h /var/run/postgresql -D {standby} -R -X stream"
                    f" && cd {standby} && runuser -u postgres -- sh -c 'touch postgresql.conf pg_ident.conf"
                    " && echo \"local all all peer\" > pg_hba.conf'")
    db.check_output(f"runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D {standby} -l {standby}.log -w"
                    " -o \"-p 5433 -k /tmp -c listen_addresses=''\" start")
    try:
        def standby_row():
            out = _psql(db, "SET ROLE selfbase_exporter; " + query, port=5433, host="/tmp")
            return out.strip().splitlines()[-1].split("|")  # after psql's "SET"
        # A transaction replayed while streaming: the lag is 0 and the replay time is known
        # (caught up can also mean before that commit arrived: wait for its replay time too).
        _psql(db, "SELECT txid_current()")
        replayed = "SELECT pg_last_xact_replay_timestamp() IS NOT NULL"
        assert _poll(lambda: standby_row() == ["1", "0"]
                     and _psql(db, replayed, port=5433, host="/tmp").strip() == "t", timeout=20), standby_row()
        # Pause replay, then write a commit that must reach the standby: it is
        # received but not replayed, so the lag is the age of the last replayed commit.
        _psql(db, "SELECT pg_wal_replay_pause()", port=5433, host="/tmp")
        time.sleep(2)
        _psql(db, "SELECT txid_current()")
        behind = "SELECT pg_get_wal_replay_pause_state() = 'paused' AND pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()"
        assert _poll(lambda: _psql(db, behind, port=5433, host="/tmp").strip() == "t", timeout=30), \
            _psql(db, "SELECT pg_get_wal_replay_pause_state(), pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()",
                  port=5433, host="/tmp")
        row = standby_row()
        assert row[0] == "1" and float(row[1]) >= 2, row
    finally:
        db.run(f"runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D {standby} -m fast -w stop; rm -rf {standby} {standby}.log")


def test_postgres_down_reaches_the_webhook(host, db, hvars):
    """Stop PostgreSQL: PostgresDown fires and Alertmanager delivers it to the test
    receiver within `for` + two scrape intervals (+ evaluation, group_wait, a margin)
    of the moment the server was down."""
    budget = (_seconds(hvars["monitoring_alert_postgres_down_for"])
              + 2 * _seconds(hvars["monitoring_prometheus_scrape_interval"])
              + _seconds(hvars["monitoring_prometheus_evaluation_interval"])
              + _seconds(hvars["monitoring_alertmanager_group_wait"]))
    issued = time.time()
    # the host's clock (the controller's kernel) when the server was down: a command through testinfra's
    # ansible backend can take seconds to start on a busy machine, and that is not the alert's path
    stopped = float(db.check_output("systemctl stop postgresql@15-main && date +%s.%N"))
    try:
        delivered = _poll(lambda: _delivered(host, issued, "PostgresDown"), timeout=budget + 60, delay=0.5)
        assert delivered, "PostgresDown was not delivered to the webhook receiver"
        elapsed = delivered - stopped
        with open(os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "alert_latency.txt"), "w",
                  encoding="utf-8") as fh:
            fh.write(f"PostgresDown stopped-to-delivery {elapsed:.1f}s (budget {budget:.0f}s + 5s margin)\n")
        warnings.warn(f"PostgresDown stopped-to-delivery: {elapsed:.1f}s (budget {budget:.0f}s + 5s margin)")
        assert elapsed <= budget + 5
    finally:
        db.check_output("systemctl start postgresql@15-main")

    def pg_up():
        result = _api(host, hvars, "/api/v1/query?query=pg_up")["result"]
        return result and result[0]["value"][1] == "1"
    assert _poll(pg_up, timeout=60)


DASHBOARDS = pathlib.Path(__file__).resolve().parents[3] / "roles/monitoring/files/dashboards"


def test_dashboards_are_valid_and_every_query_parses(host):
    """The shipped dashboards follow Grafana's file-provisioning format, use the
    provisioned datasource, and every panel query is PromQL that promtool parses."""
    files = sorted(DASHBOARDS.glob("*.json"))
    assert [f.stem for f in files] == ["selfbase-billing", "selfbase-nginx", "selfbase-overview", "selfbase-postgresql",
                                       "selfbase-tenants"]
    exprs = []
    for path in files:
        board = json.loads(path.read_text())
        assert board["uid"] == path.stem and board["title"].startswith("Selfbase / ")
        assert board["panels"], path.name
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), path.name
        for panel in board["panels"]:
            assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), (path.name, panel["title"])
            assert panel["datasource"]["uid"] == "selfbase-prometheus"
            assert panel["targets"], (path.name, panel["title"])
            exprs += [(path.stem, panel["title"], t["expr"]) for t in panel["targets"]]
    # promtool parses each expression as a recording rule.
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard:check_{i}", "expr": item[2]} for i, item in enumerate(exprs)]}]}
    host.run(f"printf '%s' {shlex.quote(json.dumps(rules))} > /tmp/dashboard-queries.yml")
    res = host.run("promtool check rules /tmp/dashboard-queries.yml")
    assert res.rc == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in res.stdout + res.stderr
