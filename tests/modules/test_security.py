"""Attacks on the platform schema, as each non-owner login, against a real PostgreSQL server.

One test (or parametrised set) per finding of the adversarial review; each shows the attack
failing, and, where the defence is in the schema, the same attack working once the defence is
taken away (the shipped 0001 definition put back, or the privilege granted again).

Logins, as the roles deploy them:
- app: member of selfbase_app (the application);
- hasura: member of selfbase_graphql (the hasura role);
- auth: no platform grants (the auth role);
- monitor: member of selfbase_monitor (postgres_exporter);
- control: member of selfbase_admin (the controller's modules).
"""

from __future__ import annotations

import pathlib
import re
import time
import uuid

import psycopg
import pytest
import yaml

from test_isolation import A, B, tenants

ROOT = pathlib.Path(__file__).resolve().parents[2]
V0001 = (ROOT / "plugins/module_utils/migrations/v0001_tenancy_core.py").read_text()
ROLES = {"app": "selfbase_app", "hasura": "selfbase_graphql", "auth": None, "monitor": "selfbase_monitor",
         "control": "selfbase_admin"}
NON_CONTROL = ["app", "hasura", "auth", "monitor"]
SEEDED_TENANTS = tenants  # the fixture that seeds tenants A and B, shared with test_isolation
SESSION_SETTINGS = yaml.safe_load((ROOT / "roles/hasura/defaults/main.yml").read_text())["hasura_db_session_settings"]


def shipped_0001(name):
    """The CREATE FUNCTION of platform.<name> as migration 0001 shipped it (the undefended version)."""
    m = re.search(r"CREATE FUNCTION platform\.%s\(.*?\n\$\$;" % re.escape(name), V0001, re.S)
    return m.group(0).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def undefend(conn, *names):
    """Put back the 0001 definitions of these functions, as their owner."""
    with conn.transaction():
        conn.execute("SET LOCAL ROLE selfbase_owner")
        for name in names:
            conn.execute(shipped_0001(name))


@pytest.fixture()
def logins(tenants, pg_server, db):  # noqa: F811
    names = {}
    for short, group in ROLES.items():
        name = f"{short}_{uuid.uuid4().hex[:6]}"
        tenants.execute(f'CREATE ROLE "{name}" LOGIN' + (f" IN ROLE {group}" if group else ""))
        names[short] = name
    opened = []

    def connect(short, **extra):
        c = pg_server.connect(db, user=names[short], **extra)
        opened.append(c)
        return c

    connect.names = names
    yield connect
    for c in opened:
        c.close()
    for name in names.values():
        tenants.execute(f'DROP OWNED BY "{name}"')
        tenants.execute(f'DROP ROLE "{name}"')


def assert_owner_role(conn, role, functions):
    """``role`` has no login, no BYPASSRLS, no superuser, no members and no membership, and owns exactly
    ``functions``, each a definer with its search_path pinned."""
    assert conn.execute("SELECT rolcanlogin, rolbypassrls, rolsuper FROM pg_roles WHERE rolname = %s",
                        (role,)).fetchone() == {"rolcanlogin": False, "rolbypassrls": False, "rolsuper": False}
    assert conn.execute("SELECT count(*) AS n FROM pg_auth_members WHERE roleid = %s::regrole OR member = "
                        "%s::regrole", (role, role)).fetchone()["n"] == 0
    owned = conn.execute("SELECT p.oid::regprocedure::text AS fn, p.prosecdef, p.proconfig FROM pg_proc p "
                         "WHERE p.proowner = %s::regrole ORDER BY 1", (role,)).fetchall()
    assert [r["fn"] for r in owned] == functions
    assert all(r["prosecdef"] and r["proconfig"] == ["search_path=pg_catalog, platform, pg_temp"] for r in owned)


def error(conn, sql, params=()):
    with pytest.raises(psycopg.Error) as err:
        conn.execute(sql, params)
    return err.value


def act_for(conn, tenant):
    conn.execute("SELECT set_config('app.tenant_id', %s, false)", (str(tenant),))


# 1. SECURITY DEFINER functions and pg_temp --------------------------------------------------

HIJACK = [
    "CREATE FUNCTION pg_temp.evil(pg_catalog.date) RETURNS boolean LANGUAGE plpgsql AS "
    "$$ BEGIN EXECUTE 'CREATE POLICY pwned ON platform.tenants USING (true)'; RETURN true; END $$",
    "CREATE DOMAIN pg_temp.date AS pg_catalog.date CHECK (pg_temp.evil(VALUE))",
]


