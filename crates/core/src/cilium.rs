//! Cilium's egress policy semantics: `cilium.io/v2` CiliumNetworkPolicy (CNP) and
//! CiliumClusterwideNetworkPolicy (CCNP), with Kubernetes NetworkPolicy as Cilium enforces
//! it beside them.
//!
//! - [`parse`] reads one CNP or CCNP (a `spec`, a `specs` list, or both) from its JSON
//!   value; [`parse_cidr_group`] reads a `CiliumCIDRGroup` (the target of `cidrGroupRef`).
//! - [`decide`] answers "may this pod open this connection?" from Cilium's policies alone;
//!   [`decide_with_netpol`] adds the NetworkPolicies of the pod's namespace as Cilium
//!   enforces them (the composition the engine layer calls for `--engine cilium`).
//!
//! The rules, each checked by a case of the test table in `cilium/tests.rs` that cites the
//! documentation or source it follows:
//!
//! - An endpoint is egress default-deny as soon as one selecting rule has `egress` or
//!   `egressDeny` rules and that rule's `enableDefaultDeny.egress` is not `false`; a rule
//!   with only `enableDefaultDeny.egress: false` policies leaves it default-allow (Cilium
//!   synthesises an allow-all) while its deny rules still apply. A selecting
//!   NetworkPolicy with the Egress type isolates as well.
//! - Allows add up across rules, policies and NetworkPolicies; a matching `egressDeny`
//!   rule beats every allow, NetworkPolicy included.
//! - CIDR rules (`toCIDR`, `toCIDRSet`, a NetworkPolicy's `ipBlock`) match only addresses
//!   Cilium classifies as `world`: never a pod, a node or the local host.
//! - Which entity an address outside the pod network belongs to is `world`, except for
//!   link-local addresses (169.254.0.0/16, fe80::/10) that a node agent may own on some
//!   platforms: [`LinkLocalAs`] says which, and its default, [`LinkLocalAs::Either`], is
//!   the cautious one for an audit (see its documentation).

mod eval;
mod identity;
mod model;
mod parse;

#[cfg(test)]
mod tests;

pub use eval::{
    CiliumDecision, CiliumDest, CiliumEndpoint, Note, Outcome, RuleRef, decide, decide_with_netpol,
    is_link_local,
};
pub use model::{
    CidrGroup, CidrRule, CiliumPolicies, CiliumPolicy, Entity, L4Proto, L7Kind, Peer, PolicyKind,
    PolicyRef, PortProtocol, PortRule, PortSel, Rule, SelKey, SelReq, Selector, Spec, Subject,
};
pub use parse::{CiliumError, CiliumKind, classify, parse, parse_cidr_group};

/// Which entity Cilium gives a link-local destination (169.254.0.0/16, fe80::/10), such as
/// the metadata endpoint 169.254.169.254.
///
/// Cilium classifies an address as `host` when it belongs to the node (a local interface
/// holds it) and as `world` otherwise. Metadata endpoints are normally `world` (on GKE a
/// `toEntities: [host]` rule does not reach 169.254.169.254 while a `toCIDR` rule does,
/// <https://github.com/Smana/runlore/issues/562>), but a node agent that binds the
/// address (EKS Pod Identity's 169.254.170.23 is `host`, same source; node-local DNS at
/// 169.254.20.10 was seen as `host`, <https://github.com/cilium/cilium/issues/16308>)
/// makes it `host`, and then CIDR rules no longer match it.
///
/// Neither fixed answer is cautious for an audit: taking `world` trusts a CIDR or `world`
/// deny that a `host` classification would bypass, and ignores a `toEntities: [host]`
/// allow that would open the address; taking `host` ignores `world`/CIDR allows. So the
/// default evaluates both and reports the destination reachable when either
/// classification reaches it, naming the classification in the reason. Users who know
/// their platform (e.g. AKS, GKE, EKS without a node-local metadata proxy: `world`) say so
/// with `--cilium-link-local world|host`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LinkLocalAs {
    /// Outside the cluster: `world`, CIDR rules apply.
    World,
    /// Owned by the node: `host`, CIDR rules do not apply.
    Host,
    /// Unknown: reachable when reachable under either classification (the default).
    #[default]
    Either,
}

impl LinkLocalAs {
    /// The command-line name (`world`, `host`, `either`).
    pub fn as_str(self) -> &'static str {
        match self {
            LinkLocalAs::World => "world",
            LinkLocalAs::Host => "host",
            LinkLocalAs::Either => "either",
        }
    }
}

impl std::str::FromStr for LinkLocalAs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "world" => Ok(LinkLocalAs::World),
            "host" => Ok(LinkLocalAs::Host),
            "either" => Ok(LinkLocalAs::Either),
            other => Err(format!(
                "`{other}` is not a classification: use world, host or either"
            )),
        }
    }
}

/// How the Cilium agent is configured, where it changes a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CiliumOptions {
    /// Entity of link-local destinations (see [`LinkLocalAs`]).
    pub link_local: LinkLocalAs,
    /// `--cluster-name` (Cilium's default is `default`): the value of the
    /// `io.cilium.k8s.policy.cluster` label of every pod.
    pub cluster_name: String,
    /// `--policy-cidr-match-mode=nodes`: CIDR rules also select remote nodes.
    pub cidr_selects_nodes: bool,
    /// Apply Cilium's default identity-relevant label filter (pod labels such as
    /// `pod-template-hash` or `kubernetes.io/...` are not part of the identity, so no
    /// selector can match them). On by default, as in Cilium.
    pub identity_label_filter: bool,
}

impl Default for CiliumOptions {
    fn default() -> Self {
        CiliumOptions {
            link_local: LinkLocalAs::default(),
            cluster_name: "default".to_string(),
            cidr_selects_nodes: false,
            identity_label_filter: true,
        }
    }
}
