"""version_added in the module docs never names a release after the collection's own version (galaxy.yml)."""

from __future__ import annotations

import pathlib
import re

import yaml

ROOT = pathlib.Path(__file__).parents[2]


def _version(text):
    return tuple(int(x) for x in text.split("."))


def test_version_added_is_not_after_the_collection_version():
    current = _version(yaml.safe_load((ROOT / "galaxy.yml").read_text())["version"])
    later = []
    for path in sorted((ROOT / "plugins" / "modules").glob("*.py")):
        for found in re.findall(r"^\s*version_added: ['\"]?([0-9.]+)", path.read_text(), re.M):
            if _version(found) > current:
                later.append("%s: %s" % (path.name, found))
    assert later == []
