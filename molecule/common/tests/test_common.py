"""Verify the common role on real systemd hosts, over the real network between them.

The firewall is probed with TCP connects and UDP sends from one host to another:
"open" means a listener answered, "refused" means the packet passed the firewall
and reached a closed port (RST or ICMP port unreachable), and "timeout" means the
firewall dropped it. Listeners are transient systemd units started for the test.

In containers the clock cannot be set (timesyncd has ConditionVirtualization=!container,
chrony needs CAP_SYS_TIME), so time sync is checked as package, configuration and
enabled unit, plus the condition that keeps it from starting.
"""

import pathlib
import subprocess
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources"))
from molecule_hosts import ansible_host as _host  # noqa: E402  pylint: disable=wrong-import-position

ADDR = {"db": "172.30.94.11", "api": "172.30.94.12", "proxy": "172.30.94.13"}
# Listeners started for the probes: host -> TCP ports.
LISTENERS = {"db": [22, 5432, 18080], "api": [4000], "proxy": [80]}

PROBE = """
import socket, sys
proto, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.settimeout(1)
try:
    s.connect((addr, port))
    if proto == "udp":
        s.send(b"probe")
        s.recv(1)
    print("open")
except ConnectionRefusedError:
    print("refused")
except OSError:
    print("timeout")
"""


HOSTS = {name: _host(f"common-{name}") for name in ADDR}


def probe(src, dst, port, proto="tcp"):
    return HOSTS[src].check_output(f"python3 -c '{PROBE}' {proto} {ADDR[dst]} {port}").strip()


def drops(name):
    """Packets counted by the rule just before the input chain's drop policy."""
    out = HOSTS[name].check_output("nft list chain inet selfbase input")
    line = next(line for line in out.splitlines() if "dropped by policy" in line)
    return int(line.split("packets")[1].split()[0])


@pytest.fixture(scope="module", autouse=True)
def listeners():
    for name, ports in LISTENERS.items():
        for port in ports:
            HOSTS[name].check_output(
                f"systemd-run --unit=probe-{port} --property=Type=exec python3 -m http.server --bind 0.0.0.0 {port}")
    for name, ports in LISTENERS.items():
        for port in ports:
            HOSTS[name].check_output(f"timeout 10 sh -c 'until ss -ltn | grep -q \":{port} \"; do sleep 0.2; done'")
    yield
    for name, ports in LISTENERS.items():
        for port in ports:
            HOSTS[name].run(f"systemctl stop probe-{port}")


@pytest.mark.parametrize("src,dst,port,proto,expected", [
    # PostgreSQL: from api and monitoring hosts only
    ("api", "db", 5432, "tcp", "open"),
    ("proxy", "db", 5432, "tcp", "timeout"),
    # SSH: from common_admin_networks (the api host) only
    ("api", "db", 22, "tcp", "open"),
    ("proxy", "db", 22, "tcp", "timeout"),
    ("api", "proxy", 22, "tcp", "refused"),
    # Hasura and auth: from proxy hosts only
    ("proxy", "api", 4000, "tcp", "open"),
    ("db", "api", 4000, "tcp", "timeout"),
    # HTTP: from anyone
    ("db", "proxy", 80, "tcp", "open"),
    ("api", "proxy", 80, "tcp", "open"),
    ("api", "proxy", 443, "tcp", "refused"),
    # Exporters: from monitoring hosts (common-db) only
    ("db", "proxy", 9113, "tcp", "refused"),
    ("api", "proxy", 9113, "tcp", "timeout"),
    ("db", "proxy", 3903, "tcp", "refused"),
    ("db", "api", 9100, "tcp", "open"),  # node_exporter, from the monitoring role
    ("proxy", "api", 9100, "tcp", "timeout"),
    # Prometheus, Alertmanager, Grafana: from admin networks and monitoring hosts
    ("api", "db", 9090, "tcp", "refused"),
    ("proxy", "db", 3000, "tcp", "timeout"),
    # common_firewall_extra_rules: udp port and range, from proxy hosts only
    ("proxy", "db", 9990, "udp", "refused"),
    ("proxy", "db", 9999, "udp", "refused"),
    ("api", "db", 9991, "udp", "timeout"),
    ("proxy", "db", 9998, "udp", "timeout"),
    # A port no rule opens
    ("api", "db", 65000, "tcp", "timeout"),
])
def test_firewall_rules(src, dst, port, proto, expected):
    assert probe(src, dst, port, proto) == expected


def test_drop_is_counted():
    before = drops("db")
    assert probe("proxy", "db", 5432) == "timeout"
    assert drops("db") > before


