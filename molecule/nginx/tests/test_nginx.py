"""Verify the nginx role on real systemd hosts, with requests from a client host over the network."""

import json
import pathlib
import shlex
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources"))
from molecule_hosts import ansible_host as _host  # noqa: E402  pylint: disable=wrong-import-position

testinfra_hosts = ["proxy"]

PROXY_ADDRS = {"nginx-proxy-bookworm": "172.30.97.11", "nginx-proxy-trixie": "172.30.97.12"}
BASE = "selfbase.test"
BLOCKED = ["/v1/metadata", "/v2/query", "/v1/config", "/console", "/v1/version"]


@pytest.fixture(scope="module")
def client():
    return _host("nginx-client")


def _name(host):
    return host.backend.get_hostname()


@pytest.fixture()
def ca(host, client):
    """The CA that signs this proxy's certificate, copied to the client: the test CA
    for the provided certificate (trixie), the certificate itself when self-signed."""
    chain = host.file("/etc/nginx/ssl/chain.pem")
    pem = chain.content_string if chain.exists else host.file("/etc/nginx/ssl/selfbase.crt").content_string
    path = f"/tmp/ca-{_name(host)}.pem"
    client.run(f"printf '%s' {shlex.quote(pem)} > {path}")
    return path


class Response:  # pylint: disable=too-few-public-methods
    """Status, lower-cased headers and body of one curl request."""

    def __init__(self, out):
        head, self.body = (out.split("\r\n\r\n", 1) + [""])[:2]
        lines = head.split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {}
        for line in lines[1:]:
            key, value = (line.split(":", 1) + [""])[:2]
            self.headers[key.strip().lower()] = value.strip()

    def json(self):
        return json.loads(self.body)


def _curl(client, host, ca, name, path="/", args="", scheme="https"):
    addr = PROXY_ADDRS[_name(host)]
    port = 443 if scheme == "https" else 80
    cmd = (f"curl -sS --http1.1 --max-time 10 -D - --resolve {name}:{port}:{addr} --cacert {ca} {args} "
           f"{shlex.quote(f'{scheme}://{name}{path}')}")
    return Response(client.check_output(cmd))


def test_nginx_runs_and_config_is_valid(host):
    assert host.service("nginx").is_running
    assert host.service("nginx").is_enabled
    assert host.run("nginx -t").rc == 0
    assert host.socket("tcp://0.0.0.0:443").is_listening
    assert host.socket("tcp://0.0.0.0:80").is_listening


@pytest.mark.parametrize("name,service,tenant", [
    (f"api.{BASE}", "hasura", None),
    (f"auth.{BASE}", "auth", None),
    (f"acme.{BASE}", "app", "acme"),
    ("app.acme.test", "app", "acme"),
    ("shop.globex.test", "app", "globex"),
    (f"bench.{BASE}", "app", "bench"),
])
def test_vhost_routes_to_its_upstream(host, client, ca, name, service, tenant):
    res = _curl(client, host, ca, name, "/some/path?x=1")
    assert res.status == 200
    echo = res.json()
    assert echo["service"] == service
    assert echo["path"] == "/some/path?x=1"
    assert echo["headers"]["host"] == [name]
    assert echo["headers"]["x-forwarded-proto"] == ["https"]
    assert echo["headers"].get("x-tenant-slug") == ([tenant] if tenant else None)
    # Hardened answer: no version, HSTS on HTTPS.
    assert res.headers["server"] == "nginx"
    assert res.headers["strict-transport-security"].startswith("max-age=63072000")


@pytest.mark.parametrize("name,expected", [(f"acme.{BASE}", ["acme"]), (f"api.{BASE}", None)])
def test_spoofed_tenant_header_is_overwritten(host, client, ca, name, expected):
    res = _curl(client, host, ca, name, args="-H 'X-Tenant-Slug: globex' -H 'x-tenant-slug: evil'")
    assert res.json()["headers"].get("x-tenant-slug") == expected


