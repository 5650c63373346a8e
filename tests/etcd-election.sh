#!/usr/bin/env bash
# How long a 3-member etcd (on loopback) refuses writes after its Raft leader is killed with SIGKILL: the part
# of an "etcd leader member lost" pause that is etcd's own election, whatever its clients do. Five rounds; each
# finds the leader (etcd_server_is_leader on /metrics), kills it, times until a put through the gRPC gateway
# of another member succeeds, and restarts the member.
#
# Usage: bash tests/etcd-election.sh [etcd flags...]
#   bash tests/etcd-election.sh                                                  # etcd's defaults (100 ms / 1 s)
#   bash tests/etcd-election.sh --heartbeat-interval=50 --election-timeout=500   # what Allot's deploy uses
# Figures: docs/operations.md, "Running etcd".
set -u
command -v etcd >/dev/null || { echo "needs etcd (apt-get install etcd-server)" >&2; exit 1; }
dir=$(mktemp -d)
base=$((20000 + RANDOM % 20000))
initial=""
for i in 0 1 2; do initial+="e$i=http://127.0.0.1:$((base + 10 + i)),"; done
initial=${initial%,}
declare -a pids
start() { # member index, flags...
  local i=$1; shift
  etcd --name "e$i" --data-dir "$dir/e$i" \
    --listen-client-urls "http://127.0.0.1:$((base + i))" --advertise-client-urls "http://127.0.0.1:$((base + i))" \
    --listen-peer-urls "http://127.0.0.1:$((base + 10 + i))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((base + 10 + i))" \
    --initial-cluster "$initial" --initial-cluster-token t "$@" >>"$dir/e$i.log" 2>&1 &
  pids[i]=$!
}
stop_all() { kill -9 "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"; }
trap stop_all EXIT
for i in 0 1 2; do start "$i" "$@"; done
sleep 3
for round in 1 2 3 4 5; do
  leader=-1
  for j in 0 1 2; do
    curl -s "http://127.0.0.1:$((base + j))/metrics" | grep -q '^etcd_server_is_leader 1' && leader=$j
  done
  ((leader >= 0)) || { echo "round $round: no leader yet"; sleep 1; continue; }
  t0=$(date +%s.%N)
  { kill -9 "${pids[leader]}"; wait "${pids[leader]}"; } 2>/dev/null
  ok=0
  until ((ok)); do
    for j in 0 1 2; do
      ((j == leader)) && continue
      curl -s -m 0.3 -X POST "http://127.0.0.1:$((base + j))/v3/kv/put" -d '{"key":"aw==","value":"dg=="}' |
        grep -q revision && { ok=1; break; }
    done
  done
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" -v r="$round" 'BEGIN { printf "round %d: writes refused for %.2f s after the leader was killed\n", r, b - a }'
  start "$leader" "$@"
  sleep 3
done
