"""Security, round 3 (migration 0007, tenant_table, tenant_export), against a real PostgreSQL server.

Each finding has a test as the real login, and a counterpart that shows the attack working without the defence:
the shipped definition of 0003, 0005 or 0006 put back, the privilege granted again, or the statement the module
used to run, run the old way."""

from __future__ import annotations

import calendar
import json
import pathlib
import re
import time
import uuid

import psycopg
import pytest
import yaml
from psycopg.types.json import Jsonb

from test_isolation import A, B, tenants  # noqa: F401  pylint: disable=unused-import
from test_metering import FILE, meter, record  # noqa: F401  pylint: disable=unused-import
from test_security import ROLES, act_for, error, logins  # noqa: F401  pylint: disable=unused-import
from test_contract_billing_events import billing_login  # noqa: F401  pylint: disable=unused-import

ROOT = pathlib.Path(__file__).resolve().parents[2]
MIGRATIONS = ROOT / "plugins/module_utils/migrations"
MINUTE = int(time.time()) // 60 * 60


def shipped(version_file, name):
    """The CREATE FUNCTION of platform.<name> as an earlier migration shipped it, as CREATE OR REPLACE."""
    text = (MIGRATIONS / version_file).read_text()
    m = re.search(r"CREATE (?:OR REPLACE )?FUNCTION platform\.%s\(.*?\n\$\$;" % re.escape(name), text, re.S)
    return re.sub(r"^CREATE (OR REPLACE )?FUNCTION", "CREATE OR REPLACE FUNCTION", m.group(0))


def put_back(conn, version_file, *names, owner=None, grant=None):
    """Install the shipped definitions again (as the superuser), with their former owner and grant."""
    for name in names:
        conn.execute(shipped(version_file, name))
        sig = conn.execute("SELECT p.oid::regprocedure::text AS s FROM pg_proc p WHERE p.pronamespace = "
                           "'platform'::regnamespace AND p.proname = %s ORDER BY p.oid DESC LIMIT 1",
                           (name,)).fetchone()["s"]
        if owner:
            conn.execute(f"ALTER FUNCTION {sig} OWNER TO {owner}")
        if grant:
            conn.execute(f"GRANT EXECUTE ON FUNCTION {sig} TO {grant}")


def is_super(conn, role):
    return conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,)).fetchone()["rolsuper"]


# 1-2. Operator-run code never runs code a non-superuser owns ------------------------------------------

def _app_schema(conn, pg_server, dbname, owner, rows=3):
    """Schema app of the owner: a table, and code that makes the owner superuser whenever a superuser runs it."""
    conn.execute(f'CREATE SCHEMA app AUTHORIZATION "{owner}"')
    with pg_server.connect(dbname, user=owner) as own:
        own.execute("CREATE TABLE app.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, item text)")
        if rows:
            own.execute("INSERT INTO app.orders (item) SELECT 'o' || i FROM generate_series(1, %s) i", (rows,))
        own.execute(f"""CREATE FUNCTION app.escalate() RETURNS boolean LANGUAGE plpgsql AS $$
            BEGIN
              IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
                EXECUTE 'ALTER ROLE "{owner}" SUPERUSER';
              END IF;
              RETURN true;
            END $$""")
        own.execute("CREATE FUNCTION app.escalate_trigger() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN PERFORM app.escalate(); RETURN NEW; END $$")


@pytest.fixture()
def app_owner(schema, pg_server, db):
    """An application's table owner (a login, not a superuser) with its schema app and a table of 3 rows."""
    name = f"owner_{uuid.uuid4().hex[:6]}"
    schema.execute(f'CREATE ROLE "{name}" LOGIN')
    schema.execute("INSERT INTO platform.tenants (id, slug, name) VALUES (%s, 'acme', 'Acme')", (A,))
    _app_schema(schema, pg_server, db, name)
    yield name
    schema.execute(f'ALTER ROLE "{name}" NOSUPERUSER')
    schema.execute("DROP SCHEMA app CASCADE")
    schema.execute(f'DROP OWNED BY "{name}"')
    schema.execute(f'DROP ROLE "{name}"')


PLANTS = {
    "trigger": "CREATE TRIGGER esc BEFORE UPDATE OR INSERT ON app.orders FOR EACH ROW EXECUTE FUNCTION app.escalate_trigger()",
    "check": "ALTER TABLE app.orders ADD CONSTRAINT esc CHECK (app.escalate())",
}


