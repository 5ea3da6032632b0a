"""billing_info against a real PostgreSQL server: the mirrors the webhook receiver keeps, read back per tenant,
and the month's MRR movements."""

from __future__ import annotations

import json
import pathlib

import pytest
import yaml

from test_isolation import A, B, tenants  # noqa: F401  pylint: disable=unused-import
from test_security import logins  # noqa: F401  pylint: disable=unused-import


@pytest.fixture()
def mirrors(tenants, run):  # noqa: F811
    """alpha: monthly 29.00 USD from 5 Oct 2026, past due on an open invoice. bravo: yearly 120.00 USD from
    1 Aug 2026, canceled on 20 Oct 2026."""
    tenants.execute("INSERT INTO platform.plan_prices (plan_code, billing_cycle, currency, unit_amount, stripe_price_id) "
                    "VALUES ('iso', 'month', 'usd', 2900, 'price_m'), ('iso', 'year', 'usd', 12000, 'price_y')")
    tenants.execute("UPDATE platform.subscriptions SET stripe_price_id = 'price_m', status = 'past_due', "
                    "started_at = '2026-10-05', billing_cycle = 'month' WHERE tenant_id = %s", (A,))
    tenants.execute("UPDATE platform.subscriptions SET stripe_price_id = 'price_y', status = 'canceled', "
                    "started_at = '2026-08-01', canceled_at = '2026-10-20', billing_cycle = 'year' "
                    "WHERE tenant_id = %s", (B,))
    # as if mirrored before migration 0013: the current state stands for all the past
    tenants.execute("UPDATE platform.subscription_versions SET valid_from = '-infinity'")
    # the seeded invoice is dated now(): move it before these, so that their order does not depend on today
    tenants.execute("UPDATE platform.invoices SET created = '2026-09-05' WHERE tenant_id = %s", (A,))
    for n, status in enumerate(["paid", "paid", "open"]):
        tenants.execute("INSERT INTO platform.invoices (stripe_invoice_id, tenant_id, stripe_customer_id, number, status, "
                        "currency, amount_due, amount_paid, amount_remaining, attempt_count, created) VALUES "
                        "(%s, %s, 'cus_alpha', %s, %s, 'usd', 2900, %s, %s, 1, %s)",
                        (f"in_a{n}", A, f"ALPHA-{n:04d}", status, 2900 if status == "paid" else 0,
                         0 if status == "paid" else 2900, f"2026-1{n}-05"))
    return run


@pytest.mark.through_playbook("billing_info")
def test_each_tenant_with_its_subscription_dunning_payment_method_usage_and_invoices(mirrors):
    res = mirrors("billing_info", {"slugs": ["alpha"], "invoices": 2, "month": "2026-10"})
    assert res["changed"] is False and res["month"] == "2026-10", res
    (alpha,) = res["tenants"]
    assert alpha["subscription"]["status"] == "past_due" and alpha["plan"] == "iso"
    assert alpha["dunning"]["state"] == "past_due" and alpha["dunning"]["reason"] == "seeded"
    assert alpha["payment_method"] == {"present": True, "brand": "visa", "last4": "4242"}
    assert alpha["tax"] == {"country": None, "tax_exempt": None, "location": None, "tax_ids": []}
    assert [i["number"] for i in alpha["invoices"]] == ["ALPHA-0002", "ALPHA-0001"], alpha["invoices"]
    assert {"tax", "total", "total_excluding_tax"} <= set(alpha["invoices"][0])
    assert alpha["amount_due"] == {"usd": 2900}
    assert {u["metric"] for u in alpha["usage"]} >= {"api_requests", "bandwidth_bytes"}


def test_overage_that_is_never_billed_is_reported_per_tenant(mirrors, tenants):  # noqa: F811
    assert mirrors("billing_info", {"slugs": ["alpha"]})["tenants"][0]["unbilled_overage"] == []
    with tenants.transaction():  # an agent's overage two hours ago; bandwidth_bytes has no meter in plan iso
        tenants.execute("SELECT set_config('app.tenant_id', %s, true)", (str(A),))
        event = tenants.execute(
            "INSERT INTO platform.usage_events (tenant_id, metric, quantity, idempotency_key, occurred_at) "
            "VALUES (%s, 'bandwidth_bytes', 25, 'late', date_bin('1 hour', now(), 'epoch') - interval '2 hours') "
            "RETURNING id, occurred_at", (A,)).fetchone()
        tenants.execute("INSERT INTO platform.usage_overages (tenant_id, metric, usage_event_id, quantity) "
                        "VALUES (%s, 'bandwidth_bytes', %s, 25)", (A, event["id"]))
    res = mirrors("billing_info", {})
    by_slug = {t["slug"]: t["unbilled_overage"] for t in res["tenants"]}
    assert by_slug["bravo"] == []
    (item,) = by_slug["alpha"]
    assert (item["metric"], item["reason"], item["quantity"]) == ("bandwidth_bytes", "no_meter", 25), item
    assert item["since"] == event["occurred_at"].isoformat(), item


def test_the_months_mrr_new_churned_and_net(mirrors):
    res = mirrors("billing_info", {"month": "2026-10", "include_tenants": False})
    assert res["tenants"] == []
    assert res["mrr"] == [{"currency": "usd", "mrr_start": 1000.0, "new": 2900.0, "reactivated": 0.0,
                           "expansion": 0.0, "contraction": 0.0, "churned": 1000.0, "mrr_end": 2900.0, "net": 1900.0,
                           "new_subscriptions": 1, "reactivated_subscriptions": 0, "churned_subscriptions": 1}]
    before = mirrors("billing_info", {"month": "2026-09", "include_tenants": False})["mrr"]
    assert before[0]["mrr_start"] == 1000.0 and before[0]["new"] == 0 and before[0]["mrr_end"] == 1000.0
    assert mirrors("billing_info", {"month": "2026-10", "include_tenants": False}, check=True)["mrr"] == res["mrr"]


