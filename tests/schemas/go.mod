// The Go modules that publish the schemas of the kinds `imdsguard policy generate`
// writes. Nothing is built from here: scripts/schemas.sh downloads these versions
// through the Go module proxy (checked against go.sum) and copies the schema files out.
module imdsguard.invalid/tests/schemas

go 1.22

require (
	// Calico's CRDs (libcalico-go/config/crd): GlobalNetworkPolicy. The only version
	// the proxy serves; its module has no Tier CRD.
	github.com/projectcalico/calico v1.11.0-cni-plugin.0.20250813170300-a0db560f0520
	// CiliumClusterwideNetworkPolicy (pkg/k8s/apis/cilium.io/client/crds/v2).
	github.com/cilium/cilium v1.20.2
	// NetworkPolicy: the Kubernetes OpenAPI v3 document of networking.k8s.io/v1.
	k8s.io/kubernetes v1.37.2
	// ClusterNetworkPolicy v1alpha2/v1beta1 (config/crd/standard). AdminNetworkPolicy
	// v1alpha1 comes from v0.1.1 of the same module (scripts/schemas.sh, go.sum).
	sigs.k8s.io/network-policy-api v0.3.0
)
