//! Deciding one connection: a pod (the source) toward an address outside the cluster, a
//! pod or a node, under the Cilium policies that select the pod and, for
//! [`decide_with_netpol`], the NetworkPolicies of its namespace as Cilium enforces them.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use super::identity::{Identity, relevant_labels};
use super::model::{
    CidrRule, CiliumPolicies, CiliumPolicy, Entity, L4Proto, L7Kind, Peer, PolicyKind, PolicyRef,
    PortRule, PortSel, Rule, Selector, Spec, Subject,
};
use super::{CiliumOptions, LinkLocalAs};
use crate::model::{self, Labels, NetworkPolicy, PortSpec};
use crate::netpol::ip_block_contains;
use crate::target::Protocol;

/// The source of a connection: a pod shape.
#[derive(Debug, Clone, Copy)]
pub struct CiliumEndpoint<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Pod labels.
    pub labels: &'a Labels,
    /// Labels of its namespace (with `kubernetes.io/metadata.name`).
    pub namespace_labels: &'a Labels,
    /// `spec.serviceAccountName` (`None`: `default`).
    pub service_account: Option<&'a str>,
}

/// The destination of a connection.
#[derive(Debug, Clone, Copy)]
pub enum CiliumDest<'a> {
    /// An address outside the pod network (what the audit checks): `world`, or for a
    /// link-local address what [`CiliumOptions::link_local`] says.
    External {
        /// Address.
        ip: IpAddr,
        /// Port.
        port: u16,
        /// Protocol.
        protocol: Protocol,
    },
    /// A pod managed by Cilium.
    Pod {
        /// The pod, as for a source.
        endpoint: CiliumEndpoint<'a>,
        /// Port.
        port: u16,
        /// Protocol.
        protocol: Protocol,
        /// Its named container ports: (name, protocol, number).
        named_ports: &'a [(String, Protocol, u16)],
    },
    /// A node (or a hostNetwork pod on it).
    Node {
        /// Address.
        ip: IpAddr,
        /// Port.
        port: u16,
        /// Protocol.
        protocol: Protocol,
        /// Node labels.
        labels: &'a Labels,
        /// Whether it is the source pod's own node (`host`) or another (`remote-node`);
        /// `None`: unknown, reachable when reachable either way.
        local: Option<bool>,
    },
}

impl CiliumDest<'_> {
    fn port_proto(&self) -> (u16, Protocol) {
        match *self {
            CiliumDest::External { port, protocol, .. }
            | CiliumDest::Pod { port, protocol, .. }
            | CiliumDest::Node { port, protocol, .. } => (port, protocol),
        }
    }
}

/// A rule of a policy: `CiliumNetworkPolicy ns/name` and `egressDeny[0]` (or
/// `specs[1].egress[0]`; `egress[2]` for a NetworkPolicy).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct RuleRef {
    /// The policy.
    pub policy: PolicyRef,
    /// The rule within it.
    pub rule: String,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.policy, self.rule)
    }
}

/// How the connection was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// No policy puts the pod's egress in default-deny, and no deny matches.
    NotIsolated,
    /// Policies select the pod for egress but all of them have
    /// `enableDefaultDeny.egress: false`: default-allow, and no deny matches.
    DefaultAllow,
    /// Default-deny, and an allow rule matches.
    Allowed,
    /// An `egressDeny` rule matches (it beats every allow).
    Denied,
    /// Default-deny, and no allow rule matches.
    DefaultDenied,
}

