#!/usr/bin/env bash
# Gateway benchmark: user-space RSS per idle authenticated connection, server CPU per
# heartbeat, and the time for one push to reach every connection.
#
#   N=19000 HB_MS=10000 PUSHES=5 loadtest/scripts/gateway-bench.sh
#
# Starts a release gateway (2 workers) on 127.0.0.1:7300/7380 and one `holdfast-loadtest
# hold` process with N connections (each process stays under the 20,000 open-file limit).
# Needs root for the sysctl below (see ../shared/anchors/scale.md); prints one summary line.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-19000}
HB_MS=${HB_MS:-10000}
PUSHES=${PUSHES:-5}
WINDOW=${WINDOW:-30}
TCP=127.0.0.1:7300
HTTP=127.0.0.1:7380

sysctl -qw net.ipv4.ip_local_port_range="1024 65535" 2>/dev/null || true
cargo build --release -q -p holdfast-gateway -p holdfast-loadtest
GW=target/release/holdfast-gateway
LT=target/release/holdfast-loadtest
OUT=$(mktemp -d)
cleanup() { kill "${LTPID:-}" "${GWPID:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$OUT"; }
trap cleanup EXIT

RUST_LOG=warn "$GW" --set listen.addr=$TCP --set http.addr=$HTTP --set node.workers=2 \
  --set heartbeat.min_ms=$HB_MS --set heartbeat.default_ms=$HB_MS >"$OUT/gw.out" 2>"$OUT/gw.err" &
GWPID=$!
for _ in $(seq 100); do grep -q ready "$OUT/gw.out" 2>/dev/null && break; sleep 0.1; done
sleep 1
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$GWPID/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$GWPID/stat"; }
heartbeats() { curl -s "http://$HTTP/metrics" | awk '/^holdfast_gateway_heartbeats_total / {print $2}'; }
RSS0=$(rss_kb)

"$LT" hold --addr $TCP --http $HTTP --connections "$N" --rate 4000 --heartbeat-ms "$HB_MS" \
  --push-all "$PUSHES" --hold-secs $((WINDOW + 30)) >"$OUT/lt.out" 2>&1 &
LTPID=$!
for _ in $(seq 1200); do
  if [ "$PUSHES" -gt 0 ]; then grep -q "^push_all $((PUSHES - 1)):" "$OUT/lt.out" && break
  else grep -q '^established=' "$OUT/lt.out" && break; fi
  sleep 0.1
done
cat "$OUT/lt.out"
sleep 10                                  # connected and quiet
RSS1=$(rss_kb)
T0=$(cpu_ticks); H0=$(heartbeats)
sleep "$WINDOW"
T1=$(cpu_ticks); H1=$(heartbeats)
EST=$(curl -s "http://$HTTP/v1/stats" | sed -E 's/.*"established":([0-9]+).*/\1/')
HZ=$(getconf CLK_TCK)
awk -v n="$EST" -v r0="$RSS0" -v r1="$RSS1" -v t0="$T0" -v t1="$T1" -v h0="$H0" -v h1="$H1" -v hz="$HZ" 'BEGIN {
  hb = h1 - h0; cpu_us = (t1 - t0) * 1e6 / hz;
  printf "established=%d rss0_kib=%d rssN_kib=%d bytes_per_conn=%.0f heartbeats=%d cpu_ms=%.0f cpu_us_per_heartbeat=%.1f\n",
    n, r0, r1, (r1 - r0) * 1024 / n, hb, cpu_us / 1000, (hb > 0 ? cpu_us / hb : 0) }'
