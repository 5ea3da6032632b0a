"""Hasura table planning (module_utils/hasura_tables.py): tenant permissions, canonical form, merge."""

from __future__ import annotations

import pytest

from ansible_collections.selfbase.platform.plugins.module_utils import hasura_tables as ht
from ansible_collections.selfbase.platform.plugins.module_utils.errors import InputError

VAR = "X-Hasura-Tenant-Id"


def table(**kw):
    spec = dict(schema="platform", name="projects", tenant_column="tenant_id", tenant_roles=["user"],
                tenant_operations=list(ht.OPS), columns=["id", "name", "tenant_id"], configuration=None,
                object_relationships=None, array_relationships=None, permissions=None)
    spec.update(kw)
    return spec


def params(*tables, state="present"):
    return dict(tables=list(tables), state=state, tenant_session_variable=VAR)


def test_tenant_roles_get_a_tenant_filter_and_a_preset_on_insert():
    entry = ht.wanted_tables(params(table()))["platform.projects"]
    condition = {"tenant_id": {"_eq": VAR}}
    select = dict(columns=["id", "name", "tenant_id"], filter=condition)
    assert entry["select_permissions"] == [dict(role="user", permission=select)]
    insert = entry["insert_permissions"][0]["permission"]
    assert insert == dict(columns=["id", "name"], check=condition, set={"tenant_id": VAR})
    assert entry["delete_permissions"] == [dict(role="user", permission=dict(filter=condition))]


def test_an_explicit_filter_is_anded_with_the_tenant_filter():
    mine = {"owner": {"_eq": "X-Hasura-User-Id"}}
    entry = ht.wanted_tables(params(table(permissions={"user": {"select": {"filter": mine}}})))["platform.projects"]
    assert entry["select_permissions"][0]["permission"]["filter"] == {"_and": [{"tenant_id": {"_eq": VAR}}, mine]}


@pytest.mark.parametrize("kw, field", [
    (dict(permissions={"user": {"insert": {"set": {"tenant_id": "x"}}}}), "insert.set"),
    (dict(permissions={"user": {"update": {"columns": ["tenant_id"]}}}), "update.columns"),
    (dict(tenant_roles=["admin"]), "tenant_roles"),
    (dict(tenant_column=None), "tenant_column"),
    (dict(permissions={"user": {"select": {"colums": "*"}}}), "select: unknown key"),
])
def test_tenant_escapes_are_refused(kw, field):
    with pytest.raises(InputError, match=r"tables\[0\] \(platform.projects\)"):
        try:
            ht.wanted_tables(params(table(**kw)))
        except InputError as e:
            assert field in str(e)
            raise


def test_a_table_listed_twice_is_refused():
    with pytest.raises(InputError, match="listed twice"):
        ht.wanted_tables(params(table(), table()))


def test_the_canonical_form_ignores_what_hasura_drops_or_reorders():
    exported = dict(table=dict(schema="platform", name="projects"),
                    configuration=dict(custom_column_names={"name": "title"}, column_config={}),
                    select_permissions=[dict(role="user", permission=dict(columns=["name", "id"], filter={},
                                                                          allow_aggregations=False))])
    sent = dict(table="platform.projects", configuration=dict(column_config={"name": {"custom_name": "title"}}),
                select_permissions=[dict(role="user", permission=dict(columns=["id", "name"], filter={}))],
                insert_permissions=[])
    assert ht.normalise_table(exported) == ht.normalise_table(sent)


def test_merge_touches_only_the_owned_tables():
    other = dict(table=dict(schema="public", name="notes"), select_permissions=[dict(role="x", permission={})])
    projects = dict(table=dict(schema="platform", name="projects"))
    metadata = dict(version=3, sources=[dict(name="default", tables=[other, projects])])
    wanted = ht.wanted_tables(params(table()))
    merged = ht.merge(metadata, "default", dict(wanted), "present")
    assert merged["sources"][0]["tables"][0] == other
    assert merged["sources"][0]["tables"][1]["select_permissions"] == wanted["platform.projects"]["select_permissions"]
    assert metadata["sources"][0]["tables"][1] == dict(table=dict(schema="platform", name="projects"))  # a copy
    gone = ht.merge(metadata, "default", dict(ht.wanted_tables(params(table(), state="absent"))), "absent")
    assert gone["sources"][0]["tables"] == [other]


def test_a_missing_source_is_named():
    with pytest.raises(ht.HasuraError, match="source default is not in Hasura's metadata"):
        ht.owned_tables(dict(sources=[dict(name="other")]), "default", {})
