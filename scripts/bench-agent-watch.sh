#!/usr/bin/env bash
# The node agent's Kubernetes start-up cost does not grow with the number of nodes
# (issue 10, "Scale"; results in docs/benchmarks.md): the agent lists and watches only
# its own node's pods (field selector spec.nodeName) and the MetadataAccessPolicy
# objects.
#
# The real agent, `imdsguard agent run --kubernetes --node-name node-0 --mode observe`,
# is started RUNS times with 1 simulated node's pods in the API server (100 pods on
# node-0), then RUNS times with 50 nodes' (100 pods on each of node-0 .. node-49, 5,000
# in all), and for each start the script records the time from exec to /readyz
# answering 200 (the agent answers 200 once both first lists are in, its pods and the
# policies applied, and its nftables table installed), the bytes it received from the
# API server by then (bytes_received of its TCP connections, `ss -ti`), the pods it took
# (the imdsguard_agent_known_pairs metric) and its peak RSS (VmHWM). It also prints the size
# of the pod list the agent's field selector returns and of the whole pod list.
#
# Everything runs inside a network namespace of its own (`unshare --net`, needs root):
# loopback, a veth azvbench with a route to the pods' 10.244.0.0/14 (so the
# agent's `ip route get` finds each pod's interface as on a node), the control plane
# (etcd + kube-apiserver in target/control-plane/bench-agent, stopped on exit) and the
# agent, whose nftables table goes away with the namespace. Pods are ~2 KB of JSON each
# (scripts/bench-gen-objects.py), Running with a podIP written through the status
# subresource as a kubelet would.
#
# usage: scripts/bench-agent-watch.sh [RUNS]    (default 5)
# environment: NO_BUILD=1 uses target/release as it is; LOAD_JOBS (default 4).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
load_jobs=${LOAD_JOBS:-4}

if [ -z "${IMDSGUARD_BENCH_NETNS:-}" ]; then
    [ "$(id -u)" = 0 ] || { echo "bench-agent-watch: needs root (unshare --net, nft)" >&2; exit 1; }
    [ "${NO_BUILD:-0}" = 1 ] || cargo build --release -q -p imdsguard
    bash scripts/control-plane.sh build > /dev/null
    exec unshare --net env IMDSGUARD_BENCH_NETNS=1 bash "$0" "$@"
fi

# --- inside the namespace ------------------------------------------------------------
[ "$(readlink /proc/self/ns/net)" != "$(readlink /proc/1/ns/net)" ] \
    || { echo "bench-agent-watch: not in a network namespace of its own" >&2; exit 1; }
ip link set lo up
ip link add azvbench type veth peer name azvbench-peer
ip link set azvbench-peer up
ip link set azvbench up
ip route add 10.244.0.0/14 dev azvbench

bin=target/release/imdsguard
kubectl="$(bash scripts/control-plane.sh build)/kubectl"
data=bench-data/agent
cp_dir=target/control-plane/bench-agent
mkdir -p "$data"
agent_pid=
cleanup() {
    if [ -n "$agent_pid" ] && kill -0 "$agent_pid" 2>/dev/null; then kill "$agent_pid"; wait "$agent_pid" 2>/dev/null || true; fi
    bash scripts/control-plane.sh down "$cp_dir"
    rm -rf "$data"
}
trap cleanup EXIT
bash scripts/control-plane.sh up "$cp_dir" > /dev/null
kc="$cp_dir/kubeconfig"
k() { "$kubectl" --kubeconfig "$kc" "$@"; }
load() { echo "load $(cut -d' ' -f1-3 /proc/loadavg)"; }
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r); $(load)"
echo "imdsguard at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo ' (work tree differs)')"

# Creates the objects of FILE (JSON lines) with LOAD_JOBS kubectl processes; with
# `status`, replaces their status subresource instead.
in_parallel() {
    local file=$1 verb=$2 pids=() fail=0 c
    rm -f "$file".chunk-*
    split -n "l/$load_jobs" -d "$file" "$file.chunk-"
    for c in "$file".chunk-*; do
        if [ "$verb" = status ]; then
            k replace --subresource=status -f "$c" -o name > /dev/null 2> "$c.err" &
        else
            k create -f "$c" -o name > /dev/null 2> "$c.err" &
        fi
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || fail=1; done
    if [ "$fail" = 1 ] || grep -q '^Error' "$file".chunk-*.err; then
        grep -h '^Error' "$file".chunk-*.err | head -n 5 >&2
        echo "bench-agent-watch: $verb of $file failed" >&2
        exit 1
    fi
    rm -f "$file".chunk-*
}
gen="python3 scripts/bench-gen-objects.py"

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
for i in $(seq 0 49); do echo "{\"apiVersion\":\"v1\",\"kind\":\"Node\",\"metadata\":{\"name\":\"node-$i\"}}"; done > "$data/nodes.jsonl"
$gen namespaces bench 0 20 > "$data/ns.jsonl"
k create -f "$data/nodes.jsonl" -o name > /dev/null
k create -f "$data/ns.jsonl" -o name > /dev/null
# 5,000 pods over 20 namespaces, pod i on node-(i % 50): node-0's 100 first, the rest later.
$gen pods bench 20 5000 50 > "$data/pods.jsonl"
grep '"nodeName":"node-0"}' "$data/pods.jsonl" > "$data/pods-node0.jsonl" || true
grep -v '"nodeName":"node-0"}' "$data/pods.jsonl" > "$data/pods-rest.jsonl"
[ "$(wc -l < "$data/pods-node0.jsonl")" = 100 ] || { echo "bench-agent-watch: node-0 has $(wc -l < "$data/pods-node0.jsonl") pods, want 100" >&2; exit 1; }

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
metric() { curl -fsS "http://127.0.0.1:$port/metrics" | awk -v m="$1" '$1 == m { print $NF }'; }