@pytest.mark.parametrize("origin,reaches", [
    (f"https://{BASE}", True),
    (f"https://acme.{BASE}", True),
    ("https://app.acme.test", True),                # custom domain
    ("https://shop.globex.test", True),
    ("http://localhost:3000", True),                # nginx_auth_cors_origins
    ("https://evil.example.test", False),
    (f"https://nobody.{BASE}", False),              # slug not in the tenant list
    ("https://gone.example.test", False),           # deleted tenant's domain
    (f"http://acme.{BASE}", False),                 # not https
    (f"https://acme.{BASE}.evil.test", False),
])
def test_only_platform_and_tenant_origins_reach_auth(host, client, ca, origin, reaches):
    """auth grants any Origin it is sent, with credentials; nginx passes only the platform's and the served
    tenants' on. The API host passes every Origin (Hasura applies its own CORS list), so the echo shows it."""
    res = _curl(client, host, ca, f"auth.{BASE}", args=f"-H 'Origin: {origin}'")
    assert res.json()["headers"].get("origin") == ([origin] if reaches else None)
    control = _curl(client, host, ca, f"api.{BASE}", args=f"-H 'Origin: {origin}'")
    assert control.json()["headers"].get("origin") == [origin]


@pytest.mark.parametrize("name,header", [
    ("evil.example.test", ""),                      # unknown host
    (f"nobody.{BASE}", ""),                         # slug not in the tenant list
    (f"gone.{BASE}", ""),                           # deleted tenant
    ("gone.example.test", ""),                      # deleted tenant's domain
    (BASE, ""),                                     # the bare base domain
    (f"acme.{BASE}", "-H 'Host: evil.example.test'"),  # SNI of a tenant, Host of nobody
])
def test_unknown_host_reaches_no_tenant(host, client, ca, name, header):
    res = _curl(client, host, ca, name, args=f"-k {header}")
    assert res.status == 421
    assert "x-echo-service" not in res.headers


@pytest.mark.parametrize("path", BLOCKED + ["/v1/metadata/", "/V1/Metadata", "//v1//metadata", "/v1/%6detadata",
                                            "/console/settings"])
def test_admin_paths_are_blocked(host, client, ca, path):
    res = _curl(client, host, ca, f"api.{BASE}", path, args="-X POST --path-as-is -d '{}'")
    assert res.status == 403
    assert "x-echo-service" not in res.headers


def test_admin_paths_open_to_admin_networks_and_graphql_public(host, client, ca):
    local = host.check_output(f"curl -sk --resolve api.{BASE}:443:127.0.0.1 https://api.{BASE}/v1/metadata")
    assert json.loads(local)["service"] == "hasura"
    assert _curl(client, host, ca, f"api.{BASE}", "/v1/graphql").json()["service"] == "hasura"


WS_CLIENT = r'''
import base64, os, socket, ssl, sys

name, addr, ca = sys.argv[1:4]
key = base64.b64encode(os.urandom(16)).decode()
ctx = ssl.create_default_context(cafile=ca)
sock = ctx.wrap_socket(socket.create_connection((addr, 443), timeout=10), server_hostname=name)
sock.sendall((f"GET /v1/graphql HTTP/1.1\r\nHost: {name}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
data = b""
while b"\r\n\r\n" not in data:
    chunk = sock.recv(4096)
    if not chunk:
        break
    data += chunk
print(key)
print(data.decode())
'''


def test_websocket_handshake_is_proxied(host, client, ca):
    import base64  # pylint: disable=import-outside-toplevel
    import hashlib  # pylint: disable=import-outside-toplevel
    out = client.check_output(f"python3 -c {shlex.quote(WS_CLIENT)} api.{BASE} {PROXY_ADDRS[_name(host)]} {ca}")
    key, answer = out.split("\n", 1)
    assert answer.startswith("HTTP/1.1 101")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in answer.split("\r\n")[1:] if ":" in line)}
    accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
    assert headers["sec-websocket-accept"] == accept
    assert headers["x-echo-service"] == "hasura"
    assert headers["upgrade"].lower() == "websocket"


