#!/usr/bin/env bash
# Idle memory per QUIC connection: the gateway's RSS before and after N authenticated, idle
# QUIC connections (holdfast-loadtest quic-hold), divided by N.
#
#   scripts/quic-memory.sh N [extra gateway --set ...]
#   scripts/quic-memory.sh 5000 quic.quinn_defaults=true
#
# Uses the release binaries in target/release (cargo build --release -p holdfast-gateway
# -p holdfast-loadtest). Loopback only; every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:?usage: scripts/quic-memory.sh N [section.field=value ...]}
shift
bin=target/release
work=$(mktemp -d)
gw_pid="" hold_pid=""
cleanup() {
  [ -n "$hold_pid" ] && kill "$hold_pid" 2>/dev/null || true
  [ -n "$gw_pid" ] && kill "$gw_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

sets=(--set listen.addr=127.0.0.1:0 --set http.addr=127.0.0.1:0 --set quic.enabled=true
      --set quic.addr=127.0.0.1:0 --set "quic.dev_cert_dir=$work/cert")
for s in "$@"; do sets+=(--set "$s"); done
RUST_LOG=warn "$bin/holdfast-gateway" "${sets[@]}" >"$work/gw.out" 2>"$work/gw.err" &
gw_pid=$!
for _ in $(seq 1 200); do grep -q "ready:" "$work/gw.out" && break; sleep 0.1; done
grep -q "ready:" "$work/gw.out" || { cat "$work/gw.err"; exit 1; }
quic=$(grep -o 'quic=[^ ]*' "$work/gw.out" | cut -d= -f2)
sha=$(grep -o 'sha256=[0-9a-f]*' "$work/gw.out" | cut -d= -f2)
rss() { awk '/^VmRSS/ {print $2}' "/proc/$gw_pid/status"; }

sleep 2
before=$(rss)
"$bin/holdfast-loadtest" quic-hold --addr "$quic" --count "$n" --insecure-dev-cert "$sha" \
  >"$work/hold.out" 2>"$work/hold.err" &
hold_pid=$!
for _ in $(seq 1 1200); do
  grep -q "holding" "$work/hold.out" && break
  kill -0 "$hold_pid" 2>/dev/null || { cat "$work/hold.err"; exit 1; }
  sleep 0.1
done
grep -q "holding" "$work/hold.out" || { echo "not all $n connected"; exit 1; }
# Idle: no traffic but the (600 s) heartbeats; let allocations settle.
sleep 5
after=$(rss)
echo "connections=$n rss_before_kib=$before rss_after_kib=$after" \
     "bytes_per_connection=$(( (after - before) * 1024 / n ))" "sets=$*"