@pytest.mark.parametrize("plant", list(PLANTS))
def test_tenant_table_backfills_as_the_table_owner(app_owner, schema, run, pg_server, db, plant):
    with pg_server.connect(db, user=app_owner) as own:
        own.execute(PLANTS[plant])
    res = run("tenant_table", {"tables": [{"schema": "app", "name": "orders", "backfill_tenant": "acme"}]})
    assert res.get("failed") is not True and res["changed"] is True, res
    assert "app.orders: backfill 3 row(s) with tenant acme" in res["actions"]
    assert schema.execute("SELECT count(*) AS n FROM app.orders WHERE tenant_id = %s", (A,)).fetchone()["n"] == 3
    assert not is_super(schema, app_owner)


@pytest.mark.parametrize("plant", list(PLANTS))
def test_tenant_table_backfill_as_the_operator_made_the_owner_superuser(app_owner, schema, pg_server, db, plant):
    """What the module ran before: the UPDATE as its (superuser) login."""
    with pg_server.connect(db, user=app_owner) as own:
        own.execute(PLANTS[plant])
    schema.execute("ALTER TABLE app.orders ADD COLUMN tenant_id uuid")
    schema.execute("UPDATE app.orders SET tenant_id = %s WHERE tenant_id IS NULL", (A,))
    assert is_super(schema, app_owner)


IMPORT_PLANTS = {
    "check": "ALTER TABLE app.orders ADD CONSTRAINT esc CHECK (app.escalate()) NOT VALID",
    "always trigger": "CREATE TRIGGER esc BEFORE INSERT ON app.orders FOR EACH ROW EXECUTE FUNCTION "
                      "app.escalate_trigger(); ALTER TABLE app.orders ENABLE ALWAYS TRIGGER esc",
}


@pytest.fixture()
def exported(app_owner, schema, run, tmp_path, pg_server, schema_template, db):
    """acme's rows (3 orders) exported, and a second database with the same schema, table and code."""
    assert run("tenant_table", {"tables": [{"schema": "app", "name": "orders",
                                            "backfill_tenant": "acme"}]}).get("failed") is not True
    path = str(tmp_path / "acme.json")
    assert run("tenant_export", {"tenant": "acme", "path": path})["changed"] is True
    target = db + "_target"
    with pg_server.connect() as c:
        c.execute(f'DROP DATABASE IF EXISTS "{target}"')
        c.execute(f'CREATE DATABASE "{target}" TEMPLATE "{schema_template}"')
    tconn = pg_server.connect(target)
    _app_schema(tconn, pg_server, target, app_owner, rows=0)
    from conftest import Runner
    assert Runner(pg_server, target)("tenant_table", {"tables": [{"schema": "app", "name": "orders"}]}
                                     ).get("failed") is not True
    yield path, target, tconn
    tconn.close()
    with pg_server.connect() as c:
        c.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')


def _planted(exported, owner, pg_server, plant):
    """The owner's code planted on the target's table, as the owner."""
    with pg_server.connect(exported[1], user=owner) as own:
        for statement in IMPORT_PLANTS[plant].split("; "):
            own.execute(statement)
    return exported


@pytest.mark.parametrize("plant", ["check", "always trigger"])
def test_tenant_export_refuses_to_run_the_owners_code_on_import(exported, app_owner, pg_server, plant):
    path, target, tconn = _planted(exported, app_owner, pg_server, plant)
    from conftest import Runner
    res = Runner(pg_server, target)("tenant_export", {"tenant": "acme", "path": path, "state": "imported"})
    assert res.get("failed") is True, res
    assert "app.orders" in res["msg"] and "esc" in res["msg"] and "app.escalate" in res["msg"], res["msg"]
    assert not is_super(tconn, app_owner)
    assert tconn.execute("SELECT count(*) AS n FROM platform.tenants WHERE id = %s", (A,)).fetchone()["n"] == 0
    assert tconn.execute("SELECT count(*) AS n FROM app.orders").fetchone()["n"] == 0


@pytest.mark.parametrize("plant", ["check", "always trigger"])
def test_a_replica_mode_load_as_the_operator_made_the_owner_superuser(exported, app_owner, pg_server, plant):
    """What the import ran before: session_replication_role = replica stops ordinary triggers only."""
    path, _target, tconn = _planted(exported, app_owner, pg_server, plant)
    rows = next(t["rows"] for t in json.load(open(path, encoding="utf-8"))["tables"] if t["name"] == "app.orders")
    tconn.execute("INSERT INTO platform.tenants (id, slug, name) VALUES (%s, 'acme', 'Acme')", (A,))
    with tconn.transaction():
        tconn.execute("SET LOCAL session_replication_role = replica")
        tconn.execute("INSERT INTO app.orders OVERRIDING SYSTEM VALUE SELECT * FROM "
                      "json_populate_recordset(NULL::app.orders, %s::json)", (json.dumps(rows),))
    assert is_super(tconn, app_owner)


