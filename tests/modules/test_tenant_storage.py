"""Storage of tenant databases (migration 0015, selfbase.platform.tenant_storage) against two real PostgreSQL
servers: each placed database's size becomes the tenant's storage_bytes usage, counted once."""

from __future__ import annotations

import pathlib
import uuid

import pytest
import yaml

from test_placements import PASSWORD, place, registry, second_server, two  # noqa: F401  pylint: disable=unused-import
from test_security import error


def size(server, database):
    with server.connect() as c:
        return c.execute("SELECT pg_database_size(%s) AS n", (database,)).fetchone()["n"]


def usage(conn, slug):
    """(sum of the tenant's storage_bytes events, number of events, its daily rollups' sum)."""
    return tuple(conn.execute(
        "SELECT (SELECT COALESCE(sum(quantity), 0) FROM platform.usage_events e WHERE e.tenant_id = t.id "
        "        AND e.metric = 'storage_bytes')::bigint AS total, "
        "       (SELECT count(*) FROM platform.usage_events e WHERE e.tenant_id = t.id "
        "        AND e.metric = 'storage_bytes') AS events, "
        "       (SELECT COALESCE(sum(quantity), 0) FROM platform.usage_rollups_daily r WHERE r.tenant_id = t.id "
        "        AND r.metric = 'storage_bytes')::bigint AS rolled "
        "  FROM platform.tenants t WHERE t.slug = %s", (slug,)).fetchone().values())


def recorded(conn):
    return {(r["cluster"], r["database"]): r["bytes"] for r in conn.execute(
        "SELECT cluster, database, bytes FROM platform.tenant_database_sizes")}


def grow(server, database, user):
    with server.connect(database, user=user, password=PASSWORD) as c:
        c.execute("CREATE TABLE IF NOT EXISTS filler (b text)")
        c.execute("INSERT INTO filler SELECT repeat(md5(i::text), 64) FROM generate_series(1, 2000) i")


@pytest.mark.through_playbook("tenant_storage")
def test_each_tenant_database_is_sampled_into_its_usage_once_and_check_mode_predicts_it(two, schema, run):
    place(run, "t00", cluster="one")
    place(run, "t01", cluster="two")
    sizes = {("one", "tenant_t00"): size(two["one"], "tenant_t00"), ("two", "tenant_t01"): size(two["two"], "tenant_t01")}
    predicted = run("tenant_storage", {}, check=True, diff=True)
    assert predicted["changed"] and recorded(schema) == {} and usage(schema, "t00") == (0, 0, 0), predicted
    assert [(s["tenant"], s["cluster"], s["action"], s["previous"], s["bytes"]) for s in predicted["samples"]] == [
        ("t00", "one", "create", 0, sizes[("one", "tenant_t00")]),
        ("t01", "two", "create", 0, sizes[("two", "tenant_t01")])]
    after = {"one/tenant_t00": sizes[("one", "tenant_t00")], "two/tenant_t01": sizes[("two", "tenant_t01")]}
    assert predicted["diff"] == dict(before={}, after=after)
    res = run("tenant_storage", {})
    assert res["changed"] and res["samples"] == predicted["samples"] and res["unreachable_clusters"] == [], res["msg"]
    assert recorded(schema) == sizes
    assert usage(schema, "t00") == (sizes[("one", "tenant_t00")], 1, sizes[("one", "tenant_t00")])
    # nothing changed: nothing recorded, in check mode or not
    assert run("tenant_storage", {}, check=True)["changed"] is False
    again = run("tenant_storage", {})
    assert again["changed"] is False and {s["action"] for s in again["samples"]} == {"keep"}
    assert usage(schema, "t00")[1] == 1
    # the tenant writes: the growth is one event, and the usage is the database's size
    grow(two["one"], "tenant_t00", "tenant_t00")
    grown = size(two["one"], "tenant_t00")
    assert grown > sizes[("one", "tenant_t00")]
    res = run("tenant_storage", {}, diff=True)
    # the size can still grow by a page or two after the writes (autovacuum's free space and visibility maps):
    # the module records what it sampled, once
    sampled = res["diff"]["after"]["one/tenant_t00"]
    assert res["changed"] and res["diff"] == dict(before={"one/tenant_t00": sizes[("one", "tenant_t00")]},
                                                  after={"one/tenant_t00": sampled})
    assert sampled >= grown and recorded(schema)[("one", "tenant_t00")] == sampled
    assert usage(schema, "t00") == (sampled, 2, sampled) and usage(schema, "t01")[1] == 1


