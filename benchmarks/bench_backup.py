"""pgBackRest against pg_dump/pg_restore on one database, in one run.

On a throwaway server with WAL archiving to a local pgBackRest repository
(zstd, 2 processes, asynchronous archive-push, archive_timeout as the backup
role sets it), a pgbench database of about 1 GB (scale 70):

- pgBackRest full backup, then restore plus recovery into a new data
  directory until the server is open (recovery finished);
- pg_dump -Fc, then pg_restore into an empty database (what nself does);
- the RPO observed: a writer commits a row every 20 ms; the server is killed
  (pg_ctl stop -m immediate) and its data directory deleted without warning;
  the latest state is restored and the seconds of committed writes that are
  missing are measured.

Targets: restore at least 3x faster than pg_restore; RPO at or below archive_timeout.
Usage: python benchmarks/bench_backup.py [--scale 70] [--archive-timeout 60]
"""

import argparse
import json
import os
import shutil
import threading
import time

import _pg
import pgserver

STANZA = "bench"


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

    def sql(self, port, query, db="postgres"):
        return as_pg([f"{self.s.bin}/psql", "-XAt", "-h", self.s.host, "-p", str(port), "-d", db, "-c",
                      query]).stdout.strip()

    def stop(self, datadir, mode="fast"):
        as_pg([f"{self.s.bin}/pg_ctl", "-D", datadir, "-w", "-m", mode, "stop"])


def writer(server, stop, commits):
    with server.connect("bench") as conn:
        conn.execute("CREATE TABLE rpo_probe (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())")
        i = 0
        while not stop.is_set():
            i += 1
            try:
                conn.execute("INSERT INTO rpo_probe (id) VALUES (%s)", (i,))
            except Exception:  # pylint: disable=broad-except  # the server was killed under the writer
                return
            commits.append((i, time.time()))
            time.sleep(0.02)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--scale", type=int, default=70)
    p.add_argument("--archive-timeout", type=int, default=60)
    p.add_argument("--rpo-seconds", type=int, default=100, help="how long the writer runs before the loss")
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
        opts = f"-p {server.port} -k {server.host} -c listen_addresses=''"
        opts += "".join(f" -c {key}={value}" for key, value in server.settings.items())
        as_pg([f"{server.bin}/pg_ctl", "-D", server.datadir, "-w", "-l", os.path.join(server.base, "log"),
               "-o", opts, "start"])

        _pg.log(f"RPO: a writer for {args.rpo_seconds} s, then the server is killed and its data deleted")
        stop, commits = threading.Event(), []
        t = threading.Thread(target=writer, args=(server, stop, commits))
        t.start()
        time.sleep(args.rpo_seconds)
        # what had been archived when the loss came (the evidence behind the RPO)
        archiver = b.sql(server.port, "SELECT json_build_object('archived_count', archived_count, 'last_archived_wal', "
                         "last_archived_wal, 'failed_count', failed_count, 'current_wal', "
                         "pg_walfile_name(pg_current_wal_lsn())) FROM pg_stat_archiver")
        _pg.log(f"archiver before the loss: {archiver}")
        as_pg([f"{server.bin}/pg_ctl", "-D", server.datadir, "-m", "immediate", "stop"])
        stop.set()
        t.join()
        shutil.rmtree(server.datadir)
        restored = os.path.join(server.base, "restored-2")
        b.restore_and_open(restored, port2)
        # the probe table itself may be lost with everything after the last archived segment
        exists = b.sql(port2, "SELECT to_regclass('rpo_probe') IS NOT NULL", db="bench") == "t"
        last = int(b.sql(port2, "SELECT coalesce(max(id), 0) FROM rpo_probe", db="bench")) if exists else 0
        by_id = dict(commits)
        last_commit = commits[-1][1]
        rpo = last_commit - by_id[last] if last else last_commit - commits[0][1]
        lost = len(commits) - last
        b.stop(restored)
        os.rename(restored, server.datadir)   # so that the context manager's stop finds a stopped server
        as_pg([f"{server.bin}/pg_ctl", "-D", server.datadir, "-w", "-l", os.path.join(server.base, "log"),
               "-o", f"-p {server.port} -k {server.host} -c listen_addresses='' -c archive_mode=off", "start"])

        ratio = t_pg_restore / t_restore
        results = {
            "database_bytes": size, "pgbench_scale": args.scale, "accounts": rows,
            "pgbackrest_full_backup_seconds": round(t_backup, 1),
            "pgbackrest_restore_and_recovery_seconds": round(t_restore, 1),
            "pg_dump_seconds": round(t_dump, 1), "pg_restore_seconds": round(t_pg_restore, 1),
            "dump_bytes": os.path.getsize(dump),
            "restore_speedup_vs_pg_restore": round(ratio, 2),
            "archive_timeout_seconds": args.archive_timeout,
            "rpo_writer_seconds": args.rpo_seconds, "rpo_commits": len(commits), "rpo_lost_commits": lost,
            "rpo_observed_seconds": round(rpo, 1),
            "archiver_before_loss": json.loads(archiver),
            "targets": {"restore_3x_faster": ratio >= 3, "rpo_within_archive_timeout": rpo <= args.archive_timeout},
            "pgbackrest_config": open(b.conf, encoding="utf-8").read(),
            "machine": _pg.machine(server),
        }
        _pg.table([
            ["pgBackRest full backup", round(t_backup, 1)],
            ["pgBackRest restore + recovery", round(t_restore, 1)],
            ["pg_dump -Fc", round(t_dump, 1)],
            ["pg_restore", round(t_pg_restore, 1)],
            ["restore speed-up (pg_restore / pgBackRest)", round(ratio, 2)],
            [f"RPO observed (archive_timeout {args.archive_timeout} s)", round(rpo, 1)],
            ["commits lost of those written", f"{lost} / {len(commits)}"],
        ], ["measure", "seconds"])
        print("targets:", results["targets"])
        _pg.write_results("backup", results)


if __name__ == "__main__":
    main()
