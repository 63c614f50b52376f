#!/usr/bin/env bash
# Runs every fuzz target of node/core/fuzz and node/fuzz for N seconds each (first argument,
# default 30) and fails if any of them finds a crash, a timeout or an out-of-memory.
#
#   bash node/core/fuzz/run.sh 20
#
# Needs the nightly toolchain (`cargo +nightly`); installs cargo-fuzz if it is missing. Each
# target starts from its committed seed corpus, read-only: inputs libFuzzer finds go to a
# scratch directory that is deleted afterwards, so the repository's corpus stays the seeds.
# A crashing input is kept under <fuzz dir>/artifacts/<target>/ (ignored by git).
set -euo pipefail

seconds=${1:-30}
if ! [[ $seconds =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
  echo "usage: $0 [seconds per target, default 30]" >&2
  exit 2
fi

root=$(cd "$(dirname "$0")/../../.." && pwd)

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "the nightly toolchain is missing: cargo fuzz needs it" >&2
  exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# Fuzz directory (relative to the repository root) and its targets.
targets=(
  "node/core/fuzz message"
  "node/core/fuzz replica_inputs"
  "node/fuzz wal"
  "node/fuzz config"
)

failed=()
for entry in "${targets[@]}"; do
  read -r dir target <<<"$entry"
  echo "=== fuzzing $target ($dir) for ${seconds}s"
  mkdir -p "$scratch/$target"
  # libFuzzer writes new inputs to the first corpus directory and only reads the others.
  # Debug assertions and overflow checks on: an arithmetic overflow is a finding too.
  if ! (cd "$root/$dir" && cargo +nightly fuzz run --debug-assertions "$target" \
    "$scratch/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1); then
    echo "=== $target FAILED: see the reproducer under $dir/artifacts/$target/" >&2
    failed+=("$target")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz targets with findings: ${failed[*]}" >&2
  exit 1
fi
echo "all fuzz targets ran ${seconds}s each without findings"
