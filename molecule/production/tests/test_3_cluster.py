"""The Patroni cluster of the production shape under a writer that commits a numbered row every 100 ms through
prod-api1's HAProxy (after test_2_failover's leader kill): reads on a replica, PgBouncer's refusal of superusers,
a switchover with switchover.yml, the loss of an etcd member, the members' metrics, a rolling upgrade with
upgrade.yml, and the backups: a full backup from the new topology and the WAL of a leader restarted in place.
Every row the writer saw acknowledged must be on the leader afterwards (synchronous mode)."""

import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
# pylint: disable=wrong-import-position
from patroni_cluster import docker, longest_pause_after  # noqa: E402
from production_hosts import (API, BACKUP, CLUSTER, DB, DIRECT, MON, NET, PROBE_DSN, PROBE_PASSWORD, RO, RW,  # noqa: E402
                              leader, playbook, prepare_writer)

testinfra_hosts = []
LAG_FILE = "/var/lib/prometheus/node-exporter/selfbase_wal_archive_selfbase.prom"
LAG_NONE = {"selfbase_wal_archive_lag_seconds": 0.0, "selfbase_wal_archive_lag_segments": 0.0,
            "selfbase_wal_archive_repository_read": 1.0}


def _psql(dsn, sql, check=True):
    return CLUSTER.psql(sql, dsn=dsn, check=check)


def _pgbackrest(*args, stanza="selfbase"):
    return docker("exec", BACKUP, "runuser", "-u", "postgres", "--", "pgbackrest", "--stanza=" + stanza, *args,
                  check=False)


def _archive_lag(member):
    out = docker("exec", member, "cat", LAG_FILE, check=False).stdout
    samples = dict(line.split("{", 1)[0:1] + line.rsplit(" ", 1)[1:] for line in out.splitlines() if line[:1] != "#")
    return {name: float(value) for name, value in samples.items() if name in LAG_NONE}


def test_one_leader_and_two_streaming_replicas_one_synchronous():
    lead = leader()
    view = CLUSTER.members()
    assert {m["Member"] for m in view} == set(DB) and lead in DB
    assert [m["Role"] for m in view].count("Sync Standby") == 1, view


def test_each_members_rest_api_reports_the_leaders_timeline():
    """After test_2's failover the replicas follow a new timeline, which each one's Patroni reads over a replication
    connection to itself, on every HAProxy check: without pg_hba's loopback rule for it a replica reports none and
    logs a traceback each time."""
    def timelines():
        return {m: docker("exec", m, "python3", "-c", "import json, urllib.request; print(json.load(urllib.request"
                          ".urlopen('http://127.0.0.1:8008/patroni', timeout=5)).get('timeline'))", check=False)
                .stdout.strip() for m in DB}
    for _attempt in range(30):
        seen = timelines()
        if len(set(seen.values())) == 1:
            break
        time.sleep(2)
    assert len(set(seen.values())) == 1 and seen[leader()] not in ("None", "1"), seen  # the failover moved it on
    since = docker("exec", DB[0], "date", "-d", "-20 seconds", "+%F %T").stdout.strip()
    for member in DB:
        log = docker("exec", member, "journalctl", "-u", "patroni", "--since", since, "-o", "cat").stdout
        # nor does a check leave one (a GET's body cut off by HAProxy)
        assert "Can not fetch local timeline" not in log and "ConnectionResetError" not in log, (member, log[-2000:])


def test_writes_through_rw_and_reads_through_ro():
    prepare_writer()
    _psql(RW, "INSERT INTO ha_probe (run, n) VALUES ('probe', -1) ON CONFLICT DO NOTHING")
    assert _psql(RW, "SELECT pg_is_in_recovery()").stdout.strip() == "f"
    assert _psql(DIRECT, "SELECT pg_is_in_recovery()").stdout.strip() == "f"
    # The read-only port reaches a replica, where the row has arrived and writes are refused.
    CLUSTER.wait_for("the row on a replica",
                     lambda: _psql(RO, "SELECT count(*) FROM ha_probe WHERE n = -1").stdout.strip() == "1", 30)
    assert _psql(RO, "SELECT pg_is_in_recovery()").stdout.strip() == "t"
    refused = _psql(RO, "INSERT INTO ha_probe (run, n) VALUES ('probe', -2)", check=False)
    assert refused.returncode != 0 and "read-only transaction" in refused.stderr


