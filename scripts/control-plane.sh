#!/usr/bin/env bash
# A real Kubernetes control plane for the tests: etcd and kube-apiserver on loopback.
#
#   scripts/control-plane.sh build          build (or find) the binaries, print their folder
#   scripts/control-plane.sh up [DIR]       start etcd + kube-apiserver, write DIR/kubeconfig,
#                                           print `export KUBECONFIG=...` (DIR: target/control-plane)
#   scripts/control-plane.sh down [DIR]     stop exactly what `up` started in DIR, remove its state
#   scripts/control-plane.sh env [DIR]      print the `export KUBECONFIG=...` line again
#
# The binaries come from Go modules (tests/control-plane/go.mod: k8s.io/kubernetes for
# kube-apiserver and kubectl, go.etcd.io/etcd/server/v3 for etcd), built once into
# ${XDG_CACHE_HOME:-~/.cache}/imdsguard/control-plane/<version>/ (IMDSGUARD_CONTROL_PLANE_CACHE
# overrides); nothing of their source
# is in this repository. The first build takes minutes (docs/benchmarks.md), later runs
# start in seconds.
#
# `up` generates a CA, a serving certificate for 127.0.0.1, an admin client certificate
# (group system:masters) and a service-account signing key; authorization is RBAC, so a
# token of a service account without a binding is refused as on a real cluster. There is
# no controller-manager, scheduler or kubelet: objects are stored and served, nothing runs.
#
# Environment: IMDSGUARD_CP_OWNER_PID=PID makes `up` start a watchdog that runs `down`
# when that process exits (the Rust test harness sets it to the test binary's pid).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
mod_dir="$root/tests/control-plane"
cache_root="${IMDSGUARD_CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/imdsguard/control-plane}"

die() { echo "control-plane: $*" >&2; exit 1; }

# The version folder: the versions of the modules the binaries come from.
version() {
    local k8s etcd
    k8s="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }' "$mod_dir/go.mod")"
    [ -n "$k8s" ] || k8s="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ { print $2; exit }' "$mod_dir/go.mod")"
    etcd="$(awk '$1 == "go.etcd.io/etcd/server/v3" && $2 ~ /^v/ { print $2; exit }' "$mod_dir/go.mod")"
    [ -n "$k8s" ] && [ -n "$etcd" ] || die "cannot read the module versions from $mod_dir/go.mod"
    echo "kubernetes-$k8s-etcd-$etcd"
}

bin_dir() { echo "$cache_root/$(version)"; }

build() {
    local dir
    dir="$(bin_dir)"
    if [ -x "$dir/kube-apiserver" ] && [ -x "$dir/etcd" ] && [ -x "$dir/kubectl" ]; then
        echo "$dir"
        return
    fi
    command -v go >/dev/null 2>&1 || die "go is not on the PATH: install Go 1.26+ to build the test control plane"
    echo "control-plane: building kube-apiserver, kubectl and etcd into $dir (first time only; minutes)" >&2
    local tmp start
    tmp="$(mktemp -d "$cache_root.build.XXXXXX" 2>/dev/null || { mkdir -p "$cache_root" && mktemp -d "$cache_root.build.XXXXXX"; })"
    start=$(date +%s)
    (cd "$mod_dir" && GOFLAGS=-mod=readonly CGO_ENABLED=0 go build -trimpath -ldflags=-s -o "$tmp/" tool) \
        || { rm -rf "$tmp"; die "go build failed in $mod_dir"; }
    # The etcd tool builds as `server` (its module path without the /v3 suffix).
    mv "$tmp/server" "$tmp/etcd"
    mkdir -p "$(dirname "$dir")"
    rm -rf "$dir"
    mv "$tmp" "$dir"
    echo "control-plane: built in $(( $(date +%s) - start )) s" >&2
    echo "$dir"
}

# N distinct free loopback ports: all sockets stay bound until every port is known, so
# no two are the same (a port bound, closed and asked for again may come back).
free_ports() {
    python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
' "$1"
}

state_dir() {
    local d="${1:-$root/target/control-plane}"
    mkdir -p "$d"
    (cd "$d" && pwd)
}

# A certificate signed by the CA: name, subject, extensions.
cert() {
    local d=$1 name=$2 subj=$3 ext=$4
    openssl req -new -newkey rsa:2048 -nodes -keyout "$d/pki/$name.key" -subj "$subj" \
        -out "$d/pki/$name.csr" 2>/dev/null
    printf '%s\n' "$ext" > "$d/pki/$name.ext"
    openssl x509 -req -in "$d/pki/$name.csr" -CA "$d/pki/ca.crt" -CAkey "$d/pki/ca.key" \
        -CAcreateserial -days 2 -extfile "$d/pki/$name.ext" -out "$d/pki/$name.crt" 2>/dev/null
}

pki() {
    local d=$1
    mkdir -p "$d/pki"
    openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$d/pki/ca.key" -days 2 \
        -subj "/CN=imdsguard-test-ca" -out "$d/pki/ca.crt" 2>/dev/null
    cert "$d" apiserver "/CN=kube-apiserver" \
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc
extendedKeyUsage=serverAuth"
    cert "$d" admin "/O=system:masters/CN=imdsguard-admin" "extendedKeyUsage=clientAuth"
    openssl genrsa -out "$d/pki/sa.key" 2048 2>/dev/null
    openssl rsa -in "$d/pki/sa.key" -pubout -out "$d/pki/sa.pub" 2>/dev/null
}

