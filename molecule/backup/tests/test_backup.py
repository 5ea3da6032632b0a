"""Backups, point-in-time and disaster restores, a drill, broken archiving and a
wrong passphrase, on real hosts: each Debian release has a db host and a
repository host that talk through pgBackRest's TLS server. bk-repo-bookworm keeps
its repository in S3 (moto's server), bk-repo-trixie on its disk."""

import base64
import json
import os
import pathlib
import subprocess
import sys
import time

import boto3
import pytest
import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources"))
from molecule_hosts import INVENTORY, docker_host  # noqa: E402  pylint: disable=wrong-import-position

PROJECT = pathlib.Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
PAIRS = {"bk-db-bookworm": ("bk-repo-bookworm", "15"), "bk-db-trixie": ("bk-repo-trixie", "17")}
DBS = sorted(PAIRS)
STANZA = "selfbase"
GROUP_VARS = yaml.safe_load((pathlib.Path(__file__).parents[1] / "molecule.yml").read_text())[
    "provisioner"]["inventory"]["group_vars"]["all"]
PASSPHRASE = GROUP_VARS["backup_cipher_passphrase"]
ARCHIVE_TIMEOUT = GROUP_VARS["backup_archive_timeout"]
PROM = f"/var/lib/prometheus/node-exporter/selfbase_backup_{STANZA}.prom"
LAG = f"/var/lib/prometheus/node-exporter/selfbase_wal_archive_{STANZA}.prom"
LAG_NONE = {"selfbase_wal_archive_lag_seconds": 0.0, "selfbase_wal_archive_lag_segments": 0.0,
            "selfbase_wal_archive_repository_read": 1.0}

HOST_VARS = yaml.safe_load((pathlib.Path(__file__).parents[1] / "molecule.yml").read_text())[
    "provisioner"]["inventory"]["host_vars"]

# bk-repo-bookworm's repository: the bucket on moto's S3 server (prepare), read here from the controller.
S3_DB = "bk-db-bookworm"
S3_REPO_VARS = HOST_VARS[PAIRS[S3_DB][0]]
S3_BUCKET, S3_PREFIX = S3_REPO_VARS["backup_repo_s3_bucket"], S3_REPO_VARS["backup_repo_path"].strip("/")

testinfra_hosts = []


def s3_client():
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{GROUP_VARS['molecule_s3_moto_port']}",
                        region_name=S3_REPO_VARS["backup_repo_s3_region"],
                        aws_access_key_id=S3_REPO_VARS["backup_repo_s3_key"],
                        aws_secret_access_key=S3_REPO_VARS["backup_repo_s3_key_secret"])


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
    return {name: docker_host(name) for name in list(PAIRS) + [pair[0] for pair in PAIRS.values()]}


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


def unit_state(host, unit):
    """systemctl's is-enabled and is-active of a unit (testinfra refuses a unit that does not exist). For a
    unit without a file, is-enabled says not-found on Debian 13 and nothing on Debian 12's systemd 252."""
    return tuple(host.run(f"systemctl {verb} {unit}").stdout.strip() for verb in ("is-enabled", "is-active"))


def policy(db):
    """The backup policy of db's stanza: the role's defaults (the platform tier's entry of backup_tier_policies,
    these hosts holding no tenant cluster) and db's own host vars (not its repository host's)."""
    defaults = yaml.safe_load((PROJECT / "roles" / "backup" / "defaults" / "main.yml").read_text())
    tier = {"backup_" + k: v for k, v in defaults["backup_tier_policies"]["platform"].items()}
    return {**defaults, **tier, **HOST_VARS[db]}


