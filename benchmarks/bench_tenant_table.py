"""Benchmark the cost of the row-level security that tenant_table puts on an application table.

An application table public.orders with 1,000,000 rows across 1,000 tenants (1,000 each, over 90 days) is made
tenant-scoped by the selfbase.platform.tenant_table module itself (index on tenant_id, created_at). Two
tenant-filtered queries an application runs:

- recent: the tenant's 20 latest orders;
- month:  count and sum of its orders of the last 30 days.

They are timed server-side on a prewarmed table, one transaction per query, switching roles between short batches
of a loop (the machine's speed drifts, so each round compares roles run back to back, each role first in turn):

- app:    a login in selfbase_app with app.tenant_id set: the module's policies apply;
- owner:  the table's owner (the superuser that ran the module), which row-level security does not filter;
- bypass: a login in selfbase_app with BYPASSRLS: the same privilege checks as app, no policies.

Every role sets app.tenant_id, so they differ only in row-level security. The same runs are made with two
policies: the module's, which compares with (SELECT platform.current_tenant_id()), evaluated once per query as an
InitPlan (table orders), and the per-row form that compares with platform.current_tenant_id() directly (a copy,
orders_per_row); both tables are timed in the same rounds.

Then end to end with pgbench (prepared statements, the tenant id as a parameter, both queries per transaction),
app against owner, for each policy, in short alternating rounds.

Overhead = time added (server-side) or transactions/s lost (pgbench) against the owner. Target: <= 5 %.

Usage: python benchmarks/bench_tenant_table.py [--rounds 20] [--batch 300] [--e2e-rounds 8] [--seconds 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import _pg

TENANTS = 1_000
ROWS_PER_TENANT = 1_000
TARGET_OVERHEAD_PCT = 5.0
ROLES = ("bench_app", "postgres", "bench_bypass")
POLICIES = {"initplan": "orders", "per_row": "orders_per_row"}     # policy -> the table that has it
MODES = ("app", "owner", "bypass")
QUERIES = {
    "recent": "SELECT id, item, amount FROM public.orders WHERE tenant_id = tid ORDER BY created_at DESC LIMIT 20",
    "month": "SELECT count(*), sum(amount) FROM public.orders WHERE tenant_id = tid "
             "AND created_at > now() - interval '30 days'",
}
PER_ROW = ("CREATE POLICY selfbase_tenant ON public.orders_per_row TO selfbase_app, selfbase_graphql "
           "USING (tenant_id = platform.current_tenant_id()) WITH CHECK (tenant_id = platform.current_tenant_id())")


def load(server):
    t0 = time.monotonic()
    with server.connect() as conn:
        conn.execute("""
            INSERT INTO platform.tenants (id, slug, name)
            SELECT md5(i::text)::uuid, 'tenant-' || i, 'Tenant ' || i FROM generate_series(1, %(n)s) i
        """, {"n": TENANTS})
        conn.execute("CREATE TABLE public.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                     "tenant_id uuid, item text NOT NULL, amount numeric(12, 2) NOT NULL, "
                     "created_at timestamptz NOT NULL)")
        conn.execute("""
            INSERT INTO public.orders (tenant_id, item, amount, created_at)
            SELECT md5(t::text)::uuid, 'item-' || j, (t * 7 + j * 13) %% 1000 / 10.0,
                   now() - interval '90 days' * ((t * 7919 + j * 104729) %% 100000) / 100000.0
              FROM generate_series(1, %(t)s) t, generate_series(1, %(j)s) j
        """, {"t": TENANTS, "j": ROWS_PER_TENANT})
        conn.execute("CREATE TABLE public.orders_per_row (LIKE public.orders INCLUDING ALL)")
        conn.execute("INSERT INTO public.orders_per_row (tenant_id, item, amount, created_at) "
                     "SELECT tenant_id, item, amount, created_at FROM public.orders ORDER BY id")
    _pg.log(f"{TENANTS * ROWS_PER_TENANT} orders of {TENANTS} tenants, twice, loaded in {time.monotonic() - t0:.1f} s")


def module(server, module_name, **args):
    """Run one of the collection's modules on the bench database, as a user would."""
    args.update(login_host=server.host, login_port=server.port, login_user="postgres", login_db="bench")
    with tempfile.TemporaryDirectory() as workdir:
        os.chmod(workdir, 0o755)
        seconds, result = _pg.run_task(workdir, {f"selfbase.platform.{module_name}": args})
    _pg.log(f"{module_name} ran in {seconds:.1f} s")
    return result


