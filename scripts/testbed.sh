#!/usr/bin/env bash
# Prepare this Debian machine (as root) to run the demo and the tests:
# Docker engine, local systemd base images, and the project's virtualenv.
# Idempotent: a second run only checks and takes seconds.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${SELFBASE_VENV:-$ROOT/.venv}
SUITES=${SELFBASE_SUITES:-bookworm trixie}
IMAGE_PACKAGES="python3,python3-apt,systemd,systemd-sysv,sudo,iproute2,ca-certificates,procps"
log() { printf '[testbed] %s\n' "$*"; }

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

start_dockerd() {
  docker info >/dev/null 2>&1 && return 0
  log "starting dockerd"
  nohup dockerd >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  log "dockerd did not answer within 60 s; see /var/log/dockerd.log" >&2
  exit 1
}

# The Debian mirror that apt on this machine already uses.
apt_mirror() {
  local uri
  uri=$( { grep -hoE '^URIs: *\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
           grep -hoE '^deb +\S+' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}'
         } | grep -E '/debian/?$' | head -1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

# Tag = hash of the recipe, so a recipe change builds a new image and an
# unchanged one is reused.
image_tag() {
  printf '%s|%s|%s' "$1" "$IMAGE_PACKAGES" "$(sed -n '/^build_image()/,/^}/p' "$0")" | sha256sum | cut -c1-12
}

build_image() {
  local suite=$1 image tag rootfs
  tag=$(image_tag "$suite")
  image="selfbase/debian-systemd:${suite}-${tag}"
  if docker image inspect "$image" >/dev/null 2>&1; then
    log "image $image is cached"
  else
    log "building $image with debootstrap (about a minute)"
    rootfs=$(mktemp -d /var/tmp/selfbase-rootfs.XXXXXX)
    debootstrap --variant=minbase --include="$IMAGE_PACKAGES" "$suite" "$rootfs" "$(apt_mirror)" >/var/log/debootstrap-"$suite".log 2>&1 \
      || { log "debootstrap failed, see /var/log/debootstrap-$suite.log" >&2; exit 1; }
    # Containers do not need these units; they only slow boot or fail.
    for unit in systemd-firstboot.service systemd-udevd.service systemd-resolved.service getty.target; do
      ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
    done
    : >"$rootfs/etc/machine-id"
    # As Debian's own container images: dpkg skips fsync, and no documentation,
    # manual pages or translations are unpacked (package installs are most of a converge).
    printf '%s\n' force-unsafe-io 'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright' \
      'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/info/*' 'path-exclude=/usr/share/locale/*' \
      'path-include=/usr/share/locale/locale.alias' >"$rootfs/etc/dpkg/dpkg.cfg.d/selfbase-test-host"
    echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/selfbase-test-host"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb
    tar -C "$rootfs" -c . | docker import -c 'CMD ["/lib/systemd/systemd"]' - "$image" >/dev/null
    rm -rf "$rootfs"
  fi
  docker tag "$image" "selfbase/debian-systemd:${suite}"
}

# Drop images of older recipes so disk use stays flat.
prune_images() {
  local suite=$1 keep tag
  keep=$(image_tag "$suite")
  for tag in $(docker images selfbase/debian-systemd --format '{{.Tag}}' | grep "^${suite}-" || true); do
    [ "$tag" = "${suite}-${keep}" ] || docker rmi "selfbase/debian-systemd:$tag" >/dev/null
  done
}

# The Python a requirements file names on its "# python: X.Y" line: on PATH,
# from Debian, or under pyenv. Never downloaded.
find_python() {
  local want candidate
  want=$(sed -n 's/^# python: *//p' "$1")
  for candidate in "python$want" "/usr/bin/python$want" "/usr/local/bin/python$want" \
                   $(find "$HOME/.pyenv/versions" -maxdepth 3 -path "*/$want.*/bin/python$want" 2>/dev/null | sort -V -r); do
    if "$candidate" -c 'import venv, ensurepip' >/dev/null 2>&1; then echo "$candidate"; return 0; fi
  done
  log "$(basename "$1") needs Python $want (with venv), which this machine does not have: looked on PATH," \
      "in /usr/bin, /usr/local/bin and ~/.pyenv/versions. Install it (Debian 13's python3 is 3.13);" \
      "this script does not download interpreters." >&2
  return 1
}

# One virtualenv per requirements file, rebuilt when the file changes.
make_venv() {
  local venv=$1 requirements=$2 stamp="$1/.requirements.sha256" want python
  want=$(sha256sum "$requirements" | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    log "virtualenv $venv is current"
    return 0
  fi
  python=$(find_python "$requirements") || return 1
  log "creating virtualenv $venv ($("$python" --version), $(basename "$requirements"))"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  # --no-compile: pip would byte-compile all of the ansible package's collections (19,000 files, 52 CPU-s against
  # 15 for a venv); Python compiles the few modules the tests import on first use, and keeps them
  "$venv/bin/pip" install -q --no-compile -r "$requirements" 2> >(grep -v "is ignored: it is neither" >&2)
  echo "$want" >"$stamp"
}

# The newest supported ansible-core in .venv (every stage), each older one in .venv-<core>.
make_venvs() {
  local requirements core pids=() pid rc=0
  for requirements in "$ROOT"/requirements-ansible-*.txt; do
    core=$(basename "$requirements" .txt); core=${core#requirements-ansible-}
    make_venv "$ROOT/.venv-$core" "$requirements" & pids+=($!)
  done
  make_venv "$VENV" "$ROOT/requirements.txt" || rc=1
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  return $rc
}

# Ansible finds this checkout as the selfbase.platform collection here.
link_collection() {
  mkdir -p "$ROOT/.cache/collections/ansible_collections/selfbase"
  ln -sfn "$ROOT" "$ROOT/.cache/collections/ansible_collections/selfbase/platform"
  # Mitogen's strategy plugins, at a path Molecule's config can name
  ln -sfn "$("$VENV/bin/python" -c 'import ansible_mitogen, os; print(os.path.dirname(ansible_mitogen.__file__))')/plugins/strategy" \
    "$ROOT/.cache/mitogen-strategy"
  # awx.awx for playbooks/awx_configure.yml, which the ansible package no longer bundles
  # from Ansible 14 on: linked from an older supported one that does (Galaxy is out of reach)
  local awx
  awx=$(find "$ROOT"/.venv-* -maxdepth 6 -type d -path '*/site-packages/ansible_collections/awx/awx' 2>/dev/null | sort -V | tail -1)
  if [ -n "$awx" ]; then
    mkdir -p "$ROOT/.cache/collections/ansible_collections/awx"
    ln -sfn "$awx" "$ROOT/.cache/collections/ansible_collections/awx/awx"
  fi
}

[ "$(id -u)" -eq 0 ] || { log "run as root" >&2; exit 1; }
# Packages: postgresql (server binaries for tests), pgbackrest (benchmarks/bench_backup.py),
# prometheus (promtool for the unit tests), haproxy (TLS in front of the backup scenario's S3
# server), pgbouncer (the tenant routes' module tests) and the shell linter for
# ansible-test sanity.
command -v dockerd >/dev/null || apt_install docker.io
apt_install debootstrap postgresql pgbackrest pgbouncer rsync shellcheck prometheus haproxy
start_dockerd
# The images build while pip fills the virtualenv: debootstrap and pip wait on
# different things.
pids=()
for suite in $SUITES; do (build_image "$suite" && prune_images "$suite") & pids+=($!); done
make_venvs || exit 1
link_collection
for pid in "${pids[@]}"; do wait "$pid" || { log "an image build failed" >&2; exit 1; }; done
log "ready"
