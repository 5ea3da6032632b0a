"""The role's configuration validator lets the real postgres binary judge a file."""

from __future__ import annotations

import glob
import os
import pathlib
import shutil
import subprocess

import pytest

SCRIPT = pathlib.Path(__file__).parents[2] / "roles/postgresql/files/postgresql-validate-conf"
BINDIRS = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


def _validate(tmp_path, text):
    # The validator runs as root on the managed host; the test needs the same.
    if os.geteuid() != 0 or not BINDIRS or shutil.which("runuser") is None:
        pytest.fail("needs root and Debian's PostgreSQL server package (scripts/testbed.sh installs it)")
    conf = tmp_path / "test.conf"
    conf.write_text(text)
    return subprocess.run(["sh", str(SCRIPT), BINDIRS[-1], str(conf)],
                          capture_output=True, text=True, check=False)


def test_accepts_valid_settings(tmp_path):
    res = _validate(tmp_path, "shared_buffers = '256MB'\nssl = 'on'\nwork_mem = '4096kB'\n")
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("text, message", [
    ("shared_buffers = '12XB'\n", 'invalid value for parameter "shared_buffers"'),
    ("no_such_setting = '1'\n", 'unrecognized configuration parameter "no_such_setting"'),
    ("max_connections = 'many'\n", 'invalid value for parameter "max_connections"'),
])
def test_rejects_invalid_settings(tmp_path, text, message):
    res = _validate(tmp_path, text)
    assert res.returncode != 0
    assert message in res.stderr
