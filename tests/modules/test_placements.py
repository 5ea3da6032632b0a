"""Tenant tiers (migration 0010, selfbase.platform.tenant_cluster and tenant_placement) against two real
PostgreSQL servers: the platform database's server is cluster "one", a second server is cluster "two"."""

from __future__ import annotations

import signal
import time
import uuid

import psycopg
import pytest

from pgserver import PgBouncer, PostgresServer
from test_security import error

PASSWORD = "s3cret-tenant-login"


@pytest.fixture(scope="session")
def second_server():
    with PostgresServer() as server:
        yield server


def _clean(server):
    with server.connect() as c:
        for r in c.execute("SELECT datname FROM pg_database WHERE datname LIKE 'tenant\\_%%' OR datname = 'app_tpl'"):
            c.execute(f'DROP DATABASE "{r["datname"]}" WITH (FORCE)')
        for r in c.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'tenant\\_%%' OR rolname IN ('squatter', 'placer') "
                           "ORDER BY rolname = 'placer'"):
            c.execute(f'DROP ROLE "{r["rolname"]}"')


@pytest.fixture()
def two(schema, pg_server, second_server, run):
    """Clusters one and two registered, tenants t00..t11 in the platform database."""
    for server in (pg_server, second_server):
        _clean(server)
    for i in range(12):
        schema.execute("INSERT INTO platform.tenants (slug, name) VALUES (%s, %s)", (f"t{i:02d}", f"T{i}"))
    for name, server in (("one", pg_server), ("two", second_server)):
        res = run("tenant_cluster", dict(name=name, tier="database", host=server.host, port=server.port,
                                         max_databases=5))
        assert res["changed"] and res["cluster"]["databases"] == 0, res
    yield dict(one=pg_server, two=second_server)
    for server in (pg_server, second_server):
        _clean(server)


def place(run, *slugs, check=False, diff=False, **extra):
    per_entry = dict((k, extra.pop(k)) for k in ("cluster", "tier", "database") if k in extra)
    args = dict(placements=[dict(tenant=s, password=PASSWORD, **per_entry) for s in slugs])
    args.update(extra)
    return run("tenant_placement", args, check=check, diff=diff)


def registry(conn):
    return {r["slug"]: (r["tier"], r["cluster"], r["database"], r["state"]) for r in conn.execute(
        "SELECT t.slug, p.tier, p.cluster, p.database, p.state FROM platform.tenant_placements p "
        "JOIN platform.tenants t ON t.id = p.tenant_id")}


def databases(server):
    with server.connect() as c:
        return sorted(r["datname"] for r in c.execute("SELECT datname FROM pg_database WHERE datname LIKE 'tenant%%'"))


def version(conn):
    return conn.execute("SELECT version FROM platform.placement_version").fetchone()["version"]


# tenant_cluster ---------------------------------------------------------------------------------------------------

@pytest.mark.through_playbook("tenant_cluster")
def test_a_cluster_is_registered_once_and_changes_are_honest(schema, run, pg_server):
    args = dict(name="c1", tier="dedicated", host=pg_server.host, port=pg_server.port)
    predicted = run("tenant_cluster", args, check=True)
    assert predicted["changed"] and schema.execute("SELECT count(*) AS n FROM platform.clusters").fetchone()["n"] == 0
    done = run("tenant_cluster", args, diff=True)
    assert done["cluster"] == predicted["cluster"]
    assert done["cluster"]["max_databases"] == 1 and done["cluster"]["status"] == "active"
    assert run("tenant_cluster", args)["changed"] is False
    v = version(schema)
    res = run("tenant_cluster", dict(name="c1", status="draining"), diff=True)
    assert res["changed"] and res["diff"]["before"]["status"] == "active" and res["diff"]["after"]["status"] == "draining"
    assert version(schema) == v + 1
    assert [r["action"] for r in schema.execute(
        "SELECT action FROM platform.audit_log WHERE entity = 'cluster' ORDER BY id")] == ["create", "update"]


