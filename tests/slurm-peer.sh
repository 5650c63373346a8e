#!/usr/bin/env bash
# Slurm as the real-task benchmark's peer (issue 24): installs Debian's slurm-wlm when it is missing (needs root
# and the Debian package registry), configures a one-node cluster on this host the way the issue measured it
# (20 slots, cgroup process tracking and memory limits like Allot's agents, no accounting, no scheduling delay,
# a no-op Epilog so that every job's end starts a scheduling pass), starts munged, slurmctld and slurmd, runs
# the same commands as tests/real-bench.sh as one job array, prints tasks/s, and stops what it started.
#
# Usage: bash tests/slurm-peer.sh [--tasks N] [--concurrency C] [--command CMD]
#   defaults as tests/real-bench.sh: 1,000 tasks of `sha256sum /etc/os-release > /dev/null`, 20 at a time.
#   The last line is `slurm <tasks/s>`; tests/real-bench.sh --slurm runs it after its rounds.
set -euo pipefail
tasks=1000
concurrency=20
command='sha256sum /etc/os-release > /dev/null'
while (($#)); do
  case "$1" in
    --tasks) tasks=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --command) command=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 64 ;;
  esac
done
if [[ $(id -u) != 0 ]]; then
  echo "slurm-peer: needs root (it installs and runs slurmctld and slurmd)" >&2
  exit 77
fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  echo "==> installing slurm-wlm and munge (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
fi

run=$(mktemp -d /tmp/allot-slurm.XXXXXX)
conf=$run/etc
mkdir -p "$conf" "$run/spool/ctld" "$run/spool/d" "$run/out" "$run/munge"
chmod 700 "$run/munge"
host=$(hostname -s)
mem_mib=$(awk '/MemTotal/ {print int($2 / 1024 / 2)}' /proc/meminfo)
cgroup_plugin=cgroup/v1
[[ $(stat -fc %T /sys/fs/cgroup) == cgroup2fs ]] && cgroup_plugin=cgroup/v2
cat >"$conf/slurm.conf" <<EOF
ClusterName=allotpeer
SlurmctldHost=$host
SlurmctldPort=26817
SlurmdPort=26818
AuthType=auth/munge
StateSaveLocation=$run/spool/ctld
SlurmdSpoolDir=$run/spool/d
SlurmctldPidFile=$run/slurmctld.pid
SlurmdPidFile=$run/slurmd.pid
SlurmUser=root
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,default_queue_depth=1000
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MaxJobCount=100000
MaxArraySize=100001
Epilog=/bin/true
SlurmdParameters=config_overrides
ReturnToService=2
NodeName=$host CPUs=$concurrency RealMemory=$mem_mib State=UNKNOWN
PartitionName=peer Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
cat >"$conf/cgroup.conf" <<EOF
CgroupPlugin=$cgroup_plugin
ConstrainCores=no
ConstrainRAMSpace=yes
EOF
export SLURM_CONF=$conf/slurm.conf
pids=()
cleanup() {
  scancel --quiet --partition=peer 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run"
}
trap cleanup EXIT

[[ -f /etc/munge/munge.key ]] || { mkdir -p /etc/munge; dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
chown root /etc/munge/munge.key 2>/dev/null || true
chmod 400 /etc/munge/munge.key
munged --foreground --force --socket="$run/munge/munge.socket" --pid-file="$run/munge/munged.pid" \
  --log-file="$run/munge/munged.log" --seed-file="$run/munge/seed" 2>>"$run/munge/munged.stderr" &
pids+=($!)
# Slurm finds munge's socket through its AuthInfo.
sed -i "s|^AuthType=auth/munge|AuthType=auth/munge\nAuthInfo=socket=$run/munge/munge.socket|" "$conf/slurm.conf"
sleep 0.5
slurmctld -D -i -f "$conf/slurm.conf" >"$run/slurmctld.log" 2>&1 &
pids+=($!)
slurmd -D -f "$conf/slurm.conf" -N "$host" >"$run/slurmd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  sinfo -h -o %T 2>/dev/null | grep -q idle && break
  sleep 0.2
done
if ! sinfo -h -o %T 2>/dev/null | grep -q idle; then
  echo "slurm-peer: the node did not come up; logs:" >&2
  tail -n 20 "$run/slurmctld.log" "$run/slurmd.log" >&2
  exit 1
fi

echo "==> slurm $(sinfo -V | awk '{print $2}'): $tasks tasks as one job array, $concurrency at a time: $command"
# Each task appends a line to a ledger when its command succeeded: the run is over when all have.
ledger=$run/out/ledger
: >"$ledger"
chmod 666 "$ledger"
t0=$(date +%s.%N)
if ! sbatch --parsable --array="1-$tasks%$concurrency" --cpus-per-task=1 --mem=16M \
  --output="$run/out/%a.out" --wrap "$command && echo ok >> $ledger" >"$run/job" 2>"$run/sbatch.err"; then
  echo "slurm-peer: sbatch failed: $(cat "$run/sbatch.err")" >&2
  exit 1
fi
deadline=$((SECONDS + 600))
while (($(wc -l <"$ledger") < tasks)); do
  # Over when the deadline passed, or when squeue answers (a busy slurmctld may not) and lists nothing.
  if ((SECONDS > deadline)) || { queue=$(squeue -h 2>/dev/null) && [[ -z $queue ]]; }; then
    sleep 1
    (($(wc -l <"$ledger") < tasks)) || break
    echo "slurm-peer: only $(wc -l <"$ledger") of $tasks tasks succeeded; a task's output:" >&2
    cat "$(ls "$run"/out/*.out 2>/dev/null | head -n 1)" >&2 2>/dev/null || true
    tail -n 5 "$run/slurmd.log" >&2
    exit 1
  fi
  sleep 0.02
done
t1=$(date +%s.%N)
awk -v n="$tasks" -v a="$t0" -v b="$t1" 'BEGIN { printf "slurm %.1f\n", n / (b - a) }'
