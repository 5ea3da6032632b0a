"""Usage to Stripe billing meters (migration 0006 and roles/host_services/files/billing/stripe_events.py, push_usage): contract tests
against the fake Stripe, whose meter event summaries are compared with the platform's own usage."""

from __future__ import annotations

import datetime
import json
import pathlib
import sys
import time
import uuid

import psycopg
import pytest
import stripe

from fakes.stripe_fake import API_VERSION
from test_isolation import A, B, tenants  # noqa: F401  pylint: disable=unused-import
from test_security import ROLES, error, logins  # noqa: F401  pylint: disable=unused-import

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / ".cache" / "collections"), str(ROOT / "roles" / "host_services" / "files" / "billing")]
import stripe_events  # noqa: E402  pylint: disable=wrong-import-position

HOUR = 3600


def hour_ago(n):
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.replace(minute=0, second=0, microsecond=0) - datetime.timedelta(hours=n)


@pytest.fixture()
def push(tenants, stripe_fake, pg_server, db):  # noqa: F811
    """A bandwidth meter in Stripe, the customers of alpha and bravo, and a billing login's connection."""
    # the tests place usage in hours relative to the open one: none may close while a test runs
    left = HOUR - time.time() % HOUR
    if left < 120:
        time.sleep(left + 1)
    tenants.execute("DELETE FROM platform.meter_pushes")  # seeded for the isolation tests
    client = stripe.StripeClient(stripe_fake.api_key, stripe_version=API_VERSION,
                                 base_addresses={"api": stripe_fake.url})
    meter = client.raw_request("post", "/v1/billing/meters", display_name="Bandwidth", event_name="bandwidth_bytes",
                               default_aggregation={"formula": "sum"},
                               customer_mapping={"event_payload_key": "customer", "type": "by_id"},
                               value_settings={"event_payload_key": "bytes"}).data
    tenants.execute("UPDATE platform.plan_quotas SET stripe_meter_id = %s WHERE metric = 'bandwidth_bytes'",
                    (meter["id"],))
    customers = {}
    for tenant in (A, B):
        cus = client.raw_request("post", "/v1/customers", name=str(tenant)).data
        tenants.execute("UPDATE platform.tenants SET stripe_customer_id = %s WHERE id = %s", (cus["id"], tenant))
        customers[tenant] = cus["id"]
    name = f"billing_{uuid.uuid4().hex[:6]}"
    tenants.execute(f'CREATE ROLE "{name}" LOGIN IN ROLE selfbase_billing')
    conn = stripe_events.connect(pg_server.conninfo(db, user=name))

    class Push:
        fake, db, login = stripe_fake, tenants, conn
        meter_id, customer = meter["id"], customers

        @staticmethod
        def api():
            return stripe_events.StripeApi(stripe_fake.api_key, stripe_fake.url, API_VERSION, timeout=5, retries=3)

        def run(self, api=None, **kw):
            return stripe_events.push_usage(conn, api or self.api(), settle=0, **kw)

        def use(self, tenant, quantity, at, metric="bandwidth_bytes"):
            """Overage-priced usage at a past time, as the metering agent records it (any month)."""
            with tenants.transaction():
                # the rollup trigger runs as the table owner, under row-level security
                tenants.execute("SELECT set_config('app.tenant_id', %s, true)", (str(tenant),))
                event = tenants.execute(
                    "INSERT INTO platform.usage_events (tenant_id, metric, quantity, idempotency_key, occurred_at) "
                    "VALUES (%s, %s, %s, %s, %s) RETURNING id",
                    (tenant, metric, quantity, uuid.uuid4().hex, at)).fetchone()["id"]
                tenants.execute("INSERT INTO platform.usage_overages (tenant_id, metric, usage_event_id, quantity, "
                                "unit_price) VALUES (%s, %s, %s, %s, 0.5)", (tenant, metric, event, quantity))

        def overage(self, tenant):
            """The platform's overage per closed hour (epoch seconds)."""
            return {int(r["hour"].timestamp()): int(r["q"]) for r in tenants.execute(
                "SELECT date_bin('1 hour', e.occurred_at, 'epoch') AS hour, sum(o.quantity) AS q "
                "FROM platform.usage_overages o JOIN platform.usage_events e ON e.id = o.usage_event_id "
                "WHERE o.tenant_id = %s AND e.occurred_at < date_bin('1 hour', now(), 'epoch') GROUP BY 1",
                (tenant,))}

        def summaries(self, tenant, hours=80):
            start = int(hour_ago(hours).timestamp())
            params = {"customer": customers[tenant], "start_time": start, "end_time": start + (hours + 1) * HOUR,
                      "value_grouping_window": "hour", "limit": 100}
            out = {}
            while True:
                page = client.raw_request("get", "/v1/billing/meters/%s/event_summaries" % meter["id"], **params).data
                out.update((s["start_time"], int(s["aggregated_value"])) for s in page["data"])
                if not page["has_more"]:
                    return out
                params["starting_after"] = page["data"][-1]["id"]

    yield Push()
    conn.close()
    tenants.execute(f'DROP OWNED BY "{name}"')
    tenants.execute(f'DROP ROLE "{name}"')