@pytest.mark.parametrize("args, field", [
    (dict(name="Bad_Name", tier="database", host="h"), "name:"),
    (dict(name="c2"), "tier:"),
    (dict(name="c2", tier="database", host="h", max_databases=0), "max_databases:"),
])
def test_bad_cluster_input_names_the_field(schema, run, args, field):
    res = run("tenant_cluster", args)
    assert res["failed"] and res["msg"].startswith(field), res["msg"]


# tenant_placement: the choice of cluster -------------------------------------------------------------------------

def test_tenants_go_to_the_least_loaded_cluster_and_check_mode_predicts_it(two, schema, run):
    slugs = [f"t{i:02d}" for i in range(4)]
    predicted = place(run, *slugs, check=True)
    assert predicted["changed"] and registry(schema) == {} and databases(two["one"]) == []
    done = place(run, *slugs, diff=True)
    assert done["placements"] == predicted["placements"] and done["changes"] == predicted["changes"]
    clusters = [p["cluster"] for p in done["placements"]]
    assert sorted(clusters) == ["one", "one", "two", "two"], clusters
    assert all(p["state"] == "active" for p in done["placements"])
    assert databases(two["one"]) == sorted(p["database"] for p in done["placements"] if p["cluster"] == "one")
    assert databases(two["two"]) == sorted(p["database"] for p in done["placements"] if p["cluster"] == "two")
    v = version(schema)
    again = place(run, *slugs)
    assert again["changed"] is False and again["placements"] == done["placements"]
    assert version(schema) == v  # no change, no new version
    # a new tenant goes to the emptier cluster
    run("tenant_cluster", dict(name="two", status="draining"))
    assert place(run, "t04")["placements"][0]["cluster"] == "one"


def test_a_full_tier_is_refused_naming_each_cluster_and_its_use_and_nothing_is_written(two, schema, run):
    run("tenant_cluster", dict(name="one", max_databases=1))
    run("tenant_cluster", dict(name="two", max_databases=2))
    res = place(run, "t00", "t01", "t02", "t03")
    assert res["failed"]
    assert "one 1/1 databases" in res["msg"] and "two 2/2 databases" in res["msg"], res["msg"]
    assert registry(schema) == {} and databases(two["one"]) == databases(two["two"]) == []
    assert place(run, "t00", "t01", "t02")["changed"]
    res = place(run, "t03", check=True)  # check mode refuses the same
    assert res["failed"] and "one 1/1" in res["msg"]


def test_a_named_full_or_draining_cluster_is_never_chosen(two, run):
    run("tenant_cluster", dict(name="one", max_databases=1))
    assert place(run, "t00")["placements"][0]["cluster"] == "one"
    res = run("tenant_placement", dict(placements=[dict(tenant="t01", cluster="one", password=PASSWORD)]))
    assert res["failed"] and "placements[0].tier: no cluster one with room" in res["msg"], res["msg"]
    res = run("tenant_placement", dict(placements=[dict(tenant="t01", cluster="nope", password=PASSWORD)]))
    assert res["failed"] and res["msg"].startswith("placements[0].cluster: no cluster nope"), res["msg"]


def test_a_cluster_past_its_storage_limit_is_not_chosen(two, run):
    run("tenant_cluster", dict(name="two", status="draining"))
    assert place(run, "t00")["placements"][0]["cluster"] == "one"
    run("tenant_cluster", dict(name="two", status="active"))
    run("tenant_cluster", dict(name="one", storage_max_bytes=1))
    # without the storage limit t02 would go to one (a tie at one database each, broken by name)
    assert [p["cluster"] for p in place(run, "t01", "t02")["placements"]] == ["two", "two"]
    run("tenant_cluster", dict(name="two", storage_max_bytes=1))
    res = place(run, "t03")
    assert res["failed"] and "bytes" in res["msg"], res["msg"]