def test_definer_functions_pin_search_path_with_pg_temp_last(tenants):
    rows = tenants.execute("""
        SELECT p.oid::regprocedure::text AS fn, p.proconfig FROM pg_proc p
         WHERE p.prosecdef AND p.pronamespace = 'platform'::regnamespace""").fetchall()
    assert len(rows) >= 2
    bad = [r["fn"] for r in rows if "search_path=pg_catalog, platform, pg_temp" not in (r["proconfig"] or [])]
    assert bad == []


def test_public_has_no_temp_on_the_platform_database(tenants, db):
    acl = tenants.execute("SELECT datacl::text[] AS acl FROM pg_database WHERE datname = %s", (db,)).fetchone()["acl"]
    public = [a for a in acl if a.startswith("=")]
    assert all("T" not in a.split("/")[0] for a in public), acl


@pytest.mark.parametrize("who", NON_CONTROL)
def test_no_login_but_the_control_plane_can_create_temporary_objects(logins, who):
    c = logins(who)
    err = error(c, "CREATE TEMP TABLE probe (id int)")
    assert err.sqlstate == "42501" and "permission denied to create temporary tables" in str(err)
    assert error(c, HIJACK[1]).sqlstate in ("42501", "3F000")


def test_pg_temp_hijack_of_a_definer_function(tenants, logins):
    """With TEMP and the 0001 rollup function, an app login runs code as selfbase_owner; the pinned
    search_path alone stops it even with TEMP granted again."""
    db = tenants.info.dbname
    tenants.execute(f'GRANT TEMPORARY ON DATABASE "{db}" TO PUBLIC')
    undefend(tenants, "rollup_usage_event")  # search_path = pg_catalog, platform; ::date unqualified
    app = logins("app")
    act_for(app, A)
    for sql in HIJACK:
        app.execute(sql)
    app.execute("SELECT * FROM platform.record_usage(%s, 'api_requests', 1, 'hijack-1')", (A,))
    assert app.execute("SELECT count(*) AS n FROM platform.tenants").fetchone()["n"] == 2  # B leaked: attack works
    tenants.execute("DROP POLICY pwned ON platform.tenants")

    # the defence: pg_temp last in the pinned path (the 0003 definition), even with TEMP granted
    with tenants.transaction():
        tenants.execute("SET LOCAL ROLE selfbase_owner")
        tenants.execute("ALTER FUNCTION platform.rollup_usage_event() SET search_path = pg_catalog, platform, pg_temp")
    app2 = logins("app")
    act_for(app2, A)
    for sql in HIJACK:
        app2.execute(sql)
    app2.execute("SELECT * FROM platform.record_usage(%s, 'api_requests', 1, 'hijack-2')", (A,))
    assert app2.execute("SELECT count(*) AS n FROM platform.tenants").fetchone()["n"] == 1
    assert tenants.execute("SELECT count(*) AS n FROM pg_policy WHERE polname = 'pwned'").fetchone()["n"] == 0


# 2. The database owner cannot become superuser -------------------------------------------------

@pytest.fixture()
def db_owner(schema, db, pg_server):
    name = f"dbowner_{uuid.uuid4().hex[:6]}"
    schema.execute(f'CREATE ROLE "{name}" LOGIN')
    schema.execute(f'ALTER DATABASE "{db}" OWNER TO "{name}"')
    yield name
    schema.execute(f'ALTER DATABASE "{db}" OWNER TO postgres')
    schema.execute(f'DROP OWNED BY "{name}"')
    schema.execute(f'DROP ROLE "{name}"')


def is_super(conn, name):
    return conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (name,)).fetchone()["rolsuper"]


