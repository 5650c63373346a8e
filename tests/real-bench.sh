#!/usr/bin/env bash
# Real tasks through real agents, beside the machine's own limit for the same work (issue 24).
#
# Starts the local cluster (deploy/local/run.sh --cluster-only: etcd, the services, one agent of the whole
# machine as issue 24 measured its baseline, mutual TLS),
# then, for each round: the command N times through `xargs -P C` (no cluster: the ceiling), and the same N
# commands as one `allot batch` job with concurrency C. Prints per round tasks/s of each, Allot's share of the
# ceiling, and p50/p99 of each task's launch-to-terminal-seen time as `allot batch` measures it (from the
# ACCEPT that launched it to its terminal update at the framework); then the median round (by Allot's rate)
# and the median of the rounds' shares. Then the latency of one task alone: the same command L times, one at a
# time, through `allot batch` (p50/p99 launch-to-terminal-seen, as above) and through `xargs -P 1` (its mean
# per command). At concurrency C a task's time is mostly its wait for a CPU (Little's law: C tasks in flight at
# R tasks/s take C/R seconds each, 20/650 s = 31 ms even under `xargs`), so Allot's own overhead per task shows
# only in this probe.
#
# Usage: bash tests/real-bench.sh [--tasks N] [--concurrency C] [--command CMD] [--resources R] [--rounds K]
#                                 [--release] [--phases] [--slurm] [--agents N] [--latency L]
#                                 [--no-wait]
#   defaults: 1,000 tasks of `sha256sum /etc/os-release > /dev/null`, 20 at a time, cpus:0.05;mem:16 each,
#   3 rounds; --release builds and runs the release binaries (what docs/benchmarks.md reports). Every round
#   also prints the CPU each process spent per task (ms, from /proc: self, and children for agents: the
#   tasks). --phases runs the cluster with its local trace store (run.sh --traces: every process exports its
#   spans, which costs CPU, so rates are lower) and ends with `allot traces phases`: per service and step,
#   how many, p50/p99/mean and total milliseconds. --slurm ends with the same commands through a local Slurm
#   (tests/slurm-peer.sh: installs and configures Debian's slurm-wlm; root) and Allot's rate over Slurm's.
#   --agents N runs N agents instead of one, each an N-th of the machine (e.g. --agents 4 --concurrency 200
#   --resources 'cpus:0.01;mem:8', the issue's larger shape). With more agents than one, a job capped below
#   what the cluster could run is offered every agent with room after each REVIVE and declines all but one
#   (docs/benchmarks.md, session 33), which costs CPU the tasks then miss.
#   --latency L sets the one-at-a-time probe's task count (default 200; 0 skips it). A run that starts within
#   5 minutes of the previous one's end waits out the rest first (its deleted files slow new ones on ext4
#   without a journal; see below); --no-wait skips that.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tasks=1000
concurrency=20
command='sha256sum /etc/os-release > /dev/null'
resources='cpus:0.05;mem:16'
rounds=3
release=0
phases=0
slurm=0
agents=1
latency=200
wait_deletion=1
while (($#)); do
  case "$1" in
    --tasks) tasks=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --command) command=$2; shift 2 ;;
    --resources) resources=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --release) release=1; shift ;;
    --phases) phases=1; shift ;;
    --slurm) slurm=1; shift ;;
    --agents) agents=$2; shift 2 ;;
    --latency) latency=$2; shift 2 ;;
    --no-wait) wait_deletion=0; shift ;;
    -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 64 ;;
  esac
done
cd "$repo"
out=$repo/.allot/real-bench
rm -rf "$out"; mkdir -p "$out"

cluster_args=(--cluster-only --agents "$agents")
((phases)) && cluster_args+=(--traces)
# etcd and protoc, when missing (the release build below needs protoc before run.sh would install it).
source "$repo/deploy/local/ensure-deps.sh"
allot_ensure_deps
if ((release)); then
  echo "==> building release binaries"
  cargo build --release --bins --quiet
  cluster_args+=(--release)
