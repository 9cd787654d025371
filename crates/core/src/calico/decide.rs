//! Calico's egress decision for one pod and one destination: tiers in order, policies in
//! order inside a tier, rules in order inside a policy; the first Allow or Deny decides,
//! Pass hands over to the next tier, Log goes on; a tier that applies to the pod but
//! decides nothing drops the packet (or passes it on, with `defaultAction: Pass`); when
//! no tier applies or the last one passes, the pod's namespace profile allows it.
//!
//! Sources: "How policy is evaluated" in
//! <https://docs.tigera.io/calico/latest/reference/resources/tier>, the rule table in
//! <https://docs.tigera.io/calico/latest/reference/resources/globalnetworkpolicy#rule>,
//! and Felix's rendering of endpoint chains (a tier only applies to egress when one of
//! its policies selecting the endpoint governs egress, `felix/rules/endpoints.go`), its
//! policy and tier sort (`felix/calc/policy_sorter.go`) and Calico's translation of rule
//! selectors (`libcalico-go/lib/backend/syncersv1/updateprocessors/rules.go`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;

use super::policy::{
    Action, CalicoNetworkSet, CalicoObject, CalicoPolicy, CalicoTier, EntityRule, PolicyKind,
    PortMatch, Rule, TierAction,
};
use super::selector::{LabelSource, Scope, Selector};
use crate::model::Labels;
use crate::target::{Protocol, Target};

/// The source port assumed for a connection when no rule looks at source ports (the
/// start of the IANA ephemeral range).
pub const EPHEMERAL_PORT: u16 = 49152;

/// A named container port of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    /// The port's name.
    pub name: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// Its number.
    pub port: u16,
}

/// A pod as Calico sees it: its workload endpoint's labels are the pod's labels plus
/// `projectcalico.org/namespace`, `projectcalico.org/orchestrator: k8s` and
/// `projectcalico.org/serviceaccount`, and it inherits its namespace's labels as
/// `pcns.<key>` (with `pcns.projectcalico.org/name`) and its service account's name as
/// `pcsa.projectcalico.org/name`
/// (`libcalico-go/lib/backend/k8s/conversion/conversion.go`, `NamespaceToProfile`).
#[derive(Debug, Clone, Copy)]
pub struct CalicoEndpoint<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Pod labels.
    pub labels: &'a Labels,
    /// The namespace's labels.
    pub namespace_labels: &'a Labels,
    /// `spec.serviceAccountName` (Kubernetes defaults it to `default`).
    pub service_account: Option<&'a str>,
    /// The pod's addresses, when known (they only matter to rules on `source.nets`).
    pub ips: &'a [IpAddr],
    /// Named container ports.
    pub named_ports: &'a [NamedPort],
}

/// What, besides an address, sits at a destination.
#[derive(Debug, Clone, Copy)]
pub enum DestEndpoint<'a> {
    /// Nothing Calico knows: an address outside the cluster (rule selectors can still
    /// match it through a network set containing it).
    None,
    /// A pod.
    Workload(CalicoEndpoint<'a>),
    /// A host endpoint (a node interface declared as a HostEndpoint).
    Host {
        /// Its labels.
        labels: &'a Labels,
        /// Its named ports.
        named_ports: &'a [NamedPort],
    },
}

/// A destination: address, port and protocol, and what is there.
#[derive(Debug, Clone, Copy)]
pub struct CalicoDest<'a> {
    /// Destination address (`None`: a pod whose address the input does not give).
    pub ip: Option<IpAddr>,
    /// Destination port.
    pub port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
    /// The endpoint at that address, if any.
    pub endpoint: DestEndpoint<'a>,
}

impl CalicoDest<'static> {
    /// An address outside the cluster, as the audit's targets are.
    pub fn external(target: &Target) -> CalicoDest<'static> {
        CalicoDest {
            ip: Some(target.ip),
            port: target.port,
            protocol: target.protocol,
            endpoint: DestEndpoint::None,
        }
    }
}

/// The Calico objects of a cluster, indexed for [`decide`]: tiers in evaluation order
/// (Calico's built-in tiers included), each with its policies in evaluation order.
#[derive(Debug, Clone, Default)]
pub struct CalicoPolicies {
    policies: Vec<CalicoPolicy>,
    tiers: Vec<TierEntry>,
    network_sets: Vec<CalicoNetworkSet>,
    namespaces: BTreeMap<String, Labels>,
}