def test_planted_selfbase_meta_is_refused(run, pg_server, db, conn):
    name = f"dbowner_{uuid.uuid4().hex[:6]}"
    conn.execute(f'CREATE ROLE "{name}" LOGIN')
    conn.execute(f'ALTER DATABASE "{db}" OWNER TO "{name}"')
    try:
        with pg_server.connect(db, user=name) as owner:
            owner.execute("CREATE SCHEMA selfbase_meta")
            owner.execute("CREATE TABLE selfbase_meta.schema_migrations (version text PRIMARY KEY, name text, "
                          "checksum text, applied_at timestamptz DEFAULT now(), applied_by text DEFAULT session_user)")
            owner.execute(f"""CREATE FUNCTION selfbase_meta.up() RETURNS trigger LANGUAGE plpgsql AS
                              $$ BEGIN ALTER ROLE "{name}" SUPERUSER; RETURN NEW; END $$""")
            owner.execute("CREATE TRIGGER up BEFORE INSERT ON selfbase_meta.schema_migrations "
                          "FOR EACH ROW EXECUTE FUNCTION selfbase_meta.up()")
        res = run("platform_schema", {})
        assert res["failed"] is True
        assert res["msg"].startswith(f"Refusing to migrate: schema selfbase_meta is owned by {name}, "), res["msg"]
        assert not is_super(conn, name)
        assert conn.execute("SELECT to_regclass('platform.tenants') AS t").fetchone()["t"] is None
        # without the check: the superuser's insert runs the owner's trigger
        with conn.transaction():
            conn.execute("INSERT INTO selfbase_meta.schema_migrations (version, name, checksum) VALUES ('x', 'x', 'x')")
            assert is_super(conn, name)
            raise psycopg.Rollback()
    finally:
        conn.execute(f'ALTER DATABASE "{db}" OWNER TO postgres')
        conn.execute(f'DROP OWNED BY "{name}"')
        conn.execute(f'DROP ROLE "{name}"')


def test_planted_platform_schema_is_refused(run, pg_server, db, conn):
    conn.execute("CREATE ROLE planter NOLOGIN")
    try:
        conn.execute("CREATE SCHEMA platform AUTHORIZATION planter")
        res = run("platform_schema", {})
        assert res["failed"] is True and "schema platform is owned by planter" in res["msg"], res
        assert "must be owned by selfbase_owner" in res["msg"]
    finally:
        conn.execute("DROP SCHEMA platform CASCADE")
        conn.execute("DROP ROLE planter")


def test_database_search_path_cannot_shadow_what_modules_call(run, schema, db_owner, pg_server, db):
    with pg_server.connect(db, user=db_owner) as owner:
        owner.execute("CREATE SCHEMA trap")
        owner.execute(f"""CREATE FUNCTION trap.now() RETURNS timestamptz LANGUAGE plpgsql AS
                          $$ BEGIN ALTER ROLE "{db_owner}" SUPERUSER; RETURN pg_catalog.now(); END $$""")
        owner.execute(f'ALTER DATABASE "{db}" SET search_path = trap, pg_catalog, public')
    for module, args in (("platform_schema", {}),
                         ("tenant", {"slug": "trapped", "name": "T"}),
                         ("tenants", {"tenants": [{"slug": "trapped2", "name": "T2"}]})):
        res = run(module, args)
        assert res.get("failed") is not True, res
        assert not is_super(schema, db_owner), module
    # without the pinned path, a superuser session that calls now() runs the owner's code
    with pg_server.connect(db) as victim:
        victim.execute("SELECT now()")
    assert is_super(schema, db_owner)


def test_inventories_do_not_make_a_login_the_database_owner():
    for path in ROOT.glob("inventories/*/group_vars/all/main.yml"):
        text = path.read_text()
        owners = re.findall(r"postgresql_databases:\s*\n\s*(?:#.*\n\s*)*- \{name: [^,]+, owner: ([^}]+)\}", text)
        assert owners == ["postgres"], (path, owners)


# 3. Negative quantities ---------------------------------------------------------------------------

@pytest.mark.parametrize("who", ["app", "control"])
def test_negative_quantity_is_refused_except_for_delta_metrics(tenants, logins, who):
    c = logins(who)
    act_for(c, A)
    for qty in (-1000000, 0):
        err = error(c, "SELECT * FROM platform.record_usage(%s, 'api_requests', %s, %s)", (A, qty, f"neg{qty}"))
        assert err.sqlstate == "22023" and f"p_quantity must be at least 1, got {qty}" in str(err), err
    assert c.execute("SELECT * FROM platform.record_usage(%s, 'storage_bytes', 100, 's1')", (A,)).fetchone()["recorded"]
    assert c.execute("SELECT * FROM platform.record_usage(%s, 'storage_bytes', -40, 's2')", (A,)).fetchone()["recorded"]
    assert c.execute("SELECT used FROM platform.check_quota(%s, 'storage_bytes', 0)", (A,)).fetchone()["used"] == 60
    err = error(c, "SELECT * FROM platform.record_usage(%s, 'storage_bytes', 0, 's3')", (A,))
    assert "p_quantity must be a non-zero delta" in str(err)


