#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: unit and property tests,
# the deterministic simulation (2,000 seeds; its summary line printed),
# then the integration tests against real PostgreSQL 15, MariaDB, etcd,
# HAProxy, BIND, Alertmanager and the docker-compose lab.
#
# The integration tests run in three lanes, each one test binary at a time
# (each builds its own lab on free ports): the compose lab's (Docker
# containers, mostly waiting on timers) beside two that share the rest. A
# test's output is kept in a file and printed when it fails; each prints
# its time.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
bash scripts/setup-debian.sh

# The compose lab's images (Debian packages, no vigil yet) build while Rust
# compiles: that is Docker and the Debian mirror, hardly the CPU. A dockerd
# started for them is stopped at the end (tests/compose_drills.rs stops it
# too), and only that one.
logs=$(mktemp -d)
bash scripts/compose-lab.sh prewarm >"$logs/prewarm.log" 2>&1 &
prewarm=$!
docker_lane= second_lane=
cleanup() {
  wait "$prewarm" 2>/dev/null || true
  # Stopped early: the lanes, and the test binaries they started (by the
  # PIDs they wrote down).
  for pid in $docker_lane $second_lane; do kill "$pid" 2>/dev/null || true; done
  for f in "$logs"/*.pid; do [ -e "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  for pid in $docker_lane $second_lane; do wait "$pid" 2>/dev/null || true; done
  bash scripts/compose-lab.sh down >/dev/null 2>&1 || true
  rm -rf "$logs"
}
trap cleanup EXIT

# Every integration test binary, built once; NAME EXECUTABLE per line.
cargo test --features fault-injection --test '*' --no-run --message-format=json >"$logs/build.json"
grep '"reason":"compiler-artifact"' "$logs/build.json" | grep '"kind":\["test"\]' |
  sed -n 's/.*"target":{[^}]*"name":"\([^"]*\)".*"executable":"\([^"]*\)".*/\1 \2/p' >"$logs/tests"

# The integration tests not tied to the compose lab, slowest first (their
# times in CI), so that the lanes that share them end together; a test not
# named here comes last.
slowest_first=(failover mariadb etcd_outage alerts crash_points semisync trust partitions synchronous sync
  flapping publish tls drill doctor haproxy runbooks)
docker_tests=(compose compose_drills package)
queue="$logs/queue"
{
  printf '%s\n' "${slowest_first[@]}"
  awk '{ print $1 }' "$logs/tests" | sort
} | awk -v skip=" sim ${docker_tests[*]} " 'NR == FNR { built[$1] = 1; next }
    built[$1] && !seen[$1]++ && index(skip, " " $1 " ") == 0' "$logs/tests" - >"$queue"

# Takes the next test's name off the shared queue (empty when none is left).
next_test() {
  flock "$queue.lock" bash -c 'head -n1 "$1"; sed -i 1d "$1"' _ "$queue"
}

# Runs one test binary, its output kept in a file; prints one line. A
# failing test's name goes to $logs/failed, its output is printed at the end.
run_test() {
  local name=$1 exe start rc=0
  exe=$(awk -v n="$name" '$1 == n { print $2 }' "$logs/tests")
  if [ -z "$exe" ]; then
    echo "test.sh: no test binary named $name" >&2
    echo "$name" >>"$logs/failed"
    return
  fi
  start=$SECONDS
  "$exe" --test-threads=1 >"$logs/$name.log" 2>&1 &
  echo $! >"$logs/$name.pid"
  wait $! || rc=$?
  rm -f "$logs/$name.pid"
  if [ "$rc" -eq 0 ]; then
    echo "integration test $name: ok ($((SECONDS - start)) s; $(grep -m1 -o '[0-9]* passed' "$logs/$name.log" || echo '0 passed'))"
  else
    echo "integration test $name: FAILED ($((SECONDS - start)) s)"
    echo "$name" >>"$logs/failed"
  fi
}

# A lane runs the tests it is given, then takes tests off the queue until
# it is empty. Each test builds its own lab on free ports.
lane() {
  local name
  for name in "$@"; do
    run_test "$name"
  done
  while name=$(next_test) && [ -n "$name" ]; do
    run_test "$name"
  done
}

cargo test --features fault-injection --lib --bins
# The simulation alone: it keeps both cores busy (beside the compose lab's
# tests it took twice as long).
cargo test --features fault-injection --test sim -- --nocapture
if ! wait "$prewarm"; then
  cat "$logs/prewarm.log" >&2
  echo "test.sh: the compose lab's images did not build" >&2
  exit 1
fi
# Three lanes: the compose lab's tests (mostly waiting on containers and
# timers) then the queue, beside two lanes that start on the queue.
lane "${docker_tests[@]}" &
docker_lane=$!
lane &
second_lane=$!
lane
wait "$docker_lane" "$second_lane" || true
docker_lane= second_lane=
if [ -s "$logs/failed" ]; then
  while read -r name; do
    echo "=== output of the failed integration test $name ==="
    cat "$logs/$name.log" 2>/dev/null || true
  done <"$logs/failed"
  echo "test.sh: failed: $(tr '\n' ' ' <"$logs/failed")" >&2
  exit 1
fi
echo "test.sh: every test passed ($((SECONDS - started)) s)"
