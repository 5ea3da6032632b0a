"""Tenant isolation by row-level security, against a real PostgreSQL server.

Two tenants A and B get rows in every tenant-scoped table. A login role that
is a member of selfbase_app, acting for A (app.tenant_id, or Hasura's
hasura.user), must not see, change, delete or create B's rows; B's rows are
compared before and after, as the superuser. The owner's view proves that
FORCE ROW LEVEL SECURITY is what protects: without it, the owner sees B.
"""

from __future__ import annotations

import hashlib
import json
import uuid

import psycopg
import pytest

A = uuid.UUID("aaaaaaaa-0000-4000-8000-000000000001")
B = uuid.UUID("bbbbbbbb-0000-4000-8000-000000000002")

# Every table of schema platform that holds tenant rows. A new one must be added here (and to the
# expectations below), so that it cannot be left out of these tests.
TENANT_TABLES = sorted([
    "audit_log", "projects", "quota_locks", "subscriptions", "tenant_domains", "tenant_invitations", "tenant_members",
    "tenant_quotas", "tenants", "usage_events", "usage_overages", "usage_rollups_daily",
    "stripe_events", "invoices", "customer_payment_state", "tenant_dunning", "meter_pushes", "tenant_choices",
    "tenant_placements", "subscription_versions", "tenant_database_sizes", "tenant_entitlements",
])
# Views with tenant rows: no policies of their own; the definer behind each walls them, and only Hasura's login
# reads them (test_operators.py attacks each).
TENANT_VIEWS = ["tenant_active_features", "tenant_quota_status"]

# What a selfbase_app session gets per table and operation: "rls" = the statement runs and row-level
# security limits it to the session's tenant; "denied" = selfbase_app has no privilege for it.
EXPECTED = {
    "tenants": dict(select="rls", update="rls", delete="denied", insert="denied"),
    "tenant_domains": dict(select="rls", update="denied", delete="denied", insert="denied"),
    "tenant_members": dict(select="rls", update="rls", delete="rls", insert="rls"),
    "tenant_invitations": dict(select="rls", update="rls", delete="rls", insert="rls"),
    "projects": dict(select="rls", update="rls", delete="rls", insert="rls"),
    "tenant_quotas": dict(select="rls", update="denied", delete="denied", insert="denied"),
    "usage_events": dict(select="rls", update="denied", delete="denied", insert="denied"),
    "usage_rollups_daily": dict(select="rls", update="denied", delete="denied", insert="denied"),
    "usage_overages": dict(select="rls", update="denied", delete="denied", insert="denied"),
    "subscriptions": dict(select="rls", update="denied", delete="denied", insert="denied"),
    "audit_log": dict(select="denied", update="denied", delete="denied", insert="denied"),
    "quota_locks": dict(select="rls", update="denied", delete="denied", insert="denied"),  # lock_quota() writes them (0007)
    "stripe_events": dict(select="denied", update="denied", delete="denied", insert="denied"),
    "invoices": dict(select="rls", update="denied", delete="denied", insert="denied"),
    "customer_payment_state": dict(select="rls", update="denied", delete="denied", insert="denied"),
    "tenant_dunning": dict(select="rls", update="denied", delete="denied", insert="denied"),
    "meter_pushes": dict(select="denied", update="denied", delete="denied", insert="denied"),
    # written by keep_tenant_choice() (0008), switched by the user through Hasura
    "tenant_choices": dict(select="denied", update="denied", delete="denied", insert="denied"),
    # the placement registry (0010): only the control plane writes it, the monitor reads it
    "tenant_placements": dict(select="denied", update="denied", delete="denied", insert="denied"),
    # written by record_subscription_version() (0013) only; the control plane and the monitor read it
    "subscription_versions": dict(select="denied", update="denied", delete="denied", insert="denied"),
    # sampled sizes of tenant databases (0015): only the control plane writes them, the monitor reads them
    "tenant_database_sizes": dict(select="denied", update="denied", delete="denied", insert="denied"),
    # active Stripe entitlements (0018): written by stripe_event_apply() only, read by the tenant
    "tenant_entitlements": dict(select="rls", update="denied", delete="denied", insert="denied"),
}

