#!/usr/bin/env bash
# The main job: set up a fresh Debian machine, build vigil, start the local
# lab (etcd + 3-node PostgreSQL 15 + one sidecar per node) and print the
# cluster table. Run it again to rebuild the lab from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-debian.sh
cargo build --release --quiet --bin vigil
if [ -e "${VIGIL_LAB_DIR:-/tmp/vigil-lab}/lab.json" ]; then
  target/release/vigil lab down
fi
target/release/vigil lab up "$@"
echo
echo "Try: target/release/vigil status | switchover | history    (stop with: target/release/vigil lab down)"