#[derive(Debug, Clone)]
struct TierEntry {
    tier: CalicoTier,
    /// Built in, or a Tier object was read. Felix skips the policies of a tier it has
    /// no Tier for ("tier metadata missing; packets will skip tier").
    declared: bool,
    /// Its policies in evaluation order.
    policies: Vec<usize>,
    /// The cluster-wide ones, in evaluation order.
    global: Vec<usize>,
    /// The namespaced ones by namespace, in evaluation order: a pod's selection looks
    /// at its namespace's only.
    by_ns: HashMap<String, Vec<usize>>,
    /// Each policy's position in `policies` (by policy index; only this tier's are set).
    rank: HashMap<usize, usize>,
}

impl TierEntry {
    fn new(tier: CalicoTier, declared: bool) -> TierEntry {
        TierEntry {
            tier,
            declared,
            policies: vec![],
            global: vec![],
            by_ns: HashMap::new(),
            rank: HashMap::new(),
        }
    }

    /// The policies a pod of `namespace` may be selected by, in evaluation order.
    fn candidates(&self, namespace: &str) -> Vec<usize> {
        let Some(ns) = self.by_ns.get(namespace) else {
            return self.global.clone();
        };
        let (mut a, mut b) = (self.global.iter().peekable(), ns.iter().peekable());
        let mut out = Vec::with_capacity(self.global.len() + ns.len());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(&&x), Some(&&y)) => {
                    if self.rank[&x] < self.rank[&y] {
                        a.next()
                    } else {
                        b.next()
                    }
                }
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => break,
            };
            out.extend(next);
        }
        out
    }
}

impl CalicoPolicies {
    /// Indexes policies (Calico's, and Kubernetes kinds converted with
    /// [`CalicoPolicy::from_kubernetes`] or built by the caller), tiers and network sets.
    /// The last copy of an object (same kind, namespace and name) wins, as with
    /// `kubectl apply`. `namespaces` gives the labels of each namespace, for network sets'
    /// inherited labels.
    pub fn build(
        policies: Vec<CalicoPolicy>,
        tiers: Vec<CalicoTier>,
        network_sets: Vec<CalicoNetworkSet>,
        namespaces: BTreeMap<String, Labels>,
    ) -> CalicoPolicies {
        let mut by_key: BTreeMap<(PolicyKind, Option<String>, String), CalicoPolicy> =
            BTreeMap::new();
        for p in policies {
            by_key.insert((p.kind, p.namespace.clone(), p.name.clone()), p);
        }
        let policies: Vec<CalicoPolicy> = by_key.into_values().collect();
        let mut tier_map: BTreeMap<String, TierEntry> = CalicoTier::built_in()
            .into_iter()
            .map(|t| (t.name.clone(), TierEntry::new(t, true)))
            .collect();
        for t in tiers {
            tier_map.insert(t.name.clone(), TierEntry::new(t, true));
        }
        for (i, p) in policies.iter().enumerate() {
            tier_map
                .entry(p.tier.clone())
                .or_insert_with(|| {
                    let tier = CalicoTier {
                        name: p.tier.clone(),
                        order: None,
                        default_action: TierAction::Deny,
                        source: None,
                    };
                    TierEntry::new(tier, false)
                })
                .policies
                .push(i);
        }
        let mut tiers: Vec<TierEntry> = tier_map.into_values().collect();
        // felix/calc/policy_sorter.go TierLess: tiers Felix knows first, then by order
        // (unset last), ties by name.
        tiers.sort_by(|a, b| {
            (!a.declared)
                .cmp(&!b.declared)
                .then(cmp_order(a.tier.order, b.tier.order))
                .then(a.tier.name.cmp(&b.tier.name))
        });
        let keys: Vec<(String, String, &'static str)> = policies
            .iter()
            .map(|p| {
                (
                    p.backend_name(),
                    p.namespace.clone().unwrap_or_default(),
                    p.kind.kind(),
                )
            })
            .collect();
        for t in &mut tiers {
            // PolKVLess: by order (unset last), ties by name, namespace, kind.
            t.policies.sort_by(|&a, &b| {
                cmp_order(policies[a].order, policies[b].order).then(keys[a].cmp(&keys[b]))
            });
            for (rank, &i) in t.policies.iter().enumerate() {
                t.rank.insert(i, rank);
                match &policies[i].namespace {
                    Some(ns) if policies[i].kind.namespaced() => {
                        t.by_ns.entry(ns.clone()).or_default().push(i)
                    }
                    _ => t.global.push(i),
                }
            }
        }
        let mut sets: BTreeMap<(Option<String>, String), CalicoNetworkSet> = BTreeMap::new();
        for s in network_sets {
            sets.insert((s.namespace.clone(), s.name.clone()), s);
        }
        CalicoPolicies {
            policies,
            tiers,
            network_sets: sets.into_values().collect(),
            namespaces,
        }
    }

    /// [`CalicoPolicies::build`] from parsed objects.
    pub fn from_objects(
        objects: impl IntoIterator<Item = CalicoObject>,
        namespaces: BTreeMap<String, Labels>,
    ) -> CalicoPolicies {
        let (mut p, mut t, mut s) = (vec![], vec![], vec![]);
        for o in objects {
            match o {
                CalicoObject::Policy(x) => p.push(*x),
                CalicoObject::Tier(x) => t.push(x),
                CalicoObject::NetworkSet(x) => s.push(x),
            }
        }
        CalicoPolicies::build(p, t, s, namespaces)
    }

    /// The policies (deduplicated), in no particular order.
    pub fn policies(&self) -> &[CalicoPolicy] {
        &self.policies
    }

    /// The tiers in evaluation order, each with whether Felix knows it (built in or
    /// declared) and its policies in evaluation order.
    pub fn tiers(&self) -> impl Iterator<Item = (&CalicoTier, bool, Vec<&CalicoPolicy>)> {
        self.tiers.iter().map(|t| {
            (
                &t.tier,
                t.declared,
                t.policies.iter().map(|&i| &self.policies[i]).collect(),
            )
        })
    }

    /// The network sets.
    pub fn network_sets(&self) -> &[CalicoNetworkSet] {
        &self.network_sets
    }

    /// Whether there is no policy at all.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }
}

fn cmp_order(a: Option<f64>, b: Option<f64>) -> std::cmp::Ordering {
    match (a, b) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    }
}

