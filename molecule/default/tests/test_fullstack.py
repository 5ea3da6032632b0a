"""Verify the full stack across tiers, after site.yml converged four hosts.

Also runs site.yml again the way AWX does (ansible-runner), which is the
scenario's idempotence check, and in check mode, and asserts that neither
finds anything to change.
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import ansible_runner
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources"))
from molecule_hosts import INVENTORY, ansible_host as _host  # noqa: E402  pylint: disable=wrong-import-position

ROOT = pathlib.Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
SITE = ROOT / "playbooks" / "site.yml"
ADDR = {"db": "172.30.93.11", "api": "172.30.93.12", "proxy": "172.30.93.13", "mon": "172.30.93.14"}
HOSTS = ["default-db", "default-api", "default-proxy", "default-mon"]


def _env():
    return dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".cache" / "collections"), ANSIBLE_NOCOLOR="1",
                ANSIBLE_FORCE_COLOR="false", ANSIBLE_PIPELINING="true")


def _psql(sql):
    """Run SQL on the db host as postgres; returns the completed command."""
    return _host("default-db").run("runuser -u postgres -- psql -d selfbase -v ON_ERROR_STOP=1 -qXAtc %s", sql)


@pytest.mark.parametrize("name,slug", [("acme.selfbase.test", "acme"), ("app.acme.test", "acme"),
                                       ("globex.selfbase.test", "globex")])
def test_tenant_domain_reaches_the_app_with_its_tenant(name, slug):
    # From the monitoring host, through nginx on the proxy host over TLS, to the
    # stand-in app on the api host; a spoofed header is replaced.
    cmd = _host("default-mon").run(
        "curl -sk --fail --max-time 10 --resolve %s:443:%s -H 'X-Tenant-Slug: evil' https://%s/hello",
        name, ADDR["proxy"], name)
    assert cmd.rc == 0, cmd.stderr
    echoed = json.loads(cmd.stdout)
    headers = {k.lower(): v for k, v in echoed["headers"].items()}
    assert headers["x-tenant-slug"] == [slug]  # one value: the client's is gone
    assert echoed["path"] == "/hello"


def test_unknown_tenant_is_refused():
    cmd = _host("default-mon").run(
        "curl -sk -o /dev/null -w '%%{http_code}' --resolve nobody.selfbase.test:443:%s https://nobody.selfbase.test/",
        ADDR["proxy"])
    assert cmd.stdout == "421"


def test_requests_through_nginx_are_metered():
    """The metering agent on the proxy host records what nginx served (the requests above) through its own login."""
    query = ("SELECT COALESCE(sum(e.quantity), 0) FROM platform.usage_events e JOIN platform.tenants t "
             "ON t.id = e.tenant_id WHERE t.slug = 'acme' AND e.metric = 'api_requests' "
             "AND e.idempotency_key LIKE 'edge/meter_default_proxy/%'")
    deadline = time.time() + 60
    while int(_psql(query).stdout.strip() or 0) < 2 and time.time() < deadline:
        time.sleep(2)
    assert int(_psql(query).stdout.strip()) >= 2


def test_prometheus_scrapes_every_host():
    mon = _host("default-mon")
    cmd = mon.run("curl -s --fail -u admin:molecule-Prom-Pw-5b7d http://%s:9090/api/v1/targets", ADDR["mon"])
    assert cmd.rc == 0, cmd.stderr
    targets = json.loads(cmd.stdout)["data"]["activeTargets"]
    node = {t["labels"]["instance"].split(":")[0]: t["health"] for t in targets if t["labels"]["job"] == "node"}
    assert set(node) == set(HOSTS)
    # a scrape may not have happened yet right after the converge: wait for it
    for _attempt in range(30):
        cmd = mon.run("curl -s -u admin:molecule-Prom-Pw-5b7d http://%s:9090/api/v1/targets", ADDR["mon"])
        targets = json.loads(cmd.stdout)["data"]["activeTargets"]
        down = [(t["labels"]["job"], t["labels"]["instance"]) for t in targets if t["health"] != "up"]
        if not down:
            break
        mon.run("sleep 2")
    assert not down
    assert {t["labels"]["job"] for t in targets} >= {"node", "postgres", "nginx", "prometheus", "alertmanager"}


def test_hard_quota_is_enforced_by_postgresql():
    # acme may have 3 members (test inventory); the 4th insert is refused with
    # the platform's SQLSTATE. Rolled back, so the environment stays converged.
    sql = ("BEGIN; INSERT INTO platform.tenant_members (tenant_id, user_id) "
           "SELECT t.id, gen_random_uuid() FROM platform.tenants t, generate_series(1, %d) WHERE t.slug = 'acme'; ROLLBACK;")
    assert _psql(sql % 3).rc == 0
    refused = _psql(sql % 4)
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


def test_site_through_ansible_runner_changes_nothing():
    """The way AWX runs a job template: ansible-runner, artifacts checked, and with
    Ansible's own strategy, as users run the roles (Molecule's runs use Mitogen's)."""
    with tempfile.TemporaryDirectory() as data:
        run = ansible_runner.run(private_data_dir=data, playbook=str(SITE), inventory=os.path.dirname(INVENTORY),
                                 envvars=dict(_env(), ANSIBLE_STRATEGY="ansible.builtin.linear"), quiet=True)
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


def test_billing_reached_stripe_and_the_database():
    # The price book is in Stripe (the contract fake) and in PostgreSQL, and
    # acme's subscription is mirrored.
    import urllib.request
    req = urllib.request.Request("http://127.0.0.1:12112/v1/products?limit=100",
                                 headers={"Authorization": "Bearer sk_test_molecule"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        products = json.load(resp)["data"]
    assert sorted(p["metadata"]["plan_code"] for p in products) == ["pro", "starter"]
    plans = _psql("SELECT string_agg(code || ':' || (stripe_product_id IS NOT NULL)::text, ',' ORDER BY code) "
                  "FROM platform.plans")
    assert plans.stdout.strip() == "pro:true,starter:true"
    sub = _psql("SELECT s.status FROM platform.subscriptions s JOIN platform.tenants t ON t.id = s.tenant_id "
                "WHERE t.slug = 'acme'")
    assert sub.stdout.strip() in ("active", "trialing")
