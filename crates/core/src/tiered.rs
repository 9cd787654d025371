//! The cluster-scoped policies of sigs.k8s.io/network-policy-api, in one model:
//! AdminNetworkPolicy and BaselineAdminNetworkPolicy (`policy.networking.k8s.io/v1alpha1`)
//! and ClusterNetworkPolicy (`v1alpha2`, and the same spec under `v1beta1`).
//!
//! Semantics (sources: the API types,
//! <https://github.com/kubernetes-sigs/network-policy-api/blob/main/apis/v1beta1/clusternetworkpolicy_types.go>
//! and `apis/v1alpha1/{adminnetworkpolicy,baselineadminnetworkpolicy,shared}_types.go`):
//!
//! - two tiers: Admin (ANP, CNP `tier: Admin`) before NetworkPolicy, Baseline (BANP, CNP
//!   `tier: Baseline`) after it; [`crate::engine::decide`] composes them;
//! - inside a tier, policies by ascending `priority` (0–1000), rules in written order, the
//!   first matching rule decides: `Accept` (ANP/BANP `Allow`) and `Deny` are final, `Pass`
//!   skips the rest of the tier;
//! - two policies of one tier with the same priority that both match a connection give an
//!   undefined result: [`decide_tier`] decides by name and returns the tie;
//! - the BaselineAdminNetworkPolicy is a singleton named `default` (the API server refuses
//!   any other name): others are kept for the report and never evaluated;
//! - host-network pods are neither subjects nor peers;
//! - a peer with no field this reader knows (a newer CRD) fails closed: an Accept rule
//!   treats it as matching nothing, a Deny or Pass rule as a "Deny all" rule (a Pass
//!   rule then denies: it does not pass).
//!
//! Only egress is read: ingress rules cannot stop a pod from reaching an address outside
//! the cluster.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;
use serde_json::Value;

use crate::engine::Destination;
use crate::model::{LabelSelector, Labels, Source};
use crate::quote::{clip, quoted};
use crate::target::Protocol;

/// The API group of these kinds.
pub const GROUP: &str = "policy.networking.k8s.io";

/// The most rules the API accepts in a ClusterNetworkPolicy's `egress` (25) and in an
/// AdminNetworkPolicy's (100); only used in messages.
const CNP_MAX_RULES: usize = 25;

/// Which kind of cluster-scoped policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum TieredKind {
    /// `AdminNetworkPolicy` (v1alpha1): the Admin tier.
    AdminNetworkPolicy,
    /// `BaselineAdminNetworkPolicy` (v1alpha1): the Baseline tier, singleton `default`.
    BaselineAdminNetworkPolicy,
    /// `ClusterNetworkPolicy` (v1alpha2, v1beta1): either tier.
    ClusterNetworkPolicy,
}

impl TieredKind {
    /// The Kubernetes kind name.
    pub fn as_str(self) -> &'static str {
        match self {
            TieredKind::AdminNetworkPolicy => "AdminNetworkPolicy",
            TieredKind::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
            TieredKind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
        }
    }

    /// The kind for a kind name of [`GROUP`] (any version: [`parse`] checks it).
    pub fn from_kind(kind: &str) -> Option<TieredKind> {
        Some(match kind {
            "AdminNetworkPolicy" => TieredKind::AdminNetworkPolicy,
            "BaselineAdminNetworkPolicy" => TieredKind::BaselineAdminNetworkPolicy,
            "ClusterNetworkPolicy" => TieredKind::ClusterNetworkPolicy,
            _ => return None,
        })
    }

    /// The API versions this reader understands for the kind.
    pub fn versions(self) -> &'static [&'static str] {
        match self {
            TieredKind::AdminNetworkPolicy | TieredKind::BaselineAdminNetworkPolicy => {
                &["v1alpha1"]
            }
            TieredKind::ClusterNetworkPolicy => &["v1alpha2", "v1beta1"],
        }
    }
}

impl fmt::Display for TieredKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The tier a policy belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TierLevel {
    /// Before NetworkPolicy.
    Admin,
    /// After NetworkPolicy.
    Baseline,
}

/// A rule's action; AdminNetworkPolicy's `Allow` is read as `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Action {
    /// Accept (`Allow` in v1alpha1): final.
    Accept,
    /// Deny: final.
    Deny,
    /// Pass: skip the rest of the tier.
    Pass,
}

impl Action {
    /// The action as the policy's kind spells it.
    pub fn spelled(self, kind: TieredKind) -> &'static str {
        match (self, kind) {
            (Action::Accept, TieredKind::ClusterNetworkPolicy) => "Accept",
            (Action::Accept, _) => "Allow",
            (Action::Deny, _) => "Deny",
            (Action::Pass, _) => "Pass",
        }
    }
}

/// The pods a policy applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// `namespaces`: every pod of the selected namespaces.
    Namespaces(LabelSelector),
    /// `pods`: the pods selected by `podSelector` in the namespaces of `namespaceSelector`.
    Pods {
        /// `namespaceSelector`.
        namespace_selector: LabelSelector,
        /// `podSelector`.
        pod_selector: LabelSelector,
    },
}

impl Subject {
    /// Whether the subject selects a (non-host-network) pod with these labels in a
    /// namespace with these labels.
    pub fn selects(&self, ns_labels: &Labels, pod_labels: &Labels) -> bool {
        match self {
            Subject::Namespaces(ns) => ns.matches(ns_labels),
            Subject::Pods {
                namespace_selector,
                pod_selector,
            } => namespace_selector.matches(ns_labels) && pod_selector.matches(pod_labels),
        }
    }

    /// The pod selector, when the subject has one (`pods`).
    pub fn pod_selector(&self) -> Option<&LabelSelector> {
        match self {
            Subject::Namespaces(_) => None,
            Subject::Pods { pod_selector, .. } => Some(pod_selector),
        }
    }

    /// Whether the subject selects pods of a namespace with these labels (all of them
    /// when [`Subject::pod_selector`] is `None`).
    pub fn selects_namespace(&self, ns_labels: &Labels) -> bool {
        match self {
            Subject::Namespaces(ns) => ns.matches(ns_labels),
            Subject::Pods {
                namespace_selector, ..
            } => namespace_selector.matches(ns_labels),
        }
    }
}

/// An egress peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// `namespaces`: the pods of the selected namespaces.
    Namespaces(LabelSelector),
    /// `pods`: pods by namespace AND pod selector.
    Pods {
        /// `namespaceSelector`.
        namespace_selector: LabelSelector,
        /// `podSelector`.
        pod_selector: LabelSelector,
    },
    /// `nodes`: the addresses of the selected nodes (`status.addresses`).
    Nodes(LabelSelector),
    /// `networks`: CIDRs; they match pod and node addresses too.
    Networks(Vec<IpNet>),
    /// `domainNames`: names the pod resolves (Accept rules only).
    DomainNames(Vec<String>),
    /// A peer with none of the fields above: the CRD is newer than this reader. The
    /// fields found are kept for the report. Fails closed (see [`Rule::matches`]).
    Unknown(Vec<String>),
}

/// Well-known names of metadata endpoints that a `domainNames` peer may name.
/// GCP: "metadata.google.internal" resolves to 169.254.169.254
/// (<https://cloud.google.com/compute/docs/metadata/querying-metadata>).
const METADATA_NAMES: [(&str, IpAddr); 1] = [(
    "metadata.google.internal",
    IpAddr::V4(std::net::Ipv4Addr::new(169, 254, 169, 254)),
)];

/// The well-known metadata endpoint names ([`METADATA_NAMES`]) that resolve to an
/// address: what a name-based peer (a ClusterNetworkPolicy `domainNames`, a Cilium
/// `toFQDNs`) must match to select it.
pub fn metadata_names(ip: IpAddr) -> impl Iterator<Item = &'static str> {
    METADATA_NAMES
        .iter()
        .filter(move |(_, a)| *a == ip)
        .map(|(name, _)| *name)
}

/// Whether a `domainNames` entry (exact, or `*.` + one or more whole labels) matches a
/// name.
pub fn domain_matches(pattern: &str, name: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .strip_suffix(suffix)
            .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        None => pattern == name,
    }
}