def meter_posts(fake):
    return fake.writes("/v1/billing/meter_events")


def test_closed_hours_are_pushed_once_and_stripe_sums_equal_the_platforms_usage(push):
    for n, (a, b) in enumerate([(100, 7), (250, 0), (40, 900)], start=1):
        push.use(A, a, hour_ago(n) + datetime.timedelta(minutes=10))
        if b:
            push.use(B, b, hour_ago(n) + datetime.timedelta(minutes=50))
    push.use(A, 500, datetime.datetime.now(datetime.timezone.utc))  # the open hour waits
    res = push.run()
    assert (res["planned"], res["sent"], res["expired"]) == (5, 5, 0), res
    assert push.summaries(A) == push.overage(A) and push.summaries(B) == push.overage(B)
    assert sum(push.overage(A).values()) == 390
    assert push.fake.meter_errors == []
    again = push.run()
    assert again == {"planned": 0, "sent": 0, "expired": 0, "checked": 0, "unverified": 0, "calls": 0}
    idents = [r.params["identifier"] for r in meter_posts(push.fake)]
    assert len(idents) == len(set(idents)) == 5
    assert all(r.idempotency_key == r.params["identifier"] for r in meter_posts(push.fake))


def test_a_crash_mid_batch_and_a_re_run_send_nothing_twice_and_forget_nothing(push):
    for n in range(1, 61):
        push.use(A, n, hour_ago(n))
        push.use(B, 2 * n, hour_ago(n) + datetime.timedelta(minutes=30))
    api = push.api()
    real_post, count = api.post, [0]

    def crashing_post(*args, **kw):
        count[0] += 1
        if count[0] > 50:
            raise KeyboardInterrupt("the host lost power")
        return real_post(*args, **kw)
    api.post = crashing_post
    with pytest.raises(KeyboardInterrupt):
        push.run(api, batch=20, workers=1)
    marked = {r["identifier"] for r in push.db.execute("SELECT identifier FROM platform.meter_pushes "
                                                       "WHERE sent_at IS NOT NULL")}
    assert len(marked) == 40  # two batches of 20 were marked; 10 more reached Stripe unmarked
    res = push.run(batch=20)
    assert res["sent"] == 120 - 40
    assert push.summaries(A) == push.overage(A) and push.summaries(B) == push.overage(B)
    accepted = [e["identifier"] for e in push.fake.db["meter_events"]]
    assert len(accepted) == len(set(accepted)) == 120
    posts = [r.params["identifier"] for r in meter_posts(push.fake)]
    assert not [i for i in marked if posts.count(i) != 1]  # marked ones were never sent again
    # the 10 sent but unmarked went out again, and Stripe replayed its first answer (same idempotency key)
    assert sum(1 for r in meter_posts(push.fake) if r.replayed) == 10


def test_the_v2_stream_sends_100_a_call_and_a_crash_after_a_call_counts_nothing_twice(push):
    for n in range(1, 61):
        push.use(A, n, hour_ago(n))
        push.use(B, 2 * n, hour_ago(n) + datetime.timedelta(minutes=30))
    api = push.api()
    real, count = api.stream_events, [0]

    def crashing(events):
        count[0] += 1
        real(events)
        if count[0] == 2:
            raise KeyboardInterrupt("the host lost power after Stripe took the batch")
    api.stream_events = crashing
    with pytest.raises(KeyboardInterrupt):
        push.run(api, batch=100, workers=1, stream=True)
    marked = push.db.execute("SELECT count(*) AS n FROM platform.meter_pushes WHERE sent_at IS NOT NULL").fetchone()
    assert marked["n"] == 100
    res = push.run(stream=True)
    assert (res["sent"], res["calls"]) == (20, 3)  # the meter, a session and one call: the 20 Stripe took
    assert push.summaries(A) == push.overage(A) and push.summaries(B) == push.overage(B)
    assert len(push.fake.db["meter_events"]) == 120 and push.fake.meter_errors == []
    streams = push.fake.writes("/v2/billing/meter_event_stream")
    assert [len(r.params["events"]) for r in streams] == [100, 20, 20]
    assert push.run(stream=True) == {"planned": 0, "sent": 0, "expired": 0, "checked": 0, "unverified": 0, "calls": 0}


