"""Verify the production topology across tiers, after site.yml converged inventories/production's shape.

Tenant traffic through both proxies to both api hosts, metered by each proxy's agent through its local
HAProxy into the cluster's leader; the api hosts' database objects made through the cluster path; every
Prometheus target up and every alert group loaded; billing in step with the Stripe fake. Then site.yml
again the way AWX runs it (the scenario's idempotence check) and in check mode: nothing to change.
"""

import base64
import hashlib
import hmac
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import ansible_runner
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
# pylint: disable=wrong-import-position
from molecule_hosts import INVENTORY, docker_host as _host, until  # noqa: E402
from production_hosts import (API, DB, EDGE, HOSTS, MON, STRIPE, TENANT_DB, TENANT_DB_ADDR, VAULT,  # noqa: E402
                              playbook, prometheus, psql as _psql, secret)

testinfra_hosts = []
ROOT = pathlib.Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
SITE = ROOT / "playbooks" / "site.yml"


def _env():
    return dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".cache" / "collections"), ANSIBLE_NOCOLOR="1",
                ANSIBLE_FORCE_COLOR="false", ANSIBLE_PIPELINING="true")


def _curl(edge, name, path="/hello", *args):
    return _host(MON).run("curl -sk --max-time 10 --resolve %s:443:%s" + " %s" * len(args) + " https://%s%s",
                          name, EDGE[edge], *args, name, path)


@pytest.mark.parametrize("edge", list(EDGE))
@pytest.mark.parametrize("name,slug", [("acme.example.com", "acme"), ("app.acme.com", "acme"),
                                       ("globex.example.com", "globex")])
def test_tenant_domain_reaches_the_app_with_its_tenant(edge, name, slug):
    # From the monitoring host, through nginx on each proxy over TLS, to the
    # stand-in app on the api hosts; a spoofed header is replaced.
    cmd = _curl(edge, name, "/hello", "--fail", "-H", "X-Tenant-Slug: evil")
    assert cmd.rc == 0, cmd.stderr
    echoed = json.loads(cmd.stdout)
    headers = {k.lower(): v for k, v in echoed["headers"].items()}
    assert headers["x-tenant-slug"] == [slug]  # one value: the client's is gone
    assert echoed["path"] == "/hello"


def test_both_api_hosts_serve_the_tenant_app():
    # nginx balances over both api hosts: each one's echo service sees requests.
    for _round in range(8):
        for edge in EDGE:
            assert _curl(edge, "initech.example.com", "/spread", "--fail", "-o", "/dev/null").rc == 0
    for edge in EDGE:
        log = _host(edge).run("grep -h '\"uri\":\"/spread\"' /var/log/nginx/access.json").stdout
        upstreams = {json.loads(line)["upstream"] for line in log.splitlines()}
        assert upstreams == {addr + ":3000" for addr in API.values()}, (edge, upstreams)


@pytest.mark.parametrize("edge", list(EDGE))
def test_unknown_tenant_is_refused(edge):
    cmd = _curl(edge, "nobody.example.com", "/", "-o", "/dev/null", "-w", "%{http_code}")
    assert cmd.stdout == "421"


@pytest.mark.parametrize("edge", list(EDGE))
def test_requests_through_each_proxy_are_metered(edge):
    """Each proxy's agent records what its nginx served (the requests above) through its own login, by way
    of its local HAProxy to the leader."""
    login = "meter_" + edge.replace("-", "_")
    query = ("SELECT COALESCE(sum(e.quantity), 0) FROM platform.usage_events e JOIN platform.tenants t "
             "ON t.id = e.tenant_id WHERE t.slug = 'acme' AND e.metric = 'api_requests' "
             f"AND e.idempotency_key LIKE 'edge/{login}/%'")
    until(lambda: int(_psql(query).stdout.strip() or 0) >= 2, 60)
    assert int(_psql(query).stdout.strip()) >= 2
    # its session goes through the local HAProxy's leader port (nothing else on a proxy uses the database)
    sessions = _host(edge).run("ss -Htn state established '( dport = :5002 )'").stdout
    assert EDGE[edge] + ":5002" in sessions, sessions