def test_negative_quantity_worked_with_the_0001_function(tenants, logins):
    undefend(tenants, "record_usage")
    app = logins("app")
    act_for(app, A)
    used = app.execute("SELECT used FROM platform.check_quota(%s, 'api_requests', 1)", (A,)).fetchone()["used"]
    assert app.execute("SELECT * FROM platform.record_usage(%s, 'api_requests', -1000000, 'neg')", (A,)).fetchone()
    assert app.execute("SELECT used FROM platform.check_quota(%s, 'api_requests', 1)",
                       (A,)).fetchone()["used"] == used - 1000000


# 4. Back-dated and future-dated events -----------------------------------------------------------

@pytest.mark.parametrize("who", ["app", "control"])
def test_events_outside_the_current_period_are_refused(tenants, logins, who):
    c = logins(who)
    act_for(c, A)
    last_month = c.execute("SELECT platform.period_start('month') - interval '1 second' AS at").fetchone()["at"]
    err = error(c, "SELECT * FROM platform.record_usage(%s, 'api_requests', 1, 'old', %s)", (A, last_month))
    assert err.sqlstate == "22023" and "is before the current month" in str(err), err
    future = c.execute("SELECT now() + interval '6 minutes' AS at").fetchone()["at"]
    err = error(c, "SELECT * FROM platform.record_usage(%s, 'api_requests', 1, 'future', %s)", (A, future))
    assert err.sqlstate == "22023" and "more than 5 minutes ahead" in str(err), err
    soon = c.execute("SELECT now() + interval '4 minutes' AS at").fetchone()["at"]
    assert c.execute("SELECT * FROM platform.record_usage(%s, 'api_requests', 1, 'soon', %s)",
                     (A, soon)).fetchone()["recorded"]


def test_an_event_counts_only_in_the_period_it_lands_in(tenants, logins):
    """An hourly hard limit: an event of the next hour counts there, not in this hour too."""
    tenants.execute("INSERT INTO platform.tenant_quotas (tenant_id, metric, limit_value, period, mode) "
                    "VALUES (%s, 'storage_bytes', 10, 'hour', 'hard')", (A,))
    nxt = tenants.execute("SELECT platform.period_end('hour') + interval '1 minute' AS at").fetchone()["at"]
    with tenants.transaction():
        act_for(tenants, A)
        tenants.execute("INSERT INTO platform.usage_events (tenant_id, metric, quantity, idempotency_key, occurred_at) "
                        "VALUES (%s, 'storage_bytes', 9, 'next-hour', %s)", (A, nxt))
    app = logins("app")
    act_for(app, A)

    def used_now():
        return {r["metric"]: r["used"] for r in app.execute("SELECT * FROM platform.quota_status(%s)", (A,))}

    assert app.execute("SELECT used FROM platform.check_quota(%s, 'storage_bytes', 1)", (A,)).fetchone()["used"] == 0
    assert used_now()["storage_bytes"] == 0
    assert app.execute("SELECT used, allowed FROM platform.check_quota_at(%s, 'storage_bytes', 2, %s)",
                       (A, nxt)).fetchone() == {"used": 9, "allowed": False}
    undefend(tenants, "metric_usage")  # 0001: the hour window had no end
    assert used_now()["storage_bytes"] == 9


# 5. Limits under REPEATABLE READ -----------------------------------------------------------------

def _rr_sessions(logins, n):
    sessions = []
    for _n in range(n):
        s = logins("app", autocommit=False)
        act_for(s, A)
        s.commit()
        s.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        s.execute("SELECT count(*) FROM platform.tenant_members").fetchone()  # the snapshot is taken here
        sessions.append(s)
    return sessions


def _members_race(tenants, logins):
    tenants.execute("INSERT INTO platform.tenant_quotas (tenant_id, metric, limit_value, period, mode) "
                    "VALUES (%s, 'members', 3, 'none', 'hard')", (A,))
    outcomes = []
    for s in _rr_sessions(logins, 8):  # every snapshot predates every commit
        try:
            s.execute("INSERT INTO platform.tenant_members (tenant_id, user_id) VALUES (%s, %s)", (A, uuid.uuid4()))
            s.commit()
            outcomes.append("ok")
        except psycopg.Error as e:
            s.rollback()
            outcomes.append(e.sqlstate)
    members = tenants.execute("SELECT count(*) AS n FROM platform.tenant_members WHERE tenant_id = %s",
                              (A,)).fetchone()["n"]
    return outcomes, members