RLS_VIOLATION = "new row violates row-level security policy"
PERMISSION_DENIED = "permission denied for table"


def key(table):
    return "id" if table == "tenants" else "tenant_id"


def update_sql(table):
    # a column selfbase_app may update where it may update at all
    col = {"tenants": "name", "tenant_members": "role"}.get(table, key(table))
    return f"UPDATE platform.{table} SET {col} = {col} WHERE {key(table)} = %s"


def insert_for(table, tenant, event_id=None):
    """An INSERT of a valid new row of `tenant` into `table`."""
    t = str(tenant)
    return {
        "tenants": ("INSERT INTO platform.tenants (id, slug, name) VALUES (%s, 'intruder', 'x')", (str(uuid.uuid4()),)),
        "tenant_domains": ("INSERT INTO platform.tenant_domains (tenant_id, domain) VALUES (%s, 'new.b.example')", (t,)),
        "tenant_members": ("INSERT INTO platform.tenant_members (tenant_id, user_id) VALUES (%s, %s)",
                           (t, str(uuid.uuid4()))),
        "tenant_invitations": ("INSERT INTO platform.tenant_invitations (tenant_id, email, token_hash) "
                               "VALUES (%s, 'new@b.example', %s)", (t, hashlib.sha256(b"new").digest())),
        "projects": ("INSERT INTO platform.projects (tenant_id, name) VALUES (%s, 'new')", (t,)),
        "tenant_quotas": ("INSERT INTO platform.tenant_quotas (tenant_id, metric, limit_value) "
                          "VALUES (%s, 'storage_bytes', 1)", (t,)),
        "usage_events": ("INSERT INTO platform.usage_events (tenant_id, metric, quantity, idempotency_key) "
                         "VALUES (%s, 'api_requests', 1, 'new')", (t,)),
        "usage_rollups_daily": ("INSERT INTO platform.usage_rollups_daily (tenant_id, metric, day, quantity) "
                                "VALUES (%s, 'api_requests', current_date - 400, 1)", (t,)),
        "usage_overages": ("INSERT INTO platform.usage_overages (tenant_id, metric, usage_event_id, quantity) "
                           "VALUES (%s, 'bandwidth_bytes', %s, 1)", (t, event_id)),
        "subscriptions": ("INSERT INTO platform.subscriptions (tenant_id, status) VALUES (%s, 'active')", (t,)),
        "quota_locks": ("INSERT INTO platform.quota_locks (tenant_id, metric) VALUES (%s, 'storage_bytes')", (t,)),
        "audit_log": ("INSERT INTO platform.audit_log (tenant_id, entity, entity_key, action) "
                      "VALUES (%s, 'tenant', 'x', 'update')", (t,)),
        "stripe_events": ("INSERT INTO platform.stripe_events (id, type, created, livemode, tenant_id, source) "
                          "VALUES ('evt_new', 'invoice.paid', now(), false, %s, 'webhook')", (t,)),
        "invoices": ("INSERT INTO platform.invoices (stripe_invoice_id, tenant_id, stripe_customer_id, status, currency, "
                     "amount_due, amount_paid, amount_remaining, created) VALUES ('in_new', %s, 'cus_x', 'paid', "
                     "'usd', 0, 0, 0, now())", (t,)),
        "customer_payment_state": ("INSERT INTO platform.customer_payment_state (tenant_id, stripe_customer_id, "
                                   "has_payment_method) VALUES (%s, 'cus_new', false)", (t,)),
        "tenant_dunning": ("INSERT INTO platform.tenant_dunning (tenant_id, state, reason, prior_status, owns_status, "
                           "grace_ends_at) VALUES (%s, 'past_due', 'x', 'active', true, now())", (t,)),
        "tenant_choices": ("INSERT INTO platform.tenant_choices (user_id, tenant_id) VALUES (%s, %s)",
                           (str(uuid.uuid4()), t)),
        "meter_pushes": ("INSERT INTO platform.meter_pushes (identifier, tenant_id, metric, hour, revision, quantity, "
                         "stripe_customer_id, stripe_meter_id) VALUES ('sb_new', %s, 'bandwidth_bytes', now(), 1, 1, "
                         "'cus_x', 'mtr_x')", (t,)),
        "tenant_placements": ("INSERT INTO platform.tenant_placements (tenant_id, tier, state) "
                              "VALUES (%s, 'pooled', 'active')", (t,)),
        "subscription_versions": ("INSERT INTO platform.subscription_versions (tenant_id, valid_from, status) "
                                  "VALUES (%s, now(), 'active')", (t,)),
        "tenant_database_sizes": ("INSERT INTO platform.tenant_database_sizes (cluster, database, tenant_id, bytes) "
                                  "VALUES ('c9', 'tenant_new', %s, 1)", (t,)),
        "tenant_entitlements": ("INSERT INTO platform.tenant_entitlements (tenant_id, lookup_keys) VALUES (%s, '{}') "
                                "ON CONFLICT (tenant_id) DO UPDATE SET lookup_keys = '{}'", (t,)),
    }[table]


