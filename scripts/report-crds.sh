#!/usr/bin/env bash
# Downloads the CustomResourceDefinitions of the report objects `imdsguard audit` writes
# (--format policyreport|openreports, --apply) and prints the folder that holds them (the
# only line on standard output):
#
#   wgpolicyk8s.io_policyreports.yaml         PolicyReport v1alpha2 (github.com/kyverno/kyverno)
#   wgpolicyk8s.io_clusterpolicyreports.yaml  ClusterPolicyReport v1alpha2 (same)
#   openreports.io_reports.yaml               Report v1alpha1 (github.com/openreports/reports-api)
#   openreports.io_clusterreports.yaml        ClusterReport v1alpha1 (same)
#
# The modules come through the Go module proxy (`go mod download`), at the versions of
# tests/report-crds/go.mod, checked against tests/report-crds/go.sum; the files are
# cached in ${XDG_CACHE_HOME:-~/.cache}/imdsguard/report-crds (IMDSGUARD_REPORT_CRDS
# overrides) and the download is skipped while the cache matches those versions. Run by
# the ignored tests of crates/cli/tests/audit_reports.rs, which install the CRDs into the
# test API server (`kubectl apply -f FOLDER`).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mods="$root/tests/report-crds"
cache="${IMDSGUARD_REPORT_CRDS:-${XDG_CACHE_HOME:-$HOME/.cache}/imdsguard/report-crds}"

if ! command -v go >/dev/null 2>&1; then
    echo "scripts/report-crds.sh: go is missing: install Go (the CRDs come through the Go module proxy)" >&2
    exit 1
fi

# module@version of every require line of go.mod.
mapfile -t wanted < <(
    sed -n 's/^[[:space:]]*\([a-z0-9.\/-]*\.[a-z]*\/[^ ]*\) \(v[^ ]*\)$/\1@\2/p' "$mods/go.mod"
)
stamp="$(printf '%s\n' "${wanted[@]}" | sort)"
files=(wgpolicyk8s.io_policyreports.yaml wgpolicyk8s.io_clusterpolicyreports.yaml
    openreports.io_reports.yaml openreports.io_clusterreports.yaml)
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
        echo "scripts/report-crds.sh: go mod download $1 failed:" >&2
        echo "$out" >&2
        exit 1
    }
    if grep -q '"Error"' <<<"$out"; then
        echo "scripts/report-crds.sh: go mod download $1: $out" >&2
        exit 1
    fi
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<<"$out"
}

copy() { # module@version, path inside it, name in the cache
    local dir
    dir="$(dir_of "$1")"
    if [ ! -s "$dir/$2" ]; then
        echo "scripts/report-crds.sh: $1 has no $2" >&2
        exit 1
    fi
    cp "$dir/$2" "$tmp/$3"
}

mkdir -p "$(dirname "$cache")"
tmp="$(mktemp -d "$(dirname "$cache")/report-crds.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
version_of() { printf '%s\n' "${wanted[@]}" | grep "^$1@" | head -n1; }
kyverno="$(version_of github.com/kyverno/kyverno)"
openreports="$(version_of github.com/openreports/reports-api)"
copy "$kyverno" config/crds/policyreport/wgpolicyk8s.io_policyreports.yaml wgpolicyk8s.io_policyreports.yaml
copy "$kyverno" config/crds/policyreport/wgpolicyk8s.io_clusterpolicyreports.yaml wgpolicyk8s.io_clusterpolicyreports.yaml
copy "$openreports" config/crd/openreports.io_reports.yaml openreports.io_reports.yaml
copy "$openreports" config/crd/openreports.io_clusterreports.yaml openreports.io_clusterreports.yaml
echo "$stamp" >"$tmp/VERSIONS"
chmod 755 "$tmp"
rm -rf "$cache"
mv "$tmp" "$cache"
trap - EXIT
echo "$cache"
