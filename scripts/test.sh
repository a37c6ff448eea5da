#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: unit and property tests,
# the deterministic simulation (2,000 seeds; its summary line printed),
# then the integration tests against real PostgreSQL 15, MariaDB, etcd,
# HAProxy, BIND, Alertmanager and the docker-compose lab (one at a time:
# each builds its own lab on free ports).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-debian.sh

# The compose lab's images (Debian packages, no vigil yet) build while Rust
# compiles: that is Docker and the Debian mirror, hardly the CPU. A dockerd
# started for them is stopped at the end (tests/compose_drills.rs stops it
# too), and only that one.
prewarm_log=$(mktemp)
bash scripts/compose-lab.sh prewarm >"$prewarm_log" 2>&1 &
prewarm=$!
trap 'wait $prewarm 2>/dev/null; bash scripts/compose-lab.sh down >/dev/null 2>&1 || true; rm -f "$prewarm_log"' EXIT

cargo test --features fault-injection --lib --bins
cargo test --features fault-injection --test sim -- --nocapture
if ! wait $prewarm; then
  cat "$prewarm_log" >&2
  echo "test.sh: the compose lab's images did not build" >&2
  exit 1
fi
cargo test --features fault-injection --test "*" -- --test-threads=1 --skip sim --exact