def seed_tenant(conn, tenant, slug, members):
    conn.execute("INSERT INTO platform.tenants (id, slug, name, plan_code, stripe_customer_id) "
                 "VALUES (%s, %s, %s, 'iso', %s)", (tenant, slug, slug.upper(), f"cus_{slug}"))
    conn.execute("INSERT INTO platform.tenant_domains (tenant_id, domain, verified, is_primary) VALUES "
                 "(%s, %s, true, true), (%s, %s, false, false)",
                 (tenant, f"{slug}.example", tenant, f"www.{slug}.example"))
    for i in range(members):
        conn.execute("INSERT INTO platform.tenant_members (tenant_id, user_id, role) VALUES (%s, %s, %s)",
                     (tenant, str(uuid.uuid5(tenant, f"user{i}")), "owner" if i == 0 else "member"))
    conn.execute("INSERT INTO platform.tenant_invitations (tenant_id, email, role, token_hash) VALUES (%s, %s, "
                 "'member', %s)", (tenant, f"guest@{slug}.example", hashlib.sha256(slug.encode()).digest()))
    conn.execute("INSERT INTO platform.projects (tenant_id, name) VALUES (%s, 'main'), (%s, 'staging')",
                 (tenant, tenant))
    conn.execute("INSERT INTO platform.tenant_quotas (tenant_id, metric, limit_value, period, mode) "
                 "VALUES (%s, 'projects', 50, 'none', 'hard')", (tenant,))
    with conn.transaction():
        # record_usage runs as the table owner, under row-level security: act for the tenant
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", (str(tenant),))
        for n in range(3):
            r = conn.execute("SELECT * FROM platform.record_usage(%s, 'api_requests', %s, %s)",
                             (tenant, 10 + n, f"{slug}-req-{n}")).fetchone()
            assert r["recorded"] is True
        r = conn.execute("SELECT * FROM platform.record_usage(%s, 'bandwidth_bytes', 15, %s)",
                         (tenant, f"{slug}-bw")).fetchone()
        assert r["overage"] == 5, r
    conn.execute("INSERT INTO platform.subscriptions (tenant_id, stripe_customer_id, stripe_subscription_id, "
                 "stripe_item_id, plan_code, billing_cycle, status) VALUES (%s, %s, %s, %s, 'iso', 'month', "
                 "'active')", (tenant, f"cus_{slug}", f"sub_{slug}", f"si_{slug}"))
    conn.execute("INSERT INTO platform.audit_log (tenant_id, entity, entity_key, action, after) "
                 "VALUES (%s, 'tenant', %s, 'create', %s)", (tenant, slug, json.dumps({"slug": slug})))
    # billing mirrors, as the webhook receiver leaves them (the billing tests start without them)
    conn.execute("INSERT INTO platform.stripe_events (id, type, created, livemode, object_id, tenant_id, source, "
                 "outcome) VALUES (%s, 'invoice.paid', now(), false, %s, %s, 'webhook', 'applied')",
                 (f"evt_{slug}", f"in_{slug}", tenant))
    conn.execute("INSERT INTO platform.invoices (stripe_invoice_id, tenant_id, stripe_customer_id, number, status, "
                 "currency, amount_due, amount_paid, amount_remaining, created) VALUES (%s, %s, %s, %s, 'paid', "
                 "'usd', 2900, 2900, 0, now())", (f"in_{slug}", tenant, f"cus_{slug}", f"{slug.upper()}-0001"))
    conn.execute("INSERT INTO platform.customer_payment_state (tenant_id, stripe_customer_id, has_payment_method, "
                 "brand, last4) VALUES (%s, %s, true, 'visa', '4242')", (tenant, f"cus_{slug}"))
    conn.execute("INSERT INTO platform.tenant_dunning (tenant_id, state, reason, prior_status, owns_status, "
                 "grace_ends_at) VALUES (%s, 'past_due', 'seeded', 'active', false, now() + interval '7 days')",
                 (tenant,))
    conn.execute("INSERT INTO platform.meter_pushes (identifier, tenant_id, metric, hour, revision, quantity, "
                 "stripe_customer_id, stripe_meter_id, sent_at) VALUES (%s, %s, 'bandwidth_bytes', "
                 "date_bin('1 hour', now() - interval '1 hour', 'epoch'), 1, 5, %s, 'mtr_seeded', now())",
                 (f"sb_{slug}", tenant, f"cus_{slug}"))
    conn.execute("INSERT INTO platform.tenant_placements (tenant_id, tier, state) VALUES (%s, 'pooled', 'active')",
                 (tenant,))
    conn.execute("INSERT INTO platform.tenant_database_sizes (cluster, database, tenant_id, bytes) "
                 "VALUES ('c1', %s, %s, 1000)", (f"tenant_{slug}", tenant))
    conn.execute("INSERT INTO platform.tenant_entitlements (tenant_id, lookup_keys) VALUES (%s, '{sso}')", (tenant,))