/// A policy named in a decision.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CalicoPolicyRef {
    /// Kind (and API group, through [`PolicyKind::group`]).
    pub kind: PolicyKind,
    /// Namespace, for namespaced kinds.
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
}

impl CalicoPolicyRef {
    fn of(p: &CalicoPolicy) -> CalicoPolicyRef {
        CalicoPolicyRef {
            kind: p.kind,
            namespace: p.namespace.clone(),
            name: p.name.clone(),
        }
    }
}

impl fmt::Display for CalicoPolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            PolicyKind::NetworkPolicy => "Calico NetworkPolicy",
            PolicyKind::KubernetesNetworkPolicy => "NetworkPolicy",
            other => other.kind(),
        };
        match &self.namespace {
            Some(ns) => write!(f, "{kind} {ns}/{}", self.name),
            None => write!(f, "{kind} {}", self.name),
        }
    }
}

/// How Calico ends up treating the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CalicoVerdict {
    /// An Allow rule matched.
    Allow,
    /// A Deny rule matched.
    Deny,
    /// A tier applied to the pod (one of its policies selects the pod for egress), none
    /// of its policies decided, and its default action is Deny: dropped.
    EndOfTier,
    /// The last tier that applied passed it on (a Pass rule, or a tier whose default
    /// action is Pass): the namespace profile allows it.
    Passed,
    /// No policy in any tier selects the pod for egress: the namespace profile allows
    /// it.
    NotSelected,
}

/// Calico's answer for one pod and one destination, with what decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalicoDecision {
    /// The outcome.
    pub verdict: CalicoVerdict,
    /// The deciding tier (for Allow, Deny, EndOfTier, and the last tier for Passed).
    pub tier: Option<String>,
    /// The deciding policy (Allow, Deny, or the policy whose Pass rule fired last).
    pub policy: Option<CalicoPolicyRef>,
    /// The deciding rule, e.g. `egress[2]`.
    pub rule: Option<String>,
    /// For EndOfTier: the policies of that tier that select the pod.
    pub selecting: Vec<CalicoPolicyRef>,
    /// When the outcome depends on the pod's source port (rules on `source.ports`): a
    /// port the pod may pick to get this outcome.
    pub source_port: Option<u16>,
    /// What the evaluation assumed or skipped, in words.
    pub notes: Vec<String>,
}

