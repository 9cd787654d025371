//! The audit: a verdict for every workload and target, and findings (each with a
//! severity and the objects involved) about what lets pods reach metadata endpoints.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use rayon::prelude::*;
use serde::Serialize;

use crate::access::{AccessRules, PodShapeRef};
use crate::cluster::{Cluster, Workload};
use crate::engine::{
    self, Destination, EgressDecision, Engine, EngineSettings, PolicyRef, Prepared, Tie, Tier,
};
use crate::engine_detect::{ClusterSignals, DecisionSource, EngineDecision};
use crate::model::{Labels, NetworkPolicy, Peer, PortSpec, Source};
use crate::netpol::{Decision, first_names, join_names};
use crate::target::{Cloud, MetadataService, Protocol, Target};
use crate::tiered::{
    Action, Peer as TieredPeer, PortMatch, Rule as TieredRule, TierLevel, TieredKind, TieredPolicy,
};

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// For the record: access the rules expect (`--rules`, `--preset`). Never fails the
    /// audit.
    Info,
    /// Worth a look.
    Low,
    /// Weakens the protection or breaks workloads.
    Medium,
    /// A pod can reach a metadata endpoint.
    High,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        })
    }
}

/// The kinds of findings, with stable ids (used as SARIF rule ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// A workload can reach a target.
    WorkloadReachesTarget,
    /// A workload the access rules expect to reach IMDS cannot.
    ExpectedBlocked,
    /// A workload the access rules expect to reach IMDS does (instead of
    /// `workload-reaches-target` for it and that target).
    ExpectedAccess,
    /// A workload runs with hostNetwork: NetworkPolicy does not apply on a real node.
    HostNetwork,
    /// The audit assumes the cluster enforces no NetworkPolicy.
    NoPolicyEngine,
    /// An allow rule re-opens a target that another selecting policy denies.
    AllowReopensTarget,
    /// A namespace leaves new (unlabelled) pods free to reach a target.
    NamespaceUnrestricted,
    /// A policy lists egress rules but its policyTypes lack Egress, so they are ignored.
    EgressRulesIgnored,
    /// An egress isolation leaves no DNS (port 53) open.
    NoDnsEgress,
    /// An `except` that cuts node-local DNS (169.254.20.10, 169.254.10.0/24).
    NodeLocalDnsCut,
    /// A policy selects no workload in the input.
    PolicySelectsNothing,
    /// A policy of a kind (or with a feature) the engine does not enforce.
    NotEnforced,
    /// Two policies of one tier with the same priority both match a connection.
    PriorityTie,
    /// A cluster-scoped policy's peer has no field this reader knows: it fails closed.
    UnknownPeer,
    /// A BaselineAdminNetworkPolicy not named `default` (the API server refuses it).
    BanpNotDefault,
    /// The input holds the kinds of two engines (Calico's and Cilium's) and no
    /// `--engine` says which runs: the audit picked one.
    EngineAmbiguous,
    /// A policy names an object the input does not hold (a Cilium CIDR group): the rule
    /// matches nothing through it.
    UnresolvedReference,
    /// A cluster-scoped policy's rule names a destination port by name beside a
    /// `networks`, `nodes` or `domainNames` peer: the port never matches those peers.
    NamedPortWithNetworks,
    /// A live read of the cluster found no policy engine (no engine's DaemonSet or CRD)
    /// and neither `--engine` nor an AKS cluster file names one: the audit evaluates the
    /// policies as enforced (generic), which nothing may do.
    EngineUnknown,
    /// An ipBlock or Cilium CIDR written in IPv4-mapped IPv6 form
    /// (`::ffff:169.254.169.254/128`): engines read it differently.
    MappedCidr,
}

impl FindingKind {
    /// Every kind, in report order.
    pub const ALL: [FindingKind; 20] = [
        FindingKind::WorkloadReachesTarget,
        FindingKind::ExpectedBlocked,
        FindingKind::ExpectedAccess,
        FindingKind::HostNetwork,
        FindingKind::NoPolicyEngine,
        FindingKind::AllowReopensTarget,
        FindingKind::NamespaceUnrestricted,
        FindingKind::EgressRulesIgnored,
        FindingKind::NoDnsEgress,
        FindingKind::NodeLocalDnsCut,
        FindingKind::PolicySelectsNothing,
        FindingKind::NotEnforced,
        FindingKind::PriorityTie,
        FindingKind::UnknownPeer,
        FindingKind::BanpNotDefault,
        FindingKind::EngineAmbiguous,
        FindingKind::UnresolvedReference,
        FindingKind::NamedPortWithNetworks,
        FindingKind::EngineUnknown,
        FindingKind::MappedCidr,
    ];

    /// The stable id, e.g. `workload-reaches-target`.
    pub fn id(self) -> &'static str {
        match self {
            FindingKind::WorkloadReachesTarget => "workload-reaches-target",
            FindingKind::ExpectedBlocked => "expected-blocked",
            FindingKind::ExpectedAccess => "expected-access",
            FindingKind::HostNetwork => "host-network",
            FindingKind::NoPolicyEngine => "no-policy-engine",
            FindingKind::AllowReopensTarget => "allow-reopens-target",
            FindingKind::NamespaceUnrestricted => "namespace-unrestricted",
            FindingKind::EgressRulesIgnored => "egress-rules-ignored",
            FindingKind::NoDnsEgress => "no-dns-egress",
            FindingKind::NodeLocalDnsCut => "node-local-dns-cut",
            FindingKind::PolicySelectsNothing => "policy-selects-nothing",
            FindingKind::NotEnforced => "not-enforced",
            FindingKind::PriorityTie => "priority-tie",
            FindingKind::UnknownPeer => "unknown-peer",
            FindingKind::BanpNotDefault => "banp-not-default",
            FindingKind::EngineAmbiguous => "engine-ambiguous",
            FindingKind::UnresolvedReference => "unresolved-reference",
            FindingKind::NamedPortWithNetworks => "named-port-with-networks",
            FindingKind::EngineUnknown => "engine-unknown",
            FindingKind::MappedCidr => "mapped-cidr",
        }
    }

    /// Severity of findings of this kind.
    pub fn severity(self) -> Severity {
        match self {
            FindingKind::WorkloadReachesTarget
            | FindingKind::HostNetwork
            | FindingKind::NoPolicyEngine
            | FindingKind::AllowReopensTarget => Severity::High,
            FindingKind::NamespaceUnrestricted
            | FindingKind::EgressRulesIgnored
            | FindingKind::NoDnsEgress
            | FindingKind::NodeLocalDnsCut
            | FindingKind::NotEnforced
            | FindingKind::PriorityTie
            | FindingKind::UnknownPeer
            | FindingKind::BanpNotDefault
            | FindingKind::EngineAmbiguous
            | FindingKind::EngineUnknown
            | FindingKind::MappedCidr
            | FindingKind::UnresolvedReference
            | FindingKind::ExpectedBlocked => Severity::Medium,
            FindingKind::PolicySelectsNothing | FindingKind::NamedPortWithNetworks => Severity::Low,
            FindingKind::ExpectedAccess => Severity::Info,
        }
    }

    /// What it means and what to do, for help texts and SARIF rule descriptions.
    pub fn help(self) -> &'static str {
        match self {
            FindingKind::WorkloadReachesTarget => {
                "A workload can reach a metadata endpoint: from there it can read the instance document and ask for managed-identity tokens. Add an egress NetworkPolicy that denies the endpoint (ipBlock except) for its pods, and allow it only for the system pods that need it."
            }
            FindingKind::ExpectedBlocked => {
                "The access rules (--rules, --preset) expect this workload to use IMDS, but a policy denies it: the add-on stops working (a blanket deny also breaks the Key Vault secrets provider, App Gateway ingress and the monitoring agent). Exempt its pods from the deny, or allow 169.254.169.254/32 port 80 for them (imdsguard policy generate --rules/--preset writes both)."
            }
            FindingKind::ExpectedAccess => {
                "The workload reaches IMDS and the access rules (--rules, --preset) expect it to: reported for the record, not as an exposure. Check that the rule's subjects select only the pods that need IMDS; the filtering proxy limits them to what the rule grants."
            }
            FindingKind::HostNetwork => {
                "The workload uses the node's network (hostNetwork: true). NetworkPolicy cannot cover it: no pod-network policy applies to it on a real node, whatever the policies say, and its traffic leaves with the node's address. The node agent can: `imdsguard agent run` in block or proxy mode matches the pod's cgroup, so its connections to the metadata endpoints are dropped or sent to the filtering proxy unless the access rules expect the pod, and the kubelet and other node processes are untouched (docs/node.md, docs/agent.md). Or run it on the pod network."
            }
            FindingKind::NoPolicyEngine => {
                "The cluster enforces no NetworkPolicy (e.g. AKS created with --network-plugin azure and no --network-policy): every policy is ignored. Enable a policy engine (Azure NPM, Calico, Cilium) or block on the node."
            }
            FindingKind::AllowReopensTarget => {
                "Policies add up: an allow rule of one policy re-opens a target that another policy selecting the same pods denies. Narrow the allow rule (add an except for the endpoint) or its podSelector."
            }
            FindingKind::NamespaceUnrestricted => {
                "A new pod in this namespace (without labels) would reach the target: no egress policy with an empty podSelector denies it. Add a namespace-wide deny for the endpoint."
            }
            FindingKind::EgressRulesIgnored => {
                "The policy lists egress rules, but its policyTypes lack Egress, so the rules are ignored. Add Egress to policyTypes."
            }
            FindingKind::NoDnsEgress => {
                "The pods are egress-isolated and no rule allows port 53: name resolution breaks. Allow UDP and TCP 53 to kube-dns (and to 168.63.129.16 when pods use Azure DNS)."
            }
            FindingKind::NodeLocalDnsCut => {
                "An except range also covers node-local DNS (169.254.20.10, AKS LocalDNS 169.254.10.0/24): deny exactly 169.254.169.254/32 instead of 169.254.0.0/16."
            }
            FindingKind::PolicySelectsNothing => {
                "The policy's podSelector (or subject) matches no workload in the input: a typo in a label leaves the pods it was meant for unprotected."
            }
            FindingKind::NotEnforced => {
                "The policy engine (--engine, or detected from the input) does not enforce this object, or this feature of it: the audit leaves it out of every verdict. Write the policy in a kind the engine enforces, or name the right engine."
            }
            FindingKind::PriorityTie => {
                "Two policies of one tier with the same priority both match a connection: the API leaves the choice between them to the implementation, so the result may differ between engines and restarts. Give them different priorities."
            }
            FindingKind::UnknownPeer => {
                "A peer of a cluster-scoped policy has none of the fields this reader knows (a newer CRD): as the API says, it fails closed (an Accept rule matches nothing; a Deny or Pass rule becomes a 'Deny all' rule: it denies all traffic, and a Pass rule passes nothing). Check the CRD version the cluster runs."
            }
            FindingKind::EngineAmbiguous => {
                "The input holds both Calico's (projectcalico.org) and Cilium's (cilium.io) policy kinds, and no --engine says which one the cluster runs: the audit picked Calico and reported the Cilium policies as not enforced. Name the engine with --engine calico or --engine cilium."
            }
            FindingKind::EngineUnknown => {
                "The cluster was read live and shows no policy engine (no Azure NPM, Calico, Cilium, kube-network-policies or Antrea DaemonSet or CRD), and neither --engine nor --aks-cluster names one: the audit evaluated the policies as enforced (generic), but NetworkPolicies may not be enforced at all (e.g. an AKS cluster created without --network-policy), so IMDS may be reported blocked when nothing blocks it. Pass --aks-cluster FILE (az aks show -o json) or --engine (--engine none if nothing enforces them)."
            }
            FindingKind::UnresolvedReference => {
                "A policy refers to an object the input does not hold (a CiliumCIDRGroup by cidrGroupRef or cidrGroupSelector): Cilium resolves a missing group to no CIDR, so that part of the rule matches nothing (a deny through it denies nothing, an allow allows nothing). Add the group to the input, or fix the name or labels."
            }
            FindingKind::NamedPortWithNetworks => {
                "A rule of a cluster-scoped policy names a destination port by name (destinationNamedPort, namedPort) beside a networks, nodes or domainNames peer. Named ports are container ports: they resolve on destination pods only, so for those peers' addresses (a metadata endpoint included) the rule matches nothing; the experimental CRD refuses the combination. Write the port number for those peers, or put them in a rule of their own."
            }
            FindingKind::MappedCidr => {
                "A CIDR is written in IPv4-mapped IPv6 form (::ffff:169.254.169.254/128, ::ffff:0:0/96). The API server accepts it in a NetworkPolicy (with a warning; with the StrictIPCIDRValidation gate of KEP-4858 it refuses new objects holding one), and engines disagree on what it means for IPv4 traffic: Go's net.ParseCIDR (kube-network-policies, Calico) reads it as the IPv4 prefix it maps, netip (Cilium) as an IPv6 prefix that no IPv4 packet matches, so an except or deny written this way may block nothing. Where the engine's reading is not known the audit reads it so that no access is hidden. Write the IPv4 form (169.254.169.254/32)."
            }
            FindingKind::BanpNotDefault => {
                "A BaselineAdminNetworkPolicy must be named `default` (it is a singleton): the API server refuses any other name, so this object is never enforced. Rename it to default."
            }
        }
    }
}

/// An object a finding or verdict points at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectRef {
    /// Kubernetes kind.
    pub kind: String,
    /// Namespace (empty for a Namespace).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Where it was read, when it was.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