def snapshot(conn, table, tenant):
    """The tenant's rows, complete, with their row version (xmin): any write shows."""
    return conn.execute(f"SELECT xmin::text AS xmin, to_jsonb(t) AS row FROM platform.{table} t "
                        f"WHERE {key(table)} = %s ORDER BY to_jsonb(t)::text", (tenant,)).fetchall()


@pytest.fixture()
def tenants(schema):
    schema.execute("INSERT INTO platform.plans (code, name) VALUES ('iso', 'Isolation')")
    schema.execute("""
        INSERT INTO platform.plan_quotas (plan_code, metric, limit_value, period, mode, overage_unit_price) VALUES
          ('iso', 'members', 1000, 'none', 'hard', NULL),
          ('iso', 'projects', 1000, 'none', 'hard', NULL),
          ('iso', 'api_requests', 1000000, 'month', 'hard', NULL),
          ('iso', 'bandwidth_bytes', 10, 'month', 'overage', 0.5)
    """)
    seed_tenant(schema, A, "alpha", members=2)
    seed_tenant(schema, B, "bravo", members=3)
    for table in TENANT_TABLES:
        for tenant in (A, B):
            assert snapshot(schema, table, tenant), f"{table} has no rows of {tenant}"
    return schema


def _login(schema, db, member_of):
    name = f"{member_of}_{uuid.uuid4().hex[:8]}"
    schema.execute(f'CREATE ROLE "{name}" LOGIN IN ROLE {member_of}')
    return name


@pytest.fixture()
def app_user(schema, db):
    name = _login(schema, db, "selfbase_app")
    yield name
    schema.execute(f'DROP ROLE IF EXISTS "{name}"')


@pytest.fixture()
def owner_user(schema, db):
    name = _login(schema, db, "selfbase_owner")
    yield name
    schema.execute(f'DROP ROLE IF EXISTS "{name}"')


def _error(conn, sql, params=()):
    """Run `sql`; return the error it raises (the session stays usable: autocommit)."""
    with pytest.raises(psycopg.Error) as err:
        conn.execute(sql, params)
    return err.value


