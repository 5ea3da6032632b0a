#!/usr/bin/env bash
# Sourced by scripts/demo.sh: whether the demo can run Hasura and nhost/auth as
# containers. Run from the repository root, with the virtualenv active.

# The pinned image of a role (hasura or auth), from its defaults.
api_images() {
  python -c 'import sys, yaml; d = yaml.safe_load(open(sys.argv[1])); print("%s:%s" % (d[sys.argv[2] + "_image"], d[sys.argv[2] + "_version"]))' \
    "roles/$1/defaults/main.yml" "$1"
}

# Prints true when both images are here or can be pulled, false otherwise
# (and always false with SELFBASE_DEMO_API_CONTAINERS=off or in CI), and says
# why on stderr.
api_containers_available() {
  local image
  if [ "${SELFBASE_DEMO_API_CONTAINERS:-auto}" = off ] || [ "${CI:-}" = true ]; then
    echo "[demo] Hasura and auth stay off (SELFBASE_DEMO_API_CONTAINERS=off or CI)" >&2
    echo false
    return
  fi
  for image in $(api_images hasura) $(api_images auth); do
    if ! docker image inspect "$image" >/dev/null 2>&1 && ! timeout 900 docker pull -q "$image" >/dev/null 2>&1; then
      echo "[demo] $image is not on this machine and cannot be pulled: Hasura and auth stay off" >&2
      echo false
      return
    fi
  done
  echo "[demo] Hasura and auth images are here: they run as containers" >&2
  echo true
}
