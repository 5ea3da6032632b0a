"""What the scenarios' testinfra tests share: the hosts of the scenario, by name.

A test file imports it with
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources"))
"""

import os
import time

import testinfra

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]


def ansible_host(name):
    """A host through the scenario's inventory (``host.ansible`` works on it)."""
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def docker_host(name):
    """A host by ``docker exec``: much faster than one Ansible run per command (the hosts are containers)."""
    return testinfra.get_host(f"docker://{name}")


def until(predicate, timeout=60):
    """Call predicate every second until it returns a true value or timeout seconds passed; return the last value."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value or time.time() > deadline:
            return value
        time.sleep(1)
