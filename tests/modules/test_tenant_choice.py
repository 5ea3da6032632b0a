"""Each user's chosen tenant (migration 0008), against a real PostgreSQL server.

auth builds a token's claims from one GraphQL query with Hasura's admin secret (a query: no hasura.user), and
evaluates the claim paths on the answer. tenant-id came from tenantMemberships[0], the first row of an unordered
read; it now comes from platform.tenant_choices, one row per user. These tests read what that query reads, as
Hasura's login, and switch the choice as a user's mutation does. Each defence has a counterpart that shows the
attack working without it."""

from __future__ import annotations

import json
import pathlib
import re
import uuid

import pytest

from test_isolation import A, B, tenants  # noqa: F401  pylint: disable=unused-import
from test_security import act_for, error, logins  # noqa: F401  pylint: disable=unused-import

MIGRATION = (pathlib.Path(__file__).resolve().parents[2] / "plugins/module_utils/migrations/v0008_tenant_choice.py")
U = uuid.UUID("cccccccc-0000-4000-8000-00000000000c")
V = uuid.UUID("dddddddd-0000-4000-8000-00000000000d")


def add_member(conn, tenant, user, role="member"):
    conn.execute("INSERT INTO platform.tenant_members (tenant_id, user_id, role) VALUES (%s, %s, %s)",
                 (tenant, user, role))


def claim(hasura, user):
    """What tenant-id (tenantChoice.tenant_id) reads: Hasura's login, in a query (no hasura.user)."""
    hasura.execute("SELECT set_config('hasura.user', '', false)")
    row = hasura.execute("SELECT tenant_id FROM platform.tenant_choices WHERE user_id = %s", (user,)).fetchone()
    return row["tenant_id"] if row else None


def old_claim(conn, user):
    """What tenantMemberships[0].tenant_id read: the first membership of an unordered read (a table scan)."""
    conn.execute("SET enable_indexscan = off")
    conn.execute("SET enable_bitmapscan = off")
    row = conn.execute("SELECT tenant_id FROM platform.tenant_members WHERE user_id = %s", (user,)).fetchone()
    return row["tenant_id"]


def as_user(hasura, user, tenant):
    """A user's mutation through Hasura: hasura.user carries their session variables."""
    hasura.execute("SELECT set_config('hasura.user', %s, false)", (json.dumps(
        {"x-hasura-role": "user", "x-hasura-user-id": str(user), "x-hasura-tenant-id": str(tenant)}),))


def switch(hasura, user, token_tenant, to, target=None):
    as_user(hasura, user, token_tenant)
    return hasura.execute("UPDATE platform.tenant_choices SET tenant_id = %s WHERE user_id = %s",
                          (to, target or user)).rowcount


@pytest.fixture()
def two_tenants(tenants, logins):  # noqa: F811
    """U is a member of A, then of B; V of A only."""
    add_member(tenants, A, U)
    add_member(tenants, B, U)
    add_member(tenants, A, V)
    return tenants


def test_a_user_in_two_tenants_keeps_the_chosen_tenant_until_they_switch(two_tenants, logins):
    hasura = logins("hasura")
    # the first membership is the choice; an unrelated change (a role) does not move it
    assert [claim(hasura, U) for attempt in range(3)] == [A, A, A]
    two_tenants.execute("UPDATE platform.tenant_members SET role = 'admin' WHERE tenant_id = %s AND user_id = %s",
                        (A, U))
    assert claim(hasura, U) == A
    # the user switches to B, in a mutation with a token for A: every token from then on carries B
    assert switch(hasura, U, A, B) == 1
    assert [claim(hasura, U) for attempt in range(3)] == [B, B, B]
    assert claim(hasura, V) == A
    # and back, still holding a token for A (the row is theirs whatever tenant their token carries)
    assert switch(hasura, U, B, A) == 1 and claim(hasura, U) == A


def test_without_the_choice_the_claim_followed_the_table_order(two_tenants):
    """tenantMemberships[0] is whichever row comes first: the same role change moves U's old claim to B."""
    assert old_claim(two_tenants, U) == A
    two_tenants.execute("UPDATE platform.tenant_members SET role = 'admin' WHERE tenant_id = %s AND user_id = %s",
                        (A, U))
    assert old_claim(two_tenants, U) == B


def test_a_user_without_a_membership_has_no_choice(two_tenants, logins):
    """No row: auth falls back to auth_jwt_custom_claims_defaults, a tenant that matches no row. When the chosen
    membership goes, the oldest remaining one is the choice; when the last goes, there is none."""
    hasura = logins("hasura")
    assert claim(hasura, uuid.uuid4()) is None
    assert switch(hasura, U, A, B) == 1
    two_tenants.execute("DELETE FROM platform.tenant_members WHERE tenant_id = %s AND user_id = %s", (B, U))
    assert claim(hasura, U) == A
    two_tenants.execute("DELETE FROM platform.tenant_members WHERE tenant_id = %s AND user_id = %s", (A, U))
    assert claim(hasura, U) is None
    # a control-plane login adds a membership: it is the choice at once
    control = logins("control")
    add_member(control, B, U)
    assert claim(hasura, U) == B


