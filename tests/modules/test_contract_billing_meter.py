"""billing_meter against the fake Stripe server (contract test: Stripe's live API cannot be reached here)."""

from __future__ import annotations

import json

import pytest

from conftest import Runner, stripe_runner

METERS = "/v1/billing/meters"


run = stripe_runner("billing_meter")


API = {"event_name": "api_requests", "display_name": "API requests", "aggregation": "sum"}


@pytest.mark.through_playbook("billing_meter")
def test_check_then_create_then_noop(stripe_fake, run):
    res = run(API, check=True, diff=True)
    assert res["changed"] is True, res
    predicted = dict(id=None, event_name="api_requests", display_name="API requests", aggregation="sum",
                     customer_mapping_key="stripe_customer_id", value_key="value", status="active")
    assert res["diff"] == {"before": {}, "after": predicted} and res["meter"] == predicted
    assert stripe_fake.writes() == [] and stripe_fake.objects("billing/meters") == []
    assert res["api_calls"] == {"reads": 1, "writes": 0}

    res = run(API, diff=True)
    assert res["changed"] is True, res
    [meter] = stripe_fake.objects("billing/meters")
    assert res["meter"] == dict(predicted, id=meter["id"])
    assert (meter["event_name"], meter["display_name"], meter["default_aggregation"], meter["customer_mapping"],
            meter["value_settings"], meter["status"]) == (
        "api_requests", "API requests", {"formula": "sum"},
        {"event_payload_key": "stripe_customer_id", "type": "by_id"}, {"event_payload_key": "value"}, "active")
    assert [(r.method, r.path) for r in stripe_fake.writes()] == [("POST", METERS)]
    assert stripe_fake.writes()[0].idempotency_key.startswith("selfbase-")

    stripe_fake.reset_log()
    res = run(API, diff=True)
    assert res["changed"] is False, res
    assert res["diff"]["before"] == res["diff"]["after"] == res["meter"]
    assert stripe_fake.writes() == [] and len(stripe_fake.reads()) == 1
    assert res["api_calls"] == {"reads": 1, "writes": 0}


def test_defaults_and_rename(stripe_fake, run):
    res = run({"event_name": "storage_bytes", "aggregation": "last", "value_key": "bytes"})
    assert res["meter"]["display_name"] == "storage_bytes" and res["meter"]["value_key"] == "bytes", res

    stripe_fake.reset_log()
    res = run({"event_name": "storage_bytes", "display_name": "Storage"}, check=True, diff=True)
    assert res["changed"] is True and res["diff"]["after"]["display_name"] == "Storage", res
    assert stripe_fake.writes() == []

    res = run({"event_name": "storage_bytes", "display_name": "Storage"})
    assert res["changed"] is True and res["meter"]["display_name"] == "Storage", res
    meter_id = res["meter"]["id"]
    assert [(r.path, r.params) for r in stripe_fake.writes()] == [(METERS + "/" + meter_id, {"display_name": "Storage"})]
    assert stripe_fake.get("billing/meters", meter_id)["display_name"] == "Storage"

    stripe_fake.reset_log()
    # Options left out are not compared: no change for the immutable ones either.
    assert run({"event_name": "storage_bytes"})["changed"] is False
    assert stripe_fake.writes() == []


def test_absent_deactivates_and_present_reactivates(stripe_fake, run):
    meter_id = run(API)["meter"]["id"]
    absent = dict(API, state="absent")

    stripe_fake.reset_log()
    res = run(absent, check=True, diff=True)
    assert res["changed"] is True and res["diff"]["after"]["status"] == "inactive", res
    assert stripe_fake.writes() == [] and stripe_fake.get("billing/meters", meter_id)["status"] == "active"

    res = run(absent)
    assert res["changed"] is True and res["meter"]["status"] == "inactive", res
    assert [r.path for r in stripe_fake.writes()] == [METERS + "/%s/deactivate" % meter_id]
    assert stripe_fake.get("billing/meters", meter_id)["status"] == "inactive"

    stripe_fake.reset_log()
    assert run(absent)["changed"] is False
    assert stripe_fake.writes() == []

    res = run(API)
    assert res["changed"] is True and res["meter"]["status"] == "active" and res["meter"]["id"] == meter_id, res
    assert [r.path for r in stripe_fake.writes()] == [METERS + "/%s/reactivate" % meter_id]
    assert len(stripe_fake.objects("billing/meters")) == 1

    # a second deactivation within Stripe's 24 h key retention is a real write, not a stale replay
    assert run(absent)["changed"] is True
    assert stripe_fake.get("billing/meters", meter_id)["status"] == "inactive"

    stripe_fake.reset_log()
    res = run({"event_name": "never_created", "state": "absent"})
    assert res["changed"] is False and res["meter"] == {}, res
    assert stripe_fake.writes() == []


