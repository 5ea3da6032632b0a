"""Converge times of the whole environment (site.yml) on the development hosts.

Removes the development containers (scripts/demo-down.sh's way), creates them
again from the cached base image, then times with ansible-playbook:
  1. the cold converge of the four hosts (site.yml; image builds excluded),
  2. the warm re-converge (nothing to change),
  3. playbooks/tenants.yml alone with 1,000 extra tenants, first created and
     then all 1,000 changed (renamed, with a quota override).
Per-tier times come from the json callback's play durations; the
ansible.posix.profile_tasks callback runs too, and its task table is kept in
the results. Targets: cold < 5 min, warm < 60 s, tenants.yml < 20 s.
The Stripe fake is started like scripts/demo.sh does.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
INV = ROOT / "inventories" / "development"
VAULT = ["--vault-password-file", str(INV / "vault-password.txt")]
TARGETS = {"cold": 300.0, "warm": 60.0, "tenants_create": 20.0, "tenants_change": 20.0}


def playbook(args, extra_env=None):
    """Run ansible-playbook with the json stdout callback; return (seconds, parsed output, profile_tasks table)."""
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_NOCOLOR="1",
               ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks", **(extra_env or {}))
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", str(INV)] + args
    start = time.monotonic()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    took = time.monotonic() - start
    try:
        # the json document, then profile_tasks' table
        text = res.stdout[res.stdout.index("{"):]
        out, end = json.JSONDecoder().raw_decode(text)
    except ValueError:
        sys.exit(f"{' '.join(cmd)} printed no JSON:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    failed = {h: s for h, s in out["stats"].items() if s["failures"] or s["unreachable"]}
    if res.returncode != 0 or failed:
        sys.exit(f"{' '.join(cmd)} failed ({res.returncode}): {failed}\n{res.stderr[-3000:]}")
    return took, out, text[end:].strip()


def plays(out):
    """Seconds per play, in order (a play is one tier or one platform step)."""
    rows = []
    for play in out["plays"]:
        d = play["play"]["duration"]
        start = datetime.datetime.fromisoformat(d["start"].replace("Z", "+00:00"))
        end = datetime.datetime.fromisoformat(d["end"].replace("Z", "+00:00"))
        rows.append((play["play"]["name"], round((end - start).total_seconds(), 1)))
    return rows


def changed(out):
    return sum(s["changed"] for s in out["stats"].values())


def tenants_file(tmp, n, renamed):
    """A data file like inventories/development/data/tenants.yml, as the extra var that points to it."""
    data = {"tenants": [
        {"slug": f"bench-{i:04d}", "name": f"Bench {i}{' renamed' if renamed else ''}", "plan": "starter",
         **({"quotas": [{"metric": "members", "limit": 3}]} if renamed else {})} for i in range(n)]}
    path = pathlib.Path(tmp) / f"tenants-{n}-{int(renamed)}.json"
    path.write_text(json.dumps(data))
    return f"selfbase_tenants_file={path}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--name", default="site_converge")
    opts = parser.parse_args()

    subprocess.run(["bash", str(ROOT / "scripts" / "demo-down.sh")], check=True, capture_output=True)
    fake = ROOT / ".demo"
    fake.mkdir(exist_ok=True)
    stripe = subprocess.Popen([sys.executable, str(ROOT / "tests/modules/fakes/stripe_fake.py"), "--host", "127.0.0.1",
                               "--port", "12111", "--state-file", str(fake / "stripe-fake.json")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    (fake / "stripe-fake.pid").write_text(str(stripe.pid))
    stripe_env = {"STRIPE_API_KEY": "sk_test_selfbase_development_fake", "STRIPE_API_BASE": "http://127.0.0.1:12111"}
    results = {}
    try:
        playbook(VAULT + ["playbooks/dev_hosts.yml"])
        for run in ("cold", "warm"):
            took, out, profile = playbook(VAULT + ["site.yml"], stripe_env)
            results[run] = {"seconds": round(took, 1), "changed": changed(out), "plays": plays(out),
                            "profile_tasks": profile[-6000:]}
        with tempfile.TemporaryDirectory() as tmp:
            for run, renamed in (("tenants_create", False), ("tenants_change", True)):
                took, out, _profile = playbook(VAULT + ["playbooks/tenants.yml", "-e", tenants_file(tmp, opts.tenants, renamed)])
                results[run] = {"seconds": round(took, 1), "changed": changed(out), "plays": plays(out)}
    finally:
        stripe.terminate()

    print(f"{'run':<16} {'seconds':>8} {'target':>7} {'met':>4} {'changed':>8}")
    for run, r in results.items():
        r["target_seconds"] = TARGETS[run]
        r["met"] = r["seconds"] < TARGETS[run]
        print(f"{run:<16} {r['seconds']:>8} {TARGETS[run]:>7} {'yes' if r['met'] else 'NO':>4} {r['changed']:>8}")
    print("\nper tier (cold / warm, seconds):")
    for (name, cold), (_name, warm) in zip(results["cold"]["plays"], results["warm"]["plays"]):
        print(f"  {name:<40} {cold:>7} {warm:>7}")
    machine = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{opts.name}.json").write_text(json.dumps({"machine": machine, "tenants": opts.tenants,
                                                          "results": results}, indent=2) + "\n")
    print(f"\nwritten to {RESULTS / (opts.name + '.json')}")


if __name__ == "__main__":
    main()
