"""Benchmark the cost of row-level security on tenant-filtered queries.

Same data set as bench_check_quota.py (10,000 tenants, 1,000,000 usage events
over 60 days). The same pgbench script runs in three modes with the same
clients and duration, in short alternating rounds (the machine's speed drifts,
so each round compares modes run back to back):

- rls:       as a login role that is a member of selfbase_app, app.tenant_id
             set to the tenant: the tenant_isolation policies apply;
- superuser: as the superuser, which bypasses row-level security (the
             comparison the target is about);
- bypassrls: as a login role with the same grants (member of selfbase_app)
             and BYPASSRLS: the same privilege checks as rls, no policies, so
             the difference to rls is row-level security alone.

Each transaction picks a random tenant, sets app.tenant_id to it (in every
mode, so that they differ only in RLS) and gets its id back, as an
application holds it, then sends in one pipeline (one round trip) three
queries filtered on that tenant id (a uuid parameter): the sum of its usage
events of the last 7 days, its members, and its rollups of the last 30 days.
Overhead = loss of tps of rls against the other mode, per round, median over
rounds (and the same for the mean latency).

A server-side loop then times each query alone, switching roles with
SET ROLE between short batches, one transaction per query, to show which
query pays what without the client and protocol in the way.

Target: overhead <= 5 %.

Usage: python benchmarks/bench_rls_overhead.py [--seconds 2] [--rounds 10] [--clients 2]
"""

from __future__ import annotations

import argparse
import time

import _pg

QUERIES = {
    "events_7d": "SELECT sum(quantity) FROM platform.usage_events WHERE tenant_id = {t} "
                 "AND occurred_at > now() - interval '7 days'",
    "members": "SELECT user_id, role FROM platform.tenant_members WHERE tenant_id = {t}",
    "rollups_30d": "SELECT day, metric, quantity FROM platform.usage_rollups_daily "
                   "WHERE tenant_id = {t} AND day >= current_date - 30",
}

# The tenant is set first (its value comes back as :tid, as an application holds it), then the three
# queries go in one pipeline with the tenant id as a uuid parameter.
SCRIPT = ("\\set n random(1, {tenants})\n"
          "SELECT set_config('app.tenant_id', md5(:n::text), false) AS tid \\gset\n"
          "\\startpipeline\n"
          + "".join(q.replace("{t}", ":tid") + ";\n" for q in QUERIES.values())
          + "\\endpipeline\n")

TARGET_OVERHEAD_PCT = 5.0
MODES = {"rls": "bench_app", "superuser": "postgres", "bypassrls": "bench_bypass"}


def verify_and_explain(server):
    """Every mode returns the same rows for a tenant; the rls mode sees no other tenant."""
    plans, results = {}, {}
    for mode, user in MODES.items():
        with server.connect(user=user) as conn:
            conn.execute("SELECT set_config('app.tenant_id', md5('4242'), false)")
            queries = {k: q.replace("{t}", "md5('4242')::uuid") for k, q in QUERIES.items()}
            results[mode] = {k: conn.execute(q + " ORDER BY 1").fetchall() for k, q in queries.items()}
            plans[mode] = {k: [r["QUERY PLAN"] for r in conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + q)]
                           for k, q in queries.items()}
            if mode == "rls":
                others = conn.execute("SELECT count(*) AS n FROM platform.usage_events "
                                      "WHERE tenant_id <> md5('4242')::uuid").fetchone()["n"]
                assert others == 0, others
    assert results["rls"] == results["superuser"] == results["bypassrls"], results
    assert all(results["rls"].values()), results
    return plans


def server_side(server, rounds=20, batch=500):
    """Mean time (us) of each query per mode, minus the same loop without the query."""
    with server.connect() as conn:
        def timed(query):
            return dict(zip(MODES, _pg.timed_batches(conn, [(role, query) for role in MODES.values()], rounds, batch,
                                                     _pg.TENANTS)))

        empty = timed("")
        out = {}
        for k, q in QUERIES.items():
            used = timed("PERFORM * FROM (" + q.replace("{t}", "tid") + ") q;")
            out[k] = {mode: round(used[mode] - empty[mode], 2) for mode in MODES}
    return {
        "query_us": out,
        "overhead_pct_vs_superuser": {k: overhead(v["rls"], v["superuser"]) for k, v in out.items()},
        "overhead_pct_vs_bypassrls": {k: overhead(v["rls"], v["bypassrls"]) for k, v in out.items()},
        "loop_us_without_query": {mode: round(v, 2) for mode, v in empty.items()},
        "rounds": rounds, "batch": batch,
    }


