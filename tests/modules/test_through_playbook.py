"""Module tests call modules in the test process (in_process.py); every module also has a test that calls it
through ansible-playbook, as users do, so that its packaging and the controller's part stay tested."""

from __future__ import annotations

import pathlib
import re

from conftest import ROOT, run_play
from in_process import WITH_ACTION_PLUGIN, run_module

MARKER = re.compile(r'^@pytest\.mark\.through_playbook\(([^)]*)\)', re.M)


def test_every_module_has_a_test_through_ansible_playbook():
    modules = {p.stem for p in (ROOT / "plugins" / "modules").glob("*.py") if p.stem != "__init__"}
    marked = set()
    for path in pathlib.Path(__file__).parent.glob("test_*.py"):
        for args in MARKER.findall(path.read_text(encoding="utf-8")):
            marked.update(re.findall(r'"([a-z_]+)"', args))
    assert modules - WITH_ACTION_PLUGIN - marked == set()
    assert marked <= modules


def test_a_failing_module_reads_the_same_both_ways():
    """The in-process result is the controller's: a module's own failure, its message naming the field."""
    args = {"event_name": "api requests", "display_name": "API", "api_key": "sk_test_x", "api_base": "http://127.0.0.1:9"}
    direct = run_module("billing_meter", args)
    play = {"hosts": "localhost", "gather_facts": False,
            "tasks": [{"name": "t", "selfbase.platform.billing_meter": args, "register": "r", "ignore_errors": True}]}
    through = run_play(play)[0]
    assert direct["failed"] is True and through["failed"] is True
    assert direct["msg"] == through["msg"], (direct, through)
    assert direct["invocation"] == through["invocation"]
    assert "sk_test_x" not in repr(direct) and "sk_test_x" not in repr(through)
