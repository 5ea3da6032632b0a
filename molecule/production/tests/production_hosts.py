"""The production scenario's hosts, as its test files share them: names, addresses, the Patroni cluster, and
SQL as postgres on its leader."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources"))
# pylint: disable=wrong-import-position
from molecule_hosts import docker_host  # noqa: E402
from patroni_cluster import Cluster  # noqa: E402

NET = "172.30.89."
DB = ["prod-db1", "prod-db2", "prod-db3"]
API = {"prod-api1": NET + "21", "prod-api2": NET + "22"}
EDGE = {"prod-edge1": NET + "31", "prod-edge2": NET + "32"}
MON, MON_ADDR = "prod-mon1", NET + "41"
HOSTS = DB + list(API) + list(EDGE) + [MON, "prod-backup1"]
CLUSTER = Cluster(DB, "prod-api1", None)


def leader():
    """The leader's name, once every other member streams from it."""
    return CLUSTER.wait_for("a healthy cluster", CLUSTER.healthy)


def psql(sql, member=None):
    """Run SQL as postgres in the platform database on the leader (or the given member); the completed command."""
    return docker_host(member or leader()).run("runuser -u postgres -- psql -d selfbase -v ON_ERROR_STOP=1 -qXAtc %s", sql)
