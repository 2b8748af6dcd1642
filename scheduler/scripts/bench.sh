#!/usr/bin/env bash
# The scheduler benchmark of record (docs/BENCHMARKS.md § Scheduler), in one run: decision
# time at 10, 100 and 1,000 gateways, then a bare axum handler and the real dispatch
# endpoint side by side under the same load tool. Arguments: SECONDS per run (default 5),
# CONNECTIONS (default 32), ROUNDS of interleaved runs (default 5).
set -euo pipefail
cd "$(dirname "$0")/../.."
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
cargo bench -p holdfast-scheduler --bench dispatch -- "${1:-5}" "${2:-32}" "${3:-5}"
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
