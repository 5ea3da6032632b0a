"""Variables of the auth role, rendered as Ansible renders them: the README
example's endpoint, and email verification only where mail can be sent."""

from __future__ import annotations

import pathlib
import re

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

ROOT = pathlib.Path(__file__).parents[2]
AUTH = ROOT / "roles" / "auth"


def _example_play():
    text = (ROOT / "roles" / "hasura" / "README.md").read_text()
    block = re.search(r"```yaml\n(- hosts: api.*?)```", text, re.S).group(1)
    return yaml.safe_load(block)[0]


def _render(expr, given):
    """expr rendered with the auth role's defaults, vars and `given` (inventory) variables."""
    variables = yaml.safe_load((AUTH / "defaults" / "main.yml").read_text())
    variables.update(yaml.safe_load((AUTH / "vars" / "main.yml").read_text()))
    variables.update(given)
    # files Ansible loads are trusted templates; these are read here, so mark them
    variables = {k: trust_as_template(v) if isinstance(v, str) else v for k, v in variables.items()}
    return Templar(loader=DataLoader(), variables=variables).template(trust_as_template(expr))


def _preflight_condition(name):
    tasks = yaml.safe_load((AUTH / "tasks" / "preflight.yml").read_text())
    return next(t for t in tasks if t["name"] == name)["ansible.builtin.assert"]["that"]


def test_readme_example_binds_hasura_where_auth_looks():
    play = _example_play()
    variables = dict(play["vars"], private_ip="10.0.0.5")
    for entry in play["roles"]:
        if entry["role"] == "selfbase.platform.auth":
            variables.update(entry.get("vars", {}))
    assert _render("{{ auth_hasura_endpoint }}", variables) == "http://10.0.0.5:8080"
    assert _render("{{ _auth_email_verification }}", variables) is True


@pytest.mark.parametrize("given,expected", [
    ({}, "http://127.0.0.1:8080"),
    ({"hasura_bind_address": "fd00::5", "hasura_port": 8081}, "http://[fd00::5]:8081"),
])
def test_endpoint_default_follows_the_hasura_variables(given, expected):
    assert _render("{{ auth_hasura_endpoint }}", given) == expected


@pytest.mark.parametrize("given,expected", [
    ({}, False),
    ({"auth_smtp_host": "smtp.example.com"}, True),
    ({"auth_smtp_host": "smtp.example.com", "auth_email_verification_required": False}, False),
    ({"auth_email_verification_required": True}, True),
])
def test_email_verification_is_required_where_mail_can_be_sent(given, expected):
    assert _render("{{ _auth_email_verification }}", given) is expected


@pytest.mark.parametrize("given,passes", [
    ({}, True),
    ({"auth_email_verification_required": True}, False),
    ({"auth_email_verification_required": True, "auth_smtp_host": "smtp.example.com"}, True),
])
def test_preflight_refuses_verification_without_smtp(given, passes):
    that = _preflight_condition("Check that verified emails can be sent")
    assert all(_render("{{ %s }}" % cond, given) for cond in that) is passes


def _export(users_relationships, objects=()):
    users = {"table": {"schema": "auth", "name": "users"}}
    if users_relationships is not None:
        users["array_relationships"] = [{"name": n, "using": {}} for n in users_relationships]
    if objects:
        users["object_relationships"] = [{"name": n, "using": {}} for n in objects]
    return {"json": {"resource_version": 3, "metadata": {"version": 3, "sources": [
        {"name": "default", "kind": "postgres", "tables": [{"table": {"schema": "platform", "name": "tenants"}}, users]}]}}}


@pytest.mark.parametrize("relationships,objects,missing", [
    (None, (), ["tenantMemberships", "tenantChoice"]), ([], (), ["tenantMemberships", "tenantChoice"]),
    (["roles"], ["defaultRoleByRole"], ["tenantMemberships", "tenantChoice"]),
    (["roles", "tenantMemberships"], (), ["tenantChoice"]),
    (["roles", "tenantMemberships"], ["tenantChoice"], [])])
