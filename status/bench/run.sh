#!/usr/bin/env bash
# Status benchmark, in one run, side by side (docs/BENCHMARKS.md § Status cluster):
#   1. redis-server with `redis-benchmark -P 16` doing HSET (the reference);
#   2. a local 3-node status cluster (R = 2), 16 writes per request;
#   3. its lookup capacity, then lookups at half the write rate, 16 users per request
#      (open loop): p50/p99/p99.9;
#   4. memory per stored session on a one-node status ring (RSS delta for 1,000,000);
#   5. the same write and lookup workload through our Redis backend.
# Everything runs on 127.0.0.1 with ports the kernel picks free; every process it starts is
# killed on exit. SECS (default 10) is the length of each timed phase.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${SECS:-10}
FILL=${FILL:-1000000}
# Runtime threads per status node (node.threads).
THREADS=${THREADS:-1}
cargo build --release -j 1 -p holdfast-status --bins >&2
BIN=target/release/holdfast-status
BENCH=target/release/holdfast-status-bench
export HOLDFAST_STATUS_SECRET=bench-secret
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { # file
  for _ in $(seq 1 300); do grep -q 'holdfast-status ready' "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "node did not start: $1" >&2; exit 1
}
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {print int($2/1024/1024)}' /proc/meminfo) GiB, $(uname -sr), redis $(redis-server --version | awk '{print $3}')"
echo "== load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

# 1. redis-server + redis-benchmark
RP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" >/dev/null &
pids+=($!)
for _ in $(seq 1 100); do redis-cli -p "$RP" ping >/dev/null 2>&1 && break; sleep 0.1; done
VALUE='42:00000000000000000001:1:1:device-1'
N=$((200000 * SECS))
echo "== 1. redis-benchmark -P 16 -c 16 -n $N -r 100000 HSET presence:{__rand_int__} 42:__rand_int__ <35-byte value>"
redis-benchmark -h 127.0.0.1 -p "$RP" -P 16 -c 16 -n "$N" -r 100000 -q \
  HSET 'presence:{__rand_int__}' '42:__rand_int__' "$VALUE" | tr '\r' '\n' | grep -v '^$' | tail -1
redis-cli -p "$RP" flushall >/dev/null

# 2. 3-node status cluster
ports=($(free_port) $(free_port) $(free_port))
members="cluster.members=[{id=1, addr=\"127.0.0.1:${ports[0]}\"}, {id=2, addr=\"127.0.0.1:${ports[1]}\"}, {id=3, addr=\"127.0.0.1:${ports[2]}\"}]"
for i in 1 2 3; do
  RUST_LOG=warn "$BIN" --set "node.id=$i" --set "$members" --set "node.data_addr=127.0.0.1:${ports[$((i-1))]}" \
    --set node.admin_addr=127.0.0.1:0 --set "node.threads=$THREADS" >"$tmp/node$i.out" 2>"$tmp/node$i.err" &
  pids+=($!)
done
for i in 1 2 3; do wait_ready "$tmp/node$i.out"; done
seeds="127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
echo "== 2. status cluster, 3 nodes, R = 2: 16 callers × batches of 16 writes, ${SECS}s"
out=$("$BENCH" write --status "$seeds" --batch 16 --callers 16 --secs "$SECS")
echo "$out"
rate=$(echo "$out" | sed -n 's/.*writes_per_sec=\([0-9]*\).*/\1/p')
half=$((rate / 2))
echo "== 3a. status cluster lookup capacity (closed loop): 16 callers × 16 users per request, ${SECS}s"
"$BENCH" lookup-max --status "$seeds" --batch 16 --callers 16 --secs "$SECS"
echo "== 3. status cluster lookups at half that rate: $half users/s, 16 users per request, ${SECS}s"
"$BENCH" lookup --status "$seeds" --batch 16 --rate "$half" --secs "$SECS"
echo "== 3b. same, 1 user per request at $((half / 16)) requests/s"
"$BENCH" lookup --status "$seeds" --batch 1 --rate "$((half / 16))" --secs "$SECS"

# 4. memory per stored session, one-node ring
MP=$(free_port)
RUST_LOG=warn "$BIN" --set node.id=1 --set "node.data_addr=127.0.0.1:$MP" --set node.admin_addr=127.0.0.1:0 \
  --set cluster.replicas=1 >"$tmp/mem.out" 2>"$tmp/mem.err" &
mpid=$!
pids+=($mpid)
wait_ready "$tmp/mem.out"
"$BENCH" fill --status "127.0.0.1:$MP" --users 1000 >/dev/null   # warm the connection and allocator
before=$(rss_kib "$mpid")
"$BENCH" fill --status "127.0.0.1:$MP" --users "$FILL" >/dev/null
sleep 1
after=$(rss_kib "$mpid")
echo "== 4. memory: one-node ring, $FILL sessions (user ids 'user-N' ~11.9 B, device 'device-1' 8 B)"
echo "rss_before_kib=$before rss_after_kib=$after bytes_per_session=$(( (after - before) * 1024 / FILL ))"
used0=$(redis-cli -p "$RP" info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p')
"$BENCH" fill --redis "redis://127.0.0.1:$RP/" --users "$FILL" >/dev/null
used1=$(redis-cli -p "$RP" info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p')
echo "redis (our Redis backend's keys) used_memory per session: $(( (used1 - used0) / FILL )) B"
redis-cli -p "$RP" flushall >/dev/null

# 5. the same workload through our Redis backend
echo "== 5. our Redis backend on the same redis-server: 16 callers × batches of 16 writes, ${SECS}s"
out=$("$BENCH" write --redis "redis://127.0.0.1:$RP/" --batch 16 --callers 16 --secs "$SECS")
echo "$out"
rrate=$(echo "$out" | sed -n 's/.*writes_per_sec=\([0-9]*\).*/\1/p')
echo "== 5b. our Redis backend lookups at half that rate: $((rrate / 2)) users/s, 16 users per request"
"$BENCH" lookup --redis "redis://127.0.0.1:$RP/" --batch 16 --rate "$((rrate / 2))" --secs "$SECS"
echo "== load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
