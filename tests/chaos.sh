#!/usr/bin/env bash
# The chaos test, as a user would run it: a replicated cluster of real processes (deploy/local/run.sh --ha: a
# 3-member etcd, two registries, two allocators, two offer-brokers, three agents, every process under a loop
# that restarts it 1 s after it exits), `allot batch` (not a test framework) over real tasks, and in turn:
# kill -9 of the broker leader, the allocator leader, the registry leader, a broker standby, an agent, the etcd
# member that leads, and every etcd member at once (a whole-etcd restart); then a network cut of an agent for
# 8 s, longer than the registry's agent timeout (5 s), so that the cluster declares it unreachable and it comes
# back (the third agent runs in a network namespace of its own, joined to the host by a veth pair; the cut is a
# blackhole route each way, so packets vanish as on a partitioned network; it needs root and `ip netns`, and is
# skipped with a message without them).
#
# With --preemption, preemption runs through all of it: before the job, a second `allot batch` of role `hog`
# takes every CPU of the cluster with long tasks, so that the job's framework is starved; the allocator (grace
# 3 s) revokes the hog's youngest tasks for it, they end TASK_KILLED with REASON_PREEMPTED and the hog batch
# launches them again, while the faults go on.
#
# Each task appends "<unix time> <task id>" to a ledger when it starts (the job's and the hog's each their
# own). The test asserts that both batches exit 0 (every task finished), that no launch (task ID) started twice
# in either, that no task of the job started twice (a task launched again after TASK_DROPPED or TASK_LOST is
# counted under its job ID), that a hog task started again only after a preemption of it (starts of a job task
# <= 1 + its launches the allocators logged as preempted) and at least one was (with --preemption), and that no pause in
# the job's task starts after a fault is longer than 3 s (after the whole-etcd restart: the time etcd took to
# answer again plus 1 s): the longest wait between task starts in the 5 s after each fault. It prints those
# pauses; docs/reliability.md has the figures.
#
# Usage: bash tests/chaos.sh [--tasks N] [--task-seconds S] [--concurrency C] [--short] [--preemption]
#   default   1,500 tasks of 1 s, 24 at a time (about 75 s)
#   --short   1,200 tasks of 1 s, 24 at a time (about 60 s): the form CI runs
# The faults come every 5 s from 3 s after the batch starts.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$repo/deploy/local/ensure-deps.sh"
tasks=1500
task_seconds=1
concurrency=24
preemption=0
while (($#)); do
  case "$1" in
    --tasks) tasks=$2; shift 2 ;;
    --task-seconds) task_seconds=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --short) tasks=1200; task_seconds=1; shift ;;
    --preemption) preemption=1; shift ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 64 ;;
  esac
done

