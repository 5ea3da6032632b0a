"""Every role's meta/argument_specs.yml matches its defaults/main.yml."""

from __future__ import annotations

import pathlib

import pytest
import yaml

ROLES = sorted(p for p in (pathlib.Path(__file__).parents[2] / "roles").iterdir() if p.is_dir())


def _load(path):
    return yaml.safe_load(path.read_text()) or {}


def _options(role):
    """The main entry point's options; for an internal role entered only by tasks_from (container_service), the
    options of all its entry points that have a default."""
    specs = _load(role / "meta" / "argument_specs.yml")["argument_specs"]
    if "main" in specs:
        return specs["main"]["options"]
    merged = {}
    for spec in specs.values():
        merged.update((k, v) for k, v in spec["options"].items() if not v.get("required"))
    return merged


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_spec_keys_match_defaults(role):
    defaults = _load(role / "defaults" / "main.yml")
    options = _options(role)
    assert sorted(defaults) == sorted(options)


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_spec_defaults_match_defaults(role):
    defaults = _load(role / "defaults" / "main.yml")
    options = _options(role)
    mismatched = {k: (defaults[k], spec.get("default")) for k, spec in options.items()
                  if k in defaults and spec.get("default") != defaults[k]}
    assert mismatched == {}


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_public_variables_are_role_prefixed(role):
    defaults = _load(role / "defaults" / "main.yml")
    assert [k for k in defaults if not k.startswith(f"{role.name}_")] == []


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_other_entry_points_agree_with_main(role):
    # e.g. monitoring's node_exporter entry point: same options, same defaults
    specs = _load(role / "meta" / "argument_specs.yml")["argument_specs"]
    main = _options(role)
    for name, spec in specs.items():
        if name == "main":
            continue
        assert (role / "tasks" / f"{name}.yml").is_file(), name
        for option, value in spec.get("options", {}).items():
            if value.get("required") and "main" not in specs:
                continue
            assert option in main, (name, option)
            assert value.get("default") == main[option].get("default"), (name, option)
            assert value.get("type", "str") == main[option].get("type", "str"), (name, option)


@pytest.mark.parametrize("role, variable, entry", [
    ("postgresql", "postgresql_users", {"name": "app", "pasword": "x"}),
    ("postgresql", "postgresql_databases", {"name": "appdb", "ownr": "app"}),
    ("postgresql", "postgresql_extensions", {"name": "citext", "database": "appdb"}),
    ("postgresql", "postgresql_hba_rules", {"contype": "hostssl", "user": "app"}),
    ("nginx", "nginx_tenants", {"slug": "acme", "domain": "acme.example"}),
    ("hasura", "hasura_metadata_tables", {"name": "projects", "tenant_colum": "tenant_id"}),
    ("monitoring", "monitoring_alertmanager_receivers", {"name": "ops", "webhook_url": ["http://x"]}),
])
def test_a_typo_in_a_list_entry_fails_argument_validation(role, variable, entry):
    """Ansible validates a role's variables against meta/argument_specs.yml when the role starts."""
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
    spec = _load(pathlib.Path(__file__).parents[2] / "roles" / role / "meta" / "argument_specs.yml")
    options = spec["argument_specs"]["main"]["options"]
    result = ArgumentSpecValidator({variable: options[variable]}).validate({variable: [entry]})
    typo = sorted(set(entry) - set(options[variable]["options"]))
    assert typo and typo[0] in " ".join(result.error_messages), result.error_messages


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_defaults_pass_their_own_argument_spec(role):
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
    defaults = _load(role / "defaults" / "main.yml")
    options = _options(role)
    literal = {k: v for k, v in defaults.items() if "{{" not in str(v)}
    # a templated default (an int from a tier's policy) has its value only when Ansible templates it
    options = {k: {o: v for o, v in spec.items() if not (o == "default" and "{{" in str(v))} for k, spec in options.items()}
    result = ArgumentSpecValidator(options).validate(literal)
    assert result.error_messages == []