/// Something the verdict depends on that the input does not settle, or that the reader
/// must know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "note", rename_all = "kebab-case")]
pub enum Note {
    /// Allowed at L3/L4 by a rule with L7 rules: the L7 proxy filters the requests.
    L7Filtered {
        /// The rule.
        rule: RuleRef,
        /// Which L7 rules.
        l7: L7Kind,
    },
    /// The allowing rule requires mutual authentication first.
    Authentication {
        /// The rule.
        rule: RuleRef,
        /// `authentication.mode`.
        mode: String,
    },
    /// A `toFQDNs` allow rule with matching ports: it allows the address if one of the
    /// names resolves to it, which an audit of manifests cannot know.
    Fqdn {
        /// The rule.
        rule: RuleRef,
        /// `matchName` / `matchPattern` values.
        names: Vec<String>,
    },
    /// A `toServices` rule with matching ports: Services are not read, not evaluated.
    Services {
        /// The rule.
        rule: RuleRef,
        /// Whether it is a deny rule.
        deny: bool,
    },
    /// A `toGroups` rule (cloud security groups): not evaluated.
    Groups {
        /// The rule.
        rule: RuleRef,
        /// Whether it is a deny rule.
        deny: bool,
    },
    /// A `cidrGroupRef` whose CiliumCIDRGroup is not in the input, or a
    /// `cidrGroupSelector` that selects none: it resolves to no CIDR, so it matches
    /// nothing (an allow allows nothing, a deny denies nothing).
    CidrGroupUnresolved {
        /// The rule.
        rule: RuleRef,
        /// The group name (`None` for a selector).
        group: Option<String>,
        /// Whether it is a deny rule.
        deny: bool,
    },
    /// A policy that would select the pod is refused by the Cilium agent: no effect.
    Rejected {
        /// The policy.
        policy: PolicyRef,
        /// Why.
        reason: String,
    },
    /// A selecting policy has a parse-time warning.
    Warning {
        /// The policy.
        policy: PolicyRef,
        /// The warning.
        text: String,
    },
    /// The verdict depends on how Cilium classifies the destination.
    Classification {
        /// The classification the verdict uses.
        used: Entity,
        /// The other classification.
        other: Entity,
        /// Whether the other one allows the connection.
        other_allowed: bool,
        /// What the other one says.
        other_reason: String,
    },
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::L7Filtered { rule, l7 } => write!(
                f,
                "{rule} allows the connection at L3/L4 only through the L7 proxy ({} rules): requests it does not match are refused",
                l7_name(*l7)
            ),
            Note::Authentication { rule, mode } => write!(
                f,
                "{rule} requires authentication (mode `{mode}`) before traffic flows"
            ),
            Note::Fqdn { rule, names } => write!(
                f,
                "{rule} allows the names {} (toFQDNs): if one resolves to this address it is allowed; an audit of manifests cannot tell",
                names.join(", ")
            ),
            Note::Services { rule, deny } => write!(
                f,
                "{rule} ({}) names Services (toServices), which are not evaluated",
                if *deny { "deny" } else { "allow" }
            ),
            Note::Groups { rule, deny } => write!(
                f,
                "{rule} ({}) names cloud groups (toGroups), which are not evaluated",
                if *deny { "deny" } else { "allow" }
            ),
            Note::CidrGroupUnresolved { rule, group, deny } => {
                let what = match group {
                    Some(g) => format!("CiliumCIDRGroup `{g}` is not in the input"),
                    None => {
                        "its cidrGroupSelector selects no CiliumCIDRGroup of the input".to_string()
                    }
                };
                write!(
                    f,
                    "{rule}: {what}; Cilium resolves it to no CIDR, so {} through it: add the CiliumCIDRGroup objects to the input",
                    if *deny {
                        "the deny denies nothing"
                    } else {
                        "the allow allows nothing"
                    }
                )
            }
            Note::Rejected { policy, reason } => write!(
                f,
                "{policy} is refused by the Cilium agent and has no effect: {reason}"
            ),
            Note::Warning { policy, text } => write!(f, "{policy}: {text}"),
            Note::Classification {
                used,
                other,
                other_allowed,
                other_reason,
            } => write!(
                f,
                "decided as if Cilium classifies the address as `{}`; as `{}` it would be {} ({other_reason}); set the classification (--cilium-link-local) if you know the platform",
                used.as_str(),
                other.as_str(),
                if *other_allowed { "allowed" } else { "denied" }
            ),
        }
    }
}

