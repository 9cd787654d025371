#!/usr/bin/env bash
# Benchmark of `imdsguard policy generate` plus the closed-loop audit against the audit
# alone, on the 150,000-pod synthetic cluster (docs/benchmarks.md, issue 8 "Speed": within 2x).
#
# For each output engine E and the audit engine M that enforces it, in the same hyperfine
# run: the audit alone (`audit -f CLUSTER --preset aks --engine M`), `policy generate -f
# CLUSTER --preset aks --engine E -o DIR` and the closed-loop audit (`audit -f CLUSTER DIR
# --preset aks --engine M`); prints (generate + closed-loop audit) / audit alone.
#
# With --verify first: per output engine, `policy generate --verify` (generate and the
# closed-loop audit in one process, the input parsed once; YAML to /dev/null) against the
# audit alone under the engine --verify uses, in the same hyperfine run; prints the ratio.
#
# usage: scripts/bench-generate.sh [--verify] [RUNS] [ENGINE...]   (needs hyperfine and
#        python3; the cluster is made as scripts/bench-audit.sh makes it). TMPDIR chooses
#        where the generated files go (e.g. TMPDIR=/dev/shm to leave the disk out).
set -euo pipefail
cd "$(dirname "$0")/.."
verify=
if [ "${1:-}" = --verify ]; then verify=1; shift; fi
runs=${1:-5}
shift || true
engines=("$@")
data=bench-data
mkdir -p "$data"
cargo build --release -q -p imdsguard -p imdsguard-synth
bin=target/release/imdsguard
cluster="$data/cluster-full.json"
[ -f "$cluster" ] || target/release/imdsguard-synth --namespaces 5000 --pods 150000 --policies 20000 --format json --out "$cluster"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "output folder: $out ($(df --output=fstype "$out" | tail -1))"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -n "$verify" ]; then
    # The audit engine of each output engine under --verify (networkpolicy: the default
    # --verify-engine).
    for pair in networkpolicy:kube-network-policies cnp:kube-network-policies anp:ovn-kubernetes calico:calico cilium:cilium; do
        e=${pair%%:*} m=${pair#*:}
        if [ ${#engines[@]} -gt 0 ] && [[ ! " ${engines[*]} " == *" $e "* ]]; then continue; fi
        flags="--engine $m"
        [ "$m" = cilium ] && flags="$flags --cilium-link-local world"
        audit="$bin audit -f $cluster --preset aks $flags --format json --fail-on never"
        # Exit 1 when an unexpected workload still reaches a target: not a benchmark failure.
        gen="$bin policy generate -f $cluster --preset aks --engine $e --verify"
        echo "== $e --verify (audit --engine $m)"
        $gen --timings 2>&1 >/dev/null | grep -E 'reach it before|passed|FAILED|timings' || true
        hyperfine --style basic --warmup 1 --runs "$runs" --export-json "$out/$e.json" \
            -n audit "$audit >/dev/null" \
            -n verify "$gen >/dev/null 2>&1 || true" | grep -E '^(Benchmark|  Time)'
        python3 - "$out/$e.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
a, v = r["audit"], r["verify"]
print(f"   ratio (policy generate --verify) / audit alone: wall {v['mean'] / a['mean']:.2f}x"
      f" ({v['mean']:.3f} s vs {a['mean']:.3f} s), user CPU {v['user'] / a['user']:.2f}x"
      f" ({v['user']:.3f} s vs {a['user']:.3f} s)")
PY
    done
    exit 0
fi
for pair in networkpolicy:generic cnp:generic anp:ovn-kubernetes calico:calico cilium:cilium; do
    e=${pair%%:*} m=${pair#*:}
    if [ ${#engines[@]} -gt 0 ] && [[ ! " ${engines[*]} " == *" $e "* ]]; then continue; fi
    dir="$out/$e"
    audit="$bin audit -f $cluster --preset aks --engine $m --format json --fail-on never"
    gen="$bin policy generate -f $cluster --preset aks --engine $e -o $dir"
    after="$bin audit -f $cluster $dir --preset aks --engine $m --format json --fail-on never"
    $gen 2>/dev/null
    echo "== $e (audit --engine $m): $(ls "$dir" | wc -l) objects"
    # One --prepare per command: the generator writes into a fresh folder each run.
    hyperfine --style basic --warmup 1 --runs "$runs" --export-json "$out/$e.json" \
        --prepare true --prepare "rm -rf $dir" --prepare true \
        -n audit "$audit >/dev/null" \
        -n generate "$gen 2>/dev/null" \
        -n after "$after >/dev/null" | grep -E '^(Benchmark|  Time)'
    python3 - "$out/$e.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
a, g, c = (r[k]["mean"] for k in ("audit", "generate", "after"))
ua, ug, uc = (r[k]["user"] for k in ("audit", "generate", "after"))
print(f"   ratio (generate + closed-loop audit) / audit alone: wall {(g + c) / a:.2f}x"
      f" ({g:.3f} s + {c:.3f} s vs {a:.3f} s), user CPU {(ug + uc) / ua:.2f}x")
PY
done