@pytest.mark.parametrize("name", DBS)
def test_each_stanza_is_scheduled_and_kept_by_its_own_policy(hosts, name):
    """bk-db-trixie's stanza is backed up every 6 hours, without differentials, and kept 30 days (host vars);
    bk-db-bookworm's keeps the defaults. Each repository host follows its db host, not its own vars."""
    repo, want = hosts[PAIRS[name][0]], policy(name)
    for job in ("full", "diff", "verify", "drill"):
        unit, calendar = f"selfbase-backup-{job}@{STANZA}.timer", want[f"backup_schedule_{job}"]
        if calendar:
            timer = repo.service(unit)
            assert f"\nOnCalendar={calendar}\n" in repo.file(f"/etc/systemd/system/{unit}").content_string, unit
            assert timer.is_enabled and timer.is_running, unit
        else:
            assert not repo.file(f"/etc/systemd/system/{unit}").exists, unit
            assert unit_state(repo, unit) in (("not-found", "inactive"), ("", "inactive")), unit
    assert not repo.run("ls /etc/systemd/system/ | grep -E '^selfbase-backup-[a-z]+@\\.timer$'").stdout
    out = repo.run(f"runuser -u postgres -- pgbackrest --stanza={STANZA} --log-level-console=info expire --dry-run")
    assert out.rc == 0, out.stderr
    assert f"--repo1-retention-full={want['backup_retention_full']} " in out.stdout, out.stdout
    assert f"--repo1-retention-full-type={want['backup_retention_full_type']} " in out.stdout, out.stdout


def test_timers_of_earlier_versions_are_replaced_by_one_per_stanza(hosts):
    """Earlier versions had one timer template per job: a converge disables their instances, removes
    them, and schedules the stanza's own timers (here, diff is not part of bk-db-trixie's policy)."""
    repo = hosts["bk-repo-trixie"]
    for job, calendar in (("verify", "*-*-* 04:30:00"), ("diff", "Mon..Sat *-*-* 01:00:00")):
        repo.run(f"rm -f /etc/systemd/system/selfbase-backup-{job}@{STANZA}.timer")
        repo.run(f"printf '[Timer]\\nOnCalendar={calendar}\\n\\n[Install]\\nWantedBy=timers.target\\n' "
                 f"> '/etc/systemd/system/selfbase-backup-{job}@.timer'")
    assert repo.run(f"systemctl daemon-reload && systemctl enable --now selfbase-backup-diff@{STANZA}.timer "
                    f"selfbase-backup-verify@{STANZA}.timer").rc == 0
    out = playbook("database.yml", "--limit", "bk-db-trixie,bk-repo-trixie")
    assert out.returncode == 0, out.stdout[-3000:]
    assert not repo.file("/etc/systemd/system/selfbase-backup-verify@.timer").exists
    assert not repo.file("/etc/systemd/system/selfbase-backup-diff@.timer").exists
    verify = repo.service(f"selfbase-backup-verify@{STANZA}.timer")
    assert unit_state(repo, f"selfbase-backup-diff@{STANZA}.timer") == ("not-found", "inactive")   # Debian 13
    assert verify.is_enabled and verify.is_running
    link = repo.file(f"/etc/systemd/system/timers.target.wants/selfbase-backup-verify@{STANZA}.timer")
    assert link.linked_to == f"/etc/systemd/system/selfbase-backup-verify@{STANZA}.timer"


def test_restore_over_a_live_cluster_needs_confirmation(hosts):
    out = playbook("restore.yml", "--limit", "bk-db-bookworm")
    assert out.returncode != 0
    assert "set backup_restore_confirm=true" in out.stdout + out.stderr
    assert hosts["bk-db-bookworm"].service("postgresql@15-main").is_running


def test_point_in_time_restore_keeps_every_row_before_the_target_and_none_after(hosts):
    """Debian 12 by a timestamp, Debian 13 by a named restore point."""
    for name in DBS:
        db, repo = hosts[name], hosts[PAIRS[name][0]]
        sql(db, "CREATE TABLE drill_rows (id bigserial PRIMARY KEY, phase text NOT NULL)")
        sql(db, "INSERT INTO drill_rows (phase) SELECT 'seed' FROM generate_series(1, 100)")
        assert repo.run(f"systemctl start selfbase-backup-full@{STANZA}.service").rc == 0
        sql(db, "INSERT INTO drill_rows (phase) SELECT 'before' FROM generate_series(1, 50)")
    time.sleep(1.5)
    target = sql(hosts["bk-db-bookworm"], "SELECT now()")
    sql(hosts["bk-db-trixie"], "SELECT pg_create_restore_point('before-after')")
    time.sleep(1.5)
    for name in DBS:
        sql(hosts[name], "INSERT INTO drill_rows (phase) SELECT 'after' FROM generate_series(1, 30)")
        assert pgbackrest(hosts[name], "check").rc == 0   # the WAL with the rows after the target is archived
    for name, kind, value in (("bk-db-bookworm", "time", target), ("bk-db-trixie", "name", "before-after")):
        out = playbook("restore.yml", "--limit", name, "-e", "backup_restore_confirm=true",
                       "-e", f"backup_restore_type={kind}", "-e", f"backup_restore_target='{value}'")
        assert out.returncode == 0, out.stdout[-4000:]
        assert "recovered to" in out.stdout
        db = hosts[name]
        assert phases(db) == {"seed": "100", "before": "50"}, name
        assert db.run(f"ls -d /var/lib/postgresql/{PAIRS[name][1]}/main.pre-restore-*").rc == 0


