"""Verify the API tier: the Docker engine, and what the hasura and auth roles
rendered and created, against the real hosts and the real PostgreSQL server.

The Hasura and nhost/auth images cannot be pulled here, so their containers
were not run (hasura_container_enabled and auth_container_enabled are false).
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources"))
from molecule_hosts import INVENTORY, docker_host as _host  # noqa: E402  pylint: disable=wrong-import-position

EPHEMERAL = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
SCENARIO = pathlib.Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
ROOT = pathlib.Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
SECRETS = EPHEMERAL / "secrets"
SMTP_PASSWORD = "molecule-Smtp-Pw-5c2e"
DOCKER_HOSTS = {"api-db": "20.10", "api-app": "26."}


APP = _host("api-app")
DB = _host("api-db")


def _secret(name):
    return (SECRETS / name).read_text().strip()


class _Env(dict):
    """The values are secrets: a failing assertion shows the names only."""

    def __repr__(self):
        return "<env %s>" % sorted(self)


def _env(path):
    out = _Env()
    for line in APP.file(path).content_string.splitlines():
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, line.split("=")[0]
            assert name not in out, name
            out[name] = value
    return out


@pytest.fixture(scope="module")
def hasura_env():
    return _env("/etc/selfbase/hasura/hasura.env")


@pytest.fixture(scope="module")
def auth_env():
    return _env("/etc/selfbase/auth/auth.env")


def _sql(query, db="selfbase"):
    """As postgres over the db host's local socket."""
    return DB.check_output("runuser -u postgres -- psql -d %s -v ON_ERROR_STOP=1 -XAtc %s", db, query)


def _as(url, query):
    """Log in over the network from the api host with a rendered URL (TLS, scram)."""
    return APP.run("psql %s -v ON_ERROR_STOP=1 -qXAtc %s", url, query)


# Docker engine ----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(DOCKER_HOSTS))
def test_docker_engine_answers(name):
    host = _host(name)
    assert host.package("docker.io").is_installed
    assert host.service("docker").is_enabled
    assert host.service("docker").is_running
    info = json.loads(host.check_output("docker info --format '{{json .}}'"))
    assert info["ServerVersion"].startswith(DOCKER_HOSTS[name])
    assert info["Driver"] == "vfs"
    assert info["LoggingDriver"] == "json-file"
    assert info["LiveRestoreEnabled"] is True
    assert info["RegistryConfig"]["Mirrors"] == ["https://mirror.selfbase.test/"]
    host.check_output("python3 -c 'import docker'")  # the SDK community.docker uses on the host


@pytest.mark.parametrize("name", sorted(DOCKER_HOSTS))
def test_daemon_json(name):
    host = _host(name)
    config = host.file("/etc/docker/daemon.json")
    assert config.user == "root" and config.mode == 0o644
    assert json.loads(config.content_string) == {
        "log-driver": "json-file",
        "log-opts": {"max-size": "10m", "max-file": "3"},
        "live-restore": True,
        "registry-mirrors": ["https://mirror.selfbase.test"],
        "storage-driver": "vfs",
    }


@pytest.mark.parametrize("name", sorted(DOCKER_HOSTS))
def test_daemon_json_validator_refuses_bad_files(name):
    host = _host(name)
    host.check_output("printf '{\"log-driver\": ' > /tmp/broken.json; printf '{\"no-such-key\": 1}' > /tmp/unknown.json")
    validator = "/usr/local/libexec/selfbase/docker-validate-daemon-json"
    assert host.run(f"{validator} /tmp/broken.json").rc != 0
    unknown = host.run(f"{validator} /tmp/unknown.json")
    if name == "api-app":  # Docker 26: dockerd --validate knows the keys
        assert unknown.rc != 0 and "no-such-key" in unknown.stderr
    else:  # Docker 20.10 has no --validate: JSON syntax only
        assert unknown.rc == 0


# Environment files ------------------------------------------------------------

@pytest.mark.parametrize("path", ["/etc/selfbase/hasura/hasura.env", "/etc/selfbase/auth/auth.env"])
def test_env_files_are_root_only(path):
    env_file = APP.file(path)
    assert env_file.user == "root" and env_file.group == "root"
    assert env_file.mode == 0o600