def isolate(server):
    """The module makes both tables tenant-scoped; orders_per_row then gets the per-row policy instead."""
    result = module(server, "tenant_table", tables=[dict(name=t, index_columns=["created_at"])
                                                    for t in ("orders", "orders_per_row")])
    with server.connect() as conn:
        conn.execute("VACUUM (ANALYZE) public.orders")
        # every page in shared buffers: no role pays for reading them first
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        conn.execute("DROP POLICY selfbase_tenant ON public.orders_per_row")
        conn.execute(PER_ROW)
        for t in ("orders", "orders_per_row"):
            conn.execute(f"SELECT pg_prewarm('public.{t}'), pg_prewarm('public.{t}_tenant_id_tenant_idx')")
    return result["actions"]


def verify(server, table):
    """The app sees its tenant's rows only, the same as the owner sees when filtering on it; plans per mode."""
    out = {}
    for mode, user in zip(MODES, ROLES):
        with server.connect(user=user) as conn:
            conn.execute("SELECT set_config('app.tenant_id', md5('42'), false)")
            queries = {k: q.replace("tid", "md5('42')::uuid").replace("public.orders", "public." + table)
                       for k, q in QUERIES.items()}
            out[mode] = {k: conn.execute(q).fetchall() for k, q in queries.items()}
            out[mode]["plan"] = [r["QUERY PLAN"] for r in conn.execute("EXPLAIN " + queries["recent"])]
            if mode == "app":
                assert conn.execute(f"SELECT count(DISTINCT tenant_id) AS n FROM public.{table}").fetchone()["n"] == 1
    assert out["app"]["recent"] == out["owner"]["recent"] == out["bypass"]["recent"]
    assert out["app"]["month"] == out["owner"]["month"] and out["app"]["recent"]
    return {mode: out[mode]["plan"] for mode in MODES}


def timed(server, rounds, batch):
    """Mean time (us) of each query per policy and role, minus the same loop without the query."""
    pairs = [(policy, mode, role) for policy in POLICIES for mode, role in zip(MODES, ROLES)]
    with server.connect() as conn:
        def loop(query):
            return _pg.timed_batches(conn, [(role, query.replace("public.orders", "public." + POLICIES[policy]))
                                            for policy, _mode, role in pairs], rounds, batch, TENANTS)

        empty = loop("")
        out = dict((policy, {}) for policy in POLICIES)
        for name, query in QUERIES.items():
            used = loop("PERFORM * FROM (" + query + ") q;")
            us = {}
            for (policy, mode, _role), u, e in zip(pairs, used, empty):
                us.setdefault(policy, {})[mode] = round(u - e, 2)
            for policy in POLICIES:
                u = us[policy]
                out[policy][name] = dict(us=u, overhead_pct_vs_owner=overhead(u["app"], u["owner"]),
                                         overhead_pct_vs_bypass=overhead(u["app"], u["bypass"]))
    return out


