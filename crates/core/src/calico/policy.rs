//! The `projectcalico.org/v3` objects the audit reads (GlobalNetworkPolicy, NetworkPolicy,
//! Tier, GlobalNetworkSet, NetworkSet), read from a `serde_json::Value` and checked the
//! way Calico's API validation checks them, and the conversion of a Kubernetes
//! NetworkPolicy into the Calico policy Calico itself makes of it.
//!
//! Field meanings and defaults:
//! <https://docs.tigera.io/calico/latest/reference/resources/globalnetworkpolicy>,
//! <https://docs.tigera.io/calico/latest/reference/resources/networkpolicy>,
//! <https://docs.tigera.io/calico/latest/reference/resources/tier>; the validation rules
//! follow `libcalico-go/lib/validator/v3/validator.go` of projectcalico/calico.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value};

use super::selector::{Selector, SelectorError};
use super::{DEFAULT_TIER, KUBE_ADMIN_TIER, KUBE_BASELINE_TIER};
use crate::model::{Labels, NetworkPolicy, Peer, PortSpec, Source};
use crate::netpol::fold_mapped_net;
use crate::quote::{clip, quoted};
use crate::target::Protocol;
use crate::tiered::{
    Action as TieredAction, Peer as TieredPeer, PortMatch as TieredPortMatch, Subject, TierLevel,
    TieredKind, TieredPolicy,
};

/// The API group and version of every object read here.
pub const API_VERSION: &str = "projectcalico.org/v3";

/// The kinds read here (all `projectcalico.org/v3`).
pub const KINDS: [&str; 5] = [
    "GlobalNetworkPolicy",
    "NetworkPolicy",
    "Tier",
    "GlobalNetworkSet",
    "NetworkSet",
];

/// Whether `apiVersion`/`kind` name an object [`parse`] reads.
pub fn is_calico_kind(api_version: &str, kind: &str) -> bool {
    api_version == API_VERSION && KINDS.contains(&kind)
}

/// One object read by [`parse`].
#[derive(Debug, Clone)]
pub enum CalicoObject {
    /// A GlobalNetworkPolicy or (namespaced) NetworkPolicy.
    Policy(Box<CalicoPolicy>),
    /// A Tier.
    Tier(CalicoTier),
    /// A GlobalNetworkSet or (namespaced) NetworkSet.
    NetworkSet(CalicoNetworkSet),
}

/// Which kind of object a policy is (or was converted from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    /// `projectcalico.org/v3` GlobalNetworkPolicy (cluster-wide).
    GlobalNetworkPolicy,
    /// `projectcalico.org/v3` NetworkPolicy (namespaced).
    NetworkPolicy,
    /// `networking.k8s.io/v1` NetworkPolicy, as Calico converts it (`knp.default.<name>`,
    /// default tier, order 1000).
    KubernetesNetworkPolicy,
    /// `policy.networking.k8s.io` ClusterNetworkPolicy, as Calico converts it
    /// (`kcnp.kube-admin.<name>` / `kcnp.kube-baseline.<name>`, order = priority).
    ClusterNetworkPolicy,
}

impl PolicyKind {
    /// The Kubernetes kind.
    pub fn kind(self) -> &'static str {
        match self {
            PolicyKind::GlobalNetworkPolicy => "GlobalNetworkPolicy",
            PolicyKind::NetworkPolicy | PolicyKind::KubernetesNetworkPolicy => "NetworkPolicy",
            PolicyKind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
        }
    }

    /// The API group of the kind.
    pub fn group(self) -> &'static str {
        match self {
            PolicyKind::GlobalNetworkPolicy | PolicyKind::NetworkPolicy => "projectcalico.org",
            PolicyKind::KubernetesNetworkPolicy => "networking.k8s.io",
            PolicyKind::ClusterNetworkPolicy => "policy.networking.k8s.io",
        }
    }

    /// Whether policies of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        matches!(
            self,
            PolicyKind::NetworkPolicy | PolicyKind::KubernetesNetworkPolicy
        )
    }
}

/// A rule's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Allow the packet; evaluation ends.
    Allow,
    /// Drop the packet; evaluation ends.
    Deny,
    /// Log the packet and go on with the next rule.
    Log,
    /// Skip the rest of this tier: the next tier that applies decides.
    Pass,
}

impl Action {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "Allow",
            Action::Deny => "Deny",
            Action::Log => "Log",
            Action::Pass => "Pass",
        }
    }
}

/// A `protocol` / `notProtocol` value, by IANA number (names map to their numbers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolMatch {
    /// The IANA protocol number.
    pub number: u8,
    /// As written (`TCP`, `17`, ...).
    pub name: String,
}

impl ProtocolMatch {
    /// Whether a TCP/UDP/SCTP packet has this protocol.
    pub fn matches(&self, p: Protocol) -> bool {
        self.number == protocol_number(p)
    }

    /// Whether Calico allows ports with this protocol (TCP, UDP, SCTP, UDPLite).
    pub fn supports_ports(&self) -> bool {
        matches!(self.number, 6 | 17 | 132 | 136)
    }
}

/// The IANA number of a transport protocol.
pub fn protocol_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// One entry of `ports` / `notPorts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortMatch {
    /// A port (`first == last`) or an inclusive range `"first:last"`.
    Range {
        /// First port.
        first: u16,
        /// Last port (inclusive).
        last: u16,
    },
    /// A named port: it resolves on the endpoint that declares it, so it never matches
    /// an address outside the cluster.
    Named(String),
}

impl fmt::Display for PortMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortMatch::Range { first, last } if first == last => write!(f, "{first}"),
            PortMatch::Range { first, last } => write!(f, "{first}:{last}"),
            PortMatch::Named(n) => f.write_str(n),
        }
    }
}

/// `serviceAccounts` of an entity rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountMatch {
    /// Service account names (any of them).
    pub names: Vec<String>,
    /// A selector over the service accounts' labels.
    pub selector: Option<Selector>,
}

/// `services` of an entity rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceMatch {
    /// Service name.
    pub name: String,
    /// Service namespace (defaulted to the policy's for a namespaced policy).
    pub namespace: Option<String>,
}