def test_the_fake_stream_is_as_strict_as_stripe(push):
    api = push.api()
    event = {"event_name": "bandwidth_bytes", "identifier": "x", "payload": {"customer": push.customer[A], "bytes": "1"}}
    with pytest.raises(stripe.InvalidRequestError):
        api.stream_events([dict(event, identifier="e%d" % i) for i in range(101)])
    with pytest.raises(stripe.InvalidRequestError):
        api.stream_events([dict(event, payload={"customer": push.customer[A], "bytes": 1})])
    api.stream_events([dict(event, timestamp="2001-01-01T00:00:00.000Z")])  # taken, refused later
    assert [e["error"] for e in push.fake.meter_errors] == ["timestamp_too_far_in_past"]
    with push.fake.lock:
        for session in push.fake.db["meter_event_sessions"].values():
            session["_expires"] = 0
    with pytest.raises(stripe.TemporarySessionExpiredError):
        api.stream_events([event])
    api.stream_events([event])  # in a new session
    assert "x" in push.fake.db["meter_identifiers"]


def test_usage_recorded_after_an_hour_was_pushed_goes_out_as_a_revision(push):
    push.use(A, 100, hour_ago(2))
    push.run()
    push.use(A, 30, hour_ago(2) + datetime.timedelta(minutes=59))  # the agent caught up late
    res = push.run()
    assert res["sent"] == 1
    rows = push.db.execute("SELECT revision, quantity FROM platform.meter_pushes ORDER BY revision").fetchall()
    assert [(r["revision"], r["quantity"]) for r in rows] == [(1, 100), (2, 30)]
    assert push.summaries(A) == push.overage(A) == {int(hour_ago(2).timestamp()): 130}


def test_rate_limits_and_server_errors_are_retried(push):
    for n in range(1, 4):
        push.use(A, 50, hour_ago(n))
    push.fake.fail_next(status=429, count=2, path_prefix="/v1/billing/meter_events", method="POST")
    push.fake.fail_next(status=503, count=1, path_prefix="/v1/billing/meter_events", method="POST")
    res = push.run(workers=1)
    assert res["sent"] == 3 and push.summaries(A) == push.overage(A)
    assert sum(1 for r in meter_posts(push.fake) if r.fault) == 3


def test_a_stripe_refusal_marks_what_was_taken_and_fails(push):
    for n in range(1, 4):
        push.use(A, 50, hour_ago(n))
    push.fake.fail_next(status=400, count=1, path_prefix="/v1/billing/meter_events", method="POST")
    with pytest.raises(stripe.StripeError):
        push.run(workers=1)
    assert push.db.execute("SELECT count(*) AS n FROM platform.meter_pushes WHERE sent_at IS NOT NULL"
                           ).fetchone()["n"] == 2
    assert push.run()["sent"] == 1 and push.summaries(A) == push.overage(A)


def test_hours_older_than_stripe_takes_are_reported_not_sent(push):
    push.db.execute("INSERT INTO platform.meter_pushes (identifier, tenant_id, metric, hour, revision, quantity, "
                    "stripe_customer_id, stripe_meter_id) VALUES ('sb_old', %s, 'bandwidth_bytes', "
                    "date_bin('1 hour', now() - interval '35 days', 'epoch'), 1, 10, %s, %s)",
                    (A, push.customer[A], push.meter_id))
    assert push.run() == {"planned": 1, "sent": 0, "expired": 1, "checked": 0, "unverified": 0, "calls": 0}
    assert meter_posts(push.fake) == []
    err = error(push.login, "SELECT * FROM platform.meter_push_plan(interval '0', interval '35 days')")
    assert err.sqlstate == "22023" and "35" in str(err)