impl CalicoDecision {
    /// Whether the packet gets through.
    pub fn allowed(&self) -> bool {
        matches!(
            self.verdict,
            CalicoVerdict::Allow | CalicoVerdict::Passed | CalicoVerdict::NotSelected
        )
    }

    /// One sentence saying why.
    pub fn reason(&self) -> String {
        let tier = self.tier.as_deref().unwrap_or("?");
        let by = || match (&self.policy, &self.rule) {
            (Some(p), Some(r)) => format!("{p}#{r}"),
            (Some(p), None) => p.to_string(),
            _ => "?".to_string(),
        };
        let mut s = match self.verdict {
            CalicoVerdict::Allow => format!("allowed by {} in Calico tier {tier}", by()),
            CalicoVerdict::Deny => format!("denied by {} in Calico tier {tier}", by()),
            CalicoVerdict::EndOfTier => {
                let names: Vec<String> = self.selecting.iter().take(3).map(ToString::to_string).collect();
                let more = self.selecting.len().saturating_sub(3);
                format!(
                    "denied at the end of Calico tier {tier}: {}{} select{} the pod for egress and no rule allows or passes it",
                    names.join(", "),
                    if more > 0 { format!(" and {more} more") } else { String::new() },
                    if self.selecting.len() == 1 { "s" } else { "" }
                )
            }
            CalicoVerdict::Passed => match &self.policy {
                Some(_) => format!(
                    "allowed: passed by {} in Calico tier {tier} and no later tier selects the pod (its namespace profile allows)",
                    by()
                ),
                None => format!(
                    "allowed: Calico tier {tier} passes by default and no later tier selects the pod (its namespace profile allows)"
                ),
            },
            CalicoVerdict::NotSelected => {
                "allowed: no Calico policy in any tier selects the pod for egress (its namespace profile allows)".to_string()
            }
        };
        if let Some(p) = self.source_port {
            s.push_str(&format!(", when the pod connects from source port {p}"));
        }
        s
    }
}

/// Decides egress from `src` to `dst` as Calico does. See the module documentation.
///
/// Source ports are the pod's choice: when rules look at `source.ports`, the decision
/// for [`EPHEMERAL_PORT`] is returned unless another source port gets the packet
/// through, in which case that one is (with [`CalicoDecision::source_port`] set).
pub fn decide(
    p: &CalicoPolicies,
    src: &CalicoEndpoint<'_>,
    dst: &CalicoDest<'_>,
) -> CalicoDecision {
    let mut notes = Vec::new();
    let mut applying: Vec<(&TierEntry, Vec<usize>)> = Vec::new();
    for t in &p.tiers {
        let selecting: Vec<usize> = t
            .candidates(src.namespace)
            .into_iter()
            .filter(|&i| selects(&p.policies[i], src, &mut notes))
            .collect();
        if selecting.is_empty() {
            continue;
        }
        if !t.declared {
            note(
                &mut notes,
                format!(
                    "tier {} has no Tier object in the input: Felix skips the policies of a tier it has no Tier for, so {} was not evaluated",
                    t.tier.name,
                    list_refs(
                        selecting
                            .iter()
                            .map(|&i| CalicoPolicyRef::of(&p.policies[i]))
                    )
                ),
            );
            continue;
        }
        applying.push((t, selecting));
    }
    let first = walk(p, &applying, src, dst, EPHEMERAL_PORT, &mut notes);
    let mut result = first.clone();
    if !first.allowed() {
        for port in source_port_candidates(p, &applying, src) {
            let mut scratch = Vec::new();
            let d = walk(p, &applying, src, dst, port, &mut scratch);
            if d.allowed() {
                result = d;
                result.source_port = Some(port);
                for n in scratch {
                    note(&mut notes, n);
                }
                note(
                    &mut notes,
                    format!(
                        "rules look at the source port: from port {EPHEMERAL_PORT} the packet is {}, from port {port} it gets through (a pod picks its source port)",
                        if first.verdict == CalicoVerdict::Deny {
                            "denied"
                        } else {
                            "dropped"
                        }
                    ),
                );
                break;
            }
        }
    }
    // What Calico may reject or change about the deciding policy.
    if let Some(r) = &result.policy
        && let Some(pol) = p
            .policies
            .iter()
            .find(|x| x.kind == r.kind && x.namespace == r.namespace && x.name == r.name)
    {
        for w in &pol.warnings {
            note(&mut notes, format!("{r}: {w}"));
        }
    }
    result.notes = notes;
    result
}

