"""Edge metering in the platform schema (migration 0005), against a real PostgreSQL server: what an
agent's login can do (record served usage, read the enforcement set), what it cannot, and what every
other login cannot do with the metering functions."""

from __future__ import annotations

import pathlib
import time
import uuid

import psycopg
import pytest
import yaml

from test_isolation import A, B, tenants  # noqa: F401  pylint: disable=unused-import
from test_security import NON_CONTROL, ROLES, error, logins  # noqa: F401  pylint: disable=unused-import

MINUTE = int(time.time()) // 60 * 60
FILE = "0123456789abcdef"
OTHER_FILE = "fedcba9876543210"


def usage(*entries):
    return psycopg.types.json.Jsonb([dict(tenant=e[0], metric=e[1], minute=MINUTE, quantity=e[2]) for e in entries])


@pytest.fixture()
def meter(tenants, pg_server, db):  # noqa: F811
    """Two agent logins (members of selfbase_meter), connected."""
    names = [f"meter_{uuid.uuid4().hex[:6]}", f"meter_{uuid.uuid4().hex[:6]}"]
    conns = []
    for name in names:
        tenants.execute(f'CREATE ROLE "{name}" LOGIN IN ROLE selfbase_meter')
        conns.append(pg_server.connect(db, user=name))
    yield conns
    for c in conns:
        c.close()
    for name in names:
        tenants.execute(f'DROP OWNED BY "{name}"')
        tenants.execute(f'DROP ROLE "{name}"')


def record(conn, from_file, from_offset, to_file, to_offset, payload):
    return conn.execute("SELECT * FROM platform.meter_record(%s, %s, %s, %s, %s)",
                        (from_file, from_offset, to_file, to_offset, payload)).fetchone()


def used(tenants, tenant, metric):  # noqa: F811
    return tenants.execute("SELECT COALESCE(sum(quantity), 0) AS n FROM platform.usage_events "
                           "WHERE tenant_id = %s AND metric = %s", (tenant, metric)).fetchone()["n"]


def test_a_batch_records_usage_and_moves_the_position(tenants, meter):  # noqa: F811
    agent = meter[0]
    assert agent.execute("SELECT * FROM platform.meter_position()").fetchone() == {"file_id": None,
                                                                                   "file_offset": None}
    before = used(tenants, A, "api_requests"), used(tenants, B, "api_requests")
    res = record(agent, None, None, FILE, 500, usage(("alpha", "api_requests", 7), ("bravo", "api_requests", 3),
                                                     ("alpha", "bandwidth_bytes", 2048), ("nobody", "api_requests", 4)))
    assert res["events"] == 3 and res["duplicates"] == 0 and res["skipped"] == 4
    assert (used(tenants, A, "api_requests"), used(tenants, B, "api_requests")) == (before[0] + 7, before[1] + 3)
    assert agent.execute("SELECT * FROM platform.meter_position()").fetchone() == {"file_id": FILE, "file_offset": 500}
    # the daily rollups (what monthly quotas read) follow
    status = {r["metric"]: r["used"] for r in tenants.execute("SELECT * FROM platform.quota_status(%s)", (A,))}
    assert status["api_requests"] == before[0] + 7


def test_a_replayed_or_stale_batch_records_nothing(tenants, meter):  # noqa: F811
    agent = meter[0]
    record(agent, None, None, FILE, 500, usage(("alpha", "api_requests", 7)))
    n = used(tenants, A, "api_requests")
    # the same batch again (a crash after commit, before the agent saved its position)
    err = error(agent, "SELECT * FROM platform.meter_record(%s, %s, %s, %s, %s)",
                (None, None, FILE, 500, usage(("alpha", "api_requests", 7))))
    assert err.sqlstate == "SB003" and "reload the position" in str(err)
    err = error(agent, "SELECT * FROM platform.meter_record(%s, %s, %s, %s, %s)",
                (FILE, 200, FILE, 500, usage(("alpha", "api_requests", 7))))
    assert err.sqlstate == "SB003"
    assert used(tenants, A, "api_requests") == n
    # moving on from the stored position works, including to a new file (which starts at 0)
    record(agent, FILE, 500, OTHER_FILE, 90, usage(("alpha", "api_requests", 2)))
    assert used(tenants, A, "api_requests") == n + 2


