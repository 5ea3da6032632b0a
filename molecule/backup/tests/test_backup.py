"""Backups, point-in-time and disaster restores, a drill, broken archiving and a
wrong passphrase, on real hosts: each Debian release has a db host and a
repository host that talk through pgBackRest's TLS server."""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources"))
from molecule_hosts import INVENTORY, docker_host  # noqa: E402  pylint: disable=wrong-import-position

PROJECT = pathlib.Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
PAIRS = {"bk-db-bookworm": ("bk-repo-bookworm", "15"), "bk-db-trixie": ("bk-repo-trixie", "17")}
DBS = sorted(PAIRS)
STANZA = "selfbase"
PROM = f"/var/lib/prometheus/node-exporter/selfbase_backup_{STANZA}.prom"

testinfra_hosts = []


def sql(host, query, db="selfbase"):
    out = host.run(f"runuser -u postgres -- psql -d {db} -XAtc \"{query}\"")
    assert out.rc == 0, out.stderr
    return out.stdout.strip()


def pgbackrest(host, args):
    return host.run(f"runuser -u postgres -- pgbackrest --stanza={STANZA} {args}")


def info(repo):
    out = pgbackrest(repo, "--output=json info")
    assert out.rc == 0, out.stderr
    return json.loads(out.stdout)[0]


def playbook(name, *args):
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", INVENTORY,
           str(PROJECT / "playbooks" / name), *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, env=dict(os.environ))


def phases(db):
    return dict(tuple(line.split("|")) for line in sql(db, "SELECT phase, count(*) FROM drill_rows GROUP BY 1").splitlines())


@pytest.fixture(scope="module")
def hosts():
    return {name: docker_host(name) for name in list(PAIRS) + [r for r, _ in PAIRS.values()]}


@pytest.mark.parametrize("name", DBS)
def test_archiving_works_and_converge_took_a_first_full_backup(hosts, name):
    repo = hosts[PAIRS[name][0]]
    stanza = info(repo)
    assert stanza["status"]["code"] == 0, stanza["status"]
    assert [b["type"] for b in stanza["backup"]] == ["full"]
    assert stanza["cipher"] == "aes-256-cbc"
    assert stanza["db"][0]["version"] == PAIRS[name][1]
    assert pgbackrest(hosts[name], "check").rc == 0   # from the db host too
    prom = repo.file(PROM).content_string
    assert f'selfbase_backup_last_success_timestamp_seconds{{stanza="{STANZA}"}}' in prom
    assert f'selfbase_backup_stanza_ok{{stanza="{STANZA}"}} 1' in prom


@pytest.mark.parametrize("name", DBS)
def test_only_the_repository_host_holds_the_passphrase(hosts, name):
    repo, db = hosts[PAIRS[name][0]], hosts[name]
    conf = repo.file("/etc/pgbackrest/pgbackrest.conf")
    assert (conf.user, conf.group, conf.mode) == ("root", "postgres", 0o640)
    assert "repo1-cipher-pass=" in conf.content_string
    assert "cipher" not in db.file("/etc/pgbackrest/pgbackrest.conf").content_string
    assert db.run("grep -rl molecule-backup-passphrase /etc /var/lib/postgresql").stdout == ""


@pytest.mark.parametrize("name", DBS)
def test_timers_are_scheduled(hosts, name):
    repo = hosts[PAIRS[name][0]]
    for job in ("full", "diff", "verify"):
        timer = repo.service(f"selfbase-backup-{job}@{STANZA}.timer")
        assert timer.is_enabled and timer.is_running, job
    assert not repo.file(f"/etc/systemd/system/selfbase-backup-drill@.timer").exists


def test_restore_over_a_live_cluster_needs_confirmation(hosts):
    out = playbook("restore.yml", "--limit", "bk-db-bookworm")
    assert out.returncode != 0
    assert "set backup_restore_confirm=true" in out.stdout
    assert hosts["bk-db-bookworm"].service("postgresql@15-main").is_running