def test_a_dedicated_tenant_gets_a_cluster_of_its_own(two, schema, run, second_server):
    run("tenant_cluster", dict(name="ded", tier="dedicated", host=second_server.host, port=second_server.port))
    res = run("tenant_placement", dict(placements=[dict(tenant="t00", tier="dedicated", password=PASSWORD),
                                                   dict(tenant="t01", tier="dedicated", password=PASSWORD)]))
    assert res["failed"] and "ded 0/1" not in res["msg"] and "ded 1/1 databases" in res["msg"], res["msg"]
    res = run("tenant_placement", dict(placements=[dict(tenant="t00", tier="dedicated", password=PASSWORD)]))
    assert res["placements"][0]["cluster"] == "ded"
    assert registry(schema)["t00"] == ("dedicated", "ded", "tenant_t00", "active")


def test_moving_a_placed_tenant_is_refused(two, run):
    place(run, "t00")
    res = run("tenant_placement", dict(placements=[dict(tenant="t00", tier="pooled")]))
    assert res["failed"] and res["msg"].startswith("placements[0].tier: tenant t00 lives on database"), res["msg"]
    assert "online move" in res["msg"]


@pytest.mark.parametrize("entries, field", [
    ([dict(tenant="t00"), dict(tenant="t00")], "placements[1].tenant: t00 is listed twice"),
    ([dict(tenant="nobody")], "placements[0].tenant: no tenant nobody"),
    ([dict(tenant="t00", tier="pooled", cluster="one")], "placements[0].cluster:"),
    ([dict(tenant="t00", database="Bad-Name")], "placements[0].database:"),
    ([dict(tenant="t00")], "placements[0].password: a new tenant login (tenant_t00) needs a password"),
])
def test_bad_placement_input_names_the_field_before_any_write(two, schema, run, entries, field):
    res = run("tenant_placement", dict(placements=entries))
    assert res["failed"] and res["msg"].startswith(field), res["msg"]
    assert registry(schema) == {} and databases(two["one"]) == []


def test_an_existing_login_or_database_is_never_taken_over(two, run, pg_server):
    with pg_server.connect() as c:
        c.execute("CREATE ROLE tenant_t00 SUPERUSER")
    res = place(run, "t00", cluster="one")
    assert res["failed"] and "tenant_t00 already exists on cluster" in res["msg"], res["msg"]
    with pg_server.connect() as c:
        c.execute("DROP ROLE tenant_t00")


# what a tenant database is ----------------------------------------------------------------------------------------

def test_a_tenant_login_reaches_only_its_own_database_with_session_limits(two, run, pg_server):
    res = place(run, "t00", "t01", cluster="one")
    mine, other = res["placements"]
    with pg_server.connect(mine["database"], user=mine["login"]) as c:
        c.execute("CREATE TABLE notes (id int)")  # it owns its database
        settings = {r["name"]: r["setting"] for r in c.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('statement_timeout', 'lock_timeout', "
            "'idle_in_transaction_session_timeout')")}
        assert settings == {"statement_timeout": "30000", "lock_timeout": "10000",
                            "idle_in_transaction_session_timeout": "60000"}
        assert c.execute("SELECT rolconnlimit, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles "
                         "WHERE rolname = current_user").fetchone() == dict(
            rolconnlimit=20, rolsuper=False, rolcreatedb=False, rolcreaterole=False)
    with pg_server.connect() as c:
        verifier = c.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (mine["login"],)).fetchone()
        assert verifier["rolpassword"].startswith("SCRAM-SHA-256$")
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        pg_server.connect(other["database"], user=mine["login"]).close()
    # without the defence (PUBLIC keeps CONNECT, as CREATE DATABASE leaves it) the other tenant's login gets in
    with pg_server.connect() as c:
        c.execute(f'GRANT CONNECT ON DATABASE "{other["database"]}" TO PUBLIC')
    pg_server.connect(other["database"], user=mine["login"]).close()