fi
# The previous cluster's files (thousands of sandboxes) are moved aside now and deleted at the end, not
# deleted while the rounds run: on ext4 without a journal, making a file skips every inode freed in the last
# 5 minutes (`recently_deleted`), so a deletion just before the rounds slows the agents' sandboxes (one such
# run measured 3.5-4 ms of agent CPU per task instead of 2.2). Back-to-back runs there still see the previous
# run's deletion (agents 0.72-0.80 ms per task against about 0.5, session 33): a run started within 5 minutes
# of the last one's end waits out the rest, unless --no-wait.
deleted_at=.allot/real-bench-deleted-at
if ((wait_deletion)) && [[ -f $deleted_at ]]; then
  left=$(($(<"$deleted_at") + 300 - $(date +%s)))
  if ((left > 0)); then
    echo "==> the last run deleted its cluster's files under 5 minutes ago: waiting ${left}s (--no-wait skips)"
    sleep "$left"
  fi
fi
echo "==> starting the cluster (log: $out/cluster.log)"
if [[ -d .allot/demo ]]; then
  mkdir -p .allot/old
  mv .allot/demo ".allot/old/demo-$(date +%s%N)"
fi
setsid bash deploy/local/run.sh "${cluster_args[@]}" >"$out/cluster.log" 2>&1 &
cluster=$!
trap 'kill -TERM -- "-$cluster" 2>/dev/null || true; wait "$cluster" 2>/dev/null || true; rm -rf .allot/old; date +%s >"$deleted_at"' EXIT
for _ in $(seq 1200); do
  [[ -f .allot/demo/cluster.env ]] && grep -q "cluster up" "$out/cluster.log" && break
  kill -0 "$cluster" 2>/dev/null || { tail -n 20 "$out/cluster.log" >&2; exit 1; }
  sleep 0.5
done
source .allot/demo/cluster.env

# A job file of N tasks of the command, at concurrency C, their IDs <prefix>1..N: job_file N C PREFIX.
esc=${command//\\/\\\\}; esc=${esc//\"/\\\"}
job_file() {
  echo "name = \"real-bench\""; echo "concurrency = $2"; echo "resources = \"$resources\""
  for i in $(seq "$1"); do echo "[[tasks]]"; echo "id = \"$3$i\""; echo "command = \"$esc\""; done
}
job_file "$tasks" "$concurrency" t >"$out/job.toml"
# Runs job file $1 with `allot batch`, its JSON summary to $2.json, its log to $2.log; exits naming $3 if not
# every task finished (the message to fd 3, the script's stderr: a round times this with stderr in a file).
exec 3>&2
run_batch() {
  if ! allot batch "$1" --quiet --json >"$2.json" 2>"$2.log"; then
    echo "allot batch failed in $3 (not every task finished): $2.log ends" >&3
    tail -n 5 "$2.log" >&3
    exit 1
  fi
}
# Each task's launch-to-terminal-seen time (ms, sorted) from batch summary $1 of $2 tasks.
latencies() {
  grep -o '"seconds": [0-9.e-]*' "$1" | head -n "$2" | awk '{print $2 * 1000}' | sort -n
}
# Quantile $2 (0-1) of the sorted numbers in file $1.
quantile() {
  awk -v q="$2" '{ v[NR] = $1 } END { print v[int(NR * q + 0.5)] }' "$1"
}

now() { date +%s.%N; }
# "pid name self children" in clock ticks, for etcd and every Allot process of the cluster.
cpu() {
  local p f
  for p in $(pgrep -f "$repo/target/.*/allot-|etcd --name allot"); do
    read -r -a f <"/proc/$p/stat" 2>/dev/null || continue
    echo "$p ${f[1]//[()]/} $((f[13] + f[14])) $((f[15] + f[16]))"
  done | sort
}
hz=$(getconf CLK_TCK)
echo "==> $rounds rounds of $tasks tasks, $concurrency at a time: $command"
printf '    %-6s %12s %12s %8s %10s %10s\n' round "xargs t/s" "allot t/s" share "p50 ms" "p99 ms"
: >"$out/rounds.tsv"
for r in $(seq "$rounds"); do
  t0=$(now)
  seq "$tasks" | xargs -P "$concurrency" -I{} sh -c "$command"
  t1=$(now)
  cpu >"$out/cpu0"
  TIMEFORMAT='%U %S'
  { time run_batch "$out/job.toml" "$out/batch-$r" "round $r"; } 2>"$out/time-$r"
  t2=$(now)
  cpu >"$out/cpu1"
  latencies "$out/batch-$r.json" "$tasks" >"$out/lat-$r.txt"
  p50=$(quantile "$out/lat-$r.txt" 0.50)
  p99=$(quantile "$out/lat-$r.txt" 0.99)
  awk -v r="$r" -v n="$tasks" -v a="$t0" -v b="$t1" -v c="$t2" -v p50="$p50" -v p99="$p99" 'BEGIN {
    x = n / (b - a); y = n / (c - b)
    printf "    %-6s %12.1f %12.1f %7.0f%% %10.1f %10.1f\n", r, x, y, 100 * y / x, p50, p99
    printf "%s\t%f\t%f\t%f\t%f\n", r, x, y, p50, p99 >> "'"$out/rounds.tsv"'" }'
  # CPU per task by process name (agents summed), in ms: self, and the children the agents reaped (tasks).
  read -r bu bs <"$out/time-$r"
  join "$out/cpu0" "$out/cpu1" | awk -v n="$tasks" -v hz="$hz" -v bu="$bu" -v bs="$bs" '{
      s[$2] += ($6 - $3); c[$2] += ($7 - $4) }
    END { line = sprintf("           CPU ms/task: allot-batch %.2f", (bu + bs) * 1000 / n)
      for (k in s) { line = line sprintf(" %s %.2f", k, s[k] * 1000 / hz / n)
        if (c[k] > 0) line = line sprintf(" (+%.2f tasks)", c[k] * 1000 / hz / n) }
      print line }'