def test_hasura_env(hasura_env):
    jwt = json.loads(hasura_env["HASURA_GRAPHQL_JWT_SECRET"])
    assert jwt == {"type": "HS256", "key": _secret("hasura_jwt_key")}
    assert len(jwt["key"]) >= 32
    assert hasura_env["HASURA_GRAPHQL_ADMIN_SECRET"] == _secret("hasura_admin_secret")
    password = _secret("hasura_db_password")
    assert hasura_env["HASURA_GRAPHQL_DATABASE_URL"] == f"postgres://hasura:{password}@api-db:5432/selfbase?sslmode=require"
    assert hasura_env["HASURA_GRAPHQL_METADATA_DATABASE_URL"] == \
        f"postgres://hasura:{password}@api-db:5432/hasura_metadata?sslmode=require"
    # A direct connection: prepared statements stay on (only PgBouncer's transaction pooling needs them off).
    assert hasura_env["HASURA_GRAPHQL_USE_PREPARED_STATEMENTS"] == "true"
    assert {k: hasura_env[k] for k in ("HASURA_GRAPHQL_ENABLE_CONSOLE", "HASURA_GRAPHQL_DEV_MODE",
                                       "HASURA_GRAPHQL_ENABLE_TELEMETRY")} == \
        dict.fromkeys(("HASURA_GRAPHQL_ENABLE_CONSOLE", "HASURA_GRAPHQL_DEV_MODE", "HASURA_GRAPHQL_ENABLE_TELEMETRY"),
                      "false")
    # admin answers keep "internal": hasura_metadata names the objects of a refused write from it
    assert hasura_env["HASURA_GRAPHQL_ADMIN_INTERNAL_ERRORS"] == "true"
    # functions (the operator actions) are callable only by the roles their permissions list
    assert hasura_env["HASURA_GRAPHQL_INFER_FUNCTION_PERMISSIONS"] == "false"
    assert hasura_env["HASURA_GRAPHQL_UNAUTHORIZED_ROLE"] == "public"
    assert hasura_env["HASURA_GRAPHQL_ENABLED_APIS"] == "metadata,graphql"
    assert hasura_env["HASURA_GRAPHQL_CORS_DOMAIN"] == "https://*.selfbase.test"


def test_auth_env(auth_env, hasura_env):
    # One JWT secret and one admin secret, shared by Hasura and auth.
    assert auth_env["HASURA_GRAPHQL_JWT_SECRET"] == hasura_env["HASURA_GRAPHQL_JWT_SECRET"]
    assert auth_env["HASURA_GRAPHQL_ADMIN_SECRET"] == hasura_env["HASURA_GRAPHQL_ADMIN_SECRET"]
    assert re.fullmatch(r"[0-9a-f]{64}", auth_env["AUTH_ENCRYPTION_KEY"])
    assert auth_env["AUTH_ENCRYPTION_KEY"] == _secret("auth_encryption_key")
    password = _secret("auth_db_password")
    assert auth_env["POSTGRES_CONNECTION"] == f"postgres://auth:{password}@api-db:5432/selfbase?sslmode=require"
    assert auth_env["HASURA_GRAPHQL_GRAPHQL_URL"] == "http://hasura:8080/v1/graphql"
    assert json.loads(auth_env["AUTH_JWT_CUSTOM_CLAIMS"]) == {
        "tenant-id": "tenantChoice.tenant_id", "tenant-ids": "tenantMemberships[].tenant_id"}
    assert json.loads(auth_env["AUTH_JWT_CUSTOM_CLAIMS_DEFAULTS"]) == {"tenant-id": "00000000-0000-0000-0000-000000000000"}
    assert auth_env["AUTH_USER_DEFAULT_ROLE"] == "user"
    assert auth_env["AUTH_USER_DEFAULT_ALLOWED_ROLES"] == "user,me"
    assert auth_env["AUTH_SERVER_URL"] == "https://auth.selfbase.test"
    assert auth_env["AUTH_CLIENT_URL"] == "https://app.selfbase.test"
    assert {k: v for k, v in auth_env.items() if k.startswith("AUTH_SMTP_")} == {
        "AUTH_SMTP_HOST": "smtp.selfbase.test", "AUTH_SMTP_PORT": "587", "AUTH_SMTP_USER": "auth",
        "AUTH_SMTP_PASS": SMTP_PASSWORD, "AUTH_SMTP_SENDER": "auth@selfbase.test", "AUTH_SMTP_SECURE": "false",
        "AUTH_SMTP_AUTH_METHOD": "PLAIN"}