def test_even_a_reset_position_does_not_double_count(tenants, meter):  # noqa: F811
    """The idempotency key derives from the batch's start in the log: an operator who deletes the
    position row and lets the agent re-read gets duplicates, not a second count."""
    agent = meter[0]
    record(agent, None, None, FILE, 500, usage(("alpha", "api_requests", 7)))
    n = used(tenants, A, "api_requests")
    tenants.execute("DELETE FROM platform.meter_positions")
    res = record(agent, None, None, FILE, 500, usage(("alpha", "api_requests", 7)))
    assert res["events"] == 0 and res["duplicates"] == 1
    assert used(tenants, A, "api_requests") == n


def test_agents_have_positions_of_their_own(tenants, meter):  # noqa: F811
    record(meter[0], None, None, FILE, 500, usage(("alpha", "api_requests", 1)))
    record(meter[1], None, None, FILE, 80, usage(("alpha", "api_requests", 1)))
    assert meter[0].execute("SELECT file_offset FROM platform.meter_position()").fetchone()["file_offset"] == 500
    assert meter[1].execute("SELECT file_offset FROM platform.meter_position()").fetchone()["file_offset"] == 80
    # the same log range on two hosts is two distinct sets of requests: both count
    assert tenants.execute("SELECT count(*) AS n FROM platform.usage_events WHERE idempotency_key LIKE 'edge/%%'"
                           ).fetchone()["n"] == 2


def test_served_usage_past_a_hard_limit_is_recorded_and_overage_priced(tenants, meter):  # noqa: F811
    tenants.execute("INSERT INTO platform.tenant_quotas (tenant_id, metric, limit_value, period, mode) "
                    "VALUES (%s, 'api_requests', 5, 'month', 'hard')", (A,))
    base = used(tenants, A, "api_requests")
    band = used(tenants, A, "bandwidth_bytes")
    res = record(meter[0], None, None, FILE, 10, usage(("alpha", "api_requests", 8),
                                                       ("alpha", "bandwidth_bytes", 100)))
    assert res["events"] == 2
    assert used(tenants, A, "api_requests") == base + 8
    # bandwidth_bytes: overage mode, limit 10 (the fixture's plan)
    over = tenants.execute("SELECT sum(quantity) AS q, min(unit_price) AS p FROM platform.usage_overages "
                           "WHERE tenant_id = %s AND metric = 'bandwidth_bytes'", (A,)).fetchone()
    expected = min(100, band + 100 - 10)
    assert res["overage"] == expected and over["q"] >= expected and float(over["p"]) == 0.5


@pytest.mark.parametrize("bad, field", [
    ([{"tenant": "alpha", "metric": "storage_bytes", "minute": MINUTE, "quantity": 1}], "storage_bytes"),
    ([{"tenant": "alpha", "metric": "api_requests", "minute": MINUTE, "quantity": -3}], "-3"),
    ([{"tenant": "alpha", "metric": "api_requests", "minute": MINUTE + 7, "quantity": 1}], "minute"),
    ([{"tenant": "alpha", "metric": "api_requests", "minute": MINUTE + 3600, "quantity": 1}], "minute"),
])
def test_bad_entries_are_refused_whole(tenants, meter, bad, field):  # noqa: F811
    n = used(tenants, A, "api_requests")
    err = error(meter[0], "SELECT * FROM platform.meter_record(%s, %s, %s, %s, %s)",
                (None, None, FILE, 1, psycopg.types.json.Jsonb(
                    [{"tenant": "alpha", "metric": "api_requests", "minute": MINUTE, "quantity": 2}] + bad)))
    assert err.sqlstate == "22023" and field in str(err)
    assert used(tenants, A, "api_requests") == n
    assert meter[0].execute("SELECT file_id FROM platform.meter_position()").fetchone()["file_id"] is None


def test_edge_enforcement_lists_what_the_edge_acts_on(tenants, meter):  # noqa: F811
    tenants.execute("INSERT INTO platform.tenant_quotas (tenant_id, metric, limit_value, period, mode) "
                    "VALUES (%s, 'api_requests', 10, 'month', 'hard')", (A,))
    rows = {r["slug"]: r for r in meter[0].execute("SELECT * FROM platform.edge_enforcement(80)")}
    assert "bravo" not in rows  # 1,000,000 allowed, nearly nothing used, active
    a = rows["alpha"]
    assert a["limit_value"] == 10 and a["mode"] == "hard" and a["used"] >= 10 and a["reset_at"] is not None
    tenants.execute("UPDATE platform.tenants SET status = 'past_due' WHERE id = %s", (B,))
    tenants.execute("INSERT INTO platform.tenant_quotas (tenant_id, metric, limit_value, period, mode) "
                    "VALUES (%s, 'api_requests', 1000000, 'month', 'soft')", (B,))
    b = {r["slug"]: r for r in meter[0].execute("SELECT * FROM platform.edge_enforcement(80)")}["bravo"]
    assert b["status"] == "past_due" and b["mode"] == "soft"