kubeconfig() {
    local d=$1 port=$2
    local b64='base64 -w0'
    cat > "$d/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: imdsguard-test
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority-data: $($b64 < "$d/pki/ca.crt")
users:
- name: imdsguard-admin
  user:
    client-certificate-data: $($b64 < "$d/pki/admin.crt")
    client-key-data: $($b64 < "$d/pki/admin.key")
contexts:
- name: imdsguard-test
  context:
    cluster: imdsguard-test
    user: imdsguard-admin
current-context: imdsguard-test
EOF
    chmod 600 "$d/kubeconfig"
}

# Is pid $1 still the process we started (its command line names $2)?
ours() {
    [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' < "/proc/$1/cmdline" | grep -q -- "$2"
}

down() {
    local d
    d="$(state_dir "${1:-}")"
    if [ -f "$d/pids" ]; then
        local pid name
        # The reverse of `up`: the watchdog, the apiserver, then etcd.
        tac "$d/pids" | while read -r pid name; do
            if ours "$pid" "$name"; then
                kill "$pid" 2>/dev/null || true
                for _ in $(seq 1 50); do ours "$pid" "$name" || break; sleep 0.1; done
                ours "$pid" "$name" && kill -9 "$pid" 2>/dev/null || true
            fi
        done
    fi
    rm -rf "$d/etcd-data" "$d/pids" "$d/pki" "$d/kubeconfig" "$d/ports"
    # A test's control plane (IMDSGUARD_CP_OWNER_PID at `up`) leaves nothing behind; a
    # developer's keeps its logs.
    if [ -f "$d/owned-by-test" ]; then
        rm -rf "$d"
    fi
    echo "control-plane: stopped ($d)" >&2
}

up() {
    local d bins
    d="$(state_dir "${1:-}")"
    if [ -f "$d/pids" ]; then
        local running=1 pid name
        while read -r pid name; do ours "$pid" "$name" || running=0; done < "$d/pids"
        if [ "$running" = 1 ] && [ -f "$d/kubeconfig" ]; then
            echo "control-plane: already running ($d)" >&2
            echo "export KUBECONFIG=$d/kubeconfig"
            return
        fi
        down "$d"
    fi
    local tool
    for tool in openssl curl python3; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool is not on the PATH (Debian: apt-get install $tool; scripts/test.sh installs it)"
    done
    bins="$(build)"
    pki "$d"
    local etcd_port peer_port api_port
    read -r etcd_port peer_port api_port < <(free_ports 3)
    echo "$etcd_port $peer_port $api_port" > "$d/ports"
    : > "$d/pids"

    "$bins/etcd" --name imdsguard-test --data-dir "$d/etcd-data" \
        --listen-client-urls "http://127.0.0.1:$etcd_port" \
        --advertise-client-urls "http://127.0.0.1:$etcd_port" \
        --listen-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-cluster "imdsguard-test=http://127.0.0.1:$peer_port" \
        --unsafe-no-fsync --quota-backend-bytes 8589934592 \
        > "$d/etcd.log" 2>&1 < /dev/null &
    echo "$! $bins/etcd" >> "$d/pids"

    "$bins/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$etcd_port" \
        --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
        --tls-cert-file "$d/pki/apiserver.crt" --tls-private-key-file "$d/pki/apiserver.key" \
        --client-ca-file "$d/pki/ca.crt" \
        --authorization-mode RBAC \
        --service-account-issuer https://kubernetes.default.svc.cluster.local \
        --service-account-key-file "$d/pki/sa.pub" \
        --service-account-signing-key-file "$d/pki/sa.key" \
        --service-cluster-ip-range 10.96.0.0/16 \
        --disable-admission-plugins ServiceAccount \
        --allow-privileged=true --endpoint-reconciler-type none \
        --cert-dir "$d/pki" \
        --max-requests-inflight 1000 --max-mutating-requests-inflight 500 \
        --profiling=false \
        > "$d/apiserver.log" 2>&1 < /dev/null &
    echo "$! $bins/kube-apiserver" >> "$d/pids"

    if [ -n "${IMDSGUARD_CP_OWNER_PID:-}" ]; then
        : > "$d/owned-by-test"
        # Stop everything when the owner (a test binary) exits, however it exits.
        (
            trap '' HUP INT
            while kill -0 "$IMDSGUARD_CP_OWNER_PID" 2>/dev/null; do sleep 1; done
            "$0" down "$d" >/dev/null 2>&1
        ) > /dev/null 2>&1 < /dev/null &
        echo "$! control-plane.sh" >> "$d/pids"
    fi

    kubeconfig "$d" "$api_port"
    local ready=0
    for _ in $(seq 1 600); do
        if curl -fsS --cacert "$d/pki/ca.crt" --cert "$d/pki/admin.crt" --key "$d/pki/admin.key" \
            "https://127.0.0.1:$api_port/readyz" >/dev/null 2>&1; then
            ready=1
            break
        fi
        local pid name
        while read -r pid name; do
            ours "$pid" "$name" || { tail -n 20 "$d"/*.log >&2; down "$d"; die "$name exited during start-up (logs above)"; }
        done < "$d/pids"
        sleep 0.2
    done
    [ "$ready" = 1 ] || { tail -n 20 "$d/apiserver.log" >&2; down "$d"; die "kube-apiserver not ready after 120 s"; }
    echo "control-plane: ready at https://127.0.0.1:$api_port ($d)" >&2
    echo "export KUBECONFIG=$d/kubeconfig"
}

env_line() {
    local d
    d="$(state_dir "${1:-}")"
    [ -f "$d/kubeconfig" ] || die "no control plane in $d: run \`scripts/control-plane.sh up\` first"
    echo "export KUBECONFIG=$d/kubeconfig"
}

case "${1:-}" in
    build) build ;;
    up) up "${2:-}" ;;
    down) down "${2:-}" ;;
    env) env_line "${2:-}" ;;
    *) die "usage: $0 build|up|down|env [DIR]" ;;
esac
