#!/usr/bin/env bash
# Gateway benchmark: user-space RSS per idle authenticated connection, server CPU per
# heartbeat, and the time for one push to reach every connection.
#
#   N=19000 HB_MS=10000 PUSHES=5 WINDOW=30 loadtest/scripts/gateway-bench.sh
#
# Starts a release gateway (2 workers) on 127.0.0.1:7300/7380 and one `holdfast-loadtest run`
# with N clients in one worker process (each process stays under the 20,000 open-file
# limit): connect at 4,000/s, 10 s quiet, a WINDOW-second hold measured from /proc (gateway
# CPU over the PONGs the clients got; RSS growth over established connections), then PUSHES
# pushes to all. Widens the local port range when allowed (see ../shared/anchors/scale.md).
# Prints the run's summary; result.json and report.html land in $OUT (default a temp dir).
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-19000}
HB_MS=${HB_MS:-10000}
PUSHES=${PUSHES:-5}
WINDOW=${WINDOW:-30}
TCP=127.0.0.1:7300
HTTP=127.0.0.1:7380
OUT=${OUT:-$(mktemp -d)}

sysctl -qw net.ipv4.ip_local_port_range="1024 65535" 2>/dev/null || true
cargo build --release -q -p holdfast-gateway -p holdfast-loadtest
GW=target/release/holdfast-gateway
LT=target/release/holdfast-loadtest
cleanup() { kill "${GWPID:-}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

RUST_LOG=warn "$GW" --set listen.addr=$TCP --set http.addr=$HTTP --set node.workers=2 \
  --set heartbeat.min_ms="$HB_MS" --set heartbeat.default_ms="$HB_MS" >"$OUT/gw.out" 2>"$OUT/gw.err" &
GWPID=$!
for _ in $(seq 100); do grep -q ready "$OUT/gw.out" 2>/dev/null && break; sleep 0.1; done
grep -q ready "$OUT/gw.out" || { echo "gateway did not start:"; cat "$OUT/gw.err"; exit 1; }

"$LT" run --gateway "$TCP/$HTTP" --gateway-pid "$GWPID" --clients "$N" --rate 4000 \
  --heartbeat-ms "$HB_MS" --scenarios heartbeat-cpu,broadcast --settle-secs 10 \
  --hold-secs "$WINDOW" --broadcasts "$PUSHES" --quiet --out "$OUT"
