"""Static rules for the shipped migrations (the database security rules of the README), read from the SQL
itself, so that a new migration that breaks one fails here before any database runs it."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import pathlib
import re

import pytest

MIGRATIONS = sorted((pathlib.Path(__file__).parents[4] / "plugins/module_utils/migrations").glob("v[0-9]*.py"))
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


# Released migrations are frozen: every test database is new, so an edit to a shipped migration would pass every
# other test while databases already at that version never run the edited SQL.

RELEASED = json.loads((pathlib.Path(__file__).parent / "released_migrations.json").read_text())


def _load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_released_migrations_are_unchanged():
    current = {m.VERSION: {"name": m.NAME, "sha256": hashlib.sha256(m.SQL.encode("utf-8")).hexdigest()}
               for m in map(_load, MIGRATIONS)}
    changed = sorted(v for v, entry in RELEASED.items() if current.get(v) != entry)
    assert changed == [], "released migrations were edited or removed: %s; add a new migration instead" % changed


def test_versions_are_contiguous_and_match_their_file_names():
    modules = [_load(p) for p in MIGRATIONS]
    assert [m.VERSION for m in modules] == ["%04d" % i for i in range(1, len(modules) + 1)]
    assert [p.name for p in MIGRATIONS] == ["v%s_%s.py" % (m.VERSION, m.NAME) for m in modules]
    listed = re.search(r"import \((.*?)\)", (MIGRATIONS[0].parent / "__init__.py").read_text(), re.S).group(1)
    assert [n.strip() for n in listed.split(",") if n.strip()] == [p.stem for p in MIGRATIONS]


def test_the_freeze_catches_an_edit(tmp_path):
    """The check above fails on a shipped migration with one character changed."""
    edited = tmp_path / MIGRATIONS[0].name
    edited.write_text(MIGRATIONS[0].read_text().replace("CREATE TABLE", "CREATE  TABLE", 1))
    m = _load(edited)
    assert hashlib.sha256(m.SQL.encode("utf-8")).hexdigest() != RELEASED[m.VERSION]["sha256"]
