"""What the scenarios' testinfra tests share: the hosts of the scenario, by name.

A test file imports it with
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources"))
"""

import os

import testinfra

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]


def ansible_host(name):
    """A host through the scenario's inventory (``host.ansible`` works on it)."""
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def docker_host(name):
    """A host by ``docker exec``: much faster than one Ansible run per command (the hosts are containers)."""
    return testinfra.get_host(f"docker://{name}")
