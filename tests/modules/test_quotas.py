"""Quota enforcement in SQL (check_quota, quota_status, record_usage, the hard
count-limit triggers) against a real PostgreSQL server, through a login role
that is a member of selfbase_app, as the application uses them."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest

QUOTA_EXCEEDED = "SB001"


def assert_refused(session, metric, quantity, key):
    """record_usage refuses the event over a hard limit (SQLSTATE SB001)."""
    with pytest.raises(psycopg.Error) as err:
        session.record(metric, quantity, key)
    assert err.value.sqlstate == QUOTA_EXCEEDED
    return err.value


def acme_on_plan(schema, plan, app, *quota, **options):
    """A plan quota (plan_quota's arguments), tenant acme on the plan, and its application session."""
    plan_quota(schema, *quota, **options)
    t = plan("acme")
    return t, app(t)


@pytest.fixture()
def app_user(schema):
    name = f"selfbase_app_{uuid.uuid4().hex[:8]}"
    schema.execute(f'CREATE ROLE "{name}" LOGIN IN ROLE selfbase_app')
    yield name
    schema.execute(f'DROP ROLE IF EXISTS "{name}"')


@pytest.fixture()
def plan(schema):
    """A plan 'q' whose quotas each test sets; returns a function that adds a tenant on it."""
    schema.execute("INSERT INTO platform.plans (code, name) VALUES ('q', 'Quota tests')")

    def tenant(slug, quotas=()):
        tid = uuid.uuid4()
        schema.execute("INSERT INTO platform.tenants (id, slug, name, plan_code) VALUES (%s, %s, %s, 'q')",
                       (tid, slug, slug))
        return tid

    return tenant


def plan_quota(conn, metric, limit, period="month", mode="hard", price=None):
    conn.execute("INSERT INTO platform.plan_quotas (plan_code, metric, limit_value, period, mode, "
                 "overage_unit_price) VALUES ('q', %s, %s, %s, %s, %s)", (metric, limit, period, mode, price))


class App:
    """A selfbase_app session acting for one tenant."""

    def __init__(self, pg_server, db, user, tenant, autocommit=True):
        self.tenant = tenant
        self.conn = pg_server.connect(db, user=user, autocommit=autocommit)
        self.conn.execute(f"SET app.tenant_id = '{tenant}'")
        if not autocommit:
            self.conn.commit()

    def record(self, metric, quantity, key, at=None):
        if at is None:
            return self.conn.execute("SELECT * FROM platform.record_usage(%s, %s, %s, %s)",
                                     (self.tenant, metric, quantity, key)).fetchone()
        return self.conn.execute("SELECT * FROM platform.record_usage(%s, %s, %s, %s, %s)",
                                 (self.tenant, metric, quantity, key, at)).fetchone()

    def check(self, metric, requested=1):
        return self.conn.execute("SELECT * FROM platform.check_quota(%s, %s, %s)",
                                 (self.tenant, metric, requested)).fetchone()

    def status(self, metric):
        rows = {r["metric"]: r for r in self.conn.execute("SELECT * FROM platform.quota_status(%s)",
                                                          (self.tenant,))}
        return rows.get(metric)

    def add_member(self):
        self.conn.execute("INSERT INTO platform.tenant_members (tenant_id, user_id) VALUES (%s, %s)",
                          (self.tenant, uuid.uuid4()))

    def close(self):
        self.conn.close()


@pytest.fixture()
def app(pg_server, db, app_user):
    sessions = []

    def open_session(tenant, autocommit=True):
        s = App(pg_server, db, app_user, tenant, autocommit)
        sessions.append(s)
        return s

    yield open_session
    for s in sessions:
        s.close()


def usage(conn, tenant, metric):
    """Events and rollups of a tenant's metric, read as the superuser."""
    return conn.execute("""
        SELECT (SELECT count(*) FROM platform.usage_events WHERE tenant_id = %(t)s AND metric = %(m)s) AS events,
               (SELECT COALESCE(sum(quantity), 0) FROM platform.usage_events
                 WHERE tenant_id = %(t)s AND metric = %(m)s) AS quantity,
               (SELECT COALESCE(sum(quantity), 0) FROM platform.usage_rollups_daily
                 WHERE tenant_id = %(t)s AND metric = %(m)s) AS rollup_quantity,
               (SELECT COALESCE(sum(events), 0) FROM platform.usage_rollups_daily
                 WHERE tenant_id = %(t)s AND metric = %(m)s) AS rollup_events
    """, {"t": tenant, "m": metric}).fetchone()


def seed_event(conn, tenant, metric, quantity, key, at):
    """An event of an earlier period, as history (record_usage refuses back-dated events)."""
    with conn.transaction():
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", (str(tenant),))
        conn.execute("INSERT INTO platform.usage_events (tenant_id, metric, quantity, idempotency_key, occurred_at) "
                     "VALUES (%s, %s, %s, %s, %s)", (tenant, metric, quantity, key, at))


def members(conn, tenant):
    return conn.execute("SELECT count(*) AS n FROM platform.tenant_members WHERE tenant_id = %s",
                        (tenant,)).fetchone()["n"]


def test_hard_members_limit_blocks_the_insert_past_it(schema, plan, app):
    t, s = acme_on_plan(schema, plan, app, "members", 3, period="none")
    for _n in range(3):
        s.add_member()
    with pytest.raises(psycopg.Error) as err:
        s.add_member()
    assert err.value.sqlstate == QUOTA_EXCEEDED
    assert str(err.value).startswith(f"quota exceeded: tenant {t} already has 3 of 3 members allowed (hard limit)")
    assert err.value.diag.message_hint == "Raise the quota or remove existing rows first."
    assert members(schema, t) == 3
    c = s.check("members")
    assert (c["allowed"], c["used"], c["limit_value"], c["remaining"], c["status"], c["mode"]) == \
        (False, 3, 3, 0, "exceeded", "hard")
    # the control plane (superuser here) is held to the same limit
    with pytest.raises(psycopg.Error) as err:
        schema.execute("INSERT INTO platform.tenant_members (tenant_id, user_id) VALUES (%s, %s)", (t, uuid.uuid4()))
    assert err.value.sqlstate == QUOTA_EXCEEDED
    # after a removal there is room for one again
    schema.execute("DELETE FROM platform.tenant_members WHERE id = (SELECT min(id) FROM platform.tenant_members "
                   "WHERE tenant_id = %s)", (t,))
    s.add_member()
    assert members(schema, t) == 3


def test_concurrent_inserts_cannot_both_take_the_last_slot(schema, plan, app, pg_server, db):
    plan_quota(schema, "members", 2, period="none")
    t = plan("acme")
    app(t).add_member()
    first, second = app(t, autocommit=False), app(t, autocommit=False)

    first.add_member()  # takes the last slot; not committed yet
    pid = second.conn.info.backend_pid
    outcome = {}

    def insert_second():
        try:
            second.add_member()
            second.conn.commit()
            outcome["ok"] = True
        except psycopg.Error as e:
            second.conn.rollback()
            outcome["error"] = e

    thread = threading.Thread(target=insert_second)
    thread.start()
    # the second insert waits for the first transaction (the trigger's quota lock row)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        row = schema.execute("SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = %s",
                             (pid,)).fetchone()
        if row["wait_event_type"] == "Lock":
            break
        time.sleep(0.05)
    assert (row["wait_event_type"], row["wait_event"]) == ("Lock", "transactionid")
    first.conn.commit()
    thread.join(10)
    assert not thread.is_alive()
    assert "ok" not in outcome
    assert outcome["error"].sqlstate == QUOTA_EXCEEDED
    assert members(schema, t) == 2