def _taken_then_lost(push, tenant, quantity, hour):
    """Overage of a closed hour that Stripe takes, while the host loses power before the push is marked."""
    push.use(tenant, quantity, hour)
    api = push.api()
    real = api.post

    def post_then_crash(*args, **kw):
        real(*args, **kw)
        raise KeyboardInterrupt("the host lost power after Stripe took the event")
    api.post = post_then_crash
    with pytest.raises(KeyboardInterrupt):
        push.run(api, workers=1)


def _a_day_later(push):
    """25 hours pass: Stripe forgets identifiers and idempotency keys (past its 24 hours); the ledger's first
    attempts age the same."""
    push.fake.advance(25 * HOUR)
    push.db.execute("UPDATE platform.meter_pushes SET attempted_at = attempted_at - interval '25 hours'")


def test_a_push_taken_but_unmarked_is_not_counted_twice_after_stripes_24_hours(push):
    _taken_then_lost(push, A, 100, hour_ago(3))
    _a_day_later(push)
    res = push.run()
    assert (res["planned"], res["checked"], res["sent"], res["unverified"]) == (1, 1, 1, 0), res
    assert len(meter_posts(push.fake)) == 1  # checked against the summary, never sent again
    assert push.summaries(A) == push.overage(A) == {int(hour_ago(3).timestamp()): 100}
    assert push.run()["planned"] == 0


def test_resent_past_stripes_24_hours_the_same_identifier_counts_twice(push):
    """Without the check: the fake forgets identifiers and keys as Stripe may, and the old resend doubles the bill."""
    _taken_then_lost(push, A, 100, hour_ago(3))
    _a_day_later(push)
    first = meter_posts(push.fake)[0]
    push.api().post("/v1/billing/meter_events", first.params, first.params["identifier"])
    assert push.summaries(A) == {int(hour_ago(3).timestamp()): 200}
    assert not meter_posts(push.fake)[1].replayed


def test_a_push_stripe_never_counted_is_resent_after_the_window(push):
    push.use(A, 40, hour_ago(2))
    api = push.api()

    def crash(*args, **kw):
        raise KeyboardInterrupt("the host lost power before the call")
    api.post = crash
    with pytest.raises(KeyboardInterrupt):
        push.run(api, workers=1)
    _a_day_later(push)
    res = push.run()
    assert (res["checked"], res["sent"], res["unverified"]) == (1, 1, 0), res
    assert push.summaries(A) == push.overage(A) == {int(hour_ago(2).timestamp()): 40}
    fresh = push.db.execute("SELECT now() - attempted_at < interval '1 minute' AS fresh "
                            "FROM platform.meter_pushes").fetchone()
    assert fresh["fresh"]  # the resend opened a new window


def test_a_summary_that_fits_neither_all_nor_none_is_left_to_an_operator(push, logins):  # noqa: F811
    hour = hour_ago(4)
    _taken_then_lost(push, A, 100, hour)
    # usage that something else sent for the same customer and hour
    push.api().post("/v1/billing/meter_events", {
        "event_name": "bandwidth_bytes", "identifier": "other", "timestamp": int(hour.timestamp()) + 60,
        "payload": {"customer": push.customer[A], "bytes": "7"}}, "other")
    _a_day_later(push)
    res = push.run()
    assert (res["checked"], res["sent"], res["unverified"]) == (1, 0, 1), res
    assert len(meter_posts(push.fake)) == 2 and push.summaries(A) == {int(hour.timestamp()): 107}
    monitor = logins("monitor")
    assert monitor.execute("SELECT count(*) AS n FROM platform.meter_pushes WHERE sent_at IS NULL "
                           "AND attempted_at < now() - interval '23 hours'").fetchone()["n"] == 1
    # an operator who compared them marks the push; the next run has nothing to do
    push.db.execute("UPDATE platform.meter_pushes SET sent_at = now()")
    assert push.run()["planned"] == 0


def test_a_meter_that_does_not_sum_its_events_is_left_to_an_operator(push):
    _taken_then_lost(push, A, 100, hour_ago(3))
    _a_day_later(push)
    with push.fake.lock:  # a count meter: its summary counts events, whatever their values
        push.fake.db["billing/meters"][push.meter_id]["default_aggregation"]["formula"] = "count"
    assert push.summaries(A) == {int(hour_ago(3).timestamp()): 1}
    res = push.run()
    assert (res["checked"], res["sent"], res["unverified"]) == (1, 0, 1), res
    assert len(meter_posts(push.fake)) == 1


