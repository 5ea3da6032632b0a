"""PgBouncer's password lookup (roles/postgresql/files/pgbouncer-auth.sql) on a real PostgreSQL server.

PgBouncer's own login may read the SCRAM verifier of an ordinary login through pgbouncer.user_lookup(),
never a superuser's, a replication or BYPASSRLS role's or an expired login's; every other login of the
platform is refused. Without the defence (EXECUTE left to PUBLIC), the application reads the verifier of
the control-plane login."""

from __future__ import annotations

import pathlib
import uuid

import psycopg
import pytest

from test_isolation import tenants  # noqa: F401  pylint: disable=unused-import
from test_security import ROLES, error, logins  # noqa: F401  pylint: disable=unused-import

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = (ROOT / "roles/postgresql/files/pgbouncer-auth.sql").read_text()
LOOKUP = "SELECT uname, phash FROM pgbouncer.user_lookup(%s)"


@pytest.fixture()
def bouncer(tenants, logins, pg_server, db):  # noqa: F811  pylint: disable=redefined-outer-name
    """The lookup installed as the role does, with PgBouncer's login under a name of this test's own (logins
    are cluster-wide and tests run in parallel); the platform logins get passwords, and one login of each
    kind the lookup must hide is created."""
    me = f"pgb_{uuid.uuid4().hex[:6]}"
    hidden = {kind: f"{kind}_{uuid.uuid4().hex[:6]}" for kind in ("superuser", "replication", "bypassrls", "expired")}
    tenants.execute(f'CREATE ROLE "{me}" LOGIN')
    tenants.execute(f'CREATE ROLE "{hidden["superuser"]}" LOGIN SUPERUSER PASSWORD \'pw-s\'')
    tenants.execute(f'CREATE ROLE "{hidden["replication"]}" LOGIN REPLICATION PASSWORD \'pw-r\'')
    tenants.execute(f'CREATE ROLE "{hidden["bypassrls"]}" LOGIN BYPASSRLS PASSWORD \'pw-b\'')
    tenants.execute(f'CREATE ROLE "{hidden["expired"]}" LOGIN PASSWORD \'pw-e\' VALID UNTIL \'2000-01-01\'')
    for name in logins.names.values():
        tenants.execute(f'ALTER ROLE "{name}" PASSWORD \'pw-{name}\'')
    tenants.execute(SCRIPT.replace("selfbase_pgbouncer", me))
    conn = pg_server.connect(db, user=me)
    yield conn, hidden
    conn.close()
    tenants.execute("DROP SCHEMA pgbouncer CASCADE")
    for name in [me, *hidden.values()]:
        tenants.execute(f'DROP ROLE "{name}"')


def test_pgbouncer_reads_an_ordinary_logins_verifier(bouncer, logins):  # noqa: F811
    conn = bouncer[0]
    name = logins.names["app"]
    row = conn.execute(LOOKUP, (name,)).fetchone()
    assert row["uname"] == name and row["phash"].startswith("SCRAM-SHA-256$")


@pytest.mark.parametrize("kind", ["superuser", "replication", "bypassrls", "expired"])
def test_pgbouncer_never_gets_a_privileged_or_expired_verifier(bouncer, kind):
    conn, hidden = bouncer
    assert conn.execute(LOOKUP, (hidden[kind],)).fetchall() == []


@pytest.mark.parametrize("who", sorted(ROLES))
def test_every_platform_login_is_refused(bouncer, logins, who):  # noqa: F811
    conn = logins(who)
    err = error(conn, LOOKUP, (logins.names["control"],))
    assert isinstance(err, psycopg.errors.InsufficientPrivilege)


def test_without_the_defence_the_application_reads_the_control_logins_verifier(bouncer, logins, tenants):  # noqa: F811
    tenants.execute("GRANT USAGE ON SCHEMA pgbouncer TO PUBLIC")
    tenants.execute("GRANT EXECUTE ON FUNCTION pgbouncer.user_lookup(text) TO PUBLIC")
    row = logins("app").execute(LOOKUP, (logins.names["control"],)).fetchone()
    assert row["phash"].startswith("SCRAM-SHA-256$")


def test_owner_definer_search_path_and_version(bouncer, tenants):  # noqa: F811
    row = tenants.execute(
        "SELECT pg_get_userbyid(proowner) AS owner, prosecdef, proconfig, obj_description(oid, 'pg_proc') AS version "
        "FROM pg_proc WHERE oid = 'pgbouncer.user_lookup(text)'::regprocedure").fetchone()
    assert row["owner"] == "postgres" and row["prosecdef"] is True
    assert row["proconfig"] == ["search_path=pg_catalog, pg_temp"]
    vars_file = (ROOT / "roles/postgresql/vars/main.yml").read_text()
    assert f"_postgresql_pgbouncer_lookup_version: {row['version']}" in vars_file


def test_the_script_can_run_again(bouncer, tenants):  # noqa: F811
    conn = bouncer[0]
    me = conn.info.user
    tenants.execute(SCRIPT.replace("selfbase_pgbouncer", me))
    assert conn.execute("SELECT count(*) AS n FROM pgbouncer.user_lookup('nobody')").fetchone()["n"] == 0
