#!/usr/bin/env bash
# ansible-test sanity on a copy of the tracked files, placed where
# ansible-test wants a collection: build/ansible_collections/selfbase/platform.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/.venv/bin/activate"

DEST=${SANITY_BUILD_DIR:-$ROOT/build}/ansible_collections/selfbase/platform
rm -rf "$DEST"
mkdir -p "$DEST"
(cd "$ROOT" && git ls-files -co --exclude-standard | rsync -a --files-from=- . "$DEST/")

# ansible-test bootstraps pip into its test venvs with a script from a host
# that is not reachable here; provide an equivalent built from PyPI's wheel.
pip_version=$(python -c 'from ansible_test._internal.python_requirements import get_venv_packages as g
from types import SimpleNamespace as N; print(g(N(version="3.11"))["pip"])')
cache=$HOME/.ansible/test/cache
if [ ! -f "$cache/get_pip_${pip_version//./_}.py" ]; then
  mkdir -p "$cache"
  pip download -q --no-deps -d "$cache" "pip==$pip_version" 2> >(grep -v "is ignored: it is neither" >&2)
  cp "$ROOT/scripts/get-pip-offline.py" "$cache/get_pip_${pip_version//./_}.py"
fi

cd "$DEST"
git init -q . && git add -A
ansible-test sanity --python 3.11 "$@"
