#!/usr/bin/env bash
# Bring up the local demo environment: prepare the machine, then converge
# playbooks/demo.yml. Safe to run again; a second run changes nothing.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
bash "$ROOT/scripts/testbed.sh"
. "$ROOT/.venv/bin/activate"
cd "$ROOT"
ansible-playbook -i inventories/demo playbooks/demo.yml "$@"
