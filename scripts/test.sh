#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: unit and property tests,
# the deterministic simulation (2,000 seeds; its summary line printed),
# then the integration tests against real PostgreSQL 15, MariaDB, etcd and
# HAProxy (one at a time: each builds its own lab on free ports).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-debian.sh
cargo test --features fault-injection --lib --bins
cargo test --features fault-injection --test sim -- --nocapture
cargo test --features fault-injection --test "*" -- --test-threads=1 --skip sim --exact