def test_auth_signup_is_hardened(auth_env):
    """auth's own defaults (services/auth/go/cmd/serve.go) are a 3-character minimum password, no rate limits and
    no breached-password check. The role's: 9 characters, HIBP, and every limit on, with auth's own values for the
    ones the inventory leaves out and Go durations for the intervals."""
    assert auth_env["AUTH_PASSWORD_MIN_LENGTH"] == "9"
    assert auth_env["AUTH_PASSWORD_HIBP_ENABLED"] == "true"
    assert {k: v for k, v in auth_env.items() if k.startswith("AUTH_RATE_LIMIT_")} == {
        "AUTH_RATE_LIMIT_ENABLE": "true",
        "AUTH_RATE_LIMIT_GLOBAL_BURST": "100", "AUTH_RATE_LIMIT_GLOBAL_INTERVAL": "60s",
        "AUTH_RATE_LIMIT_BRUTE_FORCE_BURST": "10", "AUTH_RATE_LIMIT_BRUTE_FORCE_INTERVAL": "300s",
        "AUTH_RATE_LIMIT_SIGNUPS_BURST": "5", "AUTH_RATE_LIMIT_SIGNUPS_INTERVAL": "600s",
        "AUTH_RATE_LIMIT_EMAIL_BURST": "10", "AUTH_RATE_LIMIT_EMAIL_INTERVAL": "3600s",
        "AUTH_RATE_LIMIT_SMS_BURST": "10", "AUTH_RATE_LIMIT_SMS_INTERVAL": "3600s"}


@pytest.mark.parametrize("role,name", [("hasura", "hasura.env"), ("auth", "auth.env")])
def test_env_validator_refuses_a_bad_file(role, name):
    """The validator the roles run before writing: a short JWT key is refused, naming the variable only."""
    env = APP.file(f"/etc/selfbase/{role}/{name}").content_string
    key = json.loads(re.search(r"^HASURA_GRAPHQL_JWT_SECRET=(.*)$", env, re.M).group(1))["key"]
    broken = env.replace(key, "short")
    APP.check_output("umask 077; printf '%%s' %s > /tmp/broken.env", broken)
    res = APP.run("python3 /usr/local/libexec/selfbase/selfbase_validate_env.py /tmp/broken.env --jwt HASURA_GRAPHQL_JWT_SECRET")
    APP.run("rm -f /tmp/broken.env")
    assert res.rc == 1
    assert "HASURA_GRAPHQL_JWT_SECRET: the key must have at least 32 characters" in res.stderr
    assert "short" not in res.stderr


# Container definitions ---------------------------------------------------------

def test_hasura_container_definition(hasura_env):
    spec = json.loads(APP.file("/etc/selfbase/hasura/container.json").content_string)
    assert spec == {
        "name": "hasura",
        "image": "hasura/graphql-engine:v2.48.9",
        "restart_policy": "unless-stopped",
        "env_file": "/etc/selfbase/hasura/hasura.env",
        "env_names": sorted(hasura_env),
        "published_ports": ["127.0.0.1:8080:8080"],
        "networks": [{"name": "selfbase", "aliases": ["hasura"]}],
        "healthcheck": {"test": ["CMD-SHELL", "curl -fsS http://localhost:8080/healthz || exit 1"],
                        "interval": "10s", "timeout": "5s", "retries": 6, "start_period": "30s"},
        "memory": "1g",
        "cpus": 1.0,
        "cap_drop": ["ALL"],
        "security_opts": ["no-new-privileges:true"],
    }


def test_auth_container_definition(auth_env):
    spec = json.loads(APP.file("/etc/selfbase/auth/container.json").content_string)
    assert spec == {
        "name": "auth",
        "image": "nhost/auth:0.49.0",
        "command": ["serve"],
        "restart_policy": "unless-stopped",
        "env_file": "/etc/selfbase/auth/auth.env",
        "env_names": sorted(auth_env),
        "published_ports": ["127.0.0.1:4000:4000"],
        "networks": [{"name": "selfbase", "aliases": ["auth"]}],
        "healthcheck": {"test": ["CMD", "wget", "--spider", "-q", "http://localhost:4000/healthz"],
                        "interval": "10s", "timeout": "5s", "retries": 6, "start_period": "20s"},
        "memory": "512m",
        "cpus": 0.5,
        "cap_drop": ["ALL"],
        "security_opts": ["no-new-privileges:true"],
    }


def test_no_secret_in_the_container_definitions():
    text = APP.file("/etc/selfbase/hasura/container.json").content_string + \
        APP.file("/etc/selfbase/auth/container.json").content_string
    for value in [_secret(p.name) for p in SECRETS.iterdir()] + [SMTP_PASSWORD]:
        assert value not in text