def test_published_port_obeys_the_rules():
    """common-api publishes 8080 like Docker (DNAT to common-db:18080, prepare.yml)."""
    assert probe("proxy", "api", 8080) == "open"
    assert probe("db", "api", 8080) == "timeout"
    assert "published port, source not allowed" in HOSTS["api"].check_output("nft list chain inet selfbase published")


@pytest.mark.parametrize("name,table", [("db", "table ip foreign"), ("api", "table ip fakedocker")])
def test_foreign_tables_survive(name, table):
    host = HOSTS[name]
    assert table in host.check_output("nft list tables")
    host.check_output("systemctl reload selfbase-firewall")
    tables = host.check_output("nft list tables")
    assert table in tables and "table inet selfbase" in tables


def test_explicit_source_addresses_are_used():
    """common-proxy's common_firewall_source_addresses replace its derived address in its peers' rules."""
    rules = HOSTS["api"].check_output("nft list chain inet selfbase input")
    assert 'ip saddr 172.30.94.113 tcp dport { 4000, 8080 } accept comment "hasura and auth"' in rules


def test_container_bridges_trusted_on_api_hosts_only():
    assert 'iifname "br-*" accept' in HOSTS["api"].check_output("nft list chain inet selfbase input")
    assert "iifname" not in HOSTS["db"].check_output("nft list chain inet selfbase input")


def test_node_exporter_runs_everywhere():
    for host in HOSTS.values():
        assert host.service("prometheus-node-exporter").is_running


def test_unit_loads_and_removes_only_its_table():
    host = HOSTS["db"]
    unit = host.service("selfbase-firewall")
    assert unit.is_enabled and unit.is_running
    assert host.run("nft -c -f /etc/selfbase/firewall.nft").rc == 0
    host.check_output("systemctl stop selfbase-firewall")
    try:
        tables = host.check_output("nft list tables")
        assert "table inet selfbase" not in tables and "table ip foreign" in tables
    finally:
        host.check_output("systemctl start selfbase-firewall")
    assert "table inet selfbase" in host.check_output("nft list tables")
    assert probe("proxy", "db", 5432) == "timeout"


def test_timesyncd():
    host = HOSTS["db"]
    assert host.package("systemd-timesyncd").is_installed
    conf = host.file("/etc/systemd/timesyncd.conf.d/50-selfbase.conf").content_string
    assert "NTP=ntp1.selfbase.test ntp2.selfbase.test" in conf
    assert host.service("systemd-timesyncd").is_enabled
    # What keeps it from running here (and only here): it is a container.
    assert host.check_output("systemd-detect-virt --container") == "docker"
    assert "ConditionResult=no" in host.check_output("systemctl show -p ConditionResult systemd-timesyncd")


def test_chrony():
    host = HOSTS["api"]
    assert host.package("chrony").is_installed
    assert not host.package("systemd-timesyncd").is_installed
    conf = host.file("/etc/chrony/chrony.conf").content_string
    assert "server ntp1.selfbase.test iburst" in conf and "server ntp2.selfbase.test iburst" in conf
    assert "pool " not in conf
    assert host.run("chronyd -p -f /etc/chrony/chrony.conf").rc == 0
    assert host.service("chrony").is_enabled


def test_unattended_upgrades_security_only():
    host = HOSTS["db"]
    assert 'APT::Periodic::Unattended-Upgrade "1";' in host.file("/etc/apt/apt.conf.d/20auto-upgrades").content_string
    out = host.check_output("unattended-upgrade --dry-run --debug 2>&1 | grep '^Allowed origins are:'")
    origins = out.split(":", 1)[1].strip().split(", ")
    assert origins == ["origin=Debian,codename=bookworm-security,label=Debian-Security",
                       "origin=Debian,codename=bookworm,label=Debian-Security"]
    assert host.service("apt-daily-upgrade.timer").is_enabled


def test_unattended_upgrades_off():
    host = HOSTS["api"]
    assert not host.package("unattended-upgrades").is_installed
    periodic = host.check_output("apt-config dump APT::Periodic")
    assert 'APT::Periodic::Unattended-Upgrade "0";' in periodic


def test_firewall_comes_back_after_a_reboot():
    subprocess.run(["docker", "restart", "common-proxy"], check=True, capture_output=True)
    host = HOSTS["proxy"]
    # Started by systemd at boot (WantedBy=sysinit.target), not by Ansible.
    assert host.run("timeout 30 sh -c 'until systemctl is-active -q selfbase-firewall; do sleep 0.5; done'").rc == 0
    assert probe("db", "proxy", 80) == "refused"  # open to all; the test's listener is gone
    assert probe("api", "proxy", 9113) == "timeout"