impl Peer {
    /// Whether the peer selects the destination. Selector peers select pods (and nodes)
    /// only, never an address outside the cluster; `networks` selects any address,
    /// pods' and nodes' included; `domainNames` selects an external address only when it
    /// names a metadata endpoint's well-known name that resolves to it.
    pub fn matches(&self, dst: &Destination) -> bool {
        self.matches_with(dst, true)
    }

    /// [`Peer::matches`], with `address_peers: false` making the address-based peers
    /// (`networks`, `domainNames`) match nothing: how an engine that turns them into
    /// CIDR selectors sees a destination it does not classify as an outside address
    /// (Cilium and a link-local address its node owns, [`crate::cilium::LinkLocalAs`]).
    pub fn matches_with(&self, dst: &Destination, address_peers: bool) -> bool {
        match (self, dst) {
            (Peer::Networks(_) | Peer::DomainNames(_), _) if !address_peers => false,
            (Peer::Networks(nets), d) => d
                .ip()
                .is_some_and(|ip| nets.iter().any(|n| n.contains(&ip))),
            (Peer::Namespaces(sel), Destination::Pod { ns_labels, .. }) => sel.matches(ns_labels),
            (
                Peer::Pods {
                    namespace_selector,
                    pod_selector,
                },
                Destination::Pod {
                    ns_labels, labels, ..
                },
            ) => namespace_selector.matches(ns_labels) && pod_selector.matches(labels),
            (Peer::Nodes(sel), Destination::Node { labels, .. }) => sel.matches(labels),
            (Peer::DomainNames(names), Destination::External(t)) => names
                .iter()
                .any(|p| metadata_names(t.ip).any(|name| domain_matches(p, name))),
            (Peer::Unknown(_), _) => false,
            _ => false,
        }
    }
}

/// A port condition of a rule (ANP `ports`, CNP `protocols`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortMatch {
    /// A protocol and an inclusive port range (one port: `start == end`); `None`: every
    /// port of the protocol.
    Ports {
        /// Protocol.
        protocol: Protocol,
        /// Inclusive range.
        range: Option<(u16, u16)>,
    },
    /// A named container port: resolves on a destination pod only.
    Named(String),
}

impl PortMatch {
    /// Whether the destination's protocol and port satisfy this condition.
    pub fn matches(&self, dst: &Destination) -> bool {
        let (protocol, port) = dst.protocol_port();
        match self {
            PortMatch::Ports { protocol: p, range } => {
                *p == protocol && range.is_none_or(|(a, b)| (a..=b).contains(&port))
            }
            PortMatch::Named(name) => match dst {
                Destination::Pod { named_ports, .. } => named_ports
                    .iter()
                    .any(|(n, p, num)| n == name && *p == protocol && *num == port),
                _ => false,
            },
        }
    }
}

/// One egress rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `name` (may be empty).
    pub name: String,
    /// What a match does.
    pub action: Action,
    /// Destinations (at least one).
    pub to: Vec<Peer>,
    /// Port conditions; `None`: every port and protocol.
    pub ports: Option<Vec<PortMatch>>,
}

impl Rule {
    /// Whether the rule's peers include a peer this reader does not know.
    pub fn has_unknown_peer(&self) -> bool {
        self.to.iter().any(|p| matches!(p, Peer::Unknown(_)))
    }

    /// What the rule does when it matches. A Pass rule with a peer of unknown shape fails
    /// closed as a Deny: both API versions say 'For "Deny" and "Pass" rules, "fail
    /// closed" means: "treat the rule as a 'Deny all' rule"' (v1alpha1
    /// `AdminNetworkPolicyEgressPeer`, v1alpha2/v1beta1 `ClusterNetworkPolicyEgressPeer`).
    pub fn effective_action(&self) -> Action {
        if self.action == Action::Pass && self.has_unknown_peer() {
            Action::Deny
        } else {
            self.action
        }
    }

    /// Whether the rule matches the destination. A peer of unknown shape fails closed:
    /// for Accept it matches nothing, for Deny and Pass the whole rule matches all
    /// traffic ("treat the rule as a 'Deny all' rule"), and a Pass rule then denies
    /// ([`Rule::effective_action`]).
    pub fn matches(&self, dst: &Destination) -> bool {
        self.matches_with(dst, true)
    }

    /// [`Rule::matches`] with [`Peer::matches_with`]'s `address_peers`.
    pub fn matches_with(&self, dst: &Destination, address_peers: bool) -> bool {
        if self.action != Action::Accept && self.has_unknown_peer() {
            return true;
        }
        let port_ok = self
            .ports
            .as_ref()
            .is_none_or(|ports| ports.iter().any(|p| p.matches(dst)));
        port_ok && self.to.iter().any(|p| p.matches_with(dst, address_peers))
    }

    /// Whether the rule has a `networks` or `domainNames` peer.
    pub fn has_address_peer(&self) -> bool {
        self.to
            .iter()
            .any(|p| matches!(p, Peer::Networks(_) | Peer::DomainNames(_)))
    }
}

/// An AdminNetworkPolicy, BaselineAdminNetworkPolicy or ClusterNetworkPolicy.
#[derive(Debug, Clone)]
pub struct TieredPolicy {
    /// Kind.
    pub kind: TieredKind,
    /// The version read (`v1alpha1`, `v1alpha2`, `v1beta1`).
    pub version: String,
    /// Name (cluster-scoped: no namespace).
    pub name: String,
    /// Tier.
    pub tier: TierLevel,
    /// `priority` (0–1000, lower first); `None` for a BaselineAdminNetworkPolicy.
    pub priority: Option<u32>,
    /// Whom it applies to.
    pub subject: Subject,
    /// Egress rules in precedence order.
    pub egress: Vec<Rule>,
    /// Where it was read.
    pub source: Source,
}

impl TieredPolicy {
    /// `Kind/name`, as kubectl names cluster-scoped objects.
    pub fn id(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }

    /// Whether the object can exist in a cluster: a BaselineAdminNetworkPolicy must be
    /// named `default` (the API server refuses any other name).
    pub fn is_valid_singleton(&self) -> bool {
        self.kind != TieredKind::BaselineAdminNetworkPolicy || self.name == "default"
    }

    /// Sort key inside a tier: priority (none last), then kind, then name. Implementations
    /// may pick any of the policies that tie on priority; this order is only what the
    /// report shows first.
    pub fn precedence(&self) -> (u32, TieredKind, &str) {
        (self.priority.unwrap_or(u32::MAX), self.kind, &self.name)
    }

    /// The first rule that matches the destination, with its index.
    pub fn first_match(&self, dst: &Destination) -> Option<(usize, &Rule)> {
        self.first_match_with(dst, true)
    }

    /// [`TieredPolicy::first_match`] with [`Peer::matches_with`]'s `address_peers`.
    pub fn first_match_with(
        &self,
        dst: &Destination,
        address_peers: bool,
    ) -> Option<(usize, &Rule)> {
        self.egress
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches_with(dst, address_peers))
    }
}

/// A policy and one of its egress rules (indexes into the cluster's tiered policies and
/// that policy's `egress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TieredRuleRef {
    /// Index of the policy.
    pub policy: usize,
    /// Index of the rule.
    pub rule: usize,
}

/// What one tier says about a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TierOutcome {
    /// A rule accepted it: final.
    Accept(TieredRuleRef),
    /// A rule denied it: final.
    Deny(TieredRuleRef),
    /// A rule passed it to the next tier.
    Pass(TieredRuleRef),
    /// No rule of the tier matched.
    NoMatch,
}

/// The result of one tier, with the rules of other policies of the same priority that
/// also match the connection (the spec leaves the choice among them undefined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierDecision {
    /// The outcome, from the first matching rule in precedence order.
    pub outcome: TierOutcome,
    /// Rules of other equal-priority policies that match too.
    pub ties: Vec<TieredRuleRef>,
}