# Database objects, as PostgreSQL sees them -------------------------------------

@pytest.mark.parametrize("role", ["hasura", "auth"])
def test_login_roles_are_unprivileged(role):
    assert _sql(f"SELECT rolcanlogin, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolreplication "
                f"FROM pg_roles WHERE rolname = '{role}'") == "t|f|f|f|f|f"
    # SCRAM verifier, so the password was set by the role, hashed.
    assert _sql(f"SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = '{role}'") == "t"
    # Owns nothing in the platform schema.
    assert _sql(f"SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                f"WHERE n.nspname = 'platform' AND pg_get_userbyid(c.relowner) = '{role}'") == "0"


def test_hasura_memberships_and_ownership():
    assert _sql("SELECT string_agg(g.rolname, ',' ORDER BY g.rolname) FROM pg_auth_members m "
                "JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = 'hasura'") == \
        "nhost_hasura,selfbase_graphql"
    assert _sql("SELECT rolcanlogin, rolbypassrls FROM pg_roles WHERE rolname = 'selfbase_graphql'") == "f|f"
    assert _sql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'hasura_metadata'") == "hasura"
    assert _sql("SELECT string_agg(nspname || ':' || pg_get_userbyid(nspowner), ',' ORDER BY nspname) FROM pg_namespace "
                "WHERE nspname IN ('auth', 'hdb_catalog')") == "auth:auth,hdb_catalog:hasura"
    assert _sql("SELECT string_agg(extname || ':' || extnamespace::regnamespace, ',' ORDER BY extname) FROM pg_extension "
                "WHERE extname IN ('citext', 'pgcrypto')") == "citext:public,pgcrypto:public"


@pytest.mark.parametrize("role", ["hasura", "auth"])
def test_login_roles_have_session_limits(role):
    assert _sql(f"SELECT array_to_string(s.setconfig, ',') FROM pg_db_role_setting s "
                f"JOIN pg_roles r ON r.oid = s.setrole JOIN pg_database d ON d.oid = s.setdatabase "
                f"WHERE r.rolname = '{role}' AND d.datname = 'selfbase'") == \
        "statement_timeout=30s,lock_timeout=5s,idle_in_transaction_session_timeout=1min"


def test_hasura_cannot_read_secrets_of_tenants(hasura_env):
    res = _as(hasura_env["HASURA_GRAPHQL_DATABASE_URL"], "SELECT stripe_customer_id FROM platform.tenants")
    assert res.rc != 0 and "permission denied for table tenants" in res.stderr, res.stderr
    res = _as(hasura_env["HASURA_GRAPHQL_DATABASE_URL"], "SHOW statement_timeout")
    assert res.stdout.split() == ["30s"], res.stdout


def test_graphql_read_policies():
    rows = _sql("SELECT tablename, cmd, array_to_string(roles, ',') FROM pg_policies "
                "WHERE schemaname = 'platform' AND policyname = 'graphql_read' ORDER BY tablename")
    assert rows.splitlines() == [f"{t}|SELECT|selfbase_graphql" for t in
                                 ("invoices", "projects", "subscriptions", "tenant_choices", "tenant_domains",
                                  "tenant_entitlements", "tenant_invitations", "tenant_members", "tenant_quotas",
                                  "tenants", "usage_rollups_daily")]


def test_graphql_role_reads_the_tracked_columns_of_an_extra_table(hasura_env):
    url = hasura_env["HASURA_GRAPHQL_DATABASE_URL"]
    res = _as(url, "SELECT count(*) >= 0 FROM (SELECT id, tenant_id, email, role, expires_at "
                   "FROM platform.tenant_invitations) i")
    assert res.rc == 0 and res.stdout.split() == ["t"], res.stderr
    res = _as(url, "SELECT token_hash FROM platform.tenant_invitations")
    assert res.rc != 0 and "permission denied for table tenant_invitations" in res.stderr, res.stderr


# Logging in with the rendered URLs, from the api host over TLS ------------------

def test_hasura_reads_every_tenant_outside_mutations(hasura_env):
    res = _as(hasura_env["HASURA_GRAPHQL_DATABASE_URL"],
              "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid(); "
              "SELECT count(*) FROM platform.tenants WHERE slug IN ('acme', 'globex')")
    assert res.rc == 0, res.stderr
    assert res.stdout.split() == ["t", "2"]


def test_only_a_listed_operator_acts_through_hasuras_login(hasura_env):
    """The operator actions (migrations 0009 and 0016), called as Hasura runs a tracked mutation, over TLS from the
    api host: a tenant's user is refused, a listed operator suspends a tenant and creates one (rolled back)."""
    acme = _sql("SELECT id FROM platform.tenants WHERE slug = 'acme'")
    operator = "0b0b0b0b-0000-4000-8000-0000000000aa"
    session = '{"x-hasura-role":"%s","x-hasura-user-id":"%s"}'
    create = "SELECT slug FROM platform.operator_create_tenant('api-probe', 'Probe')"
    call = f"SELECT status FROM platform.operator_set_tenant_status('{acme}', 'suspended'); {create}"
    url = hasura_env["HASURA_GRAPHQL_DATABASE_URL"]
    for one in (call, create):
        res = _as(url, f"BEGIN; SELECT set_config('hasura.user', '{session % ('user', operator)}', true) <> ''; "
                       f"{one}; ROLLBACK;")
        assert res.rc != 0 and "only an operator may do this" in res.stderr, res.stderr
    _sql(f"INSERT INTO platform.operators (user_id) VALUES ('{operator}')")
    try:
        res = _as(url, f"BEGIN; SELECT set_config('hasura.user', '{session % ('operator', operator)}', true) <> ''; "
                       f"{call}; ROLLBACK;")
    finally:
        _sql(f"DELETE FROM platform.operators WHERE user_id = '{operator}'")
    assert res.rc == 0, res.stderr
    assert res.stdout.split() == ["t", "suspended", "api-probe"]  # Hasura's login cannot read the audit log
    assert _sql(f"SELECT status FROM platform.tenants WHERE id = '{acme}'") == "active"
    assert _sql("SELECT count(*) FROM platform.tenants WHERE slug = 'api-probe'") == "0"


def test_hasura_mutations_are_walled_by_rls(hasura_env):
    """In a mutation Hasura sets hasura.user: then only the session's tenant is visible or writable."""
    acme = _sql("SELECT id FROM platform.tenants WHERE slug = 'acme'")
    res = _as(hasura_env["HASURA_GRAPHQL_DATABASE_URL"],
              "BEGIN; "
              f"SELECT set_config('hasura.user', '{{\"x-hasura-role\":\"user\",\"x-hasura-tenant-id\":\"{acme}\"}}', true) <> ''; "
              "SELECT count(*) FROM platform.projects; "
              "WITH u AS (UPDATE platform.projects SET name = name WHERE tenant_id <> platform.current_tenant_id() RETURNING 1) "
              "SELECT count(*) FROM u; "
              "WITH u AS (UPDATE platform.projects SET name = name RETURNING 1) SELECT count(*) FROM u; "
              "ROLLBACK;")
    assert res.rc == 0, res.stderr
    assert res.stdout.split() == ["t", "1", "0", "1"]


def test_hasura_cannot_change_the_platform_schema(hasura_env):
    res = _as(hasura_env["HASURA_GRAPHQL_DATABASE_URL"], "CREATE TABLE platform.intruder (id int)")
    assert res.rc != 0 and "permission denied for schema platform" in res.stderr
    res = _as(hasura_env["HASURA_GRAPHQL_DATABASE_URL"], "DELETE FROM platform.tenants")
    assert res.rc != 0 and "permission denied for table tenants" in res.stderr


def test_hasura_owns_its_metadata_database(hasura_env):
    res = _as(hasura_env["HASURA_GRAPHQL_METADATA_DATABASE_URL"],
              "CREATE SCHEMA probe; CREATE TABLE probe.t (id int); DROP SCHEMA probe CASCADE; SELECT current_database()")
    assert res.rc == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "hasura_metadata"


def test_auth_owns_its_schema_and_hasura_reads_its_tables(auth_env, hasura_env):
    auth_url, hasura_url = auth_env["POSTGRES_CONNECTION"], hasura_env["HASURA_GRAPHQL_DATABASE_URL"]
    res = _as(auth_url, "CREATE TABLE auth.probe (id int); INSERT INTO auth.probe VALUES (1)")
    assert res.rc == 0, res.stderr
    try:
        # Default privileges: a table auth creates is readable by Hasura, not writable.
        read = _as(hasura_url, "SELECT count(*) FROM auth.probe")
        assert read.rc == 0 and read.stdout.strip() == "1", read.stderr
        write = _as(hasura_url, "DELETE FROM auth.probe")
        assert write.rc != 0 and "permission denied" in write.stderr
    finally:
        assert _as(auth_url, "DROP TABLE auth.probe").rc == 0
    # auth sees nothing of the platform schema.
    res = _as(auth_url, "SELECT count(*) FROM platform.tenants")
    assert res.rc != 0 and "permission denied" in res.stderr


def test_auth_migrations_can_grant_to_the_nhost_roles(auth_env, hasura_env):
    """What nhost/auth 0.49's migrations 00020 and 00021 do as auth's login: create
    tables and a pgcrypto function in the auth schema, then grant to nhost_auth_admin
    and nhost_hasura. Without those roles the GRANT fails and auth never starts."""
    auth_url, hasura_url = auth_env["POSTGRES_CONNECTION"], hasura_env["HASURA_GRAPHQL_DATABASE_URL"]
    assert _sql("SELECT string_agg(rolname || ':' || rolcanlogin, ',' ORDER BY rolname) FROM pg_roles "
                "WHERE rolname IN ('nhost_auth_admin', 'nhost_hasura')") == "nhost_auth_admin:false,nhost_hasura:false"
    res = _as(auth_url, """
        CREATE TABLE auth.probe_clients (id uuid DEFAULT gen_random_uuid() PRIMARY KEY, secret_hash text);
        INSERT INTO auth.probe_clients (secret_hash) VALUES (crypt('s3cret', gen_salt('bf')));
        CREATE FUNCTION auth.probe_create(secret text) RETURNS text LANGUAGE sql AS
          $$ SELECT crypt(secret, gen_salt('bf')) $$;
        GRANT ALL ON auth.probe_clients TO nhost_auth_admin;
        GRANT SELECT, DELETE ON auth.probe_clients TO nhost_hasura;
        GRANT EXECUTE ON FUNCTION auth.probe_create TO nhost_hasura;""")
    try:
        assert res.rc == 0, res.stderr
        # Hasura gets the grants through nhost_hasura: it runs the function and deletes.
        res = _as(hasura_url, "SELECT length(auth.probe_create('s3cret')); DELETE FROM auth.probe_clients RETURNING 1")
        assert res.rc == 0 and res.stdout.split() == ["60", "1"], res.stderr
    finally:
        _as(auth_url, "DROP FUNCTION IF EXISTS auth.probe_create; DROP TABLE IF EXISTS auth.probe_clients")


def test_auth_migrations_run_without_the_request_timeouts(auth_env):
    """auth's migrations get a connection of their own (POSTGRES_MIGRATIONS_CONNECTION): the same login and
    database, without its statement and lock timeouts, so a long migration is not cancelled half-way and the
    version left dirty. The login's own sessions keep every limit."""
    show = "SHOW statement_timeout; SHOW lock_timeout; SHOW idle_in_transaction_session_timeout"
    serving = _as(auth_env["POSTGRES_CONNECTION"], show)
    assert serving.rc == 0 and serving.stdout.split() == ["30s", "5s", "1min"], serving.stderr
    migrations = _as(auth_env["POSTGRES_MIGRATIONS_CONNECTION"], show + "; SELECT current_user")
    assert migrations.rc == 0 and migrations.stdout.split() == ["0", "0", "1min", "auth"], migrations.stderr
    assert auth_env["POSTGRES_MIGRATIONS_CONNECTION"].startswith(auth_env["POSTGRES_CONNECTION"] + "&")


# Secrets never reach the output --------------------------------------------------

def test_no_secret_in_a_verbose_converge():
    """converge.yml again with -vvv and --diff: no generated secret (or the SMTP password) appears, nothing changes."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".cache" / "collections"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="false", ANSIBLE_PIPELINING="true", ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default")
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", INVENTORY, "-vvv", "--diff",
           "--limit", "api", str(SCENARIO / "converge.yml")]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    output = out.stdout + out.stderr
    assert out.returncode == 0, output[-3000:]
    assert "TASK [selfbase.platform.hasura : Create the login roles of Hasura and auth]" in output
    assert re.search(r"api-app\s*: ok=\d+\s+changed=0\s+unreachable=0\s+failed=0", output), output[-2000:]
    secrets = {p.name: _secret(p.name) for p in SECRETS.iterdir()}
    assert set(secrets) == {"hasura_admin_secret", "hasura_jwt_key", "hasura_db_password", "auth_db_password",
                            "auth_encryption_key"}
    secrets["smtp_password"] = SMTP_PASSWORD
    leaked = sorted(name for name, value in secrets.items() if value in output)
    assert leaked == []
