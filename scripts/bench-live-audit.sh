#!/usr/bin/env bash
# Benchmark of the live `imdsguard audit` against the file audit of a kubectl dump
# (issue 9 §2 "Speed", docs/benchmarks.md): with 20,000 pods and 2,000 policies in the
# test API server, the live audit takes at most 1.5x the time of
# `kubectl get -A -o json` of the same kinds piped into `imdsguard audit -f -`.
#
# Steps:
#   1. builds the release binaries (imdsguard, imdsguard-synth) and finds the control
#      plane's (scripts/control-plane.sh build: kube-apiserver, etcd and kubectl from the
#      same k8s.io/kubernetes module);
#   2. starts a dedicated control plane in target/control-plane/bench (stopped on exit);
#   3. generates the cluster with imdsguard-synth (seed 42, --noise full: 200 namespaces,
#      20,000 Pods, 2,000 NetworkPolicies and the Deployments, ReplicaSets, StatefulSets,
#      DaemonSets, Jobs and CronJobs around them), strips what the server sets (uid,
#      resourceVersion, creationTimestamp, generation, status, Jobs' generated selector;
#      Services and ConfigMaps, which neither side lists, are left out) and loads it with
#      `kubectl create -f` in LOAD_JOBS parallel chunks (Namespaces first);
#   4. times RUNS rounds, each running these one after the other:
#        (a) kubectl get KINDS -A -o json | imdsguard audit -f - --format json
#        (b) imdsguard audit --kubeconfig K -A --format json
#        (c) kubectl get KINDS -A -o json > FILE, (d) imdsguard audit -f FILE (where (a)'s
#            time goes)
#      to /dev/null, KINDS being what the live audit lists (crates/kube/src/live/kinds.rs;
#      the test server serves none of the CRD kinds), and prints the medians and b/a, in
#      wall time and in the clients' CPU time (user + system, the server's not counted);
#   5. before that, checks that (a) and (b) give the same verdicts (per workload and
#      target: reachable, reason, tier) and prints the live audit's --timings.
#
# usage: scripts/bench-live-audit.sh [RUNS]     (default 3; needs jq)
# environment: LOAD_JOBS (default 4) parallel kubectl processes for the load;
#              NO_BUILD=1 uses target/release as it is;
#              KEEP=1 leaves the control plane running (for profiling; `down` it yourself)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
load_jobs=${LOAD_JOBS:-4}
data=bench-data/live
cp_dir=target/control-plane/bench
mkdir -p "$data"
command -v jq >/dev/null || { echo "bench-live-audit: needs jq (apt-get install jq)" >&2; exit 1; }

[ "${NO_BUILD:-0}" = 1 ] || cargo build --release -q -p imdsguard -p imdsguard-synth
bin=target/release/imdsguard
gen=target/release/imdsguard-synth
kubectl="$(bash scripts/control-plane.sh build)/kubectl"
"$bin" audit --help | grep -q -- --kubeconfig \
    || { echo "bench-live-audit: $bin has no live audit (--kubeconfig)" >&2; exit 1; }

if [ "${KEEP:-0}" != 1 ]; then
    trap 'bash scripts/control-plane.sh down "$cp_dir"' EXIT
