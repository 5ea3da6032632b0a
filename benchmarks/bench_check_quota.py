"""Benchmark platform.check_quota() as the application calls it.

A throwaway PostgreSQL server gets the platform schema (migration SQL, one
transaction), 10,000 tenants and 1,000,000 usage events over the last 60 days
(rollups built by the trigger). pgbench then runs, as a login role that is a
member of selfbase_app, transactions that pick a random tenant, set
app.tenant_id to it and call check_quota() for it, both in one pipeline (one
round trip). A floor run does the same with `SELECT 1` instead of the check,
to show what the client, protocol and tenant switch alone cost here.

Targets: p95 < 1 ms and >= 10,000 checks/s with 2 clients on a 2-core machine.

Usage: python benchmarks/bench_check_quota.py [--seconds 30] [--clients 2]
"""

from __future__ import annotations

import argparse
import time

import _pg

CHECK_SCRIPT = """\\set n random(1, {tenants})
\\startpipeline
SELECT set_config('app.tenant_id', md5(:n::text), false);
SELECT * FROM platform.check_quota(md5(:n::text)::uuid, 'api_requests', 1);
\\endpipeline
"""

FLOOR_SCRIPT = """\\set n random(1, {tenants})
\\startpipeline
SELECT set_config('app.tenant_id', md5(:n::text), false);
SELECT 1;
\\endpipeline
"""

TARGET_P95_MS = 1.0
TARGET_TPS = 10_000


def verify(server):
    """check_quota() as the app role agrees with a direct count; return an EXPLAIN ANALYZE of one call."""
    with server.connect(user="bench_app") as conn:
        for n in (1, 2, 4242, 10000):
            conn.execute("SELECT set_config('app.tenant_id', md5(%s::text), false)", (n,))
            got = conn.execute("SELECT * FROM platform.check_quota(md5(%s::text)::uuid, 'api_requests', 1)",
                               (n,)).fetchone()
            with server.connect() as su:
                want = su.execute("""
                    SELECT COALESCE(sum(quantity), 0) AS used FROM platform.usage_events
                     WHERE tenant_id = md5(%s::text)::uuid AND metric = 'api_requests'
                       AND (occurred_at AT TIME ZONE 'UTC')::date >= date_trunc('month', now())::date
                """, (n,)).fetchone()
            expected_limit = 5000000 if (n - 1) % 20 == 0 else 1000000
            assert got["used"] == want["used"] and got["limit_value"] == expected_limit and got["allowed"], (n, got)
        conn.execute("SELECT set_config('app.tenant_id', md5('4242'), false)")
        plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM platform.check_quota("
                            "md5('4242')::uuid, 'api_requests', 1)").fetchall()
    return [r["QUERY PLAN"] for r in plan]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--floor-seconds", type=int, default=10)
    parser.add_argument("--name", default="check_quota", help="results file name (benchmarks/results/NAME.json)")
    args = parser.parse_args()
    started = time.monotonic()

    with _pg.Server() as server:
        _pg.log(f"server on {server.host} port {server.port}")
        _pg.apply_schema(server)
        dataset = _pg.load_data(server)
        _pg.create_login(server, "bench_app", "selfbase_app")
        plan = verify(server)
        _pg.log("check_quota() results verified against the events; running pgbench")

        runs = {}
        runs["check_quota"] = server.pgbench(CHECK_SCRIPT.format(tenants=_pg.TENANTS), "bench_app", args.clients,
                                             args.seconds, "check_quota")
        runs["floor"] = server.pgbench(FLOOR_SCRIPT.format(tenants=_pg.TENANTS), "bench_app", args.clients,
                                       args.floor_seconds, "floor")
        machine = _pg.machine(server)

    chk = runs["check_quota"]
    ok_p95 = chk["latency_p95_ms"] < TARGET_P95_MS
    ok_tps = chk["tps"] >= TARGET_TPS
    print()
    print(f"check_quota() as selfbase_app, random tenant per transaction, {args.clients} clients, "
          f"PostgreSQL {machine['postgresql'].split()[1]}, {machine['nproc']} CPUs ({machine['cpu_model']})")
    _pg.table([[name, r["seconds"], r["transactions"], round(r["tps"]), r["latency_mean_ms"], r["latency_p50_ms"],
                r["latency_p95_ms"], r["latency_p99_ms"]] for name, r in runs.items()],
              ["run", "s", "transactions", "tps", "mean ms", "p50 ms", "p95 ms", "p99 ms"])
    print(f"target p95 < {TARGET_P95_MS} ms: {'met' if ok_p95 else 'MISSED'}; "
          f"target >= {TARGET_TPS} checks/s: {'met' if ok_tps else 'MISSED'}")
    for r in runs.values():
        del r["pgbench_output"]
    _pg.write_results(args.name, {
        "benchmark": "check_quota",
        "description": "SELECT * FROM platform.check_quota(tenant, 'api_requests', 1) as a selfbase_app member, "
                       "app.tenant_id set to a random tenant in the same pipeline",
        "machine": machine,
        "dataset": dataset,
        "targets": {"p95_ms_below": TARGET_P95_MS, "tps_at_least": TARGET_TPS},
        "targets_met": {"p95": ok_p95, "tps": ok_tps},
        "runs": runs,
        "explain_analyze": plan,
        "wall_seconds": round(time.monotonic() - started, 1),
    })


if __name__ == "__main__":
    main()
