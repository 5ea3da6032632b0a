"""scripts/demo.sh: Hasura and auth run when their images are here or can be pulled, and the smoke check waits
(a bounded time) for every Prometheus target's first scrape."""

from __future__ import annotations

import os
import pathlib
import stat
import subprocess
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).parents[2]


def _decide(tmp_path, present=(), pullable=(), **env):
    """api_containers_available with a stub docker that has `present` images and can pull `pullable` ones."""
    stub = tmp_path / "docker"
    stub.write_text('#!/bin/sh\n'
                    'echo "$@" >> "%s/calls"\n'
                    'case "$1 $2" in\n'
                    '  "image inspect") for i in $PRESENT; do [ "$i" = "$3" ] && exit 0; done; exit 1;;\n'
                    'esac\n'
                    'if [ "$1" = pull ]; then for i in $PULLABLE; do [ "$i" = "$3" ] && exit 0; done; exit 1; fi\n'
                    'exit 2\n' % tmp_path)
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    run_env = dict(os.environ, PATH="%s:%s:%s" % (tmp_path, os.path.dirname(sys.executable), os.environ["PATH"]),
                   PRESENT=" ".join(present), PULLABLE=" ".join(pullable), CI="")
    run_env.update(env)
    out = subprocess.run(["bash", "-c", ". scripts/demo-api.sh && api_containers_available"], cwd=ROOT,
                         env=run_env, capture_output=True, text=True, check=True)
    calls = (tmp_path / "calls").read_text() if (tmp_path / "calls").exists() else ""
    return out.stdout.strip(), out.stderr, calls


HASURA, AUTH = "hasura/graphql-engine:v2.48.9", "nhost/auth:0.49.0"


def test_images_are_the_pinned_ones():
    for role, image in (("hasura", HASURA), ("auth", AUTH)):
        d = yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text())
        assert "%s:%s" % (d[role + "_image"], d[role + "_version"]) == image


@pytest.mark.parametrize("present,pullable,expected", [
    ((HASURA, AUTH), (), "true"),
    ((), (HASURA, AUTH), "true"),
    ((HASURA,), (AUTH,), "true"),
    ((HASURA,), (), "false"),
    ((), (), "false"),
])
def test_containers_run_when_images_are_here_or_pullable(tmp_path, present, pullable, expected):
    decided, said, _calls = _decide(tmp_path, present, pullable)
    assert decided == expected
    assert ("run as containers" if expected == "true" else "cannot be pulled: Hasura and auth stay off") in said


@pytest.mark.parametrize("env", [{"SELFBASE_DEMO_API_CONTAINERS": "off"}, {"CI": "true"}])
def test_ci_and_off_never_start_them(tmp_path, env):
    decided, said, calls = _decide(tmp_path, (HASURA, AUTH), (), **env)
    assert decided == "false" and "stay off" in said and calls == ""


def test_smoke_check_waits_for_the_first_scrape_and_says_what_ran():
    plays = yaml.safe_load((ROOT / "playbooks" / "dev_extras.yml").read_text())
    tasks = {t["name"]: t for play in plays for t in play.get("tasks", [])}
    targets = tasks["Read the Prometheus targets after their first scrape"]
    assert "selectattr('health', 'eq', 'unknown')" in targets["until"]
    assert targets["retries"] * targets["delay"] <= 120  # bounded
    shown = " ".join(tasks["Show the smoke check and how to reach the environment"]["ansible.builtin.debug"]["msg"])
    assert "Hasura and auth: running as containers" in shown and "Hasura and auth: NOT started" in shown
    demo = (ROOT / "scripts" / "demo.sh").read_text()
    assert "API_CONTAINERS=$(api_containers_available)" in demo
    assert "-e \"selfbase_dev_api_containers=$API_CONTAINERS\"" in demo
