"""Benchmark: reconcile 10,000 tenants (1 domain and 2 quota overrides each)
with selfbase.platform.tenants through ansible-playbook, against the obvious
alternative, a loop of community.postgresql.postgresql_query tasks.

Run: .venv/bin/python benchmarks/bench_tenants.py   (as root; see benchmarks/README.md)
Writes benchmarks/results/tenants.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import _pg

N = int(os.environ.get("BENCH_TENANTS", 10_000))
LOOP_N = int(os.environ.get("BENCH_LOOP_TENANTS", 200))
CHANGED_SHARE = 0.01
# Writes are measured here, so the server keeps its default durability.
DURABLE = {"shared_buffers": "512MB", "max_wal_size": "4GB", "jit": "off"}
COLLECTIONS = _pg.ROOT / ".cache" / "collections"

# One tenant per task: upsert the tenant, its domain and its two overrides.
LOOP_SQL = """
WITH t AS (
  INSERT INTO platform.tenants (slug, name, plan_code) VALUES (%(slug)s, %(name)s, 'pro')
  ON CONFLICT (slug) DO UPDATE SET name = EXCLUDED.name RETURNING id),
d AS (
  INSERT INTO platform.tenant_domains (tenant_id, domain, is_primary) SELECT id, %(domain)s, true FROM t
  ON CONFLICT (domain) DO NOTHING),
q AS (
  INSERT INTO platform.tenant_quotas (tenant_id, metric, limit_value, period, mode, overage_unit_price)
  SELECT id, v.metric, v.limit_value, 'month', v.mode, v.price FROM t,
         (VALUES ('api_requests', %(api_limit)s::bigint, 'hard', NULL::numeric),
                 ('storage_bytes', 10000000000, 'overage', 0.00000002)) v(metric, limit_value, mode, price)
  ON CONFLICT (tenant_id, metric) DO UPDATE SET limit_value = EXCLUDED.limit_value)
SELECT id::text FROM t
"""


def desired(n, renamed=0):
    return [dict(slug="tenant-%05d" % i, name="Tenant %d%s" % (i, " (renamed)" if i < renamed else ""), plan="pro",
                 domains=["tenant-%05d.example.com" % i],
                 quotas=[dict(metric="api_requests", limit="%dk" % (100 + i % 7 + (1 if i < renamed else 0))),
                         dict(metric="storage_bytes", limit="10GB", mode="overage", overage_price="0.00000002")])
            for i in range(n)]


class Playbooks:
    def __init__(self, server, workdir):
        self.server = server
        self.workdir = workdir
        self.login = dict(login_host=server.host, login_port=server.port, login_user="postgres", login_db="bench")

    def run(self, task, extra_vars=None, check=False):
        path = os.path.join(self.workdir, "play.yml")
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
            sys.exit(f"playbook failed: {json.dumps(result)[:2000]}\n{proc.stderr[-2000:]}")
        return elapsed, result

    def tenants(self, tenants, check=False, **args):
        """The module, with the list read from a JSON file as an inventory export would be."""
        data = os.path.join(self.workdir, "tenants.json")
        with open(data, "w", encoding="utf-8") as fh:
            json.dump(tenants, fh)
        task = {"selfbase.platform.tenants": dict(self.login, tenants="{{ lookup('file', '%s') | from_json }}" % data,
                                                  **args)}
        return self.run(task, check=check)


def main():
    rows, runs = [], {}
    with _pg.Server(settings=DURABLE) as server, tempfile.TemporaryDirectory() as workdir:
        with server.connect("postgres") as conn:
            conn.execute("CREATE DATABASE bench")
        books = Playbooks(server, workdir)
        books.run({"selfbase.platform.platform_schema": books.login})
        with server.connect() as conn:
            conn.execute("INSERT INTO platform.plans (code, name) VALUES ('pro', 'Pro')")

        def record(name, elapsed, result, tenants):
            runs[name] = dict(seconds=round(elapsed, 2), tenants=tenants, changed=result.get("changed"),
                              counts=result.get("counts"))
            rows.append((name, tenants, round(elapsed, 2), round(elapsed / tenants * 1000, 3),
                         json.dumps(result.get("counts", {}))))
            _pg.log(f"{name}: {elapsed:.2f} s")

        record("first converge", *books.tenants(desired(N)), N)
        record("no-change converge", *books.tenants(desired(N)), N)
        record("1% changed", *books.tenants(desired(N, renamed=int(N * CHANGED_SHARE))), N)
        record("no-change, check mode", *books.tenants(desired(N, renamed=int(N * CHANGED_SHARE)), check=True), N)

        # The alternative: one postgresql_query task per tenant, into an empty database.
        with server.connect() as conn:
            conn.execute("TRUNCATE platform.tenants CASCADE")
        items = [dict(slug="loop-%05d" % i, name="Loop %d" % i, domain="loop-%05d.example.com" % i,
                      api_limit=(100 + i % 7) * 1000) for i in range(LOOP_N)]
        data = os.path.join(workdir, "loop.json")
        with open(data, "w", encoding="utf-8") as fh:
            json.dump(items, fh)
        loop_task = {"community.postgresql.postgresql_query": dict(books.login, query=LOOP_SQL,
                                                                   named_args="{{ item }}"),
                     "loop": "{{ lookup('file', '%s') | from_json }}" % data}
        record("postgresql_query loop", *books.run(loop_task), LOOP_N)
        machine = _pg.machine(server) | {"server_settings": DURABLE}

    per_module = runs["first converge"]["seconds"] / N
    per_loop = runs["postgresql_query loop"]["seconds"] / LOOP_N
    ratio = per_loop / per_module
    _pg.table(rows, ["run", "tenants", "seconds", "ms/tenant", "counts"])
    print(f"\npostgresql_query loop: {per_loop * 1000:.1f} ms per tenant; tenants module: {per_module * 1000:.3f} ms "
          f"per tenant; the loop is {ratio:.0f}x slower per tenant")
    targets = {"first_converge_s_below": 20, "no_change_s_below": 5}
    _pg.write_results("tenants", {
        "benchmark": "tenants",
        "description": f"selfbase.platform.tenants with {N} tenants (1 domain and 2 quota overrides each) through "
                       "ansible-playbook, list read from a JSON file; versus one community.postgresql.postgresql_query "
                       f"task per tenant for {LOOP_N} tenants",
        "machine": machine,
        "targets": targets,
        "targets_met": {"first_converge": runs["first converge"]["seconds"] < 20,
                        "no_change": runs["no-change converge"]["seconds"] < 5},
        "runs": runs,
        "per_tenant_ms": {"tenants_module": round(per_module * 1000, 3), "postgresql_query_loop": round(per_loop * 1000, 1)},
        "loop_to_module_ratio": round(ratio, 1),
    })


if __name__ == "__main__":
    main()
