"""selfbase.platform.platform_operator against a real PostgreSQL server, with auth's role tables.

auth's tables are created here as nhost/auth creates them for roles (auth.roles, auth.users with default_role,
auth.user_roles with user_id and role; the columns the fake Hasura metadata tracks, from auth's own
internal/lib/hasura/metadata), owned by a login of their own, as the auth role's database objects are."""

from __future__ import annotations

import uuid

import pytest

OP = uuid.UUID("0b0b0b0b-0000-4000-8000-0000000000aa")

AUTH_TABLES = """
CREATE EXTENSION IF NOT EXISTS citext;
CREATE SCHEMA auth;
CREATE TABLE auth.roles (role text PRIMARY KEY);
INSERT INTO auth.roles VALUES ('user'), ('me');
CREATE TABLE auth.users (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email public.citext UNIQUE,
                         default_role text NOT NULL DEFAULT 'user' REFERENCES auth.roles (role));
CREATE TABLE auth.user_roles (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), created_at timestamptz NOT NULL
                              DEFAULT now(), user_id uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
                              role text NOT NULL REFERENCES auth.roles (role), UNIQUE (user_id, role));
-- who ran the last write: the module must write as this owner, never as its own (superuser) login
CREATE TABLE auth.writers (who text);
CREATE FUNCTION auth.note_writer() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN INSERT INTO auth.writers VALUES (current_user); RETURN COALESCE(NEW, OLD); END $$;
CREATE TRIGGER note_writer BEFORE INSERT OR DELETE ON auth.user_roles
  FOR EACH ROW EXECUTE FUNCTION auth.note_writer();
"""


@pytest.fixture()
def auth(schema):
    owner = f"auth_{uuid.uuid4().hex[:8]}"
    schema.execute(f'CREATE ROLE "{owner}" LOGIN')
    schema.execute(f'GRANT CREATE ON DATABASE "{schema.info.dbname}" TO "{owner}"')
    schema.execute("CREATE EXTENSION IF NOT EXISTS citext")
    schema.execute(f'SET ROLE "{owner}"')
    schema.execute(AUTH_TABLES.replace("CREATE EXTENSION IF NOT EXISTS citext;", ""))
    schema.execute("RESET ROLE")
    schema.execute("INSERT INTO auth.users (id, email) VALUES (%s, 'oncall@example.com')", (OP,))
    yield owner
    schema.execute(f'DROP OWNED BY "{owner}"')
    schema.execute(f'DROP ROLE "{owner}"')


def state(conn):
    listed = conn.execute("SELECT note FROM platform.operators WHERE user_id = %s", (OP,)).fetchone()
    role = conn.execute("SELECT 1 FROM auth.user_roles WHERE user_id = %s AND role = 'operator'", (OP,)).fetchone()
    return (listed["note"] if listed else None, role is not None)


@pytest.mark.through_playbook("platform_operator")
def test_an_operator_is_listed_and_given_the_role_once_with_check_mode_and_diff(schema, auth, run):
    res = run("platform_operator", {"user": "oncall@example.com", "note": "on call"}, check=True, diff=True)
    assert res["changed"] is True and state(schema) == (None, False)
    assert res["diff"]["before"] == {"user_id": str(OP), "listed": False, "note": None, "auth_role": False}
    predicted = res["operator"]
    res = run("platform_operator", {"user": "oncall@example.com", "note": "on call"})
    assert res["changed"] is True and res["operator"] == predicted == {
        "user_id": str(OP), "listed": True, "note": "on call", "auth_role": True}
    assert state(schema) == ("on call", True)
    assert run("platform_operator", {"user": str(OP)})["changed"] is False  # the note is kept when not given
    # auth's rows were written as auth's owner, not as the module's superuser login
    assert [r["who"] for r in schema.execute("SELECT who FROM auth.writers")] == [auth]
    audit = schema.execute("SELECT entity, entity_key, action FROM platform.audit_log WHERE entity = 'operator'")
    assert [tuple(r.values()) for r in audit] == [("operator", str(OP), "create")]


def test_absent_takes_the_listing_and_the_role_away(schema, auth, run):
    run("platform_operator", {"user": str(OP)})
    res = run("platform_operator", {"user": str(OP), "state": "absent"}, check=True)
    assert res["changed"] is True and state(schema) == ("", True)
    res = run("platform_operator", {"user": str(OP), "state": "absent"})
    assert res["changed"] is True and state(schema) == (None, False)
    assert run("platform_operator", {"user": str(OP), "state": "absent"})["changed"] is False
    assert schema.execute("SELECT 1 FROM auth.roles WHERE role = 'operator'").fetchone()  # other users may have it


def test_without_the_owners_role_the_superuser_ran_auths_trigger(schema, auth):
    """What the module avoids: the same insert from its superuser login runs auth's owner's code as superuser."""
    schema.execute("INSERT INTO auth.roles VALUES ('operator')")
    schema.execute("INSERT INTO auth.user_roles (user_id, role) VALUES (%s, 'operator')", (OP,))
    assert [r["who"] for r in schema.execute("SELECT who FROM auth.writers")] == ["postgres"]


@pytest.mark.parametrize("args,message", [
    ({"user": "not-a-uuid"}, "user: must be an auth user's id (a UUID) or email, got 'not-a-uuid'"),
    ({"user": "nobody@example.com"}, "user: no auth user with email nobody@example.com"),
    ({"user": str(uuid.UUID(int=7))}, "user: no auth user with id 00000000-0000-0000-0000-000000000007"),
    ({"user": str(OP), "note": "x" * 201}, "note"),
])
def test_bad_input_names_the_field_and_writes_nothing(schema, auth, run, args, message):
    res = run("platform_operator", args)
    assert res["failed"] is True and message in res["msg"], res
    assert state(schema) == (None, False)


def test_before_auth_has_its_tables_only_auth_role_false_works(schema, run):
    res = run("platform_operator", {"user": str(OP)})
    assert res["failed"] is True and res["msg"].startswith("auth_role: auth's tables (auth.user_roles) are not in "
                                                           "database"), res
    res = run("platform_operator", {"user": str(OP), "auth_role": False})
    assert res["changed"] is True and res["operator"] == {"user_id": str(OP), "listed": True, "note": ""}
    assert schema.execute("SELECT count(*) AS n FROM platform.operators").fetchone()["n"] == 1
