"""pgBackRest against pg_dump/pg_restore, at several sizes, in one run.

For each size (--sizes, GB) a throwaway server with WAL archiving to a local
pgBackRest repository (zstd, 2 processes, asynchronous archive-push and -get,
archive_timeout as the backup role sets them) gets the platform data set plus
pgbench's tables:

- pgBackRest full backup, then its restore into a new data directory until the
  server is open (recovery finished);
- pg_dump -Fc, then pg_restore (1 and 2 jobs) into an empty database (what
  nself does);
- on the first size, what each restore setting costs (compression type and
  level, process-max, delta, archive-get's queue);
- on the first size, the RPO as a user loses data: after a clean restart, a
  writer commits a row every 20 ms; at a random moment between 0.5 and 3.5 x
  archive_timeout after the start the host is lost (kill -9 of PostgreSQL and
  of pgBackRest's asynchronous pusher, data directory deleted); the latest
  state is restored and the seconds of committed writes that are missing are
  measured, with the evidence (newest segment in the repository,
  archive_status) taken just before each loss. The first --unfixed-runs go
  without the role's wake-up after the start
  (roles/host_services/files/postgresql/postgresql-wake-checkpointer), --rpo-runs with it.

Targets: restore at least 3x faster than pg_restore at every size; worst RPO
with the wake-up at or below archive_timeout + 5 s.
Usage: python benchmarks/bench_backup.py [--sizes 1,5,10] [--archive-timeout 60] [--rpo-runs 5] [--unfixed-runs 3]
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import threading
import time

import _pg
import pgserver

STANZA = "bench"
SCALE_PER_GB = 68   # pgbench scale of about 1 GB on disk
WAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "roles", "host_services", "files", "postgresql",
                    "postgresql-wake-checkpointer")


def as_pg(cmd, **kw):
    return pgserver.as_postgres(cmd, **kw)


def timed(fn, *args):
    start = time.monotonic()
    fn(*args)
    return time.monotonic() - start


class Bench:
    def __init__(self, server, archive_timeout):
        self.s = server
        self.base = server.base
        self.conf = os.path.join(self.base, "pgbackrest.conf")
        for d in ("repo", "spool", "pgbr-log", "pgbr-lock"):
            os.makedirs(os.path.join(self.base, d), exist_ok=True)
            shutil.chown(os.path.join(self.base, d), "postgres")
        with open(self.conf, "w", encoding="utf-8") as f:
            f.write(f"""[global]
repo1-path={self.base}/repo
repo1-retention-full=9
process-max=2
compress-type=zst
archive-async=y
spool-path={self.base}/spool
log-path={self.base}/pgbr-log
lock-path={self.base}/pgbr-lock
start-fast=y