/// A rule's `source` or `destination`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntityRule {
    /// `nets`: the address is in one of them (empty: no constraint).
    pub nets: Vec<IpNet>,
    /// `notNets`: the address is in none of them.
    pub not_nets: Vec<IpNet>,
    /// `selector`: endpoints and network sets (never a bare address).
    pub selector: Option<Selector>,
    /// `notSelector`: not to/from endpoints and network sets it selects.
    pub not_selector: Option<Selector>,
    /// `namespaceSelector`: the namespaces (or, `global()`, the non-namespaced resources)
    /// the selector ranges over.
    pub namespace_selector: Option<Selector>,
    /// `ports`.
    pub ports: Vec<PortMatch>,
    /// `notPorts`.
    pub not_ports: Vec<PortMatch>,
    /// `serviceAccounts`.
    pub service_accounts: Option<ServiceAccountMatch>,
    /// `services`.
    pub services: Option<ServiceMatch>,
}

impl EntityRule {
    /// Whether any endpoint-identity field (selector, notSelector, namespaceSelector,
    /// serviceAccounts) is set.
    pub fn uses_selectors(&self) -> bool {
        self.selector.is_some()
            || self.not_selector.is_some()
            || self.namespace_selector.is_some()
            || self.service_accounts.is_some()
    }
}

/// One rule of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// How the rule is named in verdicts: `egress[2]` (for a converted Kubernetes policy,
    /// the index of the original rule).
    pub label: String,
    /// What a matching packet gets.
    pub action: Action,
    /// `protocol`.
    pub protocol: Option<ProtocolMatch>,
    /// `notProtocol`.
    pub not_protocol: Option<ProtocolMatch>,
    /// `ipVersion` (4 or 6).
    pub ip_version: Option<u8>,
    /// Whether `icmp` or `notICMP` is set: such a rule only matches ICMP packets.
    pub icmp: bool,
    /// `source`.
    pub source: EntityRule,
    /// `destination`.
    pub destination: EntityRule,
}

/// A GlobalNetworkPolicy or NetworkPolicy after defaulting (or a Kubernetes policy as
/// Calico converts it).
#[derive(Debug, Clone)]
pub struct CalicoPolicy {
    /// Which kind.
    pub kind: PolicyKind,
    /// Namespace (namespaced kinds only; defaulted to `default`).
    pub namespace: Option<String>,
    /// `metadata.name` as written.
    pub name: String,
    /// `spec.tier` (defaulted to `default`).
    pub tier: String,
    /// `spec.order`; unset sorts after every set order.
    pub order: Option<f64>,
    /// `spec.selector` (defaulted to `all()`).
    pub selector: Selector,
    /// `spec.namespaceSelector` (GlobalNetworkPolicy only).
    pub namespace_selector: Option<Selector>,
    /// `spec.serviceAccountSelector`.
    pub service_account_selector: Option<Selector>,
    /// Whether the (defaulted) types include Ingress.
    pub ingress_type: bool,
    /// Whether the (defaulted) types include Egress: only then the policy governs egress.
    pub egress_type: bool,
    /// Whether `spec.types` was written (false: defaulted from the rules present).
    pub types_written: bool,
    /// Ingress rules (parsed and checked; the audit does not evaluate them).
    pub ingress: Vec<Rule>,
    /// Egress rules, in order.
    pub egress: Vec<Rule>,
    /// `doNotTrack`: host endpoints only; never applied to a pod's own traffic.
    pub do_not_track: bool,
    /// `preDNAT`: host endpoints only; never applied to a pod's own traffic.
    pub pre_dnat: bool,
    /// `applyOnForward`: also applies to traffic forwarded through host endpoints (no
    /// change for pods).
    pub apply_on_forward: bool,
    /// Things Calico may reject or that change the policy's meaning, in words.
    pub warnings: Vec<String>,
    /// Where it was read.
    pub source: Source,
}

