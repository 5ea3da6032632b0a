"""Hasura Actions planning (module_utils/hasura_actions.py): the metadata an action declares, and the merge that
owns only the listed actions and their output types."""

from __future__ import annotations

import pytest

from ansible_collections.selfbase.platform.plugins.module_utils import hasura_actions as ha
from ansible_collections.selfbase.platform.plugins.module_utils.errors import InputError

FIELDS = [{"name": "id", "type": "String!"}, {"name": "url", "type": "String!"}]


def spec(**kw):
    out = dict(name="billingPortal", type="mutation", handler="http://h/billing/portal",
               arguments=[{"name": "return_url", "type": "String!"}], output_type="BillingSession",
               output_fields=FIELDS, roles=["user", "user"], forward_client_headers=True, timeout=30, comment=None)
    out.update(kw)
    return out


def test_a_mutation_is_synchronous_and_a_query_has_no_kind():
    action = ha.desired_action(spec(), 0)["action"]
    assert action["definition"]["kind"] == "synchronous" and action["permissions"] == [{"role": "user"}]
    assert "kind" not in ha.desired_action(spec(type="query"), 0)["action"]["definition"]


@pytest.mark.parametrize("change, message", [
    (dict(handler="{{A B}}x"), "handler"), (dict(output_type="Billing Session"), "output_type"),
    (dict(arguments=[{"name": "x", "type": "String]"}]), "arguments[0].type"),
    (dict(output_fields=[{"name": "1x", "type": "Int"}]), "output_fields[0].name"),
])
def test_bad_specs_name_the_field(change, message):
    with pytest.raises(InputError, match=r"actions\[0\] \(billingPortal\)\.%s" % message.replace("[", r"\[").replace(
            "]", r"\]")):
        ha.desired_action(spec(**change), 0)


def test_the_merge_owns_only_its_actions_and_their_types():
    metadata = {"actions": [{"name": "mine", "definition": {"output_type": "Mine"}},
                            {"name": "billingPortal", "definition": {"handler": "old"}}],
                "custom_types": {"objects": [{"name": "Mine", "fields": []},
                                             {"name": "BillingSession", "fields": []}]}}
    wanted = {ha.ACTION_KEY + "billingPortal": ha.desired_action(spec(), 0)}
    ha.merge_actions(metadata, wanted, "present")
    assert [a["name"] for a in metadata["actions"]] == ["mine", "billingPortal"]
    assert metadata["custom_types"]["objects"] == [{"name": "Mine", "fields": []},
                                                   {"name": "BillingSession", "fields": FIELDS}]
    owned = ha.owned_actions(metadata, set(wanted))
    assert owned == {ha.ACTION_KEY + "billingPortal": dict(wanted[ha.ACTION_KEY + "billingPortal"])}
    ha.merge_actions(metadata, wanted, "absent")
    assert [a["name"] for a in metadata["actions"]] == ["mine"] and len(metadata["custom_types"]["objects"]) == 2


def test_two_actions_must_define_a_shared_type_alike():
    wanted = {ha.ACTION_KEY + "a": ha.desired_action(spec(name="a"), 0),
              ha.ACTION_KEY + "b": ha.desired_action(spec(name="b", output_fields=FIELDS[:1]), 1)}
    with pytest.raises(InputError, match="a and b define the output type BillingSession differently"):
        ha.check_types(wanted)
