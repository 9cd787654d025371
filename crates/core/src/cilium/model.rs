//! The Cilium policy objects as data, after parsing: only what decides egress, with the
//! place each came from.

use std::collections::HashMap;
use std::fmt;

use ipnet::IpNet;
use serde::Serialize;

use crate::model::{Operator, Source};

/// CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy (or, as the composition names
/// deciding objects, a Kubernetes NetworkPolicy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum PolicyKind {
    /// `cilium.io/v2` CiliumNetworkPolicy (namespaced).
    #[serde(rename = "CiliumNetworkPolicy")]
    Namespaced,
    /// `cilium.io/v2` CiliumClusterwideNetworkPolicy.
    #[serde(rename = "CiliumClusterwideNetworkPolicy")]
    Clusterwide,
    /// `networking.k8s.io/v1` NetworkPolicy, as Cilium enforces it.
    #[serde(rename = "NetworkPolicy")]
    NetworkPolicy,
}

impl PolicyKind {
    /// The Kubernetes kind.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Namespaced => "CiliumNetworkPolicy",
            PolicyKind::Clusterwide => "CiliumClusterwideNetworkPolicy",
            PolicyKind::NetworkPolicy => "NetworkPolicy",
        }
    }
}

/// A policy object: kind, namespace (none for a CCNP) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PolicyRef {
    /// Kind.
    pub kind: PolicyKind,
    /// Namespace (`None` for a clusterwide policy).
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind.as_str(), self.name),
            None => write!(f, "{} {}", self.kind.as_str(), self.name),
        }
    }
}

/// The source a selector key names (`k8s:app`, `any:app` or just `app`, `reserved:host`
/// or `$host`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SelKey {
    /// No source or `any:`: a label of any source with this key.
    Any(String),
    /// `k8s:`: a Kubernetes label (pod labels and the labels Cilium derives from the
    /// namespace, service account and cluster).
    K8s(String),
    /// `reserved:` (or `$`): Cilium's reserved identities (`host`, `world`, ...).
    Reserved(String),
    /// Any other source (`container:`, `cidr:`, ...): never on a pod managed by Kubernetes.
    Other(String, String),
}

impl SelKey {
    /// Reads a key as Cilium does: the text before the first `:` is the source, `$x` is
    /// `reserved:x`, no source means any.
    pub fn parse(key: &str) -> SelKey {
        if let Some(rest) = key.strip_prefix('$') {
            return SelKey::Reserved(rest.to_string());
        }
        match key.split_once(':') {
            None => SelKey::Any(key.to_string()),
            Some(("any", k)) => SelKey::Any(k.to_string()),
            Some(("k8s", k)) => SelKey::K8s(k.to_string()),
            Some(("reserved", k)) => SelKey::Reserved(k.to_string()),
            Some((src, k)) => SelKey::Other(src.to_string(), k.to_string()),
        }
    }

    /// The key without its source.
    pub fn key(&self) -> &str {
        match self {
            SelKey::Any(k) | SelKey::K8s(k) | SelKey::Reserved(k) | SelKey::Other(_, k) => k,
        }
    }
}

impl fmt::Display for SelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SelKey::Any(k) => write!(f, "any:{k}"),
            SelKey::K8s(k) => write!(f, "k8s:{k}"),
            SelKey::Reserved(k) => write!(f, "reserved:{k}"),
            SelKey::Other(s, k) => write!(f, "{s}:{k}"),
        }
    }
}

/// One requirement of a Cilium endpoint selector (`matchLabels` entries become `In` with
/// one value).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SelReq {
    /// Key with its source.
    pub key: SelKey,
    /// Operator.
    pub operator: Operator,
    /// Values for `In` / `NotIn`.
    pub values: Vec<String>,
}

/// A Cilium endpoint (or node) selector: all requirements must hold; `{}` selects every
/// identity, reserved ones (`world`, `host`) included.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    /// Requirements, `matchLabels` first.
    pub requirements: Vec<SelReq>,
}

impl Selector {
    /// Whether a requirement names `key` (any operator).
    pub fn has_key(&self, key: &SelKey) -> bool {
        self.requirements.iter().any(|r| &r.key == key)
    }

    /// Whether a requirement uses a `reserved:` key.
    pub fn has_reserved_key(&self) -> bool {
        self.requirements
            .iter()
            .any(|r| matches!(r.key, SelKey::Reserved(_)))
    }
}

/// A Cilium entity (`toEntities`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    /// Everything, inside and outside the cluster.
    All,
    /// Outside the cluster.
    World,
    /// Outside the cluster, IPv4.
    WorldIpv4,
    /// Outside the cluster, IPv6.
    WorldIpv6,
    /// Inside the cluster (endpoints, nodes, unmanaged endpoints).
    Cluster,
    /// The local node (and its hostNetwork pods).
    Host,
    /// The other nodes.
    RemoteNode,
    /// The kube-apiserver.
    KubeApiserver,
    /// Endpoints whose identity is not resolved yet.
    Init,
    /// The Cilium ingress (Envoy).
    Ingress,
    /// The health endpoints.
    Health,
    /// Endpoints not managed by Cilium.
    Unmanaged,
    /// Nothing.
    None,
}