def test_index_expressions_and_rules_are_named(exported, app_owner, pg_server):
    path, target, tconn = exported
    with pg_server.connect(target, user=app_owner) as own:
        own.execute("CREATE FUNCTION app.norm(text) RETURNS text IMMUTABLE LANGUAGE sql AS $$ SELECT lower($1) $$")
        own.execute("CREATE INDEX orders_norm ON app.orders (app.norm(item))")
        own.execute("CREATE TABLE app.copies (item text)")
        own.execute("CREATE RULE copy AS ON INSERT TO app.orders DO ALSO INSERT INTO app.copies VALUES (NEW.item)")
        own.execute("ALTER TABLE app.orders ENABLE ALWAYS RULE copy")
    from conftest import Runner
    res = Runner(pg_server, target)("tenant_export", {"tenant": "acme", "path": path, "state": "imported"})
    assert res.get("failed") is True, res
    assert "index orders_norm calls app.norm(text)" in res["msg"] and "rule copy" in res["msg"], res["msg"]


# 10. An import loads the file's tenant only, and its audit rows say they were imported ----------------

def _doctor(path, table, mutate):
    doc = json.load(open(path, encoding="utf-8"))
    for t in doc["tables"]:
        if t["name"] == table:
            mutate(t["rows"])
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
    return doc


@pytest.mark.parametrize("table,mutate", [
    # an owner membership of another tenant
    ("platform.tenant_members", lambda rows: rows.append(
        {"id": 424242, "tenant_id": str(B), "user_id": str(uuid.uuid4()), "role": "owner",
         "created_at": "2026-01-01T00:00:00+00:00"})),
    # another tenant's application rows
    ("app.orders", lambda rows: rows.append(dict(rows[0], id=999, tenant_id=str(B)))),
    # the tenant row itself renamed
    ("platform.tenants", lambda rows: rows[0].update(slug="globex")),
])
def test_an_import_refuses_rows_of_another_tenant(exported, pg_server, table, mutate):
    path, target, tconn = exported
    tconn.execute("INSERT INTO platform.tenants (id, slug, name) VALUES (%s, 'bravo', 'B')", (B,))
    _doctor(path, table, mutate)
    from conftest import Runner
    res = Runner(pg_server, target)("tenant_export", {"tenant": "acme", "path": path, "state": "imported"})
    assert res.get("failed") is True and f"row(s) of {table} are not tenant acme" in res["msg"], res
    assert tconn.execute("SELECT count(*) AS n FROM platform.tenant_members WHERE tenant_id = %s",
                         (B,)).fetchone()["n"] == 0


def test_without_the_check_a_doctored_file_gave_another_tenant_an_owner(exported):
    """What the import did before: every row of the file, whatever its tenant."""
    path, target, tconn = exported
    tconn.execute("INSERT INTO platform.tenants (id, slug, name) VALUES (%s, 'bravo', 'B')", (B,))
    intruder = str(uuid.uuid4())
    rows = [{"id": 424242, "tenant_id": str(B), "user_id": intruder, "role": "owner",
             "created_at": "2026-01-01T00:00:00+00:00"}]
    with tconn.transaction():
        tconn.execute("SET LOCAL session_replication_role = replica")
        tconn.execute("INSERT INTO platform.tenant_members OVERRIDING SYSTEM VALUE SELECT * FROM "
                      "json_populate_recordset(NULL::platform.tenant_members, %s::json)", (json.dumps(rows),))
    assert tconn.execute("SELECT role FROM platform.tenant_members WHERE user_id = %s",
                         (intruder,)).fetchone()["role"] == "owner"


def test_imported_audit_rows_are_stamped(exported, pg_server, schema):
    path, target, tconn = exported
    forged = {"id": 424242, "at": "1999-01-01T00:00:00+00:00", "actor": "ceo", "tenant_id": str(A),
              "entity": "tenant", "entity_key": "acme", "action": "update", "before": None, "after": None,
              "imported_at": None, "imported_by": None}
    _doctor(path, "platform.audit_log", lambda rows: rows.append(forged))
    from conftest import Runner
    runner = Runner(pg_server, target)
    res = runner("tenant_export", {"tenant": "acme", "path": path, "state": "imported"})
    assert res["changed"] is True, res
    rows = tconn.execute("SELECT actor, imported_at, imported_by FROM platform.audit_log WHERE tenant_id = %s",
                         (A,)).fetchall()
    assert rows and all(r["imported_at"] is not None and r["imported_by"] == "postgres" for r in rows), rows
    assert {"actor": "ceo"}.items() <= next(r for r in rows if r["actor"] == "ceo").items()
    # the stamp is not a difference: importing the same file again changes nothing
    assert runner("tenant_export", {"tenant": "acme", "path": path, "state": "imported"})["changed"] is False