done
# The median round by Allot's rate.
sort -t$'\t' -k3,3n "$out/rounds.tsv" | awk -F'\t' -v k="$rounds" 'NR == int((k + 1) / 2) {
  printf "==> median round: xargs %.1f tasks/s, allot %.1f tasks/s (%.0f%% of xargs), p50 %.1f ms, p99 %.1f ms\n",
    $2, $3, 100 * $3 / $2, $4, $5 }'
# Each round pairs xargs and Allot within seconds of each other; the median of the rounds' shares is the
# steadier figure on a machine whose speed drifts between rounds.
awk -F'\t' '{ print 100 * $3 / $2 }' "$out/rounds.tsv" | sort -n | awk -v k="$rounds" '
  { s[NR] = $1 } END { printf "==> median share of the rounds: %.0f%% of xargs (rounds %.0f-%.0f%%)\n", s[int((k + 1) / 2)], s[1], s[NR] }'
echo "    per-task outcomes: $out/batch-*.json"
if ((latency > 0)); then
  echo "==> one task at a time, $latency tasks: launch to terminal seen (the overhead per task, without queueing)"
  job_file "$latency" 1 l >"$out/latency.toml"
  t0=$(now)
  seq "$latency" | xargs -P 1 -I{} sh -c "$command"
  t1=$(now)
  run_batch "$out/latency.toml" "$out/latency" "the latency probe"
  latencies "$out/latency.json" "$latency" >"$out/lat-alone.txt"
  awk -v a="$t0" -v b="$t1" -v n="$latency" -v p50="$(quantile "$out/lat-alone.txt" 0.50)" \
    -v p99="$(quantile "$out/lat-alone.txt" 0.99)" 'BEGIN {
    printf "==> alone: allot p50 %.1f ms, p99 %.1f ms launch to terminal seen; xargs -P 1 %.1f ms per command\n",
      p50, p99, (b - a) * 1000 / n }'
fi
if ((slurm)); then
  echo "==> the same $tasks commands through Slurm (tests/slurm-peer.sh)"
  if bash "$repo/tests/slurm-peer.sh" --tasks "$tasks" --concurrency "$concurrency" --command "$command" \
    | tee "$out/slurm.txt"; then
    allot_rate=$(sort -t$'\t' -k3,3n "$out/rounds.tsv" | awk -F'\t' -v k="$rounds" 'NR == int((k + 1) / 2) { print $3 }')
    awk -v a="$allot_rate" '/^slurm / { printf "==> allot (median round) %.1f tasks/s = %.1fx slurm'"'"'s %.1f\n", a, a / $2, $2 }' \
      "$out/slurm.txt"
  else
    echo "    (no Slurm figure: see the message above)"
  fi
fi
if ((phases)); then
  echo "==> where the time went (spans of the task traces; tracing was on, so rates above are lower)"
  sleep 1 # the last spans are exported within OTEL_BSP_SCHEDULE_DELAY
  allot traces phases --limit 25
fi
