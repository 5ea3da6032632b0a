#!/usr/bin/env bash
# The whole test suite, as CI runs it: prepare the machine, then lint, sanity,
# collection build, unit tests, module tests against a real PostgreSQL server,
# and every Molecule scenario.
# Usage: scripts/test.sh [stage ...]   (stages: lint sanity build unit modules molecule)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
LOGS=$ROOT/build/logs
STAGES=("$@")
[ ${#STAGES[@]} -gt 0 ] || STAGES=(lint sanity build unit modules molecule)

# the machine's CPU time (user, nice, system, irq, softirq), in seconds
machine_cpu() { awk '/^cpu /{printf "%d", ($2 + $3 + $4 + $7 + $8) / 100}' /proc/stat; }
suite_start=$(date +%s) suite_cpu=$(machine_cpu)
bash scripts/testbed.sh || { echo "testbed: failed"; echo "summary: 0 passed, 1 failed"; exit 1; }
. .venv/bin/activate
export NO_COLOR=1 PY_COLORS=0 ANSIBLE_FORCE_COLOR=false
mkdir -p "$LOGS"

# Every ansible-core that meta/runtime.yml claims: the older ones in .venv-<core>
# (requirements-ansible-<core>.txt), the newest in .venv. sanity, build and unit
# run on each; lint, modules and molecule on the newest, where users upgrade to.
VENVS=()
for f in requirements-ansible-*.txt; do f=${f#requirements-ansible-}; VENVS+=("$ROOT/.venv-${f%.txt}"); done
VENVS+=("$ROOT/.venv")
core_of() { "$1/bin/python" -c 'from ansible.release import __version__ as v; print(v)'; }
# Run "$@" in each venv; a line "ansible-core <version> <result> <seconds>s" for each.
each_core() {
  local venv core start result rc=0
  for venv in "${VENVS[@]}"; do
    core=$(core_of "$venv") start=$(date +%s) result=passed
    echo "=== ansible-core $core ($venv)"
    ( . "$venv/bin/activate" && SELFBASE_VENV=$venv "$@" ) || { result=failed rc=1; }
    printf 'ansible-core %-8s %-6s %5ss\n' "$core" "$result" "$(( $(date +%s) - start ))"
  done
  return $rc
}

stage_lint() { ansible-lint && antsibull-changelog lint; }
stage_sanity() { each_core bash scripts/sanity.sh; }
stage_build() { each_core build_one; }
build_one() {
  local out rc=0
  out=$(mktemp -d)
  ansible-galaxy collection build --force --output-path "$out" . \
    && ansible-galaxy collection install --force --no-deps -p "$out/collections" "$out"/selfbase-platform-*.tar.gz \
    || rc=1
  local -x ANSIBLE_COLLECTIONS_PATH=$out/collections
  # every module, role and lookup renders from the installed tarball: one ansible-doc per type (a process per
  # plugin cost minutes on each core); any warning or error naming one of ours fails the build
  ansible-doc -l selfbase.platform || rc=1
  doc_type module plugins/modules/*.py || rc=1
  doc_type role roles/*/ || rc=1
  doc_type lookup plugins/lookup/*.py || rc=1
  rm -rf "$out"
  return $rc
}
# doc_type TYPE PATH...: ansible-doc renders every named plugin of TYPE, and says nothing about any of them.
doc_type() {
  local type=$1 names=() p err
  shift
  for p in "$@"; do p=${p%/}; p=${p##*/}; names+=("selfbase.platform.${p%.py}"); done
  err=$(ansible-doc -t "$type" "${names[@]}" 2>&1 >/dev/null) || { echo "$err"; return 1; }
  if grep -q 'selfbase\.platform' <<<"$err"; then
    echo "ansible-doc -t $type: $err"
    return 1
  fi
}
stage_unit() { each_core python -m pytest -v tests/unit; }
# Two pytest workers, each with its own PostgreSQL server (modules run in the
# test process, some tests through ansible-playbook: tests/modules/in_process.py).
stage_modules() { python -m pytest -v --durations=15 -n "${SELFBASE_TEST_JOBS:-2}" --dist loadfile tests/modules; }

# CPU accounting through cgroup v1 (cpuacct), where this machine lets us write
# it; otherwise no CPU figures are printed. Accounting only: a cpu cgroup that
# weighed all background work at 256 against the critical scenario starved the
# other scenarios, which are long serial chains too, past its end.
# cg_enter NAME: this shell and what it starts are counted under NAME.
CG=/sys/fs/cgroup
cg_enter() {
  local acct=$CG/cpuacct/selfbase-ci/$1
  # (a cgroup left by an earlier run starts again from zero)
  { mkdir -p "$acct" && echo 0 >"$acct/cpuacct.usage" && echo "$BASHPID" >"$acct/cgroup.procs"; } 2>/dev/null || true
}
# cg_seconds NAME: CPU seconds counted under NAME so far (empty without cgroups)
cg_seconds() { awk '{printf "%d", $1 / 1e9}' "$CG/cpuacct/selfbase-ci/$1/cpuacct.usage" 2>/dev/null; }
# Test hosts run under dockerd, not under the scenario: every 10 s, each
# container's CPU so far goes to $LOGS/hosts-cpu/<name> (read at its end, so
# the last seconds before a destroy are not counted).
hosts_cpu_sampler() {
  local dir id name
  mkdir -p "$LOGS/hosts-cpu"
  while sleep 10; do
    for dir in "$CG"/cpuacct/docker/*/; do
      id=$(basename "$dir")
      name=$(grep -o '"Name":"/[^"]*"' "/var/lib/docker/containers/$id/config.v2.json" 2>/dev/null) || continue
      name=${name#\"Name\":\"/} name=${name%\"}
      cat "$dir/cpuacct.usage" >"$LOGS/hosts-cpu/$name" 2>/dev/null
    done
  done
}
# hosts_seconds NAME...: the CPU seconds of those test hosts
hosts_seconds() {
  (cd "$LOGS/hosts-cpu" 2>/dev/null && if [ $# -gt 0 ]; then cat "$@"; else cat -- *; fi 2>/dev/null) \
    | awk '{s += $1} END {printf "%d", s / 1e9}'
}

# One scenario with its own log; the line it prints goes to the stage log.
molecule_scenario() {
  local scenario=$1 start rc=0 cpu
  # the first (longest) scenario is the suite's critical path: the others, their
  # controller and their hosts (molecule/resources/create.yml), yield the cores to it
  [ "$scenario" = "$CRITICAL" ] || { renice -n 10 -p $$ >/dev/null; export SELFBASE_CPU_SHARES=256; }
  cg_enter "molecule/$scenario"
  start=$(date +%s)
  # The test sequences begin with create, not destroy (minutes on a busy machine):
  # only hosts or state that a stopped run left behind are destroyed first.
  local hosts
  hosts=$(molecule list -s "$scenario" -f plain 2>/dev/null | awk '{print $1 " " $5}')
  if grep -q ' true$' <<<"$hosts" || docker ps -a --format '{{.Names}}' | grep -qxF -f <(cut -d' ' -f1 <<<"$hosts"); then
    molecule destroy -s "$scenario"
  fi >"$LOGS/molecule-$scenario.log" 2>&1
  molecule test -s "$scenario" >>"$LOGS/molecule-$scenario.log" 2>&1 || rc=1
  cpu=$(cg_seconds "molecule/$scenario")
  local names
  mapfile -t names < <(cut -d' ' -f1 <<<"$hosts")
  [ -z "$cpu" ] || cpu="  cpu: controller ${cpu}s, hosts $(hosts_seconds "${names[@]}")s"
  printf 'molecule %-10s %-6s %5ss  (log: build/logs/molecule-%s.log)%s\n' "$scenario" \
    "$([ $rc -eq 0 ] && echo passed || echo failed)" "$(( $(date +%s) - start ))" "$scenario" "$cpu"
  # the failed tasks with their task headers, then the end of the log
  [ $rc -eq 0 ] || { grep -B 12 -A 25 -E '^(fatal|failed): |^\S.*FAILED!|^ERROR|^FAILED ' "$LOGS/molecule-$scenario.log" | tail -n 200
                     tail -n 30 "$LOGS/molecule-$scenario.log"; }
  return $rc
}
# Scenarios have their own hosts and networks, so they run side by side
# (SELFBASE_MOLECULE_JOBS at a time, longest first), so that one waiting on a
# service or an alert timer leaves the cores to the others.
stage_molecule() {
  local longest=(production backup metering api common nginx) all=() s sampler rc=0
  for s in molecule/*/molecule.yml; do all+=("$(basename "$(dirname "$s")")"); done
  rm -rf "$LOGS/hosts-cpu"
  hosts_cpu_sampler &
  sampler=$!
  export -f molecule_scenario cg_enter cg_seconds hosts_seconds
  export LOGS CG CRITICAL=${longest[0]}
  { for s in "${longest[@]}"; do [[ " ${all[*]} " == *" $s "* ]] && echo "$s"; done
    for s in "${all[@]}"; do [[ " ${longest[*]} " == *" $s "* ]] || echo "$s"; done; } \
    | xargs -P "${SELFBASE_MOLECULE_JOBS:-3}" -I{} bash -c "molecule_scenario {}" || rc=1
  kill "$sampler"
  echo "molecule  test hosts: cpu $(hosts_seconds)s"
  return $rc
}

# One stage with its own log; its result and time go to $LOGS/<stage>.result.
run_stage() {
  local start result=passed
  start=$(date +%s)
  "stage_$1" >"$LOGS/$1.log" 2>&1 || result=failed
  echo "$result $(( $(date +%s) - start )) $(cg_seconds "$1")" >"$LOGS/$1.result"
}
passed=0 failed=0 report=() pending=()
report_stage() {
  local stage=$1 result secs cpu counts
  read -r result secs cpu <"$LOGS/$stage.result"
  if [ "$result" = passed ]; then passed=$((passed + 1)); else failed=$((failed + 1)); tail -n 60 "$LOGS/$stage.log"; fi
  # pytest's own count where the stage has one
  counts=$(grep -E '^=+ .*(passed|failed|error).* in [0-9.]+s' "$LOGS/$stage.log" | sed -E 's/^=+ (.*) in [0-9.]+s.*/\1/' | paste -sd';' -)
  [ -z "$cpu" ] || cpu="cpu ${cpu}s${counts:+; }"
  report+=("$(printf '%-9s %-7s %5ss  %s' "$stage" "$result" "$secs" "$cpu$counts")")
  # and each scenario's or ansible-core's own time
  while IFS= read -r line; do report+=("  $line"); done < <(grep -E '^(molecule|ansible-core) ' "$LOGS/$stage.log")
}
# lint, sanity, build and unit each keep one core busy at most, so they run
# side by side; modules uses every core. With other stages, molecule (its
# longest scenario is the suite's critical path) starts first, at normal
# priority, and the others run beside it at lower priority (nice 10), filling
# the cores while its scenarios wait on services, failovers and timers.
early=""
if [ ${#STAGES[@]} -gt 1 ] && [[ " ${STAGES[*]} " == *" molecule "* ]]; then early=molecule; fi
# in_stage STAGE: run_stage in its own cpuacct cgroup, niced when molecule runs beside it
in_stage() { (if [ -n "$early" ]; then renice -n 10 -p "$BASHPID" >/dev/null; fi; cg_enter "$1"; run_stage "$1"); }
pending_pids=()
finish_pending() {
  local stage
  [ ${#pending_pids[@]} -eq 0 ] || wait "${pending_pids[@]}"
  for stage in "${pending[@]}"; do report_stage "$stage"; done
  pending=() pending_pids=()
}
if [ -n "$early" ]; then
  echo "== molecule (log: build/logs/molecule.log), first, beside the other stages"
  rm -f "$LOGS/molecule.result"
  (cg_enter molecule; run_stage molecule) &
  early_pid=$!
fi
for stage in "${STAGES[@]}"; do
  [ "$stage" != "$early" ] || continue
  echo "== $stage (log: build/logs/$stage.log)"
  rm -f "$LOGS/$stage.result"
  case $stage in
    lint|sanity|build|unit) in_stage "$stage" & pending+=("$stage") pending_pids+=($!) ;;
    *) finish_pending; in_stage "$stage"; report_stage "$stage" ;;
  esac
done
finish_pending
if [ -n "$early" ]; then wait "$early_pid"; report_stage molecule; fi

echo
echo "== summary (ansible-core $(for v in "${VENVS[@]}"; do core_of "$v"; done | paste -sd' ' -); lint, modules and molecule on the last)"
printf '%s\n' "${report[@]}"
echo "machine: $(( $(date +%s) - suite_start ))s, cpu $(( $(machine_cpu) - suite_cpu ))s on $(nproc) cores"
# the failed tests by name, last, where a CI page that shows only the end still has them
grep -h -E '^(FAILED|ERROR) [^ ]+::' "$LOGS"/*.log 2>/dev/null | sort -u | head -n 30
echo "summary: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
