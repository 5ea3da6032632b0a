"""The production scenario's hosts, as its test files share them: names, addresses, the Patroni cluster, SQL as
postgres on its leader, and a writer's test login."""

import json
import os
import pathlib
import subprocess
import sys

import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources"))
# pylint: disable=wrong-import-position
from molecule_hosts import INVENTORY, docker_host  # noqa: E402
from patroni_cluster import Cluster  # noqa: E402

NET = "172.30.89."
DB = ["prod-db1", "prod-db2", "prod-db3"]
API = {"prod-api1": NET + "21", "prod-api2": NET + "22"}
EDGE = {"prod-edge1": NET + "31", "prod-edge2": NET + "32"}
MON, MON_ADDR = "prod-mon1", NET + "41"
BACKUP = "prod-backup1"
# The dedicated tenant cluster (tenant_db), a PostgreSQL server of its own.
TENANT_DB, TENANT_DB_ADDR = "prod-tdb1", NET + "61"
HOSTS = DB + list(API) + list(EDGE) + [MON, BACKUP, TENANT_DB]
# The writer's test login and its own schema, through prod-api1's HAProxy: 5000 the leader's PgBouncer,
# 5001 a replica, 5002 the leader's PostgreSQL.
PROBE_PASSWORD = "molecule-prod-probe-5d1f"
PROBE_DSN = "host=" + API["prod-api1"] + " port={port} dbname=selfbase user={user} password=" + PROBE_PASSWORD
RW, RO, DIRECT = (PROBE_DSN.format(port=p, user="ha_probe") for p in (5000, 5001, 5002))
CLUSTER = Cluster(DB, "prod-api1", RW)
# The Stripe contract fake on the network's gateway (prepare starts it) and the test vault's values.
STRIPE = "http://172.30.89.1:12112"
VAULT = yaml.safe_load((pathlib.Path(__file__).resolve().parents[1] / "inventory/group_vars/all/vault.yml").read_text())


def leader():
    """The leader's name, once every other member streams from it."""
    return CLUSTER.wait_for("a healthy cluster", CLUSTER.healthy)


def psql(sql, member=None):
    """Run SQL as postgres in the platform database on the leader (or the given member); the completed command."""
    return docker_host(member or leader()).run("runuser -u postgres -- psql -d selfbase -v ON_ERROR_STOP=1 -qXAtc %s", sql)


def secret(name):
    """A secret the roles generated once and keep in the controller's secrets directory."""
    return (pathlib.Path(INVENTORY).parent / ".secrets" / name).read_text().strip()


def prepare_writer():
    """The writer's login, schema and table ha_probe (idempotent)."""
    CLUSTER.prepare_probe(PROBE_PASSWORD)


def prometheus(path):
    """The data of Prometheus's HTTP API at PATH, asked from the monitoring host with the test vault's password."""
    out = docker_host(MON).run("curl -s --fail -u %s http://%s:9090%s",
                               "admin:" + VAULT["vault_monitoring_prometheus_web_password"], MON_ADDR, path)
    assert out.rc == 0, out.stderr
    return json.loads(out.stdout)["data"]


def playbook(name, *args, timeout=None):
    """Run playbooks/NAME (or the playbook at the absolute path NAME) against the scenario's inventory, as a user
    would; the completed process."""
    root = pathlib.Path(__file__).resolve().parents[3]
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(root / ".cache" / "collections"), ANSIBLE_FORCE_COLOR="false",
               ANSIBLE_NOCOLOR="1", ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default")
    return subprocess.run(["ansible-playbook", "-i", os.path.dirname(INVENTORY), str(root / "playbooks" / name), *args],
                          env=env, capture_output=True, text=True, check=False, timeout=timeout)
