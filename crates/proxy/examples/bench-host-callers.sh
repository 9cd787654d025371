#!/usr/bin/env bash
# What identifying hostNetwork callers by cgroup costs the proxy (docs/benchmarks.md,
# "hostNetwork callers: the proxy's cgroup lookup (issue 11)"), with wrk, in network,
# mount and PID namespaces of its own (only `lo`; cgroup v2 mounted at /sys/fs/cgroup in
# the private mount namespace). One `imdsguard proxy --cgroup-root /sys/fs/cgroup`
# listens on 0.0.0.0:18170 in front of `imdsguard emulate` (127.0.0.1:18169); the same
# allowed request (GET /metadata/versions) comes from
#
#   (a) address: a pod the pods file names by its address (10.250.0.1, an address on
#       `lo`; wrk connects to 10.250.0.1:18170, so that is its source): no lookup;
#   (b) cgroup:  a hostNetwork pod (pods file: `hostNetwork: true` and its `uid`) whose
#       process (wrk, moved into the pod's container cgroup before it starts) connects
#       from 127.0.0.1, an address no pod has: every request does the NETLINK_SOCK_DIAG
#       lookup of its client socket and maps the cgroup id to the pod;
#   (c) denied:  the same from a pod cgroup no pod of the pods file owns (403,
#       rule unknown-pod-cgroup), at the maximum rate only: before denying, the proxy
#       asks for a fresh scan of the pod cgroups (a pod newer than its last scan), at
#       most once a second, and the request waits for it, so such a caller gets about
#       one answer a second per connection whatever the load;
#
# wrk runs in the same container cgroup for (a) and (b), so only the caller's address
# differs. Each scenario runs RUNS times, interleaved (a b c a b c ...), at the maximum
# rate (throughput and its latency) and at a fixed rate of ALLOWED_RATE req/s in all
# (latency without queueing), with the proxy's CPU time per request read from
# /proc/PID/stat and its lookup counter (imdsguard_proxy_host_caller_lookups_total)
# before and after each run. Two proxy configurations, each measured whole:
#
#   one-lookup:  --host-caller-destination 127.0.0.1:18170, the client's own
#                destination: the first candidate is the socket (as for a connection
#                the agent's host table DNATs from 169.254.169.254:80, whose first
#                candidate is 169.254.169.254:80): one netlink round trip a request;
#   default:     the default destination 169.254.169.254:80 first (a query to the
#                kernel, no traffic), which a direct connection to the proxy misses,
#                then the proxy's own address: two round trips a request.
#
#   crates/proxy/examples/bench-host-callers.sh
#
# Needs root (the cgroup hierarchy is the machine's). The cgroups are
# kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<UID>.slice/... with a
# UID unique to the run, made under a shared flock of /run/lock/imdsguard-cgroups.lock
# (imdsguard_node::cgroups::CgroupTree's lock) and removed at the end, also on failure
# (again from outside when the inner run was killed); the shared parents only when
# `flock -x -n` gets the lock (no other run uses them). Environment: RUNS (3),
# CONNECTIONS (50), DURATION (5s), ALLOWED_RATE (5000), IMDSGUARD (a prebuilt binary
# instead of building target/release/imdsguard). Installs wrk from Debian when missing.
set -euo pipefail
cd "$(dirname "$0")/../../.."

lockfile=/run/lock/imdsguard-cgroups.lock
[ -d /run/lock ] || lockfile=${TMPDIR:-/tmp}/imdsguard-cgroups.lock
qos=kubepods.slice/kubepods-burstable.slice