impl ObjectRef {
    fn workload(w: &Workload) -> Self {
        ObjectRef {
            kind: w.kind.clone(),
            namespace: w.namespace.clone(),
            name: w.name.clone(),
            source: Some(w.source.clone()),
        }
    }
    fn policy(p: &NetworkPolicy) -> Self {
        ObjectRef {
            kind: "NetworkPolicy".into(),
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            source: Some(p.source.clone()),
        }
    }
    fn tiered(p: &TieredPolicy) -> Self {
        ObjectRef {
            kind: p.kind.as_str().into(),
            namespace: String::new(),
            name: p.name.clone(),
            source: Some(p.source.clone()),
        }
    }
    fn cilium(p: &crate::cilium::CiliumPolicy) -> Self {
        ObjectRef {
            kind: p.id.kind.as_str().into(),
            namespace: p.id.namespace.clone().unwrap_or_default(),
            name: p.id.name.clone(),
            source: Some(p.source.clone()),
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable id of the kind.
    pub id: &'static str,
    /// The kind.
    #[serde(skip)]
    pub kind: FindingKind,
    /// Severity.
    pub severity: Severity,
    /// What was found, with the objects named.
    pub message: String,
    /// The targets concerned (findings that differ only by target are merged).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<Target>,
    /// The objects involved; the first is where to look.
    pub objects: Vec<ObjectRef>,
    /// For `workload-reaches-target`, `expected-access` and `expected-blocked`: the tier,
    /// object and rule that decided (of the first target listed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<DecidedBy>,
}

/// The tier, object and rule behind a verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecidedBy {
    /// The tier.
    pub tier: Tier,
    /// The deciding object, when one did.
    pub object: Option<PolicyRef>,
    /// Its deciding rule, when a rule did.
    pub rule: Option<String>,
}

impl Finding {
    fn new(
        kind: FindingKind,
        message: String,
        target: Option<Target>,
        objects: Vec<ObjectRef>,
    ) -> Self {
        Finding {
            id: kind.id(),
            kind,
            severity: kind.severity(),
            message,
            targets: target.into_iter().collect(),
            objects,
            decided_by: None,
        }
    }
}

/// Placeholder for the list of targets in a finding message, filled in by [`merge`].
const TARGETS: &str = "{targets}";

/// A target as findings list it: `IP:PORT/PROTO`, followed by the cloud's name for it
/// when a cloud was named (`169.254.169.254:80/TCP (AWS IMDS)`).
fn target_name(t: &Target, cloud: Option<Cloud>) -> String {
    match cloud.and_then(|c| c.service(t)) {
        Some(s) => format!("{t} ({})", s.label()),
        None => t.to_string(),
    }
}

/// Merges findings that differ only by target into one listing all their targets (named
/// by `cloud`, [`target_name`]). Findings about different subjects never merge, so
/// callers merge per workload or namespace: small vectors, a linear scan.
fn merge(findings: Vec<Finding>, cloud: Option<Cloud>) -> Vec<Finding> {
    let mut out: Vec<Finding> = Vec::with_capacity(findings.len());
    for f in findings {
        match out
            .iter_mut()
            .find(|o| o.kind == f.kind && o.message == f.message && o.objects == f.objects)
        {
            Some(o) => o.targets.extend(f.targets),
            None => out.push(f),
        }
    }
    for f in &mut out {
        if f.message.contains(TARGETS) {
            let list: Vec<String> = f.targets.iter().map(|t| target_name(t, cloud)).collect();
            f.message = f.message.replace(TARGETS, &list.join(", "));
        }
    }
    out
}

/// The verdict for one workload and target.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// The target.
    pub target: Target,
    /// What the policies the engine enforces say (all of them, with the reference
    /// semantics, when the engine is `none`).
    pub policy_allowed: bool,
    /// Whether the workload can actually reach it (also counting hostNetwork and a missing
    /// policy engine).
    pub reachable: bool,
    /// Why.
    pub reason: String,
    /// The deciding policies, `namespace/name` (the first [`AuditOptions::list_limit`]).
    pub policies: Vec<String>,
    /// How many policies decided it (`policies` may list fewer).
    pub policy_count: usize,
    /// The deciding rules, `namespace/name#egress[i]` (the first
    /// [`AuditOptions::list_limit`]).
    pub rules: Vec<String>,
    /// How many rules decided it (`rules` may list fewer).
    pub rule_count: usize,
    /// The tier that decided: `admin`, `networkpolicy`, `baseline`, `default`, ...
    pub tier: Tier,
    /// The deciding object (for NetworkPolicy: the first allowing policy, or the first
    /// isolating one when denied); none when nothing decided.
    pub object: Option<PolicyRef>,
    /// The deciding rule of `object` (`egress[2]`); none for a NetworkPolicy denial
    /// (isolation, no rule) or when nothing decided.
    pub rule: Option<String>,
    /// Whether the access rules expect this (reaching or being blocked): the target is
    /// the instance metadata service ([`Target::is_instance_metadata`]) and the verdict is
    /// of a pod shape a rule selects.
    pub expected: bool,
    /// The named cloud's service this target is ([`Cloud::service`]); only when a cloud
    /// was named ([`audit_in`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<MetadataService>,
}

/// A workload and its verdicts.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadReport {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Kind of the top-level owner (`Pod` for a bare pod).
    pub kind: String,
    /// Whether any of its pods uses hostNetwork.
    pub host_network: bool,
    /// Number of Pod objects read for it (0 when known only from a controller).
    pub pods: usize,
    /// Where its object was read.
    #[serde(flatten)]
    pub source: Source,
    /// Whether an access rule expects one of its pod shapes to reach IMDS.
    pub expected: bool,
    /// The rules that do, in rules order.
    pub expected_by: Vec<String>,
    /// One verdict per target, in target order.
    pub verdicts: Vec<Verdict>,
}

impl WorkloadReport {
    /// `namespace/name[Kind]`.
    pub fn id(&self) -> String {
        format!("{}/{}[{}]", self.namespace, self.name, self.kind)
    }
}

/// Totals.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Namespaces (declared and implicit).
    pub namespaces: usize,
    /// Workloads.
    pub workloads: usize,
    /// Pod objects read.
    pub pods: usize,
    /// NetworkPolicies read.
    pub network_policies: usize,
    /// AdminNetworkPolicies, BaselineAdminNetworkPolicies and ClusterNetworkPolicies read.
    pub cluster_policies: usize,
    /// Per target, in target order: how many workloads reach it.
    pub reachable: Vec<TargetCount>,
    /// Findings by severity.
    pub findings: BTreeMap<String, usize>,
}

/// How many workloads reach a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetCount {
    /// The target.
    pub target: Target,
    /// Workloads that reach it.
    pub workloads: usize,
    /// Of those, how many the access rules expect to (IMDS only; 0 for other targets).
    pub expected: usize,
    /// The named cloud's service this target is; only when a cloud was named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<MetadataService>,
}

/// Audit settings.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// What to evaluate.
    pub targets: Vec<Target>,
    /// The policy engine and its settings; `None`: detected from the input
    /// ([`Engine::detect`]), else [`Engine::Generic`].
    pub engine: Option<EngineSettings>,
    /// At most this many policies (and rules) are named in each verdict, reason and
    /// finding, with their counts; `None` names them all. With hundreds of policies
    /// selecting the same pods, full lists make the report grow with workloads ×
    /// policies.
    pub list_limit: Option<usize>,
    /// The access rules saying which workloads are expected to reach Azure IMDS
    /// (`--rules`, `--preset`); `None`: none is.
    pub expected: Option<AccessRules>,
    /// What is known about the cluster besides its objects (DaemonSets, CRDs, the AKS
    /// cluster): with [`AuditOptions::engine`] and the input's kinds it decides the
    /// engine ([`crate::engine_detect::decide`]), and the AKS IMDS restriction blocks
    /// IMDS for pods off the host network.
    pub signals: ClusterSignals,
}

/// The default of [`AuditOptions::list_limit`].
pub const DEFAULT_LIST_LIMIT: usize = 5;

/// The audit's result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The cloud whose endpoints were audited, when one was named ([`audit_in`]): it
    /// names each target's service ([`Report::service`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud: Option<Cloud>,
    /// The targets, as `IP:PORT/PROTO`.
    pub targets: Vec<Target>,
    /// The engine whose semantics decided.
    pub engine: Engine,
    /// Whether the engine was detected (from the AKS cluster, the cluster or the
    /// input's kinds), not named.
    pub engine_detected: bool,
    /// How the engine was decided, and the AKS IMDS restriction.
    pub engine_decision: EngineDecision,
    /// Workloads sorted by namespace, name, kind.
    pub workloads: Vec<WorkloadReport>,
    /// Findings, most severe first.
    pub findings: Vec<Finding>,
    /// Totals.
    pub summary: Summary,
}

const NODE_LOCAL_DNS: [&str; 2] = ["169.254.20.10", "169.254.10.10"];

/// What one workload's evaluation gives back besides its report.
struct Evaluated {
    report: WorkloadReport,
    findings: Vec<Finding>,
    /// NetworkPolicies that select one of its pod shapes.
    netpol: Vec<usize>,
    /// Cluster-scoped policies whose subject selects one of its pod shapes.
    tiered: Vec<usize>,
    /// Undefined choices met, per target.
    ties: Vec<(Tie, Target)>,
}

/// A tie by its rules: (chosen policy, chosen rule, the others' (policy, rule)).
type TieKey = (usize, usize, Vec<(usize, usize)>);
/// Where a tie was met: targets, how many workload-target pairs, an example workload.
type TieSeen = (Vec<Target>, usize, String);

/// The settings an audit runs with, and how the engine was decided.
fn settings(cluster: &Cluster, opts: &AuditOptions) -> (EngineSettings, EngineDecision) {
    let decision = crate::engine_detect::decide(
        opts.engine.map(|s| s.engine),
        &opts.signals,
        &Engine::detect_candidates(cluster),
    );
    let settings = opts
        .engine
        .unwrap_or_else(|| EngineSettings::new(decision.engine));
    (settings, decision)
}

/// The AKS IMDS restriction, when it is on for every pool: what blocks, and the AKS
/// add-ons that need IMDS (the `aks` preset's rules: the add-ons the AKS page lists as
/// incompatible with the restriction).
struct ImdsRestricted {
    /// `the AKS IMDS restriction (networkProfile.podLinkLocalAccess=None)`.
    what: String,
    /// The `aks` preset.
    addons: AccessRules,
}

impl ImdsRestricted {
    fn new(decision: &EngineDecision, signals: &ClusterSignals) -> Option<Self> {
        if !decision.imds_restriction.blocks_pods() {
            return None;
        }
        let field = match signals.aks.as_ref() {
            Some(a) if a.pod_link_local_access.is_some() => {
                "networkProfile.podLinkLocalAccess=None"
            }
            _ => "podLinkLocalAccess=None on every agent pool",
        };
        Some(ImdsRestricted {
            what: format!("the AKS IMDS restriction ({field})"),
            addons: crate::presets::preset("aks")
                .and_then(|t| AccessRules::parse(t).ok())
                .unwrap_or_default(),
        })
    }

    /// Whether it blocks this connection: pods off the host network to exactly
    /// 169.254.169.254:80/TCP (AgentBaker's rule: `! -s <node IP> -d 169.254.169.254/32
    /// -p tcp --dport 80 -j DROP`).
    fn blocks(restricted: Option<&Self>, target: &Target, host_network: bool) -> bool {
        restricted.is_some() && *target == crate::target::IMDS && !host_network
    }
}

impl Report {
    /// The service a target is: the named cloud's meaning ([`Cloud::service`]), else
    /// [`Target::service`] (169.254.169.254 is Azure IMDS, the default cloud).
    pub fn service(&self, t: &Target) -> Option<MetadataService> {
        match self.cloud {
            Some(c) => c.service(t),
            None => t.service(),
        }
    }
}

/// Runs the audit over a cluster, no cloud named ([`audit_in`] with `None`).
pub fn audit(cluster: &Cluster, opts: &AuditOptions) -> Report {
    audit_in(cluster, opts, None)
}

