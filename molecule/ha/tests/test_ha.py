"""The Patroni cluster on real hosts: three members (etcd, Patroni, PostgreSQL, PgBouncer), a client
reaching them through HAProxy, and a pgBackRest repository. A writer commits a numbered row every 100 ms while the leader's host is
killed, while the leader is switched over, and while an etcd member is down; every acknowledged row must
be on the new leader (synchronous mode). The times writes stopped are written to
$MOLECULE_EPHEMERAL_DIRECTORY/ha-measurements.json; bench_failover.py measures them over many runs."""

import json
import os
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources"))
# pylint: disable=wrong-import-position
from patroni_cluster import Cluster, docker, longest_pause_after, outage_end_after  # noqa: E402

testinfra_hosts = []
PASSWORD = "molecule-ha-Pw-3b8e"
DSN = "host=127.0.0.1 port={port} dbname=appdb user={user} password=" + PASSWORD
RW, RO, DIRECT = (DSN.format(port=p, user="app") for p in (5000, 5001, 5002))
CLUSTER = Cluster(["ha-db1", "ha-db2", "ha-db3"], "ha-client", RW)
OUT = pathlib.Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/tmp")) / "ha-measurements.json"
MEASURED = {}


def psql(dsn, sql, check=True):
    return CLUSTER.psql(sql, dsn=dsn, check=check)