def test_auth_is_published_only_once_both_relationships_exist(relationships, objects, missing):
    """auth's port is published only when the metadata export has both relationships on auth.users; the step
    creates only those missing."""
    given = {"__auth_metadata": _export(relationships, objects)}
    assert [q["args"]["name"] for q in _render("{{ _auth_relationships_missing }}", given)] == missing
    assert _render("{{ _auth_relationship_present }}", given) is (not missing)
    tasks = yaml.safe_load((AUTH / "tasks" / "service.yml").read_text())
    names = [t["name"] for t in tasks]
    # the only published start before the relationships are created is the one that needs them present
    found = tasks[names.index("Note whether the relationship was found")]["ansible.builtin.set_fact"]
    assert found["__auth_relationship_found"] == "{{ ansible_check_mode or _auth_relationship_present }}"
    run = tasks[names.index("Run the auth container")]
    assert run["vars"]["container_service_published"] == "{{ __auth_relationship_found }}"
    block = tasks[names.index("Create the tenant relationship, then publish auth")]["block"]
    assert [t["name"] for t in block][-2:] == ["Create the tenant relationship", "Publish the auth container"]


@pytest.mark.parametrize("claims,passes", [
    ({"tenant-id": "tenantChoice.tenant_id", "tenant-ids": "tenantMemberships[].tenant_id"}, True),
    # the first membership of an unordered read: not the user's choice
    ({"tenant-id": "tenantMemberships[0].tenant_id"}, False),
    # a list, which Hasura cannot take as x-hasura-tenant-id
    ({"tenant-id": "tenantChoice[*].tenant_id"}, False),
    ({"tenant-id": "tenantChoice.tenant_id", "tenant-ids": "memberships[].tenant_id"}, False),
    ({"tenant-ids": "tenantMemberships[].tenant_id"}, False)])
def test_preflight_takes_the_tenant_id_from_the_choice(claims, passes):
    tasks = yaml.safe_load((AUTH / "tasks" / "preflight.yml").read_text())
    task = next(t for t in tasks if t["name"] == "Check that the tenant claims follow the tenant relationships")
    given = dict(task["vars"], auth_jwt_custom_claims=claims)
    assert all(_render("{{ %s }}" % cond, given) for cond in task["ansible.builtin.assert"]["that"]) is passes


@pytest.mark.parametrize("entry,passes", [
    ({"schema": "platform", "name": "projects", "tenant_column": "tenant_id"}, True),
    # one row per user, no tenant column: its permissions say who reads it
    ({"schema": "platform", "name": "tenant_choices",
      "permissions": {"user": {"select": {"columns": ["tenant_id"], "filter": {"user_id": {"_eq": "X-Hasura-User-Id"}}}}}},
     True),
    ({"schema": "platform", "name": "tenant_choices"}, False),
    ({"schema": "platform", "name": "tenant_choices", "tenant_column": "Tenant-Id", "permissions": {"user": {}}}, False),
])
def test_hasura_preflight_takes_a_table_without_tenant_column_only_with_permissions(entry, passes):
    tasks = yaml.safe_load((ROOT / "roles" / "hasura" / "tasks" / "preflight.yml").read_text())
    that = next(t for t in tasks if t["name"] == "Check the metadata tables")["ansible.builtin.assert"]["that"]
    assert all(_render("{{ %s }}" % cond, {"item": entry}) for cond in that) is passes


def test_the_hasura_roles_default_tables_pass_its_preflight():
    tasks = yaml.safe_load((ROOT / "roles" / "hasura" / "tasks" / "preflight.yml").read_text())
    that = next(t for t in tasks if t["name"] == "Check the metadata tables")["ansible.builtin.assert"]["that"]
    tables = yaml.safe_load((ROOT / "roles" / "hasura" / "defaults" / "main.yml").read_text())["hasura_metadata_tables"]
    assert "tenant_choices" in [t["name"] for t in tables]
    assert all(_render("{{ %s }}" % cond, {"item": t}) for t in tables for cond in that)
