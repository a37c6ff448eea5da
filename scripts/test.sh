#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: unit and property tests,
# the deterministic simulation (2,000 seeds; its summary line printed),
# then the integration tests against real PostgreSQL 15, MariaDB, etcd,
# HAProxy, BIND, Alertmanager and the docker-compose lab.
#
# The integration tests run in two lanes, each one test binary at a time
# (each builds its own lab on free ports): the compose lab's (Docker
# containers, mostly waiting on timers) beside the rest. A test's output is
# kept in a file and printed when it fails; each prints its time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-debian.sh

# The compose lab's images (Debian packages, no vigil yet) build while Rust
# compiles: that is Docker and the Debian mirror, hardly the CPU. A dockerd
# started for them is stopped at the end (tests/compose_drills.rs stops it
# too), and only that one.
logs=$(mktemp -d)
bash scripts/compose-lab.sh prewarm >"$logs/prewarm.log" 2>&1 &
prewarm=$!
docker_lane=
cleanup() {
  wait "$prewarm" 2>/dev/null || true
  [ -z "$docker_lane" ] || kill "$docker_lane" 2>/dev/null || true
  [ -z "$docker_lane" ] || wait "$docker_lane" 2>/dev/null || true
  bash scripts/compose-lab.sh down >/dev/null 2>&1 || true
  rm -rf "$logs"
}
trap cleanup EXIT

# Every integration test binary, built once; NAME EXECUTABLE per line.
cargo test --features fault-injection --test '*' --no-run --message-format=json >"$logs/build.json"
grep '"reason":"compiler-artifact"' "$logs/build.json" | grep '"kind":\["test"\]' |
  sed -n 's/.*"target":{[^}]*"name":"\([^"]*\)".*"executable":"\([^"]*\)".*/\1 \2/p' >"$logs/tests"

# Runs the named test binaries one after the other; 1 if any failed.
lane() {
  local failed=0 name exe start rc
  for name in "$@"; do
    exe=$(awk -v n="$name" '$1 == n { print $2 }' "$logs/tests")
    if [ -z "$exe" ]; then
      echo "test.sh: no test binary named $name" >&2
      failed=1
      continue
    fi
    start=$SECONDS
    rc=0
    "$exe" --test-threads=1 >"$logs/$name.log" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ]; then
      echo "integration test $name: ok ($((SECONDS - start)) s; $(grep -m1 -o '[0-9]* passed' "$logs/$name.log" || echo '0 passed'))"
    else
      echo "integration test $name: FAILED ($((SECONDS - start)) s); its output:"
      cat "$logs/$name.log"
      failed=1
    fi
  done
  return $failed
}

docker_tests=(compose compose_drills package)
mapfile -t other_tests < <(awk '{ print $1 }' "$logs/tests" | grep -vxF -e sim "${docker_tests[@]/#/-e}" | sort)

cargo test --features fault-injection --lib --bins
# The simulation alone: it keeps both cores busy (beside the compose lab's
# tests it took twice as long).
cargo test --features fault-injection --test sim -- --nocapture
if ! wait "$prewarm"; then
  cat "$logs/prewarm.log" >&2
  echo "test.sh: the compose lab's images did not build" >&2
  exit 1
fi
lane "${docker_tests[@]}" >"$logs/docker-lane.out" 2>&1 &
docker_lane=$!
status=0
lane "${other_tests[@]}" || status=1
wait "$docker_lane" || status=1
docker_lane=
cat "$logs/docker-lane.out"
exit $status
