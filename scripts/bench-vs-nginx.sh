#!/usr/bin/env bash
# The filtering proxy against the reference proxy, nginx, side by side in one run
# (docs/benchmarks.md, "Against nginx"): issue 7's target is >= 0.7x nginx on both
#
#   allowed: `imdsguard proxy` forwarding an allowed request to the emulator
#            vs nginx `proxy_pass` to the same emulator over a keep-alive upstream;
#   denied:  `imdsguard proxy` denying a request (canonicalise, validate, decide, 403)
#            vs nginx `return 403`.
#
# Both log every request to a file: nginx its access_log (combined format), the proxy
# its JSON decision log (standard error to a file). `wrk -t1 -c50 -d10s --latency`
# drives each, ROUNDS times, interleaved (nginx, proxy, nginx, proxy...) so that both
# see the same machine; the script prints req/s, p50 and p99 of every run and the
# ratios proxy/nginx per round.
#
#   scripts/bench-vs-nginx.sh                 # 3 rounds, about 2.5 min after the build
#   ROUNDS=5 NGINX_WORKERS=1 scripts/bench-vs-nginx.sh
#
# Environment: ROUNDS (3), DURATION (10s), CONNECTIONS (50), NGINX_WORKERS (auto: one
# worker process per core, as the proxy runs one runtime thread per core),
# NGINX_LOG_BUFFER (empty: nginx writes each access-log line as it happens; e.g. 64k:
# `access_log ... buffer=64k flush=1s`), IMDSGUARD (a prebuilt binary; default: build
# target/release/imdsguard), PERF (set: `perf record -g` the proxy during its first
# allowed run, or the denied one with PERF_PATH=denied; the report goes to the temp
# dir, whose path is printed and kept), COMPARE (another imdsguard binary, e.g. a build
# of the previous commit: its proxy runs beside the first on port 18171 and is
# measured in the same rounds, as `proxyB`).
#
# Installs nginx and wrk from Debian when missing (needs root for apt-get). Everything
# runs in a network namespace of its own that holds only `lo` (and a PID namespace, so
# every process started here ends with the script): all traffic stays on 127.0.0.1,
# the emulator never listens on a metadata address, nothing leaves the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${IMDSGUARD_BENCH_NETNS:-}" ]; then
    need=()
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
    command -v wrk >/dev/null || need+=(wrk)
    if [ ${#need[@]} -gt 0 ]; then
        echo "installing ${need[*]} (apt-get)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
        # The package starts a system nginx on port 80 of the host; this benchmark
        # runs its own, in its namespace.
        systemctl stop nginx 2>/dev/null || true
    fi
    if [ -z "${IMDSGUARD:-}" ]; then
        cargo build --release -q -p imdsguard
        export IMDSGUARD=$PWD/target/release/imdsguard
    fi
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
    echo "bench-vs-nginx.sh: the namespace holds more than lo; refusing" >&2
    exit 1
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

rounds=${ROUNDS:-3}
duration=${DURATION:-10s}
conns=${CONNECTIONS:-50}
workers=${NGINX_WORKERS:-auto}
log_buffer=${NGINX_LOG_BUFFER:-}
bin=$IMDSGUARD
nginx=$(command -v nginx || echo /usr/sbin/nginx)

dir=$(mktemp -d /tmp/imdsguard-bench-nginx.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "${PERF:-}" ]; then
        echo "kept $dir (perf report)"
    else
        rm -rf "$dir"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

emu_port=18169
nginx_port=18080
proxy_port=18170
allowed=/metadata/versions
denied="/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F"

# Waits until `curl URL` answers (any status), 10 s at most.
wait_http() {
    for _ in $(seq 200); do
        curl -s -o /dev/null "$1" && return 0
        sleep 0.05
    done
    echo "bench-vs-nginx.sh: nothing answers at $1" >&2
    exit 1
}

# The upstream: the emulator, unthrottled, quiet.
RUST_LOG=warn "$bin" emulate --listen 127.0.0.1:$emu_port --no-throttle --seed 1 \
    >"$dir/emulator.out" 2>"$dir/emulator.err" &
pids+=($!)
wait_http "http://127.0.0.1:$emu_port/metadata/versions"

# nginx: keep-alive upstream, proxy_pass for the allowed path, return 403 for the rest.
mkdir -p "$dir/nginx"
access_log="access_log $dir/nginx-access.log combined"
[ -n "$log_buffer" ] && access_log+=" buffer=$log_buffer flush=1s"
cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process on;
user root;
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log warn;
events { worker_connections 4096; }
http {
    $access_log;
    client_body_temp_path $dir/nginx/body;
    proxy_temp_path $dir/nginx/proxy;
    fastcgi_temp_path $dir/nginx/fastcgi;
    uwsgi_temp_path $dir/nginx/uwsgi;
    scgi_temp_path $dir/nginx/scgi;
    keepalive_requests 1000000;
    upstream emulator {
        server 127.0.0.1:$emu_port;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$nginx_port;
        location = $allowed {
            proxy_pass http://emulator;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
        location / {
            return 403 '{"error":"denied"}';
        }
    }
}
EOF
"$nginx" -c "$dir/nginx.conf" -e "$dir/nginx-error.log" &
pids+=($!)
wait_http "http://127.0.0.1:$nginx_port/"

# imdsguard proxy: wrk's address (127.0.0.1) is a pod allowed the versions path only.
cat >"$dir/rules.yaml" <<EOF
rules:
  - name: bench-allowed
    subjects: [{namespace: bench, serviceAccount: allowed}]
    paths: [$allowed]
EOF
echo "[{ip: 127.0.0.1, namespace: bench, name: client-0, serviceAccount: allowed}]" >"$dir/pods.yaml"
RUST_LOG=${PROXY_RUST_LOG:-info} "$bin" proxy --listen 127.0.0.1:$proxy_port --admin-listen 127.0.0.1:19170 \
    --upstream "http://127.0.0.1:$emu_port" --rules "$dir/rules.yaml" --pods "$dir/pods.yaml" \
    --max-connections 4096 --max-connections-per-source 4096 --pod-rate 0 --pod-identity-rate 0 \
    --reload-interval 0 --log-format json \
    >"$dir/proxy.out" 2>"$dir/proxy-decisions.log" &
proxy_pid=$!
pids+=($proxy_pid)
wait_http "http://127.0.0.1:19170/healthz"
if [ -n "${COMPARE:-}" ]; then
    RUST_LOG=${PROXY_RUST_LOG:-info} "$COMPARE" proxy --listen 127.0.0.1:18171 --admin-listen 127.0.0.1:19171 \
        --upstream "http://127.0.0.1:$emu_port" --rules "$dir/rules.yaml" --pods "$dir/pods.yaml" \
        --max-connections 4096 --max-connections-per-source 4096 --pod-rate 0 --pod-identity-rate 0 \
        --reload-interval 0 --log-format json \
        >"$dir/proxyB.out" 2>"$dir/proxyB-decisions.log" &
    pids+=($!)
    wait_http "http://127.0.0.1:19171/healthz"
fi

# Both answer as they should before anything is measured.
check() { # NAME URL WANT
    got=$(curl -s -o /dev/null -w '%{http_code}' -H 'Metadata: true' "$2")
    if [ "$got" != "$3" ]; then
        echo "bench-vs-nginx.sh: $1 answered $got, not $3" >&2
        exit 1
    fi
}
check "nginx allowed" "http://127.0.0.1:$nginx_port$allowed" 200
check "proxy allowed" "http://127.0.0.1:$proxy_port$allowed" 200
check "nginx denied" "http://127.0.0.1:$nginx_port$denied" 403
check "proxy denied" "http://127.0.0.1:$proxy_port$denied" 403

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -sr)"
echo "nginx $("$nginx" -v 2>&1 | sed 's/.*nginx\///'), worker_processes $workers, access_log ${log_buffer:+buffer=$log_buffer }to a file; proxy: 2 runtime threads, JSON decision log to a file"
echo "wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}') -t1 -c$conns -d$duration --latency; $rounds rounds"
echo

# One wrk run: prints `req/s p50_ms p99_ms non2xx` on one line.
run_wrk() { # URL
    out=$(wrk -t1 -c"$conns" -d"$duration" --latency -H 'Metadata: true' "$1")
    rps=$(awk '/^Requests\/sec:/{print $2}' <<<"$out")
    ms() { # PERCENT: the latency in ms
        awk -v p="$1%" '$1==p{v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; printf "%.2f", v}' <<<"$out"
    }
    non2xx=$(awk '/Non-2xx or 3xx responses:/{print $NF}' <<<"$out")
    errors=$(awk '/Socket errors:/{print}' <<<"$out")
    [ -n "$errors" ] && echo "  ($1: $errors)" >&2
    echo "$rps $(ms 50) $(ms 99) ${non2xx:-0}"
}

printf '%-6s %-8s %-6s %10s %9s %9s %10s\n' round path server req/s p50_ms p99_ms non-2xx
ratios_allowed=()
ratios_denied=()
ratiosB_allowed=()
ratiosB_denied=()
for r in $(seq "$rounds"); do
    for what in allowed denied; do
        path=$allowed
        [ "$what" = denied ] && path=$denied
        read -r n_rps n_p50 n_p99 n_non <<<"$(run_wrk "http://127.0.0.1:$nginx_port$path")"
        printf '%-6s %-8s %-6s %10.0f %9s %9s %10s\n' "$r" "$what" nginx "$n_rps" "$n_p50" "$n_p99" "$n_non"
        if [ -n "${PERF:-}" ] && [ "$r" = 1 ] && [ "$what" = "${PERF_PATH:-allowed}" ]; then
            perf record -q -g -o "$dir/perf.data" -p "$proxy_pid" -- sleep 5 >/dev/null 2>&1 &
            perf_pid=$!
        fi
        read -r p_rps p_p50 p_p99 p_non <<<"$(run_wrk "http://127.0.0.1:$proxy_port$path")"
        printf '%-6s %-8s %-6s %10.0f %9s %9s %10s\n' "$r" "$what" proxy "$p_rps" "$p_p50" "$p_p99" "$p_non"
        if [ -n "${perf_pid:-}" ]; then
            wait "$perf_pid" || true
            perf report -i "$dir/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null \
                | grep -v '^$' | head -80 >"$dir/perf-report.txt" || true
            perf_pid=
        fi
        ratio=$(awk -v a="$p_rps" -v b="$n_rps" 'BEGIN{printf "%.2f", a/b}')
        if [ "$what" = allowed ]; then ratios_allowed+=("$ratio"); else ratios_denied+=("$ratio"); fi
        if [ -n "${COMPARE:-}" ]; then
            read -r b_rps b_p50 b_p99 b_non <<<"$(run_wrk "http://127.0.0.1:18171$path")"
            printf '%-6s %-8s %-6s %10.0f %9s %9s %10s\n' "$r" "$what" proxyB "$b_rps" "$b_p50" "$b_p99" "$b_non"
            ratio=$(awk -v a="$b_rps" -v b="$n_rps" 'BEGIN{printf "%.2f", a/b}')
            if [ "$what" = allowed ]; then ratiosB_allowed+=("$ratio"); else ratiosB_denied+=("$ratio"); fi
        fi
    done
done

echo
echo "ratio proxy/nginx (req/s), per round:"
echo "  allowed (proxy_pass, keep-alive upstream): ${ratios_allowed[*]}"
echo "  denied  (return 403):                      ${ratios_denied[*]}"
median() { tr ' ' '\n' <<<"$*" | sort -n | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo "  median: allowed $(median "${ratios_allowed[@]}"), denied $(median "${ratios_denied[@]}")  (target >= 0.7)"
if [ -n "${COMPARE:-}" ]; then
    echo "proxyB ($COMPARE) / nginx:"
    echo "  allowed: ${ratiosB_allowed[*]}; denied: ${ratiosB_denied[*]}"
    echo "  median: allowed $(median "${ratiosB_allowed[@]}"), denied $(median "${ratiosB_denied[@]}")"
fi

# Every request was logged: the decision log has a line for each (less what the
# writer had to drop, counted in the metrics).
decisions=$(grep -c '"imdsguard::decision"' "$dir/proxy-decisions.log" || true)
accesses=$(wc -l <"$dir/nginx-access.log")
dropped=$(curl -s http://127.0.0.1:19170/metrics | awk '/^imdsguard_log_dropped_lines_total/{print $2}')
echo "log lines: proxy $decisions decision records (dropped: ${dropped:-n/a}), nginx $accesses access-log lines"
if [ -n "${PERF:-}" ]; then
    echo
    echo "perf (proxy, first ${PERF_PATH:-allowed} run): $dir/perf-report.txt"
    head -60 "$dir/perf-report.txt"
fi
