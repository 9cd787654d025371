#!/usr/bin/env bash
# Benchmark of `imdsguard audit` on synthetic clusters (docs/benchmarks.md).
#
# Generates the benchmark cluster (5,000 namespaces, 150,000 pods, 20,000 NetworkPolicies,
# by default) and a tenth of it, as a kubectl-style JSON List and as multi-document YAML,
# then measures wall time (hyperfine), peak memory (GNU time) and the phase breakdown
# (--timings) of `imdsguard audit --format json` against the default targets.
#
# usage: scripts/bench-audit.sh [RUNS]      (needs hyperfine and GNU time: apt-get install hyperfine time)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
data=bench-data
mkdir -p "$data"
cargo build --release -q -p imdsguard -p imdsguard-synth
bin=target/release/imdsguard
gen=target/release/imdsguard-synth

declare -A scale=([full]="5000 150000 20000" [tenth]="500 15000 2000")
for s in tenth full; do
    read -r ns pods pols <<<"${scale[$s]}"
    for fmt in json yaml; do
        f="$data/cluster-$s.$fmt"
        [ -f "$f" ] || "$gen" --namespaces "$ns" --pods "$pods" --policies "$pols" --format "$fmt" --out "$f"
    done
done

# The same objects as one `kind: List` document, as `kubectl get -A -o yaml` writes it.
list="$data/cluster-full-list.yaml"
[ -f "$list" ] || awk 'BEGIN{print "apiVersion: v1"; print "items:"; first=1}
    /^---/{first=1; next}
    { if (first) { print "- " $0; first=0 } else { print "  " $0 } }
    END{print "kind: List"; print "metadata:"; print "  resourceVersion: \"\""}' "$data/cluster-full.yaml" > "$list"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r)"
ls -l "$data"/cluster-*
for s in tenth full; do
    for fmt in json yaml; do
        f="$data/cluster-$s.$fmt"
        cmd="$bin audit -f $f --format json --fail-on never"
        hyperfine --style basic --warmup 2 --runs "$runs" --export-json "$data/hyperfine-$s-$fmt.json" "$cmd >/dev/null" | grep -E 'Time|Range'
        /usr/bin/time -f "  peak RSS: %M KB" $cmd >/dev/null
        for _ in 1 2 3; do $cmd --timings >/dev/null; done 2>&1 | sed 's/^/  /'
    done
done
cmd="$bin audit -f $list --format json --fail-on never"
hyperfine --style basic --warmup 2 --runs "$runs" --export-json "$data/hyperfine-full-yaml-list.json" "$cmd >/dev/null" | grep -E 'Time|Range'
/usr/bin/time -f "  peak RSS: %M KB" $cmd >/dev/null