# Bytes received on the established TCP connections of process $1 (`ss -ti`).
received() {
    ss -tinpH state established | awk -v pid="pid=$1," '
        index($0, pid) { mine = 1; next }
        mine { if (match($0, /bytes_received:[0-9]+/)) s += substr($0, RSTART + 15, RLENGTH - 15); mine = 0 }
        END { print s + 0 }'
}

# One start of the agent; appends "label seconds received vmhwm_kib known" to the results.
measure() {
    local label=$1 t0 t1 code
    t0=$(date +%s.%N)
    "$bin" agent run --kubernetes --node-name node-0 --kubeconfig "$kc" --mode observe \
        --admin-listen "127.0.0.1:$port" --check-interval 10m --log-format json \
        > "$data/agent-$label.log" 2>&1 &
    agent_pid=$!
    for _ in $(seq 1 3000); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz" 2>/dev/null || true)
        [ "$code" = 200 ] && break
        kill -0 "$agent_pid" 2>/dev/null || { tail -n 20 "$data/agent-$label.log" >&2; exit 1; }
        sleep 0.01
    done
    t1=$(date +%s.%N)
    [ "$code" = 200 ] || { echo "bench-agent-watch: agent not ready after 30 s" >&2; tail -n 20 "$data/agent-$label.log" >&2; exit 1; }
    local rcvd hwm known synced
    rcvd=$(received "$agent_pid")
    hwm=$(awk '$1 == "VmHWM:" { print $2 }' "/proc/$agent_pid/status")
    known=$(metric imdsguard_agent_known_pairs)
    synced=$(metric imdsguard_agent_policies_synced)
    kill "$agent_pid"; wait "$agent_pid" 2>/dev/null || true; agent_pid=
    [ "$synced" = 1 ] || { echo "bench-agent-watch: policies not synced at ready ($synced)" >&2; exit 1; }
    echo "$label $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }') $rcvd $hwm $known" | tee -a "$data/results"
}

list_sizes() {
    echo "$1: pods in the API server $(k get pods -A --no-headers | wc -l); the agent's list (fieldSelector spec.nodeName=node-0) $(k get --raw '/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-0' | wc -c) bytes; the whole pod list $(k get --raw /api/v1/pods | wc -c) bytes"
}

in_parallel "$data/pods-node0.jsonl" create
$gen status "$data/pods-node0.jsonl" > "$data/status-node0.jsonl"
in_parallel "$data/status-node0.jsonl" status
list_sizes "1 node"
: > "$data/results"
echo "label seconds_to_ready bytes_received vmhwm_kib known_pods"
measure warmup > /dev/null
for _ in $(seq 1 "$runs"); do measure 1node; done
echo "$(load)"

in_parallel "$data/pods-rest.jsonl" create
$gen status "$data/pods-rest.jsonl" > "$data/status-rest.jsonl"
in_parallel "$data/status-rest.jsonl" status
list_sizes "50 nodes"
measure warmup > /dev/null
for _ in $(seq 1 "$runs"); do measure 50nodes; done
echo "$(load)"

awk '
    $1 == "warmup" { next }
    { t[$1] = t[$1] " " $2; r[$1] = r[$1] " " $3; m[$1] = m[$1] " " $4; p[$1] = $5 }
    function median(s,   n, v, i, j, x) {
        n = split(substr(s, 2), v, " ")
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] + 0 < v[i] + 0) { x = v[i]; v[i] = v[j]; v[j] = x }
        return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    END {
        for (l in t) printf "%s: median time to ready %.3f s, bytes received %d, peak RSS %.1f MiB, pods taken %d\n", l, median(t[l]), median(r[l]), median(m[l]) / 1024, p[l]
        printf "ratio 50 nodes / 1 node: time %.2f, bytes received %.2f, peak RSS %.2f\n",
            median(t["50nodes"]) / median(t["1node"]), median(r["50nodes"]) / median(r["1node"]), median(m["50nodes"]) / median(m["1node"])
    }' "$data/results"
