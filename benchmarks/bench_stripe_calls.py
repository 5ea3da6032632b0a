"""Benchmark: Stripe calls billing_plan makes for a price book of 50 plans x 2 intervals x 2 currencies
(200 prices, 50 products), counted on the fake Stripe's request log and cross-checked against the module's own
count. The module runs through ansible-playbook against a throwaway PostgreSQL server, as in production.

Runs: first converge, no-change converge, no-change in check mode, one amount changed (all as one task with the
`plans` option), then the per-plan alternative: one billing_plan task per plan (a loop), no change.

Run: .venv/bin/python benchmarks/bench_stripe_calls.py   (as root; see benchmarks/README.md)
Writes benchmarks/results/stripe_calls.json.
"""

from __future__ import annotations

import collections
import json
import math
import os
import sys
import tempfile

import _pg

sys.path.insert(0, str(_pg.ROOT / "tests" / "modules"))
from fakes.stripe_fake import FakeStripe  # noqa: E402  pylint: disable=wrong-import-position

PLANS = int(os.environ.get("BENCH_PLANS", 50))
INTERVALS = ("month", "year")
CURRENCIES = ("usd", "eur")


def price_book(changed=None):
    """The plans; `changed` is the code of a plan whose monthly usd amount goes up by 1 dollar."""
    plans = []
    for i in range(PLANS):
        code = "plan-%02d" % i
        prices = [dict(interval=iv, currency=cur, amount=(1000 + i * 100) * (10 if iv == "year" else 1)
                       + (100 if code == changed and (iv, cur) == ("month", "usd") else 0))
                  for iv in INTERVALS for cur in CURRENCIES]
        plans.append(dict(code=code, name="Plan %d" % i, trial_days=14, prices=prices,
                          quotas=[dict(metric="members", limit=5 + i), dict(metric="api_requests", limit="100k")]))
    return plans


class Bench:
    def __init__(self, server, fake, workdir):
        self.fake = fake
        self.workdir = workdir
        self.args = dict(login_host=server.host, login_port=server.port, login_user="postgres", login_db="bench",
                         api_key=fake.api_key, api_base=fake.url)

    def play(self, task, check=False):
        self.fake.reset_log()
        return _pg.run_task(self.workdir, task, check=check)

    def counts(self):
        """Reads and writes from the fake's log, by method and path (ids folded)."""
        by_path = collections.Counter()
        for r in self.fake.requests:
            parts = r.path.split("/")
            path = "/".join(parts[:3]) + ("/{id}" if len(parts) > 3 else "")
            by_path[f"{r.method} {path}"] += 1
        return dict(reads=len(self.fake.reads()), writes=len(self.fake.writes()), by_request=dict(sorted(by_path.items())),
                    retried_or_failed=sum(1 for r in self.fake.requests if r.status and r.status >= 400))

    def plans(self, plans, check=False):
        data = os.path.join(self.workdir, "plans.json")
        with open(data, "w", encoding="utf-8") as fh:
            json.dump(plans, fh)
        task = {"selfbase.platform.billing_plan": dict(self.args, plans="{{ lookup('file', '%s') | from_json }}"
                                                       % data)}
        elapsed, result = self.play(task, check=check)
        return elapsed, result, self.counts()

    def loop(self, plans):
        data = os.path.join(self.workdir, "plans.json")
        with open(data, "w", encoding="utf-8") as fh:
            json.dump(plans, fh)
        task = {"selfbase.platform.billing_plan": dict(self.args, code="{{ item.code }}", name="{{ item.name }}",
                                                       trial_days="{{ item.trial_days }}", prices="{{ item.prices }}",
                                                       quotas="{{ item.quotas }}"),
                "loop": "{{ lookup('file', '%s') | from_json }}" % data}
        elapsed, result = self.play(task)
        result["api_calls"] = dict(
            reads=sum(r["api_calls"]["reads"] for r in result["results"]),
            writes=sum(r["api_calls"]["writes"] for r in result["results"]))
        return elapsed, result, self.counts()


