#!/usr/bin/env bash
# Rewrites deploy/crds/ from the Rust types (crates/kube/src/crd.rs); the test
# crd::tests::the_committed_crd_is_what_the_types_generate fails until the result is committed.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run -q -p imdsguard -- crd > deploy/crds/metadataaccesspolicies.imdsguard.io.yaml
echo "wrote deploy/crds/metadataaccesspolicies.imdsguard.io.yaml"