def end_to_end(server, rounds, seconds, clients):
    """pgbench, as an application sends the queries: prepared, the tenant id as a parameter; transactions per
    second of each policy and role, in short rounds with every pair run back to back (each first in turn)."""
    pairs = [(policy, mode, role) for policy in POLICIES for mode, role in zip(MODES[:2], ROLES[:2])]
    tps = dict((pair[:2], []) for pair in pairs)
    command = None
    for r in range(rounds):
        for policy, mode, role in pairs[r % len(pairs):] + pairs[:r % len(pairs)]:
            script = ("\\set n random(1, %d)\n" % TENANTS
                      + "SELECT set_config('app.tenant_id', md5(:n::text), false) AS tid \\gset\n"
                      + "".join(q.replace("tid", ":tid").replace("public.orders", "public." + POLICIES[policy]) + ";\n"
                                for q in QUERIES.values()))
            run = server.pgbench(script, role, clients, seconds, f"{policy}-{mode}")
            tps[(policy, mode)].append(run["tps"])
            command = run["command"]
    out = {}
    for policy in POLICIES:
        app, owner = tps[(policy, "app")], tps[(policy, "owner")]
        losses = sorted(round((o - a) * 100.0 / o, 2) for a, o in zip(app, owner))
        out[policy] = dict(tps_app=app, tps_owner=owner, overhead_pct_median=losses[len(losses) // 2],
                           overhead_pct_rounds=losses)
    return out, command


def overhead(rls, base):
    return round((rls - base) * 100.0 / base, 2)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20, help="rounds of every role and query")
    parser.add_argument("--batch", type=int, default=300, help="queries per role per round")
    parser.add_argument("--e2e-rounds", type=int, default=8, help="pgbench rounds of every policy and role")
    parser.add_argument("--seconds", type=int, default=2, help="duration of each pgbench run")
    parser.add_argument("--clients", type=int, default=2, help="pgbench clients")
    args = parser.parse_args()
    with _pg.Server() as server:
        _pg.log(f"server on {server.host} port {server.port}")
        with server.connect("postgres") as conn:
            conn.execute("CREATE DATABASE bench")
        module(server, "platform_schema")
        load(server)
        actions = isolate(server)
        _pg.create_login(server, "bench_app", "selfbase_app")
        _pg.create_login(server, "bench_bypass", "selfbase_app", "BYPASSRLS")
        plans = verify(server, "orders")
        verify(server, "orders_per_row")
        runs = timed(server, args.rounds, args.batch)
        e2e, command = end_to_end(server, args.e2e_rounds, args.seconds, args.clients)
        machine = _pg.machine(server)

    rows = []
    for policy, result in runs.items():
        for name, r in result.items():
            rows.append([policy, name, r["us"]["app"], r["us"]["owner"], r["us"]["bypass"],
                         r["overhead_pct_vs_owner"], r["overhead_pct_vs_bypass"]])
    print()
    _pg.table(rows, ["policy", "query", "app us", "owner us", "bypass us", "overhead vs owner %",
                     "overhead vs bypass %"])
    print()
    _pg.table([[policy, r["overhead_pct_median"], " ".join(map(str, r["overhead_pct_rounds"]))]
               for policy, r in e2e.items()], ["policy", "pgbench: tps lost vs owner, median %", "per round %"])
    worst = e2e["initplan"]["overhead_pct_median"]
    print(f"\nmodule's policy, end to end: {worst} % fewer transactions/s than the owner; target <= "
          f"{TARGET_OVERHEAD_PCT} %")
    _pg.write_results("tenant_table", {
        "benchmark": "bench_tenant_table",
        "command": "python benchmarks/bench_tenant_table.py --rounds %d --batch %d --e2e-rounds %d --seconds %d "
                   "--clients %d" % (args.rounds, args.batch, args.e2e_rounds, args.seconds, args.clients),
        "data_set": {"tenants": TENANTS, "rows": TENANTS * ROWS_PER_TENANT},
        "module_actions": actions,
        "queries": QUERIES,
        "server_side": runs,
        "end_to_end": e2e,
        "pgbench_command": command,
        "overhead_pct_module_policy_end_to_end": worst,
        "target_overhead_pct": TARGET_OVERHEAD_PCT,
        "met": worst <= TARGET_OVERHEAD_PCT,
        "plans_recent": plans,
        "machine": machine,
    })


if __name__ == "__main__":
    main()
