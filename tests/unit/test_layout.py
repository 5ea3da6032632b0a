"""Where code lives: host services in roles/host_services, the code they share with the modules in
plugins/module_utils (listed in the shared_code lookup), and no role reaching outside its own directory."""

import fnmatch
import pathlib
import re

import pytest
import yaml
from ansible.errors import AnsibleLookupError

from ansible_collections.selfbase.platform.plugins.lookup import shared_code

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_lookup_returns_a_shared_file_as_it_is_in_module_utils():
    text = shared_code.LookupModule().run(["stripe_http"])
    assert text == [(ROOT / "plugins/module_utils/stripe_http.py").read_text()]


def test_the_lookup_refuses_module_utils_that_are_not_shared():
    with pytest.raises(AnsibleLookupError, match="'postgres' is not shared with host services"):
        shared_code.LookupModule().run(["postgres"])


@pytest.mark.parametrize("name", shared_code.SHARED)
def test_shared_code_imports_nothing_from_ansible_but_other_shared_code(name):
    text = (ROOT / "plugins/module_utils" / (name + ".py")).read_text()
    imports = re.findall(r"^\s*(?:from|import)\s+(ansible\S*)", text, re.M)
    allowed = ["ansible_collections.selfbase.platform.plugins.module_utils." + s for s in shared_code.SHARED]
    assert [i for i in imports if i not in allowed] == []


def test_host_services_import_the_collection_only_through_shared_code():
    for path in (ROOT / "roles/host_services/files").rglob("*"):
        if path.is_file():
            for module in re.findall(r"^\s*from\s+(ansible\S*)\s+import", path.read_text(), re.M):
                assert module.rsplit(".", 1)[-1] in shared_code.SHARED, (path, module)


def test_no_role_reaches_outside_its_directory():
    reach = re.compile(r"role_path\s*}}\s*/\.\.|\.\./\.\./plugins")
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "roles").rglob("*.yml") if reach.search(p.read_text())]
    assert offenders == []


def test_the_unit_validator_exists_once():
    copies = list(ROOT.glob("roles/*/files/**/systemd-validate-unit"))
    assert copies == [ROOT / "roles/host_services/files/systemd-validate-unit"]
    units = [str(p.relative_to(ROOT)) for p in (ROOT / "roles").rglob("tasks/*.yml")
             if "systemd-analyze" in p.read_text()]
    assert units == []


def test_what_git_ignores_is_never_built_into_the_collection():
    # ansible-galaxy matches build_ignore with fnmatch on each relative path; the
    # virtualenvs of the older cores once went into every tarball (100 MB, minutes per install)
    ignore = yaml.safe_load((ROOT / "galaxy.yml").read_text())["build_ignore"]
    ignore += ["*.pyc", "tests/output", "__pycache__"]  # ansible-galaxy's own
    for line in (ROOT / ".gitignore").read_text().splitlines():
        path = line.strip().rstrip("/")
        if path and not path.startswith("#"):
            example = path.replace("*", "x")
            assert any(fnmatch.fnmatch(example, p) for p in ignore), path
