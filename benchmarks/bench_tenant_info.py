"""Benchmark: selfbase.platform.tenant_info over 10,000 tenants with usage (5 quotas each: requests and bandwidth
by month, storage, members and projects for all time; a tenant in 20 with its own override; 1,000,000 usage
events over 60 days, rolled up by the trigger).

The module's query computes every tenant's usage at once. The alternative, measured in the same run on the same
data, is the query the module ran before: platform.quota_status() called once per tenant. Both are timed in SQL
(median of 3) and checked to return the same rows; then the module end to end through ansible-playbook, and the
module's own process alone (run as a script), which shows what ansible-playbook adds for a result this large.

Target (issue 39): the module end to end under 5 s for 10,000 tenants.

Run: .venv/bin/python benchmarks/bench_tenant_info.py   (as root; see benchmarks/README.md)
Writes benchmarks/results/tenant_info.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import _pg

sys.path.insert(0, str(_pg.ROOT / "plugins" / "module_utils"))
import tenant_info  # noqa: E402  pylint: disable=wrong-import-position

TARGET_S = 5.0
ROUNDS = 3
STATUSES = [s for s in tenant_info.STATUSES if s != "deleted"]

# the module's query before: quota_status() once per tenant, in a lateral join
PER_TENANT = """
SELECT t.id, t.slug, t.name, t.status, t.plan_code AS plan, t.billing_cycle, t.trial_ends_at, t.created_at,
       COALESCE((SELECT json_agg(json_build_object('domain', d.domain, 'primary', d.is_primary,
                                                   'verified', d.verified)
                                 ORDER BY d.is_primary DESC, d.domain)
                   FROM platform.tenant_domains d WHERE d.tenant_id = t.id), '[]'::json) AS domains,
       COALESCE(u.usage, '[]'::json) AS usage, COALESCE(u.worst, 'ok') AS quota_status
  FROM platform.tenants t
  LEFT JOIN LATERAL (
    SELECT json_agg(json_build_object('metric', q.metric, 'used', q.used, 'limit', q.limit_value,
                                      'percent', q.percent, 'status', q.status, 'mode', q.mode,
                                      'period', q.period) ORDER BY q.metric) AS usage,
           CASE WHEN bool_or(q.status = 'exceeded') THEN 'exceeded'
                WHEN bool_or(q.status = 'warning') THEN 'warning'
                ELSE 'ok' END AS worst
      FROM platform.quota_status(t.id) q
  ) u ON true
 WHERE t.status = ANY(%(status)s)
   AND (%(slugs)s::text[] IS NULL OR t.slug = ANY(%(slugs)s::text[]))
   AND (%(plans)s::text[] IS NULL OR t.plan_code = ANY(%(plans)s::text[]))
 ORDER BY t.slug"""


def _timed_sql(server, run):
    seconds, rows = [], None
    with server.connect() as conn:
        for _r in range(ROUNDS):
            started = time.perf_counter()
            rows = run(conn)
            seconds.append(time.perf_counter() - started)
    return round(_pg.median(seconds), 3), rows


def _module_alone(workdir, login):
    """Seconds of the module's own process, run as a script with its arguments in a file (no ansible-playbook)."""
    args = os.path.join(workdir, "args.json")
    with open(args, "w", encoding="utf-8") as fh:
        json.dump({"ANSIBLE_MODULE_ARGS": login}, fh)
    path = _pg.COLLECTIONS / "ansible_collections" / "selfbase" / "platform" / "plugins" / "modules" / "tenant_info.py"
    env = dict(os.environ, PYTHONPATH=str(_pg.COLLECTIONS))
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(path), args], env=env, capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - started
    assert json.loads(proc.stdout)["count"] == _pg.TENANTS, proc.stdout[-2000:]
    return elapsed


def main():
    with _pg.Server() as server, tempfile.TemporaryDirectory() as workdir:
        os.chmod(workdir, 0o755)
        with server.connect("postgres") as conn:
            conn.execute("CREATE DATABASE bench")
        login = dict(login_host=server.host, login_port=server.port, login_user="postgres", login_db="bench")
        _pg.run_task(workdir, {"selfbase.platform.platform_schema": login})
        data = _pg.load_data(server)
        args = dict(status=STATUSES, slugs=None, plans=None)
        per_tenant_s, old = _timed_sql(server, lambda c: c.execute(PER_TENANT, args).fetchall())
        set_based_s, new = _timed_sql(server, lambda c: tenant_info.read_tenants(c, STATUSES, None, None, True))
        assert len(new) == _pg.TENANTS and new == old, "the two queries disagree"
        assert any(u["used"] for t in new for u in t["usage"] if u["metric"] == "api_requests")
        with server.connect() as conn:
            plan = [r["QUERY PLAN"] for r in conn.execute(
                "EXPLAIN (ANALYZE, BUFFERS) " + tenant_info.build_query(True), args).fetchall()]
        module = sorted((_pg.run_task(workdir, {"selfbase.platform.tenant_info": login}) for _r in range(ROUNDS)),
                        key=lambda r: r[0])
        module_s, result = module[len(module) // 2]
        assert result["count"] == _pg.TENANTS
        alone_s = _pg.median([_module_alone(workdir, login) for _r in range(ROUNDS)])
        machine = _pg.machine(server)

    runs = {
        "SQL: quota_status() per tenant (the query before; median of 3)": per_tenant_s,
        "SQL: set-based (the module's query; median of 3)": set_based_s,
        "tenant_info module end to end (ansible-playbook; median of 3)": round(module_s, 2),
        "tenant_info module's own process (run as a script; median of 3)": round(alone_s, 2),
    }
    rows = [(name, _pg.TENANTS, seconds) for name, seconds in runs.items()]
    _pg.table(rows, ["run", "tenants", "seconds"])
    ratio = round(per_tenant_s / set_based_s, 1)
    print(f"\nset-based query: {ratio}x faster than quota_status() per tenant; module end to end {module_s:.2f} s "
          f"(target < {TARGET_S} s: {'met' if module_s < TARGET_S else 'missed'}), of which the module's own process "
          f"{alone_s:.2f} s and ansible-playbook's handling of its {len(json.dumps(result)) / 2**20:.1f} MiB result "
          f"the rest")
    _pg.write_results("tenant_info", {
        "benchmark": "tenant_info",
        "description": __doc__.split("\n\n", maxsplit=1)[0],
        "command": ".venv/bin/python benchmarks/bench_tenant_info.py",
        "machine": machine,
        "data_set": data,
        "targets": {"module_seconds_below": TARGET_S},
        "targets_met": {"module": module_s < TARGET_S},
        "runs": runs,
        "speedup_set_based_over_per_tenant": ratio,
        "module_result_bytes": len(json.dumps(result)),
        "controller_seconds": round(module_s - alone_s, 2),
        "explain_analyze_set_based": plan,
    })


if __name__ == "__main__":
    main()
