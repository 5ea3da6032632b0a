"""hasura_metadata against a stateful fake of Hasura's metadata API (tests/modules/fakes/hasura_fake.py).

Contract tests: the hasura/graphql-engine image cannot be pulled here, so the module runs
against the fake, and every assertion reads the fake's stored metadata or its request log."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile

import pytest
from conftest import COLLECTIONS, Runner
from fakes.hasura_fake import FakeHasura, apply_auth_metadata, initial_metadata

SECRET = "s3cr3t-admin-Secret-value-4f1c"
TENANT = {"tenant_id": {"_eq": "X-Hasura-Tenant-Id"}}

DB = {
    ("platform", "tenants"): ["id", "slug", "name", "status", "plan_code", "created_at"],
    ("platform", "tenant_domains"): ["id", "tenant_id", "domain", "verified", "primary"],
    ("platform", "projects"): ["id", "tenant_id", "name", "description", "archived", "created_at"],
}


@pytest.fixture()
def fake():
    auth = {("auth", t["table"]["name"]): None for t in initial_metadata()["sources"][0]["tables"]}
    auth[("auth", "user_security_keys")] = None
    with FakeHasura(admin_secret=SECRET, db_tables={**auth, **DB}) as f:
        yield f


@pytest.fixture()
def run(fake):
    runner = Runner(None, None)

    def call(args, check=False, diff=False, connection=True):
        task = dict(endpoint=fake.endpoint, admin_secret=SECRET) if connection else {}
        task.update(args)
        return runner("hasura_metadata", task, check=check, diff=diff, login=False)
    return call


def platform_tables():
    return [
        {"schema": "platform", "name": "tenants", "tenant_column": "id", "tenant_roles": ["user"],
         "tenant_operations": ["select"], "columns": ["id", "slug", "name", "status", "plan_code"],
         "array_relationships": [{"name": "domains", "table": {"schema": "platform", "name": "tenant_domains"},
                                  "column": "tenant_id"}]},
        {"schema": "platform", "name": "tenant_domains", "tenant_column": "tenant_id", "tenant_roles": ["user"],
         "tenant_operations": ["select"],
         "object_relationships": [{"name": "tenant", "column": "tenant_id"}]},
        {"schema": "platform", "name": "projects", "tenant_column": "tenant_id", "tenant_roles": ["user"],
         "columns": ["id", "tenant_id", "name", "description", "created_at"],
         "configuration": {"custom_root_fields": {"select": "projects", "insert_one": "insertProject"},
                           "custom_column_names": {"created_at": "createdAt"}},
         "object_relationships": [{"name": "tenant", "column": "tenant_id"}]},
    ]


def others(fake, metadata=None):
    """Everything of the metadata except the platform tables, as exported (or as in metadata)."""
    md = copy.deepcopy(metadata) if metadata else fake.export()
    for source in md["sources"]:
        source["tables"] = [t for t in source["tables"] if t["table"]["schema"] != "platform"]
    return md


def ok(res):
    assert res.get("failed") is not True, res
    # the module warns when Hasura stored the owned tables differently from what it sent (not idempotent)
    assert not res.get("warnings"), res["warnings"]
    return res


@pytest.mark.through_playbook("hasura_metadata")
def test_check_then_apply_then_noop(fake, run):
    untouched = others(fake)
    version = fake.resource_version
    args = {"tables": platform_tables()}

    res = ok(run(args, check=True, diff=True))
    assert res["changed"] is True
    assert res["resource_version"] == version
    assert res["diff"]["before"] == {}
    assert sorted(res["diff"]["after"]) == ["platform.projects", "platform.tenant_domains", "platform.tenants"]
    assert fake.writes() == []
    assert fake.resource_version == version
    assert not [k for k in fake.tables() if k.startswith("platform.")]
    predicted = res["tables"]

    res = ok(run(args, diff=True))
    assert res["changed"] is True and res["retried"] is False
    assert [w["status"] for w in fake.writes()] == [200]
    write = fake.writes()[0]["body"]
    assert write["version"] == 2 and write["resource_version"] == version
    assert write["args"]["allow_inconsistent_metadata"] is False
    # what is not ours is sent back exactly as it was exported
    assert others(fake, write["args"]["metadata"]) == untouched
    assert fake.resource_version == version + 1 == res["resource_version"]
    assert res["tables"] == predicted

    stored = fake.tables()
    projects = stored["platform.projects"]
    assert projects["select_permissions"] == [{"role": "user", "permission": {
        "columns": ["id", "tenant_id", "name", "description", "created_at"], "filter": TENANT}}]
    assert projects["insert_permissions"] == [{"role": "user", "permission": {
        "columns": ["id", "name", "description", "created_at"], "check": TENANT,
        "set": {"tenant_id": "X-Hasura-Tenant-Id"}}}]
    assert projects["update_permissions"] == [{"role": "user", "permission": {
        "columns": ["id", "name", "description", "created_at"], "filter": TENANT}}]
    assert projects["delete_permissions"] == [{"role": "user", "permission": {"filter": TENANT}}]
    assert projects["object_relationships"] == [{"name": "tenant", "using": {"foreign_key_constraint_on": "tenant_id"}}]
    assert projects["configuration"]["custom_root_fields"] == {"select": "projects", "insert_one": "insertProject"}
    tenants = stored["platform.tenants"]
    assert tenants["select_permissions"] == [{"role": "user", "permission": {
        "columns": ["id", "slug", "name", "status", "plan_code"], "filter": {"id": {"_eq": "X-Hasura-Tenant-Id"}}}}]
    assert "insert_permissions" not in tenants and "update_permissions" not in tenants
    assert tenants["array_relationships"] == [{"name": "domains", "using": {"foreign_key_constraint_on": {
        "table": {"schema": "platform", "name": "tenant_domains"}, "column": "tenant_id"}}}]
    assert stored["platform.tenant_domains"]["select_permissions"][0]["permission"]["columns"] == "*"
    # auth's tables, the source configuration, inherited roles: exactly as before
    assert others(fake) == untouched
    kept = [e["table"] for e in untouched["sources"][0]["tables"]]
    assert [e["table"] for e in fake.export()["sources"][0]["tables"]][:len(kept)] == kept

    # Hasura exported the custom column names in both spellings: still no change, and no write
    requests = len(fake.requests)
    res = ok(run(args, diff=True))
    assert res["changed"] is False
    assert res["diff"]["before"] == res["diff"]["after"]
    assert res["resource_version"] == version + 1
    assert [r["type"] for r in fake.requests[requests:]] == ["export_metadata", "get_inconsistent_metadata"]
    assert len(fake.writes()) == 1
    res = ok(run(args, check=True))
    assert res["changed"] is False
    assert len(fake.writes()) == 1


def test_source_settings_stored_on_the_first_start_are_brought_in_line(fake, run):
    """Hasura stored the default source's settings on its first start (prepared statements on, the fake's initial
    metadata); only the URL is read from the environment afterwards. A deployment moved behind PgBouncer's
    transaction pooling needs them off in the metadata: the module owns the settings a task gives, and only them."""
    tables = [{"schema": "platform", "name": "tenants"}]
    ok(run({"tables": tables}))

    def info():
        return fake.export()["sources"][0]["configuration"]["connection_info"]
    stored = copy.deepcopy(info())
    assert stored["use_prepared_statements"] is True
    writes = len(fake.writes())
    args = {"tables": tables, "source_settings": {"use_prepared_statements": False}}

    res = ok(run(args, check=True, diff=True))
    assert res["changed"] is True and len(fake.writes()) == writes
    assert res["source_settings"] == {"use_prepared_statements": False}
    assert res["diff"]["before"]["source_settings"] == {"use_prepared_statements": True}
    assert res["diff"]["after"]["source_settings"] == {"use_prepared_statements": False}

    res = ok(run(args, diff=True))
    assert res["changed"] is True and len(fake.writes()) == writes + 1
    # the URL, the pool and the isolation level are kept as stored
    assert info() == dict(stored, use_prepared_statements=False)
    res = ok(run(args))
    assert res["changed"] is False and len(fake.writes()) == writes + 1

    # a setting the task leaves out is not touched
    ok(run({"tables": tables, "source_settings": {"isolation_level": "repeatable-read"}}))
    assert info() == dict(stored, use_prepared_statements=False, isolation_level="repeatable-read")


def test_explicit_permissions_refine_the_shorthand(fake, run):
    table = {"schema": "platform", "name": "projects", "tenant_column": "tenant_id", "tenant_roles": ["user"],
             "columns": ["id", "tenant_id", "name", "description"],
             "permissions": {
                 "user": {"select": {"filter": {"archived": {"_eq": False}}, "allow_aggregations": True, "limit": 100},
                          "update": {"columns": ["name"], "check": {"name": {"_neq": ""}}},
                          "insert": {"set": {"archived": "false"}, "backend_only": False}},
                 "support": {"select": {"columns": ["id", "tenant_id"], "filter": {}, "allow_aggregations": False}},
                 "viewer": {"select": {"columns": "*", "filter": {}}}},
             "tenant_operations": ["select", "insert", "update"]}
    ok(run({"tables": [table]}))
    perms = fake.tables()["platform.projects"]
    assert perms["select_permissions"] == [
        {"role": "support", "permission": {"columns": ["id", "tenant_id"], "filter": {}}},
        {"role": "user", "permission": {"columns": ["id", "tenant_id", "name", "description"],
                                        "filter": {"_and": [TENANT, {"archived": {"_eq": False}}]},
                                        "allow_aggregations": True, "limit": 100}},
        {"role": "viewer", "permission": {"columns": "*", "filter": {}}}]
    assert perms["update_permissions"] == [{"role": "user", "permission": {
        "columns": ["name"], "filter": TENANT, "check": {"_and": [TENANT, {"name": {"_neq": ""}}]}}}]
    assert perms["insert_permissions"] == [{"role": "user", "permission": {
        "columns": ["id", "name", "description"], "check": TENANT,
        "set": {"archived": "false", "tenant_id": "X-Hasura-Tenant-Id"}}}]
    assert "delete_permissions" not in perms

    # defaults written out (allow_aggregations/backend_only false) and lists in another order: no change
    table["columns"] = ["description", "name", "tenant_id", "id"]
    res = ok(run({"tables": [table]}))
    assert res["changed"] is False
    assert len(fake.writes()) == 1


def test_only_declared_parts_of_an_owned_table_change(fake, run):
    def add(metadata):
        metadata["sources"][0]["tables"].append({
            "table": {"schema": "platform", "name": "projects"},
            "event_triggers": [{"name": "project_created", "definition": {"insert": {"columns": "*"}},
                                "retry_conf": {"num_retries": 0}, "webhook": "http://hooks.internal/p"}],
            "array_relationships": [{"name": "kept", "using": {"foreign_key_constraint_on": {
                "table": {"schema": "platform", "name": "tenant_domains"}, "column": "tenant_id"}}}],
            "select_permissions": [{"role": "old_role", "permission": {"columns": ["id"], "filter": {}}}],
        })
    fake.concurrent_write(add)
    before = copy.deepcopy(fake.tables()["platform.projects"])

    # tracking only: nothing of the table is declared, so nothing changes
    res = ok(run({"tables": [{"schema": "platform", "name": "projects"}]}))
    assert res["changed"] is False and fake.writes() == []

    res = ok(run({"tables": [{"schema": "platform", "name": "projects", "tenant_column": "tenant_id",
                              "tenant_roles": ["user"], "tenant_operations": ["select", "delete"]}]}, diff=True))
    assert res["changed"] is True
    after = fake.tables()["platform.projects"]
    assert after["event_triggers"] == before["event_triggers"]
    assert after["array_relationships"] == before["array_relationships"]
    assert [p["role"] for p in after["select_permissions"]] == ["user"]  # old_role's permission is removed
    assert res["diff"]["before"]["platform.projects"]["select_permissions"][0]["role"] == "old_role"


def test_absent_untracks_only_the_listed_tables(fake, run):
    untouched = others(fake)
    ok(run({"tables": platform_tables()}))
    res = ok(run({"state": "absent", "tables": [{"schema": "platform", "name": "projects"}]}, diff=True))
    assert res["changed"] is True
    assert res["tables"] == []
    assert list(res["diff"]["before"]) == ["platform.projects"] and res["diff"]["after"] == {}
    assert sorted(k for k in fake.tables() if k.startswith("platform.")) == ["platform.tenant_domains",
                                                                             "platform.tenants"]
    assert others(fake) == untouched
    res = ok(run({"state": "absent", "tables": [{"schema": "platform", "name": "projects"}]}))
    assert res["changed"] is False
    assert len(fake.writes()) == 2


def test_concurrent_change_is_merged_and_retried_once(fake, run):
    security_keys = {"table": {"schema": "auth", "name": "user_security_keys"},
                     "object_relationships": [{"name": "user", "using": {"foreign_key_constraint_on": "user_id"}}]}
    # auth starts and applies its own metadata between our export and our replace
    fake.before_write.append(lambda f: f.concurrent_write(
        lambda md: md["sources"][0]["tables"].append(copy.deepcopy(security_keys))))
    res = ok(run({"tables": platform_tables()}))
    assert res["changed"] is True and res["retried"] is True
    assert [w["status"] for w in fake.writes()] == [409, 200]
    assert fake.writes()[1]["body"]["resource_version"] == fake.writes()[0]["body"]["resource_version"] + 1
    stored = fake.tables()
    assert stored["auth.user_security_keys"] == security_keys  # the concurrent change survives
    assert "platform.projects" in stored
    res = ok(run({"tables": platform_tables()}))
    assert res["changed"] is False and len(fake.writes()) == 2


def test_persistent_conflict_fails_clearly(fake, run):
    def bump(f):
        f.concurrent_write(lambda md: md.setdefault("inherited_roles", []).append(
            {"role_name": "r%d" % f.resource_version, "role_set": ["user"]}))
    fake.before_write.extend([bump, bump])
    res = run({"tables": platform_tables()})
    assert res["failed"] is True
    assert "changed by someone else" in res["msg"] and "twice" in res["msg"] and "nothing was written" in res["msg"]
    assert "did not match current version" in res["msg"]
    assert [w["status"] for w in fake.writes()] == [409, 409]
    assert not [k for k in fake.tables() if k.startswith("platform.")]


def test_inconsistent_metadata_is_refused_and_listed(fake, run):
    del fake.db_tables[("platform", "projects")]
    version = fake.resource_version
    res = run({"tables": platform_tables()})
    assert res["failed"] is True
    assert "would be inconsistent; nothing was written" in res["msg"]
    assert 'no such table/view exists in source: "platform.projects"' in res["msg"]
    assert [o["name"] for o in res["inconsistent_objects"]] == ["table platform.projects in source default"]
    assert [w["status"] for w in fake.writes()] == [400]
    assert fake.resource_version == version
    assert not [k for k in fake.tables() if k.startswith("platform.")]


def test_permission_on_a_missing_column_is_refused(fake, run):
    tables = platform_tables()
    tables[2]["columns"].append("budget")
    res = run({"tables": tables})
    assert res["failed"] is True
    assert 'column "budget" does not exist' in res["msg"]
    kinds = {o["type"] for o in res["inconsistent_objects"]}
    assert kinds == {"select_permission", "insert_permission", "update_permission"}


def test_inconsistency_after_the_write_fails_with_the_list(fake, run):
    # the table disappears from the database right after the write
    fake.after_replace.append(lambda f: f.db_tables.pop(("platform", "tenant_domains")))
    res = run({"tables": platform_tables()})
    assert res["failed"] is True and res["changed"] is True
    assert "inconsistent metadata after this run (the metadata was written)" in res["msg"]
    names = sorted(o["name"] for o in res["inconsistent_objects"])
    assert names == ["array_relation domains in table platform.tenants in source default",
                     "table platform.tenant_domains in source default"]


BAD = [
    ({"tables": [{"name": "projects", "schema": "platform", "colums": ["id"]}]}, "colums"),
    ({"tables": [{"name": "projects", "schema": "platform", "tenant_roles": ["user"]}]},
     "tables[0] (platform.projects).tenant_column is required"),
    ({"tables": [{"name": "projects", "schema": "platform", "tenant_column": "tenant_id", "tenant_roles": ["user"]}]},
     "tables[0] (platform.projects).permissions.user.insert: columns are required"),
    ({"tables": [{"name": "p", "tenant_column": "tenant_id", "tenant_roles": ["user"], "columns": ["id", "tenant_id"],
                  "permissions": {"user": {"update": {"columns": ["name", "tenant_id"]}}}}]},
     "tables[0] (public.p).permissions.user.update.columns must list the columns explicitly and must not contain the "
     "tenant column tenant_id"),
    ({"tables": [{"name": "p", "tenant_column": "tenant_id", "tenant_roles": ["user"], "columns": ["id"],
                  "permissions": {"user": {"insert": {"columns": "*"}}}}]},
     "tables[0] (public.p).permissions.user.insert.columns must list the columns explicitly"),
    ({"tables": [{"name": "p", "tenant_column": "tenant_id", "tenant_roles": ["user"], "columns": ["id"],
                  "permissions": {"user": {"update": {"set": {"tenant_id": "x-hasura-user-id"}}}}}]},
     "tables[0] (public.p).permissions.user.update.set must not set the tenant column tenant_id"),
    ({"tables": [{"name": "p", "permissions": {"user": {"selekt": {}}}}]},
     "tables[0] (public.p).permissions.user.selekt: unknown operation"),
    ({"tables": [{"name": "p", "permissions": {"user": {"select": {"columns": ["id"], "filter": {}, "limits": 3}}}}]},
     "tables[0] (public.p).permissions.user.select: unknown key(s) limits"),
    ({"tables": [{"name": "p", "permissions": {"user": {"select": {"columns": ["id"]}}}}]},
     "tables[0] (public.p).permissions.user.select: missing filter"),
    ({"tables": [{"name": "p", "tenant_column": "t", "tenant_roles": ["admin"]}]},
     "tables[0] (public.p).tenant_roles: admin cannot"),
    ({"tables": [{"name": "p"}, {"name": "q"}, {"schema": "public", "name": "p"}]},
     "tables[2] (public.p) is listed twice"),
    ({"tables": [{"name": "p", "array_relationships": [{"name": "x", "column": "p_id"}]}]}, "table"),
    ({"tables": [{"name": "p", "array_relationships": [{"name": "x", "table": {"schema": "s"}, "column": "c"}]}]},
     "tables[0] (public.p).array_relationships[0].table must be a dict with schema and name"),
    ({"tables": [{"name": "p", "object_relationships": [{"name": "x", "column": "a"}],
                  "array_relationships": [{"name": "x", "table": "s.t", "column": "c"}]}]},
     "tables[0] (public.p).array_relationships[0].name: x is used twice"),
    ({"tenant_session_variable": "tenant_id", "tables": [{"name": "p"}]}, "tenant_session_variable must be"),
    ({"tables": [{"name": "p", "tenant_operations": ["select", "upsert"]}]}, "upsert"),
    ({"tables": [{"name": "p"}], "source_settings": {"isolation_level": "snapshot"}}, "isolation_level"),
]


@pytest.mark.parametrize("args,message", BAD, ids=range(len(BAD)))
def test_bad_input_fails_before_any_request(fake, run, args, message):
    res = run(args)
    assert res["failed"] is True
    assert message in res["msg"], res["msg"]
    assert fake.requests == []


def test_wrong_secret_unknown_source_and_unreachable(fake, run):
    res = run({"admin_secret": "wrong-secret", "tables": [{"name": "p"}]})
    assert res["failed"] is True
    assert "access-denied" in res["msg"] and "admin_secret" in res["msg"]
    assert "wrong-secret" not in json.dumps(res)

    res = run({"source": "analytics", "tables": [{"name": "p"}]})
    assert res["failed"] is True
    assert "source analytics is not in Hasura's metadata (sources: default)" in res["msg"]

    res = run({"endpoint": "http://127.0.0.1:1", "tables": [{"name": "p"}]})
    assert res["failed"] is True
    assert "cannot reach Hasura at http://127.0.0.1:1/v1/metadata" in res["msg"]
    assert fake.writes() == []


def test_endpoint_and_admin_secret_from_the_environment(fake, run, monkeypatch):
    monkeypatch.setenv("HASURA_GRAPHQL_ENDPOINT", fake.endpoint)
    monkeypatch.setenv("HASURA_GRAPHQL_ADMIN_SECRET", SECRET)
    res = ok(run({"tables": platform_tables()}, diff=True, connection=False))
    assert res["changed"] is True
    assert {r["admin_secret"] for r in fake.requests} == {SECRET}
    assert SECRET not in json.dumps(res)


def test_secret_never_in_verbose_output(fake):
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [{
        "name": "apply", "selfbase.platform.hasura_metadata": {
            "endpoint": fake.endpoint, "admin_secret": SECRET, "tables": platform_tables()}}]}]
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as fh:
        json.dump(play, fh)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_NOCOLOR="1",
               ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_LOCALHOST_WARNING="false")
    try:
        proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-vvv", "--diff",
                               "-i", "localhost,", "-c", "local", fh.name], capture_output=True, text=True, env=env,
                              check=False)
    finally:
        os.unlink(fh.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "changed=1" in proc.stdout
    assert fake.writes() and fake.requests[0]["admin_secret"] == SECRET
    assert SECRET not in proc.stdout + proc.stderr


# Fidelity of the fake to the pinned Hasura and nhost/auth ----------------------------


def test_refusal_without_internal_errors_names_the_setting(fake, run):
    """With HASURA_GRAPHQL_ADMIN_INTERNAL_ERRORS=false (and dev mode off) Hasura drops "internal" even for the
    admin: the module cannot list the objects, and says which setting brings them back."""
    fake.admin_internal_errors = False
    del fake.db_tables[("platform", "projects")]
    res = run({"tables": platform_tables()})
    assert res["failed"] is True and res["changed"] is False
    assert "gave no detail" in res["msg"] and "HASURA_GRAPHQL_ADMIN_INTERNAL_ERRORS=true" in res["msg"]
    assert [w["status"] for w in fake.writes()] == [400]
    assert not [k for k in fake.tables() if k.startswith("platform.")]


def test_missing_secret_runs_as_the_unauthorized_role(fake, run):
    """JWT mode with an unauthorized role: no admin secret means role public, which the metadata API refuses
    with 400 access-denied (not 401), and the module still points at admin_secret."""
    fake.jwt, fake.unauthorized_role = True, "public"
    res = run({"admin_secret": "", "tables": [{"name": "p"}]})
    assert res["failed"] is True
    assert "HTTP 400" in res["msg"] and "access-denied" in res["msg"] and "admin_secret" in res["msg"]
    assert [(r["status"], r["admin_secret"]) for r in fake.requests] == [(400, None)]


def test_inconsistency_is_found_before_a_stale_version(fake, run):
    """Hasura builds the new metadata before it compares resource_version: an inconsistent write that is also
    stale is refused as inconsistent (400), and the module does not retry it."""
    fake.before_write.append(lambda f: f.concurrent_write(lambda md: md.setdefault("inherited_roles", [])))
    del fake.db_tables[("platform", "projects")]
    res = run({"tables": platform_tables()})
    assert res["failed"] is True and res["retried"] is False
    assert "would be inconsistent; nothing was written" in res["msg"]
    assert [w["status"] for w in fake.writes()] == [400]


def test_seeded_auth_tables_are_those_auth_tracks(fake, run):
    """The fake starts with what auth's own requests build: its 13 tables, each with the 9 root fields auth names
    (select_by_pk "user", which auth's claims query reads), its relationships and no permission. The module keeps
    every one of them."""
    tables = {k: v for k, v in fake.tables().items() if k.startswith("auth.")}
    assert len(tables) == 13 and {"auth.user_security_keys", "auth.oauth2_clients", "auth.oauth2_auth_requests",
                                  "auth.oauth2_authorization_codes", "auth.oauth2_refresh_tokens"} <= set(tables)
    assert all(len(t["configuration"]["custom_root_fields"]) == 9 for t in tables.values())
    assert tables["auth.users"]["configuration"]["custom_root_fields"]["select_by_pk"] == "user"
    assert not [k for t in tables.values() for k in t if k.endswith("_permissions")]
    assert "securityKeys" in [r["name"] for r in tables["auth.users"]["array_relationships"]]
    before = others(fake)
    ok(run({"tables": platform_tables()}))
    assert others(fake) == before


def test_auth_restarting_keeps_the_platform_tables_and_the_tenant_relationship(fake, run):
    """On every start auth tracks its tables again: already-tracked, so it sets their customization and creates
    only the relationships a table lacks. The platform's tables and the tenant relationship survive it."""
    ok(run({"tables": platform_tables()}))
    fake.db_tables[("platform", "tenant_members")] = ["id", "tenant_id", "user_id"]
    assert fake.call({"type": "pg_track_table", "args": {
        "source": "default", "table": {"schema": "platform", "name": "tenant_members"}}})[0] == 200
    status = fake.call({"type": "pg_create_array_relationship", "args": {
        "source": "default", "table": {"schema": "auth", "name": "users"}, "name": "tenantMemberships",
        "using": {"manual_configuration": {"remote_table": {"schema": "platform", "name": "tenant_members"},
                                           "column_mapping": {"id": "user_id"}}}}})[0]
    assert status == 200
    before, calls = fake.export(), len(fake.requests)
    apply_auth_metadata(fake.call)
    kinds = [r["type"] for r in fake.requests[calls:]]
    assert kinds.count("pg_track_table") == 13 and kinds.count("pg_set_table_customization") == 13
    assert [r["body"]["args"]["name"] for r in fake.requests[calls:]
            if r["type"].startswith("pg_create_") and r["status"] == 200] == []
    assert fake.export() == before


# Functions: the operator actions, tracked as mutations for the operator role ------------------------------------

OPERATOR_READ = {"operator": {"select": {"columns": ["id", "slug", "name", "status", "plan_code"], "filter": {}}}}
SUSPEND = {"schema": "platform", "name": "operator_set_tenant_status", "exposed_as": "mutation", "roles": ["operator"]}


@pytest.fixture()
def fake_fn(fake):
    fake.db_functions = {("platform", "operator_set_tenant_status"): ("platform", "tenants"),
                         ("platform", "operator_change_plan"): ("platform", "tenants")}
    return fake


def functions(fake):
    return {"%s.%s" % (f["function"]["schema"], f["function"]["name"]): f
            for s in fake.export()["sources"] for f in s.get("functions", [])}


def operator_tables():
    tables = platform_tables()
    tables[0]["permissions"] = OPERATOR_READ
    return tables


def test_functions_are_tracked_with_their_roles_once(fake_fn, run):
    args = {"tables": operator_tables(), "functions": [SUSPEND]}
    res = ok(run(args, check=True, diff=True))
    assert res["changed"] is True and fake_fn.writes() == [] and functions(fake_fn) == {}
    assert res["diff"]["after"]["function platform.operator_set_tenant_status"] == res["functions"][0] == {
        "function": {"schema": "platform", "name": "operator_set_tenant_status"},
        "configuration": {"exposed_as": "mutation"}, "permissions": [{"role": "operator"}]}
    assert ok(run(args))["changed"] is True
    assert functions(fake_fn)["platform.operator_set_tenant_status"] == res["functions"][0]
    assert ok(run(args))["changed"] is False and len(fake_fn.writes()) == 1


def test_only_the_owned_parts_of_a_function_change(fake_fn, run):
    """A comment and a custom name set by someone else stay; roles: [] removes every permission."""
    ok(run({"tables": operator_tables(), "functions": [SUSPEND]}))

    def decorate(md):
        fn = md["sources"][0]["functions"][0]
        fn["comment"] = "suspend or resume"
        fn["configuration"]["custom_name"] = "setTenantStatus"
    fake_fn.concurrent_write(decorate)
    res = ok(run({"functions": [dict(SUSPEND, roles=[])]}))
    assert res["changed"] is True
    assert functions(fake_fn)["platform.operator_set_tenant_status"] == {
        "function": {"schema": "platform", "name": "operator_set_tenant_status"}, "comment": "suspend or resume",
        "configuration": {"exposed_as": "mutation", "custom_name": "setTenantStatus"}}
    assert ok(run({"functions": [{"schema": "platform", "name": "operator_set_tenant_status"}]}))["changed"] is False


def test_absent_untracks_only_the_listed_functions(fake_fn, run):
    change_plan = dict(SUSPEND, name="operator_change_plan")
    ok(run({"tables": operator_tables(), "functions": [SUSPEND, change_plan]}))
    res = ok(run({"state": "absent", "functions": [{"schema": "platform", "name": "operator_change_plan"}]}))
    assert res["changed"] is True and res["functions"] == []
    assert sorted(functions(fake_fn)) == ["platform.operator_set_tenant_status"]
    assert "platform.tenants" in fake_fn.tables()


@pytest.mark.parametrize("case", ["role without select", "function not in the database", "table not tracked"])
def test_an_inconsistent_function_is_refused_and_nothing_is_written(fake_fn, run, case):
    ok(run({"tables": platform_tables()}))
    writes = len(fake_fn.writes())
    fn = dict(SUSPEND)
    if case == "function not in the database":
        fn["name"] = "operator_missing"
    elif case == "table not tracked":
        fake_fn.db_functions[("platform", "operator_set_tenant_status")] = ("platform", "invoices")
    res = run({"functions": [fn]})
    reason = {"role without select": 'has select permission configured for role: "operator"',
              "function not in the database": "no such function exists",
              "table not tracked": 'return table "platform.invoices" is not tracked'}[case]
    assert res["failed"] is True and reason in res["msg"], res
    assert [w["status"] for w in fake_fn.writes()[writes:]] == [400] and functions(fake_fn) == {}


@pytest.mark.parametrize("fn,message", [
    (dict(SUSPEND, roles=["operator", "admin"]),
     "functions[0] (platform.operator_set_tenant_status).roles: admin cannot be given permissions"),
    (dict(SUSPEND, roles=["operator", "operator"]),
     "functions[0] (platform.operator_set_tenant_status).roles lists a value twice"),
])
def test_bad_function_input_fails_before_any_request(fake_fn, run, fn, message):
    res = run({"functions": [fn]})
    assert res["failed"] is True and message in res["msg"], res
    assert fake_fn.requests == []


def test_a_function_listed_twice_or_neither_option_is_refused(fake_fn, run):
    res = run({"functions": [SUSPEND, SUSPEND]})
    assert res["failed"] is True and "functions[1] (platform.operator_set_tenant_status) is listed twice" in res["msg"]
    res = run({})
    assert res["failed"] is True and "one of the following is required: tables, functions" in res["msg"], res
    assert fake_fn.requests == []


# RESTified endpoints: GraphQL operations in a query collection, served at /api/rest/<url> --------------------------

TENANT_BY_ID = {"name": "admin-tenant", "url": "admin/tenants/:id",
                "query": "query AdminTenant($id: uuid!) { platform_tenants_by_pk(id: $id) { id slug } }"}
STATUS = {"name": "admin-tenant-status", "url": "admin/tenants/:id/status", "methods": ["POST"],
          "query": "mutation S($id: uuid!, $status: String!) { platform_operator_set_tenant_status("
                   "args: {tenant_id: $id, status: $status}) { id status } }"}


def rest(fake):
    md = fake.export()
    queries = {q["name"]: q["query"] for c in md.get("query_collections", []) for q in c["definition"]["queries"]}
    return {e["name"]: (e["url"], e["methods"], queries.get(e["definition"]["query"]["query_name"]))
            for e in md.get("rest_endpoints", [])}


def test_rest_endpoints_are_kept_in_a_collection_once(fake_fn, run):
    args = {"tables": operator_tables(), "functions": [SUSPEND], "rest_endpoints": [TENANT_BY_ID, STATUS]}
    res = ok(run(args, check=True, diff=True))
    assert res["changed"] is True and fake_fn.writes() == [] and rest(fake_fn) == {}
    assert sorted(k for k in res["diff"]["after"] if k.startswith("rest ")) == ["rest admin-tenant",
                                                                                "rest admin-tenant-status"]
    ok(run(args))
    assert rest(fake_fn) == {"admin-tenant": ("admin/tenants/:id", ["GET"], TENANT_BY_ID["query"]),
                             "admin-tenant-status": ("admin/tenants/:id/status", ["POST"], STATUS["query"])}
    assert ok(run(args))["changed"] is False and len(fake_fn.writes()) == 1

    # another query in the same collection, and another endpoint, are someone else's
    def add_other(md):
        md["query_collections"][0]["definition"]["queries"].append({"name": "mine", "query": "query { x }"})
        md["rest_endpoints"].append({"name": "mine", "url": "mine", "methods": ["GET"], "definition": {
            "query": {"collection_name": "selfbase_rest", "query_name": "mine"}}})
    fake_fn.db_tables[("public", "x")] = None
    fake_fn.concurrent_write(lambda md: (md["sources"][0]["tables"].append({"table": {"schema": "public", "name": "x"}}),
                                         add_other(md)))
    changed = dict(STATUS, methods=["POST", "PUT"])
    assert ok(run({"rest_endpoints": [changed]}))["changed"] is True
    assert rest(fake_fn)["admin-tenant-status"][1] == ["POST", "PUT"] and "mine" in rest(fake_fn)
    ok(run({"state": "absent", "rest_endpoints": [{"name": "admin-tenant"}]}))
    assert sorted(rest(fake_fn)) == ["admin-tenant-status", "mine"]
    queries = [q["name"] for q in fake_fn.export()["query_collections"][0]["definition"]["queries"]]
    assert sorted(queries) == ["admin-tenant-status", "mine"]


@pytest.mark.parametrize("endpoint,reason", [
    (dict(TENANT_BY_ID, query="query ($id: uuid!) { platform_tenant_by_pk(id: $id) { id } }"),
     "field 'platform_tenant_by_pk' not found"),
    (dict(STATUS, url="admin/tenants/:id", methods=["GET", "POST"], query=TENANT_BY_ID["query"]),
     "conflicts with"),
])
def test_an_inconsistent_endpoint_is_refused_and_nothing_is_written(fake_fn, run, endpoint, reason):
    ok(run({"tables": operator_tables(), "functions": [SUSPEND]}))
    writes = len(fake_fn.writes())
    res = run({"rest_endpoints": [TENANT_BY_ID, endpoint] if reason == "conflicts with" else [endpoint]})
    assert res["failed"] is True and reason in res["msg"], res
    assert [w["status"] for w in fake_fn.writes()[writes:]] == [400] and rest(fake_fn) == {}


@pytest.mark.parametrize("endpoint,message", [
    (dict(TENANT_BY_ID, url="/admin/tenants/:id"), "rest_endpoints[0] (admin-tenant).url: segments"),
    (dict(TENANT_BY_ID, url="admin/tenants/:tenant"), "url: variable tenant is not a variable of the query"),
    (dict(STATUS, methods=["GET"]), "methods: a mutation is not served over GET"),
    (dict(TENANT_BY_ID, query=None), "rest_endpoints[0] (admin-tenant).query is required with state present"),
    (dict(TENANT_BY_ID, name="a b"), "name: letters, digits"),
])
def test_bad_endpoint_input_fails_before_any_request(fake_fn, run, endpoint, message):
    res = run({"rest_endpoints": [endpoint]})
    assert res["failed"] is True and message in res["msg"], res
    assert fake_fn.requests == []


# ---------------------------------------------------------------- actions (the billing service's sessions)

SESSION_FIELDS = [{"name": "id", "type": "String!"}, {"name": "url", "type": "String!"}]
CHECKOUT = {"name": "billingCheckout", "handler": "http://10.0.0.21:8095/billing/checkout",
            "arguments": [{"name": "plan", "type": "String"}, {"name": "success_url", "type": "String!"},
                          {"name": "cancel_url", "type": "String!"}],
            "output_type": "BillingSession", "output_fields": SESSION_FIELDS, "roles": ["user"],
            "forward_client_headers": True}
PORTAL = {"name": "billingPortal", "handler": "http://10.0.0.21:8095/billing/portal",
          "arguments": [{"name": "return_url", "type": "String!"}], "output_type": "BillingSession",
          "output_fields": SESSION_FIELDS, "roles": ["user"], "forward_client_headers": True}


def actions(fake):
    md = fake.export()
    objects = {o["name"]: o for o in (md.get("custom_types") or {}).get("objects", [])}
    return {a["name"]: (a["definition"]["handler"], [p["role"] for p in a.get("permissions", [])],
                        objects.get(a["definition"]["output_type"], {}).get("fields"))
            for a in md.get("actions", [])}


def test_actions_and_their_output_type_are_kept_once(fake, run):
    res = ok(run({"actions": [CHECKOUT, PORTAL]}, check=True, diff=True))
    assert res["changed"] is True and fake.writes() == [] and actions(fake) == {}
    assert sorted(res["diff"]["after"]) == ["action billingCheckout", "action billingPortal"]
    res = ok(run({"actions": [CHECKOUT, PORTAL]}))
    assert res["actions"][0]["action"]["definition"]["kind"] == "synchronous"
    assert actions(fake) == {"billingCheckout": (CHECKOUT["handler"], ["user"], SESSION_FIELDS),
                             "billingPortal": (PORTAL["handler"], ["user"], SESSION_FIELDS)}
    assert ok(run({"actions": [CHECKOUT, PORTAL]}))["changed"] is False and len(fake.writes()) == 1
    # another action and another type are someone else's; a changed handler is the only change
    fake.concurrent_write(lambda md: (md.setdefault("actions", []).append({
        "name": "mine", "definition": {"handler": "http://x/", "output_type": "Mine", "type": "query"}}),
        md.setdefault("custom_types", {}).setdefault("objects", []).append(
            {"name": "Mine", "fields": [{"name": "a", "type": "Int"}]})))
    moved = dict(PORTAL, handler="http://10.0.0.22:8095/billing/portal")
    assert ok(run({"actions": [moved]}))["changed"] is True
    assert actions(fake)["billingPortal"][0] == moved["handler"] and "mine" in actions(fake)
    ok(run({"state": "absent", "actions": [{"name": "billingCheckout"}]}))
    assert sorted(actions(fake)) == ["billingPortal", "mine"]


@pytest.mark.parametrize("change,reason", [
    ({"arguments": [{"name": "plan", "type": "Plan"}]}, 'the type: "Plan" is not defined in custom types'),
    ({"name": "platform_tenants"}, 'the root field "platform_tenants" already exists'),
    ({"output_fields": [{"name": "id", "type": "BillingSession"}]}, "ObjectFieldObjectBaseType"),
    ({"output_fields": [{"name": "id", "type": "Money"}]}, "ObjectFieldTypeDoesNotExist"),
])
def test_an_inconsistent_action_is_refused_and_nothing_is_written(fake, run, change, reason):
    ok(run({"tables": platform_tables()}))
    writes = len(fake.writes())
    res = run({"actions": [dict(CHECKOUT, **change)]})
    assert res["failed"] is True and reason in res["msg"], res
    assert [w["status"] for w in fake.writes()[writes:]] == [400] and actions(fake) == {}


@pytest.mark.parametrize("change,message", [
    ({"handler": None}, "actions[0] (billingCheckout).handler is required with state present"),
    ({"handler": "ftp://x"}, "handler: an http(s) URL"),
    ({"name": "billing-checkout"}, "name: a GraphQL name"),
    ({"arguments": [{"name": "plan", "type": "String"}, {"name": "plan", "type": "String"}]},
     "arguments[1].name: plan is listed twice"),
    ({"arguments": [{"name": "plan", "type": "[String"}]}, "arguments[0].type: a GraphQL type"),
    ({"output_fields": []}, "output_fields is required"),
])
def test_bad_action_input_fails_before_any_request(fake, run, change, message):
    res = run({"actions": [dict(CHECKOUT, **change)]})
    assert res["failed"] is True and message in res["msg"], res
    assert fake.requests == []


def test_two_actions_that_define_their_output_type_differently_are_refused(fake, run):
    res = run({"actions": [CHECKOUT, dict(PORTAL, output_fields=SESSION_FIELDS[:1])]})
    assert res["failed"] is True and "define the output type BillingSession differently" in res["msg"], res
    assert fake.requests == []


def test_a_handler_read_from_hasuras_environment_needs_the_variable(fake, run):
    templated = dict(PORTAL, handler="{{SELFBASE_BILLING_SESSIONS_URL}}portal")
    res = run({"actions": [templated]})
    assert res["failed"] is True and 'Environment variable "SELFBASE_BILLING_SESSIONS_URL" not set' in res["msg"]
    fake.env["SELFBASE_BILLING_SESSIONS_URL"] = "http://10.0.0.21:8095/billing/"
    assert ok(run({"actions": [templated]}))["changed"] is True
    assert actions(fake)["billingPortal"][0] == "{{SELFBASE_BILLING_SESSIONS_URL}}portal"
