"""Every shipped inventory, rendered through every role's argument spec and preflight checks, on the hosts
that site.yml applies each role to: a wrong combination in an example inventory fails here, before anyone
converges it. The playbook runs with a local connection; only the secrets of the example vaults are filled in."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import tempfile

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
PLAYBOOK = ROOT / "tests" / "unit" / "files" / "inventory_preflight.yml"
INVENTORIES = sorted(p.name for p in (ROOT / "inventories").iterdir() if (p / "hosts.yml").is_file())
# Values of the shape each secret must have (the vault examples leave them empty).
VAULT = {
    "vault_stripe_api_key": "sk_test_" + "a" * 24,
    "vault_stripe_webhook_secret": "whsec_" + "b" * 32,
    "vault_auth_encryption_key": "c" * 64,
    "vault_alertmanager_slack_webhook": "https://hooks.slack.com/services/T0/B0/X",
}


def _vault_example(inventory):
    path = ROOT / "inventories" / inventory / "group_vars" / "all" / "vault.yml.example"
    if not path.is_file():
        return None
    keys = yaml.safe_load(path.read_text())
    return {k: VAULT.get(k, "test-secret-" + k + "-0123456789abcdef0123456789") for k in keys}


def _facts():
    """This machine's minimal facts, gathered once, in a fact cache under every inventory host's name: the checks
    need the facts of a Debian host, not a setup run per host and playbook."""
    if not _FACTS:
        cache = pathlib.Path(tempfile.mkdtemp(prefix="selfbase-facts-"))
        env = dict(os.environ, ANSIBLE_CACHE_PLUGIN="jsonfile", ANSIBLE_CACHE_PLUGIN_CONNECTION=str(cache))
        subprocess.run([str(pathlib.Path(sys.executable).with_name("ansible")), "localhost", "-c", "local",
                        # gather_facts, not setup: only its result marks the facts as gathered, so that smart
                        # gathering takes them from the cache instead of running setup on every host; network for
                        # the addresses the common role would otherwise gather from each peer
                        "-m", "ansible.builtin.gather_facts", "-a", "gather_subset=min,network",
                        "-e", "ansible_python_interpreter=" + sys.executable],
                       cwd=ROOT, env=env, capture_output=True, check=True, timeout=120)
        gathered = next(cache.glob("*localhost"))  # the plugin may prefix the host's name
        prefix = gathered.name[:-len("localhost")]
        for inventory in INVENTORIES:
            for host in _hosts(inventory):
                (cache / (prefix + host)).write_text(gathered.read_text())
        _FACTS.append(str(cache))
    return _FACTS[0]


_FACTS = []


def _run(inventory, tmp_path, extra=None, limit=None):
    cmd = [str(pathlib.Path(sys.executable).with_name("ansible-playbook")), "-i", str(ROOT / "inventories" / inventory),
           str(PLAYBOOK), "-e", "ansible_connection=local", "-e", "ansible_become=false",
           "-e", "ansible_python_interpreter=" + sys.executable]
    secrets = _vault_example(inventory)
    if secrets is not None:
        (tmp_path / "vault.yml").write_text(yaml.safe_dump(secrets))
        cmd += ["-e", "@" + str(tmp_path / "vault.yml")]
    password = ROOT / "inventories" / inventory / "vault-password.txt"
    if password.is_file():
        cmd += ["--vault-password-file", str(password)]
    if extra:
        (tmp_path / "extra.yml").write_text(yaml.safe_dump(extra))
        cmd += ["-e", "@" + str(tmp_path / "extra.yml")]
    if limit:
        cmd += ["--limit", limit]
    env = dict(os.environ, ANSIBLE_GATHER_SUBSET="min", ANSIBLE_FORKS="10", ANSIBLE_NOCOLOR="1",
               ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_GATHERING="smart", ANSIBLE_CACHE_PLUGIN="jsonfile",
               ANSIBLE_CACHE_PLUGIN_CONNECTION=_facts(),
               # the test harness's garbage collector setting (tests/callback_plugins/gc_freeze.py)
               ANSIBLE_CALLBACK_PLUGINS=str(ROOT / "tests" / "callback_plugins"), ANSIBLE_CALLBACKS_ENABLED="gc_freeze")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)


def _recap(out):
    """PLAY RECAP: host -> (ok, failed)."""
    rows = re.findall(r"^(\S+)\s+: ok=(\d+)\s+changed=\d+\s+unreachable=(\d+)\s+failed=(\d+)", out, re.M)
    return {h: (int(ok), int(unreachable) + int(failed)) for h, ok, unreachable, failed in rows}


def _hosts(inventory):
    def walk(group):
        found = set((group or {}).get("hosts") or {})
        for child in ((group or {}).get("children") or {}).values():
            found |= walk(child)
        return found
    return walk(yaml.safe_load((ROOT / "inventories" / inventory / "hosts.yml").read_text())["all"])


_RUNS = {}


def _converged(inventory, tmp_path):
    """One run per inventory for the tests that read it."""
    if inventory not in _RUNS:
        _RUNS[inventory] = _run(inventory, tmp_path)
    return _RUNS[inventory]


@pytest.mark.parametrize("inventory", INVENTORIES)
def test_inventory_passes_every_role_preflight(inventory, tmp_path):
    result = _converged(inventory, tmp_path)
    recap = _recap(result.stdout)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    # every host of the inventory was checked, and none failed
    assert set(recap) == _hosts(inventory)
    assert all(failed == 0 for _ok, failed in recap.values())
    # every role that site.yml applies was checked somewhere
    checked = set(re.findall(r"TASK \[selfbase\.platform\.(\w+) : ", result.stdout))
    expected = {"common", "monitoring", "postgresql", "nginx", "docker_engine", "hasura", "auth"}
    assert expected <= checked, sorted(expected - checked)


@pytest.mark.parametrize("inventory", ["production", "staging"])
def test_cluster_inventories_apply_every_tier(inventory, tmp_path):
    """The cluster shapes have backups, HAProxy, etcd, metering and billing: their preflights ran."""
    result = _converged(inventory, tmp_path)
    checked = set(re.findall(r"TASK \[selfbase\.platform\.(\w+) : ", result.stdout))
    assert {"backup", "haproxy", "etcd", "metering", "billing"} <= checked, sorted(checked)


# The wrong combinations the preflights must refuse in the cluster shape, each naming the variable.
API = "api1.prod.example.com"
EDGE = "edge1.prod.example.com"


@pytest.mark.parametrize("extra,limit,named", [
    # the API tier's first review: the client port (HAProxy on the api host) used on the db host
    ({"hasura_db_server_port": 5000}, API, "hasura_db_server_port"),
    ({"billing_db_server_port": 5002}, API, "billing_db_server_port"),
    ({"metering_db_server_port": 5002}, EDGE, "metering_db_server_port"),
    # the read-only port for a writer, a pooled port where a session is needed
    ({"hasura_db_port": 5001}, API, "hasura_db_port"),
    ({"hasura_metadata_db_port": 5000}, API, "hasura_metadata_db_port"),
    ({"hasura_db_use_prepared_statements": True}, API, "hasura_db_use_prepared_statements"),
    ({"auth_db_port": 5000}, API, "auth_db_port"),
    ({"billing_db_port": 5001}, API, "billing_db_port"),
    ({"metering_db_port": 5432}, EDGE, "metering_db_port"),
    # a backup repository with a short passphrase (a no_log check: the task is named, not the variable)
    ({"backup_cipher_passphrase": "short"}, "db:backup", "backup : Check the repository settings"),
])
def test_cluster_inventory_refuses_a_wrong_combination(extra, limit, named, tmp_path):
    result = _run("production", tmp_path, extra, limit)
    assert result.returncode != 0
    assert any(failed for _ok, failed in _recap(result.stdout).values())
    # the first failure is a preflight check, and its message (or, for a secret, the task) names the variable
    failed_at = result.stdout.index("fatal: [")
    task = re.findall(r"^TASK \[(.*)\]", result.stdout[:failed_at], re.M)[-1]
    assert re.fullmatch(r"selfbase\.platform\.\w+ : Check .*", task), task
    assert named in task or named in result.stdout[failed_at:].split("\n", 1)[0], result.stdout[failed_at:][:2000]