fn note(notes: &mut Vec<String>, n: String) {
    if !notes.contains(&n) {
        notes.push(n);
    }
}

fn list_refs(refs: impl Iterator<Item = CalicoPolicyRef>) -> String {
    refs.map(|r| r.to_string()).collect::<Vec<_>>().join(", ")
}

/// Whether a policy applies to the pod's egress: it governs egress, is a policy Felix
/// applies to workload endpoints (not doNotTrack/preDNAT), is in the pod's namespace
/// when namespaced, and its selector, namespaceSelector and serviceAccountSelector
/// match.
fn selects(pol: &CalicoPolicy, src: &CalicoEndpoint<'_>, notes: &mut Vec<String>) -> bool {
    if !pol.egress_type {
        return false;
    }
    if pol.kind.namespaced() && pol.namespace.as_deref() != Some(src.namespace) {
        return false;
    }
    let w = WorkloadView(src);
    if !pol.selector.matches(&w) {
        return false;
    }
    if let Some(ns) = &pol.namespace_selector {
        let v = NamespaceView {
            name: Some(src.namespace),
            labels: Some(src.namespace_labels),
        };
        if !ns.matches_in(&v, Scope::Namespace { namespaced: true }) {
            return false;
        }
    }
    if let Some(sa) = &pol.service_account_selector {
        let v = ServiceAccountView(src.service_account);
        if !sa.matches_in(
            &v,
            Scope::ServiceAccount {
                has_service_account: src.service_account.is_some(),
            },
        ) {
            return false;
        }
    }
    if pol.do_not_track || pol.pre_dnat {
        // felix/calc/event_sequencer.go: doNotTrack and preDNAT policies go to the
        // untracked / pre-DNAT tiers, which only host endpoints have.
        note(
            notes,
            format!(
                "{} selects the pod but is {}: Calico applies it to host endpoints only, not to the pod's traffic",
                CalicoPolicyRef::of(pol),
                if pol.do_not_track {
                    "doNotTrack"
                } else {
                    "preDNAT"
                }
            ),
        );
        return false;
    }
    true
}

fn walk(
    p: &CalicoPolicies,
    applying: &[(&TierEntry, Vec<usize>)],
    src: &CalicoEndpoint<'_>,
    dst: &CalicoDest<'_>,
    src_port: u16,
    notes: &mut Vec<String>,
) -> CalicoDecision {
    let mut passed: Option<(String, Option<(CalicoPolicyRef, String)>)> = None;
    let decision = |verdict, tier: &str, by: Option<(CalicoPolicyRef, String)>| {
        let (policy, rule) = match by {
            Some((p, r)) => (Some(p), Some(r)),
            None => (None, None),
        };
        CalicoDecision {
            verdict,
            tier: Some(tier.to_string()),
            policy,
            rule,
            selecting: vec![],
            source_port: None,
            notes: vec![],
        }
    };
    'tiers: for (t, selecting) in applying {
        let name = &t.tier.name;
        for &i in selecting {
            let pol = &p.policies[i];
            for rule in &pol.egress {
                if !rule_matches(p, pol, rule, src, dst, src_port, notes) {
                    continue;
                }
                let by = Some((CalicoPolicyRef::of(pol), rule.label.clone()));
                match rule.action {
                    Action::Allow => return decision(CalicoVerdict::Allow, name, by),
                    Action::Deny => return decision(CalicoVerdict::Deny, name, by),
                    Action::Log => {}
                    Action::Pass => {
                        passed = Some((name.clone(), by));
                        continue 'tiers;
                    }
                }
            }
        }
        match t.tier.default_action {
            TierAction::Pass => passed = Some((name.clone(), None)),
            TierAction::Deny => {
                let mut d = decision(CalicoVerdict::EndOfTier, name, None);
                d.selecting = selecting
                    .iter()
                    .map(|&i| CalicoPolicyRef::of(&p.policies[i]))
                    .collect();
                return d;
            }
        }
    }
    match passed {
        Some((tier, by)) => decision(CalicoVerdict::Passed, &tier, by),
        None => CalicoDecision {
            verdict: CalicoVerdict::NotSelected,
            tier: None,
            policy: None,
            rule: None,
            selecting: vec![],
            source_port: None,
            notes: vec![],
        },
    }
}

