#!/usr/bin/env bash
# The main job: a local Allot cluster running real tasks.
#
# Builds Allot, starts etcd, the registry, the allocator, the offer-broker and three agents (each given a slice
# of this machine) on free loopback ports, then runs two batch frameworks in two roles over every file under
# /usr/share: one compresses them (role "archive", weight 1), and a few seconds later, once archive holds every
# CPU, one checksums them (role "analytics", weight 2). The allocator preempts (grace 3 s): analytics gets its
# weighted share back from archive's running tasks, which `allot batch` launches again. While they run it samples
# each role's dominant share; at the end it prints the results, how long analytics took to reach its weighted
# share, and the shares, then tears everything down. Ctrl-C at any point stops everything it started.
#
# Every link is mutual TLS (docs/security.md): the script makes the cluster's certificate authority and
# certificates in .allot/demo/tls (`allot certs init`), runs etcd with --client-cert-auth, and every process
# finds its certificate through ALLOT_TLS_DIR. The services deny what .allot/demo/acls.toml does not allow.
#
# Every service serves Prometheus metrics (its /metrics address is printed). With OTEL_EXPORTER_OTLP_ENDPOINT
# set, every process (services and frameworks) exports its spans there over OTLP/gRPC.
#
# Usage: bash deploy/local/run.sh [--files DIR] [--tasks N] [--keep] [--prometheus] [--traces] [--ha]
#                                 [--cluster-only] [--release] [--address IP] [--agent-netns NS=IP]
#                                 [--agents N]
#   --files DIR    the tree to process (default /usr/share)
#   --tasks N      tasks per framework (default 32)
#   --keep         leave the cluster running after the jobs, until Ctrl-C
#   --prometheus   also start Prometheus (Debian's package, installed if missing) scraping the cluster, with
#                  the alert rules of observability/prometheus/
#   --traces       also start a local trace store (`allot traces serve`, spans in .allot/demo/traces) that every
#                  process exports its spans to, and show why one task landed on its agent (`allot trace`)
#   --ha           no single point of failure: a 3-member etcd cluster and two replicas of the registry, the
#                  allocator and the offer-broker, each under a loop that restarts it 1 s after it exits (as
#                  systemd's Restart=always would), agents too; kill -9 any of them and the jobs go on
#   --cluster-only start the cluster, write its addresses to .allot/demo/cluster.env (shell syntax) and wait
#                  until Ctrl-C, running no jobs (tests/chaos.sh uses it)
#   --release      build and run the release binaries (target/release; tests/real-bench.sh --release uses it)
#   --address IP   the local address every service, etcd and the agents listen on (default 127.0.0.1)
#   --agent-netns NS=IP
#                  run the third agent in network namespace NS at address IP (one the caller set up, with a
#                  route to --address); tests/chaos.sh uses it to cut that agent off the network
#   --agents N     run N agents (default 3), each an N-th of this machine's cores (at least one core) and up
#                  to 2 GiB of memory (tests/real-bench.sh --agents passes it on)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
files_root=/usr/share
ntasks=32
preemption_grace=3s
keep=0
prometheus=0
traces=0
ha=0
cluster_only=0
release=0
host=127.0.0.1
netns=""
netns_ip=""
nagents=3
while (($#)); do
  case "$1" in
    --files) files_root=$2; shift 2 ;;
    --tasks) ntasks=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --prometheus) prometheus=1; shift ;;
    --traces) traces=1; shift ;;
    --ha) ha=1; shift ;;
    --cluster-only) cluster_only=1; shift ;;
    --release) release=1; shift ;;
    --address) host=$2; shift 2 ;;
    --agent-netns) netns=${2%%=*}; netns_ip=${2#*=}; shift 2 ;;
    --agents) nagents=$2; shift 2 ;;
    -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 64 ;;
  esac
done

source "$here/ensure-deps.sh"
allot_ensure_deps
((prometheus)) && allot_ensure_prometheus

if ((release)); then
  echo "==> building (cargo build --release --bins)"
  (cd "$repo" && cargo build --release --bins --quiet)
  bin="$repo/target/release"