@pytest.mark.through_playbook("tenant_placement")
def test_migration_files_are_applied_once_in_order_and_a_changed_one_is_refused(two, run, pg_server, tmp_path):
    first, second = tmp_path / "001_schema.sql", tmp_path / "002_orders.sql"
    first.write_text("CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL);\n"
                     "INSERT INTO items VALUES (1, '50% off');\n")
    second.write_text("CREATE TABLE orders (id bigint PRIMARY KEY, item bigint REFERENCES items);\n")
    res = place(run, "t00", cluster="one", migrations=[str(first)])
    assert [m["name"] for m in res["placements"][0]["migrations"]] == ["001_schema.sql"]
    assert place(run, "t00", cluster="one", migrations=[str(first)])["changed"] is False
    predicted = place(run, "t00", migrations=[str(first), str(second)], check=True)
    done = place(run, "t00", migrations=[str(first), str(second)])
    assert predicted["changed"] and done["placements"] == predicted["placements"]
    with pg_server.connect("tenant_t00") as c:
        owners = {r["tablename"]: r["tableowner"] for r in c.execute(
            "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'")}
        assert owners == {"items": "tenant_t00", "orders": "tenant_t00", "selfbase_migrations": "tenant_t00"}
        assert c.execute("SELECT name FROM items").fetchone()["name"] == "50% off"
    first.write_text("CREATE TABLE items (id int);\n")
    res = place(run, "t00", migrations=[str(first), str(second)])
    assert res["failed"] and res["msg"].startswith("migrations: the files applied to tenant_t00"), res["msg"]
    res = place(run, "t00", cluster="one", template="tpl", migrations=[str(first)])
    assert res["failed"] and res["msg"].startswith("template: give a template database or migration files")


def test_a_failed_run_is_finished_on_the_same_cluster(two, schema, run, tmp_path):
    bad = tmp_path / "001.sql"
    bad.write_text("CREATE TABLE t (id int);\nSELECT no_such_function();\n")
    res = place(run, "t00", migrations=[str(bad)])
    assert res["failed"] and "no_such_function" in res["msg"], res["msg"]
    tier, cluster, database, state = registry(schema)["t00"]
    assert state == "provisioning"
    # a fuller cluster is no reason to move a half-made placement
    run("tenant_cluster", dict(name=cluster, status="draining"))
    bad.write_text("CREATE TABLE t (id int);\n")
    res = place(run, "t00", migrations=[str(bad)])
    assert res["placements"][0]["cluster"] == cluster and res["placements"][0]["state"] == "active"
    assert databases(two[cluster]) == [database]


def test_a_template_is_copied(two, run, pg_server):
    with pg_server.connect() as c:
        c.execute("CREATE DATABASE app_tpl")
    with pg_server.connect("app_tpl") as c:
        c.execute("CREATE TABLE public.settings (k text PRIMARY KEY); GRANT ALL ON public.settings TO PUBLIC")
    res = place(run, "t00", cluster="one", template="app_tpl")
    with pg_server.connect(res["placements"][0]["database"], user="tenant_t00") as c:
        assert c.execute("SELECT count(*) AS n FROM settings").fetchone()["n"] == 0
    res = place(run, "t01", cluster="one", template="nope")
    assert res["failed"] and res["msg"] == "template: no database nope on cluster one", res["msg"]


def test_retire_keeps_the_database_and_its_slot_and_drop_removes_both(two, schema, run, pg_server):
    place(run, "t00", cluster="one")
    retire = [dict(tenant="t00", state="absent")]
    predicted = run("tenant_placement", dict(placements=retire), check=True)
    res = run("tenant_placement", dict(placements=retire))
    assert res["changes"] == predicted["changes"] == [dict(tenant="t00", action="retire")]
    assert registry(schema)["t00"][3] == "retired" and databases(pg_server) == ["tenant_t00"]
    with pytest.raises(psycopg.OperationalError, match="not permitted to log in"):
        pg_server.connect("tenant_t00", user="tenant_t00").close()
    assert run("tenant_cluster", dict(name="one"))["cluster"]["databases"] == 1
    assert run("tenant_placement", dict(placements=retire))["changed"] is False
    res = place(run, "t00")  # back, on its own database
    assert res["changes"] == [dict(tenant="t00", action="update")]
    pg_server.connect("tenant_t00", user="tenant_t00").close()
    res = run("tenant_placement", dict(placements=[dict(tenant="t00", state="absent", drop_database=True)]))
    assert res["changes"] == [dict(tenant="t00", action="drop")] and res["placements"][0]["state"] == "absent"
    assert registry(schema) == {} and databases(pg_server) == []
    with pg_server.connect() as c:
        assert c.execute("SELECT 1 FROM pg_roles WHERE rolname = 'tenant_t00'").fetchone() is None