def test_a_late_push_waits_for_a_revision_inside_the_window_of_the_same_hour(push):
    hour = hour_ago(5)
    _taken_then_lost(push, A, 100, hour)
    _a_day_later(push)
    push.use(A, 30, hour + datetime.timedelta(minutes=30))  # a revision, first sent now
    res = push.run()
    assert (res["planned"], res["checked"], res["unverified"], res["sent"]) == (2, 1, 1, 1), res
    res = push.run()  # the revision is marked: the summary settles the older push
    assert (res["checked"], res["sent"], res["unverified"]) == (1, 1, 0), res
    assert push.summaries(A) == push.overage(A) == {int(hour.timestamp()): 130}


UNBILLED = "SELECT tenant, metric, reason, quantity FROM platform.unbilled_overage() ORDER BY 1, 2"


def test_overage_that_no_meter_event_carries_is_reported(push, logins):  # noqa: F811
    push.use(A, 100, hour_ago(2))  # a customer and a meter: billed
    push.use(A, 40, hour_ago(3), metric="api_requests")  # its quota has no meter
    push.db.execute("UPDATE platform.tenants SET stripe_customer_id = NULL WHERE id = %s", (B,))
    push.use(B, 7, hour_ago(2))  # no customer
    push.use(B, 9, datetime.datetime.now(datetime.timezone.utc))  # the open hour: not yet
    push.use(B, 11, hour_ago(36 * 24))  # past Stripe's 35 days: nothing can bill it any more
    assert push.run()["sent"] == 1
    expected = [("alpha", "api_requests", "no_meter", 40), ("bravo", "bandwidth_bytes", "no_customer", 7)]
    for who in ("monitor", "control"):
        assert [tuple(r.values()) for r in logins(who).execute(UNBILLED)] == expected, who
    # the tenant gets its customer: the next run bills its overage, and the report empties
    push.db.execute("UPDATE platform.tenants SET stripe_customer_id = %s WHERE id = %s", (push.customer[B], B))
    assert push.run()["sent"] == 1 and push.summaries(B) == {int(hour_ago(2).timestamp()): 7}
    assert [tuple(r.values()) for r in logins("monitor").execute(UNBILLED)] == expected[:1]


def test_the_fake_refuses_what_stripe_refuses(push):
    api = push.api()
    now = push.fake.now()
    base = {"event_name": "bandwidth_bytes", "payload": {"customer": push.customer[A], "bytes": "1"}}
    refused = [(dict(base, timestamp=now - 36 * 86400), "timestamp"), (dict(base, timestamp=now + 600), "timestamp"),
               (dict(base, identifier="x" * 101), "identifier")]
    for bad, param in refused:
        with pytest.raises(stripe.InvalidRequestError) as err:
            api.post("/v1/billing/meter_events", bad, uuid.uuid4().hex)
        assert err.value.param == param
    api.post("/v1/billing/meter_events", dict(base, identifier="same"), "k1")
    with pytest.raises(stripe.InvalidRequestError) as err:
        api.post("/v1/billing/meter_events", dict(base, identifier="same"), "k2")
    assert "already exists with identifier" in str(err.value)
    push.fake.advance(24 * HOUR)  # Stripe may forget an identifier and an idempotency key after 24 hours
    api.post("/v1/billing/meter_events", dict(base, identifier="same"), "k1")
    assert not meter_posts(push.fake)[-1].replayed and len(push.fake.db["meter_events"]) == 2
    with pytest.raises(stripe.InvalidRequestError):
        api.get("/v1/billing/meters/%s/event_summaries" % push.meter_id,
                {"customer": push.customer[A], "start_time": now - 100, "end_time": now, "value_grouping_window": "hour"})


# ---------------------------------------------------------------- attacks


@pytest.mark.parametrize("who", list(ROLES))
def test_no_other_login_can_plan_or_mark_pushes(tenants, logins, who):  # noqa: F811
    c = logins(who)
    for sql in ("SELECT * FROM platform.meter_push_plan(interval '0', interval '1 day')",
                "SELECT platform.meter_push_sent(ARRAY['sb_x'])", "SELECT platform.meter_push_attempt(ARRAY['sb_x'])"):
        assert isinstance(error(c, sql), psycopg.errors.InsufficientPrivilege), (who, sql)