def playbook(name, *args):
    """Runs playbooks/NAME against the scenario's inventory, as a user would."""
    root = pathlib.Path(__file__).resolve().parents[3]
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(root / ".cache" / "collections"), ANSIBLE_FORCE_COLOR="false",
               ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default")
    return subprocess.run(["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(root / "playbooks" / name), *args],
                          env=env, capture_output=True, text=True, check=False)


def record(name, value):
    MEASURED[name] = value
    OUT.write_text(json.dumps(MEASURED, indent=1))
    print(f"{name}: {value}")


def test_one_leader_and_two_streaming_replicas():
    lead = CLUSTER.wait_for("a healthy cluster", CLUSTER.healthy)
    view = CLUSTER.members()
    assert {m["Member"] for m in view} == set(CLUSTER.names) and lead in CLUSTER.names
    # Synchronous mode: one replica is the synchronous standby.
    assert [m["Role"] for m in view].count("Sync Standby") == 1, view


def test_writes_through_rw_and_reads_through_ro():
    CLUSTER.prepare_probe()
    psql(RW, "INSERT INTO ha_probe (run, n) VALUES ('probe', -1) ON CONFLICT DO NOTHING")
    assert psql(RW, "SELECT pg_is_in_recovery()").stdout.strip() == "f"
    assert psql(DIRECT, "SELECT pg_is_in_recovery()").stdout.strip() == "f"
    # The read-only port reaches a replica, where the row has arrived and writes are refused.
    CLUSTER.wait_for("the row on a replica",
                     lambda: psql(RO, "SELECT count(*) FROM ha_probe WHERE n = -1").stdout.strip() == "1", 30)
    assert psql(RO, "SELECT pg_is_in_recovery()").stdout.strip() == "t"
    refused = psql(RO, "INSERT INTO ha_probe (run, n) VALUES ('probe', -2)", check=False)
    assert refused.returncode != 0 and "read-only transaction" in refused.stderr


def test_pgbouncer_refuses_superusers_and_hides_verifiers():
    lead = CLUSTER.wait_for("a healthy cluster", CLUSTER.healthy)
    CLUSTER.leader_sql(lead, f"DROP ROLE IF EXISTS ha_super; CREATE ROLE ha_super SUPERUSER LOGIN PASSWORD '{PASSWORD}'")
    try:
        # The superuser's password works on the direct port (pg_hba allows the network)...
        assert psql(DSN.format(port=5002, user="ha_super"), "SELECT current_user").stdout.strip() == "ha_super"
        # ...but PgBouncer's lookup never returns a superuser's verifier, so the pool refuses it.
        pooled = psql(DSN.format(port=5000, user="ha_super"), "SELECT 1", check=False)
        assert pooled.returncode != 0 and "FATAL" in pooled.stderr, pooled.stdout
    finally:
        CLUSTER.leader_sql(lead, "DROP ROLE ha_super")
    # The lookup function is PgBouncer's alone: the application login cannot read verifiers with it.
    res = psql(DIRECT, "SELECT * FROM pgbouncer.user_lookup('app')", check=False)
    assert res.returncode != 0 and "permission denied" in res.stderr


def test_failover_keeps_every_acknowledged_write():
    old = CLUSTER.wait_for("a healthy cluster", CLUSTER.healthy)
    out = CLUSTER.start_writer(30, "failover")
    time.sleep(5)
    killed = time.time()
    CLUSTER.kill(old)
    result = CLUSTER.writer_result(out, 30)
    resumed = outage_end_after(result, killed)
    assert resumed is not None, f"writes never resumed after the leader died: {result['failed'][-3:]}"
    rto = round(resumed - killed, 2)
    assert CLUSTER.wait_for("a new leader", CLUSTER.leader, 60) != old
    assert not CLUSTER.lost(result, out)
    record("failover_rto_s", rto)
    record("failover_acked_rows", len(result["acked"]))
    # A bound only, so that a broken failover fails; the figures are bench_failover.py's.
    assert rto < 60


def test_old_leader_returns_as_replica():
    for name in CLUSTER.down():
        CLUSTER.start(name)
    CLUSTER.wait_for("three members again", CLUSTER.healthy, 240)


def test_switchover_pause_and_no_loss():
    old = CLUSTER.wait_for("a healthy cluster", CLUSTER.healthy)
    candidate = next(m["Member"] for m in CLUSTER.members() if m["Role"] == "Sync Standby")
    out = CLUSTER.start_writer(20, "switchover")
    time.sleep(4)
    started = time.time()
    run = playbook("switchover.yml", "-e", f"selfbase_switchover_candidate={candidate}")
    assert run.returncode == 0, run.stdout[-3000:]
    result = CLUSTER.writer_result(out, 20)
    pause = longest_pause_after(result, started)
    assert CLUSTER.leader() == candidate
    assert not CLUSTER.lost(result, out)
    record("switchover_pause_s", pause)
    assert pause < 30
    CLUSTER.wait_for("the old leader streaming again", CLUSTER.healthy, 120)


def test_losing_an_etcd_member_keeps_the_leader():
    lead = CLUSTER.wait_for("a healthy cluster", CLUSTER.healthy)
    other = next(m for m in CLUSTER.names if m != lead)
    docker("exec", other, "systemctl", "stop", "etcd")
    try:
        out = CLUSTER.start_writer(25, "etcd")
        result = CLUSTER.writer_result(out, 25)
        # More than two ttl of the fast preset without the member: no failover, no failed write.
        assert CLUSTER.leader() == lead
        assert not result["failed"], result["failed"][:3]
        assert not CLUSTER.lost(result, out)
    finally:
        docker("exec", other, "systemctl", "start", "etcd")


def test_cluster_metrics_reach_prometheus_format():
    lead = CLUSTER.wait_for("a healthy cluster", CLUSTER.healthy)
    for name in CLUSTER.names:
        text = docker("exec", name, "cat", "/var/lib/prometheus/node-exporter/selfbase_patroni.prom").stdout
        assert "selfbase_patroni_up 1" in text and "None" not in text
        assert f'patroni_primary{{scope="selfbase"}} {1 if name == lead else 0}' in text
    fetch = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
    etcd = docker("exec", "ha-client", "python3", "-c", fetch, "http://172.30.90.11:2381/metrics").stdout
    assert "etcd_server_has_leader 1" in etcd
    haproxy = docker("exec", "ha-client", "python3", "-c", fetch, "http://172.30.90.10:8404/metrics").stdout
    assert 'haproxy_backend_active_servers{proxy="postgres_rw"} 1' in haproxy


def test_rolling_upgrade_switches_over_once_and_loses_nothing():
    """upgrade.yml on the db hosts: replicas one at a time, then a switchover, then the old leader."""
    old = CLUSTER.wait_for("a healthy cluster", CLUSTER.healthy)
    timeline = next(m["TL"] for m in CLUSTER.members() if m["Member"] == old)
    out = CLUSTER.start_writer(900, "upgrade")
    time.sleep(3)
    started = time.time()
    run = playbook("upgrade.yml", "--limit", "db")
    CLUSTER.stop_writer(out)
    result = CLUSTER.writer_result(out, 5)
    assert run.returncode == 0, run.stdout[-3000:]
    new = CLUSTER.wait_for("a healthy cluster", CLUSTER.healthy)
    assert new != old
    # One change of leader (a switchover), and writes paused only for it.
    assert next(m["TL"] for m in CLUSTER.members() if m["Member"] == new) == timeline + 1
    assert not CLUSTER.lost(result, out)
    pause = longest_pause_after(result, started)
    record("upgrade_longest_write_pause_s", pause)
    record("upgrade_seconds", round(time.time() - started, 1))
    assert pause < 30


def _pgbackrest(*args):
    return docker("exec", "ha-repo", "runuser", "-u", "postgres", "--", "pgbackrest", "--stanza=selfbase", *args, check=False)


def test_backup_from_the_new_topology():
    """After the failovers and switchovers, a full backup taken on the repository host copies from a replica,
    and WAL from the current leader reaches the repository."""
    CLUSTER.wait_for("a healthy cluster", CLUSTER.healthy)
    before = json.loads(_pgbackrest("--output=json", "info").stdout)[0]
    res = _pgbackrest("--type=full", "backup")
    assert res.returncode == 0, res.stdout + res.stderr
    info = json.loads(_pgbackrest("--output=json", "info").stdout)[0]
    assert info["status"]["code"] == 0
    new = [b for b in info["backup"] if b["label"] not in {old["label"] for old in before["backup"]}]
    assert len(new) == 1 and new[0]["type"] == "full", info["backup"]
    check = _pgbackrest("check")
    assert check.returncode == 0, check.stdout + check.stderr
    log = docker("exec", "ha-repo", "cat", "/var/log/pgbackrest/selfbase-backup.log").stdout
    last = log[log.rindex("backup command begin"):]
    assert "standby" in last, last[-2000:]


def test_a_restarted_leader_archives_within_archive_timeout():
    """Patroni restarts the leader in place (no promotion wakes its checkpointer): a quiet leader still
    ships its last commit within archive_timeout, read from the repository, with no manual check
    (the on_restart callback, postgresql-wake-checkpointer)."""
    lead = CLUSTER.wait_for("a healthy cluster", CLUSTER.healthy)
    CLUSTER.patronictl(lead, "restart", "selfbase", lead, "--force")
    CLUSTER.wait_for("the leader back", lambda: CLUSTER.healthy() == lead)
    psql(RW, "INSERT INTO ha_probe (run, n) VALUES ('restart', 1)")
    committed = time.time()
    segment = psql(RW, "SELECT pg_walfile_name(pg_current_wal_lsn())").stdout.strip()

    def newest():
        return max(a["max"] or "" for a in json.loads(_pgbackrest("--output=json", "info").stdout)[0]["archive"])
    while newest() < segment and time.time() < committed + 80:
        time.sleep(2)
    assert newest() >= segment, f"{segment} not archived after {time.time() - committed:.0f} s"
    record("restarted_leader_rpo_s", round(time.time() - committed, 1))
    # The leader's archive lag sampler, read against the repository, sees that commit archived;
    # the replicas archive nothing and export no lag.
    deadline = time.time() + 60
    while time.time() < deadline and _archive_lag(lead) != LAG_NONE:
        time.sleep(3)
    assert _archive_lag(lead) == LAG_NONE
    for member in CLUSTER.names:
        if member != lead:
            assert docker("exec", member, "test", "!", "-e", LAG_FILE, check=False).returncode == 0, member


LAG_FILE = "/var/lib/prometheus/node-exporter/selfbase_wal_archive_selfbase.prom"
LAG_NONE = {"selfbase_wal_archive_lag_seconds": 0.0, "selfbase_wal_archive_lag_segments": 0.0,
            "selfbase_wal_archive_repository_read": 1.0}


def _archive_lag(member):
    out = docker("exec", member, "cat", LAG_FILE, check=False).stdout
    samples = dict(line.split("{", 1)[0:1] + line.rsplit(" ", 1)[1:] for line in out.splitlines() if line[:1] != "#")
    return {name: float(value) for name, value in samples.items() if name in LAG_NONE}