def test_api_hosts_created_their_objects_through_the_cluster():
    """Hasura's and auth's logins, grants, metadata database and session limits, made on the leader by the
    api hosts' database tasks, are on every member (replicated), and the logins reach the leader through
    each api host's HAProxy."""
    for member in DB:
        roles = _psql("SELECT string_agg(r.rolname || ':' || (s.setconfig IS NOT NULL)::text, ',' ORDER BY r.rolname) "
                      "FROM pg_roles r LEFT JOIN pg_db_role_setting s ON s.setrole = r.oid "
                      "AND s.setdatabase = (SELECT oid FROM pg_database WHERE datname = 'selfbase') "
                      "WHERE r.rolname IN ('hasura', 'auth')", member)
        assert roles.stdout.strip() == "auth:true,hasura:true", (member, roles.stdout, roles.stderr)
        meta = _psql("SELECT count(*) FROM pg_database WHERE datname = 'hasura_metadata'", member)
        assert meta.stdout.strip() == "1", member
        schemas = _psql("SELECT string_agg(nspname || ':' || pg_get_userbyid(nspowner), ',' ORDER BY nspname) "
                        "FROM pg_namespace WHERE nspname IN ('auth', 'hdb_catalog')", member)
        assert schemas.stdout.strip() == "auth:auth,hdb_catalog:hasura", member
    password = secret("hasura_db_password")
    for api, addr in API.items():
        for port in ("5000", "5002"):
            res = _host(api).run("PGPASSWORD=%s psql 'host=%s port=%s dbname=selfbase user=hasura sslmode=prefer' "
                                 "-XAtqc 'SELECT pg_is_in_recovery()'", password, addr, port)
            assert res.rc == 0 and res.stdout.strip() == "f", (api, port, res.stderr)


def test_prometheus_scrapes_every_target_on_every_host():
    targets = prometheus("/api/v1/targets")["activeTargets"]
    node = {t["labels"]["instance"].split(":")[0] for t in targets if t["labels"]["job"] == "node"}
    assert node == set(HOSTS)

    def down():
        found = prometheus("/api/v1/targets")["activeTargets"]
        return [(t["labels"]["job"], t["labels"]["instance"]) for t in found if t["health"] != "up"]
    until(lambda: not down(), 90)
    assert not down()
    jobs = {t["labels"]["job"] for t in prometheus("/api/v1/targets")["activeTargets"]}
    assert jobs >= {"node", "postgres", "nginx", "prometheus", "alertmanager", "etcd", "haproxy"}, jobs


def test_cluster_backup_metering_and_billing_alerts_are_loaded():
    rules = {r["name"] for g in prometheus("/api/v1/rules")["groups"] for r in g["rules"]}
    expected = {"PatroniNoLeader", "PatroniMemberNotRunning", "EtcdUnhealthy", "HAProxyBackendDown",
                "BackupMissing", "WalArchivingFailing", "WalArchiveLagging", "MeteringAgentDown", "MeteringLagHigh",
                "BillingSyncFailing", "MeterPushBacklog", "StripeEventsDelayed", "TenantQuotaExceeded",
                "TenantClusterNearCapacity"}
    assert expected <= rules, sorted(expected - rules)


def test_hard_quota_is_enforced_by_postgresql():
    # acme may have 25 members (data/tenants.yml); the 26th insert is refused
    # with the platform's SQLSTATE. Rolled back, so the environment stays converged.
    sql = ("BEGIN; INSERT INTO platform.tenant_members (tenant_id, user_id) "
           "SELECT t.id, gen_random_uuid() FROM platform.tenants t, generate_series(1, %d) WHERE t.slug = 'acme'; ROLLBACK;")
    assert _psql(sql % 25).rc == 0
    refused = _psql(sql % 26)
    assert refused.rc != 0
    assert "members" in refused.stderr and "quota" in refused.stderr.lower()


def test_tenant_isolation_holds_after_the_full_converge():
    # The application role sees only the tenant it acts for, and nothing
    # without one (RLS forced on every tenant table).
    gid = _psql("SELECT id FROM platform.tenants WHERE slug = 'globex'").stdout.strip()
    cmd = _psql("BEGIN; SET LOCAL ROLE selfbase_app; SET LOCAL app.tenant_id = '%s'; "
                "SELECT string_agg(slug, ',') FROM platform.tenants; ROLLBACK;" % gid)
    assert cmd.rc == 0, cmd.stderr
    assert cmd.stdout.strip().splitlines()[-1] == "globex"
    cmd = _psql("BEGIN; SET LOCAL ROLE selfbase_app; SELECT count(*) FROM platform.tenants; ROLLBACK;")
    assert cmd.stdout.strip().splitlines()[-1] == "0"


