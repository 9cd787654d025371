#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need, checks
# formatting and lints, runs every test, then the external NetworkPolicy conformance
# check against ../shared/corpus/netpol-analyzer (the plain NetworkPolicy cases, then the
# AdminNetworkPolicy/BaselineAdminNetworkPolicy ones).
#
# Every test runs, the ignored ones too: a test marked #[ignore = "needs netns"] (or
# "needs root", "needs ../shared", "needs ip") needs what plain `cargo test` cannot count
# on, and fails, saying what is missing, when it cannot run. So this script wants root
# (or unprivileged user namespaces) and the shared corpus beside the checkout, as in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

# python3: the conformance checker and the probe's fake IMDS; ip and unshare: the
# network namespaces that tests running probe/emulator are confined to.
need_apt=()
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v unshare >/dev/null 2>&1 || need_apt+=(util-linux)
# nft and conntrack: the node enforcement tests (inside their own namespaces).
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
command -v conntrack >/dev/null 2>&1 || need_apt+=(conntrack)
# openssl and curl: the test control plane's certificates and its /readyz wait.
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
    log "installing ${need_apt[*]}"
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
    else
        echo "missing ${need_apt[*]}: install them (needs root)" >&2
        exit 1
    fi
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is missing: install Rust stable (rustup)" >&2
    exit 1
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy >/dev/null 2>&1 || true

# A clean clone gains nothing from incremental artifacts (GBs under target/debug), and
# CI's disk is limited: a run once failed linking with "No space left on device".
if [ "${CI:-}" = true ]; then
    export CARGO_INCREMENTAL=0
fi
disk() { df -h . | awk 'NR==2 {print "disk: " $4 " free of " $2 " (" $5 " used)"}'; }
disk

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "release build"
cargo build --release --locked -p imdsguard

corpus=../shared/corpus/netpol-analyzer/cases
log "netpol-analyzer conformance (external oracle)"
if [ -d "$corpus" ] && [ -f ../shared/tools/netpol_conformance.py ]; then
    # Each run exits non-zero on any failed case (and with pipefail, so does the line).
    python3 ../shared/tools/netpol_conformance.py "$corpus" --bin target/release/imdsguard | tail -n 3
    log "netpol-analyzer conformance, AdminNetworkPolicy / BaselineAdminNetworkPolicy cases"
    python3 ../shared/tools/netpol_conformance.py "$corpus" --anp --bin target/release/imdsguard | tail -n 3
else
    echo "$corpus is missing: the shared corpus sits beside the checkout (../shared), as in CI" >&2
    exit 1
fi

# cargo-nextest: each test in a process of its own, and one closing summary line.
if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest"
    cargo install --locked cargo-nextest ||
        echo "cargo-nextest did not install: running the tests with cargo test" >&2
fi

# The published schemas of the kinds `policy generate` writes, through the Go module
# proxy, for the ignored test `schemas` (crates/cli/tests/policy_generate.rs).
log "schemas for policy generate"
bash scripts/schemas.sh

# A real Kubernetes control plane (etcd + kube-apiserver from Go modules, on loopback)
# for every Kubernetes-facing test: built once into ~/.cache/imdsguard/control-plane
# (minutes the first time), started here for the whole run and stopped on exit; the tests
# find it through IMDSGUARD_TEST_KUBECONFIG and each uses namespaces of its own.
log "Kubernetes control plane for the tests (scripts/control-plane.sh)"
bash scripts/control-plane.sh build >/dev/null
# np-guard's netpol-analyzer (Go module, cached in ~/.cache/imdsguard): the independent
# check of the policies `imdsguard lab --kubernetes` reads back (crates/cli/tests/lab_kubernetes.rs).
bash scripts/netpol-analyzer.sh build >/dev/null
cp_dir="$PWD/target/control-plane/suite"
trap 'bash scripts/control-plane.sh down "$cp_dir" >/dev/null 2>&1 || true' EXIT
IMDSGUARD_CP_OWNER_PID=$$ bash scripts/control-plane.sh up "$cp_dir" >/dev/null
export IMDSGUARD_TEST_KUBECONFIG="$cp_dir/kubeconfig"

# helm from its Go module (tests/helm/go.mod), built once into ~/.cache/imdsguard/helm-VERSION/;
# the chart lints and renders (tests/deploy_chart.rs checks the render and applies it).
log "helm lint and helm template of charts/imdsguard (scripts/helm.sh)"
bash scripts/helm.sh build >/dev/null
bash scripts/helm.sh lint
bash scripts/helm.sh template >/dev/null
bash scripts/helm.sh render - | diff -u deploy/imdsguard.yaml - || { echo "deploy/imdsguard.yaml is stale: run scripts/helm.sh render" >&2; exit 1; }

disk
log "tests (ignored ones too: they need netns, root, ../shared or the control plane, and fail without)"
if cargo nextest --version >/dev/null 2>&1; then
    cargo test --workspace --locked --doc --quiet
    cargo nextest run --workspace --locked --no-fail-fast --run-ignored all
else
    cargo test --workspace --locked --no-fail-fast -- --include-ignored
fi

# Fuzzing (docs/fuzzing.md): each cargo-fuzz target of fuzz/ for 20 s from the
# committed seeds; installs cargo-fuzz when missing. Longer runs: scripts/fuzz.sh.
disk
log "fuzz targets (20 s each)"
bash scripts/fuzz.sh 20
disk
