"""Monitoring in the production shape (these checks had a scenario of their own): Prometheus behind basic auth
on the monitoring host, every exporter on its host's private address only, the rules loaded and their promtool
tests, the dashboards' queries, tenant quota and cluster capacity metrics as the database computes them, replication
lag on a Patroni replica, and alerts on their way to the test webhook receiver on the monitoring host (prepare):
real 5xx answers through an edge, backup reports missing then stale, a tenant at its hard quota, a replica
stopped. Then the role's own handlers:
a changed rule is reloaded, not restarted, a rule promtool refuses is never written, and node_exporter installed by
its entry point is left alone by the whole role. Alert timings are the scenario's (zz_molecule_overrides.yml)."""

import concurrent.futures
import json
import os
import pathlib
import re
import sys
import time
import warnings
from urllib.parse import quote

import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
# pylint: disable=wrong-import-position
from molecule_hosts import docker_host as _host, until  # noqa: E402
from production_hosts import (API, BACKUP, DB, EDGE, HOSTS, MON, MON_ADDR, NET, TENANT_DB, TENANT_DB_ADDR, VAULT,  # noqa: E402
                              leader, playbook, prometheus, psql)

testinfra_hosts = []
ROOT = pathlib.Path(__file__).resolve().parents[3]
# the monitoring role's settings here: its defaults and this scenario's overrides (the inventory sets no timing)
SETTINGS = {**yaml.safe_load((ROOT / "roles/monitoring/defaults/main.yml").read_text()),
            **yaml.safe_load((pathlib.Path(__file__).resolve().parents[1]
                              / "inventory/group_vars/all/zz_molecule_overrides.yml").read_text())}
PROM = MON_ADDR + ":9090"
ADDRESS = dict({m: NET + str(11 + i) for i, m in enumerate(DB)}, **API, **EDGE,
               **{MON: MON_ADDR, BACKUP: NET + "51", TENANT_DB: TENANT_DB_ADDR})
# The exporters' and servers' ports, and where each listens.
PORTS = {9100, 9187, 9113, 3903, 9090, 9093, 9094, 9115}
LISTENERS = {name: {ADDRESS[name] + ":9100"} for name in HOSTS}
for _name in DB:  # the platform's cluster; the tenant clusters have no postgres_exporter
    LISTENERS[_name].add(ADDRESS[_name] + ":9187")
for _name in EDGE:
    LISTENERS[_name] |= {ADDRESS[_name] + ":9113", ADDRESS[_name] + ":3903"}
LISTENERS[MON] |= {PROM, MON_ADDR + ":9093", "127.0.0.1:9115"}
# every alert the role ships (its rules template), which verify finds loaded and healthy
ALERTS = set(re.findall(r"^ *- alert: (\w+)$", (ROOT / "roles/monitoring/templates/selfbase-alerts.yml.j2").read_text(),
                        re.MULTILINE))
TEXTDIR = "/var/lib/prometheus/node-exporter"
WEBHOOK_LOG = "/var/lib/webhook-receiver/alerts.jsonl"
DASHBOARDS = ROOT / "roles/monitoring/files/dashboards"


def _query(expr):
    return prometheus("/api/v1/query?query=" + quote(expr))["result"]


def _alerts(alertname, state=None):
    return [a for a in prometheus("/api/v1/alerts")["alerts"]
            if a["labels"]["alertname"] == alertname and state in (None, a["state"])]


def _seconds(value):
    return float(value[:-1]) * {"s": 1, "m": 60}[value[-1]]


def _delivered(since, alertname):
    """When the receiver got a firing ALERTNAME, at or after SINCE (its clock)."""
    log = _host(MON).file(WEBHOOK_LOG)
    if not log.exists:
        return None
    for line in log.content_string.splitlines():
        entry = json.loads(line)
        if entry["received"] >= since and any(a["labels"]["alertname"] == alertname and a["status"] == "firing"
                                              for a in entry["body"]["alerts"]):
            return entry["received"]
    return None


def test_prometheus_needs_basic_auth_and_listens_privately():
    mon = _host(MON)
    assert mon.run("curl -s -o /dev/null -w '%%{http_code}' http://%s/api/v1/targets", PROM).stdout == "401"
    assert mon.run("curl -s -o /dev/null -w '%%{http_code}' -u admin:wrong http://%s/-/ready", PROM).stdout == "401"
    assert mon.file("/etc/prometheus/web.yml").mode == 0o640
    content = mon.file("/etc/prometheus/web.yml").content_string
    assert "$2b$12$" in content and VAULT["vault_monitoring_prometheus_web_password"] not in content


