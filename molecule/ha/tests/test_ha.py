"""The Patroni cluster on real hosts: three members (etcd, Patroni, PostgreSQL, PgBouncer) and a client
reaching them through HAProxy. A writer commits a numbered row every 100 ms while the leader's host is
killed, while the leader is switched over, and while an etcd member is down; every acknowledged row must
be on the new leader (synchronous mode), and the time writes stopped is measured and written to
$MOLECULE_EPHEMERAL_DIRECTORY/ha-measurements.json."""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources"))
from molecule_hosts import docker_host  # noqa: E402  pylint: disable=wrong-import-position

testinfra_hosts = []
MEMBERS = ["ha-db1", "ha-db2", "ha-db3"]
CLIENT = docker_host("ha-client")
PASSWORD = "molecule-ha-Pw-3b8e"
RW = f"host=127.0.0.1 port=5000 dbname=appdb user=app password={PASSWORD}"
RO = f"host=127.0.0.1 port=5001 dbname=appdb user=app password={PASSWORD}"
DIRECT = f"host=127.0.0.1 port=5002 dbname=appdb user=app password={PASSWORD}"
OUT = pathlib.Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/tmp")) / "ha-measurements.json"
MEASURED = {}

# Commits INSERT n every 100 ms through the read-write port for the given seconds, reconnecting on any
# error, and writes what was acknowledged (n, time) and what failed. psycopg's automatic server-side
# prepared statements are off: the port is PgBouncer in transaction mode.
WRITER = r"""
import json, sys, time
import psycopg
dsn, seconds, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
acked, failed, conn, n = [], [], None, 0
end = time.time() + seconds
while time.time() < end:
    n += 1
    t = time.time()
    try:
        if conn is None:
            conn = psycopg.connect(dsn, connect_timeout=2, autocommit=True, prepare_threshold=None)
        conn.execute("INSERT INTO ha_probe (run, n) VALUES (%s, %s)", (out, n))
        acked.append([n, time.time()])
    except psycopg.Error as exc:
        failed.append([n, t, str(exc).strip()[:120]])
        try:
            conn.close()
        except Exception:
            pass
        conn = None
    time.sleep(max(0.0, t + 0.1 - time.time()))
with open(out + ".tmp", "w") as fh:
    json.dump({"acked": acked, "failed": failed}, fh)
import os; os.rename(out + ".tmp", out)
"""


def psql(dsn, sql, check=True):
    """One statement through the client's HAProxy; the unaligned result."""
    res = CLIENT.run("psql %s -XAtq -v ON_ERROR_STOP=1 -c %s", dsn, sql)
    if check:
        assert res.rc == 0, res.stderr
    return res


def members():
    """patronictl's view of the cluster, from the first member that answers."""
    for name in MEMBERS:
        res = subprocess.run(["docker", "exec", name, "patronictl", "-c", "/etc/patroni/config.yml", "list", "-f", "json"],
                             capture_output=True, text=True, check=False)
        if res.returncode == 0:
            return json.loads(res.stdout)
    raise AssertionError("no member answers")


def leader():
    found = [m["Member"] for m in members() if m["Role"] == "Leader"]
    return found[0] if found else None


def wait_for(what, predicate, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = predicate()
        except AssertionError:
            value = None
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}: {members()}")


def healthy():
    """The leader's name when it runs and two replicas stream from it (asked of the leader's
    pg_stat_replication: Patroni 3.0 reports replicas as running, not streaming); else None."""
    view = members()
    lead = [m["Member"] for m in view if m["Role"] == "Leader" and m["State"] == "running"]
    if len(lead) != 1:
        return None
    res = subprocess.run(["docker", "exec", lead[0], "runuser", "-u", "postgres", "--", "psql", "-XAtq", "-c",
                          "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"],
                         capture_output=True, text=True, check=False)
    return lead[0] if res.returncode == 0 and res.stdout.strip() == "2" else None


def start_writer(seconds, tag):
    out = f"/tmp/writer-{tag}.json"
    psql(RW, f"DELETE FROM ha_probe WHERE run = '{out}'")
    CLIENT.run("rm -f %s", out)
    CLIENT.check_output("cat > /tmp/writer.py <<'EOF'\n%s\nEOF" % WRITER)
    subprocess.run(["docker", "exec", "-d", "ha-client", "python3", "/tmp/writer.py", RW, str(seconds), out], check=True)
    return out


def writer_result(out, seconds):
    deadline = time.time() + seconds + 30
    while time.time() < deadline:
        if CLIENT.run("test -s %s", out).rc == 0:
            return json.loads(CLIENT.check_output("cat %s", out))
        time.sleep(1)
    raise AssertionError("the writer did not finish")


def assert_none_lost(result, out):
    acked = [n for n, _ in result["acked"]]
    present = set(int(x) for x in psql(RW, f"SELECT n FROM ha_probe WHERE run = '{out}'").stdout.split())
    lost = sorted(set(acked) - present)
    assert acked, result["failed"][:5]
    assert not lost, f"acknowledged rows missing on the new leader: {lost[:20]}"
    return len(acked)


def record(name, value):
    MEASURED[name] = value
    OUT.write_text(json.dumps(MEASURED, indent=1))
    print(f"{name}: {value}")