def _through_router(api, tenant, login=None):
    """Connect through api's tenant router to TENANT's database as LOGIN's tenant login (the billing service's
    Python has psycopg); the completed command, whose output is the database and the server's address."""
    login = login or tenant
    code = ("import psycopg, sys; c = psycopg.connect(host='127.0.0.1', port=6433, dbname=sys.argv[1], "
            "user='tenant_' + sys.argv[2], password=sys.argv[3], connect_timeout=10); "
            "print(*c.execute('SELECT current_database(), host(inet_server_addr())').fetchone())")
    return _host(api).run("/opt/selfbase-billing/venv/bin/python -c %s %s %s %s", code, tenant, login,
                          secret("tenant-db-" + login))


@pytest.mark.parametrize("api", sorted(API))
def test_each_api_host_reaches_tenants_on_two_clusters_by_name(api):
    """acme has a database on the shared tier (the Patroni cluster, through the host's HAProxy to the leader),
    globex on the dedicated cluster: both reached by name through the api host's tenant router, each only by
    its own login."""
    acme = _through_router(api, "acme")
    assert acme.rc == 0, acme.stderr
    database, server = acme.stdout.split()
    assert database == "tenant_acme" and server in ("172.30.89.11", "172.30.89.12", "172.30.89.13"), acme.stdout
    globex = _through_router(api, "globex")
    assert globex.rc == 0 and globex.stdout.split() == ["tenant_globex", TENANT_DB_ADDR], globex.stdout + globex.stderr
    for tenant, login in (("globex", "acme"), ("acme", "globex")):
        crossed = _through_router(api, tenant, login)
        assert crossed.rc != 0 and crossed.stdout == "", crossed.stdout


def test_tenant_databases_are_where_the_registry_says_and_nowhere_else():
    rows = _psql("SELECT string_agg(t.slug || ':' || p.tier || ':' || p.cluster || ':' || p.state, ',' ORDER BY t.slug) "
                 "FROM platform.tenant_placements p JOIN platform.tenants t ON t.id = p.tenant_id").stdout.strip()
    assert rows == "acme:database:shared-1:active,globex:dedicated:dedicated-1:active"
    on_dedicated = _host(TENANT_DB).run("runuser -u postgres -- psql -qXAtc %s",
                                        "SELECT string_agg(datname, ',') FROM pg_database WHERE datname LIKE 'tenant%'")
    assert on_dedicated.stdout.strip() == "tenant_globex"
    placer = _host(TENANT_DB).run("runuser -u postgres -- psql -qXAtc %s",
                                  "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = 'selfbase_placer'")
    assert placer.stdout.strip() == "f|t|t"
    # the platform's own database and logins are not on the tenant cluster
    platform = _host(TENANT_DB).run("runuser -u postgres -- psql -qXAtc %s",
                                    "SELECT (SELECT count(*) FROM pg_database WHERE datname = 'selfbase') + "
                                    "(SELECT count(*) FROM pg_roles WHERE rolname IN ('selfbase', 'selfbase_control'))")
    assert platform.stdout.strip() == "0", platform.stdout + platform.stderr


def _storage():
    """{tenant: (cluster, recorded bytes, sum of its storage_bytes usage events)}."""
    out = _psql("SELECT t.slug, s.cluster, s.bytes, (SELECT sum(quantity) FROM platform.usage_events e "
                "WHERE e.tenant_id = t.id AND e.metric = 'storage_bytes') FROM platform.tenant_database_sizes s "
                "JOIN platform.tenants t ON t.id = s.tenant_id ORDER BY 1").stdout.split()
    return {row[0]: (row[1], int(row[2]), int(row[3])) for row in (line.split("|") for line in out)}