def test_immutable_option_fails_before_any_write(stripe_fake, run):
    run(API)
    stripe_fake.reset_log()
    cases = [({"aggregation": "count"}, "aggregation"), ({"customer_mapping_key": "cus"}, "customer_mapping_key"),
             ({"value_key": "n"}, "value_key")]
    for args, field in cases:
        res = run(dict(API, display_name="Renamed too", **args))
        assert res["failed"] is True and res["msg"].startswith(field + ":"), res
        assert "cannot change" in res["msg"]
    assert stripe_fake.writes() == []
    assert stripe_fake.objects("billing/meters")[0]["display_name"] == "API requests"


@pytest.mark.parametrize("args, field", [
    ({"event_name": "api requests"}, "event_name"),
    ({"event_name": ""}, "event_name"),
    ({"event_name": "x" * 101}, "event_name"),
    ({"display_name": "x" * 251}, "display_name"),
    ({"value_key": "a b"}, "value_key"),
    ({"aggregation": "max"}, "aggregation"),
    ({"api_base": "ftp://stripe.example"}, "api_base"),
    ({"max_retries": -1}, "max_retries"),
])
def test_bad_input_fails_before_any_call(stripe_fake, run, args, field):
    res = run(dict(API, **args))
    assert res["failed"] is True and field in res["msg"], res
    assert stripe_fake.requests == []


def test_key_from_environment_and_never_returned(stripe_fake, monkeypatch):
    monkeypatch.setenv("STRIPE_API_KEY", stripe_fake.api_key)
    monkeypatch.setenv("STRIPE_API_BASE", stripe_fake.url)
    res = Runner(None, None)("billing_meter", API, login=False)
    assert res["changed"] is True and len(stripe_fake.objects("billing/meters")) == 1, res
    assert stripe_fake.api_key not in json.dumps(res)
    monkeypatch.delenv("STRIPE_API_KEY")
    res = Runner(None, None)("billing_meter", API, login=False)
    assert res["failed"] is True and "api_key" in res["msg"], res


@pytest.mark.parametrize("fault", [dict(status=429), dict(drop=True), dict(status=500, after_store=True)],
                         ids=["429", "drop", "500-after-store"])
def test_faults_end_with_exactly_one_meter(stripe_fake, run, fault):
    stripe_fake.fail_next(method="POST", path_prefix=METERS, count=2, **fault)
    res = run(API)
    assert res["changed"] is True, res
    [meter] = stripe_fake.objects("billing/meters")
    assert res["meter"]["id"] == meter["id"]
    posts = stripe_fake.writes()
    assert len(posts) == 3 and len({r.idempotency_key for r in posts}) == 1
    stripe_fake.reset_log()
    assert run(API)["changed"] is False
    assert stripe_fake.writes() == []


def test_a_stored_500_fails_the_run_and_the_next_run_creates_one_meter(stripe_fake, run):
    """Stripe stores a 500 under its key: that run fails; the next one finds no meter, gets the stored 500 for the
    same key, and creates the meter under the next key of the chain."""
    stripe_fake.fail_next(method="POST", path_prefix=METERS, status=500)
    res = run(API)
    assert res["failed"] is True and stripe_fake.objects("billing/meters") == []
    res = run(API)
    assert res["changed"] is True, res
    assert len(stripe_fake.objects("billing/meters")) == 1
    assert [(r.status, r.replayed) for r in stripe_fake.writes()] == [(500, False), (500, True), (200, False)]


def test_finds_the_meter_across_pages(stripe_fake, run):
    with stripe_fake.lock:
        for i in range(150):
            stripe_fake.meter_create({"event_name": "metric_%d" % i, "display_name": "m%d" % i,
                                      "default_aggregation": {"formula": "count"}})
    res = run({"event_name": "metric_0", "aggregation": "count", "display_name": "m0"})
    assert res["changed"] is False and res["api_calls"] == {"reads": 2, "writes": 0}, res