# 3-4, 9. What the billing login can make the database do ---------------------------------------------

def _apply(conn, obj, event=None):
    event = event or f"evt_{uuid.uuid4().hex[:12]}"
    with conn.transaction():
        assert conn.execute("SELECT platform.stripe_event_begin(%s, 'invoice.paid', now(), false, %s, 'webhook') AS f",
                            (event, obj["id"])).fetchone()["f"]
        return conn.execute("SELECT * FROM platform.stripe_event_apply(%s, %s)", (event, Jsonb(obj))).fetchone()


def _apply_0006(conn, obj, policy):
    event = f"evt_{uuid.uuid4().hex[:12]}"
    with conn.transaction():
        conn.execute("SELECT platform.stripe_event_begin(%s, 'invoice.paid', now(), false, %s, 'webhook')",
                     (event, obj["id"]))
        return conn.execute("SELECT * FROM platform.stripe_event_apply(%s, %s, %s)",
                            (event, Jsonb(obj), Jsonb(policy))).fetchone()


def put_back_0006_billing(conn):
    put_back(conn, "v0006_billing_events.py", "billing_settle", "stripe_event_apply",
             owner="selfbase_billing_definer", grant="selfbase_billing")


PAID = {"object": "invoice", "id": "in_alpha", "customer": "cus_alpha", "status": "paid", "currency": "usd",
        "amount_due": 2900, "amount_paid": 2900, "amount_remaining": 0, "attempt_count": 1, "created": 1767225600}


@pytest.fixture()
def biller(tenants, pg_server, db, billing_login):  # noqa: F811
    c = psycopg.connect(pg_server.conninfo(db, user=billing_login), autocommit=True,
                        row_factory=psycopg.rows.dict_row)
    yield c
    c.close()


def _operator_suspends(tenants):  # noqa: F811
    """An operator suspended alpha; dunning (seeded past_due, owns_status false) did not set that status."""
    tenants.execute("UPDATE platform.tenants SET status = 'suspended' WHERE id = %s", (A,))


def test_a_payment_does_not_lift_an_operators_suspension_whatever_the_billing_login_says(tenants, biller):  # noqa: F811
    _operator_suspends(tenants)
    # the policy argument is gone: the billing login cannot hand one over
    assert error(biller, "SELECT * FROM platform.stripe_event_apply('evt_x', '{}', '{\"reactivate_suspended\": true}')"
                 ).sqlstate == "42883"
    assert _apply(biller, PAID)["outcome"] == "applied"
    assert tenants.execute("SELECT status FROM platform.tenants WHERE id = %s", (A,)).fetchone()["status"] == "suspended"
    # the stored policy, which only the control plane writes, decides
    tenants.execute("UPDATE platform.billing_policy SET reactivate_suspended = true")
    tenants.execute("UPDATE platform.tenants SET status = 'suspended' WHERE id = %s", (A,))
    tenants.execute("INSERT INTO platform.tenant_dunning (tenant_id, state, reason, prior_status, owns_status, "
                    "grace_ends_at) VALUES (%s, 'past_due', 'x', 'active', false, now())", (A,))
    _apply(biller, PAID)
    assert tenants.execute("SELECT status FROM platform.tenants WHERE id = %s", (A,)).fetchone()["status"] == "active"


def test_with_the_0006_functions_the_billing_login_lifted_the_suspension(tenants, biller):  # noqa: F811
    _operator_suspends(tenants)
    put_back_0006_billing(tenants)
    _apply_0006(biller, PAID, {"reactivate_suspended": True})
    assert tenants.execute("SELECT status FROM platform.tenants WHERE id = %s", (A,)).fetchone()["status"] == "active"


@pytest.mark.parametrize("who", list(ROLES) + ["billing"])
def test_only_the_control_plane_writes_the_dunning_policy(tenants, logins, biller, who):  # noqa: F811
    c = biller if who == "billing" else logins(who)
    sql = "UPDATE platform.billing_policy SET reactivate_suspended = true, grace_days = 0"
    if who == "control":
        c.execute(sql)
        assert tenants.execute("SELECT grace_days FROM platform.billing_policy").fetchone()["grace_days"] == 0
    else:
        assert error(c, sql).sqlstate == "42501", who