def test_rate_limit_answers_429_and_spares_other_tenants(host, client, ca):
    addr = PROXY_ADDRS[_name(host)]
    name = "shop.globex.test"  # class default: 2r/s, burst 5
    urls = f"-o /dev/null https://{name}/burst " * 20
    codes = client.check_output(f"curl -s --http1.1 --resolve {name}:443:{addr} --cacert {ca} -w '%{{http_code}}\\n' {urls}")
    codes = codes.split()
    assert codes.count("200") >= 5 and codes.count("429") >= 10, codes
    limited = _curl(client, host, ca, name, "/burst")
    assert limited.status == 429
    assert limited.headers["retry-after"] == "2"
    assert limited.headers["content-type"].startswith("application/json")
    assert limited.json()["error"] == "too_many_requests"
    # Another tenant, from the same client, right away: not affected.
    assert _curl(client, host, ca, f"acme.{BASE}").status == 200
    assert _curl(client, host, ca, "app.acme.test").status == 200


@pytest.mark.parametrize("version,ok", [("tls1", False), ("tls1_1", False), ("tls1_2", True), ("tls1_3", True)])
def test_tls_versions(host, client, version, ok):
    # SECLEVEL=0 lets the client offer TLS 1.0/1.1, so a failure is the server's refusal.
    res = client.run(f"echo | openssl s_client -connect {PROXY_ADDRS[_name(host)]}:443 -servername acme.{BASE} "
                     f"-{version} -cipher 'DEFAULT:@SECLEVEL=0' 2>&1")
    assert (res.rc == 0) is ok, res.stdout
    if ok:
        assert f"Protocol  : TLSv1.{version[-1]}" in res.stdout or f"TLSv1.{version[-1]}" in res.stdout


@pytest.mark.parametrize("name", [f"api.{BASE}", f"auth.{BASE}", f"acme.{BASE}", f"globex.{BASE}",
                                  f"bench.{BASE}", "app.acme.test", "shop.globex.test"])
def test_certificate_covers_every_name(host, client, ca, name):
    # curl verifies the chain and the name against the CA; no -k here.
    addr = PROXY_ADDRS[_name(host)]
    res = client.run(f"curl -sS -o /dev/null -w '%{{http_code}}' --resolve {name}:443:{addr} --cacert {ca} https://{name}/robots.txt")
    assert res.rc == 0, res.stderr
    assert res.stdout in ("200", "429")


def test_http_redirects_to_https_except_acme(host, client, ca):
    res = _curl(client, host, ca, f"acme.{BASE}", "/a/b?c=d", scheme="http")
    assert res.status == 301
    assert res.headers["location"] == f"https://acme.{BASE}/a/b?c=d"
    host.run("printf token-content > /var/www/acme/.well-known/acme-challenge/molecule-token")
    res = _curl(client, host, ca, f"acme.{BASE}", "/.well-known/acme-challenge/molecule-token", scheme="http")
    assert res.status == 200
    assert res.body == "token-content"


def test_stub_status_is_local_only(host, client):
    assert "Active connections" in host.check_output("curl -s http://127.0.0.1:8088/stub_status")
    res = client.run(f"curl -s --max-time 5 http://{PROXY_ADDRS[_name(host)]}:8088/stub_status")
    assert res.rc != 0


def test_json_access_log_has_tenant_status_bytes_time(host, client, ca):
    _curl(client, host, ca, "app.acme.test", "/metered")
    lines = host.check_output("grep '/metered' /var/log/nginx/access.json").splitlines()
    entry = json.loads(lines[-1])
    assert entry["tenant"] == "acme"
    assert entry["status"] == 200
    assert entry["bytes"] > 0
    assert isinstance(entry["request_time"], float)
    assert entry["host"] == "app.acme.test"


def test_snippets_are_included(host, client, ca):
    res = _curl(client, host, ca, f"acme.{BASE}", "/molecule-snippet", args="-H 'X-Molecule: 1'")
    assert res.status == 200
    assert res.body.strip() == "snippet on"


def test_ocsp_stapling_only_with_a_chain(host):
    conf = host.file("/etc/nginx/selfbase/platform.conf").content_string
    assert ("ssl_stapling on;" in conf) is (_name(host) == "nginx-proxy-trixie")
