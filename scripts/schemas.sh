#!/usr/bin/env bash
# Downloads the published schemas of the kinds `imdsguard policy generate` writes and
# prints the folder that holds them (the only line on standard output):
#
#   networkpolicy.json  Kubernetes OpenAPI v3, networking.k8s.io/v1 (k8s.io/kubernetes)
#   cnp.yaml            ClusterNetworkPolicy CRD (sigs.k8s.io/network-policy-api v0.3.0)
#   anp.yaml            AdminNetworkPolicy CRD (sigs.k8s.io/network-policy-api v0.1.1)
#   anp-experimental.yaml  AdminNetworkPolicy CRD, experimental channel (v0.1.5): the
#                       first with the `networks` egress peer `--engine anp` writes
#   calico-gnp.yaml     Calico GlobalNetworkPolicy CRD (github.com/projectcalico/calico)
#   ccnp.yaml           CiliumClusterwideNetworkPolicy CRD (github.com/cilium/cilium)
#
# The modules come through the Go module proxy (`go mod download`), at the versions of
# tests/schemas/go.mod, checked against tests/schemas/go.sum; the files are cached in
# ${XDG_CACHE_HOME:-~/.cache}/imdsguard/schemas (IMDSGUARD_SCHEMAS overrides) and the
# download is skipped while the cache matches those versions. Used by the ignored test
# `schemas` of crates/cli/tests/policy_generate.rs and run by scripts/test.sh.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mods="$root/tests/schemas"
cache="${IMDSGUARD_SCHEMAS:-${XDG_CACHE_HOME:-$HOME/.cache}/imdsguard/schemas}"

if ! command -v go >/dev/null 2>&1; then
    echo "scripts/schemas.sh: go is missing: install Go (the schemas come through the Go module proxy)" >&2
    exit 1
fi

# module@version of every require line of go.mod, plus the AdminNetworkPolicy releases.
mapfile -t wanted < <(
    sed -n 's/^[[:space:]]*\([a-z0-9.\/-]*\.[a-z]*\/[^ ]*\) \(v[^ ]*\)$/\1@\2/p' "$mods/go.mod"
    echo "sigs.k8s.io/network-policy-api@v0.1.1"
    echo "sigs.k8s.io/network-policy-api@v0.1.5"
)
stamp="$(printf '%s\n' "${wanted[@]}" | sort)"
files=(networkpolicy.json cnp.yaml anp.yaml anp-experimental.yaml calico-gnp.yaml ccnp.yaml)
fresh=1
[ -f "$cache/VERSIONS" ] && [ "$(cat "$cache/VERSIONS")" = "$stamp" ] || fresh=0
for f in "${files[@]}"; do [ -s "$cache/$f" ] || fresh=0; done
if [ "$fresh" = 1 ]; then
    echo "$cache"
    exit 0
fi

# The module's folder after `go mod download`, checked against go.sum.
dir_of() {
    local out
    out="$(cd "$mods" && GOFLAGS=-mod=mod go mod download -json "$1")" || {
        echo "scripts/schemas.sh: go mod download $1 failed:" >&2
        echo "$out" >&2
        exit 1
    }
    if grep -q '"Error"' <<<"$out"; then
        echo "scripts/schemas.sh: go mod download $1: $out" >&2
        exit 1
    fi
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<<"$out"
}

copy() { # module@version, path inside it, name in the cache
    local dir
    dir="$(dir_of "$1")"
    if [ ! -s "$dir/$2" ]; then
        echo "scripts/schemas.sh: $1 has no $2" >&2
        exit 1
    fi
    cp "$dir/$2" "$tmp/$3"
}

mkdir -p "$(dirname "$cache")"
tmp="$(mktemp -d "$(dirname "$cache")/schemas.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
version_of() { printf '%s\n' "${wanted[@]}" | grep "^$1@" | head -n1; }
copy "$(version_of k8s.io/kubernetes)" api/openapi-spec/v3/apis__networking.k8s.io__v1_openapi.json networkpolicy.json
copy "$(version_of sigs.k8s.io/network-policy-api)" config/crd/standard/policy.networking.k8s.io_clusternetworkpolicies.yaml cnp.yaml
copy sigs.k8s.io/network-policy-api@v0.1.1 config/crd/policy.networking.k8s.io_adminnetworkpolicies.yaml anp.yaml
copy sigs.k8s.io/network-policy-api@v0.1.5 config/crd/experimental/policy.networking.k8s.io_adminnetworkpolicies.yaml anp-experimental.yaml
copy "$(version_of github.com/projectcalico/calico)" libcalico-go/config/crd/crd.projectcalico.org_globalnetworkpolicies.yaml calico-gnp.yaml
copy "$(version_of github.com/cilium/cilium)" pkg/k8s/apis/cilium.io/client/crds/v2/ciliumclusterwidenetworkpolicies.yaml ccnp.yaml
echo "$stamp" >"$tmp/VERSIONS"
chmod 755 "$tmp"
rm -rf "$cache"
mv "$tmp" "$cache"
trap - EXIT
echo "$cache"