impl Entity {
    /// Every entity with its name.
    pub const ALL: [(&'static str, Entity); 13] = [
        ("all", Entity::All),
        ("world", Entity::World),
        ("world-ipv4", Entity::WorldIpv4),
        ("world-ipv6", Entity::WorldIpv6),
        ("cluster", Entity::Cluster),
        ("host", Entity::Host),
        ("remote-node", Entity::RemoteNode),
        ("kube-apiserver", Entity::KubeApiserver),
        ("init", Entity::Init),
        ("ingress", Entity::Ingress),
        ("health", Entity::Health),
        ("unmanaged", Entity::Unmanaged),
        ("none", Entity::None),
    ];

    /// The policy name (`world`, `remote-node`, ...).
    pub fn as_str(self) -> &'static str {
        Entity::ALL
            .iter()
            .find(|(_, e)| *e == self)
            .map(|(n, _)| *n)
            .unwrap_or("none")
    }

    /// The entity for a policy name.
    pub fn from_name(name: &str) -> Option<Entity> {
        Entity::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, e)| *e)
    }
}

/// One `toCIDRSet` entry (or a `toCIDR` prefix, without exceptions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CidrRule {
    /// A prefix less its exceptions.
    Cidr {
        /// The prefix.
        cidr: IpNet,
        /// Prefixes cut out of it.
        except: Vec<IpNet>,
    },
    /// `cidrGroupRef`: the CIDRs of a CiliumCIDRGroup, resolved at evaluation.
    GroupRef(String),
    /// `cidrGroupSelector`: the CIDRs of every CiliumCIDRGroup whose labels it selects,
    /// resolved at evaluation.
    GroupSelector(crate::model::LabelSelector),
}

/// An L3 peer of a rule: the one `to*` field it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// `toEndpoints` (after Cilium's namespace scoping).
    Endpoints(Vec<Selector>),
    /// `toCIDR` / `toCIDRSet`.
    Cidr(Vec<CidrRule>),
    /// `toEntities`.
    Entities(Vec<Entity>),
    /// `toServices`: Services are not read, never evaluated (reported).
    Services(usize),
    /// `toFQDNs` (`matchName` / `matchPattern`): cannot be evaluated for an address.
    Fqdns(Vec<String>),
    /// `toGroups` (cloud security groups): never resolved (reported).
    Groups(usize),
    /// `toNodes`: node selectors.
    Nodes(Vec<Selector>),
}

/// An L4 protocol of `toPorts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum L4Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
    /// `ANY` or empty: TCP, UDP and SCTP.
    Any,
    /// ICMP / ICMPv6: never a TCP/UDP/SCTP connection.
    Icmp,
}

/// A `toPorts[].ports[].port` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSel {
    /// A number; `0` means every port.
    Number(u16),
    /// A named port, resolved on the destination pod (never matches an address outside
    /// the cluster).
    Named(String),
}

/// One `ports` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortProtocol {
    /// Port.
    pub port: PortSel,
    /// `endPort` (ignored for a named port or when not above `port`).
    pub end_port: Option<u16>,
    /// Protocol.
    pub protocol: L4Proto,
}

/// The kind of L7 rules of a `toPorts` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum L7Kind {
    /// `rules.http`.
    Http,
    /// `rules.kafka`.
    Kafka,
    /// `rules.dns`.
    Dns,
    /// `rules.l7proto` / `rules.l7`.
    Generic,
    /// `serverNames` (TLS SNI) without L7 rules.
    Sni,
}

/// One `toPorts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRule {
    /// `ports` (empty: the entry matches nothing).
    pub ports: Vec<PortProtocol>,
    /// L7 filtering that applies once the connection is allowed at L4.
    pub l7: Option<L7Kind>,
}

/// One `egress` or `egressDeny` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The L3 peer; `None` when the rule names none (with `toPorts` it then applies to
    /// every destination, without it the rule matches nothing).
    pub peer: Option<Peer>,
    /// `toRequires` selectors (deprecated; folded into every `toEndpoints` selector of
    /// the rules that select the same endpoint).
    pub to_requires: Vec<Selector>,
    /// `toPorts`.
    pub to_ports: Vec<PortRule>,
    /// Whether `icmps` is set (the rule then matches ICMP only).
    pub icmps: bool,
    /// `authentication.mode` (mutual authentication required before traffic flows).
    pub authentication: Option<String>,
}

/// Which endpoints a spec applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// `endpointSelector` (for a CNP, already restricted to the policy's namespace).
    Endpoints(Selector),
    /// `nodeSelector`: a host policy, applies to nodes, never to pods.
    Nodes(Selector),
}

