"""Edge metering: the agent's throughput and lag, and enforcement at the edge.

Measured in one run:
1. throughput: the agent (roles/host_services/files/metering/selfbase-meter, one process, one thread) reads a
   prepared log of --lines lines (default 5,000,000) of --tenants tenants (10,000) into a
   throwaway PostgreSQL server with the platform schema; lines per second of wall time and of the
   agent's own CPU time. The alternative, in the same run: one record_usage() call per request.
2. end-to-end lag: a writer appends --rate lines per second (2,000) to a log for --seconds (60) while
   the agent runs as its own process; a poller reads the recorded count every 0.1 s. Lag of a
   request = the time its count was visible in the database - the time its line was written.
3. edge (needs the Molecule scenario `metering` converged: `molecule converge -s metering`;
   skipped with --skip-edge): enforcement lag, from the request that crosses a hard quota to the
   first 429, and nginx's requests/s (wrk) with the agent stopped and running, alternated rounds.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.machinery
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import _pg

AGENT = _pg.ROOT / "roles" / "host_services" / "files" / "metering" / "selfbase-meter"


def load_agent():
    loader = importlib.machinery.SourceFileLoader("selfbase_meter", str(AGENT))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def prepare(server, tenants):
    with server.connect("postgres") as conn:
        conn.execute("DROP DATABASE IF EXISTS bench")
        conn.execute("CREATE DATABASE bench")
    with tempfile.TemporaryDirectory() as workdir:
        os.chmod(workdir, 0o755)
        _pg.run_task(workdir, {"selfbase.platform.platform_schema": server.login("bench")})
    with server.connect() as conn:
        conn.execute("INSERT INTO platform.tenants (slug, name) SELECT 't' || n, 't' || n "
                     "FROM generate_series(1, %s) n", (tenants,))
        conn.execute("CREATE ROLE meter_bench LOGIN IN ROLE selfbase_meter")
        conn.execute("CREATE ROLE app_bench LOGIN IN ROLE selfbase_app")


LINE = ('{"time":"%s","host":"t%d.bench.test","tenant":"t%d","remote_addr":"10.0.0.1","method":"GET",'
        '"uri":"/api/v1/items?page=%d","protocol":"HTTP/1.1","status":200,"bytes":%d,"request_length":412,'
        '"request_time":0.004,"upstream":"10.0.0.2:3000","upstream_status":"200","upstream_time":"0.004",'
        '"request_id":"%032x","bytes_sent":%d,"user_agent":"bench/1.0"}\n')


def write_log(path, lines, tenants, rate):
    """lines requests at `rate` per second, ending a minute ago; returns {tenant: (requests, bytes)}."""
    rng = random.Random(7)
    start = time.time() - 60 - lines / rate
    totals = {}
    stamps = {}
    with open(path, "w", encoding="ascii") as fh:
        buf = []
        for i in range(lines):
            t = rng.randrange(1, tenants + 1)
            size = rng.randrange(200, 4000)
            sec = int(start + i / rate)
            stamp = stamps.get(sec)
            if stamp is None:
                stamps.clear()
                stamp = stamps[sec] = datetime.datetime.fromtimestamp(sec, datetime.timezone.utc).strftime(
                    "%Y-%m-%dT%H:%M:%S+00:00")
            buf.append(LINE % (stamp, t, t, i % 50, size - 180, rng.getrandbits(128), size))
            r, b = totals.get(t, (0, 0))
            totals[t] = (r + 1, b + size)
            if len(buf) >= 10000:
                fh.write("".join(buf))
                buf.clear()
        fh.write("".join(buf))
    return totals


def agent_args(meter, logfile, workdir, server, extra=()):
    return meter.parse_args([f"--log={logfile}", f"--map-file={workdir}/quota.map",
                             f"--metrics-file={workdir}/metrics.prom",
                             f"--conninfo=host={server.host} port={server.port} dbname=bench user=meter_bench",
                             *extra])


def throughput(server, meter, workdir, lines, tenants):
    logfile = os.path.join(workdir, "access.json")
    t0 = time.monotonic()
    totals = write_log(logfile, lines, tenants, rate=2000)
    size = os.path.getsize(logfile)
    _pg.log(f"log of {lines} lines ({size / 1e6:.0f} MB, {len(totals)} tenants) written in "
            f"{time.monotonic() - t0:.0f} s")
    import psycopg  # pylint: disable=import-outside-toplevel
    args = agent_args(meter, logfile, workdir, server)
    agent = meter.Agent(args, lambda: psycopg.connect(args.conninfo, autocommit=True))
    agent.load_position()
    w0, c0 = time.monotonic(), time.process_time()
    while agent.step():
        pass
    wall, cpu = time.monotonic() - w0, time.process_time() - c0
    with server.connect() as conn:
        got = {int(r["slug"][1:]): (int(r["r"]), int(r["b"])) for r in conn.execute(
            "SELECT t.slug, sum(e.quantity) FILTER (WHERE metric = 'api_requests') AS r, "
            "sum(e.quantity) FILTER (WHERE metric = 'bandwidth_bytes') AS b "
            "FROM platform.usage_events e JOIN platform.tenants t ON t.id = e.tenant_id GROUP BY t.slug")}
        events = conn.execute("SELECT count(*) AS n FROM platform.usage_events").fetchone()["n"]
    exact = got == totals
    _pg.log(f"agent: {lines} lines in {wall:.1f} s wall, {cpu:.1f} s CPU; {events} usage rows; exact: {exact}")
    os.unlink(logfile)
    return {"lines": lines, "tenants": tenants, "log_bytes": size, "wall_seconds": round(wall, 2),
            "agent_cpu_seconds": round(cpu, 2), "lines_per_second": round(lines / wall),
            "lines_per_cpu_second": round(lines / cpu), "usage_rows": events, "batches": agent.stats["batches"],
            "max_lines_per_batch": args.max_lines, "totals_match_the_log": exact}


def per_request(server, tenants, n):
    """The alternative: one record_usage() per request, each in its own transaction, as the app login."""
    rng = random.Random(11)
    with server.connect(user="app_bench") as conn:
        ids = [r["id"] for r in server.connect().execute("SELECT id FROM platform.tenants")]
        t0 = time.monotonic()
        for i in range(n):
            tid = ids[rng.randrange(len(ids))]
            with conn.transaction():
                conn.execute("SELECT set_config('app.tenant_id', %s, true)", (str(tid),))
                conn.execute("SELECT * FROM platform.record_usage(%s, 'api_requests', 1, %s)", (tid, f"r{i}"))
        wall = time.monotonic() - t0
    _pg.log(f"record_usage per request: {n} in {wall:.1f} s")
    return {"requests": n, "wall_seconds": round(wall, 2), "requests_per_second": round(n / wall)}


def lag(server, workdir, rate, seconds, tenants):
    logfile = os.path.join(workdir, "steady.json")
    open(logfile, "w", encoding="ascii").close()
    with server.connect() as conn:
        conn.execute("DELETE FROM platform.meter_positions")
        base = conn.execute("SELECT COALESCE(sum(quantity), 0) AS n FROM platform.usage_events "
                            "WHERE metric = 'api_requests'").fetchone()["n"]
    env = dict(os.environ, PGPASSWORD="")
    proc = subprocess.Popen([sys.executable, str(AGENT), f"--log={logfile}", f"--map-file={workdir}/q.map",
                             f"--metrics-file={workdir}/m.prom", "--rotate-grace=5",
                             f"--conninfo=host={server.host} port={server.port} dbname=bench user=meter_bench"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    written = []  # (count, time)
    seen = []
    stop = threading.Event()

    def poll():
        with server.connect() as conn:
            while not stop.is_set():
                n = conn.execute("SELECT COALESCE(sum(quantity), 0) AS n FROM platform.usage_events "
                                 "WHERE metric = 'api_requests'").fetchone()["n"] - base
                seen.append((n, time.time()))
                time.sleep(0.1)

    poller = threading.Thread(target=poll)
    poller.start()
    rng = random.Random(3)
    count = 0
    t0 = time.time()
    with open(logfile, "a", encoding="ascii") as fh:
        while time.time() - t0 < seconds:
            due = int((time.time() - t0) * rate) - count
            now = time.time()
            stamp = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+00:00")
            for i in range(due):  # pylint: disable=unused-variable
                t = rng.randrange(1, min(tenants, 1000) + 1)
                fh.write(LINE % (stamp, t, t, 0, 300, rng.getrandbits(128), 480))
            fh.flush()
            count += due
            written.append((count, now))
            time.sleep(0.005)
    deadline = time.time() + 60
    while (not seen or seen[-1][0] < count) and time.time() < deadline:
        time.sleep(0.2)
    stop.set()
    poller.join()
    proc.terminate()
    proc.wait()
    lags = []
    j = 0
    prev = 0
    for n, t_w in written:
        while j < len(seen) and seen[j][0] < n:
            j += 1
        if j == len(seen):
            break
        lags += [seen[j][1] - t_w] * (n - prev)
        prev = n
    lags.sort()
    _pg.log(f"steady {rate}/s for {seconds} s: {count} lines, p95 lag {_pg.percentile(lags, 95):.2f} s")
    return {"rate_per_second": rate, "seconds": seconds, "lines": count, "recorded": int(seen[-1][0]) if seen else 0,
            "lag_p50_seconds": _pg.percentile(lags, 50), "lag_p95_seconds": _pg.percentile(lags, 95),
            "lag_max_seconds": lags[-1] if lags else None, "poll_interval_seconds": 0.1}


def dexec(container, command, check=True):
    res = subprocess.run(["docker", "exec", container, "sh", "-c", command], capture_output=True, text=True,
                         check=False)
    if check and res.returncode != 0:
        sys.exit(f"{container}: {command!r} failed: {res.stderr or res.stdout}")
    return res.stdout


SENDER = r"""
import http.client, json, ssl, sys, time
ctx = ssl._create_unverified_context()
host, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
c = http.client.HTTPSConnection("127.0.0.1", 443, context=ctx, timeout=10)
out = []
t0 = time.time()
i = 0
while time.time() - t0 < seconds:
    try:
        c.request("GET", "/e/%d" % i, headers={"Host": host}); r = c.getresponse(); r.read()
    except (OSError, http.client.HTTPException):  # a reload closes idle keep-alive connections
        c.close(); c = http.client.HTTPSConnection("127.0.0.1", 443, context=ctx, timeout=10)
        continue
    out.append((time.time(), r.status)); i += 1
    if r.status == 429 and sum(1 for _, s in out if s == 429) >= 5:
        break
    time.sleep(max(0, t0 + i / rate - time.time()))
