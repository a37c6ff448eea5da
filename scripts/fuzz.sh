#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer, nightly toolchain) of
# every parser of input from outside vigil: fuzz/fuzz_targets/.
#
#   bash scripts/fuzz.sh            30 s per target (the smoke run CI does);
#                                   the corpus in the repository is only read
#   bash scripts/fuzz.sh 600        10 min per target; inputs that reach new
#                                   code are merged into fuzz/corpus/TARGET
#   bash scripts/fuzz.sh 600 etcd   one target
#
# Two targets run at a time (one per core; VIGIL_FUZZ_JOBS to change). A crash stops the run with the
# input saved under fuzz/artifacts/TARGET/ and its log printed; replay it
# with `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-...`.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
shift || true

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: a nightly Rust toolchain is needed (rustup toolchain install nightly)" >&2
  exit 1
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked --quiet cargo-fuzz

targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
# The smoke run builds without optimisation (a third of the build time; 30 s
# of unoptimised fuzzing still exercises every target); longer runs are
# optimised.
profile=--release
((seconds >= 60)) || profile=--dev
export profile
cargo +nightly fuzz build "$profile"

work=$(mktemp -d "${TMPDIR:-/tmp}/vigil-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
export seconds work

run_one() {
  local t=$1 new="$work/$1" log="$work/$1.log"
  mkdir -p "$new" "fuzz/artifacts/$t"
  if ! cargo +nightly fuzz run "$profile" "$t" "$new" "fuzz/corpus/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1; then
    echo "fuzz $t: FAILED"
    tail -n 40 "$log"
    return 1
  fi
  local runs
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  if ((seconds >= 60)); then
    cargo +nightly fuzz run "$profile" "$t" "fuzz/corpus/$t" "$new" -- -merge=1 >"$log.merge" 2>&1
  fi
  echo "fuzz $t: $runs inputs in ${seconds} s, 0 crashes; corpus $(ls "fuzz/corpus/$t" | wc -l) files"
}
export -f run_one

printf '%s\n' "${targets[@]}" | xargs -P "${VIGIL_FUZZ_JOBS:-2}" -I{} bash -c 'run_one {}'