def main():
    prices, products = PLANS * len(INTERVALS) * len(CURRENCIES), PLANS
    list_target = math.ceil(prices / 100) + math.ceil(products / 100)
    rows, runs = [], {}
    with _pg.Server() as server, FakeStripe() as fake, tempfile.TemporaryDirectory() as workdir:
        with server.connect("postgres") as conn:
            conn.execute("CREATE DATABASE bench")
        bench = Bench(server, fake, workdir)
        bench.play({"selfbase.platform.platform_schema": {k: v for k, v in bench.args.items() if k.startswith("login")}})

        def record(name, elapsed, result, counts, target):
            module = result["api_calls"]
            if (module["reads"], module["writes"]) != (counts["reads"], counts["writes"]):
                sys.exit(f"{name}: the module counted {module}, the fake logged {counts}")
            met = target(counts)
            runs[name] = dict(seconds=round(elapsed, 2), changed=result.get("changed"), reads=counts["reads"],
                              writes=counts["writes"], by_request=counts["by_request"], target_met=met)
            rows.append((name, counts["reads"], counts["writes"], round(elapsed, 2), "yes" if met else "NO"))
            _pg.log(f"{name}: {counts['reads']} reads, {counts['writes']} writes, {elapsed:.2f} s")

        first = bench.plans(price_book())
        record("first run", *first,
               lambda c: c["writes"] <= products + prices and c["reads"] <= list_target + 1)
        record("no change", *bench.plans(price_book()), lambda c: c["writes"] == 0 and c["reads"] <= list_target)
        record("no change, check mode", *bench.plans(price_book(), check=True),
               lambda c: c["writes"] == 0 and c["reads"] <= list_target)
        record("one amount changed", *bench.plans(price_book(changed="plan-07")),
               lambda c: c["writes"] == 2 and c["reads"] <= list_target)
        record("no change, one task per plan (loop)", *bench.loop(price_book(changed="plan-07")),
               lambda c: c["writes"] == 0)
        stored = dict(products=len(fake.objects("products")), prices=len(fake.objects("prices")),
                      active_prices=sum(1 for p in fake.objects("prices") if p["active"]))
        with server.connect() as conn:
            db_prices = conn.execute("SELECT count(*) AS n FROM platform.plan_prices WHERE active").fetchone()["n"]
        machine = _pg.machine(server)

    _pg.table(rows, ["run", "reads", "writes", "seconds", "target met"])
    print(f"\n{PLANS} plans, {prices} prices: list target {list_target} reads "
          f"(ceil({prices}/100) + ceil({products}/100)); Stripe holds {stored['products']} products, "
          f"{stored['prices']} prices ({stored['active_prices']} active); database {db_prices} active prices")
    _pg.write_results("stripe_calls", {
        "benchmark": "stripe_calls",
        "description": f"selfbase.platform.billing_plan with {PLANS} plans x {len(INTERVALS)} intervals x "
                       f"{len(CURRENCIES)} currencies ({prices} prices, {products} products) through ansible-playbook "
                       "against the fake Stripe (tests/modules/fakes/stripe_fake.py) and a throwaway PostgreSQL; "
                       "calls counted on the fake's request log and checked against the module's api_calls",
        "machine": machine,
        "targets": {"first_run_writes_at_most": products + prices, "no_change_writes": 0,
                    "no_change_reads_at_most": list_target, "one_amount_changed_writes": 2},
        "targets_met": {name: run["target_met"] for name, run in runs.items()},
        "runs": runs,
        "stripe_objects_after": stored,
        "notes": "One task with the plans option reads Stripe once for the whole price book: products are listed "
                 "(100 per page) and, with more than 30 lookup keys, every active price is listed (100 per page) "
                 "instead of lookup_keys requests (10 keys each). One task per plan cannot share reads: each lists "
                 "the products and looks its prices up by lookup_keys, 2 reads per plan.",
    })


if __name__ == "__main__":
    main()