def test_every_exporter_listens_on_its_hosts_private_address_only():
    for name, expected in LISTENERS.items():
        local = {line.split()[3] for line in _host(name).check_output("ss -Hltn").splitlines()}
        assert {a for a in local if int(a.rsplit(":", 1)[1]) in PORTS} == expected, (name, local)


def test_nginx_exporter_reads_each_edges_stub_status():
    result = _query("nginx_up")
    assert sorted((r["metric"]["instance"], r["value"][1]) for r in result) == [(e + ":9113", "1") for e in sorted(EDGE)]


def test_blackbox_reads_the_certificate_expiry():
    def expiry():
        return {r["metric"]["instance"]: float(r["value"][1]) for r in _query("probe_ssl_earliest_cert_expiry - time()")}
    got = until(lambda: len(expiry()) == 2 and expiry(), 60)
    assert sorted(got) == ["https://api.example.com/healthz", "https://auth.example.com/healthz"], got
    assert all(left > 14 * 86400 for left in got.values()), got
    assert _query('ALERTS{alertname="CertificateExpiresSoon"}') == []


def test_every_rule_is_loaded_and_healthy():
    groups = prometheus("/api/v1/rules")["groups"]
    assert {r["name"] for g in groups for r in g["rules"]} == ALERTS
    assert all(r["health"] == "ok" for g in groups for r in g["rules"]), groups


def test_alert_rules_pass_their_promtool_tests_and_alertmanager_its_check():
    res = _host(MON).run("promtool test rules /etc/prometheus/rules/tests/selfbase-alerts.test.yml")
    assert res.rc == 0 and "SUCCESS" in res.stdout + res.stderr, res.stdout + res.stderr
    res = _host(MON).run("amtool check-config /etc/prometheus/alertmanager.yml")
    assert res.rc == 0, res.stdout + res.stderr


def test_dashboards_are_valid_and_every_query_parses():
    """The shipped dashboards follow Grafana's file-provisioning format, use the provisioned datasource, and
    every panel query is PromQL that promtool parses (as a recording rule)."""
    files = sorted(DASHBOARDS.glob("*.json"))
    assert [f.stem for f in files] == ["selfbase-billing", "selfbase-nginx", "selfbase-overview", "selfbase-postgresql",
                                       "selfbase-tenants"]
    exprs = []
    for path in files:
        board = json.loads(path.read_text())
        assert board["uid"] == path.stem and board["title"].startswith("Selfbase / ")
        ids = [p["id"] for p in board["panels"]]
        assert ids and len(ids) == len(set(ids)), path.name
        for panel in board["panels"]:
            assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), (path.name, panel["title"])
            assert panel["datasource"]["uid"] == "selfbase-prometheus"
            assert panel["targets"], (path.name, panel["title"])
            exprs += [t["expr"] for t in panel["targets"]]
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard:check_{i}", "expr": expr} for i, expr in enumerate(exprs)]}]}
    mon = _host(MON)
    mon.run("printf '%%s' %s > /tmp/dashboard-queries.yml", json.dumps(rules))
    res = mon.run("promtool check rules /tmp/dashboard-queries.yml")
    assert res.rc == 0 and f"SUCCESS: {len(exprs)} rules found" in res.stdout + res.stderr, res.stdout + res.stderr


def test_the_exporter_login_is_least_privilege():
    row = psql("SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin "
               "FROM pg_roles WHERE rolname = 'selfbase_exporter'").stdout.strip()
    assert row == "f|f|f|f|f|t"
    groups = psql("SELECT string_agg(b.rolname, ',' ORDER BY b.rolname) FROM pg_auth_members m "
                  "JOIN pg_roles b ON b.oid = m.roleid JOIN pg_roles r ON r.oid = m.member "
                  "WHERE r.rolname = 'selfbase_exporter'").stdout.strip()
    assert groups == "pg_monitor,selfbase_monitor"
    # it may call quota_status() for every tenant, and read nothing else of tenants
    assert psql("SET ROLE selfbase_exporter; SELECT count(*) FROM platform.tenants t, platform.quota_status(t.id)").rc == 0
    denied = psql("SET ROLE selfbase_exporter; SELECT count(*) FROM platform.tenant_invitations")
    assert denied.rc != 0 and "permission denied" in denied.stderr
    for member in DB:
        assert _host(member).file("/etc/default/prometheus-postgres-exporter").mode == 0o640, member