# The run's own cgroups, relative to the cgroup2 mount, deepest first.
own_cgroups() { # RUN_ID
    local pod=$qos/kubepods-burstable-pod${1//-/_}a.slice
    local unknown=$qos/kubepods-burstable-pod${1//-/_}b.slice
    echo "$pod/cri-containerd-bench.scope $pod $unknown/cri-containerd-bench.scope $unknown"
}

# Kills what is left in the run's cgroups under MOUNT, removes them, then the shared
# parents when no other run holds the lock. Prints what it could not remove.
remove_cgroups() { # MOUNT RUN_ID
    local mount=$1 d
    for d in $(own_cgroups "$2"); do
        [ -d "$mount/$d" ] || continue
        echo 1 >"$mount/$d/cgroup.kill" 2>/dev/null || true
        for _ in $(seq 300); do
            rmdir "$mount/$d" 2>/dev/null && break
            sleep 0.01
        done
        [ ! -d "$mount/$d" ] || echo "bench-host-callers.sh: could not remove the cgroup $d" >&2
    done
    (
        flock -x -n 8 || exit 0
        rmdir "$mount/$qos" "$mount/kubepods.slice" 2>/dev/null || true
    ) 8>>"$lockfile"
}

if [ -z "${IMDSGUARD_BENCH_NETNS:-}" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "bench-host-callers.sh: needs root (the cgroup hierarchy is the machine's)" >&2
        exit 1
    fi
    if ! command -v wrk >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
    fi
    [ -n "${IMDSGUARD:-}" ] || cargo build --release -q -p imdsguard
    # A pod UID unique to the run (the last hex digit tells the two pods apart).
    run_id=$(printf '%08x-%04x-4%03x-8%03x-%011x' $$ $((RANDOM)) $((RANDOM % 4096)) \
        $((RANDOM % 4096)) "$(date +%s%N | cut -c1-13)")
    dirty=$(git status --porcelain --untracked-files=no | wc -l)
    echo "commit: $(git rev-parse --short HEAD)$([ "$dirty" = 0 ] || echo " (+$dirty files changed in the tree)"); $(date -u '+%F %T') UTC"
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -sr)"
    free -g | sed 's/^/  /'
    echo "load before: $(cat /proc/loadavg)"
    dir=$(mktemp -d /tmp/imdsguard-bench-host-callers.XXXXXX)
    rc=0
    unshare --net --pid --fork --kill-child --mount --mount-proc --propagation private \
        env IMDSGUARD_BENCH_NETNS=1 IMDSGUARD_BENCH_RUN="$run_id" IMDSGUARD_BENCH_DIR="$dir" \
        bash "$0" "$@" || rc=$?
    rm -rf "$dir"
    # Every process of the inner run has ended with its PID namespace; what it could not
    # remove (killed before its own clean-up) is removed here, in a mount namespace of
    # its own again.
    export -f own_cgroups remove_cgroups
    unshare --mount --propagation private env qos="$qos" lockfile="$lockfile" bash -c '
        mount -t cgroup2 none /sys/fs/cgroup && remove_cgroups /sys/fs/cgroup "$1"' _ "$run_id" || rc=1
    echo "load after:  $(cat /proc/loadavg)"
    exit $rc
fi

# Inside the namespaces: only lo, up; a second address on it for the pod known by
# address.
ip link set lo up
if [ "$(grep -c : /proc/net/dev)" -ne 1 ]; then
    echo "bench-host-callers.sh: the namespace holds more than lo; refusing" >&2
    exit 1
fi
ip addr add 10.250.0.1/32 dev lo
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cg=/sys/fs/cgroup
mount -t cgroup2 none "$cg"

bin=${IMDSGUARD:-target/release/imdsguard}
runs=${RUNS:-3}
conns=${CONNECTIONS:-50}
duration=${DURATION:-5s}
rate=${ALLOWED_RATE:-5000}
run_id=$IMDSGUARD_BENCH_RUN
read -r pod_ctr _ unknown_ctr _ <<<"$(own_cgroups "$run_id")"
pod_uid=${run_id}a
unknown_uid=${run_id}b

dir=$IMDSGUARD_BENCH_DIR
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    remove_cgroups "$cg" "$run_id"
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The cgroups, made under the shared lock (a closing run removes shared parents only
# under the exclusive one, so none vanishes between two mkdirs). Names are the run's.
(
    flock -s 8
    mkdir -p "$cg/$qos"
    for d in "$pod_ctr" "$unknown_ctr"; do
        mkdir "$cg/${d%/*}" "$cg/$d"
    done
) 8>>"$lockfile"
for d in "$pod_ctr" "$unknown_ctr"; do
    [ -d "$cg/$d" ] || { echo "bench-host-callers.sh: could not make the cgroup $d" >&2; exit 1; }
done

wait_http() {
    for _ in $(seq 200); do
        curl -s -o /dev/null "$1" && return 0
        sleep 0.05
    done
    echo "bench-host-callers.sh: nothing answers at $1" >&2
    exit 1
}

RUST_LOG=warn "$bin" emulate --listen 127.0.0.1:18169 --no-throttle --seed 1 >/dev/null 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:18169/metadata/versions
cat >"$dir/rules.yaml" <<EOF
rules:
  - name: bench-versions
    subjects: [{namespace: bench}]
    paths: [/metadata/versions]
EOF
cat >"$dir/pods.yaml" <<EOF
- {ip: 10.250.0.1, namespace: bench, name: by-address}
- {hostNetwork: true, uid: $pod_uid, namespace: bench, name: by-cgroup}
EOF

start_proxy() { # EXTRA...
    RUST_LOG=info "$bin" proxy --listen 0.0.0.0:18170 --admin-listen 127.0.0.1:19170 \
        --upstream http://127.0.0.1:18169 --rules "$dir/rules.yaml" --pods "$dir/pods.yaml" \
        --cgroup-root "$cg" --max-connections-per-source 4096 --max-connections 4096 \
        --pod-rate 0 --pod-identity-rate 0 --reload-interval 0 --log-format json "$@" \
        >/dev/null 2>"$dir/proxy.err" &
    proxy_pid=$!
    pids+=("$proxy_pid")
    wait_http http://127.0.0.1:19170/healthz
}
stop_proxy() {
    kill "$proxy_pid"
    wait "$proxy_pid" 2>/dev/null || true
}
# The proxy's CPU time (user + system) in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$proxy_pid/stat"; }
lookups() { # RESULT
    curl -s http://127.0.0.1:19170/metrics |
        awk -v r="$1" '$1 == "imdsguard_proxy_host_caller_lookups_total{result=\"" r "\"}" {printf "%d", $2; f=1} END {if (!f) print 0}'
}
# A wrk run in the cgroup CGROUP (its shell moves itself there, then execs wrk);
# prints `req/s p50_us p99_us non2xx proxy_cpu_us_per_request lookups_per_request`.
run_wrk() { # CGROUP URL RATE RESULT
    local script=() out t0 l0 t1 l1
    if [ "$3" != 0 ]; then
        awk -v ms="$(awk -v c="$conns" -v r="$3" 'BEGIN{printf "%.3f", 1000*c/r}')" \
            'BEGIN{print "function delay() return " ms " end"}' >"$dir/rate.lua"
        script=(-s "$dir/rate.lua")
    fi
    t0=$(cpu_ticks)
    l0=$(lookups "$4")
    out=$(sh -c 'echo 0 > "$1/cgroup.procs" || exit 125; shift; exec "$@"' _ "$cg/$1" \
        wrk -t1 -c"$conns" -d"$duration" --latency "${script[@]}" -H 'Metadata: true' "$2")
    t1=$(cpu_ticks)
    l1=$(lookups "$4")
    us() {
        awk -v p="$1%" '$1==p{v=$2; if (v ~ /us$/) {sub(/us/,"",v)} else if (v ~ /ms$/) {sub(/ms/,"",v); v*=1000} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000000}; printf "%.0f", v}' <<<"$out"
    }
    local total non2xx
    total=$(awk '/requests in/{print $1}' <<<"$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/{print $NF}' <<<"$out")
    echo "$(awk '/^Requests\/sec:/{printf "%.0f", $2}' <<<"$out") $(us 50) $(us 99) ${non2xx:-0}" \
        "$(awk -v t="$((t1 - t0))" -v n="$total" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.1f", t*1e6/hz/n}')" \
        "$(awk -v l="$((l1 - l0))" -v n="$total" 'BEGIN{printf "%.2f", l/n}')"
}

versions=/metadata/versions
by_address=http://10.250.0.1:18170$versions
by_cgroup=http://127.0.0.1:18170$versions

# Medians of column COL of FILE's lines whose first field is SCENARIO.
median() { # FILE SCENARIO COL
    awk -v s="$2" -v c="$3" '$1==s{print $c}' "$1" | sort -n |
        awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else printf "%.1f\n", (v[NR/2]+v[NR/2+1])/2}'
}

measure() { # CONFIG-NAME PROXY-ARGS...
    local name=$1
    shift
    start_proxy "$@"
    # The two pods are what the proxy sees (200 by cgroup, 403 unknown-pod-cgroup).
    local got
    got=$(sh -c 'echo 0 > "$1/cgroup.procs" || exit 125; exec curl -s -o /dev/null -w "%{http_code}" -H Metadata:true "$2"' _ "$cg/$pod_ctr" "$by_cgroup")
    [ "$got" = 200 ] || { echo "bench-host-callers.sh: the hostNetwork pod got $got"; cat "$dir/proxy.err"; exit 1; } >&2
    got=$(sh -c 'echo 0 > "$1/cgroup.procs" || exit 125; exec curl -s -H Metadata:true "$2"' _ "$cg/$unknown_ctr" "$by_cgroup")
    grep -q unknown-pod-cgroup <<<"$got" || { echo "bench-host-callers.sh: the unknown pod cgroup got $got" >&2; exit 1; }
    # Warm-up.
    run_wrk "$pod_ctr" "$by_cgroup" 0 pod >/dev/null
    run_wrk "$pod_ctr" "$by_address" 0 pod >/dev/null
    for mode in max "$rate"; do
        local f=$dir/$name-$mode.txt
        : >"$f"
        echo
        if [ "$mode" = max ]; then
            echo "== $name: wrk -t1 -c$conns -d$duration at the maximum rate, $runs runs interleaved"
        else
            echo "== $name: wrk -t1 -c$conns -d$duration at $rate req/s in all, $runs runs interleaved"
        fi
        printf '%-4s %-22s %9s %8s %8s %8s %11s %9s\n' run scenario req/s p50_us p99_us non-2xx proxy_cpu_us lookups/r
        for i in $(seq "$runs"); do
            local r=$mode
            [ "$mode" = max ] && r=0
            local scenarios=(address cgroup)
            [ "$mode" = max ] && scenarios+=(denied)
            for s in "${scenarios[@]}"; do
                local line
                case $s in
                address) line=$(run_wrk "$pod_ctr" "$by_address" "$r" pod) ;;
                cgroup) line=$(run_wrk "$pod_ctr" "$by_cgroup" "$r" pod) ;;
                denied) line=$(run_wrk "$unknown_ctr" "$by_cgroup" "$r" unknown-pod-cgroup) ;;
                esac
                echo "$s $line" >>"$f"
                # shellcheck disable=SC2086
                printf '%-4s %-22s %9s %8s %8s %8s %11s %9s\n' "$i" "$s" $line
            done
        done
        local ra rb pa pb qa qb ca cb
        ra=$(median "$f" address 2) rb=$(median "$f" cgroup 2)
        pa=$(median "$f" address 3) pb=$(median "$f" cgroup 3)
        qa=$(median "$f" address 4) qb=$(median "$f" cgroup 4)
        ca=$(median "$f" address 6) cb=$(median "$f" cgroup 6)
        echo "medians, (b) by cgroup / (a) by address: req/s $(awk -v a="$ra" -v b="$rb" 'BEGIN{printf "%.3f", b/a}')," \
            "p50 $(awk -v a="$pa" -v b="$pb" 'BEGIN{printf "%.3f", b/a}'), p99 $(awk -v a="$qa" -v b="$qb" 'BEGIN{printf "%.3f", b/a}');" \
            "proxy CPU per request $ca -> $cb µs ($(awk -v a="$ca" -v b="$cb" 'BEGIN{printf "%+.1f", b-a}') µs)"
    done
    stop_proxy
}

measure one-lookup --host-caller-destination 127.0.0.1:18170
measure default