fn l7_name(k: L7Kind) -> &'static str {
    match k {
        L7Kind::Http => "HTTP",
        L7Kind::Kafka => "Kafka",
        L7Kind::Dns => "DNS",
        L7Kind::Generic => "l7proto",
        L7Kind::Sni => "TLS server name",
    }
}

/// What Cilium (and, through [`decide_with_netpol`], NetworkPolicy under Cilium) says about
/// one connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CiliumDecision {
    /// Whether the connection is allowed.
    pub allowed: bool,
    /// How.
    pub outcome: Outcome,
    /// The deciding rule (a deny for `Denied`, an allow for `Allowed`).
    pub rule: Option<RuleRef>,
    /// The policies that put the pod in egress default-deny (for `Allowed` and
    /// `DefaultDenied`), or the default-allow ones (for `DefaultAllow`).
    pub isolating: Vec<PolicyRef>,
    /// The entity the destination was taken to be (`world`, `host`, `remote-node`; `None`
    /// for a pod).
    pub classified_as: Option<Entity>,
    /// One sentence.
    pub reason: String,
    /// What else the verdict depends on.
    pub notes: Vec<Note>,
}

impl CiliumDecision {
    /// The deciding policy.
    pub fn policy(&self) -> Option<&PolicyRef> {
        self.rule
            .as_ref()
            .map(|r| &r.policy)
            .or_else(|| self.isolating.first())
    }
}

/// Decides a connection from Cilium's policies alone (no NetworkPolicy).
pub fn decide(
    policies: &CiliumPolicies,
    src: &CiliumEndpoint<'_>,
    dst: &CiliumDest<'_>,
    opts: &CiliumOptions,
) -> CiliumDecision {
    decide_with_netpol(policies, &[], src, dst, opts)
}

/// Decides a connection from Cilium's policies and the NetworkPolicies of the source's
/// namespace (`netpols`: every NetworkPolicy of that namespace; which of them select the
/// pod is decided here, on the labels that are part of its Cilium identity), combined as
/// Cilium combines them: a NetworkPolicy with the Egress type puts the pod in
/// default-deny like a Cilium policy, its rules add to the Cilium allows, its `ipBlock`s
/// match `world` addresses only, and every Cilium deny beats them.
pub fn decide_with_netpol(
    policies: &CiliumPolicies,
    netpols: &[&NetworkPolicy],
    src: &CiliumEndpoint<'_>,
    dst: &CiliumDest<'_>,
    opts: &CiliumOptions,
) -> CiliumDecision {
    let ctx = Ctx::new(policies, netpols, src, opts);
    let classes: Vec<Class<'_>> = match *dst {
        CiliumDest::External { ip, .. } => {
            if is_link_local(ip) {
                match opts.link_local {
                    LinkLocalAs::World => vec![Class::World(ip)],
                    LinkLocalAs::Host => vec![Class::Host(None)],
                    LinkLocalAs::Either => vec![Class::World(ip), Class::Host(None)],
                }
            } else {
                vec![Class::World(ip)]
            }
        }
        CiliumDest::Pod {
            endpoint,
            named_ports,
            ..
        } => vec![Class::Pod {
            identity: Identity::pod(
                endpoint.namespace,
                endpoint.labels,
                endpoint.namespace_labels,
                endpoint.service_account,
                opts,
            ),
            endpoint,
            named_ports,
        }],
        CiliumDest::Node {
            ip, labels, local, ..
        } => match local {
            Some(true) => vec![Class::Host(Some(labels))],
            Some(false) => vec![Class::RemoteNode(ip, labels)],
            None => vec![Class::Host(Some(labels)), Class::RemoteNode(ip, labels)],
        },
    };
    let (port, protocol) = dst.port_proto();
    let mut decisions: Vec<CiliumDecision> = classes
        .iter()
        .map(|c| ctx.decide_one(c, port, protocol))
        .collect();
    if decisions.len() == 1 {
        return decisions.remove(0);
    }
    let allowed: Vec<usize> = (0..decisions.len())
        .filter(|&i| decisions[i].allowed)
        .collect();
    let chosen = allowed.first().copied().unwrap_or(0);
    let agree = allowed.is_empty() || allowed.len() == decisions.len();
    let mut d = decisions.swap_remove(chosen);
    if !agree {
        // `swap_remove` moved the last element into `chosen`; with two classes the other
        // one is the only element left.
        if let Some(other) = decisions.first() {
            d.notes.push(Note::Classification {
                used: d.classified_as.unwrap_or(Entity::World),
                other: other.classified_as.unwrap_or(Entity::World),
                other_allowed: other.allowed,
                other_reason: other.reason.clone(),
            });
            d.reason = format!(
                "{} (if Cilium classifies the address as `{}`; as `{}`: {})",
                d.reason,
                d.classified_as.unwrap_or(Entity::World).as_str(),
                other.classified_as.unwrap_or(Entity::World).as_str(),
                other.reason
            );
        }
    }
    d
}

