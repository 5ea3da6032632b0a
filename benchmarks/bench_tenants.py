"""Benchmark: reconcile 10,000 tenants (1 domain and 2 quota overrides each)
through playbooks/tenants.yml, the way operators run it: from the inventory's
data file (data/tenants.yml, read by the module's action plugin), and from
inventory variables (group_vars/all/tenants.yml templated into the task); then
100,000 tenants through the data file, with the peak memory of the run; and the
obvious alternative, a loop of community.postgresql.postgresql_query tasks.

Run: .venv/bin/python benchmarks/bench_tenants.py   (as root; see benchmarks/README.md)
BENCH_TENANTS, BENCH_BIG_TENANTS (0 skips it) and BENCH_LOOP_TENANTS change the sizes.
Writes benchmarks/results/tenants.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

import _pg

try:
    from yaml import CSafeDumper as Dumper
except ImportError:
    from yaml import SafeDumper as Dumper

N = int(os.environ.get("BENCH_TENANTS", 10_000))
BIG_N = int(os.environ.get("BENCH_BIG_TENANTS", 100_000))
LOOP_N = int(os.environ.get("BENCH_LOOP_TENANTS", 200))
CHANGED_SHARE = 0.01
# Writes are measured here, so the server keeps its default durability.
DURABLE = {"shared_buffers": "512MB", "max_wal_size": "4GB", "jit": "off"}
COLLECTIONS = _pg.COLLECTIONS

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
        return _pg.run_task(self.workdir, task, check=check, extra_vars=extra_vars)

    def inventory(self, tenants, via):
        """An inventory like inventories/<env>: the tenants in data/tenants.yml ("file"), or in
        group_vars/all/tenants.yml as selfbase_tenants ("vars"), written as operators write YAML."""
        inv = os.path.join(self.workdir, f"inventory-{via}")
        for sub in ("group_vars/all", "data"):
            os.makedirs(os.path.join(inv, sub), exist_ok=True)
        with open(os.path.join(inv, "hosts.yml"), "w", encoding="utf-8") as fh:
            # this machine as the db host; the module logs in through PG* (no become: the server trusts root's
            # login as postgres on its socket)
            yaml.safe_dump({"db": {"hosts": {"bench-db": {"ansible_connection": "local", "ansible_become": False,
                                                          "ansible_python_interpreter": sys.executable}}}}, fh)
        main = {"selfbase_db_name": "bench", "selfbase_tenants_exclusive": False}
        if via == "json":
            main["selfbase_tenants_file"] = "{{ inventory_dir }}/data/tenants.json"
            target = os.path.join(inv, "data", "tenants.json")
            with open(target, "w", encoding="utf-8") as fh:
                json.dump({"tenants": tenants}, fh)
        elif via == "file":
            main["selfbase_tenants_file"] = "{{ inventory_dir }}/data/tenants.yml"
            target, doc = os.path.join(inv, "data", "tenants.yml"), {"tenants": tenants}
        else:
            target, doc = os.path.join(inv, "group_vars", "all", "tenants.yml"), {"selfbase_tenants": tenants}
        with open(os.path.join(inv, "group_vars", "all", "main.yml"), "w", encoding="utf-8") as fh:
            yaml.safe_dump(main, fh)
        if via != "json":
            with open(target, "w", encoding="utf-8") as fh:
                yaml.dump(doc, fh, Dumper=Dumper, default_flow_style=False, sort_keys=False)
        return inv, os.path.getsize(target)

    def tenants_playbook(self, tenants, via, check=False, cold=False):
        """playbooks/tenants.yml against that inventory; seconds, result, peak RSS (MiB) of any process.
        cold: without the action plugin's cache of parsed YAML (as on a fresh controller)."""
        inv, size = self.inventory(tenants, via)
        home = os.path.join(self.workdir, "ansible-home")
        if cold:
            shutil.rmtree(home, ignore_errors=True)
        env = dict(os.environ, ANSIBLE_HOME=home, ANSIBLE_CONFIG=str(_pg.ROOT / "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
                   ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", PGHOST=self.server.host, PGPORT=str(self.server.port),
                   PGUSER="postgres")
        cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", inv,
               str(_pg.ROOT / "playbooks" / "tenants.yml")] + ["--check"] * check
        # a child of its own, so that its peak memory is measured alone
        probe = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
                 "sys.stdout.write(p.stdout); sys.stderr.write(p.stderr); "
                 "print('MAXRSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
                 "sys.exit(p.returncode)")
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", probe] + cmd, env=env, capture_output=True, text=True,
                              check=False, cwd=str(_pg.ROOT))
        elapsed = time.monotonic() - started
        rss = int(proc.stderr.rsplit("MAXRSS", 1)[1].split()[0]) / 1024
        tasks = json.loads(proc.stdout)["plays"][0]["tasks"]
        result = [t for t in tasks if t["task"]["name"] == "Reconcile the tenants"][0]["hosts"]["bench-db"]
        if result.get("failed") or proc.returncode:
            sys.exit(f"playbook failed: {json.dumps(result)[:2000]}\n{proc.stderr[-2000:]}")
        return elapsed, result, rss, size


