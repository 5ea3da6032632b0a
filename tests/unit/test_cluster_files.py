"""The Patroni cluster's helper files: the metrics bridge (roles/host_services/files/postgresql/selfbase-patroni-metrics),
the PgBouncer and etcd configuration validators."""

import http.server
import importlib.machinery
import importlib.util
import pathlib
import subprocess
import sys
import threading

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(path):
    loader = importlib.machinery.SourceFileLoader(path.name.replace("-", "_"), str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


bridge = _load(ROOT / "roles/host_services/files/postgresql/selfbase-patroni-metrics")
PGB_VALIDATE = ROOT / "roles/host_services/files/postgresql/pgbouncer-validate-conf"
ETCD_VALIDATE = ROOT / "roles/etcd/files/etcd-validate-conf"

# What Patroni 3.0.2 (Debian 12) serves on a replica, as captured from the `ha` scenario.
PATRONI_302_REPLICA = """\
# HELP patroni_version Patroni semver without periods.
# TYPE patroni_version gauge
patroni_version{scope="selfbase"} 030002
# TYPE patroni_primary gauge
patroni_primary{scope="selfbase"} 0
# HELP patroni_postgres_server_version Version of Postgres (if running), 0 otherwise.
# TYPE patroni_postgres_server_version gauge
patroni_postgres_server_version {scope="selfbase"} 150018
# TYPE patroni_postgres_timeline counter
patroni_postgres_timeline{scope="selfbase"} None
# TYPE patroni_xlog_replayed_timestamp gauge
patroni_xlog_replayed_timestamp{scope="selfbase"} 1796186837.912054
"""


def test_bridge_drops_what_prometheus_refuses_and_normalises_the_rest():
    lines = bridge.clean(PATRONI_302_REPLICA)
    samples = [x for x in lines if not x.startswith("#")]
    assert samples == ['patroni_version{scope="selfbase"} 030002', 'patroni_primary{scope="selfbase"} 0',
                       'patroni_postgres_server_version{scope="selfbase"} 150018',
                       'patroni_xlog_replayed_timestamp{scope="selfbase"} 1796186837.912054']
    assert not any("None" in x for x in lines)


# promtool comes from Debian's prometheus package, which scripts/testbed.sh installs.
def test_prometheus_refuses_patroni_302_and_accepts_the_bridged_file():
    raw = subprocess.run(["promtool", "check", "metrics"], input=PATRONI_302_REPLICA, text=True, capture_output=True,
                         check=False)
    assert "parsing error" in raw.stderr
    fixed = subprocess.run(["promtool", "check", "metrics"], input="\n".join(bridge.clean(PATRONI_302_REPLICA)) + "\n",
                           text=True, capture_output=True, check=False)
    assert "parsing error" not in fixed.stderr


class _Patroni(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802  pylint: disable=invalid-name
        body = PATRONI_302_REPLICA.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # pylint: disable=arguments-differ
        pass


def test_bridge_publishes_atomically_and_reports_patroni_down(tmp_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Patroni)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "selfbase_patroni.prom"
    try:
        assert bridge.publish(f"http://127.0.0.1:{server.server_port}/metrics", str(out))
    finally:
        server.shutdown()
        server.server_close()
    text = out.read_text()
    assert "selfbase_patroni_up 1" in text and 'patroni_primary{scope="selfbase"} 0' in text
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    assert not bridge.publish(f"http://127.0.0.1:{server.server_port}/metrics", str(out))
    assert out.read_text().strip().endswith("selfbase_patroni_up 0") and "patroni_primary" not in out.read_text()
    assert list(tmp_path.iterdir()) == [out]


GOOD_INI = """\
[databases]
appdb = host=127.0.0.1 port=5432 dbname=appdb pool_size=10

[users]

[pgbouncer]
listen_port = 6432
pool_mode = transaction
"""


@pytest.mark.parametrize("text, problem", [
    (GOOD_INI, None),
    (GOOD_INI.replace("[databases]", "[dbs]"), "no [databases] section"),
    (GOOD_INI.replace(" dbname=appdb", ""), "database appdb: no dbname"),
    (GOOD_INI.replace("pool_mode = transaction", "pool_mode = txn"), "unknown pool_mode 'txn'"),
    (GOOD_INI.replace("listen_port = 6432", "listen_port = six"), "listen_port is not a number"),
    (GOOD_INI + "auth_file = /nonexistent/userlist.txt\n", "auth_file /nonexistent/userlist.txt does not exist"),
    (GOOD_INI + "pool_mode = session\n", "option 'pool_mode' in section 'pgbouncer' already exists"),
])
def test_pgbouncer_validator(tmp_path, text, problem):
    path = tmp_path / "pgbouncer.ini"
    path.write_text(text)
    res = subprocess.run([sys.executable, str(PGB_VALIDATE), str(path)], capture_output=True, text=True, check=False)
    assert (res.returncode == 0) == (problem is None), res.stderr
    if problem:
        assert problem in res.stderr


def _etcd_conf(tmp_path, **changes):
    cert = tmp_path / "host.crt"
    cert.write_text("x")
    tls = {"cert-file": str(cert), "key-file": str(cert), "trusted-ca-file": str(cert), "client-cert-auth": True}
    conf = {"name": "db1", "data-dir": "/var/lib/etcd/selfbase", "listen-peer-urls": "https://10.0.0.1:2380",
            "listen-client-urls": "https://10.0.0.1:2379", "initial-advertise-peer-urls": "https://10.0.0.1:2380",
            "advertise-client-urls": "https://10.0.0.1:2379", "listen-metrics-urls": "http://10.0.0.1:2381",
            "initial-cluster": "db1=https://10.0.0.1:2380,db2=https://10.0.0.2:2380,db3=https://10.0.0.3:2380",
            "initial-cluster-token": "selfbase", "initial-cluster-state": "new", "heartbeat-interval": 100,
            "election-timeout": 1000, "enable-grpc-gateway": True, "client-transport-security": tls,
            "peer-transport-security": dict(tls)}
    conf.update(changes)
    path = tmp_path / "etcd.yml"
    path.write_text(yaml.safe_dump(conf))
    return path


@pytest.mark.parametrize("changes, problem", [
    ({}, None),
    ({"initial-cluster": "db2=https://10.0.0.2:2380"}, "member 'db1' is not in initial-cluster"),
    ({"initial-advertise-peer-urls": "https://10.0.0.9:2380"}, "another peer URL"),
    ({"election-timeout": 300}, "at least 5 heartbeat-intervals"),
    ({"snapshot-cout": 5}, "unknown key 'snapshot-cout'"),
    ({"client-transport-security": {"cert-file": "/nonexistent.crt"}}, "/nonexistent.crt does not exist"),
])
def test_etcd_validator(tmp_path, changes, problem):
    res = subprocess.run([sys.executable, str(ETCD_VALIDATE), str(_etcd_conf(tmp_path, **changes))],
                         capture_output=True, text=True, check=False)
    assert (res.returncode == 0) == (problem is None), res.stderr
    if problem:
        assert problem in res.stderr


patroni_validate = _load(ROOT / "roles/postgresql/files/patroni-validate-conf")


def test_patroni_validation_moves_only_the_listen_ports():
    conf = {"restapi": {"listen": "0.0.0.0:8008", "connect_address": "10.0.0.1:8008"},
            "postgresql": {"listen": "10.0.0.1,127.0.0.1:5432", "connect_address": "10.0.0.1:5432"}}
    moved = patroni_validate.with_free_ports(conf)
    assert moved["restapi"]["listen"].startswith("0.0.0.0:") and moved["restapi"]["listen"] != "0.0.0.0:8008"
    assert moved["postgresql"]["listen"].startswith("10.0.0.1,127.0.0.1:")
    assert moved["restapi"]["connect_address"] == "10.0.0.1:8008"
    assert moved["postgresql"]["connect_address"] == "10.0.0.1:5432"


@pytest.mark.parametrize("line, tolerated", [
    ("etcd3.hosts.2 172.30.90.13:2379 didn't pass validation: '172.30.90.13:2379 is not reachable'", True),
    ("postgresql.bin_dir  Directory '/nonexistent' does not exist.", False),
    ("bootstrap.dcs.ttl ten is not and integer", False),
])
def test_patroni_validation_tolerates_only_an_unreachable_etcd_member(line, tolerated):
    assert bool(patroni_validate.UNREACHABLE.match(line)) is tolerated