impl CalicoPolicy {
    /// `Kind namespace/name` or `Kind name`.
    pub fn id(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind.kind(), self.name),
            None => format!("{} {}", self.kind.kind(), self.name),
        }
    }

    /// The name Felix sorts by when orders tie: `tier.name` for Calico policies (the
    /// `default.` prefix added when missing), `knp.default.<name>` for Kubernetes
    /// NetworkPolicy, `kcnp.<tier>.<name>` for ClusterNetworkPolicy
    /// (`libcalico-go/lib/names/policy.go`).
    pub fn backend_name(&self) -> String {
        match self.kind {
            PolicyKind::KubernetesNetworkPolicy => format!("knp.default.{}", self.name),
            PolicyKind::ClusterNetworkPolicy => format!("kcnp.{}.{}", self.tier, self.name),
            _ if self.name.contains('.') => self.name.clone(),
            _ => format!("default.{}", self.name),
        }
    }

    /// The Calico policy a `networking.k8s.io/v1` NetworkPolicy becomes: default tier,
    /// order 1000, named `knp.default.<name>`, one Allow rule per (port, peer) pair of
    /// each egress rule, ipBlocks as `nets`/`notNets`, pod and namespace selectors as
    /// Calico selectors that only match Kubernetes pods
    /// (`libcalico-go/lib/backend/k8s/conversion/conversion.go`,
    /// `K8sNetworkPolicyToCalico`). Its rules keep the original rule's index as label.
    pub fn from_kubernetes(np: &NetworkPolicy) -> CalicoPolicy {
        let mut egress = Vec::new();
        for (i, rule) in np.egress.iter().enumerate() {
            let label = format!("egress[{i}]");
            let ports: Vec<Option<(ProtocolMatch, Vec<PortMatch>)>> = if rule.ports.is_empty() {
                vec![None]
            } else {
                rule.ports
                    .iter()
                    .map(|p| {
                        let proto = ProtocolMatch {
                            number: protocol_number(p.protocol),
                            name: p.protocol.as_str().to_string(),
                        };
                        let ports = match &p.port {
                            None => vec![],
                            Some(PortSpec::Named(n)) => vec![PortMatch::Named(n.clone())],
                            Some(PortSpec::Number(n)) => vec![PortMatch::Range {
                                first: *n,
                                last: p.end_port.unwrap_or(*n),
                            }],
                        };
                        Some((proto, ports))
                    })
                    .collect()
            };
            let peers: Vec<Option<&Peer>> = if rule.to.is_empty() {
                vec![None]
            } else {
                rule.to.iter().map(Some).collect()
            };
            for port in &ports {
                for peer in &peers {
                    let mut destination = EntityRule::default();
                    let mut protocol = None;
                    if let Some((p, list)) = port {
                        protocol = Some(p.clone());
                        destination.ports = list.clone();
                    }
                    match peer {
                        None => {}
                        Some(Peer::IpBlock { cidr, except }) => {
                            // libcalico-go reads a CIDR in IPv4-mapped form as the IPv4
                            // prefix it maps (its IPNet.Version() is 4).
                            destination.nets = vec![fold_mapped_net(cidr.trunc())];
                            destination.not_nets =
                                except.iter().map(|e| fold_mapped_net(e.trunc())).collect();
                        }
                        Some(Peer::Selector {
                            namespace_selector,
                            pod_selector,
                        }) => {
                            let pods = pod_selector
                                .as_ref()
                                .map(Selector::from_label_selector)
                                .unwrap_or_else(Selector::all);
                            destination.selector = Some(Selector::kubernetes_pods(&pods));
                            destination.namespace_selector = namespace_selector
                                .as_ref()
                                .map(Selector::from_label_selector);
                        }
                    }
                    egress.push(Rule {
                        label: label.clone(),
                        action: Action::Allow,
                        protocol,
                        not_protocol: None,
                        ip_version: None,
                        icmp: false,
                        source: EntityRule::default(),
                        destination,
                    });
                }
            }
        }
        CalicoPolicy {
            kind: PolicyKind::KubernetesNetworkPolicy,
            namespace: Some(np.namespace.clone()),
            name: np.name.clone(),
            tier: DEFAULT_TIER.to_string(),
            order: Some(super::KUBERNETES_NETWORK_POLICY_ORDER),
            selector: Selector::kubernetes_pods(&Selector::from_label_selector(&np.pod_selector)),
            namespace_selector: None,
            service_account_selector: None,
            ingress_type: np.ingress_type,
            egress_type: np.egress_type,
            types_written: np.policy_types_written,
            ingress: vec![],
            egress,
            do_not_track: false,
            pre_dnat: false,
            apply_on_forward: false,
            warnings: vec![],
            source: np.source.clone(),
        }
    }
}

impl CalicoPolicy {
    /// The GlobalNetworkPolicy Calico makes of a ClusterNetworkPolicy
    /// (`libcalico-go/lib/backend/k8s/conversion/clusternetworkpolicy.go`,
    /// `K8sClusterNetworkPolicyToCalico`): tier `kube-admin` or `kube-baseline`, order =
    /// priority, subject as namespaceSelector (+ pod selector), one rule per (protocol,
    /// peer) of each egress rule (Accept → Allow), `networks` as `nets`, `namespaces` /
    /// `pods` peers as namespaceSelector (+ selector). A rule Calico cannot convert (a
    /// named port, a `nodes` or `domainNames` peer, a peer it does not know) fails closed
    /// as Calico's does: a Deny or Pass rule becomes "Deny everything", an Accept rule is
    /// dropped; each is named in [`CalicoPolicy::warnings`]. Other kinds and a
    /// policy of neither tier give `None`.
    pub fn from_cluster_network_policy(p: &TieredPolicy) -> Option<CalicoPolicy> {
        if p.kind != TieredKind::ClusterNetworkPolicy {
            return None;
        }
        let tier = match p.tier {
            TierLevel::Admin => KUBE_ADMIN_TIER,
            TierLevel::Baseline => KUBE_BASELINE_TIER,
        };
        let ns_selector = |s: &crate::model::LabelSelector| {
            if s.is_empty() {
                Selector::all()
            } else {
                Selector::from_label_selector(s)
            }
        };
        let (namespace_selector, selector) = match &p.subject {
            Subject::Namespaces(ns) => {
                (ns_selector(ns), Selector::kubernetes_pods(&Selector::all()))
            }
            Subject::Pods {
                namespace_selector,
                pod_selector,
            } => (
                ns_selector(namespace_selector),
                Selector::kubernetes_pods(&Selector::from_label_selector(pod_selector)),
            ),
        };
        let mut warnings = Vec::new();
        let mut egress = Vec::new();
        for (i, r) in p.egress.iter().enumerate() {
            let label = format!("egress[{i}]");
            let action = match r.action {
                TieredAction::Accept => Action::Allow,
                TieredAction::Deny => Action::Deny,
                TieredAction::Pass => Action::Pass,
            };
            let fail = |why: &str, warnings: &mut Vec<String>, egress: &mut Vec<Rule>| {
                if action == Action::Allow {
                    warnings.push(format!(
                        "{label}: Calico cannot convert it ({why}) and drops this Accept rule"
                    ));
                } else {
                    warnings.push(format!(
                        "{label}: Calico cannot convert it ({why}) and replaces it with a rule denying everything"
                    ));
                    egress.push(Rule {
                        label: label.clone(),
                        action: Action::Deny,
                        protocol: None,
                        not_protocol: None,
                        ip_version: None,
                        icmp: false,
                        source: EntityRule::default(),
                        destination: EntityRule::default(),
                    });
                }
            };
            // One group per protocol, each with its ports (empty: every port); no
            // protocols at all: one group without a protocol.
            let mut groups: Vec<(Option<Protocol>, Option<Vec<PortMatch>>)> = Vec::new();
            let mut named = false;
            match &r.ports {
                None => groups.push((None, Some(vec![]))),
                Some(list) => {
                    for pm in list {
                        match pm {
                            TieredPortMatch::Named(_) => named = true,
                            TieredPortMatch::Ports { protocol, range } => {
                                let port =
                                    range.map(|(a, b)| PortMatch::Range { first: a, last: b });
                                match groups.iter_mut().find(|(p, _)| *p == Some(*protocol)) {
                                    Some((_, ports)) => {
                                        // An "every port" entry wins over single ports.
                                        match (ports.as_mut(), port) {
                                            (Some(v), Some(x)) if !v.is_empty() => v.push(x),
                                            _ => *ports = Some(vec![]),
                                        }
                                    }
                                    None => groups
                                        .push((Some(*protocol), Some(port.into_iter().collect()))),
                                }
                            }
                        }
                    }
                }
            }
            if named {
                fail("named ports are not supported", &mut warnings, &mut egress);
                continue;
            }
            groups.sort_by_key(|(p, _)| p.map(Protocol::as_str));
            let mut peers = Vec::new();
            let mut bad = None;
            for peer in &r.to {
                let mut d = EntityRule::default();
                match peer {
                    TieredPeer::Namespaces(ns) => d.namespace_selector = Some(ns_selector(ns)),
                    TieredPeer::Pods {
                        namespace_selector,
                        pod_selector,
                    } => {
                        d.namespace_selector = Some(ns_selector(namespace_selector));
                        d.selector = Some(Selector::kubernetes_pods(
                            &Selector::from_label_selector(pod_selector),
                        ));
                    }
                    TieredPeer::Networks(nets) => {
                        d.nets = nets.iter().map(|n| fold_mapped_net(n.trunc())).collect()
                    }
                    TieredPeer::Nodes(_) => bad = Some("a nodes peer"),
                    TieredPeer::DomainNames(_) => bad = Some("a domainNames peer"),
                    TieredPeer::Unknown(_) => bad = Some("a peer of unknown shape"),
                }
                peers.push(d);
            }
            if let Some(why) = bad {
                fail(why, &mut warnings, &mut egress);
                continue;
            }
            for (protocol, ports) in &groups {
                for peer in &peers {
                    let mut destination = peer.clone();
                    destination.ports = ports.clone().unwrap_or_default();
                    egress.push(Rule {
                        label: label.clone(),
                        action,
                        protocol: protocol.map(|p| ProtocolMatch {
                            number: protocol_number(p),
                            name: p.as_str().to_string(),
                        }),
                        not_protocol: None,
                        ip_version: None,
                        icmp: false,
                        source: EntityRule::default(),
                        destination,
                    });
                }
            }
        }
        Some(CalicoPolicy {
            kind: PolicyKind::ClusterNetworkPolicy,
            namespace: None,
            name: p.name.clone(),
            tier: tier.to_string(),
            order: p.priority.map(f64::from),
            selector,
            namespace_selector: Some(namespace_selector),
            service_account_selector: None,
            ingress_type: false,
            egress_type: !egress.is_empty(),
            types_written: true,
            ingress: vec![],
            egress,
            do_not_track: false,
            pre_dnat: false,
            apply_on_forward: false,
            warnings,
            source: p.source.clone(),
        })
    }
}