/// Source ports at which the outcome may change: the ends of every source port range
/// of the applying policies' egress rules and their neighbours, and the pod's named
/// ports those rules name.
fn source_port_candidates(
    p: &CalicoPolicies,
    applying: &[(&TierEntry, Vec<usize>)],
    src: &CalicoEndpoint<'_>,
) -> Vec<u16> {
    let mut out = std::collections::BTreeSet::new();
    for (_, selecting) in applying {
        for &i in selecting {
            for rule in &p.policies[i].egress {
                for pm in rule.source.ports.iter().chain(&rule.source.not_ports) {
                    match pm {
                        PortMatch::Range { first, last } => {
                            for x in [
                                Some(*first),
                                Some(*last),
                                first.checked_sub(1),
                                last.checked_add(1),
                            ]
                            .into_iter()
                            .flatten()
                            {
                                out.insert(x);
                            }
                        }
                        PortMatch::Named(n) => {
                            out.extend(
                                src.named_ports
                                    .iter()
                                    .filter(|np| &np.name == n)
                                    .map(|np| np.port),
                            );
                        }
                    }
                }
            }
        }
    }
    out.remove(&0);
    out.remove(&EPHEMERAL_PORT);
    out.into_iter().collect()
}

/// One end of a rule: the address and port on that side, the endpoint there (if any)
/// and the network sets containing the address.
struct Side<'a> {
    ip: Option<IpAddr>,
    port: u16,
    endpoint: Option<Entity<'a>>,
    sets: Vec<Entity<'a>>,
    /// `source` or `destination`, for notes.
    name: &'static str,
}

impl<'a> Side<'a> {
    fn entities(&self) -> impl Iterator<Item = &Entity<'a>> {
        self.endpoint.iter().chain(&self.sets)
    }
}

#[derive(Clone, Copy)]
enum Entity<'a> {
    Workload(&'a CalicoEndpoint<'a>),
    Host {
        labels: &'a Labels,
        named_ports: &'a [NamedPort],
    },
    Set {
        set: &'a CalicoNetworkSet,
        namespace_labels: Option<&'a Labels>,
    },
}

impl<'a> Entity<'a> {
    fn namespace(&self) -> Option<&'a str> {
        match self {
            Entity::Workload(w) => Some(w.namespace),
            Entity::Host { .. } => None,
            Entity::Set { set, .. } => set.namespace.as_deref(),
        }
    }

    fn named_ports(&self) -> &'a [NamedPort] {
        match self {
            Entity::Workload(w) => w.named_ports,
            Entity::Host { named_ports, .. } => named_ports,
            Entity::Set { .. } => &[],
        }
    }

    fn namespace_view(&self) -> NamespaceView<'a> {
        match self {
            Entity::Workload(w) => NamespaceView {
                name: Some(w.namespace),
                labels: Some(w.namespace_labels),
            },
            Entity::Host { .. } => NamespaceView {
                name: None,
                labels: None,
            },
            Entity::Set {
                set,
                namespace_labels,
            } => NamespaceView {
                name: set.namespace.as_deref(),
                labels: *namespace_labels,
            },
        }
    }

    fn service_account(&self) -> Option<&'a str> {
        match self {
            Entity::Workload(w) => w.service_account,
            _ => None,
        }
    }
}

impl LabelSource for Entity<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        match self {
            Entity::Workload(w) => workload_label(w, key),
            Entity::Host { labels, .. } => labels.label(key),
            Entity::Set {
                set,
                namespace_labels,
            } => {
                if let Some(v) = set.labels.get(key) {
                    return Some(v);
                }
                let ns = set.namespace.as_deref()?;
                if key == "projectcalico.org/namespace" {
                    return Some(ns);
                }
                let rest = key.strip_prefix("pcns.")?;
                NamespaceView {
                    name: Some(ns),
                    labels: *namespace_labels,
                }
                .get(rest)
            }
        }
    }
}

