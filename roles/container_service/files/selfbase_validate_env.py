"""Check a Docker env file before it is written.

Usage: python3 selfbase_validate_env.py FILE [--require NAME]... [--jwt NAME]...
                                            [--json NAME]... [--hex32 NAME]... [--url NAME]...

Every line is blank, a comment or NAME=VALUE (Docker's --env-file format: no
quoting, no continuation), with each NAME once. Errors name the variable,
never its value: the values are secrets.
"""
import json
import re
import sys
from urllib.parse import urlsplit

NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def main(argv):
    path, checks = argv[1], {}
    for flag, name in zip(argv[2::2], argv[3::2]):
        checks.setdefault(flag.lstrip("-"), []).append(name)
    env, errors = {}, []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle.read().splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, sep, value = line.partition("=")
            if not sep or not NAME.match(name):
                errors.append("line %d is not NAME=VALUE" % number)
            elif name in env:
                errors.append("%s is set twice" % name)
            else:
                env[name] = value
    for name in checks.get("require", []):
        if not env.get(name):
            errors.append("%s is missing or empty" % name)
    for name in checks.get("json", []) + checks.get("jwt", []):
        try:
            value = json.loads(env.get(name, ""))
        except ValueError:
            errors.append("%s is not valid JSON" % name)
            continue
        if name in checks.get("jwt", []):
            if not isinstance(value, dict) or value.get("type") not in ("HS256", "HS384", "HS512"):
                errors.append("%s must be a JSON object with type HS256, HS384 or HS512" % name)
            elif len(str(value.get("key", ""))) < 32:
                errors.append("%s: the key must have at least 32 characters" % name)
    for name in checks.get("hex32", []):
        if not re.match(r"^[0-9a-fA-F]{64}$", env.get(name, "")):
            errors.append("%s must be 32 bytes as 64 hexadecimal characters" % name)
    for name in checks.get("url", []):
        parts = urlsplit(env.get(name, ""))
        if parts.scheme not in ("postgres", "postgresql", "http", "https") or not parts.hostname:
            errors.append("%s is not a postgres:// or http(s):// URL with a host" % name)
    for error in errors:
        sys.stderr.write("%s: %s\n" % (path, error))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
