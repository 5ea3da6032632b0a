"""Static rules for the shipped migrations (ARCHITECTURE's database security rules), read from the SQL
itself, so that a new migration that breaks one fails here before any database runs it."""

from __future__ import annotations

import pathlib
import re

import pytest

MIGRATIONS = sorted((pathlib.Path(__file__).parents[2] / "plugins/module_utils/migrations").glob("v[0-9]*.py"))
PINNED = "SET search_path = pg_catalog, platform, pg_temp"
FUNCTION = re.compile(r"CREATE (?:OR REPLACE )?FUNCTION (platform\.\w+)\s*\(.*?\n\$\$;", re.S)


def final_definitions(texts):
    """The last definition of every platform function across the migrations, oldest first."""
    found = {}
    for text in texts:
        for m in FUNCTION.finditer(text):
            found[m.group(1)] = m.group(0)
    return found


def test_the_migrations_are_found():
    assert [p.name for p in MIGRATIONS][:3] == ["v0001_tenancy_core.py", "v0002_billing.py", "v0003_hardening.py"]


def test_every_definer_function_pins_search_path_with_pg_temp_last():
    defs = final_definitions(p.read_text() for p in MIGRATIONS)
    definers = {name: body for name, body in defs.items() if "SECURITY DEFINER" in body.split("AS $$")[0]}
    assert {"platform.record_usage", "platform.rollup_usage_event"} <= set(definers)
    assert [name for name, body in definers.items() if PINNED not in body.split("AS $$")[0]] == []


def test_the_rule_catches_the_0001_definitions():
    """0001 alone (before 0003 replaced them): the rule above must fail on it."""
    defs = final_definitions([MIGRATIONS[0].read_text()])
    unpinned = [n for n, b in defs.items() if "SECURITY DEFINER" in b and PINNED not in b]
    assert sorted(unpinned) == ["platform.record_usage", "platform.rollup_usage_event"]


@pytest.mark.parametrize("path", MIGRATIONS[2:], ids=lambda p: p.name)
def test_no_advisory_locks_after_0002(path):
    """Advisory keys can be computed and taken by any login: lock rows instead."""
    assert "pg_advisory" not in path.read_text()


def test_public_loses_temp():
    assert any("REVOKE TEMPORARY ON DATABASE" in p.read_text() for p in MIGRATIONS)
