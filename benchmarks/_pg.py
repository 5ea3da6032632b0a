"""Shared helpers for the benchmarks: a throwaway PostgreSQL server, the
platform schema and a data set, pgbench runs, and machine details.

The server is the module tests' one (tests/pgserver.py), with the settings
below and pgbench.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import pathlib
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import psycopg

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "plugins" / "module_utils" / "migrations"))
sys.path.insert(0, str(ROOT / "tests"))
import v0001_tenancy_core  # noqa: E402  pylint: disable=wrong-import-position
import pgserver  # noqa: E402  pylint: disable=wrong-import-position

# Settings of the throwaway server. Durability is off: the benchmarks measure
# reads; the data set is rebuilt on every run. shared_buffers holds the whole
# data set, as on a sized production host.
SERVER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "512MB",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "30min",
    "jit": "off",
}

TENANTS = 10_000
EVENTS = 1_000_000
DAYS = 60
MEMBERS_PER_TENANT = 5


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def bindir():
    found = pgserver.bindir()
    if not found or not os.path.exists(os.path.join(found, "pgbench")):
        sys.exit("no PostgreSQL server binaries with pgbench: run scripts/testbed.sh "
                 "(it installs Debian's postgresql, whose server package ships pgbench)")
    return found


class Server(pgserver.PostgresServer):
    """The tests' throwaway server, with SERVER_SETTINGS and pgbench; use as a context manager."""

    default_db = "bench"

    def __init__(self, settings=None):
        bindir()
        super().__init__(SERVER_SETTINGS if settings is None else settings, prefix="selfbase-bench-")

    def pgbench(self, script_text, user, clients, seconds, name, dbname="bench", extra=()):
        """Run pgbench with a custom script; return its summary and per-transaction latencies (ms)."""
        workdir = tempfile.mkdtemp(prefix=f"pgbench-{name}-", dir=self.base)
        os.chmod(workdir, 0o777)
        script = os.path.join(workdir, f"{name}.sql")
        with open(script, "w", encoding="utf-8") as fh:
            fh.write(script_text)
        cmd = [f"{self.bin}/pgbench", "-n", "-h", self.host, "-p", str(self.port), "-U", user,
               "-c", str(clients), "-j", str(clients), "-T", str(seconds), "-M", "prepared",
               "--log", f"--log-prefix={workdir}/txlog", "-f", script] + list(extra) + [dbname]
        # pgbench writes its logs in workdir, which postgres can write to; run it as postgres so that
        # the command line printed in the results works as is for that user too.
        proc = pgserver.as_postgres(cmd, cwd=workdir)
        out = proc.stdout
        latencies = []
        for path in glob.glob(f"{workdir}/txlog*"):
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    # client_id transaction_no time(us) script_no time_epoch time_us
                    latencies.append(int(line.split()[2]) / 1000.0)
        latencies.sort()
        tps = float(re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out).group(1))
        mean = float(re.search(r"latency average = ([0-9.]+) ms", out).group(1))
        # with -r: [latency ms, command] per script line, in script order
        statements = [[float(m.group(1)), m.group(2).strip()]
                      for m in re.finditer(r"^\s+([0-9.]+)\s+(?:[0-9]+\s+)?(\S.*)$", out, re.M)]
        shown = " ".join(c if " " not in c else repr(c) for c in cmd)
        return {
            "command": shown.replace(script, f"{name}.sql").replace(f"{workdir}/", ""),
            "script": script_text,
            "clients": clients,
            "seconds": seconds,
            "transactions": len(latencies),
            "tps": tps,
            "latency_mean_ms": mean,
            "latency_p50_ms": percentile(latencies, 50),
            "latency_p95_ms": percentile(latencies, 95),
            "latency_p99_ms": percentile(latencies, 99),
            "latency_max_ms": latencies[-1] if latencies else None,
            "statement_latency_ms": statements,
            "pgbench_output": out,
        }


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = (len(sorted_values) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return round(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo), 4)


def apply_schema(server):
    with server.connect("postgres") as conn:
        conn.execute("DROP DATABASE IF EXISTS bench")
        conn.execute("CREATE DATABASE bench")
    with server.connect() as conn:
        with conn.transaction():
            conn.execute(v0001_tenancy_core.SQL)
            conn.execute("RESET ROLE; RESET search_path")