def test_tenant_tables_are_all_covered(tenants):
    found = [r["relname"] for r in tenants.execute("""
        SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'platform' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
           AND (c.relname = 'tenants' OR EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = c.oid
                                                  AND a.attname = 'tenant_id' AND NOT a.attisdropped))
         ORDER BY 1""")]
    assert found == sorted(TENANT_TABLES + TENANT_VIEWS)
    assert sorted(EXPECTED) == TENANT_TABLES
    readers = tenants.execute(
        "SELECT table_name, array_agg(DISTINCT grantee::text) AS who FROM information_schema.role_table_grants "
        "WHERE table_schema = 'platform' AND table_name = ANY(%s) GROUP BY 1 ORDER BY 1", (TENANT_VIEWS,)).fetchall()
    assert [(r["table_name"], r["who"]) for r in readers] == [
        (v, ["selfbase_graphql", "selfbase_owner"]) for v in TENANT_VIEWS]
    rows = tenants.execute("""
        SELECT c.relname, c.relrowsecurity AS enabled, c.relforcerowsecurity AS forced,
               array(SELECT p.polname::text FROM pg_policy p WHERE p.polrelid = c.oid ORDER BY 1) AS policies
          FROM pg_class c WHERE c.oid = ANY(%s::regclass[]) ORDER BY 1""",
                           ([f"platform.{t}" for t in TENANT_TABLES],)).fetchall()
    for r in rows:
        assert r["enabled"] and r["forced"], r
        assert {"tenant_isolation", "control_plane"} <= set(r["policies"]), r


def test_app_acting_for_a_cannot_touch_b(tenants, pg_server, db, app_user):
    before = {t: snapshot(tenants, t, B) for t in TENANT_TABLES}
    a_rows = {t: snapshot(tenants, t, A) for t in TENANT_TABLES}
    b_event = tenants.execute("SELECT id FROM platform.usage_events WHERE tenant_id = %s LIMIT 1",
                              (B,)).fetchone()["id"]

    with pg_server.connect(db, user=app_user) as app:
        app.execute(f"SET app.tenant_id = '{A}'")
        assert app.execute("SELECT platform.current_tenant_id() AS t").fetchone()["t"] == A
        for table in TENANT_TABLES:
            exp = EXPECTED[table]
            k = key(table)
            # SELECT: all of A's rows and none of B's
            if exp["select"] == "rls":
                rows = app.execute(f"SELECT {k} AS t FROM platform.{table}").fetchall()
                assert len(rows) == len(a_rows[table]), table
                assert {r["t"] for r in rows} == {A}, table
                assert app.execute(f"SELECT count(*) AS n FROM platform.{table} WHERE {k} = %s",
                                   (B,)).fetchone()["n"] == 0, table
            else:
                assert PERMISSION_DENIED in str(_error(app, f"SELECT * FROM platform.{table}")), table

            # UPDATE and DELETE of B's rows: nothing happens
            for op, sql in (("update", update_sql(table)), ("delete", f"DELETE FROM platform.{table} WHERE {k} = %s")):
                if exp[op] == "rls":
                    assert app.execute(sql, (B,)).rowcount == 0, (table, op)
                else:
                    err = _error(app, sql, (B,))
                    assert err.sqlstate == "42501" and PERMISSION_DENIED in str(err), (table, op, err)

            # INSERT of a row for B: refused
            sql, params = insert_for(table, B, b_event)
            err = _error(app, sql, params)
            assert err.sqlstate == "42501", (table, err)
            assert (RLS_VIOLATION if exp["insert"] == "rls" else PERMISSION_DENIED) in str(err), (table, err)

            if exp["update"] == "rls" and table != "tenants":
                # moving one of A's rows to B is refused too
                err = _error(app, f"UPDATE platform.{table} SET tenant_id = %s WHERE tenant_id = %s", (B, A))
                # members only get roles since 0008: their tenant_id is not the app's to change at all
                wall = PERMISSION_DENIED if table == "tenant_members" else RLS_VIOLATION
                assert err.sqlstate == "42501" and wall in str(err), (table, err)

        # the same statements do reach A's rows (so the zero counts above are RLS, not a bad WHERE);
        # rolled back
        with pytest.raises(_Rollback):
            with app.transaction():
                for table in TENANT_TABLES:
                    if EXPECTED[table]["update"] == "rls":
                        assert app.execute(update_sql(table), (A,)).rowcount == len(a_rows[table]), table
                    if EXPECTED[table]["delete"] == "rls":
                        assert app.execute(f"DELETE FROM platform.{table} WHERE tenant_id = %s",
                                           (A,)).rowcount == len(a_rows[table]), table
                    if EXPECTED[table]["insert"] == "rls":
                        sql, params = insert_for(table, A)
                        assert app.execute(sql, params).rowcount == 1, table
                raise _Rollback()

        # record_usage() and check_quota() for B, acting for A: refused (fail closed)
        for sql in ("SELECT * FROM platform.record_usage(%s, 'api_requests', 1, 'sneaky')",
                    "SELECT * FROM platform.check_quota(%s, 'api_requests', 1)"):
            err = _error(app, sql, (B,))
            assert err.sqlstate == "42501" and "is not visible to this session" in str(err), err
        # quota_status does not leak B's usage to A
        assert app.execute("SELECT * FROM platform.quota_status(%s)", (B,)).fetchall() == []

    after = {t: snapshot(tenants, t, B) for t in TENANT_TABLES}
    for table in TENANT_TABLES:
        assert after[table] == before[table], table