@pytest.mark.parametrize("who", ["app", "hasura", "auth"])
def test_no_tenant_facing_login_reads_every_tenants_unbilled_overage(push, logins, who):  # noqa: F811
    assert isinstance(error(logins(who), UNBILLED), psycopg.errors.InsufficientPrivilege), who
    assert isinstance(error(push.login, UNBILLED), psycopg.errors.InsufficientPrivilege)


def test_with_execute_left_to_public_the_app_read_every_tenants_usage(push, logins):  # noqa: F811
    """The defence is the REVOKE from PUBLIC: the function reads every tenant's overage as its owner."""
    push.use(B, 7, hour_ago(2), metric="api_requests")
    push.db.execute("GRANT EXECUTE ON FUNCTION platform.unbilled_overage() TO PUBLIC")
    app = logins("app")
    app.execute("SELECT set_config('app.tenant_id', %s, false)", (str(A),))
    assert [tuple(r.values()) for r in app.execute(UNBILLED)] == [("bravo", "api_requests", "no_meter", 7)]


def test_the_billing_login_cannot_touch_the_push_ledger_directly(push):
    for sql in ("SELECT * FROM platform.meter_pushes", "UPDATE platform.meter_pushes SET sent_at = now()",
                "DELETE FROM platform.meter_pushes", "SELECT * FROM platform.usage_overages",
                "SELECT * FROM platform.meter_error_reports", "DELETE FROM platform.meter_error_reports"):
        assert isinstance(error(push.login, sql), psycopg.errors.InsufficientPrivilege), sql


def test_with_execute_left_to_public_the_app_could_mark_usage_as_billed(push, logins):
    """The defence is the REVOKE from PUBLIC: marked pushes are never sent, so the usage is never billed."""
    push.use(A, 100, hour_ago(2))
    with push.db.transaction():
        planned = [r["identifier"] for r in push.db.execute(
            "SELECT * FROM platform.meter_push_plan(interval '0', interval '1 day')")]
    push.db.execute("GRANT EXECUTE ON FUNCTION platform.meter_push_sent(text[]) TO PUBLIC")
    logins("app").execute("SELECT platform.meter_push_sent(%s)", (planned,))
    assert push.run()["sent"] == 0 and push.summaries(A) == {}


def test_with_execute_left_to_public_the_app_could_have_usage_billed_twice(push, logins):
    """The defence is the REVOKE from PUBLIC: a push past the window that the app marks as just attempted is
    resent without the summary check, and Stripe, which forgot its identifier, counts it again."""
    _taken_then_lost(push, A, 100, hour_ago(3))
    _a_day_later(push)
    push.db.execute("GRANT EXECUTE ON FUNCTION platform.meter_push_attempt(text[]) TO PUBLIC")
    idents = [r["identifier"] for r in push.db.execute("SELECT identifier FROM platform.meter_pushes")]
    assert logins("app").execute("SELECT platform.meter_push_attempt(%s) AS n", (idents,)).fetchone()["n"] == 1
    assert push.run()["checked"] == 0
    assert push.summaries(A) == {int(hour_ago(3).timestamp()): 200}


# ---------------------------------------------------------------- Stripe's meter error reports

REFUSED = "SELECT coalesce(sum(error_count), 0) AS n FROM platform.meter_error_reports " \
          "WHERE created > now() - interval '24 hours'"


def test_refused_meter_events_reach_the_ledger_from_stripes_error_reports(push, logins):  # noqa: F811
    push.db.execute("UPDATE platform.tenants SET stripe_customer_id = 'cus_gone' WHERE id = %s", (A,))
    push.use(A, 100, hour_ago(2))
    push.use(B, 5, hour_ago(2))
    assert push.run(stream=True)["sent"] == 2  # the stream takes both, and Stripe refuses one later
    api = push.api()
    api.stream_events([{"event_name": "no_such_meter", "identifier": "stray",
                        "payload": {"customer": push.customer[B], "bytes": "1"}}])
    assert stripe_events.read_meter_errors(push.login, api) == {"reports": 2, "new": 2, "refused": 2}
    rows = push.db.execute("SELECT event_type, code, stripe_meter_id, error_count, sample_identifiers, message "
                           "FROM platform.meter_error_reports ORDER BY code").fetchall()
    (a_push,) = push.db.execute("SELECT identifier FROM platform.meter_pushes WHERE tenant_id = %s", (A,)).fetchall()
    assert [(r["event_type"], r["code"], r["stripe_meter_id"], r["error_count"], r["sample_identifiers"])
            for r in rows] == [
        ("v1.billing.meter.error_report_triggered", "meter_event_customer_not_found", push.meter_id, 1,
         [a_push["identifier"]]),
        ("v1.billing.meter.no_meter_found", "no_meter", None, 1, ["stray"])]
    assert "cus_gone" in rows[0]["message"]
    marked = push.db.execute("SELECT tenant_id, refused_code FROM platform.meter_pushes ORDER BY 2").fetchall()
    assert [(r["tenant_id"], r["refused_code"]) for r in marked] == [(A, "meter_event_customer_not_found"), (B, None)]
    assert logins("monitor").execute(REFUSED).fetchone()["n"] == 2
    # the next run reads the overlap again and records nothing twice
    assert stripe_events.read_meter_errors(push.login, push.api()) == {"reports": 2, "new": 0, "refused": 0}
    assert push.db.execute("SELECT count(*) AS n FROM platform.meter_error_reports").fetchone()["n"] == 2


