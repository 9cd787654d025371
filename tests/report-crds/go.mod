// The Go modules that publish the CRDs of the report objects `imdsguard audit` writes
// (--format policyreport|openreports). Nothing is built from here: scripts/report-crds.sh
// downloads these versions through the Go module proxy (checked against go.sum) and
// copies the CRD files out.
module imdsguard.invalid/tests/report-crds

go 1.22

require (
	// wgpolicyk8s.io/v1alpha2 PolicyReport and ClusterPolicyReport
	// (config/crds/policyreport): the Policy WG's own module
	// (sigs.k8s.io/wg-policy-prototypes) is not served by the proxy; Kyverno ships the
	// same CRDs and installs them.
	github.com/kyverno/kyverno v1.19.1
	// openreports.io/v1alpha1 Report and ClusterReport (config/crd).
	github.com/openreports/reports-api v0.2.1
)