else
  echo "==> building (cargo build --bins)"
  (cd "$repo" && cargo build --bins --quiet)
  bin="$repo/target/debug"
fi

run="$repo/.allot/demo"
rm -rf "$run"
mkdir -p "$run/logs" "$run/out/sha256" "$run/out/archive" "$run/lists"

# Mutual TLS on every link (docs/security.md): this cluster's certificate authority and the certificates of the
# services, etcd, the agents (agent-node1..N), the operator (the CLI) and the frameworks' default principal.
tls_hosts=(--host "$host" --host localhost)
[[ -n $netns_ip ]] && tls_hosts+=(--host "$netns_ip")
agent_names=()
for ((i = 1; i <= nagents; i++)); do agent_names+=(--agent "node$i"); done
"$bin/allot" certs init "$run/tls" "${tls_hosts[@]}" "${agent_names[@]}" >/dev/null
export ALLOT_TLS_DIR=$run/tls
# Default deny: what each principal may do (docs/security.md, "The ACL file"); edit it while the cluster runs.
cat >"$run/acls.toml" <<ACLS
[[register_frameworks]]
principals = ["kind:framework"]
roles = ["*"]

[[run_tasks]]   # tasks run as their framework's user: the one running this script
principals = ["kind:framework"]
users = ["$(id -un)"]

[[teardown_frameworks]]
principals = ["kind:operator"]
framework_principals = ["*"]

[[update_weights]]
principals = ["kind:operator"]
roles = ["*"]

[[update_quotas]]
principals = ["kind:operator"]
roles = ["*"]

[[reserve_resources]]
principals = ["kind:operator"]
roles = ["*"]

[[unreserve_resources]]
principals = ["kind:operator"]
roles = ["*"]

[[load_policies]]
principals = ["kind:operator"]
policies = ["*"]

[[activate_policies]]
principals = ["kind:operator"]
policies = ["*"]

[[shadow_policies]]
principals = ["kind:operator"]
policies = ["*"]
ACLS
export ALLOT_ACLS=$run/acls.toml