VOIDED = dict(PAID, customer="cus_bravo", status="void", hosted_invoice_url="https://pay.example/evil")


def test_an_invoice_keeps_its_tenant_and_customer(tenants, biller):  # noqa: F811
    assert _apply(biller, VOIDED)["outcome"] == "refused"
    row = tenants.execute("SELECT tenant_id, status, hosted_invoice_url FROM platform.invoices "
                          "WHERE stripe_invoice_id = 'in_alpha'").fetchone()
    assert (row["tenant_id"], row["status"], row["hosted_invoice_url"]) == (A, "paid", None)
    assert tenants.execute("SELECT outcome FROM platform.stripe_events WHERE outcome = 'refused'").fetchone()


def test_with_the_0006_function_another_customers_object_voided_alphas_invoice(tenants, biller):  # noqa: F811
    put_back_0006_billing(tenants)
    _apply_0006(biller, VOIDED, {})
    row = tenants.execute("SELECT status, hosted_invoice_url FROM platform.invoices "
                          "WHERE stripe_invoice_id = 'in_alpha'").fetchone()
    assert (row["status"], row["hosted_invoice_url"]) == ("void", "https://pay.example/evil")


def _subscription(price, plan_code):
    return {"object": "subscription", "id": "sub_alpha", "customer": "cus_alpha", "status": "active",
            "metadata": {"plan_code": plan_code}, "start_date": 1767225600,
            "items": {"data": [{"id": "si_alpha", "quantity": 1, "current_period_start": 1767225600,
                                "current_period_end": 1769904000,
                                "price": {"id": price, "recurring": {"usage_type": "licensed"}}}]}}


@pytest.fixture()
def plans(tenants):  # noqa: F811
    tenants.execute("INSERT INTO platform.plans (code, name, active) VALUES ('pro', 'Pro', true), "
                    "('vip', 'Private deal', false)")
    tenants.execute("INSERT INTO platform.plan_prices (plan_code, billing_cycle, currency, unit_amount, stripe_price_id) "
                    "VALUES ('iso', 'month', 'usd', 1000, 'price_iso'), ('pro', 'month', 'usd', 2900, 'price_pro'), "
                    "('vip', 'month', 'usd', 1, 'price_vip')")


def plan_of(conn, tenant):
    return conn.execute("SELECT plan_code FROM platform.subscriptions WHERE tenant_id = %s", (tenant,)).fetchone()["plan_code"]


@pytest.mark.parametrize("price,named,expected,outcome", [
    ("price_iso", "vip", "iso", "applied"),        # metadata never names the plan (migration 0017)...
    ("price_iso", "pro", "iso", "applied"),
    ("price_pro", "iso", "pro", "applied"),        # ...the price does, through the platform's price book
    # a private deal's price, set in Stripe by someone who may: the customer pays it, inactive plan or not
    ("price_vip", "pro", "vip", "applied"),
    ("price_evil", "pro", "iso", "unknown_price"),  # a price no plan owns changes nothing
])
def test_the_plan_is_the_one_that_owns_the_price_whatever_the_metadata_says(tenants, biller, plans, price, named,
                                                                            expected, outcome):  # noqa: F811
    tenants.execute("UPDATE platform.subscriptions SET stripe_price_id = 'price_iso', plan_code = 'iso' "
                    "WHERE tenant_id = %s", (A,))
    assert _apply(biller, _subscription(price, named))["outcome"] == outcome
    assert plan_of(tenants, A) == expected
    assert tenants.execute("SELECT plan_code FROM platform.tenants WHERE id = %s", (A,)).fetchone()["plan_code"] == \
        expected


def test_with_the_0006_function_metadata_set_a_private_inactive_plan(tenants, biller, plans):  # noqa: F811
    put_back_0006_billing(tenants)
    _apply_0006(biller, _subscription("price_iso", "vip"), {})
    assert plan_of(tenants, A) == "vip"


def test_the_reconcile_cursor_cannot_move_past_now(tenants, biller):  # noqa: F811
    c = biller.execute("SELECT platform.stripe_sync_cursor('infinity') <= now() AS ok").fetchone()
    assert c["ok"] is True


def test_with_the_0006_cursor_infinity_stopped_reconcile_for_good(tenants, biller):  # noqa: F811
    put_back(tenants, "v0006_billing_events.py", "stripe_sync_cursor")
    assert biller.execute("SELECT platform.stripe_sync_cursor('infinity') = 'infinity' AS stuck").fetchone()["stuck"]