def test_point_in_time_restore_keeps_every_row_before_the_target_and_none_after(hosts):
    for name in DBS:
        db, repo = hosts[name], hosts[PAIRS[name][0]]
        sql(db, "CREATE TABLE drill_rows (id bigserial PRIMARY KEY, phase text NOT NULL)")
        sql(db, "INSERT INTO drill_rows (phase) SELECT 'seed' FROM generate_series(1, 100)")
        assert repo.run(f"systemctl start selfbase-backup-full@{STANZA}.service").rc == 0
        sql(db, "INSERT INTO drill_rows (phase) SELECT 'before' FROM generate_series(1, 50)")
    time.sleep(1.5)
    target = sql(hosts[DBS[0]], "SELECT now()")
    time.sleep(1.5)
    for name in DBS:
        sql(hosts[name], "INSERT INTO drill_rows (phase) SELECT 'after' FROM generate_series(1, 30)")
        assert pgbackrest(hosts[name], "check").rc == 0   # the WAL with the rows after T is archived
    out = playbook("restore.yml", "-e", "backup_restore_confirm=true", "-e", "backup_restore_type=time",
                   "-e", f"backup_restore_target='{target}'")
    assert out.returncode == 0, out.stdout[-4000:]
    assert "recovered to" in out.stdout
    for name in DBS:
        db = hosts[name]
        assert phases(db) == {"seed": "100", "before": "50"}, name
        assert db.run(f"ls -d /var/lib/postgresql/{PAIRS[name][1]}/main.pre-restore-*").rc == 0


@pytest.mark.parametrize("name", DBS)
def test_disaster_the_data_directory_is_destroyed_and_latest_is_restored(hosts, name):
    db, major = hosts[name], PAIRS[name][1]
    sql(db, "INSERT INTO drill_rows (phase) SELECT 'final' FROM generate_series(1, 7)")
    assert pgbackrest(db, "check").rc == 0
    db.run(f"systemctl kill -s KILL postgresql@{major}-main")
    assert db.run(f"rm -rf /var/lib/postgresql/{major}/main").rc == 0
    out = playbook("restore.yml", "--limit", name, "-e", "backup_restore_keep_previous=false")
    assert out.returncode == 0, out.stdout[-4000:]
    assert phases(db) == {"seed": "100", "before": "50", "final": "7"}


def test_the_drill_restores_checks_and_reports_its_rto(hosts):
    out = playbook("restore_drill.yml", "-e", "backup_drill_table=public.drill_rows")
    assert out.returncode == 0, out.stdout[-4000:]
    for name in DBS:
        repo = hosts[PAIRS[name][0]]
        state = json.loads(repo.file(f"/var/lib/selfbase/backup/{STANZA}.json").content_string)
        assert state["drill"]["ok"] is True and state["drill"]["rto_seconds"] > 0
        prom = repo.file(PROM).content_string
        assert f'selfbase_restore_drill_success{{stanza="{STANZA}"}} 1' in prom
        rto = [line for line in prom.splitlines() if line.startswith("selfbase_restore_drill_rto_seconds")]
        assert rto and float(rto[0].split()[-1]) > 0
        assert not repo.file(f"/var/lib/postgresql/selfbase-drill/{STANZA}").exists
    # the report names the checks
    assert "platform.tenants" in out.stdout and "public.drill_rows" in out.stdout


@pytest.mark.parametrize("name", DBS)
def test_broken_archiving_fails_check_and_shows_in_the_archiver_statistics(hosts, name):
    db = hosts[name]
    conf = "/etc/pgbackrest/pgbackrest.conf"
    assert db.run(f"cp -p {conf} /root/pgbackrest.conf.good && sed -i 's/^repo1-host=.*/repo1-host=172.30.92.99/' {conf}").rc == 0
    try:
        out = pgbackrest(db, "--archive-timeout=10 check")
        assert out.rc != 0
        failing = sql(db, QUERY_FAILING, db="postgres")
        assert failing == "1"
    finally:
        assert db.run(f"mv /root/pgbackrest.conf.good {conf}").rc == 0
    assert pgbackrest(db, "check").rc == 0


# The expression of selfbase_pg_archiver_failing (monitoring role's postgres_exporter query).
QUERY_FAILING = ("SELECT (coalesce(last_failed_time > coalesce(last_archived_time, 'epoch'), false))::int "
                 "FROM pg_stat_archiver")


@pytest.mark.parametrize("name", DBS)
def test_a_wrong_passphrase_cannot_read_the_repository(hosts, name):
    repo = hosts[PAIRS[name][0]]
    out = repo.run(f"runuser -u postgres -- env PGBACKREST_REPO1_CIPHER_PASS=not-the-passphrase pgbackrest --stanza={STANZA} info --output=json")
    assert out.rc != 0 or json.loads(out.stdout)[0]["status"]["code"] != 0, out.stdout
    # the repository's files are ciphertext (OpenSSL's salted format), not pgBackRest's plain ini
    head = repo.run(f"head -c 8 /var/lib/pgbackrest/backup/{STANZA}/backup.info").stdout
    assert head == "Salted__"