@pytest.mark.parametrize("args, field", [({"month": "2026-13"}, "month"), ({"invoices": -1}, "invoices")])
def test_bad_input_names_the_field(mirrors, args, field):
    res = mirrors("billing_info", args)
    assert res["failed"] is True and res["msg"].startswith(field), res["msg"]


def test_postgres_exporter_reads_the_billing_ledgers_as_the_monitor_login(mirrors, logins):  # noqa: F811
    """The exporter queries behind the billing dashboard and alerts run with selfbase_monitor's grants."""
    text = (pathlib.Path(__file__).resolve().parents[2]
            / "roles/monitoring/templates/postgres-exporter-queries.yml.j2").read_text()
    queries = yaml.safe_load(text.split("{% endif %}")[0].split("\n", 1)[1].replace("{% if", "#"))
    monitor = logins("monitor")
    rows = {}
    for name in ("selfbase_stripe_events", "selfbase_billing_db", "selfbase_billing_mrr", "selfbase_billing_unbilled"):
        rows[name] = monitor.execute(queries[name]["query"]).fetchall()
    assert rows["selfbase_stripe_events"] == [{"source": "webhook", "outcome": "applied", "total": 2.0}]
    db = rows["selfbase_billing_db"][0]
    assert db["failed_payments"] == 1.0 and db["tenants_in_dunning"] == 2.0 and db["meter_push_unsent"] == 0.0
    assert db["meter_push_unverified"] == 0.0
    assert rows["selfbase_billing_mrr"] == [{"currency": "usd", "minor_units": 2900.0}]
    assert rows["selfbase_billing_unbilled"] == []  # the seeded overage is in the open hour


def _epoch(day):
    import datetime  # noqa: PLC0415
    return int(datetime.datetime.fromisoformat(day + "T00:00:00+00:00").timestamp())


# (tenant, valid_from, status, monthly_amount, billing_cycle, started_at, trial_end, canceled_at, discount)
HISTORY = [
    (A, "-infinity", "active", 2900, "month", "2026-01-10", None, None, None),
    (A, "2026-03-15", "active", 9900, "month", "2026-01-10", None, None, None),                        # upgrade
    (A, "2026-05-20", "active", 9900, "month", "2026-01-10", None, None,
     {"percent_off": 20, "duration": "forever"}),                                                      # 20% off
    (A, "2026-07-01", "canceled", 9900, "month", "2026-01-10", None, "2026-07-01",
     {"percent_off": 20, "duration": "forever"}),                                                      # churn
    (A, "2026-09-10", "active", 2900, "month", "2026-09-10", None, None, None),                        # back
    (B, "-infinity", "trialing", 1000, "year", "2026-02-01", "2026-02-15", None, None),               # 12000 a year
    (B, "2026-04-05", "active", 1000, "year", "2026-02-01", "2026-02-15", None,
     {"amount_off": 1200, "duration": "repeating", "end": _epoch("2026-07-05")}),                      # 100 a month
    (B, "2026-08-15", "active", 1000, "year", "2026-02-01", "2026-02-15", None,
     {"amount_off": 1200, "duration": "once"}),                                                        # not recurring
]


@pytest.mark.parametrize("month, movements", [
    # month: mrr_start, new, reactivated, expansion, contraction, churned, mrr_end (hand-computed from HISTORY)
    ("2026-01", (0, 2900, 0, 0, 0, 0, 2900)),          # alpha starts on the 10th
    ("2026-02", (2900, 1000, 0, 0, 0, 0, 3900)),       # bravo's trial ends on the 15th
    ("2026-03", (3900, 0, 0, 7000, 0, 0, 10900)),      # alpha 2900 -> 9900
    ("2026-04", (10900, 0, 0, 0, 100, 0, 10800)),      # bravo 1200 off a year: 1000 -> 900
    ("2026-05", (10800, 0, 0, 0, 1980, 0, 8820)),      # alpha 20% off: 9900 -> 7920
    ("2026-06", (8820, 0, 0, 0, 0, 7920, 900)),        # alpha ends on 1 July
    ("2026-07", (900, 0, 0, 100, 0, 0, 1000)),         # bravo's discount ends on the 5th
    ("2026-08", (1000, 0, 0, 0, 0, 0, 1000)),          # a 'once' discount is not recurring
    ("2026-09", (1000, 0, 2900, 0, 0, 0, 3900)),       # alpha comes back: reactivated, not new
])
def test_mrr_movements_against_hand_computed_months(mirrors, tenants, month, movements):  # noqa: F811
    tenants.execute("DELETE FROM platform.subscription_versions")
    for t, since, status, monthly, cycle, start, trial, canceled, discount in HISTORY:
        tenants.execute("INSERT INTO platform.subscription_versions (tenant_id, valid_from, status, currency, "
                        "billing_cycle, monthly_amount, started_at, trial_end, canceled_at, discount) "
                        "VALUES (%s, %s, %s, 'usd', %s, %s, %s, %s, %s, %s)",
                        (t, since, status, cycle, monthly, start, trial, canceled,
                         None if discount is None else json.dumps(discount)))
    [row] = mirrors("billing_info", {"month": month, "include_tenants": False})["mrr"]
    keys = ("mrr_start", "new", "reactivated", "expansion", "contraction", "churned", "mrr_end")
    assert tuple(row[k] for k in keys) == tuple(float(v) for v in movements), row
    assert row["net"] == movements[-1] - movements[0]
    assert row["mrr_start"] + row["new"] + row["reactivated"] + row["expansion"] - row["contraction"] \
        - row["churned"] == row["mrr_end"]