def main():
    rows, runs = [], {}
    with _pg.Server(settings=DURABLE) as server, tempfile.TemporaryDirectory() as workdir:
        with server.connect("postgres") as conn:
            conn.execute("CREATE DATABASE bench")
        books = Playbooks(server, workdir)
        books.run({"selfbase.platform.platform_schema": books.login})
        with server.connect() as conn:
            conn.execute("INSERT INTO platform.plans (code, name) VALUES ('pro', 'Pro')")

        def record(name, tenants, elapsed, result, rss=None, size=None):
            runs[name] = dict(seconds=round(elapsed, 2), tenants=tenants, changed=result.get("changed"),
                              counts=result.get("counts"), max_rss_mib=rss and round(rss),
                              data_file_mib=size and round(size / 2 ** 20, 1))
            rows.append((name, tenants, round(elapsed, 2), round(elapsed / tenants * 1000, 3),
                         rss and round(rss), json.dumps(result.get("counts", {}))))
            _pg.log(f"{name}: {elapsed:.2f} s")

        def truncate():
            with server.connect() as conn:
                conn.execute("TRUNCATE platform.tenants CASCADE")

        def median(*args, times=3, **kwargs):
            """The median (by time) of `times` runs that change nothing."""
            results = sorted((books.tenants_playbook(*args, **kwargs) for _n in range(times)), key=lambda r: r[0])
            return results[times // 2]

        base, renamed = desired(N), desired(N, renamed=int(N * CHANGED_SHARE))
        for via, label in (("file", "data file"), ("vars", "inventory variables")):
            truncate()
            record(f"{label}: first converge", N, *books.tenants_playbook(desired(N), via, cold=True))
            record(f"{label}: no-change converge (median of 3)", N, *median(base, via))
            if via == "file":
                record(f"{label}: no-change, fresh controller (no parse cache; median of 3)", N,
                       *median(base, via, cold=True))
                record("data file as JSON: no-change converge (median of 3)", N, *median(base, "json"))
                truncate()
                record("data file as JSON: first converge", N, *books.tenants_playbook(base, "json"))
            record(f"{label}: 1% changed", N, *books.tenants_playbook(renamed, via))
            record(f"{label}: no-change, check mode", N, *books.tenants_playbook(renamed, via, check=True))

        if BIG_N:
            truncate()
            big = desired(BIG_N)
            record(f"{BIG_N:,} tenants, data file: first converge", BIG_N, *books.tenants_playbook(big, "file", cold=True))
            record(f"{BIG_N:,} tenants, data file: no-change converge", BIG_N, *books.tenants_playbook(big, "file"))

        # The alternative: one postgresql_query task per tenant, into an empty database.
        truncate()
        items = [dict(slug="loop-%05d" % i, name="Loop %d" % i, domain="loop-%05d.example.com" % i,
                      api_limit=(100 + i % 7) * 1000) for i in range(LOOP_N)]
        data = os.path.join(workdir, "loop.json")
        with open(data, "w", encoding="utf-8") as fh:
            json.dump(items, fh)
        loop_task = {"community.postgresql.postgresql_query": dict(books.login, query=LOOP_SQL,
                                                                   named_args="{{ item }}"),
                     "loop": "{{ lookup('file', '%s') | from_json }}" % data}
        record("postgresql_query loop", LOOP_N, *books.run(loop_task))
        machine = _pg.machine(server) | {"server_settings": DURABLE}

    first, noop = runs["data file: first converge"], runs["data file: no-change converge (median of 3)"]
    per_module = first["seconds"] / N
    per_loop = runs["postgresql_query loop"]["seconds"] / LOOP_N
    ratio = per_loop / per_module
    _pg.table(rows, ["run", "tenants", "seconds", "ms/tenant", "max RSS MiB", "counts"])
    print(f"\nplaybooks/tenants.yml, {N} tenants: data file {first['seconds']} s first, {noop['seconds']} s no change; "
          f"inventory variables {runs['inventory variables: first converge']['seconds']} s first, "
          f"{runs['inventory variables: no-change converge (median of 3)']['seconds']} s no change")
    print(f"postgresql_query loop: {per_loop * 1000:.1f} ms per tenant; tenants module: {per_module * 1000:.3f} ms "
          f"per tenant; the loop is {ratio:.0f}x slower per tenant")
    targets = {"first_converge_s_below": 10, "no_change_s_below": 5}
    _pg.write_results("tenants", {
        "benchmark": "tenants",
        "description": f"playbooks/tenants.yml with {N} tenants (1 domain and 2 quota overrides each), from the "
                       "inventory's data file (tenants_file, action plugin) and from inventory variables; "
                       f"{BIG_N} tenants from the data file; versus one community.postgresql.postgresql_query "
                       f"task per tenant for {LOOP_N} tenants. max_rss_mib: the largest process of the run.",
        "machine": machine,
        "targets": targets,
        "targets_met": {"first_converge": first["seconds"] < 10, "no_change": noop["seconds"] < 5},
        "runs": runs,
        "per_tenant_ms": {"tenants_module": round(per_module * 1000, 3), "postgresql_query_loop": round(per_loop * 1000, 1)},
        "loop_to_module_ratio": round(ratio, 1),
    })


if __name__ == "__main__":
    main()