# A cluster of an earlier run still up (a chaos run or run.sh killed with SIGKILL) would answer in this one's
# place: refuse to start beside it.
leftover=$(pgrep -f -- "--work-dir $repo/.allot/demo/agent|--data-dir $repo/.allot/demo/etcd" | tr '\n' ' ' || true)
if [[ -n ${leftover// /} ]]; then
  echo "a cluster from an earlier run is still running (pids $leftover); stop it first" >&2
  exit 1
fi
out="$repo/.allot/chaos"
rm -rf "$out"
mkdir -p "$out"
demo="$repo/.allot/demo"
rm -f "$demo/cluster.env"

# The network namespace of the agent that is cut off, and the veth pair that joins it to this host.
ns=allot-chaos ns_host=10.231.77.1 ns_agent=10.231.77.2
netns_down() {
  ip netns del "$ns" 2>/dev/null || true
  ip link del allot-chaos0 2>/dev/null || true
}
netns_up() {
  netns_down
  ip netns add "$ns" &&
    ip link add allot-chaos0 type veth peer name allot-chaos1 &&
    ip link set allot-chaos1 netns "$ns" &&
    ip addr add "$ns_host/30" dev allot-chaos0 && ip link set allot-chaos0 up &&
    ip netns exec "$ns" ip addr add "$ns_agent/30" dev allot-chaos1 &&
    ip netns exec "$ns" ip link set allot-chaos1 up && ip netns exec "$ns" ip link set lo up
}
# net_cut / net_heal: packets between the agent's namespace and the host vanish / flow again. (Not `cut`: that
# would shadow coreutils' cut, which the checks below use.)
net_cut() { ip route add blackhole "$ns_agent/32" && ip netns exec "$ns" ip route add blackhole "$ns_host/32"; }
net_heal() {
  ip route del blackhole "$ns_agent/32" 2>/dev/null || true
  ip netns exec "$ns" ip route del blackhole "$ns_host/32" 2>/dev/null || true
}
cut_seconds=8
cluster_args=(--ha --cluster-only)
if netns_up 2>"$out/netns.log"; then
  network_cut=1
  cluster_args+=(--address "$ns_host" --agent-netns "$ns=$ns_agent")
else
  network_cut=0
  netns_down
  echo "==> SKIPPING the network cut: cannot make a network namespace ($(head -c 200 "$out/netns.log")); run as root with iproute2"
fi

echo "==> starting a replicated cluster (deploy/local/run.sh ${cluster_args[*]}; log: $out/cluster.log)"
bash "$repo/deploy/local/run.sh" "${cluster_args[@]}" >"$out/cluster.log" 2>&1 &
cluster=$!
batch=""
hog=""
healer=""
finish() {
  local code=$?
  trap - EXIT INT TERM
  [[ -n $batch ]] && { kill -TERM "$batch" 2>/dev/null || true; }
  [[ -n $hog ]] && { kill -TERM "$hog" 2>/dev/null || true; }
  [[ -n $healer ]] && { kill -TERM "$healer" 2>/dev/null || true; }
  kill -TERM "$cluster" 2>/dev/null || true
  wait 2>/dev/null || true
  ((network_cut)) && { net_heal; netns_down; }
  exit "$code"
}
trap finish EXIT
trap 'exit 130' INT TERM
for _ in $(seq 1800); do
  [[ -f $demo/cluster.env ]] && break
  kill -0 "$cluster" 2>/dev/null || {
    echo "the cluster did not start; the end of $out/cluster.log:" >&2
    tail -n 15 "$out/cluster.log" >&2
    exit 1
  }
  sleep 0.2
done
[[ -f $demo/cluster.env ]] || { echo "the cluster did not start in time; see $out/cluster.log" >&2; exit 1; }
# shellcheck disable=SC1091
source "$demo/cluster.env"


# leader_of service metrics-list addr-list: the gRPC address of the replica whose /metrics says it leads.
leader_of() {
  local service=$1 i=0
  local -a ms addrs
  read -r -a ms <<<"$2"
  IFS=, read -r -a addrs <<<"$3"
  for m in "${ms[@]}"; do
    # Read whole before grep: `grep -q` would stop reading early, and pipefail would call that a failure.
    body=$(allot_http_get "$m" /metrics 2>/dev/null) || true
    if grep -q "^allot_leader{service=\"$service\"} 1" <<<"$body"; then
      echo "${addrs[i]}"
      return
    fi
    i=$((i + 1))
  done
}

# pid_listening addr: the process serving gRPC at addr (started with --listen addr).
pid_listening() { [[ -n $1 ]] && { pgrep -f -- "--listen $1( |\$)" || true; } | head -n 1; }

# etcd_leader: the client address (host:port) of the etcd member that leads, from etcd's own /metrics (served
# in plain HTTP on ALLOT_ETCD_METRICS, in the order of ALLOT_ETCD_ENDPOINTS; the client port needs a certificate).
etcd_leader() {
  local i=0 m clients
  IFS=, read -r -a clients <<<"$ALLOT_ETCD_ENDPOINTS"
  for m in ${ALLOT_ETCD_METRICS//,/ }; do
    body=$(allot_http_get "$m" /metrics 2>/dev/null) || true
    if grep -q '^etcd_server_is_leader 1' <<<"$body"; then
      echo "${clients[i]#*://}"
      return
    fi
    i=$((i + 1))
  done
}

etcd_healthy() { # every member answers /health with a leader
  local m
  for m in ${ALLOT_ETCD_METRICS//,/ }; do
    body=$(allot_http_get "$m" /health 2>/dev/null) || return 1
    grep -q '"health":"true"' <<<"$body" || return 1
  done
}

# The hog: tasks of 15 s, cpus 0.1 each, as many at a time as fill every CPU of the agents (each has
# max(1, cores / 3) CPUs), in a role of its own.
agent_cpus=$(awk -v c="$(nproc)" 'BEGIN { x = c / 3; if (x < 1) x = 1; printf "%.2f", x }')
hog_concurrency=$(awk -v a="$agent_cpus" 'BEGIN { printf "%d", 3 * a / 0.1 }')
hog_tasks=$((2 * hog_concurrency))
hog_ledger="$out/hog-ledger"
: >"$hog_ledger"
if ((preemption)); then
  {
    echo 'name = "chaos-hog"'
    echo 'role = "hog"'
    echo "concurrency = $hog_concurrency"
    echo 'resources = "cpus:0.1;mem:16"'
    for ((i = 1; i <= hog_tasks; i++)); do
      echo "[[tasks]]"
      echo "id = \"h$i\""
      echo "command = \"echo \$(date +%s.%N) \$ALLOT_TASK_ID >> $hog_ledger; sleep 15\""
    done
  } >"$out/hog.toml"
  echo "==> the hog: $hog_tasks tasks of 15 s, $hog_concurrency at a time (every CPU), role hog"
  allot batch "$out/hog.toml" --quiet --json >"$out/hog-summary.json" 2>"$out/hog-batch.log" &
  hog=$!
  for _ in $(seq 600); do
    (( $(wc -l <"$hog_ledger") >= hog_concurrency )) && break
    kill -0 "$hog" 2>/dev/null || { echo "the hog batch ended early; see $out/hog-batch.log" >&2; exit 1; }
    sleep 0.1
  done
  (( $(wc -l <"$hog_ledger") >= hog_concurrency )) || { echo "the hog did not take the cluster in 60 s" >&2; exit 1; }
fi

echo "==> the job: $tasks tasks of ${task_seconds}s, $concurrency at a time"
ledger="$out/ledger"
: >"$ledger"
{
  echo 'name = "chaos"'
  echo "concurrency = $concurrency"
  echo 'resources = "cpus:0.05;mem:16"'
  for ((i = 1; i <= tasks; i++)); do
    echo "[[tasks]]"
    echo "id = \"c$i\""
    echo "command = \"echo \$(date +%s.%N) \$ALLOT_TASK_ID >> $ledger; sleep $task_seconds\""
  done
} >"$out/job.toml"

allot batch "$out/job.toml" --quiet --json >"$out/summary.json" 2>"$out/batch.log" &
batch=$!

started() { wc -l <"$ledger"; }
now() { date +%s.%N; }
faults=(
  "broker leader"
  "allocator leader"
  "registry leader"
  "broker standby"
  "agent"
  "etcd leader member"
  "whole etcd"
)
((network_cut)) && faults+=("agent network cut")
# find_target fault: the process(es) to kill for `fault` (empty if not found now).
find_target() {
  local lead a standby="" member
  case "$1" in
    "broker leader") pid_listening "$(leader_of offer-broker "$metrics_allot_offer_broker" "$ALLOT_BROKER")" ;;
    "allocator leader") pid_listening "$(leader_of allocator "$metrics_allot_allocator" "$ALLOT_ALLOCATOR")" ;;
    "registry leader") pid_listening "$(leader_of registry "$metrics_allot_registry" "$ALLOT_REGISTRY")" ;;
    "broker standby")
      lead=$(leader_of offer-broker "$metrics_allot_offer_broker" "$ALLOT_BROKER")
      [[ -n $lead ]] || return 0
      for a in ${ALLOT_BROKER//,/ }; do [[ $a != "$lead" ]] && standby=$a; done
      pid_listening "$standby" ;;
    "agent") { pgrep -f -- "--work-dir $demo/agent1( |\$)" || true; } | head -n 1 ;;
    "etcd leader member")
      member=$(etcd_leader)
      [[ -n $member ]] || return 0
      { pgrep -f -- "--listen-client-urls https://$member( |\$)" || true; } | head -n 1 ;;
    "whole etcd")
      until etcd_healthy && (( $(pgrep -fc -- "^etcd --name allot" || true) == 3 )); do sleep 0.1; done
      pgrep -f -- "^etcd --name allot" | tr '\n' ' ' ;;
    "agent network cut") echo "agent3 at $ns_agent" ;;
  esac
}
declare -a fault_at=() fault_limit=()
# The batch is under way once tasks start.
until (( $(started) > 0 )); do
  kill -0 "$batch" 2>/dev/null || { echo "the batch ended early; see $out/batch.log" >&2; exit 1; }
  sleep 0.1