def test_concurrent_race_lets_exactly_one_through(schema, plan, app):
    plan_quota(schema, "members", 1, period="none")
    for round_ in range(5):
        t = plan(f"race-{round_}")
        sessions = [app(t, autocommit=False) for _n in range(2)]
        barrier = threading.Barrier(2)
        results = []

        def insert(s):
            barrier.wait()
            try:
                s.add_member()
                time.sleep(0.05)  # hold the slot a moment before committing
                s.conn.commit()
                results.append("ok")
            except psycopg.Error as e:
                s.conn.rollback()
                results.append(e.sqlstate)

        threads = [threading.Thread(target=insert, args=(s,)) for s in sessions]
        for th in threads:
            th.start()
        for th in threads:
            th.join(10)
        assert sorted(results) == sorted(["ok", QUOTA_EXCEEDED]), results
        assert members(schema, t) == 1


def test_rolled_back_insert_frees_the_slot_for_the_waiter(schema, plan, app):
    plan_quota(schema, "members", 1, period="none")
    t = plan("acme")
    first, second = app(t, autocommit=False), app(t, autocommit=False)
    first.add_member()
    done = threading.Event()

    def insert_second():
        second.add_member()
        second.conn.commit()
        done.set()

    thread = threading.Thread(target=insert_second)
    thread.start()
    time.sleep(0.3)
    assert not done.is_set()  # waiting for the first
    first.conn.rollback()
    thread.join(10)
    assert done.is_set()
    assert members(schema, t) == 1