/// Link-local addresses, which a node agent may own (see [`LinkLocalAs`]).
pub fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// What the destination is, for one classification.
enum Class<'a> {
    /// Outside the cluster.
    World(IpAddr),
    /// The local node (labels when known).
    Host(Option<&'a Labels>),
    /// Another node.
    RemoteNode(IpAddr, &'a Labels),
    /// A pod.
    Pod {
        identity: Identity,
        endpoint: CiliumEndpoint<'a>,
        named_ports: &'a [(String, Protocol, u16)],
    },
}

impl Class<'_> {
    fn entity(&self) -> Option<Entity> {
        match self {
            Class::World(_) => Some(Entity::World),
            Class::Host(_) => Some(Entity::Host),
            Class::RemoteNode(..) => Some(Entity::RemoteNode),
            Class::Pod { .. } => None,
        }
    }

    fn identity(&self) -> Identity {
        static EMPTY: std::sync::OnceLock<Labels> = std::sync::OnceLock::new();
        let empty = EMPTY.get_or_init(Labels::new);
        match self {
            Class::World(ip) => Identity::world(*ip),
            Class::Host(labels) => Identity::host(labels.unwrap_or(empty)),
            Class::RemoteNode(_, labels) => Identity::remote_node(labels),
            Class::Pod { identity, .. } => identity.clone(),
        }
    }
}

/// A selecting spec of a Cilium policy.
struct Selecting<'a> {
    policy: &'a CiliumPolicy,
    spec: &'a Spec,
}

/// A NetworkPolicy that selects the source.
struct SelectingNp<'a> {
    policy: &'a NetworkPolicy,
    id: PolicyRef,
}

/// Everything about the source, computed once per decision.
struct Ctx<'a> {
    policies: &'a CiliumPolicies,
    opts: &'a CiliumOptions,
    specs: Vec<Selecting<'a>>,
    netpols: Vec<SelectingNp<'a>>,
    requires: Vec<&'a Selector>,
    requires_deny: Vec<&'a Selector>,
    notes: Vec<Note>,
}

/// Whether a rule matched and how.
#[derive(Default)]
struct Match {
    matched: bool,
    l7: Option<L7Kind>,
    notes: Vec<Note>,
}

