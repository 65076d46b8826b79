#!/usr/bin/env bash
# Runs the test suite RUNS times in a row (default 10) while two busy loops
# keep both CPUs loaded, as other work would on a CI machine or a laptop.
# Stops at nothing: every run is reported, and the exit code says whether all
# passed. Usage: scripts/test-under-load.sh [RUNS]
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
cargo test --no-fail-fast --no-run >/dev/null 2>&1 || { echo "the tests do not build" >&2; exit 2; }

hogs=()
stop_hogs() { for p in "${hogs[@]}"; do kill "$p" 2>/dev/null; done; }
trap stop_hogs EXIT
trap 'exit 130' INT TERM
for _ in 1 2; do
  # A busy loop that ends by itself after an hour at the latest.
  timeout 3600 bash -c 'while :; do :; done' &
  hogs+=($!)
done

failed=0
for i in $(seq "$runs"); do
  log=$(mktemp)
  start=$(date +%s)
  if cargo test --no-fail-fast >"$log" 2>&1; then
    verdict=passed
  else
    verdict=FAILED
    failed=$((failed + 1))
    grep -A1 -E "^test .* FAILED$|panicked at" "$log" | grep -v "^--$" | sed 's/^/    /'
  fi
  tests=$(grep -E "^test result:" "$log" | awk '{p+=$4; f+=$6} END {print p" passed, "f" failed"}')
  echo "run $i/$runs: $verdict ($tests) in $(( $(date +%s) - start )) s"
  rm -f "$log"
done
echo "$((runs - failed)) of $runs runs passed with both CPUs busy"
[ "$failed" -eq 0 ]