# Attacks ----------------------------------------------------------------------------------------

def test_the_agent_login_reads_and_writes_nothing_directly(tenants, meter):  # noqa: F811
    agent = meter[0]
    for sql in ("SELECT * FROM platform.usage_events", "SELECT * FROM platform.tenants",
                "SELECT * FROM platform.meter_positions", "UPDATE platform.meter_positions SET file_offset = 0",
                "INSERT INTO platform.usage_events (tenant_id, metric, quantity, idempotency_key) "
                f"VALUES ('{A}', 'api_requests', 1, 'x')",
                f"SELECT * FROM platform.quota_status('{A}')"):
        assert isinstance(error(agent, sql), psycopg.errors.InsufficientPrivilege), sql
    # record_usage (the tenant-facing path) refuses it: it acts for no tenant
    err = error(agent, "SELECT * FROM platform.record_usage(%s, 'api_requests', 1, 'k')", (A,))
    assert err.sqlstate == "42501"


@pytest.mark.parametrize("who", list(ROLES))
def test_no_other_login_can_meter_or_read_the_enforcement_set(tenants, logins, who):  # noqa: F811
    c = logins(who)
    for sql, args in (("SELECT * FROM platform.meter_record(%s, %s, %s, %s, %s)",
                       (None, None, FILE, 1, usage(("bravo", "api_requests", 1000)))),
                      ("SELECT * FROM platform.edge_enforcement(80)", ()),
                      ("SELECT * FROM platform.meter_position()", ())):
        assert isinstance(error(c, sql, args), psycopg.errors.InsufficientPrivilege), (who, sql)


def test_with_execute_left_to_public_the_app_could_bill_another_tenant(tenants, logins):  # noqa: F811
    """The defence is the REVOKE from PUBLIC: functions are executable by everyone by default."""
    before = used(tenants, B, "api_requests")
    tenants.execute("GRANT EXECUTE ON FUNCTION platform.meter_record(text, bigint, text, bigint, jsonb) TO PUBLIC")
    app = logins("app")
    app.execute("SELECT set_config('app.tenant_id', %s, false)", (str(A),))
    record(app, None, None, FILE, 1, usage(("bravo", "api_requests", 1000)))
    assert used(tenants, B, "api_requests") == before + 1000


def test_a_planted_pg_temp_cannot_hijack_the_definer_functions(tenants):  # noqa: F811
    rows = tenants.execute("""
        SELECT p.proname, p.proconfig, pg_get_userbyid(p.proowner) AS owner FROM pg_proc p
         WHERE p.pronamespace = 'platform'::regnamespace
           AND p.proname IN ('meter_position', 'meter_record', 'edge_enforcement')""").fetchall()
    assert len(rows) == 3
    for r in rows:
        assert r["proconfig"] == ["search_path=pg_catalog, platform, pg_temp"], r
        assert r["owner"] == "selfbase_meter_definer", r
    roles = tenants.execute("SELECT rolname, rolcanlogin, rolbypassrls FROM pg_roles "
                            "WHERE rolname IN ('selfbase_meter', 'selfbase_meter_definer')").fetchall()
    assert all(not r["rolcanlogin"] and not r["rolbypassrls"] for r in roles) and len(roles) == 2
    assert tenants.execute("SELECT count(*) AS n FROM pg_auth_members WHERE roleid = "
                           "'selfbase_meter_definer'::regrole").fetchone()["n"] == 0


def test_postgres_exporter_reads_metered_usage_as_the_monitor_login(tenants, meter, logins):  # noqa: F811
    """The exporter query behind the tenant dashboard's usage panels runs with selfbase_monitor's grants."""
    text = (pathlib.Path(__file__).resolve().parents[2]
            / "roles/monitoring/templates/postgres-exporter-queries.yml.j2").read_text()
    query = yaml.safe_load(text.split("selfbase_tenant_usage:", 1)[1].split("\n# ", 1)[0].join(["x:", ""]))["x"]
    record(meter[0], None, None, FILE, 10, usage(("alpha", "api_requests", 5), ("bravo", "bandwidth_bytes", 70)))
    rows = {(r["tenant"], r["metric"]): r["month"] for r in logins("monitor").execute(query["query"])}
    assert rows[("alpha", "api_requests")] >= 5 and rows[("bravo", "bandwidth_bytes")] >= 70