class _Rollback(Exception):
    pass


def test_hasura_session_variable_isolates(tenants, pg_server, db, app_user):
    before = {t: snapshot(tenants, t, B) for t in TENANT_TABLES}
    a_counts = {t: len(snapshot(tenants, t, A)) for t in TENANT_TABLES}
    with pg_server.connect(db, user=app_user) as app:
        claims = json.dumps({"x-hasura-role": "user", "x-hasura-tenant-id": str(A), "x-hasura-user-id": "u1"})
        app.execute("SELECT set_config('hasura.user', %s, false)", (claims,))
        assert app.execute("SELECT platform.current_tenant_id() AS t").fetchone()["t"] == A
        for table in TENANT_TABLES:
            if EXPECTED[table]["select"] != "rls":
                continue
            rows = app.execute(f"SELECT {key(table)} AS t FROM platform.{table}").fetchall()
            assert len(rows) == a_counts[table] and {r["t"] for r in rows} == {A}, table
            for op, sql in (("update", update_sql(table)),
                            ("delete", f"DELETE FROM platform.{table} WHERE {key(table)} = %s")):
                if EXPECTED[table][op] == "rls":
                    assert app.execute(sql, (B,)).rowcount == 0, (table, op)
            if EXPECTED[table]["insert"] == "rls":
                sql, params = insert_for(table, B)
                assert RLS_VIOLATION in str(_error(app, sql, params)), table
        # app.tenant_id, when set, is the tenant (it wins over hasura.user)
        app.execute("SELECT set_config('app.tenant_id', %s, false)", (str(B),))
        assert app.execute("SELECT platform.current_tenant_id() AS t").fetchone()["t"] == B
    assert {t: snapshot(tenants, t, B) for t in TENANT_TABLES} == before


def test_no_tenant_sees_nothing(tenants, pg_server, db, app_user):
    with pg_server.connect(db, user=app_user) as app:
        # (hasura.user must be quoted in SET: "user" is a keyword; Hasura uses set_config())
        for setup in (None, "RESET app.tenant_id", "SET app.tenant_id = ''", "SET hasura.\"user\" = '{}'",
                      "SELECT set_config('hasura.user', '', false)"):
            if setup:
                app.execute(setup)
            assert app.execute("SELECT platform.current_tenant_id() AS t").fetchone()["t"] is None, setup
            for table in TENANT_TABLES:
                if EXPECTED[table]["select"] == "rls":
                    assert app.execute(f"SELECT count(*) AS n FROM platform.{table}").fetchone()["n"] == 0, \
                        (setup, table)
        # a malformed tenant id is an error, not a wider view
        app.execute("SET app.tenant_id = 'not-a-uuid'")
        assert _error(app, "SELECT count(*) FROM platform.tenants").sqlstate == "22P02"


