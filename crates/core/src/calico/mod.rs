//! Calico's own policy model (`projectcalico.org/v3` GlobalNetworkPolicy, NetworkPolicy,
//! Tier, GlobalNetworkSet, NetworkSet) and its egress semantics, for pods reaching
//! addresses outside the cluster (and pods or nodes, for the closed-loop tests).
//!
//! - [`selector`]: Calico's selector language (parser with column errors, evaluator);
//! - [`parse`] (in `policy.rs`): the objects, read from JSON with Calico's defaults and
//!   validation; [`CalicoPolicy::from_kubernetes`] converts a Kubernetes NetworkPolicy
//!   the way Calico does (default tier, order 1000);
//! - [`decide`] (in `decide.rs`): tiers, orders, Allow / Deny / Pass / Log, end-of-tier
//!   drop, the namespace profile's allow.
//!
//! `docs/engines.md` ("Calico") explains the semantics with their sources.

mod decide;
mod policy;
pub mod selector;

pub use decide::{
    CalicoDecision, CalicoDest, CalicoEndpoint, CalicoPolicies, CalicoPolicyRef, CalicoVerdict,
    DestEndpoint, EPHEMERAL_PORT, NamedPort, decide,
};
pub use policy::{
    API_VERSION, Action, CalicoError, CalicoNetworkSet, CalicoObject, CalicoObjects, CalicoPolicy,
    CalicoProblem, CalicoTier, EntityRule, KINDS, PolicyKind, PortMatch, ProtocolMatch, Rule,
    ServiceAccountMatch, ServiceMatch, TierAction, is_calico_kind, parse, protocol_number,
};

/// The tier of policies that name none, and of Kubernetes NetworkPolicies.
pub const DEFAULT_TIER: &str = "default";
/// The built-in tier of ClusterNetworkPolicies of the Admin tier.
pub const KUBE_ADMIN_TIER: &str = "kube-admin";
/// The built-in tier of ClusterNetworkPolicies of the Baseline tier.
pub const KUBE_BASELINE_TIER: &str = "kube-baseline";
/// Order of the `kube-admin` tier (`api/pkg/apis/projectcalico/v3/tier.go`).
pub const KUBE_ADMIN_TIER_ORDER: f64 = 1_000.0;
/// Order of the `default` tier.
pub const DEFAULT_TIER_ORDER: f64 = 1_000_000.0;
/// Order of the `kube-baseline` tier.
pub const KUBE_BASELINE_TIER_ORDER: f64 = 10_000_000.0;
/// The order Calico gives every converted Kubernetes NetworkPolicy.
pub const KUBERNETES_NETWORK_POLICY_ORDER: f64 = 1_000.0;

#[cfg(test)]
mod tests;