/// A pod's endpoint labels, with what Calico adds (see [`CalicoEndpoint`]).
struct WorkloadView<'a, 'b>(&'b CalicoEndpoint<'a>);

fn workload_label<'a>(w: &CalicoEndpoint<'a>, key: &str) -> Option<&'a str> {
    match key {
        "projectcalico.org/namespace" => return Some(w.namespace),
        "projectcalico.org/orchestrator" => return Some("k8s"),
        "projectcalico.org/serviceaccount" if w.service_account.is_some() => {
            return w.service_account;
        }
        _ => {}
    }
    if let Some(v) = w.labels.get(key) {
        return Some(v);
    }
    if let Some(rest) = key.strip_prefix("pcns.") {
        return NamespaceView {
            name: Some(w.namespace),
            labels: Some(w.namespace_labels),
        }
        .get(rest);
    }
    if key == "pcsa.projectcalico.org/name" {
        return w.service_account;
    }
    None
}

impl LabelSource for WorkloadView<'_, '_> {
    fn label(&self, key: &str) -> Option<&str> {
        workload_label(self.0, key)
    }
}

/// A namespace's labels as a `namespaceSelector` sees them: its labels plus
/// `projectcalico.org/name`.
struct NamespaceView<'a> {
    name: Option<&'a str>,
    labels: Option<&'a Labels>,
}

impl<'a> NamespaceView<'a> {
    fn get(&self, key: &str) -> Option<&'a str> {
        if let Some(v) = self.labels.and_then(|l| l.get(key)) {
            return Some(v.as_str());
        }
        if key == "projectcalico.org/name" {
            return self.name;
        }
        None
    }
}

impl LabelSource for NamespaceView<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key)
    }
}

/// A service account as a `serviceAccountSelector` sees it: only its name
/// (`projectcalico.org/name`); ServiceAccount objects (and their labels) are not read.
struct ServiceAccountView<'a>(Option<&'a str>);

impl LabelSource for ServiceAccountView<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        if key == "projectcalico.org/name" {
            self.0
        } else {
            None
        }
    }
}

fn sets_containing<'a>(p: &'a CalicoPolicies, ip: Option<IpAddr>) -> Vec<Entity<'a>> {
    let Some(ip) = ip else {
        return vec![];
    };
    p.network_sets
        .iter()
        .filter(|s| s.contains(ip))
        .map(|set| Entity::Set {
            set,
            namespace_labels: set.namespace.as_ref().and_then(|ns| p.namespaces.get(ns)),
        })
        .collect()
}

fn rule_matches(
    p: &CalicoPolicies,
    pol: &CalicoPolicy,
    rule: &Rule,
    src: &CalicoEndpoint<'_>,
    dst: &CalicoDest<'_>,
    src_port: u16,
    notes: &mut Vec<String>,
) -> bool {
    if rule.icmp {
        return false;
    }
    if let (Some(v), Some(ip)) = (rule.ip_version, dst.ip)
        && v != if ip.is_ipv4() { 4 } else { 6 }
    {
        return false;
    }
    if rule
        .protocol
        .as_ref()
        .is_some_and(|x| !x.matches(dst.protocol))
    {
        return false;
    }
    if rule
        .not_protocol
        .as_ref()
        .is_some_and(|x| x.matches(dst.protocol))
    {
        return false;
    }
    let dst_endpoint = match &dst.endpoint {
        DestEndpoint::None => None,
        DestEndpoint::Workload(w) => Some(Entity::Workload(w)),
        DestEndpoint::Host {
            labels,
            named_ports,
        } => Some(Entity::Host {
            labels,
            named_ports,
        }),
    };
    let dst_side = Side {
        ip: dst.ip,
        port: dst.port,
        endpoint: dst_endpoint,
        sets: sets_containing(p, dst.ip),
        name: "destination",
    };
    if !entity_matches(pol, rule, &rule.destination, &dst_side, dst.protocol, notes) {
        return false;
    }
    let src_ip = src
        .ips
        .iter()
        .copied()
        .find(|ip| dst.ip.is_none_or(|d| ip.is_ipv4() == d.is_ipv4()));
    let src_side = Side {
        ip: src_ip,
        port: src_port,
        endpoint: Some(Entity::Workload(src)),
        sets: sets_containing(p, src_ip),
        name: "source",
    };
    entity_matches(pol, rule, &rule.source, &src_side, dst.protocol, notes)
}