def load_data(server):
    """10,000 tenants (id = md5(ordinal)::uuid) on one plan, 5 members each, and 1,000,000 usage
    events over the last 60 days, inserted set-based per tenant with the rollup trigger live."""
    t0 = time.monotonic()
    with server.connect() as conn:
        conn.execute("""
            INSERT INTO platform.plans (code, name) VALUES ('bench', 'Benchmark plan');
            INSERT INTO platform.plan_quotas (plan_code, metric, limit_value, period, mode, overage_unit_price) VALUES
              ('bench', 'api_requests', 1000000, 'month', 'hard', NULL),
              ('bench', 'bandwidth_bytes', 10000000000, 'month', 'overage', 0.0000000001),
              ('bench', 'storage_bytes', 1000000000, 'none', 'soft', NULL),
              ('bench', 'members', 100, 'none', 'hard', NULL),
              ('bench', 'projects', 20, 'none', 'hard', NULL);
        """)
        conn.execute("""
            INSERT INTO platform.tenants (id, slug, name, plan_code)
            SELECT md5(i::text)::uuid, 'tenant-' || i, 'Tenant ' || i, 'bench'
              FROM generate_series(1, %(n)s) i
        """, {"n": TENANTS})
        # a tenant in 20 has its own api_requests quota
        conn.execute("""
            INSERT INTO platform.tenant_quotas (tenant_id, metric, limit_value, period, mode)
            SELECT md5(i::text)::uuid, 'api_requests', 5000000, 'month', 'hard'
              FROM generate_series(1, %(n)s, 20) i
        """, {"n": TENANTS})
        # members go through the hard-quota trigger
        conn.execute("""
            INSERT INTO platform.tenant_members (tenant_id, user_id, role)
            SELECT md5(i::text)::uuid, md5(i::text || '/' || m)::uuid, CASE m WHEN 1 THEN 'owner' ELSE 'member' END
              FROM generate_series(1, %(n)s) i, generate_series(1, %(m)s) m
        """, {"n": TENANTS, "m": MEMBERS_PER_TENANT})
        log(f"tenants, quotas and members loaded in {time.monotonic() - t0:.1f} s")
    load_events(server)
    with server.connect() as conn:
        conn.execute("VACUUM (ANALYZE)")
        counts = conn.execute("""
            SELECT (SELECT count(*) FROM platform.tenants) AS tenants,
                   (SELECT count(*) FROM platform.tenant_members) AS members,
                   (SELECT count(*) FROM platform.usage_events) AS events,
                   (SELECT count(*) FROM platform.usage_rollups_daily) AS rollups,
                   (SELECT sum(quantity) FROM platform.usage_events) = (SELECT sum(quantity)
                      FROM platform.usage_rollups_daily) AS rollups_consistent,
                   pg_size_pretty(pg_database_size('bench')) AS database_size
        """).fetchone()
    assert counts["rollups_consistent"], counts
    counts["load_seconds"] = round(time.monotonic() - t0, 1)
    log(f"data set: {counts}")
    return counts


EVENTS_SQL = """
DO $load$
DECLARE
  i int;
  per int := %(per)s;
BEGIN
  FOR i IN SELECT g FROM generate_series(%(first)s, %(last)s, %(step)s) g LOOP
    -- the rollup trigger runs as the table owner, under row-level security
    PERFORM set_config('app.tenant_id', md5(i::text), true);
    INSERT INTO platform.usage_events (tenant_id, metric, quantity, idempotency_key, occurred_at)
    SELECT md5(i::text)::uuid,
           CASE WHEN j %% 10 < 8 THEN 'api_requests' WHEN j %% 10 < 9 THEN 'bandwidth_bytes'
                ELSE 'storage_bytes' END,
           1 + (i * 7 + j * 13) %% 50,
           'ev-' || i || '-' || j,
           now() - interval '%(days)s days' * ((i * 7919 + j * 104729) %% 100000) / 100000.0
      FROM generate_series(1, per) j;
  END LOOP;
END
$load$
"""


def load_events(server, workers=2):
    """Insert the events from `workers` sessions in parallel (tenants split by ordinal)."""
    t0 = time.monotonic()
    per = EVENTS // TENANTS
    conns = [server.connect() for _w in range(workers)]
    try:
        for w, conn in enumerate(conns):
            conn.pgconn.send_query(
                (EVENTS_SQL % {"per": per, "first": w + 1, "last": TENANTS, "step": workers, "days": DAYS}).encode())
        for conn in conns:
            while True:
                res = conn.pgconn.get_result()
                if res is None:
                    break
                if res.status != psycopg.pq.ExecStatus.COMMAND_OK:
                    raise RuntimeError(res.error_message.decode())
    finally:
        for conn in conns:
            conn.close()
    log(f"{EVENTS} usage events (and their daily rollups, by trigger) loaded in {time.monotonic() - t0:.1f} s")