def test_the_monitor_cannot_read_stripe_ids_through_billing_standing(tenants, logins):  # noqa: F811
    assert error(logins("monitor"), "SELECT * FROM platform.billing_standing(%s)", (B,)).sqlstate == "42501"


def test_with_the_0006_grant_the_monitor_read_a_subscription_id(tenants, logins):  # noqa: F811
    tenants.execute("UPDATE platform.subscriptions SET status = 'past_due' WHERE tenant_id = %s", (B,))
    tenants.execute("GRANT EXECUTE ON FUNCTION platform.billing_standing(uuid) TO selfbase_monitor")
    reason = logins("monitor").execute("SELECT reason FROM platform.billing_standing(%s)", (B,)).fetchone()["reason"]
    assert "sub_bravo" in reason


# 5-6. What one metering agent can record ---------------------------------------------------------------

def _one(slug, metric, minute, quantity):
    return Jsonb([dict(tenant=slug, metric=metric, minute=minute, quantity=quantity)])


def _last_month_minute():
    """Two days before this month began (UTC): before the current period, with its grace, at any time."""
    now = time.gmtime()
    return calendar.timegm((now.tm_year, now.tm_mon, 1, 0, 0, 0)) - 2 * 86400


@pytest.mark.parametrize("minute", [0, "last month"])
def test_an_agent_cannot_record_usage_in_a_closed_period(tenants, meter, minute):  # noqa: F811
    minute = _last_month_minute() if minute == "last month" else minute
    before = tenants.execute("SELECT count(*) AS n FROM platform.usage_events").fetchone()["n"]
    res = record(meter[0], None, None, FILE, 100, _one("alpha", "bandwidth_bytes", minute, 1000))
    assert (res["events"], res["overage"]) == (0, 0)
    res = record(meter[0], FILE, 100, FILE, 200, _one("alpha", "api_requests", minute, 7))
    assert (res["events"], res["skipped"]) == (0, 7)   # counted as served but not recorded
    assert tenants.execute("SELECT count(*) AS n FROM platform.usage_events").fetchone()["n"] == before
    # the current minute still counts, and the position moved on
    assert record(meter[0], FILE, 200, FILE, 300, _one("alpha", "api_requests", MINUTE, 7))["events"] == 1


def test_with_the_0005_function_an_agent_recorded_unbilled_overage_in_1970(tenants, meter):  # noqa: F811
    put_back(tenants, "v0005_edge_metering.py", "meter_record")
    res = record(meter[0], None, None, FILE, 100, _one("alpha", "bandwidth_bytes", 0, 1000))
    assert res["events"] == 1 and res["overage"] > 0
    assert tenants.execute("SELECT count(*) AS n FROM platform.usage_events WHERE occurred_at < '1971-01-01'"
                           ).fetchone()["n"] == 1


@pytest.mark.parametrize("quantity", [5 * 10 ** 18, 10 ** 9 + 1])
def test_an_agent_cannot_record_an_absurd_quantity(tenants, meter, quantity):  # noqa: F811
    err = error(meter[0], "SELECT * FROM platform.meter_record(%s, %s, %s, %s, %s)",
                (None, None, FILE, 100, _one("alpha", "api_requests", MINUTE, quantity)))
    assert err.sqlstate == "22023" and "bad usage entry" in str(err)


def test_a_batch_is_bounded_in_all(tenants, meter):  # noqa: F811
    entries = Jsonb([dict(tenant="alpha", metric="bandwidth_bytes", minute=MINUTE - 60 * i, quantity=10 ** 12)
                     for i in range(101)])
    err = error(meter[0], "SELECT * FROM platform.meter_record(%s, %s, %s, %s, %s)", (None, None, FILE, 100, entries))
    assert err.sqlstate == "22023" and "at most 10^14" in str(err)


def _huge_month(tenants):  # noqa: F811
    """Two days of this month at 5 * 10^18 each: more than bigint holds in all."""
    tenants.execute("INSERT INTO platform.usage_rollups_daily (tenant_id, metric, day, quantity, events) VALUES "
                    "(%s, 'api_requests', date_trunc('month', now())::date, 5000000000000000000, 1), "
                    "(%s, 'api_requests', date_trunc('month', now())::date + 1, 5000000000000000000, 1) "
                    "ON CONFLICT (tenant_id, metric, day) DO UPDATE SET quantity = EXCLUDED.quantity", (A, A))


