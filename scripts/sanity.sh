#!/usr/bin/env bash
# ansible-test sanity on a copy of the tracked files, placed where ansible-test
# wants a collection: build/sanity-<core>/ansible_collections/selfbase/platform.
# SELFBASE_VENV picks the ansible-core (default .venv, the newest).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "${SELFBASE_VENV:-$ROOT/.venv}/bin/activate"
PY=$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
CORE=$(python -c 'from ansible.release import __version__ as v; print(v)')

DEST=${SANITY_BUILD_DIR:-$ROOT/build/sanity-$CORE}/ansible_collections/selfbase/platform
rm -rf "$DEST"
mkdir -p "$DEST"
(cd "$ROOT" && git ls-files -co --exclude-standard | rsync -a --files-from=- . "$DEST/")

# ansible-test bootstraps pip into its test venvs with a script from a host
# that is not reachable here; provide an equivalent built from PyPI's wheel.
pip_version=$(python -c 'from ansible_test._internal.python_requirements import get_venv_packages as g
from types import SimpleNamespace as N; print(g(N(version="'"$PY"'"))["pip"])')
cache=$HOME/.ansible/test/cache
if [ ! -f "$cache/get_pip_${pip_version//./_}.py" ]; then
  mkdir -p "$cache"
  pip download -q --no-deps -d "$cache" "pip==$pip_version" 2> >(grep -v "is ignored: it is neither" >&2)
  cp "$ROOT/scripts/get-pip-offline.py" "$cache/get_pip_${pip_version//./_}.py"
fi

cd "$DEST"
git init -q . && git add -A
ansible-test sanity --python "$PY" "$@"
