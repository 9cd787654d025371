#!/usr/bin/env bash
# np-guard's netpol-analyzer, an independent NetworkPolicy connectivity analyzer, for the
# tests that check imdsguard's generated policies with something imdsguard did not write.
#
#   scripts/netpol-analyzer.sh build     build (or find) the `k8snetpolicy` binary, print its path
#   scripts/netpol-analyzer.sh path      print the path, or fail saying how to build it
#
# The binary comes from the Go module github.com/np-guard/netpol-analyzer (a `tool` of
# tests/analyzers/go.mod, package cmd/netpolicy; go.sum pins every module's hash), built
# once into ${XDG_CACHE_HOME:-~/.cache}/imdsguard/netpol-analyzer-<version>/
# (IMDSGUARD_ANALYZER_CACHE overrides the parent folder). Nothing of its source is in this
# repository. The first build takes a few minutes; later runs find the binary.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
mod_dir="$root/tests/analyzers"
module="github.com/np-guard/netpol-analyzer"
cache_root="${IMDSGUARD_ANALYZER_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/imdsguard}"

die() { echo "netpol-analyzer: $*" >&2; exit 1; }

version() {
    local v
    v="$(awk -v m="$module" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$mod_dir/go.mod")"
    [ -n "$v" ] || die "cannot read the version of $module from $mod_dir/go.mod"
    echo "$v"
}

bin_path() { echo "$cache_root/netpol-analyzer-$(version)/k8snetpolicy"; }

build() {
    local bin dir tmp start
    bin="$(bin_path)"
    if [ -x "$bin" ]; then
        echo "$bin"
        return
    fi
    dir="$(dirname "$bin")"
    command -v go >/dev/null 2>&1 || die "go is not on the PATH: install Go 1.26+ to build netpol-analyzer"
    echo "netpol-analyzer: building $module $(version) into $dir (first time only; minutes)" >&2
    mkdir -p "$cache_root"
    tmp="$(mktemp -d "$dir.build.XXXXXX")"
    start=$(date +%s)
    # go.sum holds every hash: no checksum-database lookup (it has no entry for np-guard).
    (cd "$mod_dir" && GOFLAGS=-mod=readonly GONOSUMDB=github.com/np-guard CGO_ENABLED=0 \
        go build -trimpath -ldflags=-s -o "$tmp/" tool) \
        || { rm -rf "$tmp"; die "go build failed in $mod_dir"; }
    # The package is cmd/netpolicy; the program calls itself k8snetpolicy.
    mv "$tmp/netpolicy" "$tmp/k8snetpolicy"
    rm -rf "$dir"
    mv "$tmp" "$dir"
    echo "netpol-analyzer: built in $(( $(date +%s) - start )) s" >&2
    echo "$bin"
}

path() {
    local bin
    bin="$(bin_path)"
    [ -x "$bin" ] || die "$bin is missing: build it with \`scripts/netpol-analyzer.sh build\` (needs Go)"
    echo "$bin"
}

case "${1:-}" in
    build) build ;;
    path) path ;;
    *) die "usage: $0 build|path" ;;
esac