/// One rule set of a policy (`spec` or an entry of `specs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Where it sits: `""` for a lone `spec`, `"spec."` or `"specs[1]."` otherwise; rule
    /// names are this prefix plus `egress[i]` / `egressDeny[i]`.
    pub at: String,
    /// Subject.
    pub subject: Subject,
    /// `egress` (an absent field and `[]` are the same: no rules).
    pub egress: Vec<Rule>,
    /// `egressDeny`.
    pub egress_deny: Vec<Rule>,
    /// Number of `ingress` rules (parsed, not evaluated for egress).
    pub ingress: usize,
    /// Number of `ingressDeny` rules (parsed, not evaluated for egress).
    pub ingress_deny: usize,
    /// `enableDefaultDeny.egress` as written.
    pub default_deny_egress: Option<bool>,
    /// `enableDefaultDeny.ingress` as written.
    pub default_deny_ingress: Option<bool>,
    /// Notes from parsing (e.g. an endpointSelector naming another namespace).
    pub warnings: Vec<String>,
}

impl Spec {
    /// Whether the spec has egress rules (`egress` or `egressDeny` not empty): only then
    /// it counts for egress at all.
    pub fn has_egress(&self) -> bool {
        !self.egress.is_empty() || !self.egress_deny.is_empty()
    }

    /// Whether it turns on egress default-deny for the endpoints it selects:
    /// `enableDefaultDeny.egress` defaults to true when the spec has egress rules, and
    /// has no effect when it has none.
    pub fn egress_default_deny(&self) -> bool {
        self.has_egress() && self.default_deny_egress.unwrap_or(true)
    }
}

/// A CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CiliumPolicy {
    /// Kind, namespace, name.
    pub id: PolicyRef,
    /// Rule sets (`spec` then `specs`).
    pub specs: Vec<Spec>,
    /// Why the Cilium agent rejects the whole object, if it does (it then has no effect).
    pub rejected: Option<String>,
    /// Where it was read.
    pub source: Source,
}

/// A `CiliumCIDRGroup`: named CIDRs that `cidrGroupRef` points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrGroup {
    /// Name.
    pub name: String,
    /// `metadata.labels` (what `cidrGroupSelector` selects).
    pub labels: crate::model::Labels,
    /// `spec.externalCIDRs`.
    pub cidrs: Vec<IpNet>,
    /// Where it was read.
    pub source: Source,
}

/// Every Cilium policy of the input, indexed for evaluation.
#[derive(Debug, Clone, Default)]
pub struct CiliumPolicies {
    /// Clusterwide policies, sorted by name.
    pub clusterwide: Vec<CiliumPolicy>,
    /// Namespaced policies by namespace, each list sorted by name.
    pub namespaced: HashMap<String, Vec<CiliumPolicy>>,
    /// CIDR groups by name.
    pub cidr_groups: HashMap<String, CidrGroup>,
}

impl CiliumPolicies {
    /// Builds the index; a later object with the same kind, namespace and name replaces an
    /// earlier one (as `kubectl apply` would).
    pub fn new(
        policies: impl IntoIterator<Item = CiliumPolicy>,
        groups: impl IntoIterator<Item = CidrGroup>,
    ) -> CiliumPolicies {
        let mut by_id: HashMap<PolicyRef, CiliumPolicy> = HashMap::new();
        for p in policies {
            by_id.insert(p.id.clone(), p);
        }
        let mut out = CiliumPolicies::default();
        for (id, p) in by_id {
            match id.namespace.clone() {
                None => out.clusterwide.push(p),
                Some(ns) => out.namespaced.entry(ns).or_default().push(p),
            }
        }
        out.clusterwide.sort_by(|a, b| a.id.cmp(&b.id));
        for list in out.namespaced.values_mut() {
            list.sort_by(|a, b| a.id.cmp(&b.id));
        }
        out.cidr_groups = groups.into_iter().map(|g| (g.name.clone(), g)).collect();
        out
    }

    /// Whether there is no policy at all.
    pub fn is_empty(&self) -> bool {
        self.clusterwide.is_empty() && self.namespaced.is_empty()
    }

    /// Number of policies.
    pub fn len(&self) -> usize {
        self.clusterwide.len() + self.namespaced.values().map(Vec::len).sum::<usize>()
    }

    /// The policies that can apply to a pod of `namespace`: every clusterwide policy, then
    /// the namespace's own.
    pub fn for_namespace<'a>(&'a self, namespace: &str) -> impl Iterator<Item = &'a CiliumPolicy> {
        self.clusterwide
            .iter()
            .chain(self.namespaced.get(namespace).into_iter().flatten())
    }

    /// Every policy (clusterwide first, then namespaces in name order).
    pub fn iter(&self) -> impl Iterator<Item = &CiliumPolicy> {
        let mut namespaces: Vec<&String> = self.namespaced.keys().collect();
        namespaces.sort();
        self.clusterwide
            .iter()
            .chain(namespaces.into_iter().flat_map(|ns| &self.namespaced[ns]))
    }
}