impl<'a> Ctx<'a> {
    fn new(
        policies: &'a CiliumPolicies,
        netpols: &[&'a NetworkPolicy],
        src: &CiliumEndpoint<'_>,
        opts: &'a CiliumOptions,
    ) -> Ctx<'a> {
        let identity = Identity::pod(
            src.namespace,
            src.labels,
            src.namespace_labels,
            src.service_account,
            opts,
        );
        let mut notes = Vec::new();
        let mut specs = Vec::new();
        for policy in policies.for_namespace(src.namespace) {
            for spec in &policy.specs {
                let Subject::Endpoints(sel) = &spec.subject else {
                    continue;
                };
                if !identity.selected_by(sel, &[]) {
                    continue;
                }
                if let Some(reason) = &policy.rejected {
                    let note = Note::Rejected {
                        policy: policy.id.clone(),
                        reason: reason.clone(),
                    };
                    if !notes.contains(&note) {
                        notes.push(note);
                    }
                    continue;
                }
                for text in &spec.warnings {
                    notes.push(Note::Warning {
                        policy: policy.id.clone(),
                        text: text.clone(),
                    });
                }
                specs.push(Selecting { policy, spec });
            }
        }
        let requires = specs
            .iter()
            .flat_map(|s| s.spec.egress.iter().flat_map(|r| &r.to_requires))
            .collect();
        let requires_deny = specs
            .iter()
            .flat_map(|s| s.spec.egress_deny.iter().flat_map(|r| &r.to_requires))
            .collect();
        let pod_labels = relevant_labels(src.labels, opts);
        let netpols = netpols
            .iter()
            .filter(|p| p.namespace == src.namespace && p.pod_selector.matches(&pod_labels))
            .map(|p| SelectingNp {
                policy: p,
                id: PolicyRef {
                    kind: PolicyKind::NetworkPolicy,
                    namespace: Some(p.namespace.clone()),
                    name: p.name.clone(),
                },
            })
            .collect();
        Ctx {
            policies,
            opts,
            specs,
            netpols,
            requires,
            requires_deny,
            notes,
        }
    }

    fn decide_one(&self, class: &Class<'_>, port: u16, protocol: Protocol) -> CiliumDecision {
        let identity = class.identity();
        let mut notes = self.notes.clone();
        let entity = class.entity();
        let decision = |allowed: bool,
                        outcome: Outcome,
                        rule: Option<RuleRef>,
                        isolating: Vec<PolicyRef>,
                        reason: String,
                        notes: Vec<Note>| CiliumDecision {
            allowed,
            outcome,
            rule,
            isolating,
            classified_as: entity,
            reason,
            notes: relevant_notes(notes, allowed, outcome),
        };

        // 1. Deny rules beat everything.
        for s in &self.specs {
            for (i, rule) in s.spec.egress_deny.iter().enumerate() {
                let rref = RuleRef {
                    policy: s.policy.id.clone(),
                    rule: format!("{}egressDeny[{i}]", s.spec.at),
                };
                let m = self.rule_matches(rule, &rref, class, &identity, port, protocol, true);
                notes.extend(m.notes);
                if m.matched {
                    let reason = format!(
                        "denied by {rref}; a Cilium deny beats every allow (Cilium policies and NetworkPolicies alike)"
                    );
                    return decision(false, Outcome::Denied, Some(rref), vec![], reason, notes);
                }
            }
        }

        // 2. Default-deny or not.
        let mut isolating: Vec<PolicyRef> = Vec::new();
        let mut default_allow: Vec<PolicyRef> = Vec::new();
        for s in &self.specs {
            if s.spec.egress_default_deny() {
                push_unique(&mut isolating, &s.policy.id);
            } else if s.spec.has_egress() {
                push_unique(&mut default_allow, &s.policy.id);
            }
        }
        for np in &self.netpols {
            if np.policy.egress_type {
                push_unique(&mut isolating, &np.id);
            }
        }
        if isolating.is_empty() {
            if default_allow.is_empty() {
                let reason = "no Cilium policy or NetworkPolicy puts its egress in default-deny, and no deny rule matches".to_string();
                return decision(true, Outcome::NotIsolated, None, vec![], reason, notes);
            }
            let reason = format!(
                "selected for egress only by policies with enableDefaultDeny.egress: false ({}): default-allow, and no deny rule matches",
                join(&default_allow)
            );
            return decision(
                true,
                Outcome::DefaultAllow,
                None,
                default_allow,
                reason,
                notes,
            );
        }

        // 3. Allows add up.
        let mut found: Vec<(RuleRef, Option<L7Kind>, Option<String>)> = Vec::new();
        for s in &self.specs {
            for (i, rule) in s.spec.egress.iter().enumerate() {
                let rref = RuleRef {
                    policy: s.policy.id.clone(),
                    rule: format!("{}egress[{i}]", s.spec.at),
                };
                let m = self.rule_matches(rule, &rref, class, &identity, port, protocol, false);
                notes.extend(m.notes);
                if m.matched {
                    found.push((rref, m.l7, rule.authentication.clone()));
                }
            }
        }
        for np in &self.netpols {
            if !np.policy.egress_type {
                continue;
            }
            for (i, rule) in np.policy.egress.iter().enumerate() {
                if self.np_rule_matches(np.policy, rule, class, port, protocol) {
                    found.push((
                        RuleRef {
                            policy: np.id.clone(),
                            rule: format!("egress[{i}]"),
                        },
                        None,
                        None,
                    ));
                }
            }
        }
        // The plainest allow decides: one without L7 filtering or authentication.
        found.sort_by_key(|(_, l7, auth)| (l7.is_some(), auth.is_some()));
        if let Some((rref, l7, auth)) = found.into_iter().next() {
            if let Some(l7) = l7 {
                notes.push(Note::L7Filtered {
                    rule: rref.clone(),
                    l7,
                });
            }
            if let Some(mode) = auth {
                notes.push(Note::Authentication {
                    rule: rref.clone(),
                    mode,
                });
            }
            let mut reason = format!("allowed by {rref}; allows add up across policies");
            if let Some(l7) = l7 {
                reason.push_str(&format!(
                    " (at L3/L4; its {} rules filter the requests)",
                    l7_name(l7)
                ));
            }
            return decision(true, Outcome::Allowed, Some(rref), isolating, reason, notes);
        }
        let reason = format!(
            "denied: egress default-deny by {} and no allow rule matches",
            join(&isolating)
        );
        decision(
            false,
            Outcome::DefaultDenied,
            None,
            isolating,
            reason,
            notes,
        )
    }