def test_count_limit_holds_under_repeatable_read(tenants, logins):
    outcomes, members = _members_race(tenants, logins)  # A starts with 2 members: room for 1
    assert members == 3
    assert outcomes[0] == "ok" and set(outcomes[1:]) == {"40001"}, outcomes


def test_count_limit_broke_under_repeatable_read_with_the_0001_trigger(tenants, logins):
    undefend(tenants, "enforce_count_quota")
    outcomes, members = _members_race(tenants, logins)
    assert members == 10 and outcomes == ["ok"] * 8


def test_event_limit_holds_under_repeatable_read(tenants, logins):
    tenants.execute("INSERT INTO platform.tenant_quotas (tenant_id, metric, limit_value, period, mode) "
                    "VALUES (%s, 'api_requests', 40, 'month', 'hard')", (A,))  # A has used 33
    outcomes = []
    for i, s in enumerate(_rr_sessions(logins, 8)):
        try:
            s.execute("SELECT * FROM platform.record_usage(%s, 'api_requests', 5, %s)", (A, f"rr-{i}"))
            s.commit()
            outcomes.append("ok")
        except psycopg.Error as e:
            s.rollback()
            outcomes.append(e.sqlstate)
    assert outcomes[0] == "ok" and set(outcomes[1:]) == {"40001"}, outcomes
    used = tenants.execute("SELECT sum(quantity) AS q FROM platform.usage_events WHERE tenant_id = %s "
                           "AND metric = 'api_requests'", (A,)).fetchone()["q"]
    assert used == 38


# 6. Lock denial of service -----------------------------------------------------------------------

def _advisory_attack(tenants, logins, attacker):
    """The attacker holds the 0001 advisory key of A's api_requests; A records usage (5 s cap)."""
    evil = logins(attacker, autocommit=False)
    evil.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{A}/api_requests",))
    app = logins("app")
    act_for(app, A)
    app.execute("SET statement_timeout = '3s'")
    try:
        app.execute("SELECT * FROM platform.record_usage(%s, 'api_requests', 1, %s)", (A, uuid.uuid4().hex))
        return "recorded"
    except psycopg.errors.QueryCanceled:
        return "blocked"
    finally:
        evil.rollback()


@pytest.mark.parametrize("who", ["auth", "hasura", "monitor", "app"])
def test_advisory_keys_no_longer_block_a_tenant(tenants, logins, who):
    assert _advisory_attack(tenants, logins, who) == "recorded"


def test_advisory_keys_blocked_a_tenant_with_the_0001_function(tenants, logins):
    undefend(tenants, "record_usage")
    assert _advisory_attack(tenants, logins, "auth") == "blocked"


@pytest.mark.parametrize("who", NON_CONTROL)
def test_only_the_control_plane_can_lock_its_rows(tenants, logins, who):
    c = logins(who)
    act_for(c, A)
    err = error(c, "SELECT name FROM platform.control_locks FOR UPDATE")
    assert err.sqlstate == "42501", err
    # another tenant's quota lock rows: invisible (RLS) or out of reach (no grant)
    try:
        n = c.execute("SELECT count(*) AS n FROM (SELECT 1 FROM platform.quota_locks WHERE tenant_id = %s "
                      "FOR UPDATE) l", (B,)).fetchone()["n"]
        assert n == 0
    except psycopg.Error as e:
        assert e.sqlstate == "42501"


def test_platform_schema_waits_a_bounded_time_for_the_lock(run, schema, pg_server, db):
    holder = pg_server.connect(db, autocommit=False)
    holder.execute("SELECT * FROM selfbase_meta.migration_lock FOR UPDATE")
    try:
        start = time.monotonic()
        res = run("platform_schema", {"lock_timeout": 1})
        assert res["failed"] is True and "held the migration lock" in res["msg"], res
        assert time.monotonic() - start < 30
    finally:
        holder.rollback()
        holder.close()
    # the old advisory key means nothing now
    with pg_server.connect(db) as evil:
        evil.execute("SELECT pg_advisory_lock(hashtextextended('selfbase.platform_schema', 0))")
        assert run("platform_schema", {"lock_timeout": 1})["changed"] is False