def _ratios():
    """{(tenant, metric, mode, period): ratio} as Prometheus has it (from every db member's exporter)."""
    return {(r["metric"]["tenant"], r["metric"]["metric"], r["metric"]["mode"], r["metric"].get("period", "")):
            round(float(r["value"][1]), 6) for r in _query("selfbase_tenant_quota_used_ratio")}


def test_tenant_quota_ratios_are_the_databases():
    """The ratios Prometheus has are quota_status()'s, read as the exporter's role."""
    sql = ("SET ROLE selfbase_exporter; SELECT string_agg(concat_ws('|', t.slug, q.metric, q.mode, "
           "coalesce(q.period, ''), round(CASE WHEN q.limit_value = 0 THEN 1 ELSE q.used::numeric / q.limit_value END,"
           " 6)), ',') FROM platform.tenants t CROSS JOIN LATERAL platform.quota_status(t.id) q "
           "WHERE t.status <> 'deleted' AND q.limit_value IS NOT NULL")

    def database():
        rows = psql(sql).stdout.strip().splitlines()[-1]
        return {tuple(x.split("|")[:4]): float(x.split("|")[4]) for x in rows.split(",") if x}
    assert database(), "no tenant has a quota"
    assert until(lambda: _ratios() == database(), 60), (_ratios(), database())


def _quota_alerts(lead):
    """acme filled to its hard member limit (on the leader, LEAD): both quota alerts (pending: they wait 5
    minutes), gone when the members go."""
    fill = ("INSERT INTO platform.tenant_members (tenant_id, user_id) SELECT t.id, gen_random_uuid() "
            "FROM platform.tenants t, generate_series(1, 25) WHERE t.slug = 'acme'")
    assert psql(fill, lead).rc == 0
    try:
        assert until(lambda: [v for k, v in _ratios().items() if k[:3] == ("acme", "members", "hard")] == [1.0], 60), \
            _ratios()

        def quota_alerts():
            return {(a["labels"]["alertname"], a["labels"]["tenant"]) for a in prometheus("/api/v1/alerts")["alerts"]
                    if "tenant" in a["labels"]}
        want = {("TenantQuotaWarning", "acme"), ("TenantQuotaExceeded", "acme")}
        assert until(lambda: quota_alerts() == want, 30), quota_alerts()
    finally:
        psql("DELETE FROM platform.tenant_members m USING platform.tenants t WHERE t.id = m.tenant_id "
             "AND t.slug = 'acme'", lead)
    assert until(lambda: not _alerts("TenantQuotaWarning") and not _alerts("TenantQuotaExceeded"), 60)


def test_tenant_cluster_capacity_is_the_registrys():
    registry = psql("SELECT string_agg(c.name || '|' || (SELECT count(*) FROM platform.tenant_placements p "
                    "WHERE p.cluster = c.name) || '|' || c.max_databases, ',') FROM platform.clusters c").stdout.strip()
    placed = {name: (int(n), int(cap)) for name, n, cap in (x.split("|") for x in registry.split(","))}
    assert {name: n for name, (n, _cap) in placed.items()} == {"dedicated-1": 1, "shared-1": 1}, placed

    def capacity():
        return {r["metric"]["cluster"]: round(float(r["value"][1]), 6)
                for r in _query("selfbase_cluster_databases / selfbase_cluster_max_databases")}
    want = {name: round(n / cap, 6) for name, (n, cap) in placed.items()}
    assert until(lambda: capacity() == want, 60), (capacity(), want)


def _mtail_count(edge, status):
    out = _host(MON).check_output("curl -sf http://%s:3903/metrics", EDGE[edge])
    match = re.search(rf'^selfbase_nginx_http_responses_total{{status="{status}"}} (\d+)$', out, re.M)
    return int(match.group(1)) if match else 0


