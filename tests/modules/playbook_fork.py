"""ansible-playbook without its start-up: a process per pytest worker that imports ansible once, then forks a child
for each run, which runs ansible-playbook's own entry point with the arguments given. Importing ansible costs about
half of a one-task playbook's CPU time. The module tests run their through_playbook tests, and every call with
SELFBASE_MODULE_TESTS=playbook, this way (the others in the test process: in_process.py).

The server is single-threaded, so forking is safe. Ansible reads its configuration (ANSIBLE_*) on import: a run
whose ANSIBLE_* settings differ from the server's starts ansible-playbook itself; other variables (a module's
endpoint or key from the environment) are set in the child."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading

SERVER = r"""
import json, os, sys, traceback
from ansible.cli.playbook import PlaybookCLI
import ansible.executor.playbook_executor, ansible.plugins.strategy.linear  # noqa: F401  (imported before forking)

protocol = os.fdopen(os.dup(1), "w")
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.environ.clear()
        os.environ.update(req["env"])
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        for fd, path in ((1, req["out"]), (2, req["err"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
        rc = 250
        try:
            PlaybookCLI.cli_executor(["ansible-playbook"] + req["args"])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
    _, status = os.waitpid(pid, 0)
    protocol.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n")
    protocol.flush()
"""


class PlaybookServer:
    """run(args, env) -> (stdout, stderr), as subprocess.run of ansible-playbook with that environment."""

    def __init__(self, env):
        self._ansible = _ansible_settings(env)
        self._proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      env=env, text=True)
        self._lock = threading.Lock()

    def run(self, args, env):
        if _ansible_settings(env) != self._ansible:
            proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook")] + args,
                                  capture_output=True, text=True, env=env, check=False)
            return proc.stdout, proc.stderr
        with self._lock, tempfile.TemporaryDirectory() as tmp:
            out, err = os.path.join(tmp, "out"), os.path.join(tmp, "err")
            self._proc.stdin.write(json.dumps({"args": args, "env": env, "out": out, "err": err}) + "\n")
            self._proc.stdin.flush()
            answer = self._proc.stdout.readline()
            if not answer:
                raise RuntimeError("the playbook server stopped (rc %s)" % self._proc.poll())
            with open(out, encoding="utf-8") as o, open(err, encoding="utf-8") as e:
                return o.read(), e.read()

    def close(self):
        self._proc.stdin.close()
        self._proc.wait(timeout=30)


def _ansible_settings(env):
    return dict((k, v) for k, v in env.items() if k.startswith("ANSIBLE_"))