def test_one_leader_and_two_streaming_replicas():
    lead = wait_for("a healthy cluster", healthy)
    view = members()
    assert {m["Member"] for m in view} == set(MEMBERS)
    # Synchronous mode: one replica is the synchronous standby.
    assert [m["Role"] for m in view].count("Sync Standby") == 1, view
    assert lead in MEMBERS


def test_writes_through_rw_and_reads_through_ro():
    psql(RW, "CREATE TABLE IF NOT EXISTS ha_probe (run text, n int, at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (run, n))")
    psql(RW, "INSERT INTO ha_probe (run, n) VALUES ('probe', -1) ON CONFLICT DO NOTHING")
    assert psql(RW, "SELECT pg_is_in_recovery()").stdout.strip() == "f"
    assert psql(DIRECT, "SELECT pg_is_in_recovery()").stdout.strip() == "f"
    # The read-only port reaches a replica, where the row has arrived and writes are refused.
    wait_for("the row on a replica", lambda: psql(RO, "SELECT count(*) FROM ha_probe WHERE n = -1").stdout.strip() == "1", 30)
    assert psql(RO, "SELECT pg_is_in_recovery()").stdout.strip() == "t"
    refused = psql(RO, "INSERT INTO ha_probe (run, n) VALUES ('probe', -2)", check=False)
    assert refused.rc != 0 and "read-only transaction" in refused.stderr


def test_pgbouncer_refuses_superusers_and_hides_verifiers():
    lead = wait_for("a healthy cluster", healthy)
    subprocess.run(["docker", "exec", lead, "runuser", "-u", "postgres", "--", "psql", "-XAtq", "-c",
                    f"DROP ROLE IF EXISTS ha_super; CREATE ROLE ha_super SUPERUSER LOGIN PASSWORD '{PASSWORD}'"], check=True)
    try:
        # The superuser's password works on the direct port (pg_hba allows the network)...
        direct = f"host=127.0.0.1 port=5002 dbname=appdb user=ha_super password={PASSWORD}"
        assert psql(direct, "SELECT current_user").stdout.strip() == "ha_super"
        # ...but PgBouncer's lookup never returns a superuser's verifier, so the pool refuses it.
        pooled = CLIENT.run("psql %s -XAtq -c 'SELECT 1'", direct.replace("port=5002", "port=5000"))
        assert pooled.rc != 0 and "FATAL" in pooled.stderr, pooled.stdout
    finally:
        subprocess.run(["docker", "exec", lead, "runuser", "-u", "postgres", "--", "psql", "-XAtq", "-c", "DROP ROLE ha_super"],
                       check=True)
    # The lookup function is PgBouncer's alone: the application login cannot read verifiers with it.
    res = psql(DIRECT, "SELECT * FROM pgbouncer.user_lookup('app')", check=False)
    assert res.rc != 0 and "permission denied" in res.stderr


def test_failover_keeps_every_acknowledged_write():
    old = wait_for("a healthy cluster", healthy)
    out = start_writer(30, "failover")
    time.sleep(5)
    killed = time.time()
    subprocess.run(["docker", "kill", old], check=True, capture_output=True)
    result = writer_result(out, 30)
    after = [t for _, t in result["acked"] if t > killed]
    assert after, f"writes never resumed after the leader died: {result['failed'][-3:]}"
    rto = round(after[0] - killed, 2)
    new = wait_for("a new leader", leader, 60)
    assert new != old
    record("failover_rto_s", rto)
    record("failover_acked_rows", assert_none_lost(result, out))
    # Bound only, so that a broken failover fails; the figures are bench_failover.py's.
    assert rto < 60


def test_old_leader_returns_as_replica():
    view = members()
    down = [m for m in MEMBERS if m not in {x["Member"] for x in view if x["State"] in ("running", "streaming")}]
    for name in down:
        subprocess.run(["docker", "start", name], check=True, capture_output=True)
    wait_for("three members again", healthy, 240)


def test_switchover_pause_and_no_loss():
    old = wait_for("a healthy cluster", healthy)
    candidate = next(m["Member"] for m in members() if m["Role"] == "Sync Standby")
    out = start_writer(20, "switchover")
    time.sleep(4)
    started = time.time()
    subprocess.run(["docker", "exec", old, "patronictl", "-c", "/etc/patroni/config.yml", "switchover", "--leader", old,
                    "--candidate", candidate, "--force"], check=True, capture_output=True)
    result = writer_result(out, 20)
    times = [t for _, t in result["acked"]]
    gaps = [b - a for a, b in zip(times, times[1:]) if b > started]
    pause = round(max(gaps), 2)
    assert leader() == candidate
    record("switchover_pause_s", pause)
    record("switchover_acked_rows", assert_none_lost(result, out))
    assert pause < 30
    wait_for("the old leader streaming again", healthy, 120)


def test_losing_an_etcd_member_keeps_the_leader():
    lead = wait_for("a healthy cluster", healthy)
    other = next(m for m in MEMBERS if m != lead)
    subprocess.run(["docker", "exec", other, "systemctl", "stop", "etcd"], check=True)
    try:
        out = start_writer(25, "etcd")
        result = writer_result(out, 25)
        # Two ttl of the fast preset without the member: no failover, no failed write.
        assert leader() == lead
        assert not result["failed"], result["failed"][:3]
        assert_none_lost(result, out)
    finally:
        subprocess.run(["docker", "exec", other, "systemctl", "start", "etcd"], check=True)