def _five_hundreds():
    """Requests through nginx on an edge that the tenant's app answers with 500 (the stand-in app answers
    /status/<code> with that code): mtail counts each one from the access log, Prometheus scrapes the count,
    and Nginx5xxRate fires for that edge only and reaches the webhook receiver."""
    edge = sorted(EDGE)[1]
    assert _alerts("Nginx5xxRate") == []
    mon = _host(MON)
    started = float(mon.check_output("date +%s.%N"))
    before = _mtail_count(edge, 500)

    def fail(times):
        # paced under the tenant's rate limit (20 requests/s, burst 40): on an idle machine a tight loop is
        # faster, and its last requests got 429 instead of the app's 500
        codes = mon.check_output("for i in $(seq %s); do curl -sk -o /dev/null -w '%%{http_code} ' --resolve "
                                 "initech.example.com:443:%s https://initech.example.com/status/500; sleep 0.06; "
                                 "done", str(times), EDGE[edge])
        assert codes.split() == ["500"] * times

    def scraped():
        return {r["value"][1] for r in _query(f'selfbase_nginx_http_responses_total{{status="500",instance="{edge}:3903"}}')}
    # one first, scraped, so that rate() sees the count grow whatever the scrape interval
    fail(1)
    assert until(lambda: scraped() == {str(before + 1)}, 60), scraped()
    fail(59)
    assert until(lambda: _mtail_count(edge, 500) == before + 60, 20), _mtail_count(edge, 500)
    assert until(lambda: _alerts("Nginx5xxRate", "firing"), 90), _alerts("Nginx5xxRate")
    assert [a["labels"]["instance"] for a in _alerts("Nginx5xxRate")] == [edge + ":3903"]
    assert until(lambda: _delivered(started, "Nginx5xxRate"), 30)


def _backup_missing():
    """The repository host reports every stanza's backups (and is expected to: inventory): BackupMissing fires
    while it reports none, clears when they are back, and fires for a stanza whose last backup is 3 days old. Its
    real reports are put back."""
    repo = _host(BACKUP)
    instance = BACKUP + ":9100"
    reports = repo.check_output("ls %s", TEXTDIR).split()
    assert sorted(reports) == ["selfbase_backup_dedicated-1.prom", "selfbase_backup_selfbase.prom"], reports

    def firing(reason):
        got = [(a["labels"]["instance"], a["labels"]["reason"]) for a in _alerts("BackupMissing", "firing")]
        return got == [(instance, reason)]
    assert _alerts("BackupMissing") == []
    aside = "/var/tmp/selfbase-backup-reports"
    repo.check_output("mkdir -p %s && mv %s/selfbase_backup_*.prom %s/", aside, TEXTDIR, aside)
    try:
        assert until(lambda: firing("absent"), 60), _alerts("BackupMissing")
        repo.check_output("cp -p %s/selfbase_backup_*.prom %s/", aside, TEXTDIR)
        assert until(lambda: _alerts("BackupMissing") == [], 60), _alerts("BackupMissing")
        # the stanza's report as the backup job writes it, with its last success 3 days ago (a file that
        # differs in HELP or TYPE would fail node_exporter's whole scrape)
        report = TEXTDIR + "/selfbase_backup_selfbase.prom"
        repo.check_output("sed -E 's/^(selfbase_backup_last_success_timestamp_seconds[{][^}]*[}]) .*/\\1 %s/' %s > %s.tmp"
                          " && mv %s.tmp %s", str(int(time.time() - 3 * 86400)), report, report, report, report)
        assert until(lambda: firing("stale"), 60), _alerts("BackupMissing")
        [alert] = _alerts("BackupMissing", "firing")
        assert alert["labels"]["stanza"] == "selfbase", alert
        assert alert["annotations"]["summary"].startswith(f"The last successful backup of stanza selfbase on {instance} is 3d "), alert
    finally:
        repo.check_output("cp -p %s/selfbase_backup_*.prom %s/ && rm -r %s", aside, TEXTDIR, aside)
    assert until(lambda: _alerts("BackupMissing") == [], 60), _alerts("BackupMissing")


