"""Failover and switchover of the Patroni cluster, and the cost of pooling, on the `production` scenario's hosts.

Needs the Molecule scenario `production` converged (`molecule converge -s production`): three db hosts and,
among the clients with HAProxy, prod-api1; synchronous mode on. The writer logs in as a test login of its own
(ha_probe, created here as in the scenario's verify). Measured in one run:
1. for each timing preset (fast, default, patroni; set through `patronictl edit-config`), --failovers kills
   (default 5) of the leader's container (`docker kill`) while a writer on the client commits a
   numbered row every 100 ms through HAProxy's read-write port: the RTO is the time from the kill to
   the first acknowledged commit after it; every acknowledged row is looked for on the new leader;
2. --switchovers switchovers (default 5, fast preset): the longest pause between acknowledged commits;
3. pgbench's simple-update script (-N) with --clients clients (50) for --seconds seconds (20), on the
   client: through HAProxy and PgBouncer (port 5000), and straight to the leader's PostgreSQL.
Switchovers run with the default preset, which the cluster is left at, as inventories/production sets it.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import time

import _pg

sys.path.insert(0, str(_pg.ROOT / "molecule" / "resources"))
# pylint: disable=wrong-import-position
from patroni_cluster import Cluster, docker, longest_pause_after, outage_end_after  # noqa: E402

PASSWORD = "molecule-prod-probe-5d1f"
DSN = "host={host} port={port} dbname=selfbase user=ha_probe password=" + PASSWORD
PRESETS = {"fast": {"ttl": 10, "loop_wait": 2, "retry_timeout": 4}, "default": {"ttl": 20, "loop_wait": 5, "retry_timeout": 5},
           "patroni": {"ttl": 30, "loop_wait": 10, "retry_timeout": 10}}
CLIENT = "172.30.89.21"  # prod-api1, where HAProxy listens
MEMBERS = {"prod-db1": "172.30.89.11", "prod-db2": "172.30.89.12", "prod-db3": "172.30.89.13"}


def set_preset(cluster, name):
    lead = cluster.wait_for("a healthy cluster", cluster.healthy)
    args = [f"--set={k}={v}" for k, v in PRESETS[name].items()]
    cluster.patronictl(lead, "edit-config", "--force", *args)
    time.sleep(PRESETS[name]["loop_wait"] + 2)


def failover(cluster, tag):
    old = cluster.wait_for("a healthy cluster", cluster.healthy, 300)
    out = cluster.start_writer(90, tag)
    time.sleep(5)
    killed = time.time()
    cluster.kill(old)
    cluster.wait_for("a new leader", lambda: (cluster.leader() or old) != old, 120)
    time.sleep(8)  # HAProxy's checks see the new leader and the writer commits again
    cluster.stop_writer(out)
    result = cluster.writer_result(out, 5)
    lost = cluster.lost(result, out)
    cluster.start(old)
    cluster.wait_for("the old leader back as a replica", cluster.healthy, 300)
    resumed = outage_end_after(result, killed)
    return (round(resumed - killed, 2) if resumed else None), len(lost), len(result["acked"])


def switchover(cluster, tag):
    old = cluster.wait_for("a healthy cluster", cluster.healthy, 300)
    candidate = next(m["Member"] for m in cluster.members() if m["Role"] == "Sync Standby")
    out = cluster.start_writer(15, tag)
    time.sleep(3)
    started = time.time()
    cluster.switchover(old, candidate)
    result = cluster.writer_result(out, 15)
    lost = cluster.lost(result, out)
    cluster.wait_for("the old leader streaming", cluster.healthy, 300)
    return longest_pause_after(result, started), len(lost), len(result["acked"])


def pgbench(cluster, dsn, clients, seconds):
    res = docker("exec", cluster.client, "pgbench", "-n", "-N", "-M", "simple", "-c", str(clients), "-j", "2",
                 "-T", str(seconds), dsn)
    return float(re.search(r"tps = ([0-9.]+)", res.stdout).group(1))


def spread(values):
    values = [v for v in values if v is not None]
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)} if values else None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--failovers", type=int, default=5)
    parser.add_argument("--switchovers", type=int, default=5)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--presets", default="fast,default,patroni")
    parser.add_argument("--name", default="failover", help="results file name (benchmarks/results/NAME.json)")
    opts = parser.parse_args()

    cluster = Cluster(list(MEMBERS), "prod-api1", DSN.format(host=CLIENT, port=5000))
    cluster.prepare_probe(PASSWORD, connection_limit=60)
    results = {"presets": {}, "switchover": None, "pgbench": None}
    for preset in opts.presets.split(","):
        set_preset(cluster, preset)
        runs = [failover(cluster, f"{preset}-{i}") for i in range(opts.failovers)]
        results["presets"][preset] = {"timing": PRESETS[preset], "rto_s": spread([r[0] for r in runs]),
                                      "acked_lost": sum(r[1] for r in runs), "acked": sum(r[2] for r in runs),
                                      "runs": runs}
        _pg.log(f"{preset}: {results['presets'][preset]['rto_s']}")
    set_preset(cluster, "default")
    runs = [switchover(cluster, f"switchover-{i}") for i in range(opts.switchovers)]
    results["switchover"] = {"pause_s": spread([r[0] for r in runs]), "acked_lost": sum(r[1] for r in runs),
                             "acked": sum(r[2] for r in runs), "runs": runs}

    lead = cluster.wait_for("a healthy cluster", cluster.healthy)
    direct = DSN.format(host=MEMBERS[lead], port=5432)
    if docker("exec", cluster.client, "test", "-x", "/usr/lib/postgresql/15/bin/pgbench", check=False).returncode:
        # pgbench ships with Debian's server package; no cluster is created on the client.
        docker("exec", cluster.client, "sh", "-c", "mkdir -p /etc/postgresql-common/createcluster.d && echo "
               "'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/50-bench.conf && "
               "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql-15")
    docker("exec", cluster.client, "pgbench", "-i", "-q", "-s", "10", direct)
    rounds = {"pooled": [], "direct": []}
    for _round in range(2):  # alternated, so that drift on the shared machine hits both
        rounds["pooled"].append(pgbench(cluster, DSN.format(host=CLIENT, port=5000), opts.clients, opts.seconds))
        rounds["direct"].append(pgbench(cluster, direct, opts.clients, opts.seconds))
    tps = {k: statistics.median(v) for k, v in rounds.items()}
    results["pgbench"] = {"clients": opts.clients, "seconds": opts.seconds, "script": "simple-update (-N)",
                          "rounds": rounds, "tps": tps, "pooled_vs_direct": round(tps["pooled"] / tps["direct"], 2)}

    rows = []
    for preset, r in results["presets"].items():
        t = r["rto_s"]
        rows.append([f"failover RTO, {preset} preset (s)", t["min"], t["median"], t["max"], f"{r['acked_lost']} of {r['acked']}"])
    p = results["switchover"]["pause_s"]
    rows.append(["switchover write pause (s)", p["min"], p["median"], p["max"],
                 f"{results['switchover']['acked_lost']} of {results['switchover']['acked']}"])
    _pg.table(rows, ["measure", "min", "median", "max", "acked writes lost"])
    print()
    _pg.table([["pgbench -N, pooled (HAProxy + PgBouncer)", round(tps["pooled"])],
               ["pgbench -N, direct to the leader", round(tps["direct"])],
               ["pooled / direct", results["pgbench"]["pooled_vs_direct"]]], ["measure", "TPS"])
    _pg.write_results(opts.name, {"machine": {"cpus": os.cpu_count(), "kernel": platform.release()}, **results})


if __name__ == "__main__":
    main()
