"""Requests/s through the nginx role's proxy against the upstream directly, with wrk.

Reuses the Molecule scenario `nginx` (converged, not destroyed): wrk runs in
the client container, against the echo upstream on the same container
(http://127.0.0.1:3000) and through the proxy container to that upstream
(https://<proxy>/, Host of the tenant `bench`, whose rate class is
`unlimited`, so no limit applies). Rounds alternate between the two so that
machine drift hits both; the median of the rounds is reported.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def sh(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True, check=True)


def docker_exec(container, command):
    res = subprocess.run(["docker", "exec", container, "sh", "-c", command], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        sys.exit(f"{container}: {command!r} failed: {res.stderr or res.stdout}")
    return res.stdout + res.stderr


def container_ip(container):
    res = subprocess.run(["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", container],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0 or not res.stdout.strip():
        sys.exit(f"container {container} is not running: run `molecule converge -s nginx` first (see benchmarks/README.md)")
    return res.stdout.strip()


def seconds(value, unit):
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def parse_wrk(out):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        lat[f"p{pct}_ms"] = round(seconds(*m.groups()) * 1000, 3) if m else None
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:(.*)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rps": rps, **lat, "requests": total, "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(1).strip() if errors else ""}


def machine(proxy, client):
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", pathlib.Path("/proc/meminfo").read_text()).group(1))
    cpu = re.search(r"model name\s*:\s*(.*)", pathlib.Path("/proc/cpuinfo").read_text())
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 ** 2, 1),
        "cpu_model": cpu.group(1).strip() if cpu else platform.processor(),
        "kernel": platform.release(),
        "nginx_version": docker_exec(proxy, "nginx -v").strip().split("/")[-1],
        "proxy_os": docker_exec(proxy, ". /etc/os-release && echo $PRETTY_NAME").strip(),
        "wrk_version": docker_exec(client, "wrk -v 2>&1 | head -1 || true").strip(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proxy", default="nginx-proxy-bookworm", help="proxy container (default %(default)s)")
    parser.add_argument("--client", default="nginx-client", help="client and upstream container (default %(default)s)")
    parser.add_argument("--host", default="bench.selfbase.test", help="tenant Host header (default %(default)s)")
    parser.add_argument("--seconds", type=int, default=8, help="duration of one wrk run (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of direct + proxied runs (default %(default)s)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default %(default)s)")
    parser.add_argument("--name", default="nginx_proxy", help="results file name (default %(default)s)")
    args = parser.parse_args()

    proxy_ip = container_ip(args.proxy)
    container_ip(args.client)
    wrk = f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s --latency"
    commands = {
        "direct": f"{wrk} http://127.0.0.1:3000/bench",
        "proxy": f"{wrk} -H 'Host: {args.host}' https://{proxy_ip}:443/bench",
    }
    # The proxied path must reach the echo upstream, not an error page.
    probe = docker_exec(args.client, f"curl -sk -H 'Host: {args.host}' https://{proxy_ip}/probe")
    if json.loads(probe).get("headers", {}).get("x-tenant-slug") != [args.host.split(".")[0]]:
        sys.exit(f"the proxy did not route {args.host} to the echo upstream: {probe}")

    runs = {"direct": [], "proxy": []}
    for rnd in range(args.rounds):
        for mode in ("direct", "proxy"):
            result = parse_wrk(docker_exec(args.client, commands[mode]))
            runs[mode].append(result)
            print(f"round {rnd + 1}/{args.rounds} {mode:<6} {result['rps']:>10.0f} req/s", file=sys.stderr)

    summary = {}
    for mode, results in runs.items():
        summary[mode] = {key: statistics.median(r[key] for r in results if r[key] is not None)
                         for key in ("rps", "p50_ms", "p99_ms")}
        summary[mode]["non_2xx"] = sum(r["non_2xx"] for r in results)
    ratio = summary["proxy"]["rps"] / summary["direct"]["rps"]

    print(f"\n{'path':<40} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    labels = {"direct": "upstream directly (HTTP, keepalive)", "proxy": f"through nginx (HTTPS, {args.host})"}
    for mode in ("direct", "proxy"):
        row = summary[mode]
        print(f"{labels[mode]:<40} {row['rps']:>10.0f} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['non_2xx']:>8}")
    print(f"{'ratio proxy / direct':<40} {ratio:>10.2f}")

    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{args.name}.json"
    out.write_text(json.dumps({
        "benchmark": "nginx_proxy",
        "machine": machine(args.proxy, args.client),
        "settings": {"threads": args.threads, "connections": args.connections, "seconds": args.seconds,
                     "rounds": args.rounds, "host": args.host, "commands": commands,
                     "rate_limit": "tenant class 'unlimited' (rate 0): no per-tenant or per-IP limit"},
        "summary": {**summary, "ratio_proxy_to_direct": round(ratio, 3)},
        "runs": runs,
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
