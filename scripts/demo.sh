#!/usr/bin/env bash
# Runs ringlb for real in front of three local demo backends (the todo API on
# 127.0.0.1:6400-6402): config/demo.toml, listening on 127.0.0.1:8080, reading
# its targets from config/targets/web.txt (edit it while the demo runs: hot
# reload). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# Only what runs is built: ringlb and the demo backend (the first build
# compiles about 140 crates: about two and a half minutes on this project's 2-core machine
# with the crates downloaded).
cargo build --release --bin ringlb --bin demo-backend

# Every port the demo uses must be free: on a taken one, ringlb would
# balance onto whatever listens there (course students often run their own
# todo API on 6400).
taken=()
for port in 6400 6401 6402 8080 9900; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    taken+=("$port")
  fi
done
if [ ${#taken[@]} -gt 0 ]; then
  echo "demo: 127.0.0.1 port(s) ${taken[*]} already in use by another program; the demo needs" >&2
  echo "  6400-6402 (backends), 8080 (ringlb) and 9900 (admin). See who listens: ss -ltnp" >&2
  echo "  Stop it, or run ringlb in front of it instead: edit config/demo.toml and" >&2
  echo "  config/targets/web.txt, then: target/release/ringlb run --config config/demo.toml" >&2
  exit 1
fi

pids=()
cleanup() {
  trap '' INT TERM # a second Ctrl-C must not cut the clean-up short
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for port in 6400 6401 6402; do
  target/release/demo-backend --port "$port" &
  pids+=($!)
done

target/release/ringlb check --config config/demo.toml
target/release/ringlb run --config config/demo.toml &
lb=$!
pids+=("$lb")

# The banner comes once every listener is bound: /healthz answers 200 then.
healthz() {
  exec 3<>/dev/tcp/127.0.0.1/9900 || return 1
  printf 'GET /healthz HTTP/1.0\r\n\r\n' >&3
  local status
  read -r _ status _ <&3 || status=""
  exec 3<&-
  [ "$status" = 200 ]
}
for _ in $(seq 100); do
  kill -0 "$lb" 2>/dev/null || { echo "ringlb exited; see its log above" >&2; exit 1; }
  for p in "${pids[@]:0:3}"; do
    kill -0 "$p" 2>/dev/null || { echo "a demo backend exited; see its log above" >&2; exit 1; }
  done
  healthz 2>/dev/null && break
  sleep 0.1
done
healthz 2>/dev/null || { echo "ringlb did not become ready in 10 s" >&2; exit 1; }

cat <<MSG

ringlb is listening on http://127.0.0.1:8080 in front of 127.0.0.1:6400-6402. Try:
  curl -s http://127.0.0.1:8080/api/v1/todos     # a few times: served_by rotates
  curl -s http://127.0.0.1:9900/targets          # admin endpoint: targets and health
  curl -s http://127.0.0.1:9900/metrics          # Prometheus metrics
Hot reload: edit $root/config/targets/web.txt
  (remove a line: that target drains; add it back: it returns after one health check)
Ctrl-C to stop.

MSG
wait "$lb"
