#!/usr/bin/env bash
# Compares two builds of Allot with allot-bench, alternating them (A B B A A B) in the same minutes, because the
# machine's speed drifts by tens of percent within an hour (docs/benchmarks.md).
#
# Usage: bash tests/ab-bench.sh OLD_RELEASE_DIR NEW_RELEASE_DIR [allot-bench arguments...]
#   e.g. git worktree add /tmp/old <rev> && (cd /tmp/old && cargo build --release --bins --target-dir /tmp/old-target)
#        bash tests/ab-bench.sh /tmp/old-target/release target/release --agents 1000 --frameworks 10 --tasks 60000
# Prints one line per run: build, tasks/s (share of etcd's raw put rate), ACCEPT -> RUNNING p50/p99, CPU.
set -euo pipefail
old=$1 new=$2
shift 2
for b in old new new old old new; do
  if [[ $b == old ]]; then bench=$old/allot-bench; else bench=$new/allot-bench; fi
  out=$("$bench" "$@" 2>&1)
  tps=$(sed -n 's/^tasks RUNNING: .* = \([0-9]*\) tasks\/s (\([0-9]*\)% .*/\1 (\2% of raw)/p' <<<"$out")
  lat=$(sed -n 's/^ACCEPT -> TASK_RUNNING: p50 \([0-9.]*\) ms, p99 \([0-9.]*\) ms.*/p50 \1 ms, p99 \2 ms/p' <<<"$out")
  cpu=$(awk -F'|' '/^\| (etcd|registry|allocator|offer-broker|agents|frameworks)/ {s+=$3} END {print s}' <<<"$out")
  broker=$(awk -F'|' '/^\| offer-broker/ {print $3+0}' <<<"$out")
  tasks=$(sed -n 's/^tasks RUNNING: \([0-9]*\) of.*/\1/p' <<<"$out")
  per=$(awk -v c="$cpu" -v t="$tasks" 'BEGIN {printf "%d", c / t * 1e6}')
  echo "$b | $tps | $lat | CPU ${cpu} s (broker ${broker} s), ${per} us/task"
done