/// Decides one tier: `selecting` are the indexes (into `policies`) of the tier's policies
/// whose subject selects the source pod, in precedence order ([`TieredPolicy::precedence`]).
pub fn decide_tier(
    policies: &[TieredPolicy],
    selecting: &[usize],
    dst: &Destination,
) -> TierDecision {
    decide_tier_with(policies, selecting, dst, true)
}

/// [`decide_tier`] with [`Peer::matches_with`]'s `address_peers`.
pub fn decide_tier_with(
    policies: &[TieredPolicy],
    selecting: &[usize],
    dst: &Destination,
    address_peers: bool,
) -> TierDecision {
    for (k, &i) in selecting.iter().enumerate() {
        let p = &policies[i];
        let Some((ri, rule)) = p.first_match_with(dst, address_peers) else {
            continue;
        };
        let hit = TieredRuleRef {
            policy: i,
            rule: ri,
        };
        let ties = match p.priority {
            Some(prio) => selecting[k + 1..]
                .iter()
                .take_while(|&&j| policies[j].priority == Some(prio))
                .filter_map(|&j| {
                    policies[j]
                        .first_match_with(dst, address_peers)
                        .map(|(r, _)| TieredRuleRef { policy: j, rule: r })
                })
                .collect(),
            None => Vec::new(),
        };
        let outcome = match rule.effective_action() {
            Action::Accept => TierOutcome::Accept(hit),
            Action::Deny => TierOutcome::Deny(hit),
            Action::Pass => TierOutcome::Pass(hit),
        };
        return TierDecision { outcome, ties };
    }
    TierDecision {
        outcome: TierOutcome::NoMatch,
        ties: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------
// Parsing from the generic object

/// A field, absent when missing or `null`.
fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|x| !x.is_null())
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn list<'a>(v: Option<&'a Value>, at: &str) -> Result<&'a [Value], String> {
    match v {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(format!("{at} must be a list")),
    }
}

/// A `metav1.LabelSelector` from its JSON form, checked like the API server checks it.
pub fn selector_from_value(v: &Value, at: &str) -> Result<LabelSelector, String> {
    if !v.is_object() {
        return Err(format!(
            "{at} must be a label selector (matchLabels, matchExpressions)"
        ));
    }
    let mut labels = Labels::new();
    if let Some(m) = field(v, "matchLabels") {
        let m = m
            .as_object()
            .ok_or_else(|| format!("{at}.matchLabels must be a map"))?;
        for (k, val) in m {
            let s = scalar_string(val)
                .ok_or_else(|| format!("{at}.matchLabels.{k} must be a string"))?;
            labels.insert(k.clone(), s);
        }
    }
    let mut exprs = Vec::new();
    for (i, e) in list(
        field(v, "matchExpressions"),
        &format!("{at}.matchExpressions"),
    )?
    .iter()
    .enumerate()
    {
        let key = field(e, "key").and_then(scalar_string).unwrap_or_default();
        let op = field(e, "operator")
            .and_then(scalar_string)
            .unwrap_or_default();
        let values = list(
            field(e, "values"),
            &format!("{at}.matchExpressions[{i}].values"),
        )?
        .iter()
        .filter_map(scalar_string)
        .collect();
        exprs.push((key, op, values));
    }
    LabelSelector::from_api(labels, exprs, at)
}

fn namespaced_pod(v: &Value, at: &str) -> Result<(LabelSelector, LabelSelector), String> {
    // "if empty, it selects all Namespaces" / "if empty, it selects all Pods"; a missing
    // selector (which the schema asks for) is read as empty, as netpol-analyzer reads it.
    let ns = match field(v, "namespaceSelector") {
        Some(s) => selector_from_value(s, &format!("{at}.namespaceSelector"))?,
        None => LabelSelector::default(),
    };
    let pod = match field(v, "podSelector") {
        Some(s) => selector_from_value(s, &format!("{at}.podSelector"))?,
        None => LabelSelector::default(),
    };
    Ok((ns, pod))
}

fn cidr(s: &Value, at: &str) -> Result<IpNet, String> {
    let text = s
        .as_str()
        .ok_or_else(|| format!("{at} must be a CIDR string"))?;
    let net: IpNet = text.trim().parse().map_err(|_| {
        format!(
            "{at} {} is not a CIDR (write e.g. 10.0.0.0/8 or fd00::/8)",
            quoted(text)
        )
    })?;
    // The current CRDs accept only the masked form; older ones did not check, and a
    // CIDR with host bits set covers its network (`ff06::/3` is `e000::/3`). An
    // IPv4-mapped CIDR: v1alpha2's `isCIDR` (Kubernetes CEL, netip) refuses it; v1alpha1's
    // CRD refuses only the dotted form (`self.contains(':') != self.contains('.')`), not
    // the hex one (`::ffff:a9fe:a9fe/128`), and tells implementations to read it with Go's
    // net.ParseCIDR, which takes it as the IPv4 prefix it maps.
    Ok(crate::netpol::fold_mapped_net(net.trunc()))
}

/// A whole number as the CRD's integer fields take it: `Ok(n)`, or `Err(text)` for a
/// whole number beyond 64 bits (read as a float: JSON and YAML input give such numbers as
/// the nearest float), so that the caller names its field and range. `None` for
/// anything else (a fraction, a string).
fn whole_number(v: &Value) -> Option<Result<i64, String>> {
    if let Some(n) = v.as_i64() {
        return Some(Ok(n));
    }
    if v.is_u64() {
        return Some(Err(v.to_string()));
    }
    let f = v.as_f64()?;
    (f.abs() >= 2f64.powi(63)).then(|| Err(format!("{f:e}")))
}

fn port_number(v: Option<&Value>, at: &str) -> Result<u16, String> {
    let n = v
        .and_then(whole_number)
        .ok_or_else(|| format!("{at} must be a port number"))?;
    let text = match &n {
        Ok(n) => n.to_string(),
        Err(text) => text.clone(),
    };
    n.ok()
        .and_then(|n| u16::try_from(n).ok())
        .filter(|&p| p >= 1)
        .ok_or_else(|| format!("{at} {text} is not a port (1-65535)"))
}

fn protocol_of(v: Option<&Value>, at: &str) -> Result<Protocol, String> {
    match v.and_then(Value::as_str) {
        None | Some("") => Ok(Protocol::Tcp),
        Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("SCTP") => Ok(Protocol::Sctp),
        Some(other) => Err(format!(
            "{at} {} is not TCP, UDP or SCTP (upper case)",
            quoted(other)
        )),
    }
}

fn range(start: u16, end: u16, at: &str) -> Result<(u16, u16), String> {
    if start < end {
        Ok((start, end))
    } else {
        Err(format!("{at}: start {start} must be less than end {end}"))
    }
}

/// The fields of a one-of object (`{"networks": ...}`), null ones left out.
fn keys(v: &Value) -> Vec<&str> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, x)| !x.is_null())
                .map(|(k, _)| k.as_str())
                .collect()
        })
        .unwrap_or_default()
}

/// v1alpha1 `ports`: each exactly one of `portNumber`, `portRange`, `namedPort`.
fn anp_ports(v: &[Value], at: &str) -> Result<Vec<PortMatch>, String> {
    let mut out = Vec::new();
    for (i, p) in v.iter().enumerate() {
        let at = format!("{at}[{i}]");
        let known: Vec<&str> = keys(p)
            .into_iter()
            .filter(|k| matches!(*k, "portNumber" | "portRange" | "namedPort"))
            .collect();
        if known.len() != 1 {
            return Err(format!(
                "{at} must set exactly one of portNumber, portRange, namedPort"
            ));
        }
        out.push(match known[0] {
            "portNumber" => {
                let n = &p["portNumber"];
                let port = port_number(field(n, "port"), &format!("{at}.portNumber.port"))?;
                PortMatch::Ports {
                    protocol: protocol_of(
                        field(n, "protocol"),
                        &format!("{at}.portNumber.protocol"),
                    )?,
                    range: Some((port, port)),
                }
            }
            "portRange" => {
                let r = &p["portRange"];
                let start = port_number(field(r, "start"), &format!("{at}.portRange.start"))?;
                let end = port_number(field(r, "end"), &format!("{at}.portRange.end"))?;
                PortMatch::Ports {
                    protocol: protocol_of(
                        field(r, "protocol"),
                        &format!("{at}.portRange.protocol"),
                    )?,
                    range: Some(range(start, end, &format!("{at}.portRange"))?),
                }
            }
            _ => PortMatch::Named(
                p["namedPort"]
                    .as_str()
                    .ok_or_else(|| format!("{at}.namedPort must be a string"))?
                    .to_string(),
            ),
        });
    }
    Ok(out)
}