def test_a_user_cannot_choose_a_tenant_they_are_not_a_member_of(two_tenants, logins):
    hasura = logins("hasura")
    as_user(hasura, V, A)
    err = error(hasura, "UPDATE platform.tenant_choices SET tenant_id = %s WHERE user_id = %s", (B, V))
    assert err.sqlstate == "23503"  # foreign_key_violation
    assert claim(hasura, V) == A


def test_without_the_foreign_key_a_user_chose_a_tenant_they_are_not_in(two_tenants, logins):
    two_tenants.execute("ALTER TABLE platform.tenant_choices "
                        "DROP CONSTRAINT tenant_choices_tenant_id_user_id_fkey")
    hasura = logins("hasura")
    assert switch(hasura, V, A, B) == 1
    assert claim(hasura, V) == B  # V's tokens would carry B, whose rows V's requests then reach


def test_a_user_cannot_move_another_users_choice(two_tenants, logins):
    """V (token for A) targets U, who chose A: no row is theirs to change."""
    hasura = logins("hasura")
    assert switch(hasura, V, A, A, target=U) == 0
    assert switch(hasura, V, A, B, target=U) == 0
    assert claim(hasura, U) == A


def test_without_the_user_conditions_another_user_moved_the_choice(two_tenants, logins):
    """Without only_own_choice, a member of U's chosen tenant reaches U's row; with own_choice's condition gone
    too, they move it."""
    two_tenants.execute("DROP POLICY only_own_choice ON platform.tenant_choices")
    hasura = logins("hasura")
    assert switch(hasura, V, A, A, target=U) == 1
    two_tenants.execute("ALTER POLICY own_choice ON platform.tenant_choices USING (true) WITH CHECK (true)")
    assert switch(hasura, V, A, B, target=U) == 1
    assert claim(hasura, U) == B


def test_choices_change_only_in_a_users_mutation(two_tenants, logins):
    """Hasura's login outside a mutation (no hasura.user) reads but changes nothing, and no user may add or delete
    a choice."""
    hasura = logins("hasura")
    hasura.execute("SELECT set_config('hasura.user', '', false)")
    assert hasura.execute("UPDATE platform.tenant_choices SET tenant_id = %s WHERE user_id = %s",
                          (B, U)).rowcount == 0
    as_user(hasura, U, A)
    for sql, params in (("INSERT INTO platform.tenant_choices (user_id, tenant_id) VALUES (%s, %s)", (U, B)),
                        ("DELETE FROM platform.tenant_choices WHERE user_id = %s", (U,)),
                        ("UPDATE platform.tenant_choices SET user_id = %s WHERE user_id = %s", (V, U))):
        assert error(hasura, sql, params).sqlstate == "42501"
    assert claim(hasura, U) == A


@pytest.mark.parametrize("who", ["app", "monitor", "auth"])
def test_other_logins_cannot_read_or_write_choices(two_tenants, logins, who):
    conn = logins(who)
    act_for(conn, A)
    for sql, params in (("SELECT tenant_id FROM platform.tenant_choices", ()),
                        ("UPDATE platform.tenant_choices SET tenant_id = %s WHERE user_id = %s", (A, U)),
                        ("INSERT INTO platform.tenant_choices (user_id, tenant_id) VALUES (%s, %s)", (V, A))):
        assert error(conn, sql, params).sqlstate == "42501", (who, sql)


def test_the_app_gives_roles_but_does_not_move_members(two_tenants, logins):
    """selfbase_app may change a member's role in its tenant, and no longer a membership's user or tenant (which
    would carry a choice along)."""
    app = logins("app")
    act_for(app, A)
    assert app.execute("UPDATE platform.tenant_members SET role = 'admin' WHERE user_id = %s", (V,)).rowcount == 1
    for col, value in (("user_id", U), ("tenant_id", A)):
        assert error(app, f"UPDATE platform.tenant_members SET {col} = %s WHERE user_id = %s",
                     (value, V)).sqlstate == "42501"


def test_existing_members_get_their_oldest_membership_as_the_choice(two_tenants):
    """The migration's backfill, run on members of before 0008: every user with a membership gets their oldest."""
    two_tenants.execute("DELETE FROM platform.tenant_choices")
    two_tenants.execute(re.search(r"^SELECT platform.choose_oldest_tenant.*?;$", MIGRATION.read_text(), re.M).group(0))
    rows = two_tenants.execute("""
        SELECT m.user_id, (SELECT o.tenant_id FROM platform.tenant_members o WHERE o.user_id = m.user_id
                            ORDER BY o.created_at, o.id LIMIT 1) AS oldest, c.tenant_id AS chosen
          FROM (SELECT DISTINCT user_id FROM platform.tenant_members) m
          LEFT JOIN platform.tenant_choices c ON c.user_id = m.user_id""").fetchall()
    assert rows and all(r["chosen"] == r["oldest"] for r in rows)
