"""The auth role's tenant relationship step (roles/auth/tasks/relationship.yml) against the Hasura fake.

Contract tests: the Hasura and nhost/auth images cannot be pulled here, so the role's tasks run through
ansible-playbook on localhost against the fake, which starts with the metadata auth's own requests build."""

from __future__ import annotations

import pathlib

import pytest
import yaml
from conftest import Runner, run_play
from fakes.hasura_fake import FakeHasura, apply_auth_metadata, empty_metadata, initial_metadata, table_command

ROOT = pathlib.Path(__file__).resolve().parents[2]

SECRET = "auth-role-Admin-secret-9d2f"
MEMBERS = ("platform", "tenant_members")
CHOICES = ("platform", "tenant_choices")
CREATE = "Create the tenant relationships the claims read"
MEMBERSHIPS = {"manual_configuration": {"remote_table": {"schema": "platform", "name": "tenant_members"},
                                        "column_mapping": {"id": "user_id"}}}
CHOICE = {"manual_configuration": {"remote_table": {"schema": "platform", "name": "tenant_choices"},
                                   "column_mapping": {"id": "user_id"}}}
RELATIONSHIP = {"type": "pg_create_array_relationship", "args": {
    "source": "default", "table": {"schema": "auth", "name": "users"}, "name": "tenantMemberships",
    "using": MEMBERSHIPS}}


def auth_db():
    tables = {("auth", t["table"]["name"]): None for t in initial_metadata()["sources"][0]["tables"]}
    tables[MEMBERS] = ["id", "tenant_id", "user_id", "role", "created_at"]
    tables[CHOICES] = ["user_id", "tenant_id", "chosen_at"]
    return tables


def track(fake, *tables):
    for schema, name in tables:
        assert fake.call({"type": "pg_track_table", "args": {"table": {"schema": schema, "name": name}}})[0] == 200


@pytest.fixture()
def fake():
    """Hasura once auth has started and hasura_metadata has tracked the platform's tables."""
    with FakeHasura(admin_secret=SECRET, db_tables=auth_db()) as f:
        track(f, MEMBERS, CHOICES)
        yield f


def run_step(fake):
    play = {"hosts": "localhost", "gather_facts": False, "tasks": [{
        "name": "the role's step", "ansible.builtin.include_role": {"name": "selfbase.platform.auth",
                                                                    "tasks_from": "relationship"},
        "vars": {"auth_hasura_endpoint": fake.endpoint, "_auth_secrets": {"admin_secret": SECRET}}}]}
    return {name.split(" : ", 1)[1]: result for name, result in run_play(play, named=True)[1:]}


def relationships(fake, kind="array"):
    return {r["name"]: r["using"] for r in fake.tables()["auth.users"].get(kind + "_relationships", [])}


def creates(fake):
    return [(r["body"]["args"]["name"], r["status"]) for r in fake.requests if r["type"].startswith("pg_create_")]


def test_the_relationships_are_created_once_then_found(fake):
    create = run_step(fake)[CREATE]
    assert create["changed"] is True and not create.get("failed")
    assert relationships(fake)["tenantMemberships"] == MEMBERSHIPS
    assert relationships(fake, "object")["tenantChoice"] == CHOICE
    # auth's own relationships are untouched
    assert {"roles", "refreshTokens", "securityKeys", "userProviders"} <= set(relationships(fake))
    assert "defaultRoleByRole" in relationships(fake, "object")

    again = run_step(fake)[CREATE]
    assert again.get("skipped") is True and again["changed"] is False
    assert creates(fake) == [("tenantMemberships", 200), ("tenantChoice", 200)]


def test_only_the_missing_relationship_is_created(fake):
    """An upgrade from a version with tenantMemberships only: the choice is added, the memberships kept."""
    assert fake.call(RELATIONSHIP)[0] == 200
    run_step(fake)
    assert creates(fake) == [("tenantMemberships", 200), ("tenantChoice", 200)]
    assert relationships(fake, "object")["tenantChoice"] == CHOICE