fi
bash scripts/control-plane.sh down "$cp_dir" 2>/dev/null || true
bash scripts/control-plane.sh up "$cp_dir" >/dev/null
kc="$cp_dir/kubeconfig"
k() { "$kubectl" --kubeconfig "$kc" "$@"; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "imdsguard at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo ' (work tree differs)'); kubectl from $(dirname "$kubectl")"

# --- generate and load -------------------------------------------------------------
"$gen" --namespaces 200 --pods 20000 --policies 2000 --noise full --seed 42 \
    --format json --out "$data/cluster.json"
# The generator repeats a port name within a container now and then (node-exporter's and
# cni-agent's "metrics"), which the server refuses: later duplicates get a suffix.
jq -c 'def dedup_port_names:
        reduce .[] as $p ({seen: {}, out: []};
            (.out | length) as $i
            | if $p.name != null and (.seen[$p.name] // false)
              then .out += [$p | .name = "\(.name)-\($i)"]
              else .seen[$p.name // ""] = true | .out += [$p] end)
        | .out;
    .items[]
    | select(.kind != "Service" and .kind != "ConfigMap")
    | walk(if type == "object" and (.containers | type) == "array"
           then .containers |= map(if .ports then .ports |= dedup_port_names else . end)
           else . end)
    | del(.metadata.resourceVersion, .metadata.uid, .metadata.creationTimestamp,
          .metadata.generation, .status)
    | if .kind == "Job" then
        del(.spec.selector,
            .metadata.labels["batch.kubernetes.io/controller-uid"],
            .metadata.labels["controller-uid"],
            .spec.template.metadata.labels["batch.kubernetes.io/controller-uid"],
            .spec.template.metadata.labels["controller-uid"])
      else . end' "$data/cluster.json" > "$data/objects.jsonl"
# Namespaces are created without their PodSecurity labels (baseline enforcement would
# refuse the hostNetwork DaemonSet pods), which are set once everything is in.
grep '"kind":"Namespace"' "$data/objects.jsonl" \
    | jq -c '.metadata.labels |= with_entries(select(.key | startswith("pod-security.kubernetes.io/") | not))' \
    > "$data/namespaces.jsonl"
grep '"kind":"Namespace"' "$data/objects.jsonl" \
    | jq -r '[.metadata.name] + [.metadata.labels // {} | to_entries[]
                 | select(.key | startswith("pod-security.kubernetes.io/")) | "\(.key)=\(.value)"]
             | select(length > 1) | join(" ")' > "$data/namespace-labels"
grep -v '"kind":"Namespace"' "$data/objects.jsonl" > "$data/rest.jsonl"
rm -f "$data"/chunk-*
split -n "l/$load_jobs" -d "$data/rest.jsonl" "$data/chunk-"

load_start=$(date +%s.%N)
k create -f "$data/namespaces.jsonl" -o name > /dev/null
pids=()
for c in "$data"/chunk-*; do
    k create -f "$c" -o name > /dev/null 2> "$c.err" &
    pids+=($!)
done
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=1; done
load_end=$(date +%s.%N)
# stderr also holds the server's warnings (hostNetwork under PodSecurity, duplicate ports).
if [ "$fail" = 1 ] || grep -q '^Error' "$data"/chunk-*.err; then
    grep -h '^Error' "$data"/chunk-*.err | head -n 5 >&2
    echo "bench-live-audit: some objects were not created (above)" >&2
    exit 1
fi
while read -r ns labels; do
    # shellcheck disable=SC2086 # one word per label
    k label --overwrite namespace "$ns" $labels > /dev/null 2>&1
done < "$data/namespace-labels"
objects=$(wc -l < "$data/objects.jsonl")
pods=$(k get pods -A --no-headers | wc -l)
netpols=$(k get networkpolicies -A --no-headers | wc -l)
[ "$pods" = 20000 ] && [ "$netpols" = 2000 ] \
    || { echo "bench-live-audit: loaded $pods pods, $netpols policies (want 20000, 2000)" >&2; exit 1; }
printf 'loaded %d objects (%s) in %.1f s with %d kubectl create processes (PodSecurity labels after)\n' "$objects" \
    "$(jq -r .kind "$data/objects.jsonl" | sort | uniq -c | awk '{printf "%s%s=%s", sep, $2, $1; sep=" "}')" \
    "$(awk -v a="$load_start" -v b="$load_end" 'BEGIN { print b - a }')" "$load_jobs"

# --- measure -----------------------------------------------------------------------
# What the live audit lists on this server (kinds.rs WANTED, those it serves).
kinds=namespaces,pods,replicationcontrollers,deployments.apps,replicasets.apps,statefulsets.apps,daemonsets.apps,jobs.batch,cronjobs.batch,networkpolicies.networking.k8s.io
run_a() { k get "$kinds" -A -o json | "$bin" audit -f - --format json --fail-on never; }
run_b() { "$bin" audit --kubeconfig "$kc" -A --format json --fail-on never "$@"; }
# Where (a)'s time goes: kubectl alone (to a file), the file audit alone.
run_c() { k get "$kinds" -A -o json > "$data/dump.json"; }
run_d() { "$bin" audit -f "$data/dump.json" --format json --fail-on never; }

# The same verdicts: per workload and target, reachable and the reason.
digest='[.workloads[] | {namespace, name, kind, pods, host_network,
           v: [.verdicts[] | {target, reachable, reason, tier}]}] | sort_by(.namespace, .name, .kind)'
run_a > "$data/a.json"
run_b > "$data/b.json"
verdicts_a=$(jq '[.workloads[].verdicts[]] | length' "$data/a.json")
verdicts_b=$(jq '[.workloads[].verdicts[]] | length' "$data/b.json")
ls -l "$data/a.json" "$data/b.json" | awk '{print "report", $NF, $5, "bytes"}'
echo "verdicts: a $verdicts_a, b $verdicts_b; summary a $(jq -c '.summary | del(.findings)' "$data/a.json")"
if cmp -s <(jq -S "$digest" "$data/a.json") <(jq -S "$digest" "$data/b.json"); then
    echo "same verdicts: yes"
else
    echo "same verdicts: NO (diff of the digests follows)"
    diff <(jq -S "$digest" "$data/a.json") <(jq -S "$digest" "$data/b.json") | head -n 20
fi

echo "live audit phases (--timings, 2 runs):"
for _ in 1 2; do run_b --timings 2>&1 >/dev/null | { grep "^timings" || true; } | sed "s/^/  /"; done

# Alternating runs; `time` of a pipeline counts both processes' CPU (not the server's).
TIMEFORMAT='%R %U %S'
: > "$data/times"
for i in $(seq 1 "$runs"); do
    for which in a b c d; do
        t=$( { time "run_$which" > /dev/null 2>&1; } 2>&1 )
        echo "$which $i $t" | tee -a "$data/times"
    done
done
awk '
    { wall[$1] = wall[$1] " " $3; cpu[$1] = cpu[$1] " " ($4 + $5) }
    function median(s,   n, v, i, j, t) {
        n = split(substr(s, 2), v, " ")
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
        return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    END {
        wa = median(wall["a"]); wb = median(wall["b"]); ca = median(cpu["a"]); cb = median(cpu["b"])
        printf "median wall: a (kubectl get | audit -f -) %.3f s, b (live audit) %.3f s\n", wa, wb
        printf "median client CPU (user+sys): a %.3f s, b %.3f s\n", ca, cb
        printf "breakdown of a: kubectl get > file %.3f s wall (%.3f s CPU), audit -f file %.3f s wall (%.3f s CPU)\n",
            median(wall["c"]), median(cpu["c"]), median(wall["d"]), median(cpu["d"])
        printf "ratio b/a: wall %.2fx, client CPU %.2fx (bound: wall <= 1.5x)\n", wb / wa, cb / ca
    }' "$data/times"