/// The Calico objects of an input, as read (see [`CalicoPolicies::build`] for the
/// evaluation index).
///
/// [`CalicoPolicies::build`]: super::CalicoPolicies::build
#[derive(Debug, Clone, Default)]
pub struct CalicoObjects {
    /// GlobalNetworkPolicies and NetworkPolicies.
    pub policies: Vec<CalicoPolicy>,
    /// Tiers.
    pub tiers: Vec<CalicoTier>,
    /// GlobalNetworkSets and NetworkSets.
    pub network_sets: Vec<CalicoNetworkSet>,
}

impl CalicoObjects {
    /// Adds one object.
    pub fn push(&mut self, o: CalicoObject) {
        match o {
            CalicoObject::Policy(p) => self.policies.push(*p),
            CalicoObject::Tier(t) => self.tiers.push(t),
            CalicoObject::NetworkSet(s) => self.network_sets.push(s),
        }
    }

    /// Whether nothing was read.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty() && self.tiers.is_empty() && self.network_sets.is_empty()
    }
}

/// What a tier does with a packet of an endpoint it applies to when none of its
/// policies decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TierAction {
    /// Drop it (the default).
    Deny,
    /// Hand it to the next tier.
    Pass,
}

/// A Tier (declared, or one of Calico's built-in tiers).
#[derive(Debug, Clone, PartialEq)]
pub struct CalicoTier {
    /// Name.
    pub name: String,
    /// `spec.order`; unset sorts last.
    pub order: Option<f64>,
    /// `spec.defaultAction` (defaulted to Deny).
    pub default_action: TierAction,
    /// Where it was read (`None` for a built-in tier).
    pub source: Option<Source>,
}

impl CalicoTier {
    /// Calico's built-in tiers, which every cluster has: `kube-admin` (order 1000,
    /// Pass), `default` (order 1,000,000, Deny) and `kube-baseline` (order 10,000,000,
    /// Pass) (`api/pkg/apis/projectcalico/v3/tier.go`).
    pub fn built_in() -> [CalicoTier; 3] {
        let t = |name: &str, order: f64, default_action| CalicoTier {
            name: name.to_string(),
            order: Some(order),
            default_action,
            source: None,
        };
        [
            t(
                KUBE_ADMIN_TIER,
                super::KUBE_ADMIN_TIER_ORDER,
                TierAction::Pass,
            ),
            t(DEFAULT_TIER, super::DEFAULT_TIER_ORDER, TierAction::Deny),
            t(
                KUBE_BASELINE_TIER,
                super::KUBE_BASELINE_TIER_ORDER,
                TierAction::Pass,
            ),
        ]
    }
}

/// A GlobalNetworkSet or NetworkSet: labelled address ranges that rule selectors match
/// like endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct CalicoNetworkSet {
    /// Namespace (NetworkSet) or `None` (GlobalNetworkSet).
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// `metadata.labels`.
    pub labels: Labels,
    /// `spec.nets`.
    pub nets: Vec<IpNet>,
    /// Where it was read.
    pub source: Source,
}

impl CalicoNetworkSet {
    /// Whether one of its nets contains the address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(&ip))
    }
}