def test_sums_of_a_tenants_usage_cannot_overflow(tenants, meter, logins):  # noqa: F811
    _huge_month(tenants)
    rows = {r["slug"]: r for r in meter[1].execute("SELECT * FROM platform.edge_enforcement()")}
    assert rows["alpha"]["used"] == 2 ** 63 - 1
    status = {r["metric"]: r for r in tenants.execute("SELECT * FROM platform.quota_status(%s)", (A,))}
    assert status["api_requests"]["status"] == "exceeded"
    # a rollup at bigint's end saturates instead of failing every agent's batch
    tenants.execute("INSERT INTO platform.usage_rollups_daily (tenant_id, metric, day, quantity, events) VALUES "
                    "(%s, 'api_requests', (now() AT TIME ZONE 'UTC')::date, 9223372036854775000, 1) "
                    "ON CONFLICT (tenant_id, metric, day) DO UPDATE SET quantity = EXCLUDED.quantity", (A,))
    assert record(meter[0], None, None, FILE, 100, _one("alpha", "api_requests", MINUTE, 10 ** 9))["events"] == 1
    app = logins("app")
    act_for(app, A)
    assert app.execute("SELECT allowed FROM platform.check_quota(%s, 'api_requests', 10)", (A,)).fetchone()["allowed"] is False


def test_with_the_0003_and_0005_functions_one_month_broke_enforcement_for_every_agent(tenants, meter):  # noqa: F811
    put_back(tenants, "v0003_hardening.py", "metric_usage_at")
    put_back(tenants, "v0005_edge_metering.py", "edge_enforcement")
    _huge_month(tenants)
    err = error(meter[1], "SELECT * FROM platform.edge_enforcement()")
    assert err.sqlstate == "22003"   # bigint out of range: no agent gets the enforcement set


# 7. Session limits of the billing and metering logins ------------------------------------------------

def _role_limits(role):
    return yaml.safe_load((ROOT / f"roles/{role}/defaults/main.yml").read_text())[f"{role}_db_session_settings"]


@pytest.mark.parametrize("role", ["billing", "metering"])
def test_the_roles_give_their_logins_every_session_limit(role):
    assert set(_role_limits(role)) == {"statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout"}
    tasks = (ROOT / f"roles/{role}/tasks/database.yml").read_text()
    assert f"loop: \"{{{{ {role}_db_session_settings | dict2items }}}}\"" in tasks


@pytest.mark.parametrize("limited", [True, False])
def test_an_open_billing_transaction_holds_a_tenant_only_within_the_login_limits(tenants, biller, billing_login, db,
                                                                               logins, limited):  # noqa: F811
    """The billing login holds alpha's row (FOR UPDATE, in billing_settle) in a transaction it leaves open.
    With the role's limits (idle timeout scaled down to 2 s here) the server ends it and the control plane's
    write goes through; without them the write waits until its own statement timeout."""
    if limited:
        for key, value in dict(_role_limits("billing"), idle_in_transaction_session_timeout="2s").items():
            tenants.execute(f"ALTER ROLE \"{billing_login}\" IN DATABASE \"{db}\" SET {key} = '{value}'")
    holder = psycopg.connect(biller.info.dsn, autocommit=False, row_factory=psycopg.rows.dict_row)
    event = f"evt_{uuid.uuid4().hex[:12]}"
    holder.execute("SELECT platform.stripe_event_begin(%s, 'invoice.paid', now(), false, 'in_alpha', 'webhook')",
                   (event,))
    holder.execute("SELECT * FROM platform.stripe_event_apply(%s, %s)", (event, Jsonb(PAID)))
    control = logins("control")
    control.execute("SET statement_timeout = '6s'")
    start = time.monotonic()
    try:
        control.execute("UPDATE platform.tenants SET name = 'Alpha Inc' WHERE id = %s", (A,))
        outcome = "written"
    except psycopg.errors.QueryCanceled:
        outcome = "waited"
    assert outcome == ("written" if limited else "waited"), time.monotonic() - start
    holder.close()


# 8. No login can LOCK TABLE the quota locks -------------------------------------------------------------

@pytest.mark.parametrize("who", ["app", "hasura", "control"])
def test_no_login_can_lock_the_quota_lock_table(tenants, logins, who):  # noqa: F811
    c = logins(who, autocommit=False)
    assert error(c, "LOCK TABLE platform.quota_locks IN EXCLUSIVE MODE").sqlstate == "42501"
    c.rollback()
    # and quota checks still take their row lock, through the definer
    act_for(c, A)
    if who == "app":
        c.execute("INSERT INTO platform.projects (tenant_id, name) VALUES (%s, 'p')", (A,))
        assert c.execute("SELECT count(*) AS n FROM platform.quota_locks").fetchone()["n"] >= 1
    c.rollback()


