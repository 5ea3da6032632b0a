"""pgBackRest against pg_dump/pg_restore on one database, in one run.

On a throwaway server with WAL archiving to a local pgBackRest repository
(zstd, 2 processes, asynchronous archive-push, archive_timeout as the backup
role sets it), a pgbench database of about 1 GB (scale 70):

- pgBackRest full backup, then restore plus recovery into a new data
  directory until the server is open (recovery finished);
- pg_dump -Fc, then pg_restore into an empty database (what nself does);
- the RPO as a user loses data: after a clean restart, a writer commits a row
  every 20 ms; at a random moment between 0.5 and 3.5 x archive_timeout after
  the start the host is lost (kill -9 of PostgreSQL and of pgBackRest's
  asynchronous pusher, data directory deleted); the latest state is restored
  and the seconds of committed writes that are missing are measured. The
  evidence (newest segment in the repository, archive_status) is taken just
  before each loss. One run goes without the role's wake-up after the start
  (roles/postgresql/files/postgresql-wake-checkpointer), the others with it.

Targets: restore at least 3x faster than pg_restore; worst RPO with the wake-up
at or below archive_timeout + 5 s.
Usage: python benchmarks/bench_backup.py [--scale 70] [--archive-timeout 60] [--rpo-runs 5]
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
WAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "roles", "postgresql", "files",
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
repo1-retention-full=2
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

    def restore_and_open(self, target_dir, port):
        """Restore the latest state into target_dir, start it and wait until recovery has finished."""
        os.makedirs(target_dir, mode=0o700)
        shutil.chown(target_dir, "postgres")
        self.pgbackrest("restore", f"--pg1-path={target_dir}", "--type=default",
                        f"--recovery-option=restore_command={self.pgbr_cmd} --pg1-path={target_dir} --no-archive-async archive-get %f \"%p\"")
        opts = f"-p {port} -k {self.s.host} -c listen_addresses='' -c archive_mode=off"
        as_pg([f"{self.s.bin}/pg_ctl", "-D", target_dir, "-w", "-t", "3600", "-l", f"{target_dir}.log",
               "-o", opts, "start"])
        while self.sql(port, "SELECT pg_is_in_recovery()") == "t":
            time.sleep(0.2)

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


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--scale", type=int, default=70)
    p.add_argument("--archive-timeout", type=int, default=60)
    p.add_argument("--rpo-runs", type=int, default=5, help="losses with the wake-up (one more runs without it)")
    p.add_argument("--seed", type=int, default=1, help="of the random moments of the losses")
    args = p.parse_args()
    settings = dict(_pg.SERVER_SETTINGS, fsync="on", synchronous_commit="on", full_page_writes="on")
    with _pg.Server(settings) as server:
        b = Bench(server, args.archive_timeout)
        b.enable_archiving()
        _pg.log(f"pgbench -i -s {args.scale}")
        as_pg([f"{server.bin}/createdb", "-h", server.host, "-p", str(server.port), "bench"])
        as_pg([f"{server.bin}/pgbench", "-i", "-q", "-s", str(args.scale), "-h", server.host, "-p", str(server.port),
               "bench"])
        size = int(b.sql(server.port, "SELECT pg_database_size('bench')"))
        rows = int(b.sql(server.port, "SELECT count(*) FROM pgbench_accounts", db="bench"))
        _pg.log(f"database size {size / 2**20:.0f} MiB; pgBackRest full backup")
        t_backup = timed(b.pgbackrest, "backup", "--type=full")

        dump = os.path.join(server.base, "bench.dump")
        _pg.log("pg_dump -Fc")
        t_dump = timed(as_pg, [f"{server.bin}/pg_dump", "-Fc", "-h", server.host, "-p", str(server.port),
                               "-f", dump, "bench"])
        as_pg([f"{server.bin}/createdb", "-h", server.host, "-p", str(server.port), "restored"])
        _pg.log("pg_restore")
        t_pg_restore = timed(as_pg, [f"{server.bin}/pg_restore", "-h", server.host, "-p", str(server.port),
                                     "-d", "restored", dump])
        assert int(b.sql(server.port, "SELECT count(*) FROM pgbench_accounts", db="restored")) == rows
        b.sql(server.port, "DROP DATABASE restored")

        _pg.log("pgBackRest restore plus recovery")
        b.stop(server.datadir)
        restored = os.path.join(server.base, "restored-1")
        port2 = server.port + 1
        t_restore = timed(b.restore_and_open, restored, port2)
        assert int(b.sql(port2, "SELECT count(*) FROM pgbench_accounts", db="bench")) == rows
        b.stop(restored)
        shutil.rmtree(restored)
        b.start()

        rng = random.Random(args.seed)
        runs = [b.rpo_run(n, fix, rng.uniform(0.5, 3.5) * args.archive_timeout)
                for n, fix in enumerate([False] + [True] * args.rpo_runs)]
        b.stop(server.datadir)   # restarted with the normal settings; the context manager stops it again
        as_pg([f"{server.bin}/pg_ctl", "-D", server.datadir, "-w", "-l", os.path.join(server.base, "log"),
               "-o", f"{b.opts} -c archive_mode=off", "start"])
        worst = max(r["rpo_seconds"] for r in runs if r["wake_after_start"])

        ratio = t_pg_restore / t_restore
        results = {
            "database_bytes": size, "pgbench_scale": args.scale, "accounts": rows,
            "pgbackrest_full_backup_seconds": round(t_backup, 1),
            "pgbackrest_restore_and_recovery_seconds": round(t_restore, 1),
            "pg_dump_seconds": round(t_dump, 1), "pg_restore_seconds": round(t_pg_restore, 1),
            "dump_bytes": os.path.getsize(dump),
            "restore_speedup_vs_pg_restore": round(ratio, 2),
            "archive_timeout_seconds": args.archive_timeout,
            "rpo_runs": runs, "rpo_worst_seconds_with_wake": worst,
            "targets": {"restore_3x_faster": ratio >= 3, "rpo_within_archive_timeout_plus_5s": worst <= args.archive_timeout + 5},
            "pgbackrest_config": open(b.conf, encoding="utf-8").read(),
            "machine": _pg.machine(server),
        }
        _pg.table([
            ["pgBackRest full backup", round(t_backup, 1)],
            ["pgBackRest restore + recovery", round(t_restore, 1)],
            ["pg_dump -Fc", round(t_dump, 1)],
            ["pg_restore", round(t_pg_restore, 1)],
            ["restore speed-up (pg_restore / pgBackRest)", round(ratio, 2)],
        ] + [rpo_row(r) for r in runs] + [
            [f"worst RPO with the wake-up (archive_timeout {args.archive_timeout} s)", worst],
        ], ["measure", "seconds"])
        print("targets:", results["targets"])
        _pg.write_results("backup", results)


if __name__ == "__main__":
    main()
