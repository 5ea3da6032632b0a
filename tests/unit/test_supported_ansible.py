"""The collection claims exactly the ansible-core versions the suite runs on (one requirements file each),
and every place that states a version or a dependency range says the same."""

import pathlib
import re

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
FILES = [ROOT / "requirements.txt"] + sorted(ROOT.glob("requirements-ansible-*.txt"))


def _pin(path, name):
    return re.search(r"^%s==(\S+)$" % re.escape(name), path.read_text(), re.M).group(1)


CORES = sorted((tuple(int(n) for n in _pin(f, "ansible-core").split(".")) for f in FILES))
MINORS = [c[:2] for c in CORES]


def test_each_requirements_file_pins_its_own_minor_and_names_its_python():
    assert len(set(MINORS)) == len(FILES)
    assert _pin(ROOT / "requirements.txt", "ansible-core").startswith("%d.%d." % MINORS[-1])
    for path in FILES[1:]:
        minor = path.stem.replace("requirements-ansible-", "")
        assert _pin(path, "ansible-core").startswith(minor + ".")
    for path in FILES:
        assert re.search(r"^# python: 3\.\d+$", path.read_text(), re.M), path.name


def test_requires_ansible_is_exactly_the_tested_range():
    runtime = yaml.safe_load((ROOT / "meta/runtime.yml").read_text())
    low, high = MINORS[0], MINORS[-1]
    assert [m[1] for m in MINORS] == list(range(low[1], high[1] + 1)), "the tested versions have a gap"
    assert runtime["requires_ansible"] == ">=%d.%d.0,<%d.%d.0" % (low + (high[0], high[1] + 1))


def test_roles_and_the_execution_environment_follow():
    for meta in ROOT.glob("roles/*/meta/main.yml"):
        assert yaml.safe_load(meta.read_text())["galaxy_info"]["min_ansible_version"] == "%d.%d" % MINORS[0], meta
    ee = yaml.safe_load((ROOT / "execution-environment.yml").read_text())
    assert ee["dependencies"]["ansible_core"]["package_pip"] == "ansible-core==" + _pin(ROOT / "requirements.txt",
                                                                                        "ansible-core")


def test_dependency_ranges_agree():
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text())["dependencies"]
    for name in ("requirements.yml", "collections/requirements.yml"):
        listed = {c["name"]: c["version"] for c in yaml.safe_load((ROOT / name).read_text())["collections"]}
        assert {k: listed[k] for k in galaxy} == galaxy, name