    /// Whether a Cilium rule matches the connection (deny rules use the deny
    /// `toRequires`).
    #[allow(clippy::too_many_arguments)]
    fn rule_matches(
        &self,
        rule: &Rule,
        rref: &RuleRef,
        class: &Class<'_>,
        identity: &Identity,
        port: u16,
        protocol: Protocol,
        deny: bool,
    ) -> Match {
        let mut m = Match::default();
        if rule.icmps {
            // An ICMP rule matches ICMP only.
            return m;
        }
        let l7 = if rule.to_ports.is_empty() {
            // L3-only: every port and protocol, but only with a peer.
            if rule.peer.is_none() {
                return m;
            }
            None
        } else {
            match ports_match(&rule.to_ports, class, port, protocol) {
                Some(l7) => l7,
                None => return m,
            }
        };
        let requires = if deny {
            &self.requires_deny
        } else {
            &self.requires
        };
        let peer_ok = match &rule.peer {
            // L4-only rule: every destination.
            None => true,
            Some(Peer::Endpoints(sels)) => sels.iter().any(|s| identity.selected_by(s, requires)),
            Some(Peer::Entities(ents)) => ents.iter().any(|e| identity.is_entity(*e, self.opts)),
            Some(Peer::Cidr(rules)) => {
                let ip = match class {
                    Class::World(ip) => Some(*ip),
                    Class::RemoteNode(ip, _) if self.opts.cidr_selects_nodes => Some(*ip),
                    _ => None,
                };
                match ip {
                    None => false,
                    Some(ip) => rules
                        .iter()
                        .any(|r| self.cidr_rule_matches(r, ip, rref, deny, &mut m.notes)),
                }
            }
            Some(Peer::Nodes(sels)) => match class {
                Class::Host(_) | Class::RemoteNode(..) => {
                    sels.iter().any(|s| identity.selected_by(s, &[]))
                }
                _ => false,
            },
            Some(Peer::Fqdns(names)) => match class {
                // A metadata endpoint's well-known name (tiered::metadata_names, e.g.
                // metadata.google.internal -> 169.254.169.254) resolves to the address:
                // the rule allows it. FQDN-derived IPs get CIDR identities, so only a
                // `world` address, as for CIDR rules.
                Class::World(ip)
                    if !deny
                        && crate::tiered::metadata_names(*ip)
                            .any(|n| names.iter().any(|p| fqdn_matches(p, n))) =>
                {
                    true
                }
                Class::World(_) if !deny => {
                    m.notes.push(Note::Fqdn {
                        rule: rref.clone(),
                        names: names.clone(),
                    });
                    false
                }
                _ => false,
            },
            Some(Peer::Services(_)) => {
                m.notes.push(Note::Services {
                    rule: rref.clone(),
                    deny,
                });
                false
            }
            Some(Peer::Groups(_)) => {
                m.notes.push(Note::Groups {
                    rule: rref.clone(),
                    deny,
                });
                false
            }
        };
        m.matched = peer_ok;
        m.l7 = l7;
        m
    }

