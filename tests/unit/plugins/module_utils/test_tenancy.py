"""Tenant planning (module_utils/tenancy.py) with plain dicts: what a run would change, before any write."""

from __future__ import annotations

import datetime

import pytest

from ansible_collections.selfbase.platform.plugins.module_utils import tenancy
from ansible_collections.selfbase.platform.plugins.module_utils.errors import InputError

NOW = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)
CATALOG = dict(plans={"pro": True, "old": False}, metrics={"api_requests": "requests", "storage_bytes": "bytes"})


def spec(i=0, **entry):
    entry = tenancy.coerce(entry, tenancy.ENTRY_OPTIONS, "tenants[%d]" % i)
    return tenancy.normalise(entry, "tenants[%d]." % i, CATALOG)


def existing(slug, **kw):
    t = tenancy._new_tenant(slug, NOW - datetime.timedelta(days=1))
    t.update(id=slug, plan="pro")
    t.update(kw)
    return t


def state(*tenants, owners=None):
    return dict(tenants={t["slug"]: t for t in tenants}, owners=owners or {})


def kinds(changes):
    return [(c["slug"], c["kind"]) for c in changes]


def test_a_new_tenant_is_created_with_its_quotas():
    s = spec(slug="acme", plan="pro", quotas=[dict(metric="storage_bytes", limit="10GB")])
    [change] = tenancy.plan_changes([s], state(), CATALOG, NOW)
    assert change["kind"] == "created" and change["quotas_changed"]
    assert change["after"]["quotas"]["storage_bytes"]["limit"] == 10 * 10 ** 9


def test_an_unchanged_tenant_is_unchanged():
    assert kinds(tenancy.plan_changes([spec(slug="acme", plan="pro")], state(existing("acme")), CATALOG, NOW)) == [
        ("acme", "unchanged")]


def test_absent_is_a_soft_delete_and_purge_removes_it():
    changes = tenancy.plan_changes([spec(slug="acme", status="absent")], state(existing("acme")), CATALOG, NOW)
    assert kinds(changes) == [("acme", "deleted")] and changes[0]["after"]["deleted_at"] == NOW
    purged = tenancy.plan_changes([spec(slug="acme", status="absent")], state(existing("acme")), CATALOG, NOW,
                                  purge_deleted=True)
    assert kinds(purged) == [("acme", "purged")] and purged[0]["after"] is None


def test_exclusive_suspends_the_unlisted():
    changes = tenancy.plan_changes([spec(slug="aa")], state(existing("aa"), existing("bb")), CATALOG, NOW, exclusive=True)
    assert kinds(changes) == [("aa", "unchanged"), ("bb", "suspended")]


def test_a_trial_ends_after_its_days():
    [change] = tenancy.plan_changes([spec(slug="acme", status="trial", trial_days=14)], state(), CATALOG, NOW)
    assert change["after"]["trial_ends_at"] == NOW + datetime.timedelta(days=14)


def test_an_inactive_plan_is_refused():
    with pytest.raises(InputError, match=r"^tenants\[0\]\.plan: plan old is not active"):
        tenancy.plan_changes([spec(slug="acme", plan="old")], state(), CATALOG, NOW)


def test_a_domain_cannot_have_two_tenants_but_can_move_in_one_run():
    b = existing("bb", domains={"shop.example": dict(id=1, verified=True, primary=True)})
    taken = state(existing("aa"), b, owners={"shop.example": "bb"})
    with pytest.raises(InputError, match="domain shop.example already belongs to tenant bb"):
        tenancy.plan_changes([spec(slug="aa", domains=["shop.example"])], taken, CATALOG, NOW)
    moved = tenancy.plan_changes([spec(0, slug="bb", domains=[]), spec(1, slug="aa", domains=["shop.example"])],
                                 taken, CATALOG, NOW)
    assert kinds(moved) == [("bb", "updated"), ("aa", "updated")]


def test_settings_merge_unless_purged():
    t = existing("acme", settings={"a": 1})
    [merged] = tenancy.plan_changes([spec(slug="acme", settings={"b": 2})], state(t), CATALOG, NOW)
    [purged] = tenancy.plan_changes([spec(slug="acme", settings={"b": 2}, purge=True)], state(t), CATALOG, NOW)
    assert merged["after"]["settings"] == {"a": 1, "b": 2} and purged["after"]["settings"] == {"b": 2}


def test_entries_name_their_field():
    with pytest.raises(InputError, match=r"^tenants\[3\]\.quotas\[0\]\.limit"):
        spec(3, slug="acme", quotas=[dict(metric="api_requests", limit="10GB")])