def test_a_session_cannot_lock_another_tenants_quota_row(tenants, logins):  # noqa: F811
    app = logins("app")
    act_for(app, A)
    assert error(app, "SELECT platform.lock_quota(%s, 'projects')", (B,)).sqlstate == "42501"


def test_with_the_0003_grant_one_login_stalled_every_tenants_quota_checks(tenants, logins):  # noqa: F811
    tenants.execute("GRANT UPDATE ON platform.quota_locks TO selfbase_app")
    holder = logins("app", autocommit=False)
    holder.execute("LOCK TABLE platform.quota_locks IN EXCLUSIVE MODE")
    victim = logins("control")
    victim.execute("SET lock_timeout = '2s'")
    err = error(victim, "INSERT INTO platform.projects (tenant_id, name) VALUES (%s, 'x')", (B,))
    assert err.sqlstate == "55P03"
    holder.rollback()


# 0013. Subscription versions: MRR history that no login writes -------------------------------------

FORGE = ("INSERT INTO platform.subscription_versions (tenant_id, valid_from, status, currency, billing_cycle, "
         "monthly_amount, started_at) VALUES (%s, '2020-01-01', 'active', 'usd', 'month', 99999900, '2020-01-01')")
MRR_2021 = "SELECT coalesce(sum(mrr), 0) AS mrr FROM platform.mrr_at('2021-01-01')"


@pytest.mark.parametrize("who", list(ROLES) + ["billing"])
def test_no_login_writes_subscription_versions_and_only_control_and_monitor_read_them(tenants, logins, biller,
                                                                                      who):  # noqa: F811
    c = biller if who == "billing" else logins(who)
    if who != "billing":
        act_for(c, A)
    for sql, params in ((FORGE, (A,)), ("UPDATE platform.subscription_versions SET monthly_amount = 0", ()),
                        ("DELETE FROM platform.subscription_versions", ())):
        assert error(c, sql, params).sqlstate == "42501", (who, sql)
    if who in ("control", "monitor"):
        assert c.execute("SELECT count(*) AS n FROM platform.subscription_versions").fetchone()["n"] == 2
        assert c.execute(MRR_2021).fetchone()["mrr"] == 0
    else:
        assert error(c, "SELECT * FROM platform.subscription_versions").sqlstate == "42501", who
        assert error(c, MRR_2021).sqlstate == "42501", who


def test_without_the_grants_a_tenant_session_forged_its_mrr_history(tenants, logins):  # noqa: F811
    tenants.execute("GRANT SELECT, INSERT ON platform.subscription_versions TO PUBLIC")
    tenants.execute("GRANT EXECUTE ON FUNCTION platform.mrr_at(timestamptz) TO PUBLIC")
    app = logins("app")
    act_for(app, A)
    app.execute(FORGE, (A,))  # the tenant_isolation policy lets a tenant write its own rows
    assert app.execute(MRR_2021).fetchone()["mrr"] == 99999900


def test_the_billing_login_records_a_version_with_the_discount_through_stripe_event_apply(tenants, biller,
                                                                                          plans):  # noqa: F811
    sub = dict(_subscription("price_pro", "pro"), currency="usd", discounts=[{
        "id": "di_1", "object": "discount", "promotion_code": "promo_1", "end": None, "start": 1767225600,
        "source": {"type": "coupon", "coupon": {"id": "co_1", "object": "coupon", "percent_off": 25.0,
                                                "amount_off": None, "currency": None, "duration": "forever"}}}])
    assert _apply(biller, sub)["outcome"] == "applied"
    row = tenants.execute("SELECT discount FROM platform.subscriptions WHERE tenant_id = %s", (A,)).fetchone()
    assert row["discount"] == {"coupon": "co_1", "promotion_code": "promo_1", "percent_off": 25.0, "amount_off": None,
                               "duration": "forever", "end": None}
    version = tenants.execute("SELECT * FROM platform.subscription_versions WHERE tenant_id = %s "
                              "ORDER BY valid_from DESC, id DESC LIMIT 1", (A,)).fetchone()
    assert (version["status"], version["monthly_amount"], version["discount"]["percent_off"]) == ("active", 2900, 25.0)
    assert tenants.execute("SELECT mrr FROM platform.mrr_at(now()) WHERE tenant_id = %s", (A,)).fetchone()["mrr"] == 2175
    # the same object again changes nothing: no new version
    count = "SELECT count(*) AS n FROM platform.subscription_versions WHERE tenant_id = %s"
    before = tenants.execute(count, (A,)).fetchone()["n"]
    _apply(biller, sub)
    assert tenants.execute(count, (A,)).fetchone()["n"] == before