/// Runs the audit over a cluster whose metadata endpoints are `cloud`'s (`--cloud`):
/// verdicts, per-target totals and findings name each target by that cloud's service
/// (`169.254.169.254:80/TCP (AWS IMDS)`); `None` names none (the report as before
/// clouds were named), the table still calls 169.254.169.254 Azure IMDS.
pub fn audit_in(cluster: &Cluster, opts: &AuditOptions, cloud: Option<Cloud>) -> Report {
    let targets = &opts.targets;
    let (settings, decision) = settings(cluster, opts);
    let detected = !matches!(
        decision.source,
        DecisionSource::Flag | DecisionSource::Default
    );
    let restricted = ImdsRestricted::new(&decision, &opts.signals);
    let no_engine = settings.engine == Engine::None;
    // What the policies say: with no engine, what they would say if enforced (the
    // reference semantics); verdicts then count every workload as reaching.
    let view = Prepared::new(
        cluster,
        if no_engine {
            EngineSettings::new(Engine::Generic)
        } else {
            settings
        },
    );
    // Evaluate every workload (in parallel: each is independent).
    let evaluated: Vec<Evaluated> = cluster
        .workloads
        .par_iter()
        .map(|w| evaluate_workload(cluster, &view, no_engine, restricted.as_ref(), w, opts))
        .collect();

    let mut used = vec![false; cluster.policies.len()];
    let mut used_tiered = vec![false; cluster.tiered.len()];
    let mut workloads = Vec::with_capacity(evaluated.len());
    let mut findings = Vec::new();
    let mut ties: BTreeMap<TieKey, TieSeen> = BTreeMap::new();
    for mut e in evaluated {
        for v in &mut e.report.verdicts {
            v.service = cloud.and_then(|c| c.service(&v.target));
        }
        for i in e.netpol {
            used[i] = true;
        }
        for i in e.tiered {
            used_tiered[i] = true;
        }
        for (tie, t) in e.ties {
            let key = (
                tie.chosen.policy,
                tie.chosen.rule,
                tie.others.iter().map(|r| (r.policy, r.rule)).collect(),
            );
            let entry = ties
                .entry(key)
                .or_insert_with(|| (Vec::new(), 0, e.report.id()));
            if !entry.0.contains(&t) {
                entry.0.push(t);
            }
            entry.1 += 1;
        }
        workloads.push(e.report);
        findings.extend(merge(e.findings, cloud));
    }

    if no_engine {
        let why = match decision.source {
            DecisionSource::Flag => "--engine none".to_string(),
            _ => decision.how.clone(),
        };
        let except = match &restricted {
            Some(r) => format!(
                " (but {} keeps pods off the host network from {})",
                r.what,
                crate::target::IMDS
            ),
            None => String::new(),
        };
        findings.push(Finding::new(
            FindingKind::NoPolicyEngine,
            format!(
                "the cluster is assumed to enforce no policy ({why}): every workload reaches every target{except}"
            ),
            None,
            vec![],
        ));
    }

    for ((policy, rule, others), (ts, connections, example)) in ties {
        let chosen = engine_rule(cluster, policy, rule);
        let others: Vec<String> = others
            .iter()
            .map(|&(p, r)| engine_rule(cluster, p, r))
            .collect();
        let p = &cluster.tiered[policy];
        let mut objects = vec![ObjectRef::tiered(p)];
        objects.extend(tie_objects(cluster, policy, &ts));
        objects.dedup();
        findings.push(Finding {
            id: FindingKind::PriorityTie.id(),
            kind: FindingKind::PriorityTie,
            severity: FindingKind::PriorityTie.severity(),
            message: format!(
                "{chosen} and {} match the same connections ({} workload-target pair(s), e.g. from {example}) at priority {} of the {} tier: which one applies is undefined; this report applied {chosen}",
                others.join(", "),
                connections,
                p.priority.unwrap_or_default(),
                match p.tier {
                    TierLevel::Admin => "Admin",
                    TierLevel::Baseline => "Baseline",
                },
            ),
            targets: ts,
            objects,
            decided_by: None,
        });
    }

    // Namespaces: would a new, unlabelled pod reach the target?
    let empty = Labels::new();
    for ns in cluster.namespaces.values() {
        let src = engine::Source {
            namespace: &ns.name,
            labels: &empty,
            ns_labels: &ns.labels,
            service_account: Some(crate::model::DEFAULT_SERVICE_ACCOUNT),
            host_network: false,
        };
        let sel = view.select(&src);
        let mut found = Vec::new();
        for t in targets {
            // A new pod is on the pod network: the AKS IMDS restriction keeps it off IMDS.
            if ImdsRestricted::blocks(restricted.as_ref(), t, false) {
                continue;
            }
            let d = view.decide(&sel, &src, &Destination::External(*t));
            // With no engine every new pod reaches every target, whatever the policies say.
            if d.allowed || no_engine {
                let e = engine::explain(cluster, &d, opts.list_limit);
                let why = if no_engine {
                    format!(
                        "no policy engine enforces any policy (policy alone: {})",
                        e.reason
                    )
                } else {
                    e.reason
                };
                found.push(Finding::new(
                    FindingKind::NamespaceUnrestricted,
                    format!(
                        "namespace {}: a new pod without labels would reach {TARGETS} ({why})",
                        ns.name
                    ),
                    Some(*t),
                    vec![ObjectRef {
                        kind: "Namespace".into(),
                        namespace: String::new(),
                        name: ns.name.clone(),
                        source: ns.source.clone(),
                    }],
                ));
            }
        }
        findings.extend(merge(found, cloud));
    }

    for (i, p) in cluster.policies.iter().enumerate() {
        if !p.egress_type && !p.egress.is_empty() {
            findings.push(Finding::new(
                FindingKind::EgressRulesIgnored,
                format!(
                    "NetworkPolicy {} lists {} egress rule(s) but its policyTypes are [{}]: the egress rules are ignored",
                    p.id(),
                    p.egress.len(),
                    if p.ingress_type { "Ingress" } else { "" }
                ),
                None,
                vec![ObjectRef::policy(p)],
            ));
        }
        if !used[i] {
            findings.push(Finding::new(
                FindingKind::PolicySelectsNothing,
                format!(
                    "NetworkPolicy {} selects no workload in namespace {}",
                    p.id(),
                    p.namespace
                ),
                None,
                vec![ObjectRef::policy(p)],
            ));
        }
        if let Some((cidr, dns)) = node_local_dns_cut(p) {
            findings.push(Finding::new(
                FindingKind::NodeLocalDnsCut,
                format!(
                    "NetworkPolicy {} excepts {cidr}, which also cuts node-local DNS {dns}: except 169.254.169.254/32 only",
                    p.id()
                ),
                None,
                vec![ObjectRef::policy(p)],
            ));
        }
        if settings.engine == Engine::AzureNpm
            && let Some((ri, qi, start, end)) = end_port_range(p)
        {
            findings.push(Finding::new(
                FindingKind::NotEnforced,
                format!(
                    "NetworkPolicy {} egress[{ri}].ports[{qi}] allows ports {start}-{end}, but azure-npm ignores endPort: only port {start} is allowed (Azure/AKS#2857)",
                    p.id()
                ),
                None,
                vec![ObjectRef::policy(p)],
            ));
        }
    }
    findings.extend(tiered_findings(cluster, &settings, &used_tiered));
    findings.extend(cilium_findings(cluster, &settings));
    findings.extend(mapped_cidr_findings(cluster, &settings));
    findings.extend(calico_findings(cluster, &settings));
    if decision.source == DecisionSource::Cluster && decision.candidates.len() > 1 {
        findings.push(Finding::new(
            FindingKind::EngineAmbiguous,
            format!(
                "the cluster shows signs of several policy engines and no --engine or --aks-cluster names the one that enforces the policies: the audit assumed {} ({}); rerun with --engine {}",
                settings.engine,
                decision.how,
                decision
                    .candidates
                    .iter()
                    .map(|c| if c == "antrea" { "generic" } else { c.as_str() })
                    .collect::<Vec<_>>()
                    .join(" or --engine "),
            ),
            None,
            vec![],
        ));
    }
    // A live read found no engine and nothing named one (engine_detect's last step, which
    // also warns in the decision): the verdicts assume enforcement nothing may provide.
    if decision.source == DecisionSource::Default && opts.signals.from_cluster() {
        findings.push(Finding::new(
            FindingKind::EngineUnknown,
            format!(
                "no policy engine DaemonSet or CRD found in the cluster and no --engine{} names one: the audit evaluated the policies as enforced ({}), but NetworkPolicies may not be enforced at all; {}",
                if opts.signals.aks.is_some() {
                    " or AKS cluster file"
                } else {
                    " or --aks-cluster"
                },
                settings.engine,
                if opts.signals.aks.is_some() {
                    "name the engine with --engine (--engine none if nothing enforces them)"
                } else {
                    "pass --aks-cluster FILE (`az aks show -o json`) or --engine (--engine none if nothing enforces them)"
                },
            ),
            None,
            vec![],
        ));
    }
    if decision.source == DecisionSource::InputKinds {
        let candidates = Engine::detect_candidates(cluster);
        if candidates.len() > 1 {
            findings.push(Finding::new(
                FindingKind::EngineAmbiguous,
                format!(
                    "the input holds policies of {} ({} Calico object(s), {} Cilium polic(ies)) and no --engine names the one the cluster runs: the audit assumed {} and left the others' policies out of every verdict (reported not-enforced); rerun with --engine {}",
                    candidates
                        .iter()
                        .map(|e| e.name())
                        .collect::<Vec<_>>()
                        .join(" and "),
                    cluster.calico.policies.len()
                        + cluster.calico.tiers.len()
                        + cluster.calico.network_sets.len(),
                    cluster.cilium.len(),
                    settings.engine,
                    candidates
                        .iter()
                        .map(|e| e.name())
                        .collect::<Vec<_>>()
                        .join(" or --engine "),
                ),
                None,
                vec![],
            ));
        }
    }

    // Most severe first, then by kind; within a kind, in the order found (workloads
    // sorted by namespace and name, then namespaces, then policies in the cluster's order:
    // NetworkPolicies by namespace and name, see Cluster::build).
    findings.sort_by_key(|f| (std::cmp::Reverse(f.severity), f.kind));

    let mut summary = Summary {
        namespaces: cluster.namespaces.len(),
        workloads: workloads.len(),
        pods: cluster.workloads.iter().map(Workload::pod_count).sum(),
        network_policies: cluster.policies.len(),
        cluster_policies: cluster.tiered.len(),
        ..Summary::default()
    };
    for (i, t) in targets.iter().enumerate() {
        let (mut n, mut expected) = (0, 0);
        for w in &workloads {
            let v = &w.verdicts[i];
            n += usize::from(v.reachable);
            expected += usize::from(v.reachable && v.expected);
        }
        summary.reachable.push(TargetCount {
            target: *t,
            workloads: n,
            expected,
            service: cloud.and_then(|c| c.service(t)),
        });
    }
    for f in &findings {
        *summary.findings.entry(f.severity.to_string()).or_default() += 1;
    }
    Report {
        cloud,
        targets: targets.clone(),
        engine: settings.engine,
        engine_detected: detected,
        engine_decision: decision,
        workloads,
        findings,
        summary,
    }
}

fn engine_rule(cluster: &Cluster, policy: usize, rule: usize) -> String {
    let p = &cluster.tiered[policy];
    format!(
        "{} ({})",
        engine::tiered_rule_name(cluster, crate::tiered::TieredRuleRef { policy, rule }),
        p.egress[rule].effective_action().spelled(p.kind)
    )
}

fn tie_objects(cluster: &Cluster, policy: usize, _targets: &[Target]) -> Vec<ObjectRef> {
    // The other policies of the same tier and priority.
    let p = &cluster.tiered[policy];
    cluster
        .tiered
        .iter()
        .filter(|o| o.tier == p.tier && o.priority == p.priority && o.name != p.name)
        .map(ObjectRef::tiered)
        .collect()
}

/// Findings about the Cilium policies themselves: not enforced by another engine, or
/// refused by the Cilium agent (an object the API server accepts but the agent does not
/// import has no effect).
fn cilium_findings(cluster: &Cluster, settings: &EngineSettings) -> Vec<Finding> {
    let mut out = Vec::new();
    for p in cluster.cilium.iter() {
        let me = ObjectRef::cilium(p);
        let message = match (settings.engine, &p.rejected) {
            // `--engine none` is reported once, as no-policy-engine.
            (Engine::None, _) => continue,
            (Engine::Cilium, None) => {
                out.extend(unresolved_cidr_groups(cluster, p, &me));
                continue;
            }
            (Engine::Cilium, Some(why)) => format!(
                "{} is refused by the Cilium agent: {why}; it has no effect and is left out of every verdict",
                p.id
            ),
            (e, _) => format!(
                "{} is not enforced by engine {e}: only Cilium implements cilium.io policies; it is left out of every verdict",
                p.id
            ),
        };
        out.push(Finding::new(
            FindingKind::NotEnforced,
            message,
            None,
            vec![me],
        ));
    }
    out
}