def test_the_fake_lists_v2_events_as_strictly_as_stripe(push):
    api = push.api()
    for n in range(3):
        api.stream_events([{"event_name": "no_such_meter", "identifier": "e%d" % n,
                            "payload": {"customer": push.customer[A], "bytes": "1"}}])
    client = api.client
    since = {"gte": "2020-01-01T00:00:00.000Z"}
    first = client.raw_request("get", "/v2/core/events", types=stripe_events.METER_ERROR_TYPES, created=since,
                               limit=2).data
    assert len(first["data"]) == 2 and first["next_page_url"]
    rest = client.raw_request("get", first["next_page_url"]).data
    assert len(rest["data"]) == 1 and rest["next_page_url"] is None
    idents = [e["data"]["reason"]["error_types"][0]["sample_errors"][0]["request"]["identifier"]
              for e in first["data"] + rest["data"]]
    assert idents == ["e2", "e1", "e0"]  # newest first
    assert len(list(api.v2_events(stripe_events.METER_ERROR_TYPES, 0))) == 3
    for bad in ({"type": "v1.billing.meter.no_meter_found"}, {"types": ["t"] * 21}, {"created": {"gte": "yesterday"}},
                {"limit": 101}):
        with pytest.raises(stripe.StripeError):
            client.raw_request("get", "/v2/core/events", **bad)
    session = stripe.StripeClient(client.v2.billing.meter_event_session.create().authentication_token,
                                  base_addresses={"api": push.fake.url})
    with pytest.raises(stripe.AuthenticationError):
        session.raw_request("get", "/v2/core/events")
    push.fake.advance(31 * 86400)  # Stripe lists 30 days of events
    assert list(api.v2_events(stripe_events.METER_ERROR_TYPES, 0)) == []


@pytest.mark.parametrize("who", list(ROLES))
def test_no_other_login_records_meter_error_reports(tenants, logins, who):  # noqa: F811
    c = logins(who)
    for sql in ("SELECT platform.meter_error_record('{}')", "SELECT platform.meter_error_cursor()",
                "INSERT INTO platform.meter_error_reports (stripe_event_id, code, event_type, error_count, created) "
                "VALUES ('evt_x', 'x', 'v1.billing.meter.no_meter_found', 1, now())"):
        assert isinstance(error(c, sql), psycopg.errors.InsufficientPrivilege), (who, sql)


def test_with_execute_left_to_public_the_app_flagged_another_tenants_usage_as_refused(push, logins):  # noqa: F811
    """The defence is the REVOKE from PUBLIC: a forged report marks bravo's billed usage as refused by Stripe."""
    push.use(B, 5, hour_ago(2))
    push.run()
    (b_push,) = push.db.execute("SELECT identifier FROM platform.meter_pushes").fetchall()
    push.db.execute("GRANT EXECUTE ON FUNCTION platform.meter_error_record(jsonb) TO PUBLIC")
    forged = {"id": "evt_forged", "type": "v1.billing.meter.error_report_triggered", "created": "2026-01-01T00:00:00Z",
              "data": {"reason": {"error_count": 1, "error_types": [{
                  "code": "meter_event_invalid_value", "error_count": 1,
                  "sample_errors": [{"error_message": "x", "request": {"identifier": b_push["identifier"]}}]}]}}}
    logins("app").execute("SELECT platform.meter_error_record(%s)", (json.dumps(forged),))
    assert push.db.execute("SELECT refused_code FROM platform.meter_pushes").fetchone()["refused_code"] \
        == "meter_event_invalid_value"