    fn cidr_rule_matches(
        &self,
        rule: &CidrRule,
        ip: IpAddr,
        rref: &RuleRef,
        deny: bool,
        notes: &mut Vec<Note>,
    ) -> bool {
        match rule {
            CidrRule::Cidr { cidr, except } => ip_block_contains(cidr, except, ip),
            // A missing group resolves to no CIDR: the agent logs it and translates the
            // rule without it (cilium/cilium#25020: the error names the missing group),
            // so the rule matches nothing through it, deny or allow. For an exposure
            // audit a deny that matches nothing is the cautious reading; the audit
            // reports the reference (`unresolved-reference`).
            CidrRule::GroupRef(name) => match self.policies.cidr_groups.get(name) {
                Some(g) => g.cidrs.iter().any(|c| c.contains(&ip)),
                None => {
                    notes.push(Note::CidrGroupUnresolved {
                        rule: rref.clone(),
                        group: Some(name.clone()),
                        deny,
                    });
                    false
                }
            },
            CidrRule::GroupSelector(sel) => {
                let mut any = false;
                let mut hit = false;
                for g in self.policies.cidr_groups.values() {
                    if sel.matches(&g.labels) {
                        any = true;
                        hit |= g.cidrs.iter().any(|c| c.contains(&ip));
                    }
                }
                if !any {
                    notes.push(Note::CidrGroupUnresolved {
                        rule: rref.clone(),
                        group: None,
                        deny,
                    });
                }
                hit
            }
        }
    }

    /// Whether a NetworkPolicy egress rule admits the connection under Cilium: an empty
    /// `to` admits every destination, an `ipBlock` only `world` addresses (and remote
    /// nodes with `--policy-cidr-match-mode=nodes`), selector peers only pods.
    fn np_rule_matches(
        &self,
        policy: &NetworkPolicy,
        rule: &model::EgressRule,
        class: &Class<'_>,
        port: u16,
        protocol: Protocol,
    ) -> bool {
        let port_ok = rule.ports.is_empty()
            || rule.ports.iter().any(|p| {
                if p.protocol != protocol {
                    return false;
                }
                match &p.port {
                    None => true,
                    Some(PortSpec::Number(n)) => match p.end_port {
                        Some(end) => (*n..=end).contains(&port),
                        None => *n == port,
                    },
                    Some(PortSpec::Named(name)) => match class {
                        Class::Pod { named_ports, .. } => named_ports
                            .iter()
                            .any(|(n, pr, num)| n == name && *pr == protocol && *num == port),
                        _ => false,
                    },
                }
            });
        if !port_ok {
            return false;
        }
        rule.to.is_empty()
            || rule.to.iter().any(|peer| match peer {
                model::Peer::IpBlock { cidr, except } => match class {
                    Class::World(ip) => ip_block_contains(cidr, except, *ip),
                    Class::RemoteNode(ip, _) if self.opts.cidr_selects_nodes => {
                        ip_block_contains(cidr, except, *ip)
                    }
                    _ => false,
                },
                model::Peer::Selector {
                    namespace_selector,
                    pod_selector,
                } => match class {
                    Class::Pod { endpoint, .. } => {
                        let ns_ok = match namespace_selector {
                            None => endpoint.namespace == policy.namespace,
                            Some(s) => s.matches(endpoint.namespace_labels),
                        };
                        ns_ok
                            && pod_selector.as_ref().is_none_or(|s| {
                                s.matches(&relevant_labels(endpoint.labels, self.opts))
                            })
                    }
                    _ => false,
                },
            })
    }
}