done
t0=$(now)
for ((f = 0; f < ${#faults[@]}; f++)); do
  # Fault f at 3 + 5 f seconds.
  while awk -v t0="$t0" -v n="$(now)" -v f="$f" 'BEGIN { exit !(n < t0 + 3 + 5 * f) }'; do
    kill -0 "$batch" 2>/dev/null || { echo "the batch ended before fault $f; make the job longer" >&2; exit 1; }
    sleep 0.1
  done
  fault=${faults[f]}
  limit=3
  # The process to kill; a leader may be changing hands (the previous fault), so look again for up to 5 s.
  target=""
  for _ in $(seq 50); do
    target=$(find_target "$fault")
    [[ -n ${target// /} ]] && break
    sleep 0.1
  done
  if [[ -z ${target// /} ]]; then
    echo "cannot find the process for: $fault" >&2
    exit 1
  fi
  at=$(now)
  if [[ $fault == "agent network cut" ]]; then
    net_cut
    (sleep "$cut_seconds"; net_heal) &
    healer=$!
    printf '    %-20s %s, for %s s\n' "$fault" "$target" "$cut_seconds"
    fault_at+=("$at"); fault_limit+=("$limit")
    continue
  fi
  # shellcheck disable=SC2086
  kill -9 $target
  if [[ $fault == "whole etcd" ]]; then
    until etcd_healthy; do sleep 0.1; done
    back=$(now)
    limit=$(awk -v a="$at" -v b="$back" 'BEGIN { printf "%.2f", b - a + 1 }')
  fi
  printf '    %-20s kill -9 %s\n' "$fault" "$target"
  fault_at+=("$at"); fault_limit+=("$limit")
done

# await_batch NAME PID SECONDS LOG: waits at most SECONDS for the batch PID to end, stops it past them, and sets
# `exit_code` to its exit status (124 when it had to be stopped).
await_batch() {
  local name=$1 pid=$2 seconds=$3 log=$4 deadline=$(( $(date +%s) + $3 ))
  while kill -0 "$pid" 2>/dev/null && (( $(date +%s) < deadline )); do sleep 0.5; done
  exit_code=0
  if kill -0 "$pid" 2>/dev/null; then
    echo "FAIL: $name did not finish within ${seconds}s"
    kill -TERM "$pid" 2>/dev/null || true
    exit_code=124
  fi
  wait "$pid" || exit_code=$?
  echo "    $name exited $exit_code: $(tail -n 3 "$log" | tr '\n' ' ' | cut -c1-200)"
}
# The job takes tasks * seconds / concurrency; give it three times that and two minutes more.
patience=$(awk -v n="$tasks" -v s="$task_seconds" -v c="$concurrency" 'BEGIN { printf "%d", 3 * n * s / c + 120 }')
echo "==> waiting for the batch (at most ${patience}s)"
await_batch "allot batch" "$batch" "$patience" "$out/batch.log"
code=$exit_code batch=""
# The hog's tasks are 15 s each: give it as long as its work takes again, and a minute more.
hog_code=0
if ((preemption)); then
  await_batch "the hog batch" "$hog" $((2 * hog_tasks * 15 / hog_concurrency + 60)) "$out/hog-batch.log"
  hog_code=$exit_code hog=""
fi

if ((network_cut)); then
  # What the cut did: launches the cut-off agent refused (held up, then fenced off: allot_agent::fence), and
  # tasks it reported live that the broker had ended and so had it kill.
  refused=$(cat "$demo"/logs/agent3.log | grep -c "launch refused" || true)
  stale=$(cat "$demo"/logs/broker*.log | grep -c "reports live a task that has ended" || true)
  echo "    the cut-off agent refused $refused launch call(s); the broker killed $stale task(s) it had ended"
fi

echo "==> checking the ledgers ($(started) task starts of the job, $(wc -l <"$hog_ledger") of the hog)"
failed=0
((code == 0)) || { echo "FAIL: allot batch exited $code (see $out/batch.log, $out/summary.json)"; failed=1; }
((hog_code == 0)) || { echo "FAIL: the hog batch exited $hog_code (see $out/hog-batch.log)"; failed=1; }
# No launch started twice, in either ledger.
relaunched=$(awk '{ n[$2]++ } END { for (i in n) if (n[i] > 1) print i, n[i] }' "$ledger" "$hog_ledger")
[[ -z $relaunched ]] || { echo "FAIL: launches that started twice: $(echo $relaunched | cut -c1-300)"; failed=1; }
# The launches the allocators revoked (their `task preempted` log lines), and the hog's job tasks that started
# more often than once plus their preempted launches.
sed 's/\x1b\[[0-9;]*m//g' "$demo"/logs/allocator*.log | grep "task preempted" | grep -o 'task=[^ ]*' |
  cut -d= -f2 | sort -u >"$out/preempted" || true
preempted=$(wc -l <"$out/preempted")
hog_twice=$(awk 'FNR == NR { id = $1; sub(/-retry[0-9]+$/, "", id); p[id]++; next }
  { id = $2; sub(/-retry[0-9]+$/, "", id); n[id]++ }
  END { for (i in n) if (n[i] > 1 + p[i]) print i, n[i], "starts,", p[i] + 0, "preempted" }' "$out/preempted" "$hog_ledger")
[[ -z $hog_twice ]] || { echo "FAIL: hog tasks started again without a preemption: $(echo $hog_twice | cut -c1-300)"; failed=1; }
echo "    the allocators preempted $preempted launch(es) ($(grep -c '^h' "$out/preempted" || true) of the hog)"
if ((preemption && preempted == 0)); then
  echo "FAIL: nothing was preempted: the job's framework was never starved past the grace"
  failed=1
fi
# Every job task started exactly once, whatever task ID its launch had.
twice=$(awk '{ id = $2; sub(/-retry[0-9]+$/, "", id); n[id]++ } END { for (i in n) if (n[i] > 1) print i, n[i] }' "$ledger")
missing=$(awk -v t="$tasks" '{ id = $2; sub(/-retry[0-9]+$/, "", id); seen[id] = 1 }
  END { m = 0; for (i = 1; i <= t; i++) if (!(("c" i) in seen)) m++; print m }' "$ledger")
[[ -z $twice ]] || { echo "FAIL: tasks that started twice: $(echo $twice | cut -c1-300)"; failed=1; }
((missing == 0)) || {
  echo "FAIL: $missing tasks never started: $(awk -v t="$tasks" '{ id = $2; sub(/-retry[0-9]+$/, "", id); seen[id] = 1 }
    END { for (i = 1; i <= t; i++) if (!(("c" i) in seen)) printf "c%d ", i }' "$ledger" | cut -c1-300)"
  failed=1
}
retried=$(grep -c -- '-retry' "$ledger" || true)
echo "    every task started once: $([[ -z $twice && $missing == 0 ]] && echo yes || echo no); $retried of them under a retry ID"

echo "==> pause in task starts after each fault"
printf '    | %-20s | %9s | %7s |\n' fault pause limit
for ((f = 0; f < ${#faults[@]}; f++)); do
  # The longest wait between task starts in the 5 s after the fault (from the fault to the first start, and
  # between starts): how long launching stopped.
  pause=$(sort -n "$ledger" | awk -v at="${fault_at[f]}" '
    $1 >= at && $1 <= at + 5 { if ($1 - prev > max) max = $1 - prev; prev = $1; n++ }
    $1 < at { prev = at }
    END { if (n) printf "%.2f", max }')
  pause=${pause:-none}
  printf '    | %-20s | %7s s | %5s s |\n' "${faults[f]}" "$pause" "${fault_limit[f]}"
  if [[ $pause == none ]] || awk -v p="$pause" -v l="${fault_limit[f]}" 'BEGIN { exit !(p > l) }'; then
    echo "FAIL: after '${faults[f]}' tasks started again only after ${pause} s (limit ${fault_limit[f]} s)"
    failed=1
  fi
done
if ((failed)); then
  echo "==> chaos test FAILED (outputs in $out, cluster logs in $demo/logs)"
  exit 1
fi
echo "==> chaos test passed"