def test_hard_event_limit_refuses_and_records_nothing(schema, plan, app):
    t, s = acme_on_plan(schema, plan, app, "api_requests", 10)
    r = s.record("api_requests", 8, "k1")
    assert (r["recorded"], r["status"], r["overage"]) == (True, "warning", 0)
    before = usage(schema, t, "api_requests")
    err = assert_refused(s, "api_requests", 3, "k2")
    assert str(err).startswith(
        f"quota exceeded: tenant {t} has used 8 of 10 api_requests this period; 3 more refused (hard limit)")
    assert usage(schema, t, "api_requests") == before == {"events": 1, "quantity": 8, "rollup_quantity": 8,
                                                          "rollup_events": 1}
    c = s.check("api_requests", 3)
    assert (c["allowed"], c["used"], c["remaining"], c["percent"]) == (False, 8, 2, 80)
    # exactly up to the limit is allowed
    r = s.record("api_requests", 2, "k2")
    assert r["recorded"] is True
    st = s.status("api_requests")
    assert (st["used"], st["limit_value"], st["percent"], st["status"]) == (10, 10, 100, "warning")
    assert_refused(s, "api_requests", 1, "k3")
    assert usage(schema, t, "api_requests")["quantity"] == 10


def test_soft_limit_warns_then_reports_exceeded(schema, plan, app):
    t, s = acme_on_plan(schema, plan, app, "api_requests", 10, mode="soft")
    s.record("api_requests", 7, "k1")
    assert s.status("api_requests")["status"] == "ok"
    assert s.check("api_requests", 0)["status"] == "ok"
    r = s.record("api_requests", 1, "k2")
    assert r["status"] == "warning"
    st = s.status("api_requests")
    assert (st["used"], st["percent"], st["status"], st["mode"]) == (8, 80, "warning", "soft")
    c = s.check("api_requests", 1)
    assert (c["allowed"], c["status"]) == (True, "warning")
    c = s.check("api_requests", 5)
    assert (c["allowed"], c["status"]) == (True, "exceeded")  # soft: allowed, but would exceed
    r = s.record("api_requests", 5, "k3")
    assert (r["recorded"], r["status"], r["overage"]) == (True, "exceeded", 0)
    st = s.status("api_requests")
    assert (st["used"], st["percent"], st["status"]) == (13, 130, "exceeded")
    assert usage(schema, t, "api_requests")["quantity"] == 13
    assert schema.execute("SELECT count(*) AS n FROM platform.usage_overages").fetchone()["n"] == 0


def test_overage_records_the_excess_with_its_price(schema, plan, app):
    t, s = acme_on_plan(schema, plan, app, "bandwidth_bytes", 10, mode="overage", price="0.25")
    r1 = s.record("bandwidth_bytes", 8, "k1")
    assert r1["overage"] == 0
    r2 = s.record("bandwidth_bytes", 5, "k2")
    assert (r2["recorded"], r2["status"], r2["overage"]) == (True, "exceeded", 3)
    r3 = s.record("bandwidth_bytes", 4, "k3")
    assert r3["overage"] == 4
    rows = schema.execute("SELECT tenant_id, metric, usage_event_id, quantity, unit_price FROM platform.usage_overages "
                          "ORDER BY id").fetchall()
    assert [(r["tenant_id"], r["metric"], r["usage_event_id"], r["quantity"], float(r["unit_price"])) for r in rows] == [
        (t, "bandwidth_bytes", r2["usage_event_id"], 3, 0.25),
        (t, "bandwidth_bytes", r3["usage_event_id"], 4, 0.25),
    ]
    assert usage(schema, t, "bandwidth_bytes")["quantity"] == 17
    c = s.check("bandwidth_bytes", 100)
    assert (c["allowed"], c["used"], c["status"], c["mode"]) == (True, 17, "exceeded", "overage")
    # the application sees its own overages
    assert len(s.conn.execute("SELECT * FROM platform.usage_overages").fetchall()) == 2


def test_repeated_idempotency_key_counts_once(schema, plan, app):
    plan_quota(schema, "api_requests", 10)
    t, s = acme_on_plan(schema, plan, app, "bandwidth_bytes", 5, mode="overage", price="1")
    first = s.record("api_requests", 6, "req-1")
    before = usage(schema, t, "api_requests")
    again = s.record("api_requests", 6, "req-1")
    assert (again["recorded"], again["usage_event_id"], again["status"], again["overage"]) == \
        (False, first["usage_event_id"], "duplicate", 0)
    # a re-send is acknowledged even though counting it again would pass the hard limit
    assert usage(schema, t, "api_requests") == before == {"events": 1, "quantity": 6, "rollup_quantity": 6,
                                                          "rollup_events": 1}
    s.record("bandwidth_bytes", 8, "bw-1")
    s.record("bandwidth_bytes", 8, "bw-1")
    assert schema.execute("SELECT count(*) AS n, sum(quantity) AS q FROM platform.usage_overages").fetchone() == \
        {"n": 1, "q": 3}
    assert usage(schema, t, "bandwidth_bytes")["rollup_quantity"] == 8
    # the key is the tenant's: another tenant may use the same one
    other = plan("other")
    assert app(other).record("api_requests", 1, "req-1")["recorded"] is True