/// Whether one end of the packet matches a rule's `source` or `destination`.
fn entity_matches(
    pol: &CalicoPolicy,
    rule: &Rule,
    er: &EntityRule,
    side: &Side<'_>,
    protocol: Protocol,
    notes: &mut Vec<String>,
) -> bool {
    let at = || format!("{}#{}", CalicoPolicyRef::of(pol), rule.label);
    if !er.nets.is_empty() {
        match side.ip {
            Some(ip) => {
                if !er.nets.iter().any(|n| n.contains(&ip)) {
                    return false;
                }
            }
            None => {
                note(
                    notes,
                    format!(
                        "{}: {}.nets needs the pod's address, which the input does not give; taken as not matching",
                        at(),
                        side.name
                    ),
                );
                return false;
            }
        }
    }
    if !er.not_nets.is_empty() {
        match side.ip {
            Some(ip) => {
                if er.not_nets.iter().any(|n| n.contains(&ip)) {
                    return false;
                }
            }
            None => note(
                notes,
                format!(
                    "{}: {}.notNets needs the pod's address, which the input does not give; taken as matching",
                    at(),
                    side.name
                ),
            ),
        }
    }
    let positive_applies = positive_selector_applies(pol, er);
    if positive_applies && !side.entities().any(|e| positive_matches(pol, er, e)) {
        return false;
    }
    if let Some(not) = &er.not_selector
        && side.entities().any(|e| not.matches(e))
    {
        return false;
    }
    if let Some(svc) = &er.services {
        note(
            notes,
            format!(
                "{}: {}.services names Service {}/{}; Services and their endpoints are not read, so it is taken as not matching",
                at(),
                side.name,
                svc.namespace.as_deref().unwrap_or("?"),
                svc.name
            ),
        );
        return false;
    }
    let port_matches = |pm: &PortMatch| match pm {
        PortMatch::Range { first, last } => (*first..=*last).contains(&side.port),
        // A named port resolves on the endpoint that declares it (and matches the rule's
        // selector): it never matches a bare address.
        PortMatch::Named(name) => side.endpoint.as_ref().is_some_and(|e| {
            e.named_ports()
                .iter()
                .any(|np| &np.name == name && np.port == side.port && np.protocol == protocol)
                && (!positive_applies || positive_matches(pol, er, e))
        }),
    };
    if !er.ports.is_empty() && !er.ports.iter().any(port_matches) {
        return false;
    }
    if er.not_ports.iter().any(port_matches) {
        return false;
    }
    true
}

/// Whether a rule side has a positive endpoint selector, as Calico builds it
/// (`getEndpointSelector` in rules.go): the selector and serviceAccounts, scoped to the
/// namespaceSelector's namespaces, or for a namespaced policy to its own namespace as
/// soon as any selector field (notSelector included) is used.
fn positive_selector_applies(pol: &CalicoPolicy, er: &EntityRule) -> bool {
    let has_selector = er.selector.is_some() || er.service_accounts.is_some();
    let scoped = er.namespace_selector.is_some() || pol.kind.namespaced();
    has_selector || (scoped && (er.not_selector.is_some() || er.namespace_selector.is_some()))
}

fn positive_matches(pol: &CalicoPolicy, er: &EntityRule, e: &Entity<'_>) -> bool {
    let has_selector = er.selector.is_some() || er.service_accounts.is_some();
    let scope_needed = has_selector || er.not_selector.is_some() || er.namespace_selector.is_some();
    if scope_needed {
        if let Some(ns_sel) = &er.namespace_selector {
            let scope = Scope::Namespace {
                namespaced: e.namespace().is_some(),
            };
            if !ns_sel.matches_in(&e.namespace_view(), scope) {
                return false;
            }
        } else if pol.kind.namespaced() && e.namespace() != pol.namespace.as_deref() {
            return false;
        }
    }
    if let Some(sam) = &er.service_accounts {
        let sa = e.service_account();
        if !sam.names.is_empty() && !sa.is_some_and(|s| sam.names.iter().any(|n| n == s)) {
            return false;
        }
        if let Some(sel) = &sam.selector
            && !sel.matches(&ServiceAccountView(sa))
        {
            return false;
        }
    }
    er.selector.as_ref().is_none_or(|s: &Selector| s.matches(e))
}
