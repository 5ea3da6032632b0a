"""What the scenarios' testinfra tests share: the hosts of the scenario, by name.

A test file imports it with
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources"))
"""

import os
import subprocess
import time

import testinfra
from testinfra.backend.docker import DockerBackend

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
# docker exec's environment for a container without its own
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_INIT = {}  # container -> (pid of its init, hostname)
_docker_exec = DockerBackend.run


def _init(name, fresh=False):
    """The container's init process and hostname; looked up again once that process is gone (a restart)."""
    found = _INIT.get(name)
    if found and not fresh:
        try:
            with open(f"/proc/{found[0]}/comm", encoding="utf-8") as fh:
                if fh.read().strip() == "systemd":
                    return found
        except OSError:
            pass
    res = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}} {{.Config.Hostname}}", name],
                         capture_output=True, text=True, check=False)
    pid, hostname = (res.stdout.strip().split(" ", 1) + [""])[:2]
    _INIT[name] = found = (pid, hostname) if res.returncode == 0 and pid not in ("", "0") else None
    return found


def _nsenter_run(self, command, *args, **kwargs):
    """What ``docker exec NAME /bin/sh -c COMMAND`` does, entering the container's namespaces directly:
    the verify tests run over a thousand commands, and each docker exec costs dockerd, containerd and runc
    several times the CPU of the command."""
    init = _init(self.name) if self.user is None else None
    if init is None:  # another user, or the container is not running: docker exec says what it says
        return _docker_exec(self, command, *args, **kwargs)
    cmd = self.get_command(command, *args)
    enter = "nsenter -t %s -a env -i PATH=%s HOME=/root HOSTNAME=%s /bin/sh -c %s"
    out = self.run_local(enter, init[0], PATH, init[1], cmd)
    if out.rc != 0 and out.stderr.startswith("nsenter:"):  # restarted between the look-up and the call
        init = _init(self.name, fresh=True)
        if init is None:
            return _docker_exec(self, command, *args, **kwargs)
        out = self.run_local(enter, init[0], PATH, init[1], cmd)
    out.command = self.encode(cmd)
    return out


DockerBackend.run = _nsenter_run


def ansible_host(name):
    """A host through the scenario's inventory (``host.ansible`` works on it)."""
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def docker_host(name):
    """A host by its container (``docker exec``, entered directly: see ``_nsenter_run``): much faster than one
    Ansible run per command."""
    return testinfra.get_host(f"docker://{name}")


def until(predicate, timeout=60):
    """Call predicate every second until it returns a true value or timeout seconds passed; return the last value."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value or time.time() > deadline:
            return value
        time.sleep(1)