def test_a_dropped_database_gives_its_storage_back_and_a_retired_one_keeps_it(two, schema, run):
    place(run, "t00", "t01", cluster="one")
    run("tenant_storage", {})
    run("tenant_placement", dict(placements=[dict(tenant="t00", state="absent")]))
    assert run("tenant_storage", {})["changed"] is False  # retired: the database and its bytes are kept
    run("tenant_placement", dict(placements=[dict(tenant="t01", state="absent", drop_database=True)]))
    res = run("tenant_storage", {})
    gone = [s for s in res["samples"] if s["tenant"] == "t01"]
    assert res["changed"] and gone[0]["action"] == "delete" and gone[0]["bytes"] == 0 and gone[0]["delta"] < 0
    assert usage(schema, "t01")[:2] == (0, 2) and list(recorded(schema)) == [("one", "tenant_t00")]
    assert run("tenant_storage", {})["changed"] is False


def test_growth_past_an_overage_quota_is_counted_as_overage_once_and_a_hard_quota_refuses_nothing(two, schema, run):
    place(run, "t00", "t01", cluster="one")
    limit = size(two["one"], "tenant_t00") // 2
    ids = {r["slug"]: r["id"] for r in schema.execute("SELECT slug, id FROM platform.tenants")}
    schema.execute("INSERT INTO platform.tenant_quotas (tenant_id, metric, limit_value, period, mode, overage_unit_price) "
                   "VALUES (%s, 'storage_bytes', %s, 'none', 'overage', 0.000001), "
                   "       (%s, 'storage_bytes', %s, 'none', 'hard', NULL)", (ids["t00"], limit, ids["t01"], limit))
    res = run("tenant_storage", {})
    assert res["changed"] and usage(schema, "t01")[0] == size(two["one"], "tenant_t01")  # stored is stored
    over = schema.execute("SELECT tenant_id, quantity FROM platform.usage_overages WHERE metric = 'storage_bytes'").fetchall()
    assert over == [dict(tenant_id=ids["t00"], quantity=size(two["one"], "tenant_t00") - limit)]
    assert run("tenant_storage", {})["changed"] is False
    assert schema.execute("SELECT count(*) AS n FROM platform.usage_overages").fetchone()["n"] == 1


def test_an_unreachable_cluster_keeps_its_sizes_and_the_run_fails_naming_it(two, schema, run):
    place(run, "t00", cluster="one")
    place(run, "t01", cluster="two")
    run("tenant_storage", {})
    before = recorded(schema)
    grow(two["one"], "tenant_t00", "tenant_t00")
    # the second cluster is down (nothing listens where the registry says)
    run("tenant_cluster", dict(name="two", port=two["two"].port + 1))
    res = run("tenant_storage", dict(cluster_passwords=dict(two="not-logged-pw")))
    assert res["failed"] and res["unreachable_clusters"] == ["two"] and "cluster two could not be read" in res["msg"], res
    assert "not-logged-pw" not in str(res)
    after = recorded(schema)
    assert after[("two", "tenant_t01")] == before[("two", "tenant_t01")]
    assert after[("one", "tenant_t00")] == size(two["one"], "tenant_t00") > before[("one", "tenant_t00")]


