"""The pages stay true to the code: every file, playbook, role variable, module and command a page names exists."""

import pathlib
import re

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "benchmarks" / "README.md"]
               + list(ROOT.glob("docs/*.md")) + list(ROOT.glob("roles/*/README.md"))
               + list(ROOT.glob("inventories/*/README.md")))
TOP = {p.name for p in ROOT.iterdir()} - {".git", ".venv", ".cache", "build"}
ROLES = sorted(p.name for p in (ROOT / "roles").iterdir() if p.is_dir())
SOURCES = [p for p in ROOT.rglob("*") if p.is_file() and p.suffix in (".py", ".yml", ".j2", ".sql", ".sh", ".cfg", "")
           and not set(p.relative_to(ROOT).parts[:1]) & {".git", ".venv", ".cache", "build", "docs"}
           and p.name != "test_docs.py"]
# Names that pages give to what the roles write on hosts, not to files in the repository.
ON_HOSTS = {"vault.yml", "patroni.yml", "web.yml", "blackbox.yml"}


def _code(text):
    """Inline code spans and the lines of code blocks."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    return re.findall(r"`([^`\n]+)`", prose), [line for b in blocks for line in b.splitlines()]


def _words(spans):
    for span in spans:
        for word in span.split():
            yield word.strip("\"'(),;:[]{}").rstrip(".")


def _spec_names():
    names = set()
    for role in ROLES:
        for rel in ("meta/argument_specs.yml", "defaults/main.yml", "vars/main.yml"):
            path = ROOT / "roles" / role / rel
            if not path.exists():
                continue
            data = yaml.safe_load(path.read_text()) or {}
            if rel.startswith("meta"):
                for entry in data.get("argument_specs", {}).values():
                    names.update((entry.get("options") or {}).keys())
            else:
                names.update(data.keys())
    return names


SPEC_NAMES = _spec_names()
SOURCE_TEXT = "\n".join(p.read_text(errors="replace") for p in SOURCES)
# every word of the code: a name is there when it is one of them (what \bname\b would find, without a scan per name)
SOURCE_WORDS = set(re.findall(r"\w+", SOURCE_TEXT))
MODULES = {p.stem for p in (ROOT / "plugins").glob("*/*.py")} | set(ROLES) | {"platform", "stripe", "hasura"}


def _missing_path(word):
    if "/" not in word or word.split("/")[0] not in TOP or "://" in word:
        return None
    fixed = re.split(r"[<*{]", word)[0]   # inventories/<env>, roles/*/README.md: the part before the placeholder
    if fixed != word:
        fixed = fixed.rsplit("/", 1)[0] if not fixed.endswith("/") else fixed
    if (ROOT / fixed).exists() or any(ROOT.glob("roles/*/" + fixed)):  # a role's own meta/, files/, ...
        return None
    return word


def _known(name):
    """A name in the code, or a metric name the code composes from a prefix and a counter (``_total`` added)."""
    if name in SOURCE_WORDS:
        return True
    parts = name.split("_")
    for cut in range(2, len(parts)):
        prefix, rest = "_".join(parts[:cut]), re.sub(r"_total$", "", "_".join(parts[cut:]))
        if rest and prefix in SOURCE_WORDS and rest in SOURCE_WORDS:
            return True
    return False


def _findings(page):
    text = page.read_text()
    spans, lines = _code(text)
    out = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target and not (page.parent / target).exists():
            out.append("link " + target)
    for word in _words(spans + lines):
        bad = _missing_path(word)
        if bad:
            out.append("file " + bad)
        elif re.fullmatch(r"[\w-]+\.(yml|sh|py)", word) and word not in ON_HOSTS:
            if not any(ROOT.glob("**/" + word)):
                out.append("file " + word)
        elif re.fullmatch(r"selfbase\.platform\.([a-z_]+)", word):
            if word.split(".")[-1] not in MODULES:
                out.append("module " + word)
        elif re.fullmatch(r"(%s)_[a-z0-9_]+" % "|".join(ROLES), word):
            if word not in SPEC_NAMES and word not in MODULES and not _known(word):
                out.append("variable " + word)
        elif re.fullmatch(r"selfbase_[a-z0-9_]+", word):
            if not _known(word):
                out.append("name " + word)
    for line in lines:
        scenario = re.search(r"molecule \w+ -s (\w+)", line)
        if scenario and not (ROOT / "molecule" / scenario.group(1)).is_dir():
            out.append("scenario " + scenario.group(1))
    return out


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_what_a_page_names_exists(page):
    assert _findings(page) == []


def test_the_check_finds_what_does_not_exist(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("Run `ansible-playbook -i inventories/<env> playbooks/nothing.yml`, set `nginx_no_such_thing`,\n"
                    "use `selfbase.platform.no_module` and [a page](no-page.md).\n\n```sh\nmolecule test -s nowhere\n```\n")
    assert _findings(page) == ["link no-page.md", "file playbooks/nothing.yml", "variable nginx_no_such_thing",
                               "module selfbase.platform.no_module", "scenario nowhere"]


def test_the_readme_is_a_map():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