def test_pgbouncer_refuses_superusers_and_hides_verifiers():
    lead = leader()
    CLUSTER.leader_sql(lead, f"DROP ROLE IF EXISTS ha_super; CREATE ROLE ha_super SUPERUSER LOGIN PASSWORD '{PROBE_PASSWORD}'")
    try:
        # The superuser's password works on the direct port (pg_hba allows the network)...
        assert _psql(PROBE_DSN.format(port=5002, user="ha_super"), "SELECT current_user").stdout.strip() == "ha_super"
        # ...but PgBouncer's lookup never returns a superuser's verifier, so the pool refuses it.
        pooled = _psql(PROBE_DSN.format(port=5000, user="ha_super"), "SELECT 1", check=False)
        assert pooled.returncode != 0 and "FATAL" in pooled.stderr, pooled.stdout
    finally:
        CLUSTER.leader_sql(lead, "DROP ROLE ha_super")
    # The lookup function is PgBouncer's alone: a login cannot read verifiers with it.
    res = _psql(DIRECT, "SELECT * FROM pgbouncer.user_lookup('ha_probe')", check=False)
    assert res.returncode != 0 and "permission denied" in res.stderr


def test_switchover_pause_and_no_loss():
    leader()
    candidate = next(m["Member"] for m in CLUSTER.members() if m["Role"] == "Sync Standby")
    out = CLUSTER.start_writer(40, "switchover")
    time.sleep(4)
    started = time.time()
    run = playbook("switchover.yml", "-e", f"selfbase_switchover_candidate={candidate}")
    assert run.returncode == 0, run.stdout[-3000:]
    result = CLUSTER.writer_result(out, 40)
    assert CLUSTER.leader() == candidate
    assert not CLUSTER.lost(result, out)
    assert longest_pause_after(result, started) < 30
    CLUSTER.wait_for("the old leader streaming again", CLUSTER.healthy, 120)


def test_losing_an_etcd_member_keeps_the_leader():
    lead = leader()
    other = next(m for m in DB if m != lead)
    docker("exec", other, "systemctl", "stop", "etcd")
    try:
        out = CLUSTER.start_writer(45, "etcd")
        result = CLUSTER.writer_result(out, 45)
        # More than two ttl (20 s) without the member: no failover, no failed write.
        assert CLUSTER.leader() == lead
        assert not result["failed"], result["failed"][:3]
        assert not CLUSTER.lost(result, out)
    finally:
        docker("exec", other, "systemctl", "start", "etcd")


def test_cluster_metrics_reach_prometheus_format():
    lead = leader()
    for name in DB:
        text = docker("exec", name, "cat", "/var/lib/prometheus/node-exporter/selfbase_patroni.prom").stdout
        assert "selfbase_patroni_up 1" in text and "None" not in text
        assert f'patroni_primary{{scope="selfbase"}} {1 if name == lead else 0}' in text
    fetch = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
    etcd = docker("exec", MON, "python3", "-c", fetch, f"http://{NET}11:2381/metrics").stdout
    assert "etcd_server_has_leader 1" in etcd
    for address in API.values():
        haproxy = docker("exec", MON, "python3", "-c", fetch, f"http://{address}:8404/metrics").stdout
        assert 'haproxy_backend_active_servers{proxy="postgres_rw"} 1' in haproxy


def test_rolling_upgrade_switches_over_once_and_loses_nothing():
    """upgrade.yml on the db hosts: replicas one at a time, then a switchover, then the old leader."""
    old = leader()
    timeline = next(m["TL"] for m in CLUSTER.members() if m["Member"] == old)
    out = CLUSTER.start_writer(900, "upgrade")
    time.sleep(3)
    started = time.time()
    run = playbook("upgrade.yml", "--limit", "db")
    CLUSTER.stop_writer(out)
    result = CLUSTER.writer_result(out, 5)
    assert run.returncode == 0, run.stdout[-3000:]
    new = leader()
    assert new != old
    # One change of leader (a switchover), and writes paused only for it.
    assert next(m["TL"] for m in CLUSTER.members() if m["Member"] == new) == timeline + 1
    assert not CLUSTER.lost(result, out)
    assert longest_pause_after(result, started) < 30


def test_backup_from_the_new_topology():
    """After the failover and switchovers, a full backup taken on the repository host copies from a replica,
    and WAL from the current leader reaches the repository."""
    leader()
    before = json.loads(_pgbackrest("--output=json", "info").stdout)[0]
    res = _pgbackrest("--type=full", "backup")
    assert res.returncode == 0, res.stdout + res.stderr
    info = json.loads(_pgbackrest("--output=json", "info").stdout)[0]
    assert info["status"]["code"] == 0
    new = [b for b in info["backup"] if b["label"] not in {old["label"] for old in before["backup"]}]
    assert len(new) == 1 and new[0]["type"] == "full", info["backup"]
    check = _pgbackrest("check")
    assert check.returncode == 0, check.stdout + check.stderr
    log = docker("exec", BACKUP, "cat", "/var/log/pgbackrest/selfbase-backup.log").stdout
    last = log[log.rindex("backup command begin"):]
    assert "standby" in last, last[-2000:]