def test_replication_lag_on_a_patroni_replica():
    """The leader reports no lag; a replica reports 0 while it keeps up and, with its replay paused, a lag
    that grows (the shipped query, run as the exporter's role on the replica)."""
    lead = leader()
    replica = next(m for m in DB if m != lead)
    result = _query("{__name__=~'selfbase_pg_replication_.*'}")
    got = {(r["metric"]["__name__"], r["metric"]["instance"].split(":")[0]): r["value"][1] for r in result}
    assert got[("selfbase_pg_replication_is_replica", lead)] == "0"
    assert got[("selfbase_pg_replication_lag_seconds", lead)] == "0"
    assert {got[("selfbase_pg_replication_is_replica", m)] for m in DB if m != lead} == {"1"}
    query = yaml.safe_load(_host(replica).file("/etc/prometheus/postgres-exporter-queries.yml").content_string)[
        "selfbase_pg_replication"]["query"]

    def row():
        out = psql("SET ROLE selfbase_exporter; " + query, replica).stdout
        return out.strip().splitlines()[-1].split("|")
    psql("SELECT txid_current()")
    assert until(lambda: row() == ["1", "0"], 30), row()
    # Patroni resumes a paused replay by itself: its management is paused meanwhile, as an operator would
    patronictl = "patronictl -c /etc/patroni/config.yml %s --wait"
    _host(replica).check_output(patronictl, "pause")
    try:
        assert psql("SELECT pg_wal_replay_pause()", replica).rc == 0
        time.sleep(2)
        psql("SELECT txid_current()")
        behind = ("SELECT pg_get_wal_replay_pause_state() = 'paused' "
                  "AND pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()")
        assert until(lambda: psql(behind, replica).stdout.strip() == "t", 30)
        lag = row()
        assert lag[0] == "1" and float(lag[1]) >= 2, lag
    finally:
        psql("SELECT pg_wal_replay_resume()", replica)
        _host(replica).check_output(patronictl, "resume")
    assert until(lambda: row() == ["1", "0"], 30), row()
    assert leader() == lead


def _postgres_down(lead):
    """Stop Patroni, and so PostgreSQL, on a replica of the cluster led by LEAD: PostgresDown fires for that member
    only and Alertmanager delivers it to the test receiver within `for` + two scrape intervals (+ evaluation,
    group_wait and a margin); the member comes back and streams again."""
    budget = (_seconds(SETTINGS["monitoring_alert_postgres_down_for"])
              + 2 * _seconds(SETTINGS["monitoring_prometheus_scrape_interval"])
              + _seconds(SETTINGS["monitoring_prometheus_evaluation_interval"])
              + _seconds(SETTINGS["monitoring_alertmanager_group_wait"]))
    member = next(m for m in DB if m != lead)
    replica = _host(member)
    # the host's clock when the server was down (the controller's kernel: one clock for every container)
    stopped = float(replica.check_output("systemctl stop patroni && date +%s.%N"))
    try:
        delivered = until(lambda: _delivered(stopped, "PostgresDown"), budget + 60)
        assert delivered, "PostgresDown was not delivered to the webhook receiver"
        elapsed = delivered - stopped
        with open(os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "alert_latency.txt"), "w",
                  encoding="utf-8") as fh:
            fh.write(f"PostgresDown stopped-to-delivery {elapsed:.1f}s (budget {budget:.0f}s + 5s margin)\n")
        warnings.warn(f"PostgresDown stopped-to-delivery: {elapsed:.1f}s (budget {budget:.0f}s + 5s margin)")
        assert elapsed <= budget + 5
        assert [a["labels"]["instance"] for a in _alerts("PostgresDown")] == [member + ":9187"]
    finally:
        replica.check_output("systemctl start patroni")
    assert leader() == lead
    assert until(lambda: not _alerts("PostgresDown") and {r["value"][1] for r in _query("pg_up")} == {"1"}, 60)


def test_incidents_at_once_raise_their_alerts_and_reach_the_webhook():
    """Four incidents at the same time, as they come: 5xx answers through an edge, the backups' reports missing
    then stale, a tenant at its hard quota, a replica's PostgreSQL stopped. Each alert fires
    for its own instance only, reaches the receiver where it pages, and clears when its cause is gone."""
    lead = leader()
    incidents = [(_five_hundreds,), (_backup_missing,), (_quota_alerts, lead), (_postgres_down, lead)]
    with concurrent.futures.ThreadPoolExecutor(len(incidents)) as pool:
        running = {fn.__name__: pool.submit(fn, *args) for fn, *args in incidents}
    failed = {name: "%s: %s" % (type(f.exception()).__name__, f.exception())
              for name, f in running.items() if f.exception() is not None}
    assert not failed, failed


def test_role_handlers_reload_validate_and_leave_node_exporter_alone():
    """monitoring_handlers.yml (this directory): a changed threshold reaches Prometheus by a reload, a rule
    promtool refuses is never written, and node_exporter from the entry point is left alone by the whole role."""
    run = playbook(str(pathlib.Path(__file__).with_name("monitoring_handlers.yml")), timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert re.search(r"^prod-mon1\s+: ok=\d+\s+changed=\d+\s+unreachable=0\s+failed=0\s+skipped=\d+\s+rescued=1",
                     run.stdout, re.M), run.stdout[-2000:]