pids=()
loops=() # restart loops of supervised services (--ha)
cleanup() {
  local code=$?
  trap - EXIT INT TERM
  [[ -n ${sleeper:-} ]] && kill "$sleeper" 2>/dev/null
  if ((${#loops[@]})); then
    # Each loop first, so that it restarts nothing, then the service it was running.
    local l kids
    for l in "${loops[@]}"; do
      kids=$(pgrep -P "$l" || true)
      kill -TERM "$l" 2>/dev/null || true
      for k in $kids; do kill -TERM "$k" 2>/dev/null || true; pids+=("$k"); done
    done
  fi
  if ((${#pids[@]})); then
    echo "==> stopping the cluster"
    # Frameworks and agents first, etcd last; SIGTERM, then SIGKILL for anything still there after 10 s.
    for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
    for _ in $(seq 100); do
      local alive=0
      for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
      ((alive)) || break
      sleep 0.1
    done
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
  fi
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port VAR: sets VAR to a loopback port nobody listens on and that this script has not handed out yet,
# below the kernel's ephemeral range (where outgoing connections take their local ports, which would make a
# later bind fail).
declare -A used_ports=()
ephemeral_low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
free_port() {
  local p
  while :; do
    p=$((10000 + RANDOM % (ephemeral_low - 10000)))
    [[ -n ${used_ports[$p]:-} ]] && continue
    (echo >"/dev/tcp/$host/$p") 2>/dev/null && continue
    used_ports[$p]=1
    printf -v "$1" '%s' "$p"
    return
  done
}

start() { # name, command...
  local name=$1; shift
  "$@" >"$run/logs/$name.log" 2>&1 &
  pids+=($!)
}

# supervise name command...: runs the command, and again 1 s after each exit (with --ha), as a supervisor would.
supervise() {
  local name=$1; shift
  if ! ((ha)); then start "$name" "$@"; return; fi
  (
    trap 'exit 0' TERM
    while :; do
      "$@" >>"$run/logs/$name.log" 2>&1 &
      wait $! || true
      echo "== $(date +%T) $name exited; restarting it in 1 s" >>"$run/logs/$name.log"
      sleep 1
    done
  ) &
  loops+=($!)
}

wait_port() { # port, what
  for _ in $(seq 150); do
    (echo >"/dev/tcp/$host/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$2 did not come up; see $run/logs/" >&2
  return 1
}

members=1; replicas=1
((ha)) && { members=3; replicas=2; }
etcd_clients=(); etcd_peers=(); etcd_metrics=(); initial=()
for ((i=0; i<members; i++)); do
  free_port port; etcd_clients+=("https://$host:$port")
  free_port port; etcd_peers+=("https://$host:$port"); initial+=("allot$i=https://$host:$port")
  free_port port; etcd_metrics+=("$host:$port") # /metrics and /health in plain HTTP (clients need a certificate)
done
join() { local IFS=,; echo "$*"; }
declare -A addrs=()
for svc in registry allocator broker; do
  list=()
  for ((i=0; i<replicas; i++)); do free_port port; list+=("$host:$port"); done
  addrs[$svc]=$(join "${list[@]}")
done
export ALLOT_ETCD_ENDPOINTS=$(join "${etcd_clients[@]}")
export ALLOT_ETCD_METRICS=$(join "${etcd_metrics[@]}")
if ((traces)); then
  # The local trace store (docs/why-did-my-task-land-there.md): every process started from here on exports its
  # spans to it, twice a second.
  free_port port
  export ALLOT_TRACES_DIR=$run/traces OTEL_EXPORTER_OTLP_ENDPOINT=http://$host:$port OTEL_BSP_SCHEDULE_DELAY=500
  start traces "$bin/allot" traces serve --listen "$host:$port"
  wait_port "$port" "the trace store"
  echo "==> trace store: OTLP on $OTEL_EXPORTER_OTLP_ENDPOINT, spans in $ALLOT_TRACES_DIR"
fi
export ALLOT_REGISTRY=${addrs[registry]} ALLOT_ALLOCATOR=${addrs[allocator]} ALLOT_BROKER=${addrs[broker]}

echo "==> starting etcd ($members member(s)): $ALLOT_ETCD_ENDPOINTS"
for ((i=0; i<members; i++)); do
  supervise "etcd$i" etcd --name "allot$i" --data-dir "$run/etcd$i" \
    --listen-client-urls "${etcd_clients[i]}" --advertise-client-urls "${etcd_clients[i]}" \
    --listen-peer-urls "${etcd_peers[i]}" --initial-advertise-peer-urls "${etcd_peers[i]}" \
    --initial-cluster "$(join "${initial[@]}")" --initial-cluster-token allot-local \
    --listen-metrics-urls "http://${etcd_metrics[i]}" \
    --trusted-ca-file "$ALLOT_TLS_DIR/ca.pem" --cert-file "$ALLOT_TLS_DIR/etcd.pem" \
    --key-file "$ALLOT_TLS_DIR/etcd-key.pem" --client-cert-auth \
    --peer-trusted-ca-file "$ALLOT_TLS_DIR/ca.pem" --peer-cert-file "$ALLOT_TLS_DIR/etcd.pem" \
    --peer-key-file "$ALLOT_TLS_DIR/etcd-key.pem" --peer-client-cert-auth \
    --backend-batch-interval=10ms --heartbeat-interval=50 --election-timeout=500 # docs/operations.md, "Running etcd"
done
for c in "${etcd_clients[@]}"; do wait_port "${c##*:}" etcd; done

# Each service's /metrics address, by Prometheus job.
declare -A metrics=()
metrics_port() { # job [address]: sets $mport to a free port and records address:port (default --address) for the job
  free_port mport
  metrics[$1]="${metrics[$1]:-}${metrics[$1]:+ }${2:-$host}:$mport"
}

echo "==> starting registry $ALLOT_REGISTRY, allocator $ALLOT_ALLOCATOR, offer-broker $ALLOT_BROKER"
# Every service, etcd, the agents and the tasks share this machine's cores: each service runs one async worker
# thread (its --worker-threads; the agents are single-threaded already). More workers wake each other to steal
# work, and those context switches cost the tasks' throughput (issue 24, docs/benchmarks.md). A service on a
# machine of its own keeps the default, one worker per core. ALLOT_WORKER_THREADS overrides it here.
workers=${ALLOT_WORKER_THREADS:-1}
i=0
for a in ${ALLOT_REGISTRY//,/ }; do
  metrics_port allot-registry
  supervise "registry$i" "$bin/allot-registry" --listen "$a" --agent-timeout 5s --metrics-listen "$host:$mport" \
    --worker-threads "$workers"
  i=$((i + 1))
done
i=0
for a in ${ALLOT_ALLOCATOR//,/ }; do
  metrics_port allot-allocator
  supervise "allocator$i" "$bin/allot-allocator" --listen "$a" --allocation-interval 250ms \
    --min-cycle-gap "${ALLOT_MIN_CYCLE_GAP:-10ms}" \
    --preemption-grace "$preemption_grace" --preemption-min-runtime 1s --metrics-listen "$host:$mport" \
    --worker-threads "$workers"
  i=$((i + 1))
done
# Mesos frameworks (pymesos, ...) reach the brokers' Mesos v1 HTTP API with this principal and secret; with it
# they (and the operator) also read the agents' sandboxes (/files/*, /state on each agent's executor API).
secret=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
(umask 077; echo "framework-mesos $secret" >"$run/credentials")
mesos=()
i=0
for a in ${ALLOT_BROKER//,/ }; do
  metrics_port allot-offer-broker
  free_port port; mesos+=("$host:$port")
  supervise "broker$i" "$bin/allot-offer-broker" --listen "$a" --allocator "$ALLOT_ALLOCATOR" \
    --heartbeat-interval 5s --metrics-listen "$host:$mport" --worker-threads "$workers" \
    --mesos-listen "$host:$port" --credentials "$run/credentials"
  i=$((i + 1))
done
for a in ${ALLOT_REGISTRY//,/ } ${ALLOT_ALLOCATOR//,/ } ${ALLOT_BROKER//,/ }; do wait_port "${a##*:}" "the service at $a"; done

# The agents (three by default), each an N-th of this machine's cores (at least one) and up to 2 GiB of memory.
cores=$(nproc)
mem_mib=$(awk '/MemTotal/ {m=int($2/1024/4); if (m > 2048) m = 2048; print m}' /proc/meminfo)
cpus=$(awk -v c="$cores" -v n="$nagents" 'BEGIN { x = c / n; if (x < 1) x = 1; printf "%.2f", x }')
for ((i = 1; i <= nagents; i++)); do
  free_port port
  lo=$((31000 + i * 1000)); hi=$((lo + 999))
  at=$host; in_netns=()
  if ((i == 3)) && [[ -n $netns ]]; then
    at=$netns_ip; in_netns=(ip netns exec "$netns")
  fi
  metrics_port allot-agent "$at"; agent_m=$mport
  supervise "agent$i" "${in_netns[@]}" "$bin/allot-agent" --listen "$at:$port" --work-dir "$run/agent$i" \
    --resources "cpus:$cpus;mem:$mem_mib;disk:4096;ports:[$lo-$hi]" --attributes "rack:r$i" --hostname "agent$i" \
    --tls-name "agent-node$i" --kill-tasks-on-stop --metrics-listen "$at:$agent_m" \
    --credentials "$run/credentials"
done
for job in allot-registry allot-allocator allot-offer-broker allot-agent; do
  echo "    metrics $job: $(sed 's#\([^ ]*\)#http://\1/metrics#g' <<<"${metrics[$job]}")"
done
if ((prometheus)); then
  # The scrape configuration of observability/prometheus/, with this cluster's ports.
  free_port prom_port
  mkdir -p "$run/prometheus"
  cp "$repo/observability/prometheus/alerts.yml" "$run/prometheus/"
  {
    sed -n '/^global:/,/^scrape_configs:/p' "$repo/observability/prometheus/prometheus.yml"
    for job in allot-registry allot-allocator allot-offer-broker allot-agent; do
      targets=$(sed 's/\([^ ]*\)/"\1"/g; s/ /, /g' <<<"${metrics[$job]}")
      printf '  - job_name: %s\n    static_configs:\n      - targets: [%s]\n' "$job" "$targets"
    done
  } >"$run/prometheus/prometheus.yml"
  start prometheus prometheus --config.file "$run/prometheus/prometheus.yml" \
    --storage.tsdb.path "$run/prometheus/data" --web.listen-address "$host:$prom_port"
  wait_port "$prom_port" prometheus
  echo "    prometheus: http://$host:$prom_port (targets: /targets, alerts: /alerts)"
fi
registered=0
for _ in $(seq 100); do
  registered=$("$bin/allot" agents --json 2>/dev/null | grep -c '"reachable": true' || true)
  ((registered == nagents)) && break
  sleep 0.2
done
if ((registered != nagents)); then
  echo "only $registered of $nagents agents registered; see $run/logs/agent*.log" >&2
  exit 1
fi
"$bin/allot" agents

"$bin/allot" roles set analytics --weight 2 >/dev/null
"$bin/allot" roles set archive --weight 1 >/dev/null

# Everything the CLI needs to reach this cluster, in shell syntax: `source .allot/demo/cluster.env`.
{
  echo "export ALLOT_ETCD_ENDPOINTS=$ALLOT_ETCD_ENDPOINTS ALLOT_ETCD_METRICS=$ALLOT_ETCD_METRICS"
  echo "export ALLOT_TLS_DIR=$ALLOT_TLS_DIR"
  echo "export ALLOT_REGISTRY=$ALLOT_REGISTRY ALLOT_ALLOCATOR=$ALLOT_ALLOCATOR ALLOT_BROKER=$ALLOT_BROKER"
  echo "export PATH=$bin:\$PATH"
  echo "export ALLOT_MESOS_MASTER=${mesos[0]} ALLOT_MESOS_PRINCIPAL=framework-mesos ALLOT_MESOS_SECRET=$secret"
  ((traces)) && echo "export ALLOT_TRACES_DIR=$ALLOT_TRACES_DIR OTEL_EXPORTER_OTLP_ENDPOINT=$OTEL_EXPORTER_OTLP_ENDPOINT"
  for job in allot-registry allot-allocator allot-offer-broker allot-agent; do
    echo "metrics_${job//-/_}=\"${metrics[$job]}\""
  done
} >"$run/cluster.env.tmp"
mv "$run/cluster.env.tmp" "$run/cluster.env"

if ((cluster_only)); then
  echo "==> cluster up; its addresses are in $run/cluster.env; Ctrl-C (or SIGTERM) to stop"
  while :; do sleep 3600 & sleeper=$!; wait $sleeper; done
fi

echo "==> preparing two jobs of $ntasks tasks over $files_root"
find "$files_root" -type f -readable -print0 2>/dev/null >"$run/lists/all"
nfiles=$(tr -cd '\0' <"$run/lists/all" | wc -c)
(cd "$run/lists" && split -t '\0' -n "r/$ntasks" -d -a 3 all part-)
# A job file for `allot batch`: one task per file list, its command made by function $6 from (list, number).
job_file() { # file name role resources id_prefix command_fn
  local f n
  {
    echo "name = \"$2\""; echo "role = \"$3\""; echo 'concurrency = 8'; echo "resources = \"$4\""
    for f in "$run"/lists/part-*; do
      n=${f##*-}
      echo "[[tasks]]"; echo "id = \"$5-$n\""; echo "command = \"$("$6" "$f" "$n")\""
    done
  } >"$1"
}
checksum_cmd() { echo "xargs -0 -a '$1' sha256sum > '$run/out/sha256/$2.txt' 2> errors.txt; test -s '$run/out/sha256/$2.txt'"; }
compress_cmd() { echo "tar --null -T '$1' -czf '$run/out/archive/$2.tar.gz' 2> errors.txt; test -s '$run/out/archive/$2.tar.gz'"; }
job_file "$run/checksum.toml" checksum analytics "cpus:0.25;mem:64" sha256 checksum_cmd
job_file "$run/compress.toml" compress archive "cpus:0.5;mem:128" gzip compress_cmd

echo "==> running both frameworks ($nfiles files): compress (archive) first, checksum (analytics) once archive"
echo "    holds every CPU; sampling dominant shares twice a second"
start_s=$(date +%s)
"$bin/allot" batch "$run/compress.toml" --quiet >"$run/compress.summary" 2>"$run/logs/compress.log" &
pids+=($!); gz_pid=$!
# Until archive holds (nearly) every CPU, or 10 s.
for _ in $(seq 20); do
  "$bin/allot" roles --json 2>/dev/null | tr -d ' \n' | grep -Eq '"role":"archive"[^}]*"dominant_share":(0\.(8|9)|1)' && break
  sleep 0.5
done
sha_start_s=$(date +%s.%N)
"$bin/allot" batch "$run/checksum.toml" --quiet >"$run/checksum.summary" 2>"$run/logs/checksum.log" &
pids+=($!); sha_pid=$!
: >"$run/shares.tsv"
while kill -0 "$sha_pid" 2>/dev/null || kill -0 "$gz_pid" 2>/dev/null; do
  t=$(( $(date +%s) - start_s ))
  both=0
  kill -0 "$sha_pid" 2>/dev/null && kill -0 "$gz_pid" 2>/dev/null && both=1
  # One JSON object per role; keys may come in any order, so print at the end of each object. The last column
  # says whether both frameworks were still running.
  # Columns: t (s), role, dominant share (offered + used), both running, share its tasks use, t (s.ns).
  "$bin/allot" roles --json 2>/dev/null | awk -v t="$t" -v both="$both" -v tf="$(date +%s.%N)" '
    /"role":/ { gsub(/[",]/, "", $2); role = $2 }
    /"dominant_share":/ { gsub(/,/, "", $2); share = $2 }
    /"used_share":/ { gsub(/,/, "", $2); used = $2 }
    /^  }/ { if (role != "") printf "%s\t%s\t%s\t%s\t%s\t%s\n", t, role, share, both, used, tf; role = ""; share = 0; used = 0 }' \
    >>"$run/shares.tsv" || true
  line=$(awk -v t="$t" -F'\t' '$1 == t { v[$2] = $3 } END { for (r in v) printf "%s %3.0f%%  ", r, v[r] * 100 }' "$run/shares.tsv")
  if [[ -t 1 ]]; then
    printf '\r  t=%3ss  dominant shares: %-44s' "$t" "$line"
  elif ((t % 5 == 0)); then
    printf '  t=%3ss  dominant shares: %s\n' "$t" "$line"
  fi
  sleep 0.5
done
echo
sha_rc=0; gz_rc=0
wait "$sha_pid" || sha_rc=$?
wait "$gz_pid" || gz_rc=$?
elapsed=$(( $(date +%s) - start_s ))

echo "==> checksum framework (role analytics)"; tail -n 1 "$run/checksum.summary"
echo "==> compress framework (role archive)"; tail -n 1 "$run/compress.summary"
echo "    full task tables: $run/checksum.summary, $run/compress.summary"

echo "==> results"
sums=$(cat "$run"/out/sha256/*.txt 2>/dev/null | wc -l)
in_bytes=$(tr '\0' '\n' <"$run/lists/all" | xargs -d '\n' stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
out_bytes=$(du -cb "$run"/out/archive/*.tar.gz 2>/dev/null | tail -n 1 | cut -f1)
echo "    sha256 of $sums of $nfiles files under $files_root (in $run/out/sha256/)"
awk -v i="$in_bytes" -v o="$out_bytes" 'BEGIN { printf "    compressed %.1f MiB into %.1f MiB (ratio %.2f) in %s/out/archive/\n", i/1048576, o/1048576, (o > 0 ? i/o : 0), "'"$run"'" }'
echo "    both jobs took ${elapsed}s on $cores cores"

echo "==> dominant share per role while both frameworks ran (DRF; weights analytics=2, archive=1; offered + used)"
awk -F'\t' '$4 == 1 && ($2 == "analytics" || $2 == "archive") { n[$2]++; s[$2] += $3; if ($3 > m[$2]) m[$2] = $3 }
  END { for (r in n) printf "    %-10s mean %5.1f%%  peak %5.1f%%  (%d samples)\n", r, 100 * s[r] / n[r], 100 * m[r], n[r] }' \
  "$run/shares.tsv" | sort
# analytics' weighted share while both run: 2/3 of the CPUs by weight, or what its 8 concurrent tasks of 0.25 CPU
# can use if that is less; reached when its running tasks hold it, give or take one task.
total_cpus=$(awk -v c="$cpus" -v n="$nagents" 'BEGIN { print c * n }')
target=$(awk -v t="$total_cpus" 'BEGIN { x = 2 / t; print (x < 2 / 3 ? x : 2 / 3) }')
reached=$(awk -F'\t' -v from="$sha_start_s" -v want="$target" -v task="$(awk -v t="$total_cpus" 'BEGIN { print 0.25 / t }')" \
  '$2 == "analytics" && $4 == 1 && $5 >= want - task - 1e-9 { printf "%.1f", $6 - from; exit }' "$run/shares.tsv")
printf '    analytics subscribed when archive held every CPU; its weighted share is %.0f%% of the CPUs\n' \
  "$(awk -v x="$target" 'BEGIN { print 100 * x }')"
preempted=$(grep -c "preempted for role" "$run/logs/compress.log" 2>/dev/null || true)
if [[ -n $reached ]] && ((${preempted:-0} > 0)); then
  echo "    its tasks held it (within one task) ${reached}s after it subscribed: preemption grace $preemption_grace,"
  echo "    then archive's youngest tasks were revoked (TASK_KILLED, REASON_PREEMPTED) and launched again later"
elif [[ -n $reached ]]; then
  echo "    its tasks held it (within one task) ${reached}s after it subscribed, from archive's tasks as they"
  echo "    ended: none had to be preempted (the grace is $preemption_grace; archive's tasks were short enough)"
else
  echo "    its tasks did not hold it while both ran (its job may have ended first)"
fi
echo "    archive tasks preempted: ${preempted:-0}"
"$bin/allot" frameworks || true

if ((prometheus)); then
  prom_query() { # PromQL without spaces -> the first value of the answer
    local answer
    answer=$(allot_http_get "$host:$prom_port" "/api/v1/query?query=$1") || true
    sed -n 's/.*"value":\[[0-9.]*,"\([^"]*\)".*/\1/p' <<<"$answer" | head -n 1
  }
  firing=$(prom_query 'count(ALERTS{alertstate="firing"})')
  targets=$(for j in "${!metrics[@]}"; do echo ${metrics[$j]}; done | wc -w)
  echo "==> prometheus (http://$host:$prom_port): $(prom_query 'sum(up)') of $targets services scraped;" \
    "$(prom_query 'sum(allot_allocation_cycles_total)') allocation cycles," \
    "$(prom_query 'sum(allot_tasks_launched_total)') tasks launched, ${firing:-0} alerts firing"
fi

if ((traces)); then
  sleep 1 # the services' last spans (exported twice a second)
  echo "==> why did task sha256-000 land on its agent? (allot trace sha256-000; the whole trace without the sed)"
  "$bin/allot" trace sha256-000 | sed -n '/^why this agent/,$p' || true
  echo "    recent task traces: allot traces list; allocation cycles: allot traces cycles [--framework ID]"
fi

if ((keep)); then
  echo "==> cluster left running; Ctrl-C to stop. For the CLI, in another shell:"
  echo "    source $run/cluster.env"
  echo "    (it sets ALLOT_REGISTRY=$ALLOT_REGISTRY ALLOT_ALLOCATOR=$ALLOT_ALLOCATOR ALLOT_BROKER=$ALLOT_BROKER,"
  echo "     ALLOT_TLS_DIR=$ALLOT_TLS_DIR (the operator's certificate and framework-default's),"
  ((traces)) && echo "     ALLOT_TRACES_DIR=$ALLOT_TRACES_DIR (the trace store) and OTEL_EXPORTER_OTLP_ENDPOINT,"
  echo "     and puts $bin, where \`allot\` is, first on PATH)"
  while :; do sleep 3600; done
fi
if ((sha_rc || gz_rc)); then
  echo "some tasks failed: see $run/*.summary and $run/logs/" >&2
  exit 1
fi
echo "==> done"