def test_force_is_what_protects_from_the_owner(tenants, pg_server, db, owner_user):
    counts = {t: {x: len(snapshot(tenants, t, x)) for x in (A, B)} for t in TENANT_TABLES}
    with pg_server.connect(db, user=owner_user) as owner:
        owner.execute("SELECT set_config('app.tenant_id', %s, false)", (str(A),))
        for table in TENANT_TABLES:
            k = key(table)
            # FORCE ROW LEVEL SECURITY: the owner sees A's rows only
            rows = owner.execute(f"SELECT {k} AS t FROM platform.{table}").fetchall()
            assert len(rows) == counts[table][A] and {r["t"] for r in rows} == {A}, table
            # without FORCE the owner bypasses the policies and sees B: the test above can fail
            with pytest.raises(_Rollback):
                with owner.transaction():
                    owner.execute(f"ALTER TABLE platform.{table} NO FORCE ROW LEVEL SECURITY")
                    seen = owner.execute(f"SELECT count(*) FILTER (WHERE {k} = %s) AS b, count(*) AS n "
                                         f"FROM platform.{table}", (B,)).fetchone()
                    assert seen["b"] == counts[table][B] > 0, table
                    raise _Rollback()
            # rolled back: forced again
            assert tenants.execute("SELECT relforcerowsecurity AS f FROM pg_class WHERE oid = %s::regclass",
                                   (f"platform.{table}",)).fetchone()["f"] is True
            assert owner.execute(f"SELECT count(*) AS n FROM platform.{table} WHERE {k} = %s",
                                 (B,)).fetchone()["n"] == 0, table


def test_app_role_owns_nothing_and_cannot_alter(tenants, pg_server, db, app_user):
    roles = tenants.execute("""
        SELECT rolname, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles
         WHERE rolname IN ('selfbase_app', %s) ORDER BY 1""", (app_user,)).fetchall()
    assert len(roles) == 2
    for r in roles:
        assert not (r["rolsuper"] or r["rolbypassrls"] or r["rolcreaterole"] or r["rolcreatedb"]), r
    owned = tenants.execute("""
        SELECT 'class' AS kind, relname::text AS name FROM pg_class WHERE relowner = 'selfbase_app'::regrole
        UNION ALL SELECT 'proc', proname::text FROM pg_proc WHERE proowner = 'selfbase_app'::regrole
        UNION ALL SELECT 'schema', nspname::text FROM pg_namespace WHERE nspowner = 'selfbase_app'::regrole
        UNION ALL SELECT 'type', typname::text FROM pg_type WHERE typowner = 'selfbase_app'::regrole
    """).fetchall()
    assert owned == []
    for other in ("selfbase_owner", "selfbase_admin"):
        assert tenants.execute("SELECT pg_has_role('selfbase_app', %s, 'MEMBER') AS m",
                               (other,)).fetchone()["m"] is False, other
    with pg_server.connect(db, user=app_user) as app:
        app.execute("SELECT set_config('app.tenant_id', %s, false)", (str(A),))
        for table in TENANT_TABLES:
            for sql in (f"ALTER TABLE platform.{table} NO FORCE ROW LEVEL SECURITY",
                        f"ALTER TABLE platform.{table} DISABLE ROW LEVEL SECURITY",
                        f"DROP POLICY tenant_isolation ON platform.{table}",
                        f"DROP TABLE platform.{table}"):
                err = _error(app, sql)
                assert err.sqlstate == "42501" and "must be owner" in str(err), (sql, err)
        assert _error(app, "SET ROLE selfbase_owner").sqlstate == "42501"
        assert _error(app, "SET row_security = off; SELECT count(*) FROM platform.tenants").sqlstate == "42501"