def test_an_administrator_that_is_not_a_superuser_places_retires_and_drops(two, schema, run, second_server, tmp_path):
    # what the tenant_db hosts of an inventory give the control plane: CREATEDB and CREATEROLE, with a password
    with second_server.connect() as c:
        c.execute("CREATE ROLE placer LOGIN CREATEDB CREATEROLE PASSWORD 'placer-pw'")
    run("tenant_cluster", dict(name="ded", tier="dedicated", host=second_server.host, port=second_server.port,
                               admin_user="placer", max_databases=2))
    schema_file = tmp_path / "001.sql"
    schema_file.write_text("CREATE TABLE items (id int);\n")
    entry = dict(tenant="t00", tier="dedicated", password=PASSWORD)
    args = dict(placements=[entry], migrations=[str(schema_file)], cluster_passwords=dict(ded="placer-pw"))
    res = run("tenant_placement", args)
    assert res["changed"] and res["placements"][0]["cluster"] == "ded", res
    assert run("tenant_placement", args)["changed"] is False
    with second_server.connect("tenant_t00") as c:
        assert c.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'items'").fetchone()["tableowner"] == \
            "tenant_t00"
        assert c.execute("SELECT has_database_privilege('public', 'tenant_t00', 'CONNECT') AS c").fetchone()["c"] is False
        assert c.execute("SELECT rolsuper FROM pg_roles WHERE rolname = 'placer'").fetchone()["rolsuper"] is False
    # the administrator is a member of each tenant login it made, never the other way round: a tenant's login
    # gets nothing of the administrator's, nor of another tenant's
    run("tenant_placement", dict(args, placements=[entry, dict(entry, tenant="t01")]))
    with second_server.connect("tenant_t00", user="tenant_t00") as c:
        for attack in ("SET ROLE placer", "SET ROLE tenant_t01", "CREATE DATABASE stolen"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(attack)
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        second_server.connect("tenant_t01", user="tenant_t00").close()
    run("tenant_placement", dict(args, placements=[dict(entry, tenant="t01", state="absent", drop_database=True)]))
    run("tenant_placement", dict(args, placements=[dict(entry, state="absent")]))
    assert registry(schema)["t00"][3] == "retired"
    res = run("tenant_placement", dict(args, placements=[dict(entry, state="absent", drop_database=True)]))
    assert res["changes"] == [dict(tenant="t00", action="drop")] and databases(second_server) == []


def test_a_cluster_with_databases_cannot_be_removed_nor_its_tenant_purged(two, run):
    place(run, "t00", cluster="one")
    res = run("tenant_cluster", dict(name="one", state="absent"))
    assert res["failed"] and res["msg"] == "state: cluster one still holds 1 tenant databases; drop or move them first"
    res = run("tenants", dict(tenants=[dict(slug="t00", name="T0", status="absent")], purge_deleted=True))
    assert res["failed"] and "t00 still have a database of their own" in res["msg"], res["msg"]


# the registry's attack tests --------------------------------------------------------------------------------------

GROUPS = {"app": "selfbase_app", "hasura": "selfbase_graphql", "auth": None, "monitor": "selfbase_monitor",
          "meter": "selfbase_meter", "billing": "selfbase_billing"}
HIJACK = {
    "clusters": "UPDATE platform.clusters SET host = 'evil.example'",
    "tenant_placements": "UPDATE platform.tenant_placements SET cluster = 'two'",
    "placement_version": "UPDATE platform.placement_version SET version = 0",
}


@pytest.fixture()
def intruders(two, schema, pg_server, db, run):
    place(run, "t00", "t01", cluster="one")
    names = {}
    for short, group in GROUPS.items():
        name = f"{short}_{uuid.uuid4().hex[:6]}"
        schema.execute(f'CREATE ROLE "{name}" LOGIN' + (f" IN ROLE {group}" if group else ""))
        names[short] = name
    yield {short: pg_server.connect(db, user=name) for short, name in names.items()}
    for name in names.values():
        schema.execute(f'DROP OWNED BY "{name}"')
        schema.execute(f'DROP ROLE "{name}"')


@pytest.mark.parametrize("who", list(GROUPS))
@pytest.mark.parametrize("table", list(HIJACK))
def test_only_the_control_plane_writes_the_registry(intruders, schema, who, table):
    conn = intruders[who]
    assert "permission denied" in str(error(conn, HIJACK[table]))
    assert "permission denied" in str(error(conn, f"DELETE FROM platform.{table}"))
    read = f"SELECT count(*) AS n FROM platform.{table}"
    if who == "monitor":  # capacity metrics
        assert conn.execute(read).fetchone()["n"] >= 1
    else:
        assert "permission denied" in str(error(conn, read))
    conn.close()


def test_without_the_defence_an_app_login_pointed_a_tenant_at_another_cluster(intruders, schema):
    with schema.transaction():
        schema.execute("SET LOCAL ROLE selfbase_owner")
        for table in ("tenant_placements", "placement_version"):
            schema.execute(f"ALTER TABLE platform.{table} DISABLE ROW LEVEL SECURITY")
    schema.execute("GRANT SELECT, UPDATE ON platform.tenant_placements, platform.placement_version TO PUBLIC")
    intruders["app"].execute(HIJACK["tenant_placements"] + " WHERE database = 'tenant_t00'")
    assert registry(schema)["t00"][1] == "two"  # its application would now reach a database there
    for c in intruders.values():
        c.close()


# routes: a real PgBouncer in front of both clusters ----------------------------------------------------------------

@pytest.mark.through_playbook("tenant_routes")
def test_applications_reach_each_tenant_by_name_through_pgbouncer_and_a_reload_keeps_connections(
        two, run, second_server):
    res = run("tenant_placement", dict(placements=[dict(tenant="t00", cluster="one", password=PASSWORD),
                                                   dict(tenant="t01", cluster="two", password=PASSWORD)]))
    assert res["changed"], res
    with PgBouncer({f"tenant_t0{i}": PASSWORD for i in range(3)}) as bouncer:
        args = dict(dest=bouncer.routes)
        predicted = run("tenant_routes", args, check=True, diff=True)
        assert predicted["changed"] and open(bouncer.routes, encoding="utf-8").read() == "[databases]\n"
        assert "t01 = host=%s port=%d dbname=tenant_t01" % (second_server.host, second_server.port) in \
            predicted["diff"]["after"]
        res = run("tenant_routes", args)
        assert res["changed"] and [r["tenant"] for r in res["routes"]] == ["t00", "t01"]
        assert run("tenant_routes", args)["changed"] is False
        bouncer.signal(signal.SIGHUP)

        def connect(tenant, user):
            return bouncer.connect(tenant, user, PASSWORD)
        held = _retry(lambda: connect("t00", "tenant_t00"))
        assert held.execute("SELECT current_database()").fetchone() == ("tenant_t00",)
        with connect("t01", "tenant_t01") as c:
            assert c.execute("SELECT current_database(), current_setting('port')::int").fetchone() == (
                "tenant_t01", second_server.port)
        with pytest.raises(psycopg.OperationalError):
            connect("t01", "tenant_t00").close()  # another tenant's login: refused by the cluster
        with pytest.raises(psycopg.OperationalError):
            connect("t02", "tenant_t02").close()  # not placed yet: no route
        # a new placement: the file changes, PgBouncer reloads, the open connection stays
        place(run, "t02", cluster="two")
        assert run("tenant_routes", args)["changed"]
        bouncer.signal(signal.SIGHUP)
        with _retry(lambda: connect("t02", "tenant_t02")) as c:
            assert c.execute("SELECT current_database()").fetchone() == ("tenant_t02",)
        assert held.execute("SELECT current_database()").fetchone() == ("tenant_t00",)
        held.close()


def _retry(fn, seconds=10):
    deadline = time.monotonic() + seconds
    while True:
        try:
            return fn()
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