def test_tenant_storage_is_sampled_on_both_clusters_into_each_tenants_usage_once():
    """playbooks/tenant_storage.yml, as AWX runs it hourly: acme's database on the Patroni cluster and globex's on
    the dedicated one are measured, and each tenant's storage_bytes usage is the size last recorded, however
    many runs there were."""
    for _round in range(2):
        run = playbook("tenant_storage.yml", timeout=600)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
        storage = _storage()
        assert sorted(storage) == ["acme", "globex"], storage
        for slug, (_cluster, recorded, used) in storage.items():
            assert recorded == used > 0, (slug, storage)
    live = {"acme": int(_psql("SELECT pg_database_size('tenant_acme')").stdout),
            "globex": int(_host(TENANT_DB).run("runuser -u postgres -- psql -qXAtc %s",
                                               "SELECT pg_database_size('tenant_globex')").stdout)}
    assert {slug: row[0] for slug, row in storage.items()} == {"acme": "shared-1", "globex": "dedicated-1"}
    for slug, size in live.items():  # idle databases; a little slack for a vacuum between the run and the read
        assert abs(storage[slug][1] - size) < 1 << 20, (slug, storage[slug], size)

    # and each db host's postgres_exporter gives Prometheus the sizes recorded
    def exported():
        found = prometheus("/api/v1/query?query=selfbase_tenant_database_bytes")["result"]
        return {(r["metric"]["tenant"], r["metric"]["cluster"], float(r["value"][1])) for r in found}
    expected = {(slug, row[0], float(row[1])) for slug, row in storage.items()}
    assert until(lambda: exported() == expected, 120), (exported(), expected)


def test_billing_reached_stripe_and_the_database():
    # The price book is in Stripe (the contract fake) and in PostgreSQL, and
    # the paying tenants' subscriptions are mirrored.
    products = _stripe("/v1/products?limit=100")["data"]
    assert sorted(p["metadata"]["plan_code"] for p in products) == ["pro", "starter"]
    # each plan's features that are on, as Entitlements features on its product
    features = {p["metadata"]["plan_code"]: [f["entitlement_feature"]["lookup_key"] for f in _stripe(
        "/v1/products/%s/features" % p["id"])["data"]] for p in products}
    assert features == {"pro": ["custom_domains"], "starter": []}, features
    plans = _psql("SELECT string_agg(code || ':' || (stripe_product_id IS NOT NULL)::text, ',' ORDER BY code) "
                  "FROM platform.plans")
    assert plans.stdout.strip() == "pro:true,starter:true"
    subs = _psql("SELECT string_agg(t.slug || ':' || s.status, ',' ORDER BY t.slug) FROM platform.subscriptions s "
                 "JOIN platform.tenants t ON t.id = s.tenant_id")
    got = dict(item.split(":") for item in subs.stdout.strip().split(","))
    assert set(got) == {"acme", "initech"} and set(got.values()) <= {"active", "trialing"}, got


def _stripe(path):
    req = urllib.request.Request(STRIPE + path, headers={"Authorization": "Bearer " + VAULT["vault_stripe_api_key"]})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def test_acme_is_taxed_by_stripe_tax_and_its_tax_details_are_mirrored():
    """subscriptions.yml's address and tax ID reached acme's customer and Stripe Tax its subscription; the sync
    job's reconcile mirrors them (customer.tax_id.created, the customer re-fetched with its tax), and acme's
    entitlements (its features)."""
    [customer] = [c for c in _stripe("/v1/customers?limit=100")["data"] if c["metadata"].get("tenant_slug") == "acme"]
    assert (customer["address"]["country"], customer["address"]["postal_code"]) == ("US", "10001")
    assert [(t["type"], t["value"]) for t in _stripe("/v1/customers/%s/tax_ids" % customer["id"])["data"]] == [
        ("us_ein", "12-3456789")]
    [sub] = _stripe("/v1/subscriptions?customer=%s" % customer["id"])["data"]
    assert sub["automatic_tax"]["enabled"] is True
    sync = [api for api in API if _host(api).run("systemctl is-enabled selfbase-billing-sync.timer").rc == 0]
    assert len(sync) == 1, sync
    assert _host(sync[0]).run("systemctl start selfbase-billing-sync.service").rc == 0
    query = ("SELECT c.tax_location || ' ' || c.tax_ids::text FROM platform.customer_payment_state c "
             "JOIN platform.tenants t ON t.id = c.tenant_id WHERE t.slug = 'acme'")
    want = 'supported [{"type": "us_ein", "value": "12-3456789", "verification": "unavailable"}]'

    def mirrored():
        return _psql(query).stdout.strip()
    assert until(lambda: mirrored() == want, 60), mirrored()
    # acme's active entitlements (pro's custom_domains) came back with the same reconcile: its features are
    # Stripe's; initech's plan has none in Stripe, so Stripe never listed its entitlements and its plan's stand
    features = ("SELECT string_agg(t.slug || '=' || platform.features_of(t.id)::text || ':'"
                " || (e.tenant_id IS NOT NULL)::text, ' ' ORDER BY t.slug) FROM platform.tenants t"
                " LEFT JOIN platform.tenant_entitlements e ON e.tenant_id = t.id WHERE t.slug IN ('acme', 'initech')")
    want = 'acme={"custom_domains": true}:true initech={"custom_domains": false}:false'
    assert until(lambda: _psql(features).stdout.strip() == want, 60), _psql(features).stdout