/// Why a Calico object could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {problem}")]
pub struct CalicoError {
    /// `Kind namespace/name` (as much as is known).
    pub object: String,
    /// The field, e.g. `spec.egress[0].destination.selector`.
    pub field: String,
    /// What is wrong with it.
    pub problem: CalicoProblem,
}

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalicoProblem {
    /// A value Calico rejects, with what to write instead.
    #[error("{0}")]
    Invalid(String),
    /// A selector that does not parse.
    #[error("selector {}: {source}", quoted(.text))]
    Selector {
        /// The selector as written.
        text: String,
        /// Where and why it does not parse.
        #[source]
        source: Box<SelectorError>,
    },
}

struct Ctx {
    object: String,
}

impl Ctx {
    fn err(&self, field: &str, msg: impl Into<String>) -> CalicoError {
        CalicoError {
            object: self.object.clone(),
            field: field.to_string(),
            problem: CalicoProblem::Invalid(msg.into()),
        }
    }

    fn obj<'v>(
        &self,
        v: &'v Value,
        field: &str,
    ) -> Result<Option<&'v Map<String, Value>>, CalicoError> {
        match v {
            Value::Null => Ok(None),
            Value::Object(m) => Ok(Some(m)),
            other => Err(self.err(
                field,
                format!("expected an object, found {}", type_name(other)),
            )),
        }
    }

    fn string(
        &self,
        m: &Map<String, Value>,
        key: &str,
        at: &str,
    ) -> Result<Option<String>, CalicoError> {
        match m.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.err(
                &join(at, key),
                format!("expected a string, found {}", type_name(other)),
            )),
        }
    }

    fn bool(&self, m: &Map<String, Value>, key: &str, at: &str) -> Result<bool, CalicoError> {
        match m.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(self.err(
                &join(at, key),
                format!("expected true or false, found {}", type_name(other)),
            )),
        }
    }

    fn list<'v>(
        &self,
        m: &'v Map<String, Value>,
        key: &str,
        at: &str,
    ) -> Result<&'v [Value], CalicoError> {
        match m.get(key) {
            None | Some(Value::Null) => Ok(&[]),
            Some(Value::Array(a)) => Ok(a),
            Some(other) => Err(self.err(
                &join(at, key),
                format!("expected a list, found {}", type_name(other)),
            )),
        }
    }

    fn selector(&self, text: Option<String>, field: &str) -> Result<Option<Selector>, CalicoError> {
        match text {
            None => Ok(None),
            Some(t) if t.trim_matches([' ', '\t']).is_empty() => Ok(None),
            Some(t) => Selector::parse(&t).map(Some).map_err(|source| CalicoError {
                object: self.object.clone(),
                field: field.to_string(),
                problem: CalicoProblem::Selector {
                    text: t,
                    source: Box::new(source),
                },
            }),
        }
    }

    fn labels(&self, m: &Map<String, Value>, at: &str) -> Result<Labels, CalicoError> {
        let mut out = Labels::new();
        match m.get("labels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(l)) => {
                for (k, v) in l {
                    match v {
                        Value::String(s) => {
                            out.insert(k.clone(), s.clone());
                        }
                        other => {
                            return Err(self.err(
                                &format!("{at}.labels.{k}"),
                                format!("expected a string value, found {}", type_name(other)),
                            ));
                        }
                    }
                }
            }
            Some(other) => {
                return Err(self.err(
                    &format!("{at}.labels"),
                    format!("expected a map of strings, found {}", type_name(other)),
                ));
            }
        }
        Ok(out)
    }
}

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Reads one `projectcalico.org/v3` object (GlobalNetworkPolicy, NetworkPolicy, Tier,
/// GlobalNetworkSet, NetworkSet) from its JSON form, applying Calico's defaults and
/// rejecting what Calico's validation rejects. Errors name the object and the field.
pub fn parse(value: &Value, source: Source) -> Result<CalicoObject, CalicoError> {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    let api = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let meta = value.get("metadata").and_then(Value::as_object);
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let namespaced = matches!(kind, "NetworkPolicy" | "NetworkSet");
    let namespace = namespaced.then(|| {
        meta.and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_string()
    });
    let object = match &namespace {
        Some(ns) => format!("{kind} {}/{}", clip(ns), clip(&name)),
        None => format!("{kind} {}", clip(&name)),
    };
    let cx = Ctx { object };
    if api != API_VERSION || !KINDS.contains(&kind) {
        return Err(cx.err(
            "kind",
            format!(
                "{} {} is not a Calico object imdsguard reads (apiVersion {API_VERSION}, kind one of {})",
                quoted(api),
                quoted(kind),
                KINDS.join(", ")
            ),
        ));
    }
    if name.is_empty() {
        return Err(cx.err("metadata.name", "missing: every Calico object needs a name"));
    }
    let empty = Map::new();
    let spec = cx
        .obj(value.get("spec").unwrap_or(&Value::Null), "spec")?
        .unwrap_or(&empty);
    match kind {
        "Tier" => parse_tier(&cx, name, spec, source).map(CalicoObject::Tier),
        "GlobalNetworkSet" | "NetworkSet" => {
            let labels = match meta {
                Some(m) => cx.labels(m, "metadata")?,
                None => Labels::new(),
            };
            let mut nets = Vec::new();
            for (i, n) in cx.list(spec, "nets", "spec")?.iter().enumerate() {
                nets.push(parse_net(&cx, n, &format!("spec.nets[{i}]"))?);
            }
            Ok(CalicoObject::NetworkSet(CalicoNetworkSet {
                namespace,
                name,
                labels,
                nets,
                source,
            }))
        }
        _ => parse_policy(&cx, kind, namespace, name, spec, source)
            .map(|p| CalicoObject::Policy(Box::new(p))),
    }
}

fn parse_tier(
    cx: &Ctx,
    name: String,
    spec: &Map<String, Value>,
    source: Source,
) -> Result<CalicoTier, CalicoError> {
    let order = parse_order(cx, spec)?;
    let default_action = match cx.string(spec, "defaultAction", "spec")?.as_deref() {
        None | Some("Deny") => TierAction::Deny,
        Some("Pass") => TierAction::Pass,
        Some(other) => {
            return Err(cx.err(
                "spec.defaultAction",
                format!(
                    "{} is not a tier default action: write Deny or Pass",
                    quoted(other)
                ),
            ));
        }
    };
    Ok(CalicoTier {
        name,
        order,
        default_action,
        source: Some(source),
    })
}

fn parse_order(cx: &Ctx, spec: &Map<String, Value>) -> Result<Option<f64>, CalicoError> {
    match spec.get("order") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f.is_finite() => Ok(Some(f)),
            _ => Err(cx.err("spec.order", format!("`{n}` is not a finite number"))),
        },
        Some(other) => Err(cx.err(
            "spec.order",
            format!("expected a number (e.g. 100), found {}", type_name(other)),
        )),
    }
}

