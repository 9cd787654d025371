#!/usr/bin/env bash
# Scale benchmark of `imdsguard controller` against the test control plane (issue 10,
# "Scale"; results in docs/benchmarks.md):
#
#   1. 2,000 namespaces created at once while the controller runs with a
#      MetadataAccessPolicy present: the time until every one carries its generated
#      NetworkPolicy (bound: 60 s). Then a resync with nothing changed (--resync 10s,
#      two resyncs waited for) and a restart of the controller: no write request,
#      counted by the controller (imdsguard_controller_writes_total) and by the API
#      server (apiserver_request_total of its own /metrics, write verbs by resource).
#   2. 10,000 namespaces and 50,000 pods (the 2,003 of step 1, 7,997 more, and 50,000
#      pods 5 a namespace, ~2 KB of JSON each): a fresh controller's peak RSS (VmHWM)
#      after its first full reconcile and after a resync (bound: 256 MiB), beside the
#      API server's and etcd's RSS.
#
# Everything runs on a dedicated control plane in target/control-plane/bench-controller,
# stopped on exit with the controller; generated objects go to bench-data/controller
# (removed on exit unless KEEP=1).
#
# usage: scripts/bench-controller.sh [all|namespaces|memory]   (default all; memory
#        includes the namespaces step's load)
# environment: LOAD_JOBS (default 4) parallel kubectl processes for the loads;
#              NO_BUILD=1 uses target/release as it is; KEEP=1 keeps the control plane
#              and bench-data/controller.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
load_jobs=${LOAD_JOBS:-4}
data=bench-data/controller
cp_dir=target/control-plane/bench-controller
mkdir -p "$data"

[ "${NO_BUILD:-0}" = 1 ] || cargo build --release -q -p imdsguard
bin=target/release/imdsguard
kubectl="$(bash scripts/control-plane.sh build)/kubectl"
gen="python3 scripts/bench-gen-objects.py"

ctl_pid=
stop_controller() {
    if [ -n "$ctl_pid" ] && kill -0 "$ctl_pid" 2>/dev/null; then
        kill "$ctl_pid"
        wait "$ctl_pid" 2>/dev/null || true
    fi
    ctl_pid=
}
cleanup() {
    stop_controller
    if [ "${KEEP:-0}" != 1 ]; then
        bash scripts/control-plane.sh down "$cp_dir"
        rm -rf "$data"
    fi
}
trap cleanup EXIT
bash scripts/control-plane.sh down "$cp_dir" 2>/dev/null || true
bash scripts/control-plane.sh up "$cp_dir" >/dev/null
kc="$cp_dir/kubeconfig"
k() { "$kubectl" --kubeconfig "$kc" "$@"; }

load() { echo "load $(cut -d' ' -f1-3 /proc/loadavg)"; }
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r); $(load)"
echo "imdsguard at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo ' (work tree differs)')"