def test_a_non_superuser_administrator_reads_the_sizes(two, schema, run, tmp_path):
    with two["two"].connect() as c:
        c.execute("CREATE ROLE placer LOGIN CREATEDB CREATEROLE PASSWORD 'placer-pw'")
    run("tenant_cluster", dict(name="ded", tier="dedicated", host=two["two"].host, port=two["two"].port,
                               admin_user="placer"))
    pw = dict(cluster_passwords=dict(ded="placer-pw"))
    run("tenant_placement", dict(pw, placements=[dict(tenant="t00", tier="dedicated", password=PASSWORD)]))
    res = run("tenant_storage", pw)
    assert res["changed"] and res["samples"][0]["bytes"] == size(two["two"], "tenant_t00") > 0, res
    assert registry(schema)["t00"][1] == "ded"


# attack tests: only the control plane writes the sizes -------------------------------------------------------------

GROUPS = {"app": "selfbase_app", "hasura": "selfbase_graphql", "auth": None, "monitor": "selfbase_monitor",
          "meter": "selfbase_meter", "billing": "selfbase_billing"}


@pytest.fixture()
def intruders(two, schema, pg_server, db, run):
    place(run, "t00", cluster="one")
    run("tenant_storage", {})
    names = {}
    for short, group in GROUPS.items():
        name = f"{short}_{uuid.uuid4().hex[:6]}"
        schema.execute(f'CREATE ROLE "{name}" LOGIN' + (f" IN ROLE {group}" if group else ""))
        names[short] = name
    conns = {short: pg_server.connect(db, user=name) for short, name in names.items()}
    yield conns
    for c in conns.values():
        c.close()
    for name in names.values():
        schema.execute(f'DROP OWNED BY "{name}"')
        schema.execute(f'DROP ROLE "{name}"')


@pytest.mark.parametrize("who", list(GROUPS))
def test_only_the_control_plane_writes_the_sizes(intruders, who):
    conn = intruders[who]
    for attack in ("UPDATE platform.tenant_database_sizes SET bytes = 1000000000000",
                   "DELETE FROM platform.tenant_database_sizes",
                   "INSERT INTO platform.tenant_database_sizes (cluster, database, tenant_id, bytes) "
                   "SELECT 'one', 'x', tenant_id, 0 FROM platform.tenant_placements"):
        assert "permission denied" in str(error(conn, attack))
    read = "SELECT count(*) AS n FROM platform.tenant_database_sizes"
    if who == "monitor":  # the storage metric
        assert conn.execute(read).fetchone()["n"] == 1
    else:
        assert "permission denied" in str(error(conn, read))


def test_postgres_exporter_reads_the_sizes_as_the_monitor_login(intruders, schema, pg_server):
    text = (pathlib.Path(__file__).resolve().parents[2]
            / "roles/monitoring/templates/postgres-exporter-queries.yml.j2").read_text()
    queries = yaml.safe_load(text.split("{% endif %}")[0].split("\n", 1)[1].replace("{% if", "#"))
    rows = intruders["monitor"].execute(queries["selfbase_tenant_database"]["query"]).fetchall()
    assert [(r["tenant"], r["cluster"], r["database"], r["bytes"]) for r in rows] == [
        ("t00", "one", "tenant_t00", float(size(pg_server, "tenant_t00")))]
    assert rows[0]["sampled_timestamp_seconds"] > 0


def test_without_the_defence_an_app_login_made_its_storage_free(intruders, schema, run):
    with schema.transaction():
        schema.execute("SET LOCAL ROLE selfbase_owner")
        schema.execute("ALTER TABLE platform.tenant_database_sizes DISABLE ROW LEVEL SECURITY")
    schema.execute("GRANT UPDATE ON platform.tenant_database_sizes TO PUBLIC")
    intruders["app"].execute("UPDATE platform.tenant_database_sizes SET bytes = 1000000000000")
    run("tenant_storage", {})
    assert usage(schema, "t00")[0] < 0  # the next sample gave back bytes that were never there
