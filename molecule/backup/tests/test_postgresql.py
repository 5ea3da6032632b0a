"""Verify the postgresql role on real systemd hosts, over the real network: the
backup scenario's db hosts, with bk-repo-bookworm as the network client."""

import os
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources"))
from molecule_hosts import ansible_host as _host  # noqa: E402  pylint: disable=wrong-import-position

testinfra_hosts = ["db"]

MIGRATIONS_DIR = pathlib.Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / "plugins" / "module_utils" / "migrations"
CLIENT_ADDR = "172.30.92.12"
DB_ADDRS = {"bk-db-bookworm": "172.30.92.11", "bk-db-trixie": "172.30.92.13"}
EXPECTED_MAJOR = {"bk-db-bookworm": "15", "bk-db-trixie": "17"}


@pytest.fixture(scope="module")
def client():
    return _host("bk-repo-bookworm")


@pytest.fixture()
def password(host):
    return host.ansible.get_variables()["molecule_app_password"]


def _name(host):
    return host.backend.get_hostname()


def _sql(host, query, db="postgres"):
    """Run a query as the postgres superuser over the local socket."""
    out = host.check_output(f"runuser -u postgres -- psql -d {db} -XAtc \"{query}\"")
    return out.strip()


def _remote(from_host, addr, password, user="app", sslmode="require", query="SELECT 1"):
    conninfo = f"host={addr} dbname=appdb user={user} sslmode={sslmode} connect_timeout=5"
    return from_host.run(f"PGPASSWORD='{password}' psql '{conninfo}' -XAtc \"{query}\"")


def test_service_runs_under_systemd_and_listens(host):
    major = EXPECTED_MAJOR[_name(host)]
    unit = host.service(f"postgresql@{major}-main")
    assert unit.is_running
    assert unit.is_enabled
    assert host.socket("tcp://0.0.0.0:5432").is_listening


def test_distribution_version(host):
    assert _sql(host, "SHOW server_version_num")[:2] == EXPECTED_MAJOR[_name(host)]


def test_scram_login_over_tls_from_client(host, client, password):
    res = _remote(client, DB_ADDRS[_name(host)], password,
                  query="SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    assert res.rc == 0, res.stderr
    ssl, version = res.stdout.strip().split("|")
    assert ssl == "t"
    assert version in ("TLSv1.2", "TLSv1.3")
    # The stored verifier is SCRAM, so the login above was a SCRAM exchange.
    assert _sql(host, "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'app'") == "t"


def test_plaintext_connection_is_rejected(host, client, password):
    res = _remote(client, DB_ADDRS[_name(host)], password, sslmode="disable")
    assert res.rc != 0
    assert "no pg_hba.conf entry" in res.stderr


def test_user_not_in_hba_is_rejected(host, client, password):
    res = _remote(client, DB_ADDRS[_name(host)], password, user="outsider")
    assert res.rc != 0
    assert "no pg_hba.conf entry" in res.stderr and 'user "outsider"' in res.stderr


def test_host_not_in_hba_is_rejected(host, password):
    other = _host("bk-db-trixie" if _name(host) == "bk-db-bookworm" else "bk-db-bookworm")
    res = _remote(other, DB_ADDRS[_name(host)], password)
    assert res.rc != 0
    assert "no pg_hba.conf entry" in res.stderr


def test_wrong_password_is_rejected(host, client):
    res = _remote(client, DB_ADDRS[_name(host)], "not-the-password")
    assert res.rc != 0
    assert 'password authentication failed for user "app"' in res.stderr


def test_settings_are_live(host):
    facts = host.ansible("setup", "gather_subset=min,hardware")["ansible_facts"]
    mem_mb = facts["ansible_memtotal_mb"]
    cpus = max(facts["ansible_processor_vcpus"], 1)
    max_connections = max(100, min(cpus * 25, 400))

    def setting_bytes(name):
        return int(_sql(host, f"SELECT setting::bigint * pg_size_bytes(coalesce(unit, '1')) "
                              f"FROM pg_settings WHERE name = '{name}'"))

    assert _sql(host, "SHOW password_encryption") == "scram-sha-256"
    assert _sql(host, "SHOW ssl") == "on"
    assert _sql(host, "SHOW ssl_min_protocol_version") == "TLSv1.2"
    assert _sql(host, "SHOW listen_addresses") == "*"
    assert _sql(host, "SHOW log_min_duration_statement") == "500ms"
    assert _sql(host, "SHOW work_mem") == "8MB"  # overridden in converge
    assert int(_sql(host, "SHOW max_connections")) == max_connections
    assert setting_bytes("shared_buffers") == int(mem_mb * 0.25) * 1024 ** 2
    assert setting_bytes("effective_cache_size") == int(mem_mb * 0.75) * 1024 ** 2
    # Nothing is waiting for a restart: the handlers applied everything.
    assert _sql(host, "SELECT count(*) FROM pg_settings WHERE pending_restart") == "0"
    assert _sql(host, "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL") == "0"


def test_objects_exist(host):
    assert _sql(host, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'appdb'") == "app"
    assert _sql(host, "SELECT string_agg(extname, ',' ORDER BY extname) FROM pg_extension "
                      "WHERE extname IN ('citext', 'pgcrypto')", db="appdb") == "citext,pgcrypto"
    assert _sql(host, "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'app_owner'") == "f"


def test_private_key_is_private(host):
    key = host.file("/etc/postgresql/ssl/server.key")
    assert key.user == "postgres"
    assert key.mode == 0o600


def test_certificate_source(host, client, password):
    """bk-db-trixie serves the certificate the user provided; bk-db-bookworm a self-signed one."""
    name = _name(host)
    subject = client.check_output(
        f"echo | openssl s_client -starttls postgres -connect {DB_ADDRS[name]}:5432 2>/dev/null "
        "| openssl x509 -noout -subject")
    if name == "bk-db-trixie":
        assert "CN = provided.selfbase.test" in subject
    else:
        assert "CN = bk-db-bookworm" in subject


def test_platform_schema_and_tenant_on_the_host(host):
    """The collection's modules ran on the host itself (module_defaults, local socket)."""
    shipped = sorted(p.name[1:5] for p in MIGRATIONS_DIR.glob("v[0-9][0-9][0-9][0-9]_*.py"))
    assert shipped[:2] == ["0001", "0002"]
    assert _sql(host, "SELECT string_agg(version, ',' ORDER BY version) FROM selfbase_meta.schema_migrations",
                db="appdb") == ",".join(shipped)
    assert _sql(host, "SELECT slug || ':' || status FROM platform.tenants", db="appdb") == "acme:active"
    assert _sql(host, "SELECT limit_value FROM platform.tenant_quotas", db="appdb") == "5"
