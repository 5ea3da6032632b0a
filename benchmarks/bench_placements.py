"""Benchmark: place 150 tenants on a shared cluster (a database and login each, one migration file) through
selfbase.platform.tenant_placement, the first run, a run that changes nothing and that run in check mode; and the
obvious alternative measured in the same run, a loop of community.postgresql tasks (postgresql_user,
postgresql_db, postgresql_script per tenant) on the same server.

Then the routing layer: a query on an open connection, and a new connection with one query, to a tenant's
database through PgBouncer with the routes tenant_routes wrote, against the same directly, in one run.

Run: .venv/bin/python benchmarks/bench_placements.py   (as root; see benchmarks/README.md)
BENCH_PLACEMENTS (150) and BENCH_LOOP_PLACEMENTS (30) change the sizes.
Writes benchmarks/results/placements.json.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import psycopg

import _pg

N = int(os.environ.get("BENCH_PLACEMENTS", 150))
LOOP_N = int(os.environ.get("BENCH_LOOP_PLACEMENTS", 30))
# CREATE DATABASE is measured: the server keeps its default durability.
DURABLE = {"shared_buffers": "256MB", "jit": "off"}
LATENCY_ROUNDS = int(os.environ.get("BENCH_ROUTE_ROUNDS", 5))
QUERIES = 2000
CONNECTS = 200
MIGRATION = "CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL, created timestamptz DEFAULT now());\n"


def _timed(connect, rounds):
    """Median over rounds of: microseconds a SELECT 1 on an open connection, and a connect + SELECT 1 + close."""
    query, setup = [], []
    for _r in range(rounds):
        with connect() as c:
            started = time.perf_counter()
            for _i in range(QUERIES):
                c.execute("SELECT 1")
            query.append((time.perf_counter() - started) / QUERIES * 1e6)
        started = time.perf_counter()
        for _i in range(CONNECTS):
            with connect() as c:
                c.execute("SELECT 1")
        setup.append((time.perf_counter() - started) / CONNECTS * 1e6)
    return round(_pg.median(query), 1), round(_pg.median(setup), 1)


def route_latency(server, login, workdir):
    """Through PgBouncer (session pooling, TCP on 127.0.0.1, as an application host's router) against a direct TCP
    connection to the server, alternating, for one placed tenant; both authenticate with SCRAM."""
    password = "pw-0-not-a-secret"
    with open(os.path.join(server.datadir, "pg_hba.conf"), "w", encoding="utf-8") as fh:
        fh.write("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
    opts = f"-p {server.port} -k {server.host} -c listen_addresses=127.0.0.1"
    opts += "".join(f" -c {key}={value}" for key, value in server.settings.items())
    _pg.pgserver.as_postgres([f"{server.bin}/pg_ctl", "-D", server.datadir, "-w", "-m", "fast", "-l",
                              os.path.join(server.base, "log"), "restart", "-o", opts])
    with _pg.pgserver.PgBouncer({"tenant_t0000": password}) as bouncer:
        _pg.run_task(workdir, {"selfbase.platform.tenant_routes": dict(login, dest=bouncer.routes, cluster_addresses={
            "shared-1": {"host": "127.0.0.1", "port": server.port}})})
        bouncer.signal(1)
        time.sleep(1)

        def direct():
            return psycopg.connect(host="127.0.0.1", port=server.port, dbname="tenant_t0000", user="tenant_t0000",
                                   password=password, autocommit=True)

        def routed():
            return bouncer.connect("t0000", "tenant_t0000", password)
        d, r = [], []
        for _round in range(LATENCY_ROUNDS):  # alternate, the machine's speed drifts
            d.append(_timed(direct, 1))
            r.append(_timed(routed, 1))
    result = dict(rounds=LATENCY_ROUNDS, queries_per_round=QUERIES, connects_per_round=CONNECTS,
                  direct_query_us=_pg.median([x[0] for x in d]), routed_query_us=_pg.median([x[0] for x in r]),
                  direct_connect_us=_pg.median([x[1] for x in d]), routed_connect_us=_pg.median([x[1] for x in r]))
    result["query_ratio"] = round(result["routed_query_us"] / result["direct_query_us"], 2)
    result["connect_ratio"] = round(result["routed_connect_us"] / result["direct_connect_us"], 2)
    _pg.log(f"route latency: {json.dumps(result)}")
    return result


def main():
    rows, runs = [], {}
    with _pg.Server(settings=DURABLE) as server, tempfile.TemporaryDirectory() as workdir:
        os.chmod(workdir, 0o755)
        migration = os.path.join(workdir, "001_items.sql")
        with open(migration, "w", encoding="utf-8") as fh:
            fh.write(MIGRATION)
        with server.connect("postgres") as conn:
            conn.execute("CREATE DATABASE bench")
        login = dict(login_host=server.host, login_port=server.port, login_user="postgres", login_db="bench")
        _pg.run_task(workdir, {"selfbase.platform.platform_schema": login})
        with server.connect("bench") as conn:
            for i in range(N):
                conn.execute("INSERT INTO platform.tenants (slug, name) VALUES (%s, %s)", (f"t{i:04d}", f"T{i}"))
        _pg.run_task(workdir, {"selfbase.platform.tenant_cluster": dict(
            login, name="shared-1", tier="database", host=server.host, port=server.port, max_databases=N)})
        task = {"selfbase.platform.tenant_placement": dict(login, migrations=[migration], placements=[
            dict(tenant=f"t{i:04d}", password=f"pw-{i}-not-a-secret") for i in range(N)])}

        def record(name, count, elapsed, result):
            runs[name] = dict(seconds=round(elapsed, 2), tenants=count, changed=result.get("changed"))
            rows.append((name, count, round(elapsed, 2), round(elapsed / count * 1000, 1), result.get("changed")))
            _pg.log(f"{name}: {elapsed:.2f} s")

        record("tenant_placement: first run", N, *_pg.run_task(workdir, task))
        noop = sorted((_pg.run_task(workdir, task) for _n in range(3)), key=lambda r: r[0])[1]
        record("tenant_placement: no change (median of 3)", N, *noop)
        record("tenant_placement: no change, check mode", N, *_pg.run_task(workdir, task, check=True))

        # the alternative: three community.postgresql tasks per tenant
        items = [dict(name=f"loop_{i:04d}", password=f"pw-{i}-not-a-secret") for i in range(LOOP_N)]
        data = os.path.join(workdir, "loop.json")
        with open(data, "w", encoding="utf-8") as fh:
            json.dump(items, fh)
        pg = dict(login_host=server.host, login_port=server.port, login_user="postgres")
        loop = "{{ lookup('file', '%s') | from_json }}" % data
        play = [{"community.postgresql.postgresql_user": dict(pg, name="{{ item.name }}", password="{{ item.password }}",
                                                              conn_limit=20), "loop": loop, "no_log": True},
                {"community.postgresql.postgresql_db": dict(pg, name="{{ item.name }}", owner="{{ item.name }}"),
                 "loop": loop},
                {"community.postgresql.postgresql_script": dict(pg, login_db="{{ item.name }}", path=migration),
                 "loop": loop}]
        for label in ("first run", "second run"):
            seconds = 0.0
            changed = False
            for step in play[:2] + (play[2:] if label == "first run" else []):
                elapsed, result = _pg.run_task(workdir, step)
                seconds += elapsed
                changed = changed or bool(result.get("changed"))
            record(f"community.postgresql loop: {label}", LOOP_N, seconds, dict(changed=changed))
        latency = route_latency(server, login, workdir)
        machine = _pg.machine(server) | {"server_settings": DURABLE}

    per = {k: v["seconds"] / v["tenants"] for k, v in runs.items()}
    first_ratio = per["community.postgresql loop: first run"] / per["tenant_placement: first run"]
    noop_ratio = per["community.postgresql loop: second run"] / per["tenant_placement: no change (median of 3)"]
    _pg.table(rows, ["run", "tenants", "seconds", "ms/tenant", "changed"])
    print(f"\nper tenant, the community.postgresql loop takes {first_ratio:.1f}x the module's time on a first run "
          f"and {noop_ratio:.1f}x on a run that changes nothing (the loop's second run skips its migration task)")
    print(f"through PgBouncer: a query {latency['routed_query_us']} us against {latency['direct_query_us']} us "
          f"directly ({latency['query_ratio']}x); a new connection and a query {latency['routed_connect_us']} us "
          f"against {latency['direct_connect_us']} us ({latency['connect_ratio']}x)")
    _pg.write_results("placements", dict(
        benchmark="placing tenants on a shared cluster: tenant_placement against a community.postgresql loop",
        tenants=N, loop_tenants=LOOP_N, migration=MIGRATION, runs=runs, route_latency=latency,
        ratios=dict(loop_over_module_first_run=round(first_ratio, 1), loop_over_module_no_change=round(noop_ratio, 1)),
        machine=machine))


if __name__ == "__main__":
    main()