# The server's pids (control-plane.sh's pids file: pid and binary).
server_pid() { awk -v n="$1" '$2 ~ n"$" { print $1 }' "$cp_dir/pids"; }
status_kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
metrics() { curl -fsS "http://127.0.0.1:$port/metrics"; }
# Sum of a metric's samples whose line matches a pattern.
metric_sum() { metrics | awk -v m="$1" -v p="${2:-}" 'index($0, m) == 1 && $0 ~ p { s += $NF } END { print s + 0 }'; }
writes() { metric_sum imdsguard_controller_writes_total; }
reconciles_ok() { metric_sum imdsguard_controller_reconciles_total 'result="ok"'; }
# Write requests the API server counted, by resource (leases apart: leader election).
server_writes() {
    k get --raw /metrics | awk '
        /^apiserver_request_total\{/ && /verb="(POST|PUT|PATCH|DELETE|APPLY|CREATE|UPDATE)"/ {
            match($0, /resource="[^"]*"/); r = substr($0, RSTART + 10, RLENGTH - 11)
            match($0, /subresource="[^"]*"/); if (RLENGTH > 0) r = r "/" substr($0, RSTART + 13, RLENGTH - 14)
            n[r] += $NF }
        END { for (r in n) printf "%s=%d ", r, n[r]; print "" }'
}
# Write requests to everything but leases.
server_writes_no_lease() { server_writes | tr ' ' '\n' | awk -F= '$1 != "" && $1 !~ /^leases/ { s += $2 } END { print s + 0 }'; }

start_controller() {
    "$bin" controller --kubeconfig "$kc" --engine networkpolicy --lease-namespace default \
        --metrics-listen "127.0.0.1:$port" --resync "$1" --log-format json \
        > "$data/controller-$2.log" 2>&1 &
    ctl_pid=$!
    for _ in $(seq 1 600); do
        curl -fsS "http://127.0.0.1:$port/readyz" > /dev/null 2>&1 && [ "$(reconciles_ok)" -ge 1 ] && return
        kill -0 "$ctl_pid" 2>/dev/null || { tail -n 20 "$data/controller-$2.log" >&2; exit 1; }
        sleep 0.2
    done
    echo "bench-controller: no reconcile after 120 s" >&2
    exit 1
}

# Namespaces (of the given prefix) carrying a generated NetworkPolicy.
covered() {
    k get networkpolicies -A -l app.kubernetes.io/managed-by=imdsguard \
        -o jsonpath='{range .items[*]}{.metadata.namespace}{"\n"}{end}' \
        | { grep "^$1-" || true; } | sort -u | wc -l
}

# Creates the objects of FILE (JSON lines) with LOAD_JOBS kubectl processes.
create_parallel() {
    local file=$1 pids=() fail=0 c
    rm -f "$file".chunk-*
    split -n "l/$load_jobs" -d "$file" "$file.chunk-"
    for c in "$file".chunk-*; do
        k create -f "$c" -o name > /dev/null 2> "$c.err" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || fail=1; done
    if [ "$fail" = 1 ] || grep -q '^Error' "$file".chunk-*.err; then
        grep -h '^Error' "$file".chunk-*.err | head -n 5 >&2
        echo "bench-controller: some objects of $file were not created" >&2
        exit 1
    fi
    rm -f "$file".chunk-*
}

k apply --server-side -f deploy/crds/metadataaccesspolicies.imdsguard.io.yaml > /dev/null
# Polled: `kubectl wait` fails at once while a new CRD has no conditions yet.
for _ in $(seq 1 300); do
    [ "$(k get crd metadataaccesspolicies.imdsguard.io -o jsonpath='{.status.conditions[?(@.type=="Established")].status}')" = True ] && break
    sleep 0.2
done
k apply -f - > /dev/null <<'EOF'
apiVersion: imdsguard.io/v1alpha1
kind: MetadataAccessPolicy
metadata: {name: bench}
spec:
  rules:
  - name: identity
    subjects:
    - namespace: bench-0
      podSelector: {matchLabels: {app: app-0}}
    paths: [/metadata/identity/oauth2/token]
EOF

# --- 1. 2,000 namespaces at once ----------------------------------------------------
$gen namespaces bench 0 2000 > "$data/ns-2000.jsonl"
start_controller 10s first
echo "controller up (pid $ctl_pid): $(metric_sum imdsguard_controller_managed_objects) generated objects for the $(k get ns --no-headers | wc -l) namespaces there (kube-system excluded); $(load)"
t0=$(date +%s.%N)
create_parallel "$data/ns-2000.jsonl" &
creator=$!
created=
n=0
while :; do
    n=$(covered bench)
    now=$(date +%s.%N)
    if [ -z "$created" ] && ! kill -0 "$creator" 2>/dev/null; then
        wait "$creator"
        created=$now
    fi
    [ "$n" -ge 2000 ] && break
    awk -v a="$t0" -v b="$now" 'BEGIN { exit !(b - a > 180) }' && { echo "bench-controller: $n of 2000 after 180 s" >&2; exit 1; }
    sleep 0.5
done
[ -n "$created" ] || { wait "$creator"; created=$(date +%s.%N); }
t1=$(date +%s.%N)
printf '2000 namespaces: created in %.1f s (%d kubectl create processes); every one with its generated NetworkPolicy %.1f s after the first create (bound 60 s); %s\n' \
    "$(awk -v a="$t0" -v b="$created" 'BEGIN { print b - a }')" "$load_jobs" \
    "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" "$(load)"
echo "controller: writes $(writes), reconciles ok $(reconciles_ok), managed objects $(metric_sum imdsguard_controller_managed_objects)"
metrics | grep '^imdsguard_controller_writes_total' | sed 's/^/  /'

# Settle (the last burst's reconcile, status), then two resyncs with nothing changed.
sleep 3
w0=$(writes); r0=$(reconciles_ok); s0=$(server_writes_no_lease)
sleep 25
w1=$(writes); r1=$(reconciles_ok); s1=$(server_writes_no_lease)
echo "resync, nothing changed (--resync 10s, 25 s waited): reconciles ok $r0 -> $r1, controller writes $w0 -> $w1 (+$((w1 - w0))), API server write requests other than leases $s0 -> $s1 (+$((s1 - s0)))"
echo "  API server write requests by resource: $(server_writes)"
stop_controller
s0=$(server_writes_no_lease)
start_controller 10s restart
sleep 12
echo "restart, nothing changed: reconciles ok $(reconciles_ok), controller writes $(writes), API server write requests other than leases +$(( $(server_writes_no_lease) - s0 )); peak RSS $(mib "$(status_kib "$ctl_pid" VmHWM)") MiB at $(k get ns --no-headers | wc -l) namespaces"
stop_controller
[ "$what" = namespaces ] && exit 0

# --- 2. memory at 10,000 namespaces and 50,000 pods -----------------------------------
$gen namespaces bench 2000 7997 > "$data/ns-more.jsonl"
$gen pods bench 9997 50000 > "$data/pods.jsonl"
echo "pods: $(wc -c < "$data/pods.jsonl") bytes of JSON for 50000 (as created)"
t0=$(date +%s.%N)
create_parallel "$data/ns-more.jsonl"
create_parallel "$data/pods.jsonl"
printf 'loaded 7997 namespaces and 50000 pods in %.0f s; %s\n' "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')" "$(load)"
nss=$(k get ns --no-headers | wc -l)
pods=$(k get pods -A --no-headers | wc -l)
echo "cluster: $nss namespaces, $pods pods"
t0=$(date +%s.%N)
start_controller 30s memory
# The first full reconcile: every namespace but kube-system covered.
for _ in $(seq 1 600); do
    [ "$(metric_sum imdsguard_controller_managed_objects)" -ge $((nss - 1)) ] && break
    sleep 0.5
done
t1=$(date +%s.%N)
api=$(server_pid kube-apiserver); etcd=$(server_pid etcd)
printf 'first full reconcile: %s generated objects %.1f s after start; controller VmHWM %s MiB, VmRSS %s MiB; kube-apiserver VmRSS %s MiB (VmHWM %s), etcd VmRSS %s MiB; %s\n' \
    "$(metric_sum imdsguard_controller_managed_objects)" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
    "$(mib "$(status_kib "$ctl_pid" VmHWM)")" "$(mib "$(status_kib "$ctl_pid" VmRSS)")" \
    "$(mib "$(status_kib "$api" VmRSS)")" "$(mib "$(status_kib "$api" VmHWM)")" "$(mib "$(status_kib "$etcd" VmRSS)")" "$(load)"
r0=$(reconciles_ok); w0=$(writes)
sleep 40
printf 'after a resync (reconciles ok %s -> %s, writes %s -> %s): controller VmHWM %s MiB, VmRSS %s MiB\n' \
    "$r0" "$(reconciles_ok)" "$w0" "$(writes)" "$(mib "$(status_kib "$ctl_pid" VmHWM)")" "$(mib "$(status_kib "$ctl_pid" VmRSS)")"
metrics | grep -E '^imdsguard_controller_(reconcile_duration_seconds_(sum|count)|writes_total)' | sed 's/^/  /'
stop_controller