/// v1alpha2/v1beta1 `protocols`: each exactly one of `tcp`, `udp`, `sctp`
/// (`destinationPort: {number}` or `{range: {start, end}}`) or `destinationNamedPort`.
fn cnp_protocols(v: &[Value], at: &str) -> Result<Vec<PortMatch>, String> {
    let mut out = Vec::new();
    for (i, p) in v.iter().enumerate() {
        let at = format!("{at}[{i}]");
        let known: Vec<&str> = keys(p)
            .into_iter()
            .filter(|k| matches!(*k, "tcp" | "udp" | "sctp" | "destinationNamedPort"))
            .collect();
        if known.len() != 1 {
            return Err(format!(
                "{at} must set exactly one of tcp, udp, sctp, destinationNamedPort"
            ));
        }
        let key = known[0];
        let protocol = match key {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            _ => {
                out.push(PortMatch::Named(
                    p[key]
                        .as_str()
                        .ok_or_else(|| format!("{at}.destinationNamedPort must be a string"))?
                        .to_string(),
                ));
                continue;
            }
        };
        let range = match field(&p[key], "destinationPort") {
            // The CRD marks the protocol object MinProperties=1: `tcp: {}` is refused.
            None => {
                return Err(format!(
                    "{at}.{key} is empty: the API server refuses it (it needs destinationPort); to match every {} port, leave {key} out of the rule's protocols",
                    protocol.as_str()
                ));
            }
            Some(dp) => {
                let at = format!("{at}.{key}.destinationPort");
                match (field(dp, "number"), field(dp, "range")) {
                    (Some(n), None) => {
                        let n = port_number(Some(n), &format!("{at}.number"))?;
                        Some((n, n))
                    }
                    (None, Some(r)) => {
                        let start = port_number(field(r, "start"), &format!("{at}.range.start"))?;
                        let end = port_number(field(r, "end"), &format!("{at}.range.end"))?;
                        Some(range(start, end, &format!("{at}.range"))?)
                    }
                    _ => return Err(format!("{at} must set exactly one of number, range")),
                }
            }
        };
        out.push(PortMatch::Ports { protocol, range });
    }
    Ok(out)
}

fn peer(v: &Value, at: &str) -> Result<Peer, String> {
    const KNOWN: [&str; 5] = ["namespaces", "pods", "nodes", "networks", "domainNames"];
    let all = keys(v);
    let known: Vec<&str> = all.iter().copied().filter(|k| KNOWN.contains(k)).collect();
    match known.as_slice() {
        [] => Ok(Peer::Unknown(all.iter().map(|k| k.to_string()).collect())),
        [k] => Ok(match *k {
            "namespaces" => {
                Peer::Namespaces(selector_from_value(&v[*k], &format!("{at}.namespaces"))?)
            }
            "pods" => {
                let (namespace_selector, pod_selector) =
                    namespaced_pod(&v[*k], &format!("{at}.pods"))?;
                Peer::Pods {
                    namespace_selector,
                    pod_selector,
                }
            }
            "nodes" => Peer::Nodes(selector_from_value(&v[*k], &format!("{at}.nodes"))?),
            "networks" => {
                let items = list(Some(&v[*k]), &format!("{at}.networks"))?;
                if items.is_empty() {
                    return Err(format!("{at}.networks needs at least one CIDR"));
                }
                Peer::Networks(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, c)| cidr(c, &format!("{at}.networks[{i}]")))
                        .collect::<Result<_, _>>()?,
                )
            }
            _ => {
                let items = list(Some(&v[*k]), &format!("{at}.domainNames"))?;
                Peer::DomainNames(items.iter().filter_map(scalar_string).collect())
            }
        }),
        more => Err(format!(
            "{at} sets {}: a peer takes exactly one field",
            more.join(" and ")
        )),
    }
}

/// What imdsguard reads of [`GROUP`], for errors about other versions.
const VERSIONS_READ: &str = "it reads v1alpha1 ANP/BANP, v1alpha2 and v1beta1 ClusterNetworkPolicy";

/// Why `kind` at `version` (the part of `apiVersion` after the group) is not read, or
/// `None` when it is. The object is then left out of the audit as an input error: its
/// schema is unknown, so neither its rules nor its failing closed can be trusted.
pub fn unknown_version(kind: TieredKind, version: &str) -> Option<String> {
    if kind.versions().contains(&version) {
        return None;
    }
    let known = [
        TieredKind::AdminNetworkPolicy,
        TieredKind::ClusterNetworkPolicy,
    ]
    .iter()
    .any(|k| k.versions().contains(&version));
    Some(if known {
        format!("apiVersion {GROUP}/{version} has no {kind} ({VERSIONS_READ})")
    } else {
        format!(
            "apiVersion {GROUP}/{} is not a version imdsguard knows ({VERSIONS_READ})",
            clip(version)
        )
    })
}

