#!/usr/bin/env bash
# The proxy's fairness benchmark (docs/benchmarks.md, "Proxy fairness"), in a network
# namespace of its own that holds only `lo`: another pod's latency while one pod holds
# a slowloris of ATTACKERS connections (examples/bench-fairness.rs), with the default
# per-source limit, and with the limit lifted (the behaviour before it existed).
#
#   crates/proxy/examples/bench-fairness.sh
#
# Everything listens on 127.0.0.1 inside the namespace; the namespace also has a PID
# namespace of its own, so every process it started ends with it. Environment:
# ATTACKERS (1000), RATE (200 victim requests/s), SECONDS_EACH (5).
set -euo pipefail
cd "$(dirname "$0")/../../.."

if [ -z "${IMDSGUARD_BENCH_NETNS:-}" ]; then
    cargo build --release -q -p imdsguard-proxy --example bench-fairness
    isolate=(unshare --net --pid --fork --kill-child --mount --mount-proc)
    [ "$(id -u)" = 0 ] || isolate+=(--map-root-user)
    echo "load before: $(cat /proc/loadavg)"
    rc=0
    "${isolate[@]}" env IMDSGUARD_BENCH_NETNS=1 bash "$0" "$@" || rc=$?
    echo "load after:  $(cat /proc/loadavg)"
    exit $rc
fi

ip link set lo up
if [ "$(grep -c : /proc/net/dev)" -ne 1 ]; then
    echo "bench-fairness.sh: the namespace holds more than lo; refusing" >&2
    exit 1
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

bench=target/release/examples/bench-fairness
attackers=${ATTACKERS:-1000}
rate=${RATE:-200}
seconds=${SECONDS_EACH:-5}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -sr); open files: $(ulimit -n)"
echo
echo "== default limits (64 connections per source, 1024 in all)"
"$bench" --attackers "$attackers" --rate "$rate" --seconds "$seconds"
echo
echo "== per-source limit lifted (1024 per source: one pod may take every slot)"
"$bench" --attackers "$attackers" --rate "$rate" --seconds "$seconds" --per-source 1024
echo
echo "== per-source limit lifted, attacker over the global limit (1100 connections)"
"$bench" --attackers 1100 --rate "$rate" --seconds "$seconds" --per-source 1024