/// CIDRs written in IPv4-mapped IPv6 form in NetworkPolicy ipBlocks and Cilium's
/// `toCIDR`/`toCIDRSet` (Calico's nets and the cluster-scoped policies' networks are read
/// as their engines read them, IPv4, when parsed): how the audit's engine reads each,
/// and the IPv4 form to write instead.
fn mapped_cidr_findings(cluster: &Cluster, settings: &EngineSettings) -> Vec<Finding> {
    use crate::netpol::{MappedCidrs, fold_mapped_net, is_mapped_net};
    let reading = |net: &ipnet::IpNet, mapped: MappedCidrs, grants: bool| {
        let v4 = fold_mapped_net(*net);
        match mapped {
            MappedCidrs::AsIpv4 => format!("engine {} reads it as {v4}", settings.engine),
            MappedCidrs::AsIpv6 => format!(
                "engine {} reads it as an IPv6 prefix, which no IPv4 packet matches",
                settings.engine
            ),
            MappedCidrs::Unknown if grants => format!(
                "how engine {} reads it is not known: the audit takes it as {v4}, so that no access is hidden",
                settings.engine
            ),
            MappedCidrs::Unknown => format!(
                "how engine {} reads it is not known: the audit takes it as excepting nothing, so that no access is hidden",
                settings.engine
            ),
        }
    };
    let message = |what: String, net: &ipnet::IpNet, how: String| {
        format!(
            "{what} `{net}` is written in IPv4-mapped IPv6 form: {how}; engines disagree (Go's net.ParseCIDR, in kube-network-policies and Calico, reads it as {}; Cilium's netip as IPv6) and API servers with StrictIPCIDRValidation refuse it in new objects: write {}",
            fold_mapped_net(*net),
            fold_mapped_net(*net)
        )
    };
    let mut out = Vec::new();
    let mapped = settings.netpol_options().mapped;
    for p in &cluster.policies {
        for (ri, r) in p.egress.iter().enumerate() {
            for (pi, peer) in r.to.iter().enumerate() {
                let Peer::IpBlock { cidr, except } = peer else {
                    continue;
                };
                let at = format!("NetworkPolicy {} egress[{ri}].to[{pi}].ipBlock", p.id());
                let nets = std::iter::once((format!("{at}.cidr"), cidr, true)).chain(
                    except
                        .iter()
                        .enumerate()
                        .map(|(ei, e)| (format!("{at}.except[{ei}]"), e, false)),
                );
                for (what, net, grants) in nets {
                    if is_mapped_net(net) {
                        out.push(Finding::new(
                            FindingKind::MappedCidr,
                            message(what, net, reading(net, mapped, grants)),
                            None,
                            vec![ObjectRef::policy(p)],
                        ));
                    }
                }
            }
        }
    }
    for p in cluster.cilium.iter() {
        use crate::cilium::{CidrRule, Peer as CiliumPeer};
        let me = ObjectRef::cilium(p);
        for spec in &p.specs {
            for (field, rules) in [("egress", &spec.egress), ("egressDeny", &spec.egress_deny)] {
                for (i, r) in rules.iter().enumerate() {
                    let Some(CiliumPeer::Cidr(cidrs)) = &r.peer else {
                        continue;
                    };
                    for c in cidrs {
                        let CidrRule::Cidr { cidr, except } = c else {
                            continue;
                        };
                        for net in std::iter::once(cidr).chain(except) {
                            if is_mapped_net(net) {
                                out.push(Finding::new(
                                    FindingKind::MappedCidr,
                                    message(
                                        format!("{}#{}{field}[{i}]", p.id, spec.at),
                                        net,
                                        "Cilium reads it as an IPv6 prefix, which no IPv4 packet matches"
                                            .into(),
                                    ),
                                    None,
                                    vec![me.clone()],
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// The `cidrGroupRef` / `cidrGroupSelector` references of a Cilium policy that no
/// CiliumCIDRGroup of the input resolves: Cilium resolves them to no CIDR, so the rule
/// matches nothing through them (a deny denies nothing, an allow allows nothing).
fn unresolved_cidr_groups(
    cluster: &Cluster,
    p: &crate::cilium::CiliumPolicy,
    me: &ObjectRef,
) -> Vec<Finding> {
    use crate::cilium::{CidrRule, Peer};
    let groups = &cluster.cilium.cidr_groups;
    let mut out = Vec::new();
    for spec in &p.specs {
        for (field, rules, deny) in [
            ("egress", &spec.egress, false),
            ("egressDeny", &spec.egress_deny, true),
        ] {
            for (i, r) in rules.iter().enumerate() {
                let Some(Peer::Cidr(cidrs)) = &r.peer else {
                    continue;
                };
                for c in cidrs {
                    let what = match c {
                        CidrRule::GroupRef(name) if !groups.contains_key(name) => {
                            format!(
                                "cidrGroupRef `{name}`: no CiliumCIDRGroup of that name is in the input"
                            )
                        }
                        CidrRule::GroupSelector(sel)
                            if !groups.values().any(|g| sel.matches(&g.labels)) =>
                        {
                            "cidrGroupSelector: it selects no CiliumCIDRGroup of the input".into()
                        }
                        _ => continue,
                    };
                    out.push(Finding::new(
                        FindingKind::UnresolvedReference,
                        format!(
                            "{}#{}{field}[{i}] {what}; Cilium resolves it to no CIDR, so {} through it; add the CiliumCIDRGroup to the input or fix the reference",
                            p.id,
                            spec.at,
                            if deny {
                                "the deny denies nothing"
                            } else {
                                "the allow allows nothing"
                            }
                        ),
                        None,
                        vec![me.clone()],
                    ));
                }
            }
        }
    }
    out
}

/// Calico's policies under another engine: only Calico implements projectcalico.org
/// policies, so they are reported as not enforced, never silently trusted (or silently
/// dropped).
fn calico_findings(cluster: &Cluster, settings: &EngineSettings) -> Vec<Finding> {
    match settings.engine {
        // `--engine none` is reported once, as no-policy-engine.
        Engine::None | Engine::Calico => return Vec::new(),
        _ => {}
    }
    cluster
        .calico
        .policies
        .iter()
        .map(|p| {
            let kind = match p.kind {
                crate::calico::PolicyKind::NetworkPolicy => "NetworkPolicy.projectcalico.org",
                k => k.kind(),
            };
            let namespace = p.namespace.clone().unwrap_or_default();
            let id = if namespace.is_empty() {
                format!("{kind}/{}", p.name)
            } else {
                format!("{kind}/{namespace}/{}", p.name)
            };
            Finding::new(
                FindingKind::NotEnforced,
                format!(
                    "{id} is not enforced by engine {}: only Calico implements projectcalico.org policies; it is left out of every verdict",
                    settings.engine
                ),
                None,
                vec![ObjectRef {
                    kind: kind.into(),
                    namespace,
                    name: p.name.clone(),
                    source: Some(p.source.clone()),
                }],
            )
        })
        .collect()
}

/// Findings about the cluster-scoped policies themselves.
fn tiered_findings(cluster: &Cluster, settings: &EngineSettings, used: &[bool]) -> Vec<Finding> {
    let mut out = Vec::new();
    for (i, p) in cluster.tiered.iter().enumerate() {
        let me = ObjectRef::tiered(p);
        if !p.is_valid_singleton() {
            out.push(Finding::new(
                FindingKind::BanpNotDefault,
                format!(
                    "{} is not named `default`: the API server refuses a BaselineAdminNetworkPolicy of any other name, so it is left out",
                    p.id()
                ),
                None,
                vec![me],
            ));
            continue;
        }
        let enforced = match settings.engine {
            // `--engine none` is reported once, as no-policy-engine.
            Engine::None => false,
            e => match e.enforces(p, settings) {
                Ok(()) => true,
                Err(why) => {
                    out.push(Finding::new(
                        FindingKind::NotEnforced,
                        format!(
                            "{} is not enforced by engine {}: {why}; it is left out of every verdict",
                            p.id(),
                            settings.engine
                        ),
                        None,
                        vec![me.clone()],
                    ));
                    false
                }
            },
        };
        for (ri, r) in p.egress.iter().enumerate() {
            for peer in &r.to {
                if let TieredPeer::Unknown(fields) = peer {
                    // "For \"Accept\" rules, \"fail closed\" means: \"treat the rule as
                    // matching no traffic\". For \"Deny\" and \"Pass\" rules, \"fail closed\"
                    // means: \"treat the rule as a 'Deny all' rule\"" (network-policy-api,
                    // apis/v1alpha2/clusternetworkpolicy_types.go, and v1alpha1's
                    // AdminNetworkPolicyEgressPeer).
                    let effect = match r.action {
                        Action::Accept => "the rule matches nothing",
                        Action::Deny => "the rule denies all traffic, whatever its ports",
                        Action::Pass => {
                            "the rule denies all traffic, whatever its ports (a 'Deny all' rule: it passes nothing)"
                        }
                    };
                    out.push(Finding::new(
                        FindingKind::UnknownPeer,
                        format!(
                            "{}#egress[{ri}] has a peer with no field this reader knows ({}): it fails closed, so {effect}",
                            p.id(),
                            if fields.is_empty() {
                                "an empty peer".to_string()
                            } else {
                                fields.join(", ")
                            }
                        ),
                        None,
                        vec![me.clone()],
                    ));
                }
            }
        }
        for (ri, r) in p.egress.iter().enumerate() {
            if let Some(f) = named_port_with_networks(p, ri, r, &me) {
                out.push(f);
            }
        }
        if enforced && !used[i] {
            out.push(Finding::new(
                FindingKind::PolicySelectsNothing,
                format!("{} selects no workload (its subject matches none)", p.id()),
                None,
                vec![me],
            ));
        }
    }
    out
}

/// A rule that names a port beside address peers. The experimental ClusterNetworkPolicy
/// CRD refuses it: "networks/nodes/domainNames peer cannot be set with namedPorts since
/// there are no namedPorts for networks/nodes/domainNames"
/// (<https://github.com/kubernetes-sigs/network-policy-api/blob/main/apis/v1alpha2/clusternetworkpolicy_types.go>,
/// ClusterNetworkPolicyEgressRule); the standard CRD accepts it, and the named port then
/// matches only pods (`tiered::PortMatch::matches`).
fn named_port_with_networks(
    p: &TieredPolicy,
    ri: usize,
    r: &TieredRule,
    me: &ObjectRef,
) -> Option<Finding> {
    let names: Vec<&str> = r
        .ports
        .iter()
        .flatten()
        .filter_map(|m| match m {
            PortMatch::Named(n) => Some(n.as_str()),
            PortMatch::Ports { .. } => None,
        })
        .collect();
    let mut peers: Vec<&str> =
        r.to.iter()
            .filter_map(|peer| match peer {
                TieredPeer::Networks(_) => Some("networks"),
                TieredPeer::Nodes(_) => Some("nodes"),
                TieredPeer::DomainNames(_) => Some("domainNames"),
                _ => None,
            })
            .collect();
    peers.dedup();
    if names.is_empty() || peers.is_empty() {
        return None;
    }
    let field = match p.kind {
        TieredKind::ClusterNetworkPolicy => "destinationNamedPort",
        _ => "namedPort",
    };
    let rule = if r.name.is_empty() {
        String::new()
    } else {
        format!(" {}", crate::quote::quoted(&r.name))
    };
    Some(Finding::new(
        FindingKind::NamedPortWithNetworks,
        format!(
            "{}#egress[{ri}]{rule} ({}) names port {} ({field}) beside a {} peer: a named port resolves on destination pods only, so the rule matches none of the {} peer's addresses (the experimental CRD refuses this rule)",
            p.id(),
            r.action.spelled(p.kind),
            names
                .iter()
                .map(|n| crate::quote::quoted(n).to_string())
                .collect::<Vec<_>>()
                .join(", "),
            peers.join("/"),
            peers.join("/"),
        ),
        None,
        vec![me.clone()],
    ))
}

/// The first numeric port range of a NetworkPolicy's egress rules: (rule, port, start, end).
fn end_port_range(p: &NetworkPolicy) -> Option<(usize, usize, u16, u16)> {
    p.egress.iter().enumerate().find_map(|(ri, r)| {
        r.ports
            .iter()
            .enumerate()
            .find_map(|(qi, port)| match (&port.port, port.end_port) {
                (Some(PortSpec::Number(start)), Some(end)) if end > *start => {
                    Some((ri, qi, *start, end))
                }
                _ => None,
            })
    })
}

/// The objects a decision names (for a finding): its deciding object, or NetworkPolicy's
/// deciding policies.
fn decision_objects(
    cluster: &Cluster,
    d: &EgressDecision,
    e: &crate::netpol::Explanation,
) -> Vec<ObjectRef> {
    match (&d.tier, &d.reason, &d.object) {
        (_, engine::Reason::Tiered(r), _) => vec![ObjectRef::tiered(&cluster.tiered[r.policy])],
        (Tier::NetworkPolicy | Tier::Default, _, _) => e
            .policies
            .iter()
            .filter_map(|id| policy_ref(cluster, id))
            .collect(),
        // Other engines' kinds (their modules keep the source).
        (_, _, Some(o)) => vec![ObjectRef {
            kind: o.kind.clone(),
            namespace: o.namespace.clone(),
            name: o.name.clone(),
            source: None,
        }],
        _ => Vec::new(),
    }
}

fn evaluate_workload(
    cluster: &Cluster,
    view: &Prepared<'_>,
    no_engine: bool,
    restricted: Option<&ImdsRestricted>,
    w: &Workload,
    opts: &AuditOptions,
) -> Evaluated {
    let host_network = w.host_network();
    let mut findings = Vec::new();
    let me = ObjectRef::workload(w);
    let empty = Labels::new();
    let ns_labels = cluster
        .namespaces
        .get(&w.namespace)
        .map(|n| &n.labels)
        .unwrap_or(&empty);
    // The policies per shape, selected once for all targets. The verdict is what the
    // policies say: hostNetwork is counted apart (`reachable`), as before.
    let sources: Vec<engine::Source<'_>> = w
        .shapes
        .iter()
        .map(|s| engine::Source {
            namespace: &w.namespace,
            labels: &s.template.labels,
            ns_labels,
            service_account: Some(&s.template.service_account),
            host_network: false,
        })
        .collect();
    let selections: Vec<engine::Selected> = sources.iter().map(|s| view.select(s)).collect();
    let mut all_selecting: Vec<usize> = selections
        .iter()
        .flat_map(|s| s.netpol.iter().copied())
        .collect();
    all_selecting.sort_unstable();
    all_selecting.dedup();
    let mut all_tiered: Vec<usize> = selections
        .iter()
        .flat_map(|s| s.admin.iter().chain(&s.baseline).copied())
        .collect();
    all_tiered.sort_unstable();
    all_tiered.dedup();
    let mut ties = Vec::new();
    let (shape_expected, expected_by) = expected_shapes(w, opts.expected.as_ref());
    let expected = !expected_by.is_empty();
    let expected_names = expected_by.join(", ");

    let mut verdicts = Vec::with_capacity(opts.targets.len());
    for t in &opts.targets {
        let dst = Destination::External(*t);
        let mut decisions: Vec<EgressDecision> = selections
            .iter()
            .zip(&sources)
            .map(|(sel, src)| view.decide(sel, src, &dst))
            .collect();
        // Expected access concerns the instance metadata service only (the rules file is
        // about IMDS): 169.254.169.254:80 and each cloud's IPv6 address of it.
        let expected_here = expected && t.is_instance_metadata();
        // The workload is allowed when any of its pod shapes is; when rules expect some
        // shapes, an unexpected shape that reaches the target is the one shown.
        let pick = if expected_here {
            let reaches = |d: &EgressDecision| d.allowed || host_network || no_engine;
            let first = |f: &dyn Fn(usize, &EgressDecision) -> bool| {
                decisions.iter().enumerate().position(|(i, d)| f(i, d))
            };
            first(&|i, d| d.allowed && !shape_expected[i])
                .or_else(|| first(&|i, d| reaches(d) && !shape_expected[i]))
                .or_else(|| first(&|_, d| d.allowed))
                .or_else(|| first(&|i, _| shape_expected[i]))
                .unwrap_or(0)
        } else {
            decisions.iter().position(|d| d.allowed).unwrap_or(0)
        };
        let shown_expected = expected_here && shape_expected.get(pick).copied().unwrap_or(false);
        // The AKS IMDS restriction: the node drops it, whatever the policies say.
        let aks_blocked = ImdsRestricted::blocks(restricted, t, host_network);
        if let Some(r) = restricted.filter(|_| aks_blocked) {
            findings.extend(restriction_breaks_addon(w, &me, r, *t, &expected_by));
        }
        // Every expected shape blocked (hostNetwork and a missing engine block nothing).
        let blocked = (expected_here && !host_network && !no_engine && !aks_blocked)
            .then(|| {
                let mut exp = decisions
                    .iter()
                    .zip(&shape_expected)
                    .filter(|&(_, &e)| e)
                    .map(|(d, _)| d);
                let first = exp.clone().next();
                if exp.any(|d| d.allowed) { None } else { first }
            })
            .flatten();
        if let Some(d) = blocked {
            findings.push(expected_blocked(
                cluster,
                w,
                &me,
                d,
                *t,
                &expected_names,
                opts,
            ));
        }
        let shown = if decisions.is_empty() {
            EgressDecision {
                allowed: true,
                tier: Tier::Default,
                object: None,
                rule: None,
                reason: engine::Reason::Default,
                netpol: None,
                passed: vec![],
                ties: vec![],
                notes: vec![],
            }
        } else {
            decisions.swap_remove(pick)
        };
        for tie in &shown.ties {
            ties.push((tie.clone(), *t));
        }
        let policy_allowed = shown.allowed;
        let e = engine::explain(cluster, &shown, opts.list_limit);
        let reachable = (policy_allowed || host_network || no_engine) && !aks_blocked;
        // hostNetwork and `--engine none`: nothing enforces the policies for this
        // workload, so no policy decided "reaches": the verdict's tier says why
        // (`host-network`, `none`), its object and rule are empty, and what the policies
        // alone would say stays in the reason (and `policy_allowed`, `policies`, `rules`).
        // The AKS IMDS restriction decides before any policy, the same way.
        let (reason, decided) = if let Some(r) = restricted.filter(|_| aks_blocked) {
            (
                format!(
                    "blocked by {}: the node drops traffic to {t} from pod addresses; only hostNetwork pods and the node keep access (policy alone: {})",
                    r.what, e.reason
                ),
                (Tier::AksImdsRestriction, None, None),
            )
        } else if host_network {
            (
                format!(
                    "hostNetwork: its traffic is the node's and no policy applies to it (policy alone: {})",
                    e.reason
                ),
                (Tier::HostNetwork, None, None),
            )
        } else if no_engine {
            (
                format!(
                    "no policy engine enforces any policy (policy alone: {})",
                    e.reason
                ),
                (Tier::None, None, None),
            )
        } else {
            (
                e.reason.clone(),
                (shown.tier.clone(), shown.object.clone(), shown.rule.clone()),
            )
        };
        let enforced = !(host_network || no_engine);
        if reachable {
            let (kind, message) = if shown_expected {
                (
                    FindingKind::ExpectedAccess,
                    format!(
                        "{} reaches {TARGETS}, as rule(s) {expected_names} expect: {reason}",
                        w.id()
                    ),
                )
            } else {
                (
                    FindingKind::WorkloadReachesTarget,
                    format!("{} reaches {TARGETS}: {reason}", w.id()),
                )
            };
            let mut objects = vec![me.clone()];
            if enforced {
                objects.extend(decision_objects(cluster, &shown, &e));
            }
            let mut f = Finding::new(kind, message, Some(*t), objects);
            f.decided_by = Some(DecidedBy {
                tier: decided.0.clone(),
                object: decided.1.clone(),
                rule: decided.2.clone(),
            });
            findings.push(f);
        }
        // An allow that re-opens what another selecting policy denies (unless the rules
        // expect this workload to reach the target: that allow is the intended exception).
        if !shown_expected
            && !aks_blocked
            && shown.tier == Tier::NetworkPolicy
            && let Some(Decision::Allowed { isolating, by }) = &shown.netpol
        {
            // `by` is grouped by policy.
            let mut allowing: Vec<usize> = by.iter().map(|r| r.policy).collect();
            allowing.dedup();
            let mut sorted = allowing.clone();
            sorted.sort_unstable();
            let deniers: Vec<usize> = isolating
                .iter()
                .copied()
                .filter(|p| sorted.binary_search(p).is_err())
                .collect();
            if !deniers.is_empty() {
                let limit = opts.list_limit.unwrap_or(usize::MAX);
                let denier_ids =
                    first_names(&deniers, opts.list_limit, |&p| cluster.policies[p].id());
                let mut objects = vec![me.clone()];
                objects.extend(
                    allowing
                        .iter()
                        .take(limit)
                        .map(|&p| ObjectRef::policy(&cluster.policies[p])),
                );
                objects.extend(
                    deniers
                        .iter()
                        .take(limit)
                        .map(|&p| ObjectRef::policy(&cluster.policies[p])),
                );
                findings.push(Finding::new(
                    FindingKind::AllowReopensTarget,
                    format!(
                        "{}: {} re-opens {TARGETS}, which {} would deny on its own",
                        w.id(),
                        join_names(&e.rules, e.rule_count),
                        join_names(&denier_ids, deniers.len())
                    ),
                    Some(*t),
                    objects,
                ));
            }
        }
        verdicts.push(Verdict {
            target: *t,
            policy_allowed,
            reachable,
            reason,
            policies: e.policies,
            policy_count: e.policy_count,
            rules: e.rules,
            rule_count: e.rule_count,
            tier: decided.0,
            object: decided.1,
            rule: decided.2,
            expected: shown_expected,
            service: None,
        });
    }

    if host_network {
        findings.push(Finding::new(
            FindingKind::HostNetwork,
            format!(
                "{} uses hostNetwork: NetworkPolicy cannot cover it on a real node; `imdsguard agent run` in block or proxy mode can, by its pod's cgroup (docs/node.md)",
                w.id()
            ),
            None,
            vec![me.clone()],
        ));
    }

    // DNS: isolated pods need port 53 somewhere.
    for sel in &selections {
        let isolating: Vec<usize> = sel
            .netpol
            .iter()
            .copied()
            .filter(|&i| cluster.policies[i].egress_type)
            .collect();
        if !isolating.is_empty() && !isolating.iter().any(|&i| allows_dns(&cluster.policies[i])) {
            let mut objects = vec![me.clone()];
            objects.extend(
                isolating
                    .iter()
                    .take(opts.list_limit.unwrap_or(usize::MAX))
                    .map(|&i| ObjectRef::policy(&cluster.policies[i])),
            );
            let ids = first_names(&isolating, opts.list_limit, |&i| cluster.policies[i].id());
            findings.push(Finding::new(
                FindingKind::NoDnsEgress,
                format!(
                    "{} is egress-isolated by {} and no rule allows port 53: name resolution fails",
                    w.id(),
                    join_names(&ids, isolating.len())
                ),
                None,
                objects,
            ));
            break;
        }
    }

    let report = WorkloadReport {
        namespace: w.namespace.clone(),
        name: w.name.clone(),
        kind: w.kind.clone(),
        host_network,
        pods: w.pod_count(),
        source: w.source.clone(),
        expected,
        expected_by,
        verdicts,
    };
    Evaluated {
        report,
        findings,
        netpol: all_selecting,
        tiered: all_tiered,
        ties,
    }
}

/// Which of the workload's pod shapes the rules expect to reach IMDS, and the names of
/// the rules that do (in rules order, once each). Without rules: none, and no work.
fn expected_shapes(w: &Workload, rules: Option<&AccessRules>) -> (Vec<bool>, Vec<String>) {
    let Some(rules) = rules.filter(|r| !r.is_empty()) else {
        return (Vec::new(), Vec::new());
    };
    let mut names: Vec<String> = Vec::new();
    let flags = w
        .shapes
        .iter()
        .map(|s| {
            let by = rules.expecting(&PodShapeRef {
                namespace: &w.namespace,
                labels: &s.template.labels,
                service_account: Some(&s.template.service_account),
            });
            for r in &by {
                if !names.iter().any(|n| **n == *r.name) {
                    names.push(r.name.to_string());
                }
            }
            !by.is_empty()
        })
        .collect();
    if names.len() > 1 {
        // Rules order, whatever shape named them first.
        let order = |n: &String| rules.rules().iter().position(|r| *r.name == **n);
        names.sort_by_key(order);
    }
    (flags, names)
}

/// Under the AKS IMDS restriction, the `expected-blocked` finding for a workload that
/// needs IMDS: one the access rules expect (`expected_by`), or one the `aks` preset
/// names (the add-ons the AKS page lists as incompatible with the restriction), with or
/// without `--preset aks`.
fn restriction_breaks_addon(
    w: &Workload,
    me: &ObjectRef,
    r: &ImdsRestricted,
    target: Target,
    expected_by: &[String],
) -> Option<Finding> {
    let (_, addon_by) = expected_shapes(w, Some(&r.addons));
    let mut names: Vec<String> = expected_by.to_vec();
    for n in &addon_by {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    if names.is_empty() {
        return None;
    }
    let addon = if addon_by.is_empty() {
        String::new()
    } else {
        format!(
            "; AKS lists this add-on as incompatible with the restriction (https://learn.microsoft.com/azure/aks/imds-restriction){}",
            if addon_by
                .iter()
                .any(|n| n == "aks-keyvault-secrets-provider")
            {
                ", unless it authenticates with workload identity"
            } else {
                ""
            }
        )
    };
    let mut f = Finding::new(
        FindingKind::ExpectedBlocked,
        format!(
            "{} needs {TARGETS} (rule(s) {}) but is blocked by {}: the node drops traffic to it from pod addresses{addon}",
            w.id(),
            names.join(", "),
            r.what
        ),
        Some(target),
        vec![me.clone()],
    );
    f.decided_by = Some(DecidedBy {
        tier: Tier::AksImdsRestriction,
        object: None,
        rule: None,
    });
    Some(f)
}

/// The deciding tier, object and rule of a decision, in words: `the networkpolicy tier
/// (NetworkPolicy kube-system/deny-imds)`, `the admin tier
/// (AdminNetworkPolicy/no-imds#egress[0])`.
fn deciding(d: &EgressDecision) -> String {
    let object = match (&d.object, &d.rule) {
        (Some(o), r) => {
            let kind = if o.kind == "NetworkPolicy" {
                "NetworkPolicy "
            } else {
                ""
            };
            let rule = r.as_ref().map(|r| format!("#{r}")).unwrap_or_default();
            format!(" ({kind}{o}{rule})")
        }
        (None, _) => String::new(),
    };
    format!("the {} tier{object}", d.tier)
}

/// The `expected-blocked` finding for a workload the rules expect to reach `target`,
/// whose expected pod shape `d` decided is blocked.
fn expected_blocked(
    cluster: &Cluster,
    w: &Workload,
    me: &ObjectRef,
    d: &EgressDecision,
    target: Target,
    rules: &str,
    opts: &AuditOptions,
) -> Finding {
    let e = engine::explain(cluster, d, opts.list_limit);
    let mut f = Finding::new(
        FindingKind::ExpectedBlocked,
        format!(
            "{} is expected to reach {TARGETS} (rule(s) {rules}) but is blocked by {}: {}",
            w.id(),
            deciding(d),
            e.reason
        ),
        Some(target),
        std::iter::once(me.clone())
            .chain(decision_objects(cluster, d, &e))
            .collect(),
    );
    f.decided_by = Some(DecidedBy {
        tier: d.tier.clone(),
        object: d.object.clone(),
        rule: d.rule.clone(),
    });
    f
}

fn policy_ref(cluster: &Cluster, id: &str) -> Option<ObjectRef> {
    let (ns, name) = id.split_once('/')?;
    cluster
        .policies_in(ns)
        .iter()
        .map(|&i| &cluster.policies[i])
        .find(|p| p.name == name)
        .map(ObjectRef::policy)
}

/// Whether some rule of the policy lets DNS out (port 53 on UDP or TCP, or a named port,
/// which may well be `dns`), to any peer.
fn allows_dns(p: &NetworkPolicy) -> bool {
    p.egress.iter().any(|r| {
        r.ports.is_empty()
            || r.ports.iter().any(|port| {
                matches!(port.port, Some(PortSpec::Named(_)))
                    || port.matches(Protocol::Udp, 53)
                    || port.matches(Protocol::Tcp, 53)
            })
    })
}

/// An `except` of an egress-typed policy that covers a node-local DNS address.
fn node_local_dns_cut(p: &NetworkPolicy) -> Option<(ipnet::IpNet, &'static str)> {
    if !p.egress_type {
        return None;
    }
    for r in &p.egress {
        for peer in &r.to {
            if let Peer::IpBlock { except, .. } = peer {
                for e in except {
                    for dns in NODE_LOCAL_DNS {
                        let ip: IpAddr = dns.parse().expect("constant address");
                        // An except in IPv4-mapped form cuts it where the engine reads
                        // it as IPv4 (Go's net package): worth the warning.
                        if crate::netpol::fold_mapped_net(*e).contains(&ip) {
                            return Some((*e, dns));
                        }
                    }
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse;
    use crate::target::Cloud;

    fn run(text: &str, no_engine: bool) -> Report {
        let l = parse("t.yaml", text);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        let c = Cluster::build(l.objects);
        audit(
            &c,
            &AuditOptions {
                targets: Cloud::Azure.targets(),
                engine: no_engine.then(|| EngineSettings::new(Engine::None)),
                list_limit: Some(DEFAULT_LIST_LIMIT),
                expected: None,
                signals: ClusterSignals::default(),
            },
        )
    }

    fn ids(r: &Report) -> Vec<&str> {
        r.findings.iter().map(|f| f.id).collect()
    }

    const POD: &str =
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: a, labels: {app: web}}\n";

    /// A named port beside a networks/nodes/domainNames peer is a low finding naming the
    /// policy, rule and port (the experimental CRD's XValidation refuses it: "there are no
    /// namedPorts for networks/nodes/domainNames", network-policy-api
    /// apis/v1alpha2/clusternetworkpolicy_types.go); beside pod peers it is not.
    #[test]
    fn named_port_beside_address_peers_is_reported() {
        let text = format!(
            "{POD}---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: np}}\nspec:\n  tier: Admin\n  priority: 5\n  subject: {{namespaces: {{}}}}\n  egress:\n  - {{name: pods-ok, action: Deny, to: [{{namespaces: {{}}}}], protocols: [{{destinationNamedPort: http}}]}}\n  - {{name: imds, action: Deny, to: [{{namespaces: {{}}}}, {{networks: [169.254.169.254/32]}}, {{nodes: {{}}}}], protocols: [{{destinationNamedPort: http}}]}}\n---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {{name: anp}}\nspec:\n  priority: 6\n  subject: {{namespaces: {{}}}}\n  egress:\n  - {{action: Allow, to: [{{networks: [10.0.0.0/8]}}], ports: [{{namedPort: web}}, {{portNumber: {{port: 80}}}}]}}\n"
        );
        let r = run(&text, false);
        let found: Vec<&Finding> = r
            .findings
            .iter()
            .filter(|f| f.id == "named-port-with-networks")
            .collect();
        let messages: Vec<&str> = found.iter().map(|f| f.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "ClusterNetworkPolicy/np#egress[1] `imds` (Deny) names port `http` (destinationNamedPort) beside a networks/nodes peer: a named port resolves on destination pods only, so the rule matches none of the networks/nodes peer's addresses (the experimental CRD refuses this rule)",
                "AdminNetworkPolicy/anp#egress[0] (Allow) names port `web` (namedPort) beside a networks peer: a named port resolves on destination pods only, so the rule matches none of the networks peer's addresses (the experimental CRD refuses this rule)",
            ]
        );
        assert!(found.iter().all(|f| f.severity == Severity::Low));
        assert_eq!(found[0].objects[0].name, "np");
        // And the rule indeed does not deny IMDS: the pod still reaches it.
        assert!(ids(&r).contains(&"workload-reaches-target"));
    }

    #[test]
    fn reachable_pod_without_policies() {
        let r = run(POD, false);
        assert_eq!(r.workloads.len(), 1);
        assert!(
            r.workloads[0]
                .verdicts
                .iter()
                .all(|v| v.reachable && v.policy_allowed)
        );
        // One finding per workload and kind, listing every target it concerns.
        let reach: Vec<&Finding> = r
            .findings
            .iter()
            .filter(|f| f.kind == FindingKind::WorkloadReachesTarget)
            .collect();
        assert_eq!(reach.len(), 1);
        assert_eq!(reach[0].targets, Cloud::Azure.targets());
        assert!(
            reach[0]
                .message
                .starts_with("a/p[Pod] reaches 169.254.169.254:80/TCP, 168.63.129.16:80/TCP, 168.63.129.16:32526/TCP:"),
            "{}",
            reach[0].message
        );
        let ns: Vec<&Finding> = r
            .findings
            .iter()
            .filter(|f| f.kind == FindingKind::NamespaceUnrestricted)
            .collect();
        assert_eq!(ns.len(), 1);
        assert_eq!(ns[0].targets.len(), 3);
        assert_eq!(
            r.summary.reachable[0].target,
            "169.254.169.254:80/TCP".parse().unwrap()
        );
        assert_eq!(r.summary.reachable[0].workloads, 1);
    }

    #[test]
    fn host_network_is_reachable_despite_policy() {
        let text = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: d, namespace: a}\nspec:\n  template:\n    metadata: {labels: {app: d}}\n    spec: {hostNetwork: true}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: a}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: 53, protocol: UDP}]}]\n";
        let r = run(text, false);
        let v = &r.workloads[0].verdicts[0];
        assert!(!v.policy_allowed);
        assert!(v.reachable);
        assert!(v.reason.starts_with("hostNetwork"), "{}", v.reason);
        assert!(
            v.reason
                .contains("(policy alone: egress-isolated by a/deny"),
            "{}",
            v.reason
        );
        assert_eq!(v.policies, ["a/deny"]);
        // No policy applies to it, so none decided that it reaches: the tier says why and
        // no object or rule is named, in the verdict and in the finding.
        assert_eq!(
            (&v.tier, &v.object, &v.rule),
            (&Tier::HostNetwork, &None, &None)
        );
        let f = of(&r, "workload-reaches-target");
        let d = f[0].decided_by.as_ref().unwrap();
        assert_eq!(
            (&d.tier, &d.object, &d.rule),
            (&Tier::HostNetwork, &None, &None)
        );
        assert_eq!(
            f[0].objects.len(),
            1,
            "the workload only: {:?}",
            f[0].objects
        );
        assert!(ids(&r).contains(&"host-network"));
        // The finding says what can cover it: the node agent, by cgroup.
        let h = &of(&r, "host-network")[0];
        assert!(
            h.message
                .starts_with("a/d[DaemonSet] uses hostNetwork: NetworkPolicy cannot cover it")
                && h.message.contains(
                    "`imdsguard agent run` in block or proxy mode can, by its pod's cgroup"
                ),
            "{}",
            h.message
        );
        let help = FindingKind::HostNetwork.help();
        assert!(
            help.contains("NetworkPolicy cannot cover it")
                && help.contains(
                    "`imdsguard agent run` in block or proxy mode matches the pod's cgroup"
                ),
            "{help}"
        );
        assert!(!ids(&r).contains(&"no-dns-egress"));
        assert!(!ids(&r).contains(&"namespace-unrestricted"));
    }

    #[test]
    fn no_engine_makes_everything_reachable() {
        let text = format!(
            "{POD}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny, namespace: a}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n"
        );
        assert!(!run(&text, false).workloads[0].verdicts[0].reachable);
        let r = run(&text, true);
        let v = &r.workloads[0].verdicts[0];
        assert!(v.reachable);
        assert!(!v.policy_allowed);
        assert!(ids(&r).contains(&"no-policy-engine"));
        // Nobody enforces the NetworkPolicy: it is no decider of "reaches".
        assert_eq!((&v.tier, &v.object, &v.rule), (&Tier::None, &None, &None));
        assert_eq!(
            v.reason,
            "no policy engine enforces any policy (policy alone: egress-isolated by a/deny and none of their egress rules admits it)"
        );
        let f = of(&r, "workload-reaches-target");
        let d = f[0].decided_by.as_ref().unwrap();
        assert_eq!((&d.tier, &d.object, &d.rule), (&Tier::None, &None, &None));
        // A policy that allows does not decide either.
        let open = format!(
            "{POD}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: open, namespace: a}}\nspec:\n  podSelector: {{}}\n  egress: [{{}}]\n"
        );
        let r = run(&open, true);
        let v = &r.workloads[0].verdicts[0];
        assert!(v.policy_allowed);
        assert_eq!((&v.tier, &v.object, &v.rule), (&Tier::None, &None, &None));
        assert!(
            v.reason.starts_with(
                "no policy engine enforces any policy (policy alone: allowed by a/open#egress[0]"
            ),
            "{}",
            v.reason
        );
        // New pods of every namespace reach the targets too.
        let r = run(&text, true);
        assert!(of(&r, "namespace-unrestricted").iter().any(|f| {
            f.message
                .starts_with("namespace a: a new pod without labels would reach")
                && f.message.contains("no policy engine")
        }),);
    }

    #[test]
    fn policy_findings() {
        let text = format!(
            "{POD}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny, namespace: a}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{ipBlock: {{cidr: 0.0.0.0/0, except: [169.254.0.0/16]}}}}]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: open, namespace: a}}\nspec:\n  podSelector: {{matchLabels: {{app: web}}}}\n  egress: [{{}}]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: ingress-only, namespace: a}}\nspec:\n  podSelector: {{matchLabels: {{app: typo}}}}\n  policyTypes: [Ingress]\n  egress: [{{}}]\n"
        );
        let r = run(&text, false);
        let f = ids(&r);
        assert!(f.contains(&"allow-reopens-target"), "{f:?}");
        assert!(f.contains(&"egress-rules-ignored"));
        assert!(f.contains(&"policy-selects-nothing"));
        assert!(f.contains(&"node-local-dns-cut"));
        assert!(
            !f.contains(&"no-dns-egress"),
            "0.0.0.0/0 on every port includes DNS"
        );
        let reopen = r
            .findings
            .iter()
            .find(|f| f.id == "allow-reopens-target")
            .unwrap();
        assert!(
            reopen.message.contains("a/open#egress[0]"),
            "{}",
            reopen.message
        );
        assert!(reopen.message.contains("a/deny"));
        assert!(
            r.findings
                .windows(2)
                .all(|w| w[0].severity >= w[1].severity)
        );
    }

    #[test]
    fn isolation_without_dns() {
        let np = |ports: &str| {
            format!(
                "{POD}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: web, namespace: a}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{ipBlock: {{cidr: 10.0.0.0/8}}}}]\n    ports: [{ports}]\n"
            )
        };
        assert!(ids(&run(&np("{port: 443}"), false)).contains(&"no-dns-egress"));
        assert!(
            !ids(&run(&np("{port: 443}, {port: 53, protocol: UDP}"), false))
                .contains(&"no-dns-egress")
        );
        assert!(!ids(&run(&np("{port: dns}"), false)).contains(&"no-dns-egress"));
    }

    /// Was a bug: with P egress policies selecting every pod of W workloads, each verdict,
    /// reason and finding named all P policies, so the report grew with W × P (800 × 800:
    /// 349 MB of JSON). They now name at most `list_limit`, with the counts.
    #[test]
    fn policy_lists_are_capped_with_counts() {
        let mut text = String::from(POD);
        for i in 0..12 {
            text.push_str(&format!(
                "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: d{i:02}, namespace: a}}\nspec:\n  podSelector: {{matchExpressions: [{{key: tier, operator: NotIn, values: [x{i}]}}]}}\n  policyTypes: [Egress]\n  egress: [{{ports: [{{port: 443}}]}}]\n"
            ));
        }
        let r = run(&text, false);
        let v = &r.workloads[0].verdicts[0];
        assert!(!v.reachable);
        assert_eq!(v.policy_count, 12);
        assert_eq!(v.policies, ["a/d00", "a/d01", "a/d02", "a/d03", "a/d04"]);
        assert_eq!(
            v.reason,
            "egress-isolated by a/d00, a/d01, a/d02, a/d03, a/d04 and 7 more and none of their egress rules admits it"
        );
        let dns = r.findings.iter().find(|f| f.id == "no-dns-egress").unwrap();
        assert_eq!(dns.objects.len(), 1 + DEFAULT_LIST_LIMIT);
        assert!(dns.message.contains("a/d04 and 7 more"), "{}", dns.message);

        let c = Cluster::build(parse("t.yaml", &text).objects);
        let full = audit(
            &c,
            &AuditOptions {
                targets: Cloud::Azure.targets(),
                engine: None,
                list_limit: None,
                expected: None,
                signals: ClusterSignals::default(),
            },
        );
        let v = &full.workloads[0].verdicts[0];
        assert_eq!((v.policies.len(), v.policy_count), (12, 12));
        assert!(!v.reason.contains("more"), "{}", v.reason);
    }

    const AMA_LOGS: &str = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: ama-logs, namespace: kube-system}\nspec:\n  template:\n    metadata: {labels: {component: ama-logs-agent, tier: node, kubernetes.azure.com/managedby: aks}}\n";

    fn run_expected(text: &str, engine: Option<Engine>) -> Report {
        let l = parse("t.yaml", text);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        let c = Cluster::build(l.objects);
        let rules = AccessRules::parse(crate::presets::preset("aks").unwrap()).unwrap();
        audit(
            &c,
            &AuditOptions {
                targets: Cloud::Azure.targets(),
                engine: engine.map(EngineSettings::new),
                list_limit: Some(DEFAULT_LIST_LIMIT),
                expected: Some(rules),
                signals: ClusterSignals::default(),
            },
        )
    }

    fn of<'r>(r: &'r Report, id: &str) -> Vec<&'r Finding> {
        r.findings.iter().filter(|f| f.id == id).collect()
    }

    #[test]
    fn info_is_the_lowest_severity() {
        assert!(Severity::Info < Severity::Low);
        assert_eq!(Severity::Info.to_string(), "info");
        assert_eq!(FindingKind::ExpectedAccess.severity(), Severity::Info);
        assert_eq!(FindingKind::ExpectedBlocked.severity(), Severity::Medium);
        assert!(FindingKind::ALL.contains(&FindingKind::ExpectedAccess));
        assert!(FindingKind::ALL.contains(&FindingKind::ExpectedBlocked));
    }

    #[test]
    fn expected_workload_reaching_imds_is_info_and_wireserver_stays_a_finding() {
        let text = format!("{AMA_LOGS}---\n{POD}");
        let r = run_expected(&text, None);
        let ama = r.workloads.iter().find(|w| w.name == "ama-logs").unwrap();
        assert!(ama.expected);
        assert_eq!(ama.expected_by, ["aks-container-insights"]);
        assert!(ama.verdicts[0].expected && ama.verdicts[0].reachable);
        assert!(
            !ama.verdicts[1].expected,
            "WireServer is not expected access"
        );
        let web = r.workloads.iter().find(|w| w.name == "p").unwrap();
        assert!(!web.expected && web.expected_by.is_empty());

        let access = of(&r, "expected-access");
        assert_eq!(access.len(), 1);
        assert_eq!(access[0].severity, Severity::Info);
        assert_eq!(
            access[0].targets,
            ["169.254.169.254:80/TCP".parse().unwrap()]
        );
        assert!(
            access[0].message.starts_with(
                "kube-system/ama-logs[DaemonSet] reaches 169.254.169.254:80/TCP, as rule(s) aks-container-insights expect:"
            ),
            "{}",
            access[0].message
        );
        assert!(access[0].decided_by.is_some());
        // ama-logs reaches WireServer (not expected), the unexpected pod reaches all three.
        let reach = of(&r, "workload-reaches-target");
        assert_eq!(reach.len(), 2);
        let ama_reach = reach
            .iter()
            .find(|f| f.message.starts_with("kube-system/ama-logs"))
            .unwrap();
        assert_eq!(ama_reach.targets, Cloud::Azure.targets()[1..]);
        assert!(reach.iter().any(|f| f.targets == Cloud::Azure.targets()));
        assert!(of(&r, "expected-blocked").is_empty());

        let imds = &r.summary.reachable[0];
        assert_eq!((imds.workloads, imds.expected), (2, 1));
        assert_eq!(r.summary.reachable[1].expected, 0);
        assert_eq!(r.summary.findings.get("info"), Some(&1));
        assert_eq!(r.findings.last().unwrap().severity, Severity::Info);
    }

    #[test]
    fn blanket_deny_blocks_an_expected_workload() {
        let text = format!(
            "{AMA_LOGS}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny-egress, namespace: kube-system}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n  egress: [{{ports: [{{port: 53, protocol: UDP}}]}}]\n"
        );
        let r = run_expected(&text, None);
        let blocked = of(&r, "expected-blocked");
        assert_eq!(blocked.len(), 1, "{:?}", ids(&r));
        let f = blocked[0];
        assert_eq!(f.severity, Severity::Medium);
        assert_eq!(f.targets, ["169.254.169.254:80/TCP".parse().unwrap()]);
        assert!(
            f.message.starts_with(
                "kube-system/ama-logs[DaemonSet] is expected to reach 169.254.169.254:80/TCP (rule(s) aks-container-insights) but is blocked by the networkpolicy tier (NetworkPolicy kube-system/deny-egress):"
            ),
            "{}",
            f.message
        );
        assert_eq!(f.objects[0].name, "ama-logs");
        assert_eq!(f.objects[1].kind, "NetworkPolicy");
        assert_eq!(f.objects[1].name, "deny-egress");
        let d = f.decided_by.as_ref().unwrap();
        assert_eq!(d.tier, Tier::NetworkPolicy);
        assert_eq!(d.object.as_ref().unwrap().name, "deny-egress");
        assert!(of(&r, "expected-access").is_empty());
        assert!(of(&r, "workload-reaches-target").is_empty());
        let v = &r.workloads[0].verdicts[0];
        assert!(v.expected && !v.reachable);
        assert_eq!(r.summary.reachable[0].expected, 0);
    }

    #[test]
    fn expected_blocked_names_a_cluster_scoped_rule() {
        let text = format!(
            "{AMA_LOGS}---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {{name: no-imds}}\nspec:\n  priority: 10\n  subject: {{namespaces: {{}}}}\n  egress:\n  - name: imds\n    action: Deny\n    to: [{{networks: [169.254.169.254/32]}}]\n"
        );
        let r = run_expected(&text, None);
        let f = of(&r, "expected-blocked");
        assert_eq!(f.len(), 1, "{:?}", ids(&r));
        assert!(
            f[0].message
                .contains("blocked by the admin tier (AdminNetworkPolicy/no-imds#egress[0]):"),
            "{}",
            f[0].message
        );
        assert_eq!(f[0].objects[1].kind, "AdminNetworkPolicy");
    }

    #[test]
    fn expected_host_network_and_no_engine_are_never_blocked() {
        let host = AMA_LOGS.replace(
            "kubernetes.azure.com/managedby: aks}}\n",
            "kubernetes.azure.com/managedby: aks}}\n    spec: {hostNetwork: true}\n",
        );
        let deny = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: kube-system}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n";
        let r = run_expected(&format!("{host}{deny}"), None);
        assert!(r.workloads[0].host_network);
        // Its reach is the node's: expected for IMDS, and host-network stays.
        assert_eq!(of(&r, "expected-access").len(), 1, "{:?}", ids(&r));
        assert_eq!(of(&r, "host-network").len(), 1);
        assert!(of(&r, "expected-blocked").is_empty());

        let r = run_expected(&format!("{AMA_LOGS}{deny}"), Some(Engine::None));
        assert_eq!(of(&r, "expected-access").len(), 1, "{:?}", ids(&r));
        assert!(of(&r, "expected-blocked").is_empty());
    }

    #[test]
    fn an_allow_for_an_expected_workload_is_no_reopening() {
        let text = format!(
            "{AMA_LOGS}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny-imds, namespace: kube-system}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: 0.0.0.0/0, except: [169.254.169.254/32]}}}}]}}]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: allow-imds, namespace: kube-system}}\nspec:\n  podSelector: {{matchLabels: {{component: ama-logs-agent}}}}\n  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: 169.254.169.254/32}}}}]}}]\n"
        );
        let imds: Target = "169.254.169.254:80/TCP".parse().unwrap();
        let reopens_imds = |r: &Report| {
            r.findings
                .iter()
                .filter(|f| f.id == "allow-reopens-target" && f.targets.contains(&imds))
                .count()
        };
        let r = run_expected(&text, None);
        assert_eq!(reopens_imds(&r), 0, "{:#?}", r.findings);
        assert_eq!(of(&r, "expected-access").len(), 1);
        // WireServer, which deny-imds re-opens against allow-imds, still is one.
        let wire = of(&r, "allow-reopens-target");
        assert_eq!(wire.len(), 1);
        assert_eq!(wire[0].targets, Cloud::Azure.targets()[1..]);
        // Without rules, IMDS is one too.
        assert_eq!(reopens_imds(&run(&text, false)), 1);
    }

    #[test]
    fn the_same_labels_elsewhere_are_not_expected() {
        let text = AMA_LOGS.replace("namespace: kube-system", "namespace: shop");
        let r = run_expected(&text, None);
        assert!(!r.workloads[0].expected);
        assert!(of(&r, "expected-access").is_empty());
        assert_eq!(of(&r, "workload-reaches-target").len(), 1);
    }

    #[test]
    fn service_account_subjects_select_by_the_template_service_account() {
        let rules = AccessRules::parse(
            "rules:\n- name: sa-rule\n  subjects: [{namespace: a, serviceAccount: reader}]\n  paths: [/metadata/instance]\n",
        )
        .unwrap();
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: r, namespace: a}\nspec:\n  template:\n    metadata: {labels: {app: r}}\n    spec: {serviceAccountName: reader}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: o, namespace: a}\nspec:\n  template:\n    metadata: {labels: {app: o}}\n";
        let c = Cluster::build(parse("t.yaml", text).objects);
        let r = audit(
            &c,
            &AuditOptions {
                targets: Cloud::Azure.targets(),
                engine: None,
                list_limit: Some(DEFAULT_LIST_LIMIT),
                expected: Some(rules),
                signals: ClusterSignals::default(),
            },
        );
        let by: Vec<(&str, &[String])> = r
            .workloads
            .iter()
            .map(|w| (w.name.as_str(), w.expected_by.as_slice()))
            .collect();
        assert_eq!(by, [("o", &[][..]), ("r", &["sa-rule".to_string()][..])]);
    }

    #[test]
    fn findings_are_sorted() {
        let r = run(POD, false);
        // sorted most severe first
        assert!(
            r.findings
                .windows(2)
                .all(|w| w[0].severity >= w[1].severity)
        );
    }

    fn run_engine(text: &str, engine: Option<EngineSettings>) -> Report {
        let l = parse("t.yaml", text);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        let c = Cluster::build(l.objects);
        audit(
            &c,
            &AuditOptions {
                targets: Cloud::Azure.targets(),
                engine,
                list_limit: Some(DEFAULT_LIST_LIMIT),
                expected: None,
                signals: ClusterSignals::default(),
            },
        )
    }

    /// What a pod of namespace `a` reaches among AWS's targets, per engine.
    fn aws_reach(text: &str, engine: Engine) -> Vec<(String, bool)> {
        let l = parse("t.yaml", text);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        let c = Cluster::build(l.objects);
        let r = audit(
            &c,
            &AuditOptions {
                targets: Cloud::Aws.targets(),
                engine: Some(EngineSettings::new(engine)),
                list_limit: Some(DEFAULT_LIST_LIMIT),
                expected: None,
                signals: ClusterSignals::default(),
            },
        );
        let w = r.workloads.iter().find(|w| w.name == "p").unwrap();
        w.verdicts
            .iter()
            .map(|v| (v.target.to_string(), v.reachable))
            .collect()
    }

    fn reach_of(reach: &[(String, bool)], target: &str) -> bool {
        reach.iter().find(|(t, _)| t == target).unwrap().1
    }

    const V4: &str = "169.254.169.254:80/TCP";
    const V6: &str = "[fd00:ec2::254]:80/TCP";
    const POD_IDENTITY: &str = "169.254.170.23:80/TCP";
    const POD_IDENTITY_V6: &str = "[fd00:ec2::23]:80/TCP";

    /// IPv6 targets are decided exactly, and an except written in IPv4-mapped form
    /// blocks IPv4 IMDS only where the engine reads it as IPv4 (Go's net.ParseCIDR:
    /// kube-network-policies' evaluateIPBlocks, libcalico-go); under Cilium (netip) and
    /// an unknown engine it blocks nothing, so the audit never reports it blocking.
    #[test]
    fn ipv6_and_mapped_ip_blocks_per_engine() {
        let text = format!(
            "{POD}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny, namespace: a}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock: {{cidr: 0.0.0.0/0, except: ['::ffff:169.254.169.254/128']}}\n    - ipBlock: {{cidr: '::/0', except: ['fd00:ec2::254/128']}}\n"
        );
        for (engine, v4_blocked) in [
            (Engine::Generic, false),
            (Engine::AzureNpm, false),
            (Engine::OvnKubernetes, false),
            (Engine::Cilium, false),
            (Engine::Calico, true),
            (Engine::KubeNetworkPolicies, true),
        ] {
            let reach = aws_reach(&text, engine);
            assert_eq!(reach_of(&reach, V4), !v4_blocked, "{engine}");
            // `::/0` except fd00:ec2::254/128: exactly that IPv6 address is cut.
            assert!(!reach_of(&reach, V6), "{engine}");
            assert!(reach_of(&reach, POD_IDENTITY_V6), "{engine}");
            assert!(reach_of(&reach, POD_IDENTITY), "{engine}");
        }
        // An IPv4-only allow never admits an IPv6 target, nor an IPv6 one an IPv4 target.
        let v4_only = format!(
            "{POD}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: v4, namespace: a}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: 0.0.0.0/0, except: [169.254.169.254/32]}}}}]}}]\n"
        );
        let reach = aws_reach(&v4_only, Engine::Generic);
        assert!(!reach_of(&reach, V4));
        assert!(!reach_of(&reach, V6));
        assert!(!reach_of(&reach, POD_IDENTITY_V6));
        assert!(reach_of(&reach, POD_IDENTITY));
        let v6_only = v4_only
            .replace("0.0.0.0/0", "'::/0'")
            .replace("169.254.169.254/32", "'fd00:ec2::254/128'");
        let reach = aws_reach(&v6_only, Engine::Generic);
        assert!(!reach_of(&reach, V4));
        assert!(!reach_of(&reach, POD_IDENTITY));
        assert!(!reach_of(&reach, V6));
        assert!(reach_of(&reach, POD_IDENTITY_V6));
        // A mapped allow grants IPv4 where it may: an unknown engine counts it.
        let mapped_allow = format!(
            "{POD}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: m, namespace: a}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: '::ffff:0:0/96'}}}}]}}]\n"
        );
        for (engine, v4) in [
            (Engine::Generic, true),
            (Engine::Calico, true),
            (Engine::Cilium, false),
        ] {
            let reach = aws_reach(&mapped_allow, engine);
            assert_eq!(reach_of(&reach, V4), v4, "{engine}");
            assert!(!reach_of(&reach, V6), "{engine}");
        }
    }

    /// A mapped CIDR is a `mapped-cidr` finding saying how the engine reads it and what
    /// to write instead; canonical CIDRs are none.
    #[test]
    fn mapped_cidrs_are_reported_with_the_engines_reading() {
        let text = format!(
            "{POD}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny, namespace: a}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock: {{cidr: 0.0.0.0/0, except: ['::ffff:169.254.169.254/128', 10.0.0.0/8]}}\n    - ipBlock: {{cidr: '::ffff:0:0/96'}}\n    - ipBlock: {{cidr: '::/0', except: ['fd00:ec2::254/128']}}\n"
        );
        let messages = |engine: Engine| -> Vec<String> {
            run_engine(&text, Some(EngineSettings::new(engine)))
                .findings
                .into_iter()
                .filter(|f| f.kind == FindingKind::MappedCidr)
                .map(|f| {
                    assert_eq!(f.severity, Severity::Medium);
                    assert_eq!(f.objects[0].name, "deny");
                    f.message
                })
                .collect()
        };
        let generic = messages(Engine::Generic);
        assert_eq!(generic.len(), 2, "{generic:#?}");
        assert_eq!(
            generic[0],
            "NetworkPolicy a/deny egress[0].to[0].ipBlock.except[0] `::ffff:169.254.169.254/128` is written in IPv4-mapped IPv6 form: how engine generic reads it is not known: the audit takes it as excepting nothing, so that no access is hidden; engines disagree (Go's net.ParseCIDR, in kube-network-policies and Calico, reads it as 169.254.169.254/32; Cilium's netip as IPv6) and API servers with StrictIPCIDRValidation refuse it in new objects: write 169.254.169.254/32"
        );
        assert!(
            generic[1].starts_with("NetworkPolicy a/deny egress[0].to[1].ipBlock.cidr `::ffff:0.0.0.0/96` is written in IPv4-mapped IPv6 form: how engine generic reads it is not known: the audit takes it as 0.0.0.0/0, so that no access is hidden"),
            "{}",
            generic[1]
        );
        assert!(
            messages(Engine::Calico)[0].contains(": engine calico reads it as 169.254.169.254/32;")
        );
        assert!(
            messages(Engine::Cilium)[0].contains(
                ": engine cilium reads it as an IPv6 prefix, which no IPv4 packet matches;"
            )
        );
    }

    /// Calico's nets, Cilium's CIDRs and the cluster-scoped policies' networks in IPv4-mapped
    /// and IPv6 forms.
    #[test]
    fn mapped_and_ipv6_nets_of_each_engine_kind() {
        // Calico reads `::ffff:169.254.169.254/128` as 169.254.169.254/32: denied (and
        // as IPv4 when it checks that a rule holds one IP version).
        let calico = format!(
            "{POD}---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: deny}}\nspec:\n  selector: all()\n  types: [Egress]\n  egress:\n  - {{action: Deny, destination: {{nets: ['::ffff:169.254.169.254/128']}}}}\n  - {{action: Deny, destination: {{nets: ['fd00:ec2::254/128']}}}}\n  - {{action: Allow}}\n"
        );
        let reach = aws_reach(&calico, Engine::Calico);
        assert!(!reach_of(&reach, V4));
        assert!(!reach_of(&reach, V6));
        assert!(reach_of(&reach, POD_IDENTITY));
        assert!(reach_of(&reach, POD_IDENTITY_V6));
        // Cilium keeps it IPv6: its deny denies nothing IPv4.
        let cilium = format!(
            "{POD}---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: deny, namespace: a}}\nspec:\n  endpointSelector: {{}}\n  egressDeny: [{{toCIDR: ['::ffff:169.254.169.254/128', 'fd00:ec2::254/128']}}]\n  egress: [{{toCIDR: [0.0.0.0/0, '::/0']}}]\n"
        );
        let reach = aws_reach(&cilium, Engine::Cilium);
        assert!(reach_of(&reach, V4));
        assert!(!reach_of(&reach, V6));
        assert!(reach_of(&reach, POD_IDENTITY_V6));
        // toCIDRSet `::/0` except fd00:ec2::254/128 beside 0.0.0.0/0: exactly that IPv6
        // address is left out of the allow.
        let cidr_set = format!(
            "{POD}---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: allow, namespace: a}}\nspec:\n  endpointSelector: {{}}\n  egress: [{{toCIDRSet: [{{cidr: '::/0', except: ['fd00:ec2::254/128']}}, {{cidr: 0.0.0.0/0, except: [169.254.170.0/24]}}]}}]\n"
        );
        let reach = aws_reach(&cidr_set, Engine::Cilium);
        assert!(!reach_of(&reach, V6));
        assert!(reach_of(&reach, POD_IDENTITY_V6));
        assert!(reach_of(&reach, V4));
        assert!(!reach_of(&reach, POD_IDENTITY));
        // Calico notNets on IPv6: everything IPv6 but the excluded address is allowed.
        let not_nets = format!(
            "{POD}---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: allow}}\nspec:\n  selector: all()\n  types: [Egress]\n  egress:\n  - {{action: Allow, destination: {{nets: ['::/0'], notNets: ['fd00:ec2::23/128']}}}}\n"
        );
        let reach = aws_reach(&not_nets, Engine::Calico);
        assert!(reach_of(&reach, V6));
        assert!(!reach_of(&reach, POD_IDENTITY_V6));
        assert!(!reach_of(&reach, V4));
        assert!(!reach_of(&reach, POD_IDENTITY));
        // AdminNetworkPolicy networks: v1alpha1's CRD refuses the dotted mapped form but
        // not the hex one, and tells implementations to read it with net.ParseCIDR (IPv4).
        // (ClusterNetworkPolicy v1alpha2's isCIDR refuses both.)
        let cnp = format!(
            "{POD}---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {{name: deny}}\nspec:\n  priority: 5\n  subject: {{namespaces: {{}}}}\n  egress: [{{name: imds, action: Deny, to: [{{networks: ['::ffff:a9fe:a9fe/128', 'fd00:ec2::/32']}}]}}]\n"
        );
        let reach = aws_reach(&cnp, Engine::Generic);
        assert!(!reach_of(&reach, V4));
        assert!(!reach_of(&reach, V6));
        assert!(!reach_of(&reach, POD_IDENTITY_V6));
        assert!(reach_of(&reach, POD_IDENTITY));
    }

    const CALICO_DENY: &str = "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: deny-imds}\nspec:\n  selector: all()\n  egress: [{action: Deny, destination: {nets: [169.254.169.254/32]}}]\n---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: ns-deny, namespace: a}\nspec:\n  egress: [{action: Deny}]\n";
    const CILIUM_DENY: &str = "---\napiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: deny-imds}\nspec:\n  endpointSelector: {}\n  egressDeny: [{toCIDR: [169.254.169.254/32]}]\n";

    /// Calico's kinds are implemented by Calico only
    /// (<https://docs.tigera.io/calico/latest/reference/resources/globalnetworkpolicy>):
    /// under any other engine they are reported not-enforced, never silently dropped.
    #[test]
    fn calico_kinds_under_another_engine_are_not_enforced() {
        let text = format!("{POD}{CALICO_DENY}");
        for e in [Engine::Generic, Engine::AzureNpm, Engine::Cilium] {
            let r = run_engine(&text, Some(EngineSettings::new(e)));
            let msgs: Vec<&str> = of(&r, "not-enforced")
                .iter()
                .map(|f| f.message.as_str())
                .collect();
            assert_eq!(msgs.len(), 2, "{e}: {msgs:?}");
            assert!(msgs.iter().any(|m| m.starts_with(&format!(
                "GlobalNetworkPolicy/deny-imds is not enforced by engine {e}: only Calico"
            ))));
            assert!(
                msgs.iter()
                    .any(|m| m.starts_with("NetworkPolicy.projectcalico.org/a/ns-deny")),
                "{msgs:?}"
            );
            // Left out: the pod reaches IMDS.
            assert!(r.workloads[0].verdicts[0].reachable);
        }
        // Calico itself enforces them; none is reported; `--engine none` reports
        // no-policy-engine once.
        assert!(
            of(
                &run_engine(&text, Some(EngineSettings::new(Engine::Calico))),
                "not-enforced"
            )
            .is_empty()
        );
        assert!(
            of(
                &run_engine(&text, Some(EngineSettings::new(Engine::None))),
                "not-enforced"
            )
            .is_empty()
        );
    }

    /// Both Calico's and Cilium's kinds, no --engine: the detection picks Calico (always
    /// the same), says so in an `engine-ambiguous` finding and reports the Cilium policy
    /// not-enforced; a named engine is not ambiguous.
    #[test]
    fn calico_and_cilium_kinds_together_are_an_ambiguous_detection() {
        let text = format!("{POD}{CALICO_DENY}{CILIUM_DENY}");
        let r = run_engine(&text, None);
        assert_eq!((r.engine, r.engine_detected), (Engine::Calico, true));
        let amb = of(&r, "engine-ambiguous");
        assert_eq!(amb.len(), 1);
        assert!(
            amb[0].message.contains("calico and cilium")
                && amb[0].message.contains("assumed calico")
                && amb[0]
                    .message
                    .contains("--engine calico or --engine cilium"),
            "{}",
            amb[0].message
        );
        assert!(of(&r, "not-enforced").iter().any(|f| {
            f.message
                .starts_with("CiliumClusterwideNetworkPolicy deny-imds")
        }));
        let named = run_engine(&text, Some(EngineSettings::new(Engine::Cilium)));
        assert!(of(&named, "engine-ambiguous").is_empty());
        assert_eq!(of(&named, "not-enforced").len(), 2);
        // One engine's kinds only: detected, not ambiguous.
        let one = run_engine(&format!("{POD}{CILIUM_DENY}"), None);
        assert_eq!(one.engine, Engine::Cilium);
        assert!(of(&one, "engine-ambiguous").is_empty());
    }

    fn run_signals(text: &str, engine: Option<Engine>, signals: ClusterSignals) -> Report {
        let l = parse("t.yaml", text);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        let c = Cluster::build(l.objects);
        audit(
            &c,
            &AuditOptions {
                targets: Cloud::Azure.targets(),
                engine: engine.map(EngineSettings::new),
                list_limit: Some(DEFAULT_LIST_LIMIT),
                expected: None,
                signals,
            },
        )
    }

    fn aks_signals(network_profile: &str, pools: &str) -> ClusterSignals {
        let text = format!(
            r#"{{"name": "seed", "resourceGroup": "rg", "networkProfile": {network_profile}, "agentPoolProfiles": [{pools}]}}"#
        );
        ClusterSignals {
            aks: Some(crate::engine_detect::AksCluster::from_json(&text).unwrap()),
            ..ClusterSignals::default()
        }
    }

    const HOST_POD: &str = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: h, namespace: a}\nspec: {hostNetwork: true}\n";
    const POOL: &str = r#"{"name": "nodepool1", "osType": "Linux"}"#;

    /// podLinkLocalAccess None (the AKS IMDS restriction): AgentBaker drops FORWARD
    /// traffic to 169.254.169.254/32 tcp 80 not from the node's address, so a pod on the
    /// pod network is blocked there whatever the policies (or the missing engine) say,
    /// with the deciding tier named; hostNetwork pods keep access; WireServer is not
    /// part of it. The AKS add-ons that need IMDS get expected-blocked, without
    /// --preset.
    #[test]
    fn aks_imds_restriction_blocks_pod_network_imds_only() {
        let text = format!("{POD}{HOST_POD}---\n{AMA_LOGS}");
        let signals = aks_signals(
            r#"{"networkPlugin": "azure", "podLinkLocalAccess": "None"}"#,
            POOL,
        );
        let r = run_signals(&text, None, signals.clone());
        assert_eq!(r.engine, Engine::None);
        assert_eq!(
            r.engine_decision.source,
            crate::engine_detect::DecisionSource::AksCluster
        );
        let by = |name: &str| r.workloads.iter().find(|w| w.name == name).unwrap();
        let imds = |w: &WorkloadReport| {
            w.verdicts
                .iter()
                .find(|v| v.target == crate::target::IMDS)
                .unwrap()
                .clone()
        };
        let v = imds(by("p"));
        assert!(!v.reachable && v.policy_allowed, "{v:?}");
        assert_eq!(v.tier, Tier::AksImdsRestriction);
        assert_eq!(v.tier.to_string(), "aks-imds-restriction");
        assert!(
            v.reason.starts_with(
                "blocked by the AKS IMDS restriction (networkProfile.podLinkLocalAccess=None): the node drops traffic to 169.254.169.254:80/TCP"
            ),
            "{}",
            v.reason
        );
        // WireServer: no engine, reachable.
        assert!(
            by("p")
                .verdicts
                .iter()
                .filter(|v| v.target != crate::target::IMDS)
                .all(|v| v.reachable)
        );
        // hostNetwork keeps access.
        let h = imds(by("h"));
        assert!(h.reachable);
        assert_eq!(h.tier, Tier::HostNetwork);
        // Counted once per target.
        assert_eq!(r.summary.reachable[0].target, crate::target::IMDS);
        assert_eq!(r.summary.reachable[0].workloads, 1);
        // The add-on that needs IMDS: expected-blocked, naming the restriction.
        let broken = of(&r, "expected-blocked");
        assert_eq!(broken.len(), 1, "{broken:?}");
        assert!(
            broken[0]
                .message
                .starts_with("kube-system/ama-logs[DaemonSet] needs 169.254.169.254:80/TCP (rule(s) aks-container-insights) but is blocked by the AKS IMDS restriction"),
            "{}",
            broken[0].message
        );
        assert_eq!(
            broken[0].decided_by.as_ref().unwrap().tier,
            Tier::AksImdsRestriction
        );
        // Nothing reaches IMDS from the pod network, so no finding says so.
        assert!(of(&r, "workload-reaches-target").iter().all(|f| {
            !f.targets.contains(&crate::target::IMDS) || f.message.starts_with("a/h[Pod]")
        }));
        assert!(
            of(&r, "namespace-unrestricted")
                .iter()
                .all(|f| !f.targets.contains(&crate::target::IMDS))
        );
        let none = of(&r, "no-policy-engine");
        assert!(
            none[0].message.contains("networkPolicy not set (none)")
                && none[0].message.contains("but the AKS IMDS restriction"),
            "{}",
            none[0].message
        );

        // With --preset aks, the same one finding (not two), and the verdict is
        // expected.
        let l = parse("t.yaml", &text);
        let c = Cluster::build(l.objects);
        let rules = AccessRules::parse(crate::presets::preset("aks").unwrap()).unwrap();
        let r = audit(
            &c,
            &AuditOptions {
                targets: Cloud::Azure.targets(),
                engine: None,
                list_limit: Some(DEFAULT_LIST_LIMIT),
                expected: Some(rules),
                signals: signals.clone(),
            },
        );
        assert_eq!(of(&r, "expected-blocked").len(), 1);
        let ama = r.workloads.iter().find(|w| w.name == "ama-logs").unwrap();
        assert!(ama.verdicts[0].expected && !ama.verdicts[0].reachable);

        // Under an engine whose policy allows it, still blocked.
        let r = run_signals(&text, Some(Engine::Calico), signals);
        let v = &r.workloads.iter().find(|w| w.name == "p").unwrap().verdicts[0];
        assert!(!v.reachable && v.tier == Tier::AksImdsRestriction);
    }

    /// The restriction off, or on some pools only (where a pod lands is not known):
    /// verdicts unchanged.
    #[test]
    fn aks_imds_restriction_off_or_partial_changes_nothing() {
        for (profile, pools) in [
            (r#"{"networkPolicy": "azure"}"#, POOL.to_string()),
            (
                r#"{"networkPolicy": "azure", "podLinkLocalAccess": "None"}"#,
                format!(r#"{POOL}, {{"name": "user", "podLinkLocalAccess": "IMDS"}}"#),
            ),
        ] {
            let r = run_signals(POD, None, aks_signals(profile, &pools));
            assert_eq!(r.engine, Engine::AzureNpm);
            assert!(r.workloads[0].verdicts.iter().all(|v| v.reachable));
            assert!(of(&r, "expected-blocked").is_empty());
        }
    }

    /// Two engines' DaemonSets in the cluster: engine-ambiguous, as for the input's kinds.
    #[test]
    fn two_engines_in_the_cluster_are_reported_ambiguous() {
        let signals = ClusterSignals {
            daemonsets: vec![
                ("kube-system".into(), "azure-npm".into()),
                ("kube-system".into(), "antrea-agent".into()),
            ],
            ..ClusterSignals::default()
        };
        let r = run_signals(POD, None, signals);
        assert_eq!((r.engine, r.engine_detected), (Engine::AzureNpm, true));
        let amb = of(&r, "engine-ambiguous");
        assert_eq!(amb.len(), 1);
        assert!(
            amb[0].message.contains("assumed azure-npm")
                && amb[0]
                    .message
                    .ends_with("--engine azure-npm or --engine generic"),
            "{}",
            amb[0].message
        );
        // Named: not ambiguous, and said so.
        let r = run_signals(
            POD,
            Some(Engine::Generic),
            ClusterSignals {
                daemonsets: vec![("kube-system".into(), "azure-npm".into())],
                ..ClusterSignals::default()
            },
        );
        assert!(of(&r, "engine-ambiguous").is_empty());
        assert_eq!(r.engine_decision.how, "from --engine");
        assert!(!r.engine_detected);
    }

    /// A live read that found no engine, with nothing naming one: an `engine-unknown`
    /// finding (medium) beside the decision's warning, with the same way out; none for
    /// files, an engine found or named, the input's kinds deciding, or an AKS file that
    /// names the engine (or says there is none).
    #[test]
    fn a_live_cluster_without_an_engine_is_an_engine_unknown_finding() {
        let live = ClusterSignals {
            daemonsets: vec![("kube-system".into(), "kube-proxy".into())],
            crds: vec!["deployments.apps".into()],
            aks: None,
        };
        let r = run_signals(POD, None, live.clone());
        assert_eq!(r.engine, Engine::Generic);
        let f = of(&r, "engine-unknown");
        assert_eq!(f.len(), 1, "{:?}", r.findings);
        assert_eq!(f[0].severity, Severity::Medium);
        for part in [
            "no policy engine DaemonSet or CRD found in the cluster",
            "NetworkPolicies may not be enforced at all",
            "--aks-cluster FILE (`az aks show -o json`) or --engine",
        ] {
            assert!(
                f[0].message.contains(part),
                "{part:?} not in {}",
                f[0].message
            );
        }
        // Counted in the summary (so --fail-on medium catches it): one medium more than
        // the same input audited from files.
        let files = run_signals(POD, None, ClusterSignals::default());
        let medium = |r: &Report| r.summary.findings.get("medium").copied().unwrap_or(0);
        assert_eq!(medium(&r), medium(&files) + 1);
        // An AKS file that does not name the engine (bring your own CNI): --engine.
        let mut byo = aks_signals(r#"{"networkPlugin": "none"}"#, POOL);
        byo.daemonsets = live.daemonsets.clone();
        let r = run_signals(POD, None, byo);
        let f = of(&r, "engine-unknown");
        assert_eq!(f.len(), 1);
        assert!(
            f[0].message.contains("name the engine with --engine"),
            "{}",
            f[0].message
        );
        // Files (no cluster signals): none.
        assert!(of(&files, "engine-unknown").is_empty());
        // An engine found in the cluster, or named: none.
        let mut npm = live.clone();
        npm.daemonsets
            .push(("kube-system".into(), "azure-npm".into()));
        assert!(of(&run_signals(POD, None, npm), "engine-unknown").is_empty());
        for e in [Engine::Generic, Engine::None] {
            assert!(of(&run_signals(POD, Some(e), live.clone()), "engine-unknown").is_empty());
        }
        // The input's kinds decide: none.
        let r = run_signals(&format!("{POD}{CILIUM_DENY}"), None, live.clone());
        assert_eq!(r.engine, Engine::Cilium);
        assert!(of(&r, "engine-unknown").is_empty());
        // An AKS file naming the engine, or saying there is none: none.
        for profile in [
            r#"{"networkPolicy": "azure"}"#,
            r#"{"networkPolicy": "none"}"#,
        ] {
            let mut signals = aks_signals(profile, POOL);
            signals.daemonsets = live.daemonsets.clone();
            assert!(of(&run_signals(POD, None, signals), "engine-unknown").is_empty());
        }
    }

    /// A CiliumCIDRGroup reference the input does not resolve: Cilium resolves it to no
    /// CIDR (cilium/cilium#25020: the agent logs the missing group), so the deny denies
    /// nothing; reported as unresolved-reference naming the policy, rule and group.
    #[test]
    fn unresolved_cidr_groups_are_reported_and_deny_nothing() {
        let text = format!(
            "{POD}---\napiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {{name: deny-imds}}\nspec:\n  endpointSelector: {{}}\n  enableDefaultDeny: {{egress: false}}\n  egressDeny:\n  - toCIDRSet: [{{cidrGroupRef: imds}}]\n  - toCIDRSet: [{{cidrGroupSelector: {{matchLabels: {{role: metadata}}}}}}]\n"
        );
        let mut s = EngineSettings::new(Engine::Cilium);
        s.cilium_link_local = crate::cilium::LinkLocalAs::World;
        let r = run_engine(&text, Some(s));
        let f = of(&r, "unresolved-reference");
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(
            f[0].message.starts_with(
                "CiliumClusterwideNetworkPolicy deny-imds#egressDeny[0] cidrGroupRef `imds`: no CiliumCIDRGroup"
            ) && f[0].message.contains("the deny denies nothing"),
            "{}",
            f[0].message
        );
        assert!(f[1].message.contains("egressDeny[1] cidrGroupSelector"));
        assert_eq!(f[0].severity, Severity::Medium);
        assert!(r.workloads[0].verdicts[0].reachable);
        // With the group in the input: resolved, denied, nothing reported.
        let with = format!(
            "{text}---\napiVersion: cilium.io/v2alpha1\nkind: CiliumCIDRGroup\nmetadata: {{name: imds, labels: {{role: metadata}}}}\nspec: {{externalCIDRs: [169.254.169.254/32]}}\n"
        );
        let r = run_engine(&with, Some(s));
        assert!(of(&r, "unresolved-reference").is_empty());
        assert!(!r.workloads[0].verdicts[0].reachable);
    }
}