fn parse_policy(
    cx: &Ctx,
    kind: &str,
    namespace: Option<String>,
    name: String,
    spec: &Map<String, Value>,
    source: Source,
) -> Result<CalicoPolicy, CalicoError> {
    let global = kind == "GlobalNetworkPolicy";
    let mut warnings = Vec::new();
    let tier = cx
        .string(spec, "tier", "spec")?
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| DEFAULT_TIER.to_string());
    // Calico 3.29 to 3.31 require `tier.` in front of the name of a policy outside the
    // default tier (libcalico-go/lib/names/policy.go, ValidateTieredPolicyName).
    if tier != DEFAULT_TIER && !name.starts_with(&format!("{tier}.")) {
        warnings.push(format!(
            "the name does not start with `{tier}.`: Calico 3.29 to 3.31 reject a policy of tier `{tier}` named otherwise",
            tier = clip(&tier)
        ));
    } else if tier == DEFAULT_TIER && name.contains('.') && !name.starts_with("default.") {
        warnings.push(format!(
            "the name {} has a dot but no `default.` prefix: Calico reads the part before the dot as a tier and rejects it in tier `default`",
            quoted(&name)
        ));
    }
    let order = parse_order(cx, spec)?;
    let selector = cx
        .selector(cx.string(spec, "selector", "spec")?, "spec.selector")?
        .unwrap_or_else(Selector::all);
    if selector.uses_global() {
        return Err(cx.err(
            "spec.selector",
            "global() may only be used in a rule's namespaceSelector",
        ));
    }
    let namespace_selector = if global {
        let s = cx.selector(
            cx.string(spec, "namespaceSelector", "spec")?,
            "spec.namespaceSelector",
        )?;
        if s.as_ref().is_some_and(Selector::uses_global) {
            return Err(cx.err(
                "spec.namespaceSelector",
                "global() may only be used in a rule's namespaceSelector",
            ));
        }
        s
    } else {
        None
    };
    let service_account_selector = cx.selector(
        cx.string(spec, "serviceAccountSelector", "spec")?,
        "spec.serviceAccountSelector",
    )?;
    if service_account_selector
        .as_ref()
        .is_some_and(Selector::uses_global)
    {
        return Err(cx.err(
            "spec.serviceAccountSelector",
            "global() may only be used in a rule's namespaceSelector",
        ));
    }
    let ingress = parse_rules(cx, spec, "ingress", namespace.as_deref(), global)?;
    let egress = parse_rules(cx, spec, "egress", namespace.as_deref(), global)?;
    let types = cx.list(spec, "types", "spec")?;
    let (mut ingress_type, mut egress_type) = (false, false);
    for (i, t) in types.iter().enumerate() {
        match t.as_str() {
            Some("Ingress") => ingress_type = true,
            Some("Egress") => egress_type = true,
            _ => {
                return Err(cx.err(
                    &format!("spec.types[{i}]"),
                    format!(
                        "{} is not a policy type: write Ingress or Egress",
                        quoted(&t.to_string())
                    ),
                ));
            }
        }
    }
    let types_written = !types.is_empty();
    if !types_written {
        // "If types has no value, Calico defaults as follows": egress rules only ->
        // Egress; both -> Ingress, Egress; otherwise Ingress.
        egress_type = !egress.is_empty();
        ingress_type = !ingress.is_empty() || egress.is_empty();
    }
    let (mut do_not_track, mut pre_dnat, mut apply_on_forward) = (false, false, false);
    if global {
        do_not_track = cx.bool(spec, "doNotTrack", "spec")?;
        pre_dnat = cx.bool(spec, "preDNAT", "spec")?;
        apply_on_forward = cx.bool(spec, "applyOnForward", "spec")?;
        if do_not_track && pre_dnat {
            return Err(cx.err("spec.preDNAT", "doNotTrack and preDNAT cannot both be true"));
        }
        if (do_not_track || pre_dnat) && !apply_on_forward {
            return Err(cx.err(
                "spec.applyOnForward",
                "must be true when doNotTrack or preDNAT is true",
            ));
        }
        if pre_dnat && (!egress.is_empty() || (types_written && egress_type)) {
            return Err(cx.err(
                "spec.egress",
                "a preDNAT policy cannot have egress rules or the Egress type",
            ));
        }
        if do_not_track || pre_dnat {
            warnings.push(format!(
                "{} applies to host endpoints only: Calico never applies it to a pod's own traffic",
                if do_not_track {
                    "doNotTrack"
                } else {
                    "preDNAT"
                }
            ));
        }
    }
    if !egress_type && !egress.is_empty() {
        warnings.push(
            "spec.types lacks Egress: its egress rules are ignored and it does not govern egress"
                .to_string(),
        );
    }
    Ok(CalicoPolicy {
        kind: if global {
            PolicyKind::GlobalNetworkPolicy
        } else {
            PolicyKind::NetworkPolicy
        },
        namespace,
        name,
        tier,
        order,
        selector,
        namespace_selector,
        service_account_selector,
        ingress_type,
        egress_type,
        types_written,
        ingress,
        egress,
        do_not_track,
        pre_dnat,
        apply_on_forward,
        warnings,
        source,
    })
}