def test_billing_service_runs_on_both_api_hosts():
    for api in API:
        assert _host(api).service("selfbase-billing").is_running, api


def _jwt(user, tenant):
    """A token as auth signs it: HS256 with the platform's key, Hasura's claims with the chosen tenant."""
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    signed = "%s.%s" % (part({"alg": "HS256", "typ": "JWT"}), part({
        "sub": user, "exp": int(time.time()) + 600, "https://hasura.io/jwt/claims": {
            "x-hasura-user-id": user, "x-hasura-tenant-id": tenant, "x-hasura-default-role": "user"}}))
    mac = hmac.new(secret("hasura_jwt_key").encode(), signed.encode(), hashlib.sha256).digest()
    return signed + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


@pytest.mark.parametrize("edge", list(EDGE))
def test_tenant_admins_open_checkout_sessions_through_each_edge(edge):
    """POST https://api.<domain>/billing/checkout through nginx to the billing service on the api hosts: the
    token is checked with the key the hasura role generated, the member's role read through the cluster path
    (migration 0019), and the session opened at Stripe (the contract fake) for the tenant's customer."""
    ids = dict(line.split("|") for line in _psql(
        "SELECT slug || '|' || id FROM platform.tenants WHERE slug IN ('initech', 'globex')").stdout.split())
    owner, member = str(uuid.uuid5(uuid.NAMESPACE_URL, "owner-" + edge)), str(uuid.uuid5(uuid.NAMESPACE_URL, edge))
    _psql("INSERT INTO platform.tenant_members (tenant_id, user_id, role) VALUES ('%s', '%s', 'owner'), "
          "('%s', '%s', 'owner'), ('%s', '%s', 'member') ON CONFLICT DO NOTHING"
          % (ids["initech"], owner, ids["globex"], owner, ids["globex"], member))

    def post(user, slug, body):
        cmd = _curl(edge, "api.example.com", "/billing/checkout", "-X", "POST", "-H", "Content-Type: application/json",
                    "-H", "Authorization: Bearer " + _jwt(user, ids[slug]), "-d", json.dumps(body),
                    "-w", "\\n%{http_code}")
        assert cmd.rc == 0, cmd.stderr
        text, status = cmd.stdout.rsplit("\n", 1)
        return int(status), json.loads(text)
    back = {"success_url": "https://app.example.com/billing/done", "cancel_url": "https://globex.example.com/"}
    status, answer = post(member, "globex", dict(back, plan="pro"))
    assert status == 403, answer
    # initech is subscribed (subscriptions.yml): plans change in the portal (acme's members are another test's)
    status, answer = post(owner, "initech", dict(back, plan="pro"))
    assert status == 409 and "portal" in answer["error"], answer
    status, answer = post(owner, "globex", dict(back, plan="pro"))
    assert status == 200, answer
    session = _stripe("/v1/checkout/sessions/" + answer["id"])
    assert (session["client_reference_id"], session["metadata"]["plan_code"], session["url"]) == (
        ids["globex"], "pro", answer["url"])
    customer = _psql("SELECT stripe_customer_id FROM platform.tenants WHERE slug = 'globex'").stdout.strip()
    assert session["customer"] == customer and customer.startswith("cus_")