# 7. LOCK TABLE by one tenant ------------------------------------------------------------------------

def test_session_limits_bound_a_table_lock(tenants, logins, db):
    """selfbase_app keeps DELETE on members, which is all LOCK TABLE needs. The roles set
    hasura_db_session_settings on the logins: a victim's statement then gives up at lock_timeout
    instead of queueing behind the lock, and the holder is cut off at its idle timeout. What
    remains: a login that sends SQL itself can SET its own limits off (Hasura's cannot)."""
    app = logins("app", autocommit=False)
    act_for(app, A)
    assert error(app, "LOCK TABLE platform.tenants IN ACCESS EXCLUSIVE MODE").sqlstate == "42501"
    app.rollback()
    for who in ("app", "hasura"):
        for key, value in SESSION_SETTINGS.items():
            tenants.execute(f"ALTER ROLE \"{logins.names[who]}\" IN DATABASE \"{db}\" SET {key} = '{value}'")
    holder = logins("app", autocommit=False)
    shown = {k: holder.execute(f"SHOW {k}").fetchone()[k] for k in SESSION_SETTINGS}
    assert shown == SESSION_SETTINGS
    holder.execute("LOCK TABLE platform.tenant_members IN ACCESS EXCLUSIVE MODE")
    victim = logins("hasura")
    start = time.monotonic()
    assert error(victim, "SELECT count(*) FROM platform.tenant_members").sqlstate == "55P03"  # lock_timeout
    assert time.monotonic() - start < int(SESSION_SETTINGS["lock_timeout"].rstrip("s")) + 5
    holder.rollback()
    # without the limits the victim queues for as long as the lock is held (cut here at 3 s)
    holder.execute("SET idle_in_transaction_session_timeout = 0")  # the residual: a login may lift its own
    holder.execute("LOCK TABLE platform.tenant_members IN ACCESS EXCLUSIVE MODE")
    plain = logins("control")
    plain.execute("SET statement_timeout = '3s'")
    assert error(plain, "SELECT count(*) FROM platform.tenant_members").sqlstate == "57014"
    holder.rollback()


# 8. The audit log ---------------------------------------------------------------------------------

@pytest.mark.parametrize("who", list(ROLES))
def test_audit_log_is_append_only(tenants, logins, who):
    c = logins(who)
    act_for(c, A)
    for sql in ("UPDATE platform.audit_log SET actor = 'x'", "DELETE FROM platform.audit_log",
                "TRUNCATE platform.audit_log"):
        assert error(c, sql).sqlstate == "42501", (who, sql)
    if who == "control":
        c.execute("INSERT INTO platform.audit_log (tenant_id, entity, entity_key, action, actor, at) "
                  "VALUES (%s, 'tenant', 'forged', 'update', 'someone-else', '2000-01-01')", (A,))
        row = tenants.execute("SELECT actor, at > now() - interval '1 minute' AS fresh FROM platform.audit_log "
                              "WHERE entity_key = 'forged'").fetchone()
        assert row == {"actor": logins.names["control"], "fresh": True}
    else:
        assert error(c, "INSERT INTO platform.audit_log (tenant_id, entity, entity_key, action) "
                        "VALUES (%s, 'tenant', 'x', 'update')", (A,)).sqlstate == "42501"


def test_audit_log_could_be_rewritten_with_the_old_grant(tenants, logins):
    tenants.execute("GRANT UPDATE, DELETE ON platform.audit_log TO selfbase_admin")
    c = logins("control")
    assert c.execute("DELETE FROM platform.audit_log").rowcount == 2


# 9 and 10. What monitoring and Hasura read -------------------------------------------------------------

SECRETS = ["SELECT stripe_customer_id FROM platform.tenants", "SELECT settings FROM platform.tenants",
           "SELECT idempotency_key FROM platform.usage_events", "SELECT token_hash FROM platform.tenant_invitations",
           "SELECT * FROM platform.audit_log", "SELECT stripe_subscription_id FROM platform.subscriptions"]


@pytest.mark.parametrize("who", ["monitor", "hasura", "auth"])
def test_secrets_stay_out_of_reach(tenants, logins, who):
    c = logins(who)
    for sql in SECRETS:
        assert error(c, sql).sqlstate == "42501", (who, sql)


