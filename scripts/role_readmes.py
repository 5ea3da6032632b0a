"""Write the variables section of every role's README from its meta/argument_specs.yml.

The section sits between two marker comments; the text around it is the role's own. A role without a
README gets one from its spec's description. With --check, write nothing and exit 1 when a README is stale.
Usage: python3 scripts/role_readmes.py [--check]"""

import json
import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
BEGIN = "<!-- BEGIN generated from meta/argument_specs.yml by scripts/role_readmes.py; do not edit -->"
END = "<!-- END generated -->"
LONG = 60  # defaults longer than this are left to defaults/main.yml


def _text(value):
    lines = value if isinstance(value, list) else [value]
    text = " ".join(str(line).strip() for line in lines).replace("|", "\\|").replace("\n", " ")
    text = re.sub(r"\b[CMO]\(([^()]*(?:\([^()]*\))?[^()]*)\)", r"`\1`", text)   # Ansible doc markup
    return re.sub(r"\bI\(([^()]*)\)", r"*\1*", text)


def _default(spec):
    if "default" not in spec:
        return "required" if spec.get("required") else ""
    shown = json.dumps(spec["default"], default=str)
    return "see `defaults/main.yml`" if len(shown) > LONG else "`%s`" % shown.replace("|", "\\|")


def _type(spec):
    kind = spec.get("type", "str")
    if kind == "list" and spec.get("elements"):
        kind = "list of %s" % spec["elements"]
    if spec.get("choices"):
        kind += ": " + ", ".join("`%s`" % c for c in spec["choices"])
    return kind


def _rows(options, prefix=""):
    for name, spec in options.items():
        yield "| `%s%s` | %s | %s | %s |" % (prefix, name, _type(spec), _default(spec), _text(spec.get("description", "")))
        if spec.get("options"):
            yield from _rows(spec["options"], prefix="%s%s[]." % (prefix, name) if "elements" in spec else
                             "%s%s." % (prefix, name))


def section(role):
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    out = [BEGIN, ""]
    for entry, spec in specs.items():
        how = "the role" if entry == "main" else "`tasks_from: %s`" % entry
        out += ["## Variables of %s" % how, "", _text(spec.get("short_description", "")), "",
                "| variable | type | default | description |", "|---|---|---|---|"]
        out += list(_rows(spec.get("options", {})))
        out.append("")
    out.append(END)
    return "\n".join(out)


def render(role):
    readme = role / "README.md"
    if readme.exists():
        text = readme.read_text()
    else:
        spec = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
        first = spec.get("main", next(iter(spec.values())))
        text = "# selfbase.platform.%s\n\n%s\n" % (role.name, "\n".join(
            "- %s" % _text(d) for d in (first.get("description") or [first.get("short_description", "")])))
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
    else:
        head, tail = text.rstrip("\n") + "\n\n", "\n"
    return head + section(role) + tail


def main(check):
    stale = []
    for role in sorted(p for p in (ROOT / "roles").iterdir() if (p / "meta" / "argument_specs.yml").is_file()):
        new = render(role)
        readme = role / "README.md"
        if not readme.exists() or readme.read_text() != new:
            stale.append(str(readme.relative_to(ROOT)))
            if not check:
                readme.write_text(new)
    if stale:
        print("%s: %s" % ("stale" if check else "written", ", ".join(stale)))
    return 1 if stale and check else 0


if __name__ == "__main__":
    sys.exit(main("--check" in sys.argv[1:]))