def test_another_host_creating_it_first_is_not_an_error(fake):
    """Between the role's lookup and its request, another API host creates the memberships relationship: Hasura
    answers 400 already-exists, which the step takes as done, unchanged, and it goes on to the next."""
    fake.before_write.append(lambda f: table_command(f.metadata, f.db_tables, RELATIONSHIP))
    create = run_step(fake)[CREATE]
    assert not create.get("failed")
    assert [r["changed"] for r in create["results"]] == [False, True]
    assert creates(fake) == [("tenantMemberships", 400), ("tenantChoice", 200)]
    assert list(relationships(fake)).count("tenantMemberships") == 1


@pytest.mark.parametrize("state", ["platform tables untracked", "fresh Hasura"])
def test_a_relationship_hasura_refuses_fails_the_step(state):
    """Hasura refuses the relationships while the platform's tables are untracked (hasura_metadata has not run),
    or while auth has not tracked auth.users (auth has not started): the step fails and nothing is stored."""
    metadata = initial_metadata() if state == "platform tables untracked" else empty_metadata()
    with FakeHasura(admin_secret=SECRET, db_tables=auth_db(), metadata=metadata) as fake:
        before = fake.export()
        assert run_step(fake)[CREATE].get("failed") is True
        assert [status for name, status in creates(fake) if name] == [400, 400]
        assert fake.export() == before


def test_a_fresh_hasura_gets_the_claims_relationships_in_the_roles_order():
    """The order of a first converge: auth starts and tracks its tables, the hasura role applies its default tables
    with hasura_metadata, then the auth role creates the relationships. Users read and switch only their own
    choice."""
    defaults = yaml.safe_load((ROOT / "roles/hasura/defaults/main.yml").read_text())
    tables, functions = defaults["hasura_metadata_tables"], defaults["hasura_metadata_functions"]
    endpoints = defaults["hasura_rest_endpoints"]
    db = auth_db()
    db.update({("platform", t["name"]): None for t in tables})
    # the operator actions of migrations 0009 and 0016 return SETOF platform.tenants
    returns = {("platform", f["name"]): ("platform", "tenants") for f in functions}
    with FakeHasura(admin_secret=SECRET, db_tables=db, metadata=empty_metadata(), db_functions=returns) as fake:
        apply_auth_metadata(fake.call)
        res = Runner(None, None)("hasura_metadata", {"endpoint": fake.endpoint, "admin_secret": SECRET,
                                                     "tables": tables, "functions": functions,
                                                     "rest_endpoints": endpoints}, login=False)
        assert res.get("failed") is not True and res["changed"] is True, res
        # operators read every tenant's rows; users their own tenant and its usage, nothing of quotas, subscriptions
        # or invoices, and call none of the actions
        stored = fake.tables()
        for name in ("tenants", "tenant_quotas", "usage_rollups_daily", "subscriptions", "invoices",
                     "tenant_quota_status", "tenant_active_features"):
            readers = {p["role"]: p["permission"]["filter"] for p in stored["platform." + name]["select_permissions"]}
            assert readers.pop("operator") == {}, name
            assert readers == ({"user": {("id" if name == "tenants" else "tenant_id"): {"_eq": "X-Hasura-Tenant-Id"}}}
                               if name in ("tenants", "usage_rollups_daily", "tenant_quota_status",
                                           "tenant_active_features") else {}), name
        assert [f["permissions"] for s in fake.export()["sources"] for f in s["functions"]] == [
            [{"role": "operator"}]] * len(functions)
        # every endpoint's root fields are ones this metadata gives (the fake refuses others as inconsistent)
        assert sorted(e["url"] for e in fake.export()["rest_endpoints"]) == sorted(e["url"] for e in endpoints)
        assert run_step(fake)[CREATE]["changed"] is True
        assert relationships(fake, "object")["tenantChoice"] == CHOICE
        assert relationships(fake)["tenantMemberships"] == MEMBERSHIPS
        own = {"user_id": {"_eq": "X-Hasura-User-Id"}}
        choices = fake.tables()["platform.tenant_choices"]
        assert [(p["role"], p["permission"]["filter"]) for p in choices["select_permissions"]] == [("user", own)]
        assert [(p["role"], p["permission"]["columns"], p["permission"]["filter"], p["permission"]["check"])
                for p in choices["update_permissions"]] == [("user", ["tenant_id"], own, own)]
        assert "insert_permissions" not in choices and "delete_permissions" not in choices