fn parse_rules(
    cx: &Ctx,
    spec: &Map<String, Value>,
    key: &str,
    namespace: Option<&str>,
    global: bool,
) -> Result<Vec<Rule>, CalicoError> {
    let egress = key == "egress";
    let mut out = Vec::new();
    for (i, v) in cx.list(spec, key, "spec")?.iter().enumerate() {
        let at = format!("spec.{key}[{i}]");
        let Some(m) = cx.obj(v, &at)? else {
            return Err(cx.err(&at, "expected a rule object, found null"));
        };
        let action = match cx.string(m, "action", &at)?.as_deref() {
            Some("Allow") => Action::Allow,
            Some("Deny") => Action::Deny,
            Some("Log") => Action::Log,
            Some("Pass") => Action::Pass,
            None => {
                return Err(cx.err(
                    &join(&at, "action"),
                    "missing: write Allow, Deny, Log or Pass",
                ));
            }
            Some(other) => {
                return Err(cx.err(
                    &join(&at, "action"),
                    format!(
                        "{} is not an action: write Allow, Deny, Log or Pass",
                        quoted(other)
                    ),
                ));
            }
        };
        let protocol = parse_protocol(cx, m.get("protocol"), &join(&at, "protocol"))?;
        let not_protocol = parse_protocol(cx, m.get("notProtocol"), &join(&at, "notProtocol"))?;
        let ip_version = match m.get("ipVersion") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(4) => Some(4),
                Some(6) => Some(6),
                _ => {
                    return Err(cx.err(
                        &join(&at, "ipVersion"),
                        format!("{} is not 4 or 6", quoted(&v.to_string())),
                    ));
                }
            },
        };
        let icmp = !matches!(m.get("icmp"), None | Some(Value::Null))
            || !matches!(m.get("notICMP"), None | Some(Value::Null));
        if egress && !matches!(m.get("http"), None | Some(Value::Null)) {
            return Err(cx.err(
                &join(&at, "http"),
                "application layer (http) matches are not allowed in egress rules",
            ));
        }
        let source = parse_entity(cx, m.get("source"), &join(&at, "source"))?;
        let mut destination = parse_entity(cx, m.get("destination"), &join(&at, "destination"))?;
        if egress && source.services.is_some() {
            return Err(cx.err(
                &format!("{at}.source.services"),
                "not allowed in an egress rule's source",
            ));
        }
        if !egress && destination.services.is_some() {
            return Err(cx.err(
                &format!("{at}.destination.services"),
                "not allowed in an ingress rule's destination",
            ));
        }
        for (side, e) in [("source", &source), ("destination", &destination)] {
            check_ports(cx, protocol.as_ref(), e, &format!("{at}.{side}"))?;
        }
        check_nets(cx, ip_version, [&source, &destination], &at)?;
        if let Some(s) = destination.services.as_mut()
            && s.namespace.is_none()
        {
            if global {
                return Err(cx.err(
                    &format!("{at}.destination.services.namespace"),
                    "missing: a GlobalNetworkPolicy must name the Service's namespace",
                ));
            }
            s.namespace = namespace.map(str::to_string);
        }
        out.push(Rule {
            label: format!("{key}[{i}]"),
            action,
            protocol,
            not_protocol,
            ip_version,
            icmp,
            source,
            destination,
        });
    }
    Ok(out)
}

fn parse_protocol(
    cx: &Ctx,
    v: Option<&Value>,
    field: &str,
) -> Result<Option<ProtocolMatch>, CalicoError> {
    const NAMES: [(&str, u8); 6] = [
        ("TCP", 6),
        ("UDP", 17),
        ("ICMP", 1),
        ("ICMPv6", 58),
        ("SCTP", 132),
        ("UDPLite", 136),
    ];
    let bad = |what: String| {
        cx.err(
            field,
            format!("{what} is not a protocol: write TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or a number from 1 to 255"),
        )
    };
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(x @ 1..=255) => Ok(Some(ProtocolMatch {
                number: x as u8,
                name: x.to_string(),
            })),
            _ => Err(bad(format!("`{n}`"))),
        },
        Some(Value::String(s)) => {
            if let Some((n, num)) = NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(s)) {
                return Ok(Some(ProtocolMatch {
                    number: *num,
                    name: (*n).to_string(),
                }));
            }
            match s.parse::<u8>() {
                Ok(x) if x >= 1 => Ok(Some(ProtocolMatch {
                    number: x,
                    name: s.clone(),
                })),
                _ => Err(bad(quoted(s).to_string())),
            }
        }
        Some(other) => Err(bad(type_name(other).to_string())),
    }
}

fn parse_net(cx: &Ctx, v: &Value, field: &str) -> Result<IpNet, CalicoError> {
    let Some(s) = v.as_str() else {
        return Err(cx.err(
            field,
            format!("expected a CIDR string, found {}", type_name(v)),
        ));
    };
    // IPv4-mapped forms are the IPv4 prefix they map, as libcalico-go reads them
    // (`::ffff:169.254.169.254/128` is 169.254.169.254/32).
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(fold_mapped_net(n.trunc()));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(crate::target::canonical_ip(ip)));
    }
    Err(cx.err(
        field,
        format!(
            "{} is not a CIDR: write e.g. 169.254.169.254/32 or fd00::/8",
            quoted(s)
        ),
    ))
}

fn parse_ports(cx: &Ctx, list: &[Value], field: &str) -> Result<Vec<PortMatch>, CalicoError> {
    let mut out = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let bad = |s: &str| {
            cx.err(
                &at,
                format!(
                    "{} is not a port: write a number (80), a range (\"6040:6050\") or a port name",
                    quoted(s)
                ),
            )
        };
        let p = match v {
            Value::Number(n) => match n.as_u64().and_then(|x| u16::try_from(x).ok()) {
                Some(x) => PortMatch::Range { first: x, last: x },
                None => return Err(bad(&n.to_string())),
            },
            Value::String(s) => {
                if let Ok(x) = s.parse::<u16>() {
                    PortMatch::Range { first: x, last: x }
                } else if let Some((a, b)) = s.split_once(':') {
                    match (a.parse::<u16>(), b.parse::<u16>()) {
                        (Ok(first), Ok(last)) if first <= last => PortMatch::Range { first, last },
                        (Ok(_), Ok(_)) => {
                            return Err(cx.err(
                                &at,
                                format!("{}: the range's start is above its end", quoted(s)),
                            ));
                        }
                        _ => return Err(bad(s)),
                    }
                } else if !s.is_empty()
                    && s.len() <= 63
                    && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    PortMatch::Named(s.clone())
                } else {
                    return Err(bad(s));
                }
            }
            other => return Err(bad(type_name(other))),
        };
        out.push(p);
    }
    Ok(out)
}