def test_monitor_reads_usage_of_every_tenant(tenants, logins):
    c = logins("monitor")
    rows = c.execute("""
        SELECT t.slug, q.metric, q.used FROM platform.tenants t CROSS JOIN LATERAL platform.quota_status(t.id) q
         WHERE t.status <> 'deleted' AND q.limit_value IS NOT NULL ORDER BY 1, 2""").fetchall()
    assert {r["slug"] for r in rows} == {"alpha", "bravo"}
    assert c.execute("SELECT status, count(*) AS n FROM platform.tenants GROUP BY 1").fetchall() == \
        [{"status": "active", "n": 2}]


def test_monitor_read_stripe_ids_with_the_old_grant(tenants, logins):
    tenants.execute("GRANT SELECT ON platform.tenants TO selfbase_monitor")
    assert len(logins("monitor").execute("SELECT stripe_customer_id FROM platform.tenants").fetchall()) == 2


def test_hasura_outside_mutations_reads_exposed_columns_only(tenants, logins):
    c = logins("hasura")
    rows = c.execute("SELECT slug, name, status FROM platform.tenants ORDER BY slug").fetchall()
    assert [r["slug"] for r in rows] == ["alpha", "bravo"]  # Hasura's permission filter is the wall here
    for fn in ("SELECT * FROM platform.check_quota(%s, 'members', 1)",):
        err = error(c, fn, (B,))
        assert err.sqlstate == "42501" and "is not visible to this session" in str(err)
    assert c.execute("SELECT * FROM platform.quota_status(%s)", (B,)).fetchall() == []


def test_hasura_mutations_stay_in_their_tenant(tenants, logins):
    c = logins("hasura", autocommit=False)
    c.execute("SELECT set_config('hasura.user', %s, true)", ('{"x-hasura-tenant-id": "%s"}' % A,))
    c.execute("INSERT INTO platform.projects (tenant_id, name) VALUES (%s, 'gql')", (A,))
    assert c.execute("SELECT count(*) AS n FROM platform.projects").fetchone()["n"] == 3
    assert c.execute("UPDATE platform.projects SET name = name WHERE tenant_id = %s", (B,)).rowcount == 0
    assert c.execute("SELECT * FROM platform.quota_status(%s)", (A,)).fetchall()
    err = error(c, "INSERT INTO platform.projects (tenant_id, name) VALUES (%s, 'gql')", (B,))
    assert err.sqlstate == "42501"
    c.rollback()


def test_hasura_read_secrets_as_a_member_of_selfbase_app(tenants, logins):
    tenants.execute(f'GRANT selfbase_app TO "{logins.names["hasura"]}"')
    assert len(logins("hasura").execute("SELECT stripe_customer_id FROM platform.tenants").fetchall()) == 2


# 11. Low-severity findings --------------------------------------------------------------------------

def test_invitation_hash_of_another_tenant_is_no_oracle(tenants, logins):
    b_hash = tenants.execute("SELECT token_hash FROM platform.tenant_invitations WHERE tenant_id = %s",
                             (B,)).fetchone()["token_hash"]
    app = logins("app")
    act_for(app, A)
    sql = "INSERT INTO platform.tenant_invitations (tenant_id, email, token_hash) VALUES (%s, 'probe@a.example', %s)"
    assert app.execute(sql, (A, b_hash)).rowcount == 1
    app.execute("DELETE FROM platform.tenant_invitations WHERE email = 'probe@a.example'")
    tenants.execute("ALTER TABLE platform.tenant_invitations ADD CONSTRAINT old_global UNIQUE (token_hash)")
    assert error(app, sql, (A, b_hash)).sqlstate == "23505"  # the 0001 index answered the question


@pytest.mark.parametrize("who", ["app", "control"])
def test_reused_idempotency_key_with_another_payload_is_refused(tenants, logins, who):
    c = logins(who)
    act_for(c, A)
    first = c.execute("SELECT * FROM platform.record_usage(%s, 'api_requests', 2, 'k')", (A,)).fetchone()
    again = c.execute("SELECT * FROM platform.record_usage(%s, 'api_requests', 2, 'k')", (A,)).fetchone()
    assert (again["recorded"], again["usage_event_id"]) == (False, first["usage_event_id"])
    for metric, qty in (("bandwidth_bytes", 2), ("api_requests", 3)):
        err = error(c, "SELECT * FROM platform.record_usage(%s, %s, %s, 'k')", (A, metric, qty))
        assert err.sqlstate == "SB002" and 'idempotency key "k" was already used' in str(err), err


