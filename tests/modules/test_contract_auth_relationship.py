"""The auth role's tenant relationship step (roles/auth/tasks/relationship.yml) against the Hasura fake.

Contract tests: the Hasura and nhost/auth images cannot be pulled here, so the role's tasks run through
ansible-playbook on localhost against the fake, which starts with the metadata auth's own requests build."""

from __future__ import annotations

import pytest
from conftest import run_play
from fakes.hasura_fake import FakeHasura, empty_metadata, initial_metadata, table_command

SECRET = "auth-role-Admin-secret-9d2f"
MEMBERS = ("platform", "tenant_members")
RELATIONSHIP = {"type": "pg_create_array_relationship", "args": {
    "source": "default", "table": {"schema": "auth", "name": "users"}, "name": "tenantMemberships",
    "using": {"manual_configuration": {"remote_table": {"schema": "platform", "name": "tenant_members"},
                                       "column_mapping": {"id": "user_id"}}}}}


def auth_db():
    tables = {("auth", t["table"]["name"]): None for t in initial_metadata()["sources"][0]["tables"]}
    tables[MEMBERS] = ["id", "tenant_id", "user_id", "role", "created_at"]
    return tables


@pytest.fixture()
def fake():
    """Hasura once auth has started and hasura_metadata has tracked platform.tenant_members."""
    with FakeHasura(admin_secret=SECRET, db_tables=auth_db()) as f:
        assert f.call({"type": "pg_track_table", "args": {"table": {"schema": MEMBERS[0], "name": MEMBERS[1]}}})[0] == 200
        yield f


def run_step(fake):
    play = {"hosts": "localhost", "gather_facts": False, "tasks": [{
        "name": "the role's step", "ansible.builtin.include_role": {"name": "selfbase.platform.auth",
                                                                    "tasks_from": "relationship"},
        "vars": {"auth_hasura_endpoint": fake.endpoint, "_auth_secrets": {"admin_secret": SECRET}}}]}
    return {name.split(" : ", 1)[1]: result for name, result in run_play(play, named=True)[1:]}


def relationships(fake):
    return {r["name"]: r["using"] for r in fake.tables()["auth.users"].get("array_relationships", [])}


def creates(fake):
    return [r["status"] for r in fake.requests if r["type"] == "pg_create_array_relationship"]


def test_the_relationship_is_created_once_then_found(fake):
    results = run_step(fake)
    create = results["Create the tenant relationship the claims read"]
    assert create["changed"] is True and not create.get("failed")
    assert relationships(fake)["tenantMemberships"] == {"manual_configuration": {
        "remote_table": {"schema": "platform", "name": "tenant_members"}, "column_mapping": {"id": "user_id"}}}
    # auth's own relationships are untouched
    assert {"roles", "refreshTokens", "securityKeys", "userProviders"} <= set(relationships(fake))

    again = run_step(fake)
    assert again["Create the tenant relationship the claims read"].get("skipped") is True
    assert creates(fake) == [200]


def test_another_host_creating_it_first_is_not_an_error(fake):
    """Between the role's lookup and its request, another API host creates the relationship: Hasura answers
    400 already-exists, which the step takes as done, unchanged."""
    fake.before_write.append(lambda f: table_command(f.metadata, f.db_tables, RELATIONSHIP))
    results = run_step(fake)
    create = results["Create the tenant relationship the claims read"]
    assert not create.get("failed") and create["changed"] is False
    assert creates(fake) == [400]
    assert fake.requests[-1]["status"] == 400
    assert list(relationships(fake)).count("tenantMemberships") == 1


@pytest.mark.parametrize("state", ["members untracked", "fresh Hasura"])
def test_a_relationship_hasura_refuses_fails_the_step(state):
    """Hasura refuses the relationship while platform.tenant_members is untracked (hasura_metadata has not run), or
    while auth has not tracked auth.users (auth has not started): the step fails and nothing is stored."""
    metadata = initial_metadata() if state == "members untracked" else empty_metadata()
    with FakeHasura(admin_secret=SECRET, db_tables=auth_db(), metadata=metadata) as fake:
        before = fake.export()
        results = run_step(fake)
        assert results["Create the tenant relationship the claims read"].get("failed") is True
        assert creates(fake) == [400]
        assert fake.export() == before