fn parse_entity(cx: &Ctx, v: Option<&Value>, at: &str) -> Result<EntityRule, CalicoError> {
    let Some(m) = cx.obj(v.unwrap_or(&Value::Null), at)? else {
        return Ok(EntityRule::default());
    };
    let mut e = EntityRule::default();
    for (i, n) in cx.list(m, "nets", at)?.iter().enumerate() {
        e.nets.push(parse_net(cx, n, &format!("{at}.nets[{i}]"))?);
    }
    for (i, n) in cx.list(m, "notNets", at)?.iter().enumerate() {
        e.not_nets
            .push(parse_net(cx, n, &format!("{at}.notNets[{i}]"))?);
    }
    e.selector = cx.selector(cx.string(m, "selector", at)?, &join(at, "selector"))?;
    e.not_selector = cx.selector(cx.string(m, "notSelector", at)?, &join(at, "notSelector"))?;
    e.namespace_selector = cx.selector(
        cx.string(m, "namespaceSelector", at)?,
        &join(at, "namespaceSelector"),
    )?;
    for (field, s) in [("selector", &e.selector), ("notSelector", &e.not_selector)] {
        if s.as_ref().is_some_and(Selector::uses_global) {
            return Err(cx.err(
                &join(at, field),
                "global() may only be used in namespaceSelector",
            ));
        }
    }
    if let Some(ns) = &e.namespace_selector
        && ns.uses_global()
        && !ns.is_global()
    {
        return Err(cx.err(
            &join(at, "namespaceSelector"),
            "global() must be the whole namespaceSelector, not part of an expression",
        ));
    }
    e.ports = parse_ports(cx, cx.list(m, "ports", at)?, &join(at, "ports"))?;
    e.not_ports = parse_ports(cx, cx.list(m, "notPorts", at)?, &join(at, "notPorts"))?;
    let sa_at = join(at, "serviceAccounts");
    if let Some(sa) = cx.obj(m.get("serviceAccounts").unwrap_or(&Value::Null), &sa_at)? {
        let mut names = Vec::new();
        for (i, n) in cx.list(sa, "names", &sa_at)?.iter().enumerate() {
            match n.as_str() {
                Some(s) => names.push(s.to_string()),
                None => {
                    return Err(cx.err(
                        &format!("{sa_at}.names[{i}]"),
                        format!("expected a service account name, found {}", type_name(n)),
                    ));
                }
            }
        }
        let selector = cx.selector(
            cx.string(sa, "selector", &sa_at)?,
            &join(&sa_at, "selector"),
        )?;
        e.service_accounts = Some(ServiceAccountMatch { names, selector });
    }
    let svc_at = join(at, "services");
    if let Some(svc) = cx.obj(m.get("services").unwrap_or(&Value::Null), &svc_at)? {
        let name = cx.string(svc, "name", &svc_at)?.unwrap_or_default();
        if name.is_empty() {
            return Err(cx.err(&join(&svc_at, "name"), "missing: name the Service"));
        }
        if e.selector.is_some() || e.not_selector.is_some() {
            return Err(cx.err(&svc_at, "cannot be combined with selector or notSelector"));
        }
        if !e.nets.is_empty() || !e.not_nets.is_empty() {
            return Err(cx.err(&svc_at, "cannot be combined with nets or notNets"));
        }
        let namespace = cx
            .string(svc, "namespace", &svc_at)?
            .filter(|s| !s.is_empty());
        e.services = Some(ServiceMatch { name, namespace });
    }
    Ok(e)
}

fn check_ports(
    cx: &Ctx,
    protocol: Option<&ProtocolMatch>,
    e: &EntityRule,
    at: &str,
) -> Result<(), CalicoError> {
    for (field, list) in [("ports", &e.ports), ("notPorts", &e.not_ports)] {
        if list.is_empty() {
            continue;
        }
        match protocol {
            None if list.iter().any(|p| matches!(p, PortMatch::Range { .. })) => {
                return Err(cx.err(
                    &join(at, field),
                    "numeric ports need a protocol: set the rule's protocol to TCP, UDP or SCTP",
                ));
            }
            Some(p) if !p.supports_ports() => {
                return Err(cx.err(
                    &join(at, field),
                    format!(
                        "protocol {} has no ports: use TCP, UDP, SCTP or UDPLite",
                        p.name
                    ),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_nets(
    cx: &Ctx,
    ip_version: Option<u8>,
    sides: [&EntityRule; 2],
    at: &str,
) -> Result<(), CalicoError> {
    let (mut v4, mut v6) = (false, false);
    for (side, e) in ["source", "destination"].iter().zip(sides) {
        for (field, nets) in [("nets", &e.nets), ("notNets", &e.not_nets)] {
            for n in nets {
                let version = if n.addr().is_ipv4() { 4 } else { 6 };
                if ip_version.is_some_and(|v| v != version) {
                    return Err(cx.err(
                        &format!("{at}.{side}.{field}"),
                        format!(
                            "{n} is IPv{version} but the rule's ipVersion is {}",
                            ip_version.unwrap_or(0)
                        ),
                    ));
                }
                v4 |= version == 4;
                v6 |= version == 6;
            }
        }
    }
    if v4 && v6 {
        return Err(cx.err(
            at,
            "the rule mixes IPv4 and IPv6 CIDRs: split it into one rule per IP version",
        ));
    }
    Ok(())
}