[{STANZA}]
pg1-path={server.datadir}
pg1-port={server.port}
pg1-socket-path={server.host}
""")
        os.chmod(self.conf, 0o644)
        self.archive_timeout = archive_timeout
        self.opts = f"-p {server.port} -k {server.host} -c listen_addresses=''" + "".join(
            f" -c {key}={value}" for key, value in server.settings.items())
        self.pgbr_cmd = f"pgbackrest --config={self.conf} --stanza={STANZA}"

    def pgbackrest(self, *args):
        return as_pg(["pgbackrest", f"--config={self.conf}", f"--stanza={STANZA}", *args])

    def enable_archiving(self):
        with self.s.connect("postgres") as conn:
            conn.execute("ALTER SYSTEM SET archive_mode = on")
            conn.execute(f"ALTER SYSTEM SET archive_command = '{self.pgbr_cmd} archive-push %p'")
            conn.execute(f"ALTER SYSTEM SET archive_timeout = {self.archive_timeout}")
            conn.execute("ALTER SYSTEM SET wal_level = replica")
        # -l: the postmaster must not inherit this process's pipes
        as_pg([f"{self.s.bin}/pg_ctl", "-D", self.s.datadir, "-w", "-m", "fast", "-l",
               os.path.join(self.base, "log"), "restart"])
        self.pgbackrest("stanza-create")
        self.pgbackrest("check")

    def restore_and_open(self, target_dir, port, *options, archive_async=True, latest=True):
        """Restore the latest state (or only the backup) into target_dir, start it and wait until
        recovery has finished. Returns the seconds of the restore and of the recovery until open."""
        if not os.path.isdir(target_dir):
            os.makedirs(target_dir, mode=0o700)
            shutil.chown(target_dir, "postgres")
        get = "" if archive_async else " --no-archive-async"
        t0 = time.monotonic()
        target = ["--type=default"] if latest else ["--type=immediate", "--target-action=promote"]
        self.pgbackrest("restore", f"--pg1-path={target_dir}", *target, *options,
                        f"--recovery-option=restore_command={self.pgbr_cmd} --pg1-path={target_dir}{get} "
                        "archive-get %f \"%p\"")
        t1 = time.monotonic()
        self.start_copy(target_dir, port)
        while self.sql(port, "SELECT pg_is_in_recovery()") == "t":
            time.sleep(0.1)
        return t1 - t0, time.monotonic() - t1

    def start_copy(self, target_dir, port):
        """Start a restored copy beside the server, on its own port, without archiving."""
        as_pg([f"{self.s.bin}/pg_ctl", "-D", target_dir, "-w", "-t", "3600", "-l", f"{target_dir}.log", "-o",
               f"-p {port} -k {self.s.host} -c listen_addresses='' -c archive_mode=off", "start"])

    def start(self):
        as_pg([f"{self.s.bin}/pg_ctl", "-D", self.s.datadir, "-w", "-l", os.path.join(self.base, "log"),
               "-o", self.opts, "start"])

    def rpo_run(self, n, wake, loss_after):
        """Restart cleanly, write, lose the host at loss_after seconds after the start (kill -9 of
        PostgreSQL and of pgBackRest's asynchronous pusher, data directory deleted), restore the
        latest state and measure the seconds of commits that are missing (the RPO)."""
        _pg.log(f"RPO run {n}: loss {loss_after:.0f} s after a restart, {'with' if wake else 'WITHOUT'} the wake-up")
        self.stop(self.s.datadir)
        self.start()
        started = time.time()
        if wake:   # what the role's ExecStartPost and Patroni callbacks run
            as_pg(["sh", WAKE, self.s.bin, self.s.datadir, str(self.s.port)], env={**os.environ, "PGHOST": self.s.host})
        stop, commits = threading.Event(), []
        t = threading.Thread(target=writer, args=(self.s, stop, commits, n * 10**7))
        t.start()
        time.sleep(max(0.0, started + loss_after - time.time()))
        # the evidence: the newest segment in the repository and what waits in archive_status
        status = os.path.join(self.s.datadir, "pg_wal", "archive_status")
        evidence = {
            "current_wal": self.sql(self.s.port, "SELECT pg_walfile_name(pg_current_wal_lsn())"),
            "newest_in_repository": self.newest_archived(),
            "archive_status_ready": sorted(f for f in os.listdir(status) if f.endswith(".ready")),
            "archive_status_newest_done": max((f for f in os.listdir(status) if f.endswith(".done")), default=None),
        }
        with open(os.path.join(self.s.datadir, "postmaster.pid"), encoding="utf-8") as f:
            pid = f.readline().strip()
        pids = [pid] + subprocess.run(["pgrep", "-P", pid], capture_output=True, text=True, check=False).stdout.split()
        as_pg(["sh", "-c", f"kill -KILL {' '.join(pids)}; pkill -KILL -f '[p]gbackrest.*archive-push' || true"])
        lost_at = time.time()
        stop.set()
        t.join()
        while any(alive(p) for p in pids):
            time.sleep(0.1)
        # the socket's lock file goes with the host; a killed postmaster not yet reaped would hold it
        for name in os.listdir(self.s.host):
            if name.startswith(f".s.PGSQL.{self.s.port}"):
                os.remove(os.path.join(self.s.host, name))
        shutil.rmtree(self.s.datadir)
        self.pgbackrest("restore", "--type=default",
                        f"--recovery-option=restore_command={self.pgbr_cmd} --no-archive-async archive-get %f \"%p\"")
        self.start()
        while self.sql(self.s.port, "SELECT pg_is_in_recovery()") == "t":
            time.sleep(0.2)
        exists = self.sql(self.s.port, "SELECT to_regclass('rpo_probe') IS NOT NULL", db="bench") == "t"
        last = int(self.sql(self.s.port, f"SELECT coalesce(max(id), 0) FROM rpo_probe WHERE id > {n * 10**7}",
                            db="bench")) if exists else 0
        by_id = dict(commits)
        # nothing of this run restored: every commit since the start is lost
        rpo = commits[-1][1] - (by_id[last] if last else started)
        return {"run": n, "wake_after_start": wake, "loss_after_start_seconds": round(lost_at - started, 1),
                "commits": len(commits), "lost_commits": len([c for c in commits if c[0] > last]),
                "rpo_seconds": round(rpo, 1), "evidence": evidence}

    def stop_lsn(self, label):
        out = json.loads(self.pgbackrest("info", "--output=json", f"--set={label}").stdout)
        return out[0]["backup"][0]["lsn"]["stop"]

    def newest_archived(self):
        out = json.loads(self.pgbackrest("info", "--output=json").stdout)
        return max((a["max"] or "" for a in out[0]["archive"]), default="")

    def sql(self, port, query, db="postgres"):
        return as_pg([f"{self.s.bin}/psql", "-XAt", "-h", self.s.host, "-p", str(port), "-d", db, "-c",
                      query]).stdout.strip()

    def stop(self, datadir, mode="fast"):
        as_pg([f"{self.s.bin}/pg_ctl", "-D", datadir, "-w", "-m", mode, "stop"])


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def writer(server, stop, commits, first):
    with server.connect("bench") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS rpo_probe (id bigint PRIMARY KEY, "
                     "at timestamptz NOT NULL DEFAULT clock_timestamp())")
        i = first
        while not stop.is_set():
            i += 1
            try:
                conn.execute("INSERT INTO rpo_probe (id) VALUES (%s)", (i,))
            except Exception:  # pylint: disable=broad-except  # the server was killed under the writer
                return
            commits.append((i, time.time()))
            time.sleep(0.02)


def rpo_row(r):
    wake = "" if r["wake_after_start"] else " WITHOUT the wake-up"
    return [f"RPO, loss {r['run']} at {r['loss_after_start_seconds']} s after a restart{wake} "
            f"({r['lost_commits']}/{r['commits']} lost)", r["rpo_seconds"]]


def build(server, b, scale):
    """The platform schema and data set (_pg.load_data: indexes, constraints, triggers, row-level security)
    plus pgbench's tables at `scale`, in the database bench."""
    _pg.apply_schema(server)
    _pg.load_data(server)
    _pg.log(f"pgbench -i -s {scale}")
    as_pg([f"{server.bin}/pgbench", "-i", "-q", "-s", str(scale), "-h", server.host, "-p", str(server.port), "bench"])
    return int(b.sql(server.port, "SELECT pg_database_size('bench')"))


def checksum(b, port, db="bench"):
    """What must come back: pgbench's accounts and the platform's usage events."""
    return b.sql(port, "SELECT (SELECT count(*) || '/' || sum(abalance) FROM pgbench_accounts) || ' ' || "
                       "(SELECT count(*) || '/' || sum(quantity) FROM platform.usage_events)", db=db)


def compare(server, b, gb):
    """pgBackRest (the role's settings) against pg_dump -Fc and pg_restore (1 and 2 jobs), on one database."""
    size = build(server, b, round(gb * SCALE_PER_GB))
    expected = checksum(b, server.port)
    _pg.log(f"{gb} GB: database size {size / 2**20:.0f} MiB; pgBackRest full backup")
    t_backup = timed(b.pgbackrest, "backup", "--type=full")
    dump = os.path.join(server.base, "bench.dump")
    _pg.log("pg_dump -Fc")
    t_dump = timed(as_pg, [f"{server.bin}/pg_dump", "-Fc", "-h", server.host, "-p", str(server.port),
                           "-f", dump, "bench"])
    t_pg_restore = {}
    for jobs in (1, 2):
        _pg.log(f"pg_restore -j {jobs}")
        b.sql(server.port, "CREATE DATABASE restored")
        t_pg_restore[jobs] = timed(as_pg, [f"{server.bin}/pg_restore", "-j", str(jobs), "-h", server.host,
                                           "-p", str(server.port), "-d", "restored", dump])
        assert checksum(b, server.port, "restored") == expected
        b.sql(server.port, "DROP DATABASE restored")
    _pg.log("pgBackRest restore plus recovery")
    b.stop(server.datadir)
    restored = os.path.join(server.base, "restored")
    t_files, t_open = b.restore_and_open(restored, server.port + 1, latest=False)   # the state pg_dump saw
    assert checksum(b, server.port + 1) == expected
    b.stop(restored)
    shutil.rmtree(restored)
    b.start()
    row = {"size_gb": gb, "database_bytes": size, "pgbench_scale": round(gb * SCALE_PER_GB),
           "dump_bytes": os.path.getsize(dump), "pgbackrest_full_backup_seconds": round(t_backup, 1),
           "pg_dump_seconds": round(t_dump, 1), "pg_restore_seconds": round(t_pg_restore[1], 1),
           "pg_restore_2_jobs_seconds": round(t_pg_restore[2], 1),
           "pgbackrest_restore_seconds": round(t_files, 1), "recovery_until_open_seconds": round(t_open, 1),
           "pgbackrest_restore_and_recovery_seconds": round(t_files + t_open, 1)}
    row["speedup_vs_pg_restore"] = round(t_pg_restore[1] / (t_files + t_open), 2)
    row["speedup_vs_pg_restore_2_jobs"] = round(t_pg_restore[2] / (t_files + t_open), 2)
    os.remove(dump)
    return row


def settings_costs(server, b):
    """What each restore setting costs, on the database compare() built: compression type and level
    (backup time, repository size, restore time), process-max, delta, and archive-get's queue."""
    rows, port, target = [], server.port + 1, os.path.join(server.base, "variant")

    def restore(name, *options, archive_async=True, keep=False, latest=False, **extra):
        t_files, t_open = b.restore_and_open(target, port, *options, archive_async=archive_async, latest=latest)
        b.stop(target)
        if not keep:
            shutil.rmtree(target)
        rows.append({"setting": name, "restore_seconds": round(t_files, 1), "recovery_until_open_seconds":
                     round(t_open, 1), **extra})

    backups = []
    for ctype, level in (("zst", 3), ("zst", 1), ("zst", 9), ("lz4", 1), ("none", 0)):
        t = timed(b.pgbackrest, "backup", "--type=full", f"--compress-type={ctype}", f"--compress-level={level}")
        newest = json.loads(b.pgbackrest("info", "--output=json").stdout)[0]["backup"][-1]
        backups.append((f"compress-type={ctype}" + (f" compress-level={level}" if ctype != "none" else ""),
                        newest["label"], t, newest["info"]["repository"]["delta"]))
    b.stop(server.datadir)   # one server on the spool while the copies recover
    for name, label, t, size in backups:   # each backup alone: recovery to its end, then promoted
        restore(name, f"--set={label}", backup_seconds=round(t, 1), repository_bytes=size)
    role_label = backups[0][1]   # zst 3, the role's
    role = f"--set={role_label}"
    restore("process-max=1 (zst 3)", role, "--process-max=1")
    # delta: over a copy that was opened and written to since (a replica being rebuilt, a failed drill)
    restore("restore before a delta restore (zst 3)", role, keep=True)
    b.start_copy(target, port)
    as_pg([f"{server.bin}/pgbench", "-n", "-t", "2000", "-h", server.host, "-p", str(port), "bench"])
    b.stop(target)
    restore("delta=y over that copy after 2,000 pgbench transactions (zst 3)", role, "--delta")
    # archive-get: WAL written after the backup, replayed from the repository one segment per call or queued
    b.start()
    b.sql(server.port, "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 1500000", db="bench")
    b.pgbackrest("check")   # switches the segment and waits for it in the repository
    wal = b.sql(server.port, f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{b.stop_lsn(role_label)}')")
    b.stop(server.datadir)
    extra = {"wal_bytes_after_backup": int(float(wal))}
    restore("archive-get synchronous: one segment per call, the WAL since the backup (zst 3)", role,
            archive_async=False, latest=True, **extra)
    restore("archive-async=y (archive-get-queue-max 128 MiB): the same WAL prefetched in parallel", role,
            latest=True, **extra)
    b.start()
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="1,5,10", help="database sizes in GB, comma-separated (pgbench scale 68 per GB "
                   "plus the platform data set); a size the disk cannot hold four times over is skipped")
    p.add_argument("--archive-timeout", type=int, default=60)
    p.add_argument("--rpo-runs", type=int, default=5, help="losses with the wake-up")
    p.add_argument("--unfixed-runs", type=int, default=3,
                   help="losses without it, first (some starts arm archive_timeout by chance: more than one shows it)")
    p.add_argument("--seed", type=int, default=1, help="of the random moments of the losses")
    args = p.parse_args()
    settings = dict(_pg.SERVER_SETTINGS, fsync="on", synchronous_commit="on", full_page_writes="on")
    sizes, skipped, costs, runs = [], [], [], []
    for gb in (float(x) for x in args.sizes.split(",")):
        with _pg.Server(settings) as server:
            free = shutil.disk_usage(server.base).free
            if free < 4 * gb * 2**30 * 1.1:
                _pg.log(f"{gb} GB skipped: {free / 2**30:.0f} GiB free")
                skipped.append({"size_gb": gb, "free_bytes": free})
                continue
            b = Bench(server, args.archive_timeout)
            b.enable_archiving()
            sizes.append(compare(server, b, gb))
            if len(sizes) == 1:   # the settings and the RPO on the first size measured
                costs = settings_costs(server, b)
                b.pgbackrest("backup", "--type=full")
                rng = random.Random(args.seed)
                runs = [b.rpo_run(i, fix, rng.uniform(0.5, 3.5) * args.archive_timeout)
                        for i, fix in enumerate([False] * args.unfixed_runs + [True] * args.rpo_runs)]
                b.stop(server.datadir)   # restarted with the normal settings; the context manager stops it again
                as_pg([f"{server.bin}/pg_ctl", "-D", server.datadir, "-w", "-l", os.path.join(server.base, "log"),
                       "-o", f"{b.opts} -c archive_mode=off", "start"])
            conf = open(b.conf, encoding="utf-8").read()
            host = _pg.machine(server)
    if not sizes:
        raise SystemExit(f"no size fits on this disk: {skipped}")
    worst = max((r["rpo_seconds"] for r in runs if r["wake_after_start"]), default=None)
    worst_unfixed = max((r["rpo_seconds"] for r in runs if not r["wake_after_start"]), default=None)
    speedup = min(r["speedup_vs_pg_restore"] for r in sizes)
    results = {
        "by_size": sizes, "sizes_skipped": skipped, "restore_settings": costs,
        "archive_timeout_seconds": args.archive_timeout, "rpo_runs": runs, "rpo_worst_seconds_with_wake": worst,
        "rpo_worst_seconds_without_wake": worst_unfixed,
        "targets": {"restore_3x_faster_at_every_size": speedup >= 3,
                    "rpo_within_archive_timeout_plus_5s": worst is not None and worst <= args.archive_timeout + 5},
        "pgbackrest_config": conf, "machine": host,
    }
    _pg.table([[f"{r['size_gb']:g} GB ({r['database_bytes'] / 2**20:,.0f} MiB)", r["pgbackrest_full_backup_seconds"],
                r["pg_dump_seconds"], r["pgbackrest_restore_and_recovery_seconds"], r["pg_restore_seconds"],
                r["pg_restore_2_jobs_seconds"], r["speedup_vs_pg_restore"]] for r in sizes],
              ["database", "backup s", "pg_dump s", "restore+recovery s", "pg_restore s", "pg_restore -j2 s",
               "speed-up"])
    print()
    _pg.table([[c["setting"], c.get("backup_seconds", ""), c.get("repository_bytes", ""), c["restore_seconds"],
                c["recovery_until_open_seconds"]] for c in costs],
              ["restore setting (first size)", "backup s", "repository bytes", "restore s", "recovery s"])
    print()
    _pg.table([rpo_row(r) for r in runs] + [
        [f"worst RPO without the wake-up (archive_timeout {args.archive_timeout} s)", worst_unfixed],
        [f"worst RPO with the wake-up (archive_timeout {args.archive_timeout} s)", worst]], ["measure", "seconds"])
    print("targets:", results["targets"])
    _pg.write_results("backup", results)


if __name__ == "__main__":
    main()