def test_the_patroni_stanza_is_kept_and_scheduled_by_its_policy():
    """The repository host reads the cluster's retention from the stanza's own section, after its three members
    and before backup-standby, and runs one timer per scheduled job of the stanza. Its configuration validator
    parses every stanza's section: a value run into the next line there is refused, where parsing the global
    section alone accepted it."""
    def current(option, stanza="selfbase"):
        out = _pgbackrest("help", "backup", option, stanza=stanza).stdout
        return next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("current: "))
    assert (current("repo1-retention-full"), current("repo1-retention-full-type")) == ("2", "count")
    # the dedicated tenant cluster's stanza, beside it, by its tier's policy: fulls every 6 hours kept 30 days
    assert (current("repo1-retention-full", "dedicated-1"), current("repo1-retention-full-type", "dedicated-1")) == \
        ("30", "time")
    timers = docker("exec", BACKUP, "systemctl", "list-timers", "--all", "--no-legend", "selfbase-backup-*").stdout
    assert sorted(line.split()[-2] for line in timers.splitlines()) == [
        "selfbase-backup-diff@selfbase.timer", "selfbase-backup-full@dedicated-1.timer",
        "selfbase-backup-full@selfbase.timer", "selfbase-backup-verify@dedicated-1.timer",
        "selfbase-backup-verify@selfbase.timer"], timers
    calendar = docker("exec", BACKUP, "systemctl", "cat", "selfbase-backup-full@dedicated-1.timer").stdout
    assert "OnCalendar=*-*-* 00/6:00:00" in calendar, calendar
    info = json.loads(_pgbackrest("info", "--output=json", stanza="dedicated-1").stdout)
    assert info[0]["status"]["code"] == 0 and [b["type"] for b in info[0]["backup"]][:1] == ["full"], info
    conf = "/etc/pgbackrest/pgbackrest.conf"
    broken = "/root/pgbackrest-broken.conf"
    docker("exec", BACKUP, "sh", "-c",
           f"sed '/^repo1-retention-full-type=/{{N;s/\\n//}}' {conf} > {broken}")
    validate = "/usr/local/libexec/selfbase/pgbackrest-validate-conf"
    ok = docker("exec", BACKUP, validate, conf, check=False)
    assert ok.returncode == 0, ok.stderr
    refused = docker("exec", BACKUP, validate, broken, check=False)
    assert refused.returncode != 0 and "repo1-retention-full-type" in refused.stderr, refused.stderr
    global_only = docker("exec", BACKUP, "pgbackrest", f"--config={broken}", "help", "backup", check=False)
    assert global_only.returncode == 0 and "ERROR" not in global_only.stdout + global_only.stderr


def test_the_dedicated_clusters_backup_is_drilled_in_every_database_it_holds():
    """restore_drill.yml on the repository host restores dedicated-1's latest backup into a scratch instance and
    checks it where a tenant cluster's data is: every database it holds (tenant_globex), not the platform's tables,
    which it does not have."""
    out = playbook("restore_drill.yml", "-e", '{"backup_drill_stanzas": ["dedicated-1"]}', timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "tenant_globex" in out.stdout and "row_counts" not in out.stdout, out.stdout[-3000:]
    state = json.loads(docker("exec", BACKUP, "cat", "/var/lib/selfbase/backup/dedicated-1.json").stdout)
    assert state["drill"]["ok"] is True and state["drill"]["rto_seconds"] > 0, state
    assert docker("exec", BACKUP, "test", "-e", "/var/lib/postgresql/selfbase-drill/dedicated-1", check=False).returncode


def test_a_restarted_leader_archives_within_archive_timeout():
    """Patroni restarts the leader in place (no promotion wakes its checkpointer): a quiet leader still
    ships its last commit within archive_timeout, read from the repository, with no manual check
    (the on_restart callback, postgresql-wake-checkpointer)."""
    lead = leader()
    CLUSTER.patronictl(lead, "restart", "selfbase", lead, "--force")
    CLUSTER.wait_for("the leader back", lambda: CLUSTER.healthy() == lead)
    _psql(RW, "INSERT INTO ha_probe (run, n) VALUES ('restart', 1) ON CONFLICT DO NOTHING")
    committed = time.time()
    segment = _psql(RW, "SELECT pg_walfile_name(pg_current_wal_lsn())").stdout.strip()

    def newest():
        return max(a["max"] or "" for a in json.loads(_pgbackrest("--output=json", "info").stdout)[0]["archive"])
    while newest() < segment and time.time() < committed + 80:
        time.sleep(2)
    assert newest() >= segment, f"{segment} not archived after {time.time() - committed:.0f} s"
    # The leader's archive lag sampler, read against the repository, sees that commit archived;
    # the replicas archive nothing and export no lag.
    deadline = time.time() + 60
    while time.time() < deadline and _archive_lag(lead) != LAG_NONE:
        time.sleep(3)
    assert _archive_lag(lead) == LAG_NONE
    for member in DB:
        if member != lead:
            assert docker("exec", member, "test", "!", "-e", LAG_FILE, check=False).returncode == 0, member
