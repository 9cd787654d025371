#!/usr/bin/env bash
# The filtering proxy's benchmarks (docs/benchmarks.md, "Filtering proxy and node
# enforcement"), with wrk as the load tool, in a network namespace of its own that
# holds only `lo`:
#
#   1. denied requests at the maximum rate (wrk -t1 -cCONNECTIONS --latency);
#   2. allowed pass-through (token, versions, redacted instance) at a fixed rate over
#      CONNECTIONS connections (a wrk Lua script: each connection waits
#      CONNECTIONS/ALLOWED_RATE s between requests), the emulator directly vs through
#      the proxy, and what the proxy adds to p50 and p99;
#   3. the proxy's memory with MEM_CONNECTIONS open keep-alive connections (idle, and
#      after one allowed or one denied request each), read from /proc/PID/status.
#
#   crates/proxy/examples/bench-proxy.sh            # all of it (about 1.5 min after the build)
#   crates/proxy/examples/bench-proxy.sh latency    # only 1. and 2.
#   crates/proxy/examples/bench-proxy.sh memory     # only 3.
#
# `imdsguard emulate --no-throttle` and `imdsguard proxy` run as processes on
# 127.0.0.1; the proxy's upstream is the emulator, never 169.254.169.254. wrk cannot
# choose its source address, so 127.0.0.1 is the pod here: allowed the ARM token of the
# kubelet identity, /metadata/versions and /metadata/instance (default redaction), not
# the Key Vault token (the denied request). The namespace also has a PID namespace of
# its own: when this script ends or is killed, every process it started ends with it.
# Environment: CONNECTIONS (50), DURATION (5s), ALLOWED_RATE (5000), MEM_CONNECTIONS
# (10000), IMDSGUARD (a prebuilt binary instead of building target/release/imdsguard).
# Installs wrk from Debian when missing.
set -euo pipefail
cd "$(dirname "$0")/../../.."

if [ -z "${IMDSGUARD_BENCH_NETNS:-}" ]; then
    if ! command -v wrk >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
    fi
    [ -n "${IMDSGUARD:-}" ] || cargo build --release -q -p imdsguard
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
# One descriptor per held connection, in the client and in the proxy (which inherits
# this limit).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

bin=${IMDSGUARD:-target/release/imdsguard}
what=${1:-all}
conns=${CONNECTIONS:-50}
duration=${DURATION:-5s}
rate=${ALLOWED_RATE:-5000}
mem_conns=${MEM_CONNECTIONS:-10000}