/// Reads an AdminNetworkPolicy, BaselineAdminNetworkPolicy or ClusterNetworkPolicy from
/// the whole object (`apiVersion`, `kind`, `metadata`, `spec`), checked as the CRD's
/// schema checks it (a violation is an error naming the field: the API server would
/// refuse the object). `version` is the part of `apiVersion` after the group.
pub fn parse(
    kind: TieredKind,
    version: &str,
    name: &str,
    object: &Value,
    source: Source,
) -> Result<TieredPolicy, String> {
    if let Some(message) = unknown_version(kind, version) {
        return Err(message);
    }
    let spec = field(object, "spec").ok_or("spec is missing")?;
    let cnp = kind == TieredKind::ClusterNetworkPolicy;
    let tier = match kind {
        TieredKind::AdminNetworkPolicy => TierLevel::Admin,
        TieredKind::BaselineAdminNetworkPolicy => TierLevel::Baseline,
        TieredKind::ClusterNetworkPolicy => match field(spec, "tier").and_then(Value::as_str) {
            Some("Admin") => TierLevel::Admin,
            Some("Baseline") => TierLevel::Baseline,
            Some(other) => {
                return Err(format!(
                    "spec.tier {} is not Admin or Baseline",
                    quoted(other)
                ));
            }
            None => return Err("spec.tier is required (Admin or Baseline)".into()),
        },
    };
    let priority = match kind {
        TieredKind::BaselineAdminNetworkPolicy => None,
        _ => {
            let p =
                field(spec, "priority").ok_or("spec.priority is required (0-1000, lower first)")?;
            let n = whole_number(p).ok_or("spec.priority must be a number from 0 to 1000")?;
            let text = match &n {
                Ok(n) => n.to_string(),
                Err(text) => text.clone(),
            };
            Some(
                n.ok()
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|&n| n <= 1000)
                    .ok_or_else(|| format!("spec.priority {text} is outside 0-1000"))?,
            )
        }
    };
    let subject = {
        let s = field(spec, "subject").ok_or("spec.subject is required")?;
        match (field(s, "namespaces"), field(s, "pods")) {
            (Some(ns), None) => {
                Subject::Namespaces(selector_from_value(ns, "spec.subject.namespaces")?)
            }
            (None, Some(p)) => {
                let (namespace_selector, pod_selector) = namespaced_pod(p, "spec.subject.pods")?;
                Subject::Pods {
                    namespace_selector,
                    pod_selector,
                }
            }
            _ => return Err("spec.subject must set exactly one of namespaces, pods".into()),
        }
    };
    let rules = list(field(spec, "egress"), "spec.egress")?;
    if cnp && rules.len() > CNP_MAX_RULES {
        return Err(format!(
            "spec.egress has {} rules: at most {CNP_MAX_RULES} are allowed",
            rules.len()
        ));
    }
    let mut egress = Vec::with_capacity(rules.len());
    for (ri, r) in rules.iter().enumerate() {
        let at = format!("spec.egress[{ri}]");
        let action = match (kind, field(r, "action").and_then(Value::as_str)) {
            (TieredKind::ClusterNetworkPolicy, Some("Accept")) => Action::Accept,
            (TieredKind::ClusterNetworkPolicy, Some("Allow")) => {
                return Err(format!(
                    "{at}.action `Allow` is the v1alpha1 spelling: ClusterNetworkPolicy uses Accept, Deny or Pass"
                ));
            }
            (_, Some("Allow")) => Action::Accept,
            (_, Some("Deny")) => Action::Deny,
            (TieredKind::BaselineAdminNetworkPolicy, Some("Pass")) => {
                return Err(format!(
                    "{at}.action `Pass` does not exist in a BaselineAdminNetworkPolicy (Allow or Deny)"
                ));
            }
            (_, Some("Pass")) => Action::Pass,
            (_, Some(other)) => {
                return Err(format!(
                    "{at}.action {} is not one of {}",
                    quoted(other),
                    match kind {
                        TieredKind::ClusterNetworkPolicy => "Accept, Deny, Pass",
                        TieredKind::AdminNetworkPolicy => "Allow, Deny, Pass",
                        TieredKind::BaselineAdminNetworkPolicy => "Allow, Deny",
                    }
                ));
            }
            (_, None) => return Err(format!("{at}.action is required")),
        };
        let peers = list(field(r, "to"), &format!("{at}.to"))?;
        if peers.is_empty() {
            return Err(format!("{at}.to needs at least one peer"));
        }
        let to = peers
            .iter()
            .enumerate()
            .map(|(pi, p)| peer(p, &format!("{at}.to[{pi}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let ports = if cnp {
            field(r, "protocols")
                .map(|p| {
                    cnp_protocols(
                        list(Some(p), &format!("{at}.protocols"))?,
                        &format!("{at}.protocols"),
                    )
                })
                .transpose()?
        } else {
            field(r, "ports")
                .map(|p| {
                    anp_ports(
                        list(Some(p), &format!("{at}.ports"))?,
                        &format!("{at}.ports"),
                    )
                })
                .transpose()?
        };
        // The experimental CRD refuses named ports beside networks/nodes/domainNames
        // peers; the standard one accepts them, and they then never match those peers'
        // addresses (they resolve on destination pods only).
        egress.push(Rule {
            name: field(r, "name").and_then(scalar_string).unwrap_or_default(),
            action,
            to,
            ports,
        });
    }
    Ok(TieredPolicy {
        kind,
        version: version.to_string(),
        name: name.to_string(),
        tier,
        priority,
        subject,
        egress,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Cluster;
    use crate::engine::{Engine, EngineSettings, Tier, decide};
    use crate::manifest::parse as parse_manifests;

    const V1ALPHA1: &str =
        "https://github.com/kubernetes-sigs/network-policy-api/blob/main/apis/v1alpha1";
    const V1ALPHA2: &str = "https://github.com/kubernetes-sigs/network-policy-api/blob/main/apis/v1alpha2/clusternetworkpolicy_types.go";
    const V1BETA1: &str = "https://github.com/kubernetes-sigs/network-policy-api/blob/main/apis/v1beta1/clusternetworkpolicy_types.go";

    fn cluster(text: &str) -> Cluster {
        let l = parse_manifests("t.yaml", text);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        Cluster::build(l.objects)
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn anp(name: &str, priority: u32, subject: &str, egress: &str) -> String {
        format!(
            "---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  priority: {priority}\n  subject: {subject}\n  egress:\n{egress}"
        )
    }

    fn banp(name: &str, egress: &str) -> String {
        format!(
            "---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  subject: {{namespaces: {{}}}}\n  egress:\n{egress}"
        )
    }

    fn cnp(version: &str, name: &str, tier: &str, priority: u32, egress: &str) -> String {
        format!(
            "---\napiVersion: policy.networking.k8s.io/{version}\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  tier: {tier}\n  priority: {priority}\n  subject: {{namespaces: {{}}}}\n  egress:\n{egress}"
        )
    }

    const NP_DENY_ALL: &str = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: a}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n";
    const NP_ALLOW_ALL: &str = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: open, namespace: a}\nspec:\n  podSelector: {}\n  egress: [{}]\n";
    const ALL_NS: &str = "{namespaces: {}}";
    const IMDS: &str = "169.254.169.254:80/TCP";

    /// One case of the table: the policies, the source pod (namespace `a`) and the
    /// external destination, and what the reference semantics say.
    struct Case {
        /// The documentation sentence the case checks (URL, short quote).
        cite: String,
        text: String,
        pod: Labels,
        dst: &'static str,
        allowed: bool,
        tier: Tier,
        /// `Kind/name#egress[i]` of the deciding rule, or the deciding object.
        by: Option<&'static str>,
    }

    fn case(
        cite: String,
        text: String,
        dst: &'static str,
        allowed: bool,
        tier: Tier,
        by: Option<&'static str>,
    ) -> Case {
        Case {
            cite,
            text,
            pod: labels(&[("app", "web")]),
            dst,
            allowed,
            tier,
            by,
        }
    }

    fn run(c: &Case) {
        let cl = cluster(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: a, labels: {{team: x}}}}\n{}",
            c.text
        ));
        let ns_labels = cl.namespaces["a"].labels.clone();
        let src = crate::engine::Source {
            namespace: "a",
            labels: &c.pod,
            ns_labels: &ns_labels,
            service_account: None,
            host_network: false,
        };
        let dst = Destination::External(c.dst.parse().unwrap());
        let d = decide(&cl, &EngineSettings::new(Engine::Generic), &src, &dst);
        let by = match (&d.object, &d.rule) {
            (Some(o), Some(r)) => Some(format!("{o}#{r}")),
            (Some(o), None) => Some(o.to_string()),
            _ => None,
        };
        assert_eq!(
            (d.allowed, &d.tier, by.as_deref()),
            (c.allowed, &c.tier, c.by),
            "case citing {}: {d:?}",
            c.cite
        );
    }

    #[test]
    fn reference_semantics_table() {
        let deny_imds =
            "  - {name: no-imds, action: Deny, to: [{networks: [169.254.169.254/32]}]}\n";
        let cases = vec![
            // v1alpha1 AdminNetworkPolicyRuleActionDeny: matching traffic "will be denied
            // before being checked against NetworkPolicy".
            case(
                format!(
                    "{V1ALPHA1}/adminnetworkpolicy_types.go: \"denied before being checked against NetworkPolicy\""
                ),
                format!("{NP_ALLOW_ALL}{}", anp("deny", 10, ALL_NS, deny_imds)),
                IMDS,
                false,
                Tier::Admin,
                Some("AdminNetworkPolicy/deny#egress[0]"),
            ),
            // v1alpha1 Allow: "allows the selected traffic (even if it would otherwise
            // have been denied by NetworkPolicy)".
            case(
                format!(
                    "{V1ALPHA1}/adminnetworkpolicy_types.go: \"even if it would otherwise have been denied by NetworkPolicy\""
                ),
                format!(
                    "{NP_DENY_ALL}{}",
                    anp(
                        "allow",
                        10,
                        ALL_NS,
                        "  - {action: Allow, to: [{networks: [169.254.0.0/16]}]}\n"
                    )
                ),
                IMDS,
                true,
                Tier::Admin,
                Some("AdminNetworkPolicy/allow#egress[0]"),
            ),
            // Priority: "Policies with lower priority values have higher precedence".
            case(
                format!(
                    "{V1ALPHA1}/adminnetworkpolicy_types.go: \"lower priority values have higher precedence\""
                ),
                format!(
                    "{}{}",
                    anp(
                        "late",
                        20,
                        ALL_NS,
                        "  - {action: Allow, to: [{networks: [0.0.0.0/0]}]}\n"
                    ),
                    anp("early", 5, ALL_NS, deny_imds)
                ),
                IMDS,
                false,
                Tier::Admin,
                Some("AdminNetworkPolicy/early#egress[0]"),
            ),
            // Rule order: "determined by the order in which the rule is written".
            case(
                format!(
                    "{V1ALPHA1}/adminnetworkpolicy_types.go: \"determined by the order in which the rule is written\""
                ),
                anp(
                    "order",
                    10,
                    ALL_NS,
                    &format!(
                        "  - {{action: Allow, to: [{{networks: [169.254.169.254/32]}}]}}\n{deny_imds}"
                    ),
                ),
                IMDS,
                true,
                Tier::Admin,
                Some("AdminNetworkPolicy/order#egress[0]"),
            ),
            // Pass: "skip any remaining ANP rules, and then pass execution to any
            // NetworkPolicies that select the pod".
            case(
                format!(
                    "{V1ALPHA1}/adminnetworkpolicy_types.go: \"pass execution to any NetworkPolicies that select the pod\""
                ),
                format!(
                    "{NP_DENY_ALL}{}",
                    anp(
                        "pass",
                        10,
                        ALL_NS,
                        "  - {action: Pass, to: [{networks: [169.254.0.0/16]}]}\n  - {action: Allow, to: [{networks: [0.0.0.0/0]}]}\n"
                    )
                ),
                IMDS,
                false,
                Tier::NetworkPolicy,
                Some("a/deny"),
            ),
            // Pass without NetworkPolicy: "If the pod is not selected by any
            // NetworkPolicies then execution is passed to any BaselineAdminNetworkPolicies".
            case(
                format!(
                    "{V1ALPHA1}/adminnetworkpolicy_types.go: \"execution is passed to any BaselineAdminNetworkPolicies\""
                ),
                format!(
                    "{}{}",
                    anp(
                        "pass",
                        10,
                        ALL_NS,
                        "  - {action: Pass, to: [{networks: [0.0.0.0/0]}]}\n"
                    ),
                    banp("default", deny_imds)
                ),
                IMDS,
                false,
                Tier::Baseline,
                Some("BaselineAdminNetworkPolicy/default#egress[0]"),
            ),
            // "v1.NetworkPolicy always makes a final decision for selected pods."
            case(
                format!(
                    "{V1BETA1}: \"v1.NetworkPolicy always makes a final decision for selected pods\""
                ),
                format!("{NP_ALLOW_ALL}{}", banp("default", deny_imds)),
                IMDS,
                true,
                Tier::NetworkPolicy,
                Some("a/open#egress[0]"),
            ),
            // The BANP singleton: "Only one baseline admin network policy with
            // metadata.name=\"default\" can be created".
            case(
                format!(
                    "{V1ALPHA1}/baselineadminnetworkpolicy_types.go: \"Only one baseline admin network policy with metadata.name=\\\"default\\\"\""
                ),
                banp("strict", deny_imds),
                IMDS,
                true,
                Tier::Default,
                None,
            ),
            // CNP protocols: "Protocols allows for more fine-grain matching of traffic on
            // protocol-specific attributes such as the port".
            case(
                format!(
                    "{V1BETA1}: \"fine-grain matching of traffic on protocol-specific attributes such as the port\""
                ),
                cnp(
                    "v1alpha2",
                    "tcp80",
                    "Admin",
                    0,
                    "  - action: Deny\n    to: [{networks: [169.254.169.254/32]}]\n    protocols: [{tcp: {destinationPort: {number: 80}}}]\n",
                ),
                "169.254.169.254:80/UDP",
                true,
                Tier::Default,
                None,
            ),
            case(
                format!("{V1BETA1}: \"Range defines a contiguous range of ports\""),
                cnp(
                    "v1beta1",
                    "range",
                    "Admin",
                    0,
                    "  - action: Deny\n    to: [{networks: [168.63.129.16/32]}]\n    protocols: [{tcp: {destinationPort: {range: {start: 80, end: 32526}}}}]\n",
                ),
                "168.63.129.16:32526/TCP",
                false,
                Tier::Admin,
                Some("ClusterNetworkPolicy/range#egress[0]"),
            ),
            // "Baseline tier is a cluster-wide policy that can be overridden by the
            // v1.NetworkPolicy."
            case(
                format!(
                    "{V1BETA1}: \"Baseline tier is a cluster-wide policy that can be overridden by the v1.NetworkPolicy\""
                ),
                cnp("v1alpha2", "base", "Baseline", 0, deny_imds),
                IMDS,
                false,
                Tier::Baseline,
                Some("ClusterNetworkPolicy/base#egress[0]"),
            ),
            case(
                format!(
                    "{V1BETA1}: \"Baseline tier is a cluster-wide policy that can be overridden by the v1.NetworkPolicy\""
                ),
                format!(
                    "{NP_ALLOW_ALL}{}",
                    cnp("v1alpha2", "base", "Baseline", 0, deny_imds)
                ),
                IMDS,
                true,
                Tier::NetworkPolicy,
                Some("a/open#egress[0]"),
            ),
            // Pass in the Baseline tier: "Skips all further ClusterNetworkPolicy rules in
            // the current tier ... and passes evaluation to the next tier" (the default).
            case(
                format!("{V1BETA1}: \"passes evaluation to the next tier\""),
                cnp(
                    "v1alpha2",
                    "base",
                    "Baseline",
                    0,
                    &format!("  - {{action: Pass, to: [{{networks: [0.0.0.0/0]}}]}}\n{deny_imds}"),
                ),
                IMDS,
                true,
                Tier::Default,
                None,
            ),
            // Fail closed: "For \"Accept\" rules, \"fail closed\" means: \"treat the rule
            // as matching no traffic\"".
            case(
                format!("{V1BETA1}: \"treat the rule as matching no traffic\""),
                format!(
                    "{NP_DENY_ALL}{}",
                    cnp(
                        "v1alpha2",
                        "newer",
                        "Admin",
                        0,
                        "  - {action: Accept, to: [{futurePeer: {x: y}}]}\n"
                    )
                ),
                IMDS,
                false,
                Tier::NetworkPolicy,
                Some("a/deny"),
            ),
            // ... and for Deny and Pass: "treat the rule as a 'Deny all' rule", ports
            // included.
            case(
                format!("{V1BETA1}: \"treat the rule as a 'Deny all' rule\""),
                cnp(
                    "v1alpha2",
                    "newer",
                    "Admin",
                    0,
                    "  - action: Deny\n    to: [{futurePeer: {x: y}}]\n    protocols: [{udp: {destinationPort: {number: 53}}}]\n",
                ),
                IMDS,
                false,
                Tier::Admin,
                Some("ClusterNetworkPolicy/newer#egress[0]"),
            ),
            // A Pass rule with an unknown peer is a "Deny all" too: it denies, it does not
            // pass to NetworkPolicy (which would allow here).
            case(
                format!(
                    "{V1ALPHA2}: 'For \"Deny\" and \"Pass\" rules, \"fail closed\" means: \"treat the rule as a 'Deny all' rule\"'"
                ),
                format!(
                    "{NP_ALLOW_ALL}{}",
                    cnp(
                        "v1alpha2",
                        "newer-pass",
                        "Admin",
                        0,
                        "  - action: Pass\n    to: [{futurePeer: {x: y}}]\n    protocols: [{udp: {destinationPort: {number: 53}}}]\n",
                    )
                ),
                IMDS,
                false,
                Tier::Admin,
                Some("ClusterNetworkPolicy/newer-pass#egress[0]"),
            ),
            // The same sentence on v1alpha1's AdminNetworkPolicyEgressPeer.
            case(
                format!(
                    "{V1ALPHA1}/adminnetworkpolicy_types.go: 'For \"Deny\" and \"Pass\" rules, \"fail closed\" means: \"treat the rule as a 'Deny all' rule\"'"
                ),
                format!(
                    "{NP_ALLOW_ALL}{}",
                    anp(
                        "newer-pass",
                        10,
                        ALL_NS,
                        "  - {action: Pass, to: [{futurePeer: {}}]}\n"
                    )
                ),
                IMDS,
                false,
                Tier::Admin,
                Some("AdminNetworkPolicy/newer-pass#egress[0]"),
            ),
            // Selector peers select pods (and nodes), never an external address:
            // "Networks ... is intended for representing entities that live outside the
            // cluster, which can't be selected by pods, namespaces and nodes peers".
            case(
                format!("{V1BETA1}: \"can't be selected by pods, namespaces and nodes peers\""),
                cnp(
                    "v1beta1",
                    "selectors",
                    "Admin",
                    0,
                    "  - action: Deny\n    to: [{namespaces: {}}, {pods: {podSelector: {}}}, {nodes: {}}]\n",
                ),
                IMDS,
                true,
                Tier::Default,
                None,
            ),
            // "a Networks entry of \"0.0.0.0/0\" will match both IPv4 and ICMP traffic,
            // while \"::/0\" will match both IPv6 and ICMPv6 traffic": families apart.
            case(
                format!("{V1BETA1}: \"\\\"::/0\\\" will match both IPv6 and ICMPv6 traffic\""),
                cnp(
                    "v1beta1",
                    "v6",
                    "Admin",
                    0,
                    "  - {action: Deny, to: [{networks: ['::/0']}]}\n",
                ),
                IMDS,
                true,
                Tier::Default,
                None,
            ),
            case(
                format!("{V1BETA1}: \"\\\"::/0\\\" will match both IPv6 and ICMPv6 traffic\""),
                cnp(
                    "v1beta1",
                    "v6",
                    "Admin",
                    0,
                    "  - {action: Deny, to: [{networks: ['::/0']}]}\n",
                ),
                "[fd00:ec2::254]:80/TCP",
                false,
                Tier::Admin,
                Some("ClusterNetworkPolicy/v6#egress[0]"),
            ),
            // "DestinationNamedPort selects a destination port on a pod based on the
            // ContainerPort name": never an external address's.
            case(
                format!(
                    "{V1BETA1}: \"selects a destination port on a pod based on the ContainerPort name\""
                ),
                format!(
                    "{NP_DENY_ALL}{}",
                    cnp(
                        "v1beta1",
                        "named",
                        "Admin",
                        0,
                        "  - action: Accept\n    to: [{pods: {podSelector: {}}}]\n    protocols: [{destinationNamedPort: http}]\n"
                    )
                ),
                IMDS,
                false,
                Tier::NetworkPolicy,
                Some("a/deny"),
            ),
            // Subject `pods`: "Pods is used to select pods via namespace AND pod selectors."
            case(
                format!(
                    "{V1ALPHA1}/shared_types.go: \"select pods via namespace AND pod selectors\""
                ),
                anp(
                    "db-only",
                    1,
                    "{pods: {namespaceSelector: {matchLabels: {team: x}}, podSelector: {matchLabels: {app: db}}}}",
                    deny_imds,
                ),
                IMDS,
                true,
                Tier::Default,
                None,
            ),
            case(
                format!(
                    "{V1ALPHA1}/shared_types.go: \"select pods via namespace AND pod selectors\""
                ),
                anp(
                    "web-only",
                    1,
                    "{pods: {namespaceSelector: {matchLabels: {team: x}}, podSelector: {matchLabels: {app: web}}}}",
                    deny_imds,
                ),
                IMDS,
                false,
                Tier::Admin,
                Some("AdminNetworkPolicy/web-only#egress[0]"),
            ),
            // v1alpha1 ports: "Protocol ... If not specified, this field defaults to TCP."
            case(
                format!(
                    "{V1ALPHA1}/shared_types.go: \"If not specified, this field defaults to TCP\""
                ),
                anp(
                    "ports",
                    1,
                    ALL_NS,
                    "  - action: Deny\n    to: [{networks: [169.254.169.254/32]}]\n    ports: [{portNumber: {port: 80}}, {portRange: {protocol: UDP, start: 1, end: 100}}]\n",
                ),
                "169.254.169.254:80/SCTP",
                true,
                Tier::Default,
                None,
            ),
            case(
                format!(
                    "{V1ALPHA1}/shared_types.go: \"If not specified, this field defaults to TCP\""
                ),
                anp(
                    "ports",
                    1,
                    ALL_NS,
                    "  - action: Deny\n    to: [{networks: [169.254.169.254/32]}]\n    ports: [{portNumber: {port: 80}}, {portRange: {protocol: UDP, start: 1, end: 100}}]\n",
                ),
                IMDS,
                false,
                Tier::Admin,
                Some("AdminNetworkPolicy/ports#egress[0]"),
            ),
        ];
        for c in &cases {
            run(c);
        }
    }

    /// "If two (or more) policies with the same priority could both match a connection,
    /// then the implementation can apply any of the matching policies" ({V1ALPHA1}
    /// adminnetworkpolicy_types.go): the decision names the tie.
    #[test]
    fn equal_priorities_that_both_match_are_a_tie() {
        let text = format!(
            "{}{}{}",
            anp(
                "b-allow",
                7,
                ALL_NS,
                "  - {action: Allow, to: [{networks: [169.254.0.0/16]}]}\n"
            ),
            anp(
                "a-deny",
                7,
                ALL_NS,
                "  - {action: Deny, to: [{networks: [169.254.169.254/32]}]}\n"
            ),
            anp(
                "c-other",
                7,
                ALL_NS,
                "  - {action: Deny, to: [{networks: [10.0.0.0/8]}]}\n"
            ),
        );
        let cl = cluster(&text);
        let dst = Destination::External(IMDS.parse().unwrap());
        let admin: Vec<usize> = cl.tiered_order().to_vec();
        let d = decide_tier(&cl.tiered, &admin, &dst);
        let name = |r: &TieredRuleRef| cl.tiered[r.policy].name.clone();
        match &d.outcome {
            TierOutcome::Deny(r) => assert_eq!(name(r), "a-deny"),
            other => panic!("{other:?}"),
        }
        assert_eq!(d.ties.iter().map(name).collect::<Vec<_>>(), ["b-allow"]);
        // Not a tie when only one of them matches.
        let d = decide_tier(
            &cl.tiered,
            &admin,
            &Destination::External("10.1.1.1:80/TCP".parse().unwrap()),
        );
        assert!(d.ties.is_empty());
    }

    /// "Note that host-networked pods are not included in subject selection."
    /// ({V1BETA1}, ClusterNetworkPolicySubject)
    #[test]
    fn host_network_pods_are_not_subjects() {
        let cl = cluster(&cnp(
            "v1alpha2",
            "deny",
            "Admin",
            0,
            "  - {action: Deny, to: [{networks: [0.0.0.0/0]}]}\n",
        ));
        let none = Labels::new();
        let ns = labels(&[("kubernetes.io/metadata.name", "a")]);
        let src = crate::engine::Source {
            namespace: "a",
            labels: &none,
            ns_labels: &ns,
            service_account: None,
            host_network: true,
        };
        let d = decide(
            &cl,
            &EngineSettings::new(Engine::Generic),
            &src,
            &Destination::External(IMDS.parse().unwrap()),
        );
        assert!(d.allowed);
        assert_eq!(d.reason, crate::engine::Reason::HostNetwork);
    }

    /// Pod destinations: selector peers select pods ("Namespaces defines a way to select
    /// all pods within a set of Namespaces"), named ports resolve on the pod, and
    /// "cluster-internal traffic will be checked against the rule as well" for networks.
    #[test]
    fn pod_and_node_destinations() {
        let cl = cluster(&cnp(
            "v1beta1",
            "p",
            "Admin",
            0,
            "  - action: Deny\n    to: [{namespaces: {matchLabels: {team: x}}}]\n    protocols: [{destinationNamedPort: http}]\n  - {action: Accept, to: [{nodes: {matchLabels: {role: infra}}}]}\n  - {action: Deny, to: [{networks: [10.0.0.0/8]}]}\n",
        ));
        let pod = |port: u16, ns_labels: Labels| Destination::Pod {
            namespace: "b".into(),
            labels: Labels::new(),
            ns_labels,
            ip: Some("10.1.2.3".parse().unwrap()),
            port,
            protocol: Protocol::Tcp,
            named_ports: vec![("http".into(), Protocol::Tcp, 8080)],
        };
        let p = &cl.tiered[0];
        assert_eq!(
            p.first_match(&pod(8080, labels(&[("team", "x")])))
                .map(|m| m.0),
            Some(0)
        );
        assert_eq!(
            p.first_match(&pod(80, labels(&[("team", "x")])))
                .map(|m| m.0),
            Some(2)
        );
        assert_eq!(
            p.first_match(&pod(8080, labels(&[("team", "y")])))
                .map(|m| m.0),
            Some(2)
        );
        let node = |role: &str| Destination::Node {
            ip: "10.0.0.4".parse().unwrap(),
            port: 10250,
            protocol: Protocol::Tcp,
            labels: labels(&[("role", role)]),
        };
        assert_eq!(p.first_match(&node("infra")).map(|m| m.0), Some(1));
        assert_eq!(p.first_match(&node("worker")).map(|m| m.0), Some(2));
    }

    /// domainNames: "`*.kubernetes.io` matches subdomains of kubernetes.io ... however
    /// \"kubernetes.io\" ... do not"; a name that resolves to a metadata address matches it.
    #[test]
    fn domain_names() {
        assert!(domain_matches("kubernetes.io", "kubernetes.io"));
        assert!(!domain_matches("kubernetes.io", "www.kubernetes.io"));
        assert!(domain_matches(
            "*.kubernetes.io",
            "latest.blog.kubernetes.io"
        ));
        assert!(!domain_matches("*.kubernetes.io", "kubernetes.io"));
        assert!(!domain_matches("*.kubernetes.io", "my-kubernetes.io"));
        let cl = cluster(&cnp(
            "v1beta1",
            "dns",
            "Admin",
            0,
            "  - {action: Accept, to: [{domainNames: ['*.google.internal']}]}\n  - {action: Deny, to: [{networks: [0.0.0.0/0]}]}\n",
        ));
        let p = &cl.tiered[0];
        assert_eq!(
            p.first_match(&Destination::External(IMDS.parse().unwrap()))
                .map(|m| m.0),
            Some(0)
        );
        assert_eq!(
            p.first_match(&Destination::External(
                "169.254.169.253:80/TCP".parse().unwrap()
            ))
            .map(|m| m.0),
            Some(1)
        );
    }

    /// A number beyond 64 bits is refused like any out-of-range value, naming the field
    /// and its range (it once lost the whole object: "could not be read again"), in YAML,
    /// in a YAML List and in JSON.
    #[test]
    fn numbers_beyond_64_bits_name_the_field_and_range() {
        let huge = "99999999999999999999999";
        let yaml = cnp(
            "v1alpha2",
            "x",
            "Admin",
            7,
            "  - {action: Deny, to: [{networks: [0.0.0.0/0]}]}\n",
        )
        .replace("priority: 7", &format!("priority: {huge}"));
        let list = format!(
            "apiVersion: v1\nkind: List\nitems:\n- {}",
            yaml.trim_start_matches("---\n").replace('\n', "\n  ")
        );
        let json = format!(
            r#"{{"apiVersion":"{GROUP}/v1alpha2","kind":"ClusterNetworkPolicy","metadata":{{"name":"x"}},"spec":{{"tier":"Admin","priority":{huge},"subject":{{"namespaces":{{}}}},"egress":[]}}}}"#
        );
        for (file, text) in [("t.yaml", &yaml), ("l.yaml", &list), ("t.json", &json)] {
            let l = parse_manifests(file, text);
            assert!(l.objects.is_empty(), "{file}");
            assert_eq!(l.errors.len(), 1, "{file}: {:?}", l.errors);
            assert_eq!(
                l.errors[0].message, "spec.priority 1e23 is outside 0-1000",
                "{file}"
            );
        }
        let negative = yaml.replace(huge, &format!("-{huge}"));
        let l = parse_manifests("t.yaml", &negative);
        assert_eq!(l.errors[0].message, "spec.priority -1e23 is outside 0-1000");
        let port = cnp(
            "v1alpha2",
            "x",
            "Admin",
            1,
            &format!(
                "  - {{action: Deny, to: [{{networks: [0.0.0.0/0]}}], protocols: [{{tcp: {{destinationPort: {{number: {huge}}}}}}}]}}\n"
            ),
        );
        let l = parse_manifests("t.yaml", &port);
        assert_eq!(
            l.errors[0].message,
            "spec.egress[0].protocols[0].tcp.destinationPort.number 1e23 is not a port (1-65535)"
        );
    }

    /// What the CRD schemas refuse is an input error naming the field.
    #[test]
    fn invalid_objects_are_errors() {
        let err = |text: String| {
            let l = parse_manifests("t.yaml", &text);
            assert!(l.objects.is_empty(), "{text}");
            l.errors[0].message.clone()
        };
        assert!(
            err(anp(
                "x",
                1001,
                ALL_NS,
                "  - {action: Deny, to: [{networks: [0.0.0.0/0]}]}\n"
            ))
            .contains("outside 0-1000")
        );
        assert!(
            err(banp(
                "default",
                "  - {action: Pass, to: [{networks: [0.0.0.0/0]}]}\n"
            ))
            .contains("`Pass` does not exist")
        );
        assert!(
            err(cnp(
                "v1alpha2",
                "x",
                "Admin",
                1,
                "  - {action: Allow, to: [{networks: [0.0.0.0/0]}]}\n"
            ))
            .contains("Accept, Deny or Pass")
        );
        assert!(err(cnp("v1alpha2", "x", "Middle", 1, "")).contains("spec.tier `Middle`"));
        assert!(
            err(cnp(
                "v1alpha2",
                "x",
                "Admin",
                1,
                "  - {action: Deny, to: [{networks: [10.0.0.0/8], nodes: {}}]}\n"
            ))
            .contains("exactly one field")
        );
        assert!(err(cnp("v1alpha2", "x", "Admin", 1, "  - action: Deny\n    to: [{networks: [10.0.0.0/8]}]\n    protocols: [{tcp: {destinationPort: {range: {start: 90, end: 80}}}}]\n")).contains("start 90 must be less than end 80"));
        assert!(
            err(cnp(
                "v1alpha2",
                "x",
                "Admin",
                1,
                "  - {action: Deny, to: []}\n"
            ))
            .contains("at least one peer")
        );
        assert_eq!(
            err(cnp("v9", "x", "Admin", 1, "")),
            "apiVersion policy.networking.k8s.io/v9 is not a version imdsguard knows (it reads v1alpha1 ANP/BANP, v1alpha2 and v1beta1 ClusterNetworkPolicy)"
        );
        assert_eq!(
            err(anp("x", 1, ALL_NS, "").replace("v1alpha1", "v1beta1")),
            "apiVersion policy.networking.k8s.io/v1beta1 has no AdminNetworkPolicy (it reads v1alpha1 ANP/BANP, v1alpha2 and v1beta1 ClusterNetworkPolicy)"
        );
        // v1alpha2/v1beta1 ClusterNetworkPolicyProtocol's tcp/udp/sctp objects are
        // `+kubebuilder:validation:MinProperties=1`: `{tcp: {}}` is refused, naming it.
        assert!(
            err(cnp(
                "v1alpha2",
                "x",
                "Admin",
                1,
                "  - action: Deny\n    to: [{networks: [10.0.0.0/8]}]\n    protocols: [{tcp: {}}]\n"
            ))
            .contains("spec.egress[0].protocols[0].tcp is empty")
        );
        assert!(
            err(anp("x", 1, "{namespaces: {}, pods: {podSelector: {}}}", ""))
                .contains("exactly one of namespaces, pods")
        );
    }

    #[test]
    fn unknown_peers_are_kept_with_their_fields() {
        let cl = cluster(&cnp(
            "v1beta1",
            "x",
            "Admin",
            1,
            "  - {action: Deny, to: [{serviceAccounts: {}}]}\n",
        ));
        assert_eq!(
            cl.tiered[0].egress[0].to,
            [Peer::Unknown(vec!["serviceAccounts".into()])]
        );
        assert!(cl.tiered[0].egress[0].has_unknown_peer());
    }
}
