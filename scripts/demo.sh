#!/usr/bin/env bash
# Bring up the local development environment (the demo): prepare the machine,
# start four systemd containers (db, api, proxy, monitoring), start the local
# Stripe fake unless STRIPE_API_KEY is set, converge site.yml with
# inventories/development, then run a smoke check and print how to reach it.
# Safe to run again; a second run changes nothing. scripts/demo-down.sh removes it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
bash "$ROOT/scripts/testbed.sh"
. "$ROOT/.venv/bin/activate"
cd "$ROOT"
INV=inventories/development
VAULT=(--vault-password-file "$INV/vault-password.txt")
STATE=$ROOT/.demo
mkdir -p "$STATE"

if [ -z "${STRIPE_API_KEY:-}" ]; then
  # The contract fake from the tests, kept running with its state on disk so
  # that a second demo run finds the objects of the first.
  if ! { [ -f "$STATE/stripe-fake.pid" ] && kill -0 "$(cat "$STATE/stripe-fake.pid")" 2>/dev/null; }; then
    setsid python tests/modules/fakes/stripe_fake.py --host 127.0.0.1 --port 12111 \
      --state-file "$STATE/stripe-fake.json" >"$STATE/stripe-fake.log" 2>&1 < /dev/null &
    echo $! >"$STATE/stripe-fake.pid"
  fi
  export STRIPE_API_KEY=sk_test_selfbase_development_fake STRIPE_API_BASE=http://127.0.0.1:12111
  echo "[demo] Stripe: local fake on $STRIPE_API_BASE (set STRIPE_API_KEY to use Stripe's test mode)"
fi

# The single-host demo of earlier versions used the same subnet.
docker rm -f selfbase-demo-db >/dev/null 2>&1 || true
docker network rm selfbase-demo >/dev/null 2>&1 || true
ansible-playbook -i "$INV" "${VAULT[@]}" playbooks/dev_hosts.yml
ansible-playbook -i "$INV" "${VAULT[@]}" site.yml "$@"

# Hasura and nhost/auth run as real containers when their pinned images are on
# this machine or can be pulled (scripts/demo-api.sh); otherwise the API tier is
# rendered and checked, not started.
. "$ROOT/scripts/demo-api.sh"
API_HOST=selfbase-dev-api
API_CONTAINERS=$(api_containers_available)
if [ "$API_CONTAINERS" = true ]; then
  # the api host runs its own Docker engine (installed by site.yml): hand it the images
  for image in $(api_images hasura) $(api_images auth); do
    docker exec "$API_HOST" docker image inspect "$image" >/dev/null 2>&1 \
      || docker save "$image" | docker exec -i "$API_HOST" docker load -q
  done
  ansible-playbook -i "$INV" "${VAULT[@]}" playbooks/api.yml -e hasura_container_enabled=true \
    -e auth_container_enabled=true "$@"
fi
ansible-playbook -i "$INV" "${VAULT[@]}" playbooks/dev_extras.yml -e "selfbase_dev_api_containers=$API_CONTAINERS"
