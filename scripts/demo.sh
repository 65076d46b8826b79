#!/usr/bin/env bash
# Runs ringlb for real in front of three local demo backends (the todo API on
# 127.0.0.1:6400-6402), with config/ringlb.toml listening on 127.0.0.1:8080.
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bin ringlb --example demo_backend
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

for port in 6400 6401 6402; do
  target/release/examples/demo_backend "127.0.0.1:$port" "todo-$port" &
  pids+=($!)
done

# The shipped example, but on loopback only for a local demo.
mkdir -p "$work/targets"
cp config/targets/web.txt "$work/targets/web.txt"
sed 's/listen = "0.0.0.0:8080"/listen = "127.0.0.1:8080"/' config/ringlb.toml > "$work/ringlb.toml"
target/release/ringlb check --config "$work/ringlb.toml"

cat <<MSG

ringlb is starting on http://127.0.0.1:8080 in front of 127.0.0.1:6400-6402. Try:
  curl -s http://127.0.0.1:8080/api/v1/todos        # run it a few times: served_by rotates
  curl -s http://127.0.0.1:8080/api/v1/health
Targets file: $work/targets/web.txt     Ctrl-C to stop.

MSG
target/release/ringlb run --config "$work/ringlb.toml" &
pids+=($!)
wait "${pids[-1]}"