def test_tenant_override_wins_over_the_plan(schema, plan, app):
    plan_quota(schema, "api_requests", 100)
    plan_quota(schema, "members", 1, period="none")
    stricter, looser, unlimited, plain = plan("stricter"), plan("looser"), plan("unlimited"), plan("plain")
    schema.execute("""
        INSERT INTO platform.tenant_quotas (tenant_id, metric, limit_value, period, mode) VALUES
          (%s, 'api_requests', 5, 'month', 'hard'),
          (%s, 'members', 3, 'none', 'hard'),
          (%s, 'api_requests', NULL, 'month', 'hard')
    """, (stricter, looser, unlimited))
    s = app(stricter)
    s.record("api_requests", 5, "k1")
    assert_refused(s, "api_requests", 1, "k2")
    assert s.check("api_requests")["limit_value"] == 5

    s = app(looser)
    for _n in range(3):
        s.add_member()
    with pytest.raises(psycopg.Error) as err:
        s.add_member()
    assert err.value.sqlstate == QUOTA_EXCEEDED
    assert members(schema, looser) == 3

    s = app(unlimited)
    assert s.record("api_requests", 1000, "k1")["recorded"] is True
    assert s.check("api_requests")["limit_value"] is None

    s = app(plain)  # no override: the plan's quotas
    assert s.check("api_requests")["limit_value"] == 100
    s.add_member()
    with pytest.raises(psycopg.Error):
        s.add_member()


def test_null_limit_is_unlimited(schema, plan, app):
    t, s = acme_on_plan(schema, plan, app, "api_requests", None)
    r = s.record("api_requests", 10 ** 12, "k1")
    assert (r["recorded"], r["status"], r["overage"]) == (True, "ok", 0)
    c = s.check("api_requests", 10 ** 12)
    assert (c["allowed"], c["used"], c["limit_value"], c["remaining"], c["percent"], c["status"]) == \
        (True, 10 ** 12, None, None, None, "ok")
    st = s.status("api_requests")
    assert (st["limit_value"], st["percent"], st["status"]) == (None, None, "ok")
    # a metric without any quota is unlimited too
    c = s.check("bandwidth_bytes", 10 ** 12)
    assert (c["allowed"], c["limit_value"], c["status"]) == (True, None, "ok")


def test_month_period_ignores_last_month(schema, plan, app):
    t, s = acme_on_plan(schema, plan, app, "api_requests", 10)
    last_month = schema.execute("SELECT date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' "
                                "- interval '1 minute' AS at").fetchone()["at"]
    seed_event(schema, t, "api_requests", 9, "old", last_month)
    assert s.check("api_requests")["used"] == 0
    assert s.record("api_requests", 10, "new")["recorded"] is True  # the old 9 do not count
    assert s.check("api_requests")["used"] == 10
    assert_refused(s, "api_requests", 1, "more")
    assert usage(schema, t, "api_requests")["rollup_quantity"] == 19


def test_hour_period_counts_only_this_hour(schema, plan, app):
    t, s = acme_on_plan(schema, plan, app, "api_requests", 10, period="hour")
    last_hour = schema.execute("SELECT date_trunc('hour', now()) - interval '1 second' AS at").fetchone()["at"]
    seed_event(schema, t, "api_requests", 9, "old", last_hour)
    assert s.check("api_requests")["used"] == 0
    assert s.record("api_requests", 10, "new")["recorded"] is True
    assert_refused(s, "api_requests", 1, "more")
    assert s.status("api_requests")["used"] == 10


@pytest.mark.parametrize("timezone", ["Etc/GMT+12", "Etc/GMT-14", "Asia/Kolkata"])
def test_periods_are_utc_whatever_the_session_timezone(schema, plan, app, timezone):
    """Rollups are UTC days; the day and month windows must be UTC too. Between them, UTC-12 and
    UTC+14 are on another date than UTC at any time of day."""
    plan_quota(schema, "api_requests", 10, period="day")
    t, s = acme_on_plan(schema, plan, app, "bandwidth_bytes", 10, period="hour")
    s.conn.execute(f"SET TimeZone = '{timezone}'")
    yesterday = schema.execute("SELECT date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' "
                               "- interval '1 second' AS at").fetchone()["at"]
    seed_event(schema, t, "api_requests", 7, "yesterday", yesterday)
    s.record("api_requests", 3, "today")
    assert s.check("api_requests")["used"] == 3
    assert s.status("api_requests")["used"] == 3
    last_hour = schema.execute("SELECT date_trunc('hour', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' "
                               "- interval '1 second' AS at").fetchone()["at"]
    seed_event(schema, t, "bandwidth_bytes", 4, "last-hour", last_hour)
    s.record("bandwidth_bytes", 2, "this-hour")
    assert s.check("bandwidth_bytes")["used"] == 2