def create_login(server, name, member_of, options=""):
    with server.connect() as conn:
        conn.execute(f"DROP ROLE IF EXISTS {name}")
        conn.execute(f"CREATE ROLE {name} LOGIN {options} IN ROLE {member_of}")


def machine(server):
    cpu = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo", encoding="utf-8") as fh:
        mem_kb = int(re.search(r"MemTotal:\s+(\d+) kB", fh.read()).group(1))
    with server.connect("postgres") as conn:
        version = conn.execute("SELECT version() AS v").fetchone()["v"]
    pgbench_version = subprocess.run([f"{server.bin}/pgbench", "--version"], capture_output=True, text=True,
                                     check=True).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "nproc": os.cpu_count(),
        "memory_mib": mem_kb // 1024,
        "cpu_model": cpu,
        "kernel": platform.release(),
        "postgresql": version,
        "pgbench": pgbench_version,
        "python": platform.python_version(),
        "server_settings": server.settings,
    }


def write_results(name, data):
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=False)
        fh.write("\n")
    log(f"results written to {path.relative_to(ROOT)}")
    return path


def table(rows, headers):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths))
    print(line)
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(v).rjust(w) if isinstance(v, (int, float)) else str(v).ljust(w)
                        for v, w in zip(r, widths)))


def median(values):
    return statistics.median(values)


COLLECTIONS = ROOT / ".cache" / "collections"


def run_task(workdir, task, check=False, extra_vars=None):
    """Run one task through ansible-playbook on this machine; return (seconds, the task's result)."""
    path = os.path.join(workdir, "play.yml")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump([{"hosts": "localhost", "gather_facts": False, "tasks": [task]}], fh)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_PYTHON_INTERPRETER=sys.executable,
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
               ANSIBLE_STDOUT_CALLBACK="ansible.posix.json")
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,", "-c", "local",
           path] + ["--check"] * check
    for key, value in (extra_vars or {}).items():
        cmd += ["-e", f"{key}={value}"]
    started = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    result = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    if result.get("failed") or proc.returncode:
        sys.exit(f"playbook failed: {json.dumps(result)[:3000]}\n{proc.stderr[-2000:]}")
    return elapsed, result


# Server-side timing: one block per (role, statement) pair, run in batches of one transaction per statement, for
# a tenant set in app.tenant_id; each round runs every pair, each pair first in turn (the machine's speed drifts).
_BLOCK = """
      {kw} m = {m} THEN
        SET ROLE {role};
        t0 := clock_timestamp();
        FOR i IN 1..{batch} LOOP
          n := (r * {batch} + i) % {tenants} + 1;
          tid := set_config('app.tenant_id', md5(n::text), false);
          {statement}
          COMMIT;
        END LOOP;
        spent[m] := spent[m] + (clock_timestamp() - t0);"""
_LOOP = """
DO $bench$
DECLARE
  t0 timestamptz;
  spent interval[] := array_fill('0'::interval, ARRAY[{pairs}]);
  n int;
  m int;
  tid uuid;
BEGIN
  FOR r IN 1..{rounds} LOOP
    FOR k IN 0..{last} LOOP
      m := (r + k) % {pairs} + 1;
      {blocks}
      END IF;
      RESET ROLE;
    END LOOP;
  END LOOP;
  RAISE NOTICE 'us %', (SELECT string_agg((extract(epoch FROM s) * 1e6 / ({rounds} * {batch}))::text, ' ')
                          FROM unnest(spent) s);
END
$bench$"""


def timed_batches(conn, pairs, rounds, batch, tenants):
    """Mean microseconds per statement of each (role, plpgsql statement) pair; `tid` holds the tenant's id."""
    notices = []
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary))
    blocks = "".join(_BLOCK.format(kw="IF" if m == 1 else "ELSIF", m=m, role=role, batch=batch, tenants=tenants,
                                   statement=statement) for m, (role, statement) in enumerate(pairs, 1))
    conn.execute(_LOOP.format(pairs=len(pairs), last=len(pairs) - 1, rounds=rounds, batch=batch, blocks=blocks))
    return [float(v) for v in notices[-1].split()[1:]]
