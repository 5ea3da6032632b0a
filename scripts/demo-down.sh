#!/usr/bin/env bash
# Remove the local development environment: its containers, network and the
# Stripe fake. The base images and the virtualenv stay.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/.venv/bin/activate"
cd "$ROOT"
ansible-playbook -i inventories/development --vault-password-file inventories/development/vault-password.txt \
  playbooks/dev_hosts.yml -e dev_hosts_state=absent
if [ -f .demo/stripe-fake.pid ]; then
  kill "$(cat .demo/stripe-fake.pid)" 2>/dev/null || true
  rm -f .demo/stripe-fake.pid .demo/stripe-fake.json
fi
# the single-host demo of earlier versions
docker rm -f selfbase-demo-db >/dev/null 2>&1 || true
docker network rm selfbase-demo >/dev/null 2>&1 || true