def test_reused_key_was_silently_dropped_with_the_0001_function(tenants, logins):
    undefend(tenants, "record_usage")
    app = logins("app")
    act_for(app, A)
    app.execute("SELECT * FROM platform.record_usage(%s, 'api_requests', 2, 'k')", (A,))
    assert app.execute("SELECT * FROM platform.record_usage(%s, 'bandwidth_bytes', 7, 'k')",
                       (A,)).fetchone()["status"] == "duplicate"


@pytest.mark.parametrize("who", ["app", "control"])
def test_deleted_tenant_records_nothing_and_adds_nothing(tenants, logins, who):
    tenants.execute("UPDATE platform.tenants SET status = 'deleted', deleted_at = now() WHERE id = %s", (A,))
    c = logins(who)
    act_for(c, A)
    err = error(c, "SELECT * FROM platform.record_usage(%s, 'api_requests', 1, 'late')", (A,))
    assert err.sqlstate == "55000" and "is deleted" in str(err)
    for sql in ("INSERT INTO platform.projects (tenant_id, name) VALUES (%s, 'zombie')",
                "INSERT INTO platform.tenant_members (tenant_id, user_id) VALUES (%s, gen_random_uuid())"):
        err = error(c, sql, (A,))
        assert err.sqlstate == "55000" and "is deleted" in str(err), err


# Who may spend or read another tenant's quota ------------------------------------------------------

@pytest.mark.parametrize("who", list(ROLES))
def test_record_usage_and_check_quota_for_another_tenant(tenants, logins, who):
    """Acting for A: recording for B is refused to everyone; B's quota is readable by the control
    plane only (monitoring reads them through quota_status)."""
    c = logins(who)
    act_for(c, A)
    err = error(c, "SELECT * FROM platform.record_usage(%s, 'api_requests', 1, 'b-from-a')", (B,))
    assert err.sqlstate == "42501", (who, err)
    if who in ("app", "control"):
        assert "is not visible to this session" in str(err)
    else:  # no EXECUTE at all (auth: no USAGE on the schema)
        assert "permission denied for" in str(err)
    sql = "SELECT * FROM platform.check_quota(%s, 'api_requests', 1)"
    if who == "control":
        assert c.execute(sql, (B,)).fetchone()["limit_value"] == 1000000
    elif who in ("app", "hasura"):
        assert "is not visible to this session" in str(error(c, sql, (B,)))
    else:
        assert "permission denied for" in str(error(c, sql, (B,)))


# Migration 0004: the ledger is readable by the control plane and monitoring only, and by nobody writable.

@pytest.mark.parametrize("who", ["app", "hasura", "auth"])
def test_tenant_facing_logins_cannot_read_the_migration_ledger(tenants, logins, who):
    assert error(logins(who), "SELECT version FROM selfbase_meta.schema_migrations").sqlstate == "42501"


@pytest.mark.parametrize("who", ["control", "monitor"])
def test_the_ledger_is_read_only_and_the_migration_lock_out_of_reach(tenants, logins, who):
    c = logins(who)
    assert c.execute("SELECT max(version) AS v FROM selfbase_meta.schema_migrations").fetchone()["v"] >= "0004"
    for sql in ("INSERT INTO selfbase_meta.schema_migrations (version, name, checksum) VALUES ('9999', 'x', 'x')",
                "UPDATE selfbase_meta.schema_migrations SET checksum = 'x'",
                "DELETE FROM selfbase_meta.schema_migrations",
                "SELECT name FROM selfbase_meta.migration_lock FOR UPDATE"):
        assert error(c, sql).sqlstate == "42501", sql


def test_without_the_narrow_grant_the_app_would_read_the_ledger(tenants, logins):
    """Counterpart: granted to PUBLIC instead of the two roles, the ledger is open to the application too."""
    tenants.execute("GRANT USAGE ON SCHEMA selfbase_meta TO PUBLIC")
    tenants.execute("GRANT SELECT ON selfbase_meta.schema_migrations TO PUBLIC")
    assert logins("app").execute("SELECT count(*) AS n FROM selfbase_meta.schema_migrations").fetchone()["n"] >= 4