def overhead(rls, base):
    return round((rls - base) * 100.0 / base, 2)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=2, help="duration of each round of each mode")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--name", default="rls_overhead", help="results file name (benchmarks/results/NAME.json)")
    args = parser.parse_args()
    started = time.monotonic()
    script = SCRIPT.format(tenants=_pg.TENANTS)

    with _pg.Server() as server:
        _pg.log(f"server on {server.host} port {server.port}")
        _pg.apply_schema(server)
        dataset = _pg.load_data(server)
        _pg.create_login(server, "bench_app", "selfbase_app")
        _pg.create_login(server, "bench_bypass", "selfbase_app", "BYPASSRLS")
        plans = verify_and_explain(server)
        _pg.log("all modes return the same rows; running pgbench")
        rounds = {mode: [] for mode in MODES}
        modes = list(MODES)
        for i in range(args.rounds):
            for mode in modes[i % len(modes):] + modes[:i % len(modes)]:
                r = server.pgbench(script, MODES[mode], args.clients, args.seconds, mode)
                del r["pgbench_output"], r["statement_latency_ms"]
                rounds[mode].append(r)
            _pg.log(f"round {i + 1}: " + ", ".join(f"{m} {rounds[m][-1]['tps']:.0f} tps" for m in MODES))
        _pg.log("timing each query server-side")
        per_query = server_side(server)
        machine = _pg.machine(server)

    summary = {}
    for mode, runs in rounds.items():
        summary[mode] = {"user": MODES[mode]}
        for key in ("tps", "latency_mean_ms", "latency_p50_ms", "latency_p95_ms"):
            summary[mode][key] = round(_pg.median([r[key] for r in runs]), 4)
    result = {}
    for base in ("superuser", "bypassrls"):
        pairs = list(zip(rounds["rls"], rounds[base]))
        result[f"vs_{base}"] = {
            "tps_pct": round(_pg.median([(b["tps"] - a["tps"]) * 100.0 / b["tps"] for a, b in pairs]), 2),
            "latency_mean_pct": round(_pg.median([overhead(a["latency_mean_ms"], b["latency_mean_ms"])
                                                  for a, b in pairs]), 2),
            "per_round_tps_pct": [round((b["tps"] - a["tps"]) * 100.0 / b["tps"], 2) for a, b in pairs],
        }
    primary = result["vs_superuser"]
    met = max(primary["tps_pct"], primary["latency_mean_pct"]) <= TARGET_OVERHEAD_PCT

    print()
    print(f"RLS overhead, {args.clients} clients, {args.rounds} rounds of {args.seconds} s per mode (medians), "
          f"PostgreSQL {machine['postgresql'].split()[1]}, {machine['nproc']} CPUs ({machine['cpu_model']})")
    _pg.table([[mode, s["user"], round(s["tps"]), s["latency_mean_ms"], s["latency_p50_ms"], s["latency_p95_ms"],
                "" if mode == "rls" else result[f"vs_{mode}"]["tps_pct"],
                "" if mode == "rls" else result[f"vs_{mode}"]["latency_mean_pct"]]
               for mode, s in summary.items()],
              ["mode", "user", "tps", "mean ms", "p50 ms", "p95 ms", "rls tps loss %", "rls latency +%"])
    print(f"target <= {TARGET_OVERHEAD_PCT} % (rls vs superuser, tps and mean latency): "
          f"{'met' if met else 'MISSED'}")
    print()
    print("server-side time per query (us, one transaction each, no client/protocol):")
    _pg.table([[k] + [v[m] for m in MODES]
               + [per_query["overhead_pct_vs_superuser"][k], per_query["overhead_pct_vs_bypassrls"][k]]
               for k, v in per_query["query_us"].items()],
              ["query"] + [f"{m} us" for m in MODES] + ["rls vs superuser %", "rls vs bypassrls %"])
    _pg.write_results(args.name, {
        "benchmark": "rls_overhead",
        "description": "tenant-filtered queries as a selfbase_app member under RLS vs. the superuser (no RLS) "
                       "and vs. a BYPASSRLS role with the same grants",
        "machine": machine,
        "dataset": dataset,
        "target": {"overhead_pct_at_most": TARGET_OVERHEAD_PCT, "measured_as": "rls vs superuser, median of "
                   "per-round tps loss and mean latency increase"},
        "target_met": met,
        "overhead": result,
        "summary": summary,
        "rounds": rounds,
        "server_side_per_query": per_query,
        "explain_analyze": plans,
        "wall_seconds": round(time.monotonic() - started, 1),
    })


if __name__ == "__main__":
    main()
