#!/usr/bin/env bash
# The filtering proxy's benchmarks (docs/benchmarks.md, "Filtering proxy and node
# enforcement"), run in a network namespace of their own that holds only `lo`:
#
#   1. denied requests at the maximum rate, and allowed pass-through (token, versions,
#      redacted instance) at a fixed rate over 50 connections, the emulator directly vs
#      through the proxy: `imdsguard emulate` and `imdsguard proxy` run as processes;
#   2. the same with the emulator and the proxy inside the generator's process;
#   3. the proxy's memory with 10,000 open keep-alive connections (idle, and after one
#      allowed request each), read from /proc/PID/status of the proxy process.
#
#   crates/proxy/examples/bench-proxy.sh            # all of it (about 1.5 min after the build)
#   crates/proxy/examples/bench-proxy.sh memory     # only the memory run
#   crates/proxy/examples/bench-proxy.sh processes  # only 1.
#
# The proxy's upstream is always the emulator on 127.0.0.1, never 169.254.169.254. The
# namespace also has a PID namespace of its own: when this script ends or is killed,
# every process it started ends with it. Environment: CONNECTIONS (50), DURATION (5s),
# ALLOWED_RATE (5000), MEM_CONNECTIONS (10000).
set -euo pipefail
cd "$(dirname "$0")/../../.."

if [ -z "${IMDSGUARD_BENCH_NETNS:-}" ]; then
    cargo build --release -q -p imdsguard
    cargo build --release -q -p imdsguard-proxy --example imdsguard-loadgen
    isolate=(unshare --net --pid --fork --kill-child --mount --mount-proc)
    [ "$(id -u)" = 0 ] || isolate+=(--map-root-user)
    echo "load before: $(cat /proc/loadavg)"
    rc=0
    "${isolate[@]}" env IMDSGUARD_BENCH_NETNS=1 bash "$0" "$@" || rc=$?
    echo "load after:  $(cat /proc/loadavg)"
    exit $rc
fi

# Inside the namespace: only lo, and up.
ip link set lo up
if [ "$(grep -c : /proc/net/dev)" -ne 1 ]; then
    echo "bench-proxy.sh: the namespace holds more than lo; refusing" >&2
    exit 1
fi
# One descriptor per held connection, in the generator and in the proxy (which
# inherits this limit).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

bin=target/release/imdsguard
gen=target/release/examples/imdsguard-loadgen
what=${1:-all}
conns=${CONNECTIONS:-50}
duration=${DURATION:-5s}
rate=${ALLOWED_RATE:-5000}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -sr); open files: $(ulimit -n)"

if [ "$what" = all ] || [ "$what" = processes ]; then
    echo
    echo "== emulator and proxy as processes ($bin), $conns connections"
    "$gen" bench --bin "$bin" --connections "$conns" --duration "$duration" \
        --allowed-rate "$rate" --scenarios denied,token,versions,instance
fi
if [ "$what" = all ] || [ "$what" = inprocess ]; then
    echo
    echo "== emulator and proxy in the generator's process, $conns connections"
    "$gen" bench --connections "$conns" --duration "$duration" \
        --allowed-rate "$rate" --scenarios denied,token,versions,instance
fi
if [ "$what" = all ] || [ "$what" = memory ]; then
    echo
    echo "== proxy memory, ${MEM_CONNECTIONS:-10000} connections"
    "$gen" memory --bin "$bin" --connections "${MEM_CONNECTIONS:-10000}" --modes idle,request,denied
fi