def test_a_tenant_at_its_plans_limit_upgrades_itself_and_is_served_again():
    """globex (starter: 100,000 API requests a month, hard) reaches its limit and gets 429 at the edge; its owner
    subscribes to pro through Checkout, the customer completes the page (the fake's control), the sync job's
    reconcile brings the subscription back, and the new plan's quota lifts the 429."""
    edge = next(iter(EDGE))
    globex = _psql("SELECT id FROM platform.tenants WHERE slug = 'globex'").stdout.strip()
    used = int(_psql("SELECT platform.metric_usage('%s', 'api_requests', 'month')" % globex).stdout.strip() or 0)
    record = ("BEGIN; SELECT set_config('app.tenant_id', '%s', true); SELECT platform.record_usage('%s', "
              "'api_requests', %d, 'production-upgrade-%s'); COMMIT;")
    assert _psql(record % (globex, globex, max(100000 - used, 1), uuid.uuid4().hex)).rc == 0

    def served():
        return _curl(edge, "globex.example.com", "/hello", "-o", "/dev/null", "-w", "%{http_code}").stdout
    assert until(lambda: served() == "429", 90), served()
    owner = str(uuid.uuid5(uuid.NAMESPACE_URL, "owner-" + edge))  # the previous test's owner
    cmd = _curl(edge, "api.example.com", "/billing/checkout", "--fail", "-X", "POST", "-H",
                "Content-Type: application/json", "-H", "Authorization: Bearer " + _jwt(owner, globex), "-d",
                json.dumps({"plan": "pro", "success_url": "https://globex.example.com/ok",
                            "cancel_url": "https://globex.example.com/"}))
    assert cmd.rc == 0, cmd.stdout + cmd.stderr
    session = json.loads(cmd.stdout)
    req = urllib.request.Request(STRIPE + "/_fake/checkout/sessions/%s/complete" % session["id"], data=b"",
                                 method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        sub = json.load(resp)["subscription"]
    [sync] = [api for api in API if _host(api).run("systemctl is-enabled selfbase-billing-sync.timer").rc == 0]
    assert _host(sync).run("systemctl start selfbase-billing-sync.service").rc == 0
    plan = ("SELECT t.plan_code || ' ' || t.plan_source || ' ' || s.status || ' ' || s.stripe_subscription_id "
            "FROM platform.tenants t JOIN platform.subscriptions s ON s.tenant_id = t.id WHERE t.slug = 'globex'")
    assert until(lambda: _psql(plan).stdout.strip() == "pro customer active " + sub, 60), _psql(plan).stdout
    assert until(lambda: served() == "200", 90), served()


def test_site_through_ansible_runner_changes_nothing():
    """The way AWX runs a job template: ansible-runner, artifacts checked (with Molecule's
    Mitogen strategy: the common and nginx scenarios run Ansible's own)."""
    with tempfile.TemporaryDirectory() as data:
        run = ansible_runner.run(private_data_dir=data, playbook=str(SITE), inventory=os.path.dirname(INVENTORY),
                                 envvars=_env(), quiet=True)
        assert run.status == "successful", run.stdout.read()[-3000:]
        assert run.rc == 0
        stats = run.stats
        assert not stats["failures"] and not stats["dark"]
        assert set(stats["ok"]) >= set(HOSTS)  # and localhost, where the billing modules run
        # this is the scenario's idempotence check: name what changed
        changed = ["%s: %s" % (e["event_data"]["host"], e["event_data"]["task"])
                   for e in run.events if e["event"] == "runner_on_ok" and e["event_data"].get("res", {}).get("changed")]
        assert not stats["changed"] and not changed, (stats["changed"], changed)


def test_check_mode_on_the_converged_environment_predicts_nothing():
    env = dict(_env(), ANSIBLE_STDOUT_CALLBACK="ansible.posix.json")
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", os.path.dirname(INVENTORY),
           "--check", str(SITE)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # the json callback's document, then profile_tasks' table (molecule's config)
    stats = json.JSONDecoder().raw_decode(out.stdout[out.stdout.index("{"):])[0]["stats"]
    assert set(stats) == set(HOSTS) | {"localhost"}
    assert all(s["changed"] == 0 and s["failures"] == 0 and s["unreachable"] == 0 for s in stats.values()), stats