dir=$(mktemp -d /tmp/imdsguard-bench-proxy.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_http() {
    for _ in $(seq 200); do
        curl -s -o /dev/null "$1" && return 0
        sleep 0.05
    done
    echo "bench-proxy.sh: nothing answers at $1" >&2
    exit 1
}

RUST_LOG=warn "$bin" emulate --listen 127.0.0.1:18169 --no-throttle --seed 1 >/dev/null 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:18169/metadata/versions
# The kubelet identity's client id in the emulator's default configuration.
kubelet=2d7b9c41-6e83-4f1a-b5c2-8a9e0f3d1c67
cat >"$dir/rules.yaml" <<EOF
rules:
  - name: bench-allowed
    subjects: [{namespace: bench, serviceAccount: allowed}]
    paths: [/metadata/versions, /metadata/instance]
    token:
      resources: [https://management.azure.com/]
      identities: [{clientId: $kubelet}]
EOF
echo "[{ip: 127.0.0.1, namespace: bench, name: client-0, serviceAccount: allowed}]" >"$dir/pods.yaml"

# Starts `imdsguard proxy` on 127.0.0.1:18170 (admin :19170) with the decision log as
# in production (JSON, every decision, standard error, here to /dev/null) and waits for
# it; EXTRA arguments are added. Sets proxy_pid.
start_proxy() {
    RUST_LOG=info "$bin" proxy --listen 127.0.0.1:18170 --admin-listen 127.0.0.1:19170 \
        --upstream http://127.0.0.1:18169 --rules "$dir/rules.yaml" --pods "$dir/pods.yaml" \
        --max-connections-per-source "$1" --max-connections "$1" \
        --pod-rate 0 --pod-identity-rate 0 --reload-interval 0 --log-format json "${@:2}" \
        >/dev/null 2>/dev/null &
    proxy_pid=$!
    pids+=("$proxy_pid")
    wait_http http://127.0.0.1:19170/healthz
}
stop_proxy() {
    kill "$proxy_pid"
    wait "$proxy_pid" 2>/dev/null || true
}

token="/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F&client_id=$kubelet"
denied="/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net"
versions=/metadata/versions
instance="/metadata/instance?api-version=2021-02-01"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -sr); open files: $(ulimit -n)"

# One wrk run; prints `req/s p50_us p99_us non2xx`. RATE > 0: at that rate in all.
run_wrk() { # URL RATE
    local script=()
    if [ "$2" != 0 ]; then
        awk -v ms="$(awk -v c="$conns" -v r="$2" 'BEGIN{printf "%.3f", 1000*c/r}')" \
            'BEGIN{print "function delay() return " ms " end"}' >"$dir/rate.lua"
        script=(-s "$dir/rate.lua")
    fi
    out=$(wrk -t1 -c"$conns" -d"$duration" --latency "${script[@]}" -H 'Metadata: true' "$1")
    us() {
        awk -v p="$1%" '$1==p{v=$2; if (v ~ /us$/) {sub(/us/,"",v)} else if (v ~ /ms$/) {sub(/ms/,"",v); v*=1000} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000000}; printf "%.0f", v}' <<<"$out"
    }
    non2xx=$(awk '/Non-2xx or 3xx responses:/{print $NF}' <<<"$out")
    echo "$(awk '/^Requests\/sec:/{printf "%.0f", $2}' <<<"$out") $(us 50) $(us 99) ${non2xx:-0}"
}

if [ "$what" = all ] || [ "$what" = latency ]; then
    start_proxy 4096
    echo
    echo "== wrk -t1 -c$conns -d$duration; allowed at $rate req/s in all, denied at the maximum rate"
    printf '%-28s %9s %8s %8s %8s\n' scenario req/s p50_us p99_us non-2xx
    read -r r p50 p99 non <<<"$(run_wrk "http://127.0.0.1:18170$denied" 0)"
    printf '%-28s %9s %8s %8s %8s\n' "denied (proxy, max rate)" "$r" "$p50" "$p99" "$non"
    added=()
    for pair in "token $token" "versions $versions" "instance $instance"; do
        read -r name path <<<"$pair"
        read -r dr dp50 dp99 dnon <<<"$(run_wrk "http://127.0.0.1:18169$path" "$rate")"
        printf '%-28s %9s %8s %8s %8s\n' "$name: emulator direct" "$dr" "$dp50" "$dp99" "$dnon"
        read -r pr pp50 pp99 pnon <<<"$(run_wrk "http://127.0.0.1:18170$path" "$rate")"
        printf '%-28s %9s %8s %8s %8s\n' "$name: via proxy" "$pr" "$pp50" "$pp99" "$pnon"
        added+=("$(printf '  %-9s p50 %+d µs, p99 %+d µs' "$name" $((pp50 - dp50)) $((pp99 - dp99)))")
    done
    echo
    echo "added by the proxy at $rate req/s over $conns connections:"
    printf '%s\n' "${added[@]}"
    stop_proxy
fi

if [ "$what" = all ] || [ "$what" = memory ]; then
    echo
    echo "== proxy memory, $mem_conns connections (VmRSS of the proxy process)"
    for mode in idle request denied; do
        start_proxy $((mem_conns + 64)) --header-timeout 120s
        path=$versions
        [ "$mode" = denied ] && path=$denied
        # Warm-up: 2,000 requests over 50 connections.
        wrk -t1 -c50 -d1s -H 'Metadata: true' "http://127.0.0.1:18170$versions" >/dev/null
        python3 - "$proxy_pid" "$mem_conns" "$mode" "$path" <<'EOF'
import socket, sys, time
pid, n, mode, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
def open_conns():
    text = socket.create_connection(("127.0.0.1", 19170)).makefile("rwb")
    text.write(b"GET /metrics HTTP/1.0\r\n\r\n"); text.flush()
    for line in text.read().decode().splitlines():
        if line.startswith("imdsguard_proxy_open_connections "):
            return int(float(line.split()[1]))
before = rss()
req = f"GET {path} HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n".encode()
socks = []
while len(socks) < n:
    # 200 at a time, each batch accepted before the next (a burst faster than the
    # accept loop overflows the listen queue).
    for _ in range(min(200, n - len(socks))):
        s = socket.create_connection(("127.0.0.1", 18170))
        if mode != "idle":
            s.sendall(req)
            s.recv(65536)
        socks.append(s)
    for _ in range(500):
        if open_conns() >= len(socks):
            break
        time.sleep(0.01)
peak = 0
for _ in range(30):
    peak = max(peak, rss())
    time.sleep(0.1)
held = open_conns()
print(f"{mode:8} RSS {before/1024:.1f} -> {peak/1024:.1f} MiB, +{(peak-before)*1024/n:.0f} B per connection ({held} open)")
for s in socks:
    s.close()
EOF
        stop_proxy
    done
fi
