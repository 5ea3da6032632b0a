"""A point-in-time restore of the whole Patroni cluster with playbooks/restore.yml (after the other cluster tests:
it replaces the cluster). Requests it cannot honour are refused before anything stops; a target recovery never reaches fails
at once with the server's reason; then rows committed before the target come back on every member, rows
committed after it on none, the restored member leads a new timeline with both others streaming from it, and
the tiers use it again. Then the dedicated tenant cluster, restored only when named."""

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
# pylint: disable=wrong-import-position
from molecule_hosts import docker_host as _host  # noqa: E402
from patroni_cluster import docker  # noqa: E402
from production_hosts import (BACKUP, CLUSTER, DB, EDGE, MON, RO, RW, TENANT_DB, leader, playbook,  # noqa: E402
                              prepare_writer, psql)

testinfra_hosts = []
ROWS = 50
PITR = {}  # the target and the timeline before the restore, from the test that archives the rows


def _count(dsn, run):
    return int(CLUSTER.psql(f"SELECT count(*) FROM ha_probe WHERE run = '{run}'", dsn=dsn).stdout.strip())


def _timeline(member):
    return next(m["TL"] for m in CLUSTER.members() if m["Member"] == member)


def test_a_cluster_is_not_restored_one_member_at_a_time():
    lead = leader()
    out = playbook("restore.yml", "--limit", DB[1], "-e", "backup_restore_confirm=true")
    assert out.returncode != 0
    assert "restored as a whole" in out.stdout + out.stderr, out.stdout[-3000:]
    # refused before anything stopped
    assert CLUSTER.healthy() == lead


def test_a_target_time_still_to_come_is_refused_before_anything_stops():
    lead = leader()
    later = psql("SELECT clock_timestamp() + interval '1 hour'").stdout.strip()
    out = playbook("restore.yml", "-e", "backup_restore_confirm=true", "-e", "backup_restore_type=time",
                   "-e", f"backup_restore_target='{later}'")
    assert out.returncode != 0
    assert "is later than now" in out.stdout + out.stderr, out.stdout[-3000:]
    assert CLUSTER.healthy() == lead


def test_rows_before_and_after_the_target_are_archived():
    prepare_writer()
    CLUSTER.psql("DELETE FROM ha_probe WHERE run LIKE 'pitr-%'")  # verify may run again on the same hosts
    CLUSTER.psql(f"INSERT INTO ha_probe (run, n) SELECT 'pitr-before', g FROM generate_series(1, {ROWS}) g")
    PITR["target"] = CLUSTER.psql("SELECT clock_timestamp()").stdout.strip()
    time.sleep(2)
    CLUSTER.psql(f"INSERT INTO ha_probe (run, n) SELECT 'pitr-after', g FROM generate_series(1, {ROWS}) g")
    # both inserts archived: check switches the WAL segment and waits for it in the repository
    check = docker("exec", BACKUP, "runuser", "-u", "postgres", "--", "pgbackrest", "--stanza=selfbase", "check", check=False)
    assert check.returncode == 0, check.stderr
    PITR["timeline"] = _timeline(leader())


def test_a_target_never_reached_fails_at_once_and_says_why():
    """A restore point that does not exist: recovery ends in FATAL at the end of the archive, and restore.yml
    stops waiting (it used to wait backup_restore_timeout, an hour) and shows the server's reason. The cluster
    stays down; the next test restores it from that state."""
    out = playbook("restore.yml", "-e", "backup_restore_confirm=true", "-e", "backup_restore_type=name",
                   "-e", "backup_restore_target=no-such-restore-point", timeout=600)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "stopped before it reached the target" in text, text[-3000:]
    assert "recovery ended before configured recovery target was reached" in text, text[-3000:]


def test_point_in_time_restore_of_the_cluster():
    """From the stopped cluster the previous test left: restore.yml brings it back to the target."""
    out = playbook("restore.yml", "-e", "backup_restore_confirm=true", "-e", "backup_restore_type=time",
                   "-e", f"backup_restore_target='{PITR['target']}'")
    assert out.returncode == 0, out.stdout[-4000:]
    assert "recovered to" in out.stdout

    lead = CLUSTER.wait_for("the restored cluster, every member streaming", CLUSTER.healthy, 300)
    assert lead == DB[0]  # backup_restore_member: the first db host
    assert _timeline(lead) > PITR["timeline"]
    # every row before the target and none after, on the leader and on a replica
    assert (_count(RW, "pitr-before"), _count(RW, "pitr-after")) == (ROWS, 0)
    CLUSTER.wait_for("the replicas", lambda: _count(RO, "pitr-before") == ROWS)
    assert _count(RO, "pitr-after") == 0
    for member in DB:
        assert _host(member).run("ls -d /var/lib/postgresql/15/main.pre-restore-*").rc == 0, member
    # writes go to the restored leader again, and the tenants are served through both proxies
    CLUSTER.psql("INSERT INTO ha_probe (run, n) VALUES ('pitr-after-restore', 1)")
    for address in EDGE.values():
        code = _host(MON).run("curl -sk -o /dev/null -w '%%{http_code}' --max-time 10 "
                              "--resolve initech.example.com:443:%s https://initech.example.com/restored", address)
        assert code.stdout == "200", (address, code.stdout, code.stderr)


def test_a_tenant_cluster_is_restored_only_when_named():
    """restore.yml leaves the dedicated cluster alone unless --limit names it (the cluster restore above ran
    without a limit); named, it restores prod-tdb1 from its own stanza to the latest archived WAL and proves
    it by the tenant databases it holds, with archiving working again."""
    tdb = _host(TENANT_DB)

    def globex(sql):
        return tdb.run("runuser -u postgres -- psql -d tenant_globex -v ON_ERROR_STOP=1 -qXAtc %s", sql)
    assert tdb.run("ls -d /var/lib/postgresql/15/main.pre-restore-*").rc != 0  # untouched so far
    assert globex("CREATE TABLE restore_probe (n int); INSERT INTO restore_probe VALUES (1), (2), (3)").rc == 0
    # pgBackRest's check switches WAL and waits until the segment with the rows is in the repository
    check = tdb.run("runuser -u postgres -- pgbackrest --stanza=dedicated-1 check")
    assert check.rc == 0, check.stderr
    out = playbook("restore.yml", "--limit", TENANT_DB, "-e", "backup_restore_confirm=true", timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "tenant databases: tenant_globex" in out.stdout, out.stdout[-3000:]
    assert tdb.run("ls -d /var/lib/postgresql/15/main.pre-restore-*").rc == 0
    assert globex("SELECT sum(n) FROM restore_probe").stdout.strip() == "6"