def newest_archived_segment(repo):
    """The newest WAL segment in the repository, read there, not from pg_stat_archiver."""
    return max(archive["max"] or "" for archive in info(repo)["archive"])


def archive_lag(db):
    """The db host's archive lag sampler's last sample (selfbase-backup-job archive-lag, on a timer)."""
    text = db.file(LAG).content_string if db.file(LAG).exists else ""
    samples = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"}
    return {name: value for name, value in samples.items() if name in LAG_NONE}


def wait_for_lag(db, wanted, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline and not wanted(archive_lag(db)):
        time.sleep(3)
    return archive_lag(db)


def test_disaster_after_a_restart_the_data_directory_is_destroyed_and_latest_is_restored(hosts):
    """A quiet server, just restarted, archives its last commits within archive_timeout
    without a manual check (postgresql-wake-checkpointer); the host is then lost, with
    PostgreSQL and pgBackRest killed and the data directory deleted, and nothing
    committed before the last archive_timeout is missing from the restore."""
    commits = {}
    for name in DBS:
        db, major = hosts[name], PAIRS[name][1]
        assert db.run(f"systemctl restart postgresql@{major}-main").rc == 0
        sql(db, "INSERT INTO drill_rows (phase) SELECT 'final' FROM generate_series(1, 7)")
        commits[name] = (time.time(), sql(db, "SELECT pg_walfile_name(pg_current_wal_lsn())"))
    for name in DBS:
        committed, segment = commits[name]
        repo = hosts[PAIRS[name][0]]
        # the RPO is when the look that found the segment archived began (a look takes seconds on a busy host)
        while True:
            looked = time.time()
            archived = newest_archived_segment(repo) >= segment
            if archived or looked > committed + ARCHIVE_TIMEOUT + 20:
                break
            time.sleep(2)
        rpo = looked - committed
        assert archived, f"{name}: {segment} not archived after {rpo:.0f} s"
        assert rpo <= ARCHIVE_TIMEOUT + 20, f"{name}: archived after {rpo:.0f} s"
        # the sampler reads the same from the repository
        assert wait_for_lag(hosts[name], LAG_NONE.__eq__, 60) == LAG_NONE, name
    for name in DBS:
        db, major = hosts[name], PAIRS[name][1]
        db.run(f"systemctl kill -s KILL postgresql@{major}-main; pkill -KILL -f '[p]gbackrest.*archive-'")
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


# The expression of selfbase_pg_archiver_failing (monitoring role's postgres_exporter query).
QUERY_FAILING = ("SELECT (coalesce(last_failed_time > coalesce(last_archived_time, 'epoch'), false))::int "
                 "FROM pg_stat_archiver")


def test_broken_archiving_fails_check_and_shows_in_the_archiver_statistics(hosts):
    """A wrong repository host: check fails, and pg_stat_archiver reports the failure
    that selfbase_pg_archiver_failing (and so WalArchivingFailing) is made of."""
    conf = "/etc/pgbackrest/pgbackrest.conf"
    for name in DBS:
        db = hosts[name]
        assert db.run(f"cp -p {conf} /root/pgbackrest.conf.good && "
                      # an address nobody answers; each attempt gives up after 5 s, not io-timeout's 60 s
                      f"sed -i 's/^repo1-host=.*/repo1-host=172.30.92.99\\nio-timeout=5/' {conf}").rc == 0
        assert pgbackrest(db, "--archive-timeout=5 check").rc != 0
    try:
        # New WAL keeps coming (an asynchronous pusher started before the break may
        # still ship a segment); each attempt fails when its connection times out.
        deadline = time.time() + 300
        failing = {}
        while time.time() < deadline and set(failing.values()) != {"1"}:
            for name in DBS:
                sql(hosts[name], "INSERT INTO drill_rows (phase) VALUES ('unarchived'); SELECT pg_switch_wal()")
            time.sleep(15)
            failing = {name: sql(hosts[name], QUERY_FAILING, db="postgres") for name in DBS}
        assert failing == {name: "1" for name in DBS}
        # the archive lag sampler sees the unarchived writes, though it cannot read the repository
        for name in DBS:
            lag = wait_for_lag(hosts[name], lambda lag: lag.get("selfbase_wal_archive_lag_seconds", 0) > 0, 90)
            assert lag["selfbase_wal_archive_lag_seconds"] > 0 and lag["selfbase_wal_archive_lag_segments"] >= 1, lag
            assert lag["selfbase_wal_archive_repository_read"] == 0, lag
    finally:
        for name in DBS:
            assert hosts[name].run(f"mv /root/pgbackrest.conf.good {conf}").rc == 0
    # Fixed again: the WAL that piled up is archived (the async pusher that
    # still waits on the wrong host gives up within its timeout) and check passes.
    for name in DBS:
        deadline = time.time() + 180
        while time.time() < deadline and pgbackrest(hosts[name], "--archive-timeout=20 check").rc != 0:
            time.sleep(3)
        assert pgbackrest(hosts[name], "check").rc == 0
        assert sql(hosts[name], QUERY_FAILING, db="postgres") == "0"
        assert wait_for_lag(hosts[name], LAG_NONE.__eq__, 90) == LAG_NONE, name


@pytest.mark.parametrize("name", DBS)
def test_a_wrong_passphrase_cannot_read_the_repository(hosts, name):
    repo = hosts[PAIRS[name][0]]
    read = (f"runuser -u postgres -- env PGBACKREST_REPO1_CIPHER_PASS={{}} pgbackrest --stanza={STANZA} "
            "info --output=json | tr -cd '[:print:]'")
    wrong = repo.run(read.format("not-the-passphrase-at-all")).stdout
    assert '"status":{"code":99' in wrong and "unable to load info file" in wrong
    right = repo.run(read.format(PASSPHRASE)).stdout
    assert '"status":{"code":0' in right
    # the repository's files are ciphertext (OpenSSL's salted format), not pgBackRest's plain ini
    if name == S3_DB:
        head = base64.b64encode(s3_client().get_object(Bucket=S3_BUCKET, Key=f"{S3_PREFIX}/backup/{STANZA}/backup.info",
                                                       Range="bytes=0-7")["Body"].read()).decode()
    else:
        head = repo.run(f"head -c 8 /var/lib/pgbackrest/backup/{STANZA}/backup.info | base64").stdout.strip()
    assert head == "U2FsdGVkX18="   # "Salted__"


def test_one_repository_is_in_s3_over_verified_tls(hosts):
    """bk-repo-bookworm keeps its repository in the bucket (moto's S3 server behind HAProxy's TLS), not on disk;
    pgBackRest checks the endpoint's certificate: with another CA it refuses the endpoint."""
    repo = hosts[PAIRS[S3_DB][0]]

    def keys(prefix):  # the first 1,000, in key order
        return [o["Key"] for o in s3_client().list_objects_v2(Bucket=S3_BUCKET, Prefix=prefix).get("Contents", [])]

    assert s3_client().head_object(Bucket=S3_BUCKET, Key=f"{S3_PREFIX}/backup/{STANZA}/backup.info")["ContentLength"] > 0
    backups = keys(f"{S3_PREFIX}/backup/{STANZA}/")
    assert any("F/backup.manifest" in k for k in backups), backups[:20]   # a full backup
    assert any(k.endswith(".zst") for k in keys(f"{S3_PREFIX}/archive/{STANZA}/"))   # WAL segments
    assert not repo.file("/var/lib/pgbackrest/backup").exists
    other_ca = pgbackrest(repo, "--repo1-storage-ca-file=/usr/share/ca-certificates/mozilla/ISRG_Root_X1.crt info")
    # info reports a stanza it cannot read in its output, with exit code 0
    assert "unable to verify certificate presented by 's3.selfbase.test:9443'" in other_ca.stdout, other_ca.stdout
    assert info(repo)["status"]["code"] == 0   # with the host's CA store