/// Whether a `toPorts` list admits the port and protocol; `Some(l7)` with the L7 kind of
/// the plainest matching entry.
fn ports_match(
    rules: &[PortRule],
    class: &Class<'_>,
    port: u16,
    protocol: Protocol,
) -> Option<Option<L7Kind>> {
    let mut best: Option<Option<L7Kind>> = None;
    for r in rules {
        let hit = r.ports.iter().any(|p| {
            let proto_ok = match p.protocol {
                L4Proto::Any => true,
                L4Proto::Tcp => protocol == Protocol::Tcp,
                L4Proto::Udp => protocol == Protocol::Udp,
                L4Proto::Sctp => protocol == Protocol::Sctp,
                L4Proto::Icmp => false,
            };
            if !proto_ok {
                return false;
            }
            match &p.port {
                PortSel::Number(0) => true,
                PortSel::Number(n) => match p.end_port {
                    Some(end) if end > *n => (*n..=end).contains(&port),
                    _ => *n == port,
                },
                PortSel::Named(name) => match class {
                    Class::Pod { named_ports, .. } => named_ports
                        .iter()
                        .any(|(n, pr, num)| n == name && *pr == protocol && *num == port),
                    _ => false,
                },
            }
        });
        if hit {
            match (best, r.l7) {
                (None, l7) => best = Some(l7),
                (Some(Some(_)), None) => best = Some(None),
                _ => {}
            }
        }
    }
    best
}

/// Whether a `toFQDNs` `matchName` or `matchPattern` matches a name, as Cilium matches
/// them (<https://docs.cilium.io/en/latest/security/policy/language/#dns-based>): case and
/// a trailing dot do not count; `*` alone matches every name; a leading `**.` matches one
/// or more labels; any other `*` matches any run of DNS characters within one label
/// (`pkg/fqdn/matchpattern`). A `matchName` has no `*` (the CRD refuses it), so this is an
/// exact comparison for it.
pub(crate) fn fqdn_matches(pattern: &str, name: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if pattern == "*" {
        return true;
    }
    if let Some(rest) = pattern.strip_prefix("**.") {
        // One or more labels, then `rest`.
        return name
            .char_indices()
            .filter(|&(i, c)| c == '.' && i > 0)
            .any(|(i, _)| glob_label(rest.as_bytes(), &name.as_bytes()[i + 1..]));
    }
    glob_label(pattern.as_bytes(), name.as_bytes())
}

/// `*` matches any run of characters other than `.`; everything else literally.
fn glob_label(p: &[u8], n: &[u8]) -> bool {
    match p.split_first() {
        None => n.is_empty(),
        Some((b'*', rest)) => {
            let mut i = 0;
            loop {
                if glob_label(rest, &n[i..]) {
                    return true;
                }
                if i == n.len() || n[i] == b'.' {
                    return false;
                }
                i += 1;
            }
        }
        Some((c, rest)) => n.first() == Some(c) && glob_label(rest, &n[1..]),
    }
}

/// The notes that bear on the verdict, each once: what could have allowed a denied
/// connection (toFQDNs, toServices, toGroups allows) only when it is denied by default,
/// what could have denied an allowed one (toServices, toGroups denies) only when it is
/// allowed.
fn relevant_notes(notes: Vec<Note>, allowed: bool, outcome: Outcome) -> Vec<Note> {
    let mut out: Vec<Note> = Vec::new();
    for n in notes {
        let keep = match &n {
            Note::Fqdn { .. } => outcome == Outcome::DefaultDenied,
            Note::Services { deny, .. } | Note::Groups { deny, .. } => {
                if *deny {
                    allowed
                } else {
                    outcome == Outcome::DefaultDenied
                }
            }
            _ => true,
        };
        if keep && !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

fn push_unique(list: &mut Vec<PolicyRef>, id: &PolicyRef) {
    if !list.contains(id) {
        list.push(id.clone());
    }
}

fn join(ids: &[PolicyRef]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