print(json.dumps(out))
"""


def enforcement(rate, headroom):
    """Give `hardy` `headroom` requests left, then send at `rate`/s until the first 429."""
    sql = ("UPDATE platform.tenant_quotas q SET limit_value = platform.metric_usage(q.tenant_id, 'api_requests', "
           f"'month') + {headroom} FROM platform.tenants t WHERE t.id = q.tenant_id AND t.slug = 'hardy' "
           "AND q.metric = 'api_requests' RETURNING q.limit_value")
    limit = int(dexec("meter-db", f"runuser -u postgres -- psql -d selfbase -XAtc \"{sql}\"").split()[0])
    dexec("meter-proxy", "systemctl start selfbase-meter selfbase-edge-apply.timer")
    probe = "curl -sk -o /dev/null -w '%{http_code}' -H 'Host: hardy.meter.test' https://127.0.0.1/"
    deadline = time.time() + 60
    while dexec("meter-proxy", probe) != "200":
        if time.time() > deadline:
            sys.exit("hardy is still refused 60 s after its limit was raised: is the agent running?")
        time.sleep(1)
    out = json.loads(dexec("meter-proxy", f"python3 - hardy.meter.test {rate} 90 <<'EOF'\n{SENDER}\nEOF"))
    served = [t for t, s in out if s == 200]
    first_429 = next((t for t, s in out if s == 429), None)
    crossing = served[headroom - 1] if len(served) >= headroom else None
    lag_s = None if first_429 is None or crossing is None else first_429 - crossing
    _pg.log(f"enforcement: limit {limit}, crossing after {headroom} requests, first 429 {lag_s} s later, "
            f"{len(served) - headroom} requests over")
    return {"rate_per_second": rate, "headroom": headroom, "enforcement_lag_seconds": lag_s,
            "served_over_the_limit": len(served) - headroom}


def nginx_throughput(rounds, seconds):
    dexec("meter-proxy", "command -v wrk || (apt-get install -y -q wrk >/dev/null)")
    cmd = f"wrk -t2 -c32 -d{seconds}s -H 'Host: alpha.meter.test' https://127.0.0.1:443/"
    res = {"stopped": [], "running": []}
    try:
        for r in range(rounds):
            for state in (("stopped", "running") if r % 2 == 0 else ("running", "stopped")):
                dexec("meter-proxy", f"systemctl {'stop' if state == 'stopped' else 'start'} selfbase-meter")
                time.sleep(2)
                out = dexec("meter-proxy", cmd)
                res[state].append(float(out.split("Requests/sec:")[1].split()[0]))
    finally:
        dexec("meter-proxy", "systemctl start selfbase-meter", check=False)
    med = {k: statistics.median(v) for k, v in res.items()}
    _pg.log(f"nginx req/s: agent stopped {med['stopped']:.0f}, running {med['running']:.0f}")
    return {"command": cmd, "rounds": rounds, "requests_per_second": res, "median": med,
            "slowdown": round(1 - med["running"] / med["stopped"], 4)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=5_000_000)
    p.add_argument("--tenants", type=int, default=10_000)
    p.add_argument("--per-request", type=int, default=20_000)
    p.add_argument("--rate", type=int, default=2000)
    p.add_argument("--seconds", type=int, default=60)
    p.add_argument("--skip-edge", action="store_true")
    p.add_argument("--only-edge", action="store_true", help="re-run the edge part into the last results")
    args = p.parse_args()
    meter = load_agent()
    results = {"benchmark": "metering"}
    if args.only_edge:
        results = json.loads((_pg.RESULTS / "metering.json").read_text())
    else:
        with _pg.Server() as server:
            results["machine"] = _pg.machine(server)
            prepare(server, args.tenants)
            with tempfile.TemporaryDirectory(dir=server.base) as workdir:
                os.chmod(workdir, 0o755)
                results["throughput"] = throughput(server, meter, workdir, args.lines, args.tenants)
                results["per_request_record_usage"] = per_request(server, args.tenants, args.per_request)
                results["lag"] = lag(server, workdir, args.rate, args.seconds, args.tenants)
    if not args.skip_edge:
        results["enforcement"] = enforcement(rate=50, headroom=200)
        results["nginx"] = nginx_throughput(rounds=4, seconds=10)
    t, a = results["throughput"], results["per_request_record_usage"]
    rows = [["agent lines/s (wall)", t["lines_per_second"], ">= 50,000"],
            ["agent lines/s per CPU second", t["lines_per_cpu_second"], ""],
            ["record_usage per request, requests/s", a["requests_per_second"], "alternative"],
            ["agent / per-request", round(t["lines_per_second"] / a["requests_per_second"], 1), ""],
            ["totals equal the log", t["totals_match_the_log"], "True"],
            [f"lag p95 at {results['lag']['rate_per_second']}/s (s)", results["lag"]["lag_p95_seconds"], "<= 10"]]
    if "enforcement" in results:
        rows += [["enforcement lag (s)", results["enforcement"]["enforcement_lag_seconds"], "<= 30"],
                 ["served over the limit", results["enforcement"]["served_over_the_limit"], ""],
                 ["nginx slowdown with the agent", results["nginx"]["slowdown"], "<= 0.05"]]
    _pg.table(rows, ["measure", "value", "target"])
    _pg.write_results("metering", results)


if __name__ == "__main__":
    main()
