//! Which policy engine enforces what, and THE composition of every policy kind into one
//! egress decision ([`decide`]); the audit, and later `policy generate`'s closed loop, use
//! nothing else.
//!
//! Order (sigs.k8s.io/network-policy-api, `apis/v1beta1/clusternetworkpolicy_types.go`,
//! "Policy tiers are evaluated in the following order"): the Admin tier (AdminNetworkPolicy
//! and ClusterNetworkPolicy `tier: Admin`, by priority, first matching rule) → NetworkPolicy
//! ("always makes a final decision for selected pods") → the Baseline tier
//! (BaselineAdminNetworkPolicy and ClusterNetworkPolicy `tier: Baseline`) → allow.
//! Each engine enforces a subset of the kinds ([`Engine::enforces`]); the objects of the
//! other kinds are left out of the decision and reported by the audit as not enforced.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Serialize, Serializer};

use crate::calico;
use crate::cilium;
use crate::cluster::Cluster;
use crate::model::Labels;
use crate::netpol::{self, NetpolOptions};
use crate::target::{Protocol, Target};
use crate::tiered::{
    Action, TierDecision, TierLevel, TierOutcome, TieredKind, TieredPolicy, TieredRuleRef,
    decide_tier_with,
};

/// A policy engine (CNI network policy implementation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Engine {
    /// No engine named and none detected: the network-policy-api reference semantics,
    /// every kind enforced (Admin tier → NetworkPolicy → Baseline tier → allow).
    Generic,
    /// Azure Network Policy Manager: NetworkPolicy only, and it ignores `endPort`
    /// (<https://github.com/Azure/AKS/issues/2857>: "endPort is ignored and thus egress is
    /// only allowed on" the start port).
    AzureNpm,
    /// Calico 3.32+: NetworkPolicy, ClusterNetworkPolicy (its `kube-admin` /
    /// `kube-baseline` tiers) and Calico's own kinds; AdminNetworkPolicy support removed.
    Calico,
    /// Cilium 1.20+: NetworkPolicy, ClusterNetworkPolicy only with
    /// `--enable-k8s-cluster-network-policy` ([`EngineSettings::cilium_cluster_network_policy`]),
    /// and Cilium's own kinds.
    Cilium,
    /// kube-network-policies (the reference implementation): NetworkPolicy, and
    /// ClusterNetworkPolicy in its `npa-v1alpha2` image flavour
    /// (<https://kube-network-policies.sigs.k8s.io/docs/user/flavors-and-architectures/>:
    /// "support for the newer Kubernetes ClusterNetworkPolicy APIs"); its current flavours
    /// do not list AdminNetworkPolicy v1alpha1.
    KubeNetworkPolicies,
    /// OVN-Kubernetes: NetworkPolicy, AdminNetworkPolicy (priorities 0–99) and
    /// BaselineAdminNetworkPolicy v1alpha1; no ClusterNetworkPolicy.
    OvnKubernetes,
    /// No engine: nothing is enforced.
    None,
}

impl Engine {
    /// Every engine, `Generic` first.
    pub const ALL: [Engine; 7] = [
        Engine::Generic,
        Engine::AzureNpm,
        Engine::Calico,
        Engine::Cilium,
        Engine::KubeNetworkPolicies,
        Engine::OvnKubernetes,
        Engine::None,
    ];

    /// The name used on the command line and in reports (`azure-npm`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Engine::Generic => "generic",
            Engine::AzureNpm => "azure-npm",
            Engine::Calico => "calico",
            Engine::Cilium => "cilium",
            Engine::KubeNetworkPolicies => "kube-network-policies",
            Engine::OvnKubernetes => "ovn-kubernetes",
            Engine::None => "none",
        }
    }

    /// The engine of a name (see [`Engine::name`]).
    pub fn from_name(name: &str) -> Option<Engine> {
        Engine::ALL.into_iter().find(|e| e.name() == name)
    }

    /// Whether the engine enforces NetworkPolicy at all.
    pub fn enforces_network_policy(self) -> bool {
        self != Engine::None
    }

    /// Whether the engine enforces this cluster-scoped policy; `Err` says why not (for
    /// the `not-enforced` finding).
    pub fn enforces(self, p: &TieredPolicy, settings: &EngineSettings) -> Result<(), String> {
        use TieredKind::*;
        let name = self.name();
        match (self, p.kind) {
            (Engine::Generic, _) => Ok(()),
            (Engine::None, _) => Err(format!("engine {name} enforces no policy")),
            (Engine::AzureNpm, k) => Err(format!(
                "{name} enforces NetworkPolicy only, not {k}"
            )),
            (Engine::Calico | Engine::KubeNetworkPolicies, ClusterNetworkPolicy) => Ok(()),
            (Engine::Calico, k) => Err(format!(
                "Calico 3.32+ enforces ClusterNetworkPolicy; its {k} support was removed"
            )),
            (Engine::KubeNetworkPolicies, k) => Err(format!(
                "{name} enforces ClusterNetworkPolicy (npa-v1alpha2 flavour), not {k}"
            )),
            (Engine::Cilium, ClusterNetworkPolicy) if settings.cilium_cluster_network_policy => {
                Ok(())
            }
            (Engine::Cilium, ClusterNetworkPolicy) => Err(
                "Cilium enforces ClusterNetworkPolicy only when started with --enable-k8s-cluster-network-policy (say so with --cilium-cnp)".into(),
            ),
            (Engine::Cilium, k) => Err(format!("Cilium does not implement {k}")),
            (Engine::OvnKubernetes, ClusterNetworkPolicy) => Err(format!(
                "{name} implements AdminNetworkPolicy/BaselineAdminNetworkPolicy v1alpha1, not ClusterNetworkPolicy"
            )),
            (Engine::OvnKubernetes, AdminNetworkPolicy) if p.priority.is_some_and(|n| n > 99) => {
                Err(format!(
                    "{name} supports AdminNetworkPolicy priorities 0-99 only (this one is {})",
                    p.priority.unwrap_or_default()
                ))
            }
            (Engine::OvnKubernetes, _) => Ok(()),
        }
    }

    /// The engine the input's kinds call for, if any: Calico's kinds mean Calico,
    /// Cilium's kinds mean Cilium. `None`: nothing engine-specific was read (use
    /// [`Engine::Generic`]). When both are present (a migration, or manifests of two
    /// clusters) the pick is deterministic, Calico, and [`Engine::detect_candidates`]
    /// lists both: the audit reports the choice (`engine-ambiguous`) and the other
    /// engine's policies as not enforced, and asks for `--engine`.
    pub fn detect(cluster: &Cluster) -> Option<Engine> {
        Engine::detect_candidates(cluster).first().copied()
    }

    /// Every engine whose own kinds the input holds, in [`Engine::detect`]'s order of
    /// preference (Calico, then Cilium).
    pub fn detect_candidates(cluster: &Cluster) -> Vec<Engine> {
        let mut out = Vec::new();
        if !cluster.calico.is_empty() {
            out.push(Engine::Calico);
        }
        if !cluster.cilium.is_empty() {
            out.push(Engine::Cilium);
        }
        out
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Engine {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// The engine and what it was started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineSettings {
    /// The engine.
    pub engine: Engine,
    /// Cilium runs with `--enable-k8s-cluster-network-policy` (ClusterNetworkPolicy is
    /// enforced); only read for [`Engine::Cilium`].
    pub cilium_cluster_network_policy: bool,
    /// Which entity Cilium gives link-local destinations such as 169.254.169.254
    /// ([`cilium::LinkLocalAs`]; the default evaluates both); only read for
    /// [`Engine::Cilium`].
    pub cilium_link_local: cilium::LinkLocalAs,
}

impl EngineSettings {
    /// Settings for an engine with its defaults.
    pub fn new(engine: Engine) -> Self {
        EngineSettings {
            engine,
            cilium_cluster_network_policy: false,
            cilium_link_local: cilium::LinkLocalAs::default(),
        }
    }

    /// Cilium's options for these settings.
    pub fn cilium_options(&self) -> cilium::CiliumOptions {
        cilium::CiliumOptions {
            link_local: self.cilium_link_local,
            ..cilium::CiliumOptions::default()
        }
    }

    /// NetworkPolicy evaluation options of this engine.
    pub fn netpol_options(&self) -> NetpolOptions {
        NetpolOptions {
            ignore_end_port: self.engine == Engine::AzureNpm,
            // Cilium: "CIDR rules never match Cilium-managed pods or nodes".
            ip_block_matches_pods: self.engine != Engine::Cilium,
            // An ipBlock in IPv4-mapped form (docs/audit.md, "IPv4-mapped CIDRs"): Go's
            // net.ParseCIDR reads it as IPv4 (kube-network-policies' evaluateIPBlocks,
            // libcalico-go), netip as IPv6 (Cilium); elsewhere nothing hides access.
            mapped: match self.engine {
                Engine::Calico | Engine::KubeNetworkPolicies => netpol::MappedCidrs::AsIpv4,
                Engine::Cilium => netpol::MappedCidrs::AsIpv6,
                _ => netpol::MappedCidrs::Unknown,
            },
        }
    }
}

/// The pod a connection leaves from.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its labels.
    pub labels: &'a Labels,
    /// Its namespace's labels (with `kubernetes.io/metadata.name`).
    pub ns_labels: &'a Labels,
    /// Its service account, when known.
    pub service_account: Option<&'a str>,
    /// `spec.hostNetwork`: no policy kind applies to it on a real node.
    pub host_network: bool,
}

/// Where a connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// An address outside the pod network (what the audit evaluates). Selector peers and
    /// named ports never match it; pod and node destinations are never inferred from
    /// addresses.
    External(Target),
    /// A pod.
    Pod {
        /// Its namespace.
        namespace: String,
        /// Its labels.
        labels: Labels,
        /// Its namespace's labels.
        ns_labels: Labels,
        /// Its address, when known (ipBlock / networks peers match it).
        ip: Option<IpAddr>,
        /// Destination port.
        port: u16,
        /// Protocol.
        protocol: Protocol,
        /// Its named container ports: (name, protocol, number).
        named_ports: Vec<(String, Protocol, u16)>,
    },
    /// A node address.
    Node {
        /// The address.
        ip: IpAddr,
        /// Destination port.
        port: u16,
        /// Protocol.
        protocol: Protocol,
        /// The node's labels.
        labels: Labels,
    },
}

impl Destination {
    /// The destination address, when known.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Destination::External(t) => Some(t.ip),
            Destination::Pod { ip, .. } => *ip,
            Destination::Node { ip, .. } => Some(*ip),
        }
    }

    /// Protocol and port.
    pub fn protocol_port(&self) -> (Protocol, u16) {
        match self {
            Destination::External(t) => (t.protocol, t.port),
            Destination::Pod { protocol, port, .. } | Destination::Node { protocol, port, .. } => {
                (*protocol, *port)
            }
        }
    }
}

/// The tier that decided a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Tier {
    /// The Admin tier (AdminNetworkPolicy, ClusterNetworkPolicy `tier: Admin`).
    Admin,
    /// NetworkPolicy.
    NetworkPolicy,
    /// The Baseline tier (BaselineAdminNetworkPolicy, ClusterNetworkPolicy
    /// `tier: Baseline`).
    Baseline,
    /// Nothing decided: the default, allow.
    Default,
    /// A Calico tier, by name.
    Calico(String),
    /// Cilium's policies.
    Cilium,
    /// No engine enforces any policy (`--engine none`): nothing decided, whatever the
    /// policies say.
    None,
    /// The source uses the node's network: no policy kind applies to it.
    HostNetwork,
    /// AKS's IMDS restriction (`podLinkLocalAccess: None`): the node drops traffic to
    /// 169.254.169.254:80/TCP from pod addresses, whatever the policies say
    /// ([`crate::engine_detect::ImdsRestriction`]).
    AksImdsRestriction,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tier::Admin => f.write_str("admin"),
            Tier::NetworkPolicy => f.write_str("networkpolicy"),
            Tier::Baseline => f.write_str("baseline"),
            Tier::Default => f.write_str("default"),
            Tier::Calico(name) => write!(f, "calico:{name}"),
            Tier::Cilium => f.write_str("cilium"),
            Tier::None => f.write_str("none"),
            Tier::HostNetwork => f.write_str("host-network"),
            Tier::AksImdsRestriction => f.write_str("aks-imds-restriction"),
        }
    }
}

impl Serialize for Tier {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl From<TierLevel> for Tier {
    fn from(t: TierLevel) -> Tier {
        match t {
            TierLevel::Admin => Tier::Admin,
            TierLevel::Baseline => Tier::Baseline,
        }
    }
}

/// A policy object: kind, namespace (empty for cluster-scoped kinds), name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PolicyRef {
    /// Kubernetes kind.
    pub kind: String,
    /// Namespace; empty for a cluster-scoped object.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl PolicyRef {
    /// The reference of a cluster-scoped policy.
    pub fn tiered(p: &TieredPolicy) -> Self {
        PolicyRef {
            kind: p.kind.as_str().into(),
            namespace: String::new(),
            name: p.name.clone(),
        }
    }

    /// The reference of a policy as [`cilium`] names it (a Cilium kind or a
    /// NetworkPolicy).
    pub fn cilium(p: &cilium::PolicyRef) -> Self {
        PolicyRef {
            kind: p.kind.as_str().into(),
            namespace: p.namespace.clone().unwrap_or_default(),
            name: p.name.clone(),
        }
    }

    /// The reference of a policy as [`calico`] names it: `GlobalNetworkPolicy`,
    /// `NetworkPolicy.projectcalico.org` (Calico's namespaced kind), `NetworkPolicy`
    /// (Kubernetes') or `ClusterNetworkPolicy`.
    pub fn calico(p: &calico::CalicoPolicyRef) -> Self {
        let kind = match p.kind {
            calico::PolicyKind::NetworkPolicy => "NetworkPolicy.projectcalico.org",
            k => k.kind(),
        };
        PolicyRef {
            kind: kind.into(),
            namespace: p.namespace.clone().unwrap_or_default(),
            name: p.name.clone(),
        }
    }

    /// The reference of a NetworkPolicy.
    pub fn network_policy(p: &crate::model::NetworkPolicy) -> Self {
        PolicyRef {
            kind: "NetworkPolicy".into(),
            namespace: p.namespace.clone(),
            name: p.name.clone(),
        }
    }
}

impl fmt::Display for PolicyRef {
    /// `namespace/name` for a NetworkPolicy (as the audit always named them), else
    /// `Kind/name` (namespaced: `Kind/namespace/name`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.kind.as_str(), self.namespace.is_empty()) {
            ("NetworkPolicy", _) => write!(f, "{}/{}", self.namespace, self.name),
            (k, true) => write!(f, "{k}/{}", self.name),
            (k, false) => write!(f, "{k}/{}/{}", self.namespace, self.name),
        }
    }
}

/// Why a connection got its decision (the structured part; [`explain`] words it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The source uses the node's network: no policy kind applies to it.
    HostNetwork,
    /// The engine enforces nothing.
    NoPolicyEngine,
    /// A rule of a cluster-scoped policy decided (Accept or Deny).
    Tiered(TieredRuleRef),
    /// NetworkPolicy decided (the pod is egress-isolated): see
    /// [`EgressDecision::netpol`].
    NetworkPolicy,
    /// Nothing decided: allowed by default.
    Default,
    /// Cilium decided (its policies and the NetworkPolicies it enforces with them).
    Cilium(Box<cilium::CiliumDecision>),
    /// Calico decided (its tiers, with NetworkPolicy in its `default` tier and
    /// ClusterNetworkPolicy in `kube-admin` / `kube-baseline`).
    Calico(Box<calico::CalicoDecision>),
}

/// Two or more policies of one tier with the same priority match a connection: the
/// spec leaves the choice undefined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tie {
    /// The rule this evaluation applied (first by name).
    pub chosen: TieredRuleRef,
    /// The rules of the other equal-priority policies that match too.
    pub others: Vec<TieredRuleRef>,
}

/// The egress decision for one source pod and one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressDecision {
    /// Whether the connection is allowed.
    pub allowed: bool,
    /// The tier that decided.
    pub tier: Tier,
    /// The deciding object, when one did.
    pub object: Option<PolicyRef>,
    /// The deciding rule of that object (`egress[2]`), when a rule decided.
    pub rule: Option<String>,
    /// Why.
    pub reason: Reason,
    /// NetworkPolicy's decision, whenever the NetworkPolicy tier was reached.
    pub netpol: Option<netpol::Decision>,
    /// `Pass` rules the connection went through on the way.
    pub passed: Vec<TieredRuleRef>,
    /// Undefined choices among equal-priority policies on the way.
    pub ties: Vec<Tie>,
    /// What the verdict assumes, in words, appended to the reason (e.g. which entity
    /// Cilium gives a link-local destination when a ClusterNetworkPolicy `networks` rule
    /// decides under one classification and not the other).
    pub notes: Vec<String>,
}

/// The policies that apply to one source pod, per tier, in evaluation order (see
/// [`Prepared::select`]): computed once per pod shape, used for every destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selected {
    /// NetworkPolicies of its namespace that select it (indexes into
    /// [`Cluster::policies`]); empty when the engine enforces no NetworkPolicy.
    pub netpol: Vec<usize>,
    /// Admin-tier policies (indexes into [`Cluster::tiered`]) in precedence order.
    pub admin: Vec<usize>,
    /// Baseline-tier policies in precedence order.
    pub baseline: Vec<usize>,
}

/// The tiered policies one namespace's pods may be subject to.
#[derive(Debug, Default)]
struct NsTiers {
    admin: Vec<usize>,
    baseline: Vec<usize>,
}

/// An engine's view of a cluster, prepared once: the enforced cluster-scoped policies in
/// precedence order, and per namespace those whose subject can select its pods. Then
/// selecting a pod's policies costs the policies of its namespace only.
#[derive(Debug)]
pub struct Prepared<'c> {
    cluster: &'c Cluster,
    settings: EngineSettings,
    admin: Vec<usize>,
    baseline: Vec<usize>,
    by_ns: HashMap<&'c str, NsTiers>,
    /// Calico's view (for [`Engine::Calico`]): its own policies, NetworkPolicies in the
    /// `default` tier and the enforced ClusterNetworkPolicies in `kube-admin` /
    /// `kube-baseline`, as Calico converts them.
    calico: Option<calico::CalicoPolicies>,
}

impl<'c> Prepared<'c> {
    /// Prepares the cluster for an engine.
    pub fn new(cluster: &'c Cluster, settings: EngineSettings) -> Self {
        let mut admin = Vec::new();
        let mut baseline = Vec::new();
        for &i in cluster.tiered_order() {
            let p = &cluster.tiered[i];
            if !p.is_valid_singleton() || settings.engine.enforces(p, &settings).is_err() {
                continue;
            }
            match p.tier {
                TierLevel::Admin => admin.push(i),
                TierLevel::Baseline => baseline.push(i),
            }
        }
        let mut by_ns = HashMap::new();
        if !(admin.is_empty() && baseline.is_empty()) {
            for ns in cluster.namespaces.values() {
                let keep = |list: &[usize]| -> Vec<usize> {
                    list.iter()
                        .copied()
                        .filter(|&i| cluster.tiered[i].subject.selects_namespace(&ns.labels))
                        .collect()
                };
                by_ns.insert(
                    ns.name.as_str(),
                    NsTiers {
                        admin: keep(&admin),
                        baseline: keep(&baseline),
                    },
                );
            }
        }
        let calico = (settings.engine == Engine::Calico).then(|| {
            let mut policies = cluster.calico.policies.clone();
            policies.extend(
                cluster
                    .policies
                    .iter()
                    .map(calico::CalicoPolicy::from_kubernetes),
            );
            policies.extend(admin.iter().chain(&baseline).filter_map(|&i| {
                calico::CalicoPolicy::from_cluster_network_policy(&cluster.tiered[i])
            }));
            let namespaces = cluster
                .namespaces
                .iter()
                .map(|(name, ns)| (name.clone(), ns.labels.clone()))
                .collect();
            calico::CalicoPolicies::build(
                policies,
                cluster.calico.tiers.clone(),
                cluster.calico.network_sets.clone(),
                namespaces,
            )
        });
        Prepared {
            cluster,
            settings,
            admin,
            baseline,
            by_ns,
            calico,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// The enforced cluster-scoped policies of a tier, in precedence order.
    pub fn tier_policies(&self, tier: TierLevel) -> &[usize] {
        match tier {
            TierLevel::Admin => &self.admin,
            TierLevel::Baseline => &self.baseline,
        }
    }

    /// The policies that apply to a source pod. A host-network pod is subject to none of
    /// the cluster-scoped kinds; its NetworkPolicies are still listed (the audit reports
    /// what they would say).
    pub fn select(&self, src: &Source<'_>) -> Selected {
        let cluster = self.cluster;
        let netpol = if self.settings.engine.enforces_network_policy() {
            cluster.selecting(src.namespace, src.labels)
        } else {
            Vec::new()
        };
        if src.host_network || (self.admin.is_empty() && self.baseline.is_empty()) {
            return Selected {
                netpol,
                ..Selected::default()
            };
        }
        let pick = |list: &[usize], in_ns: bool| -> Vec<usize> {
            list.iter()
                .copied()
                .filter(|&i| {
                    let s = &cluster.tiered[i].subject;
                    if in_ns {
                        s.pod_selector().is_none_or(|p| p.matches(src.labels))
                    } else {
                        s.selects(src.ns_labels, src.labels)
                    }
                })
                .collect()
        };
        match self.by_ns.get(src.namespace) {
            Some(t) => Selected {
                netpol,
                admin: pick(&t.admin, true),
                baseline: pick(&t.baseline, true),
            },
            // A namespace the cluster does not hold (a hypothetical pod): match it whole.
            None => Selected {
                netpol,
                admin: pick(&self.admin, false),
                baseline: pick(&self.baseline, false),
            },
        }
    }

    /// Decides a connection from a pod whose policies are `sel` ([`Prepared::select`]).
    pub fn decide(&self, sel: &Selected, src: &Source<'_>, dst: &Destination) -> EgressDecision {
        let cluster = self.cluster;
        let mut d = EgressDecision {
            allowed: true,
            tier: Tier::Default,
            object: None,
            rule: None,
            reason: Reason::Default,
            netpol: None,
            passed: Vec::new(),
            ties: Vec::new(),
            notes: Vec::new(),
        };
        if self.settings.engine == Engine::None {
            d.tier = Tier::None;
            d.reason = Reason::NoPolicyEngine;
            return d;
        }
        if src.host_network {
            d.tier = Tier::HostNetwork;
            d.reason = Reason::HostNetwork;
            return d;
        }
        if let Some(policies) = &self.calico {
            // Calico's tiers by order: ClusterNetworkPolicy in kube-admin (1,000) and
            // kube-baseline (10,000,000), NetworkPolicy in default (1,000,000) with
            // Calico's own policies.
            let c = calico_decide(policies, src, dst);
            d.allowed = c.allowed();
            if c.verdict != calico::CalicoVerdict::NotSelected
                && let Some(t) = &c.tier
            {
                d.tier = Tier::Calico(t.clone());
            }
            d.object = c
                .policy
                .as_ref()
                .or(c.selecting.first())
                .map(PolicyRef::calico);
            d.rule = c.rule.clone();
            d.reason = Reason::Calico(Box::new(c));
            return d;
        }
        if self.settings.engine == Engine::Cilium {
            return self.decide_cilium(d, sel, src, dst);
        }
        if self.tier(&mut d, &sel.admin, TierLevel::Admin, dst, true) {
            return d;
        }
        let np = netpol::decide_dst(cluster, &sel.netpol, dst, self.settings.netpol_options());
        let isolated = !matches!(np, netpol::Decision::NotIsolated { .. });
        if isolated {
            d.allowed = np.allowed();
            d.tier = Tier::NetworkPolicy;
            d.reason = Reason::NetworkPolicy;
            match &np {
                netpol::Decision::Allowed { by, .. } => {
                    let first = by[0];
                    d.object = Some(PolicyRef::network_policy(&cluster.policies[first.policy]));
                    d.rule = Some(format!("egress[{}]", first.rule));
                }
                netpol::Decision::Denied { isolating } => {
                    d.object = Some(PolicyRef::network_policy(&cluster.policies[isolating[0]]));
                }
                netpol::Decision::NotIsolated { .. } => {}
            }
            d.netpol = Some(np);
            return d;
        }
        d.netpol = Some(np);
        self.tier(&mut d, &sel.baseline, TierLevel::Baseline, dst, true);
        d
    }

    /// Cilium: the ClusterNetworkPolicy Admin tier (when enforced), then Cilium's
    /// policies and NetworkPolicy in one repository (a Cilium deny beats every allow),
    /// then the Baseline tier.
    ///
    /// Cilium implements ClusterNetworkPolicy by translating it into its own rules, a
    /// `networks` peer into CIDR selectors (and `domainNames` into FQDN selectors, whose
    /// addresses get CIDR identities); CIDR selectors never select an address Cilium
    /// gives the `host` identity. So a `networks` rule covers a link-local destination
    /// (169.254.169.254) only under the `world` classification, like a `toCIDR` rule
    /// ([`cilium::LinkLocalAs`]). This is read from Cilium's documented CIDR semantics
    /// ("CIDR rules never match Cilium-managed pods or nodes"), not from a sentence about
    /// ClusterNetworkPolicy itself (cilium/cilium PR 47227, "docs: Update NetworkPolicy
    /// and ClusterNetworkPolicy documentation", documents enabling it, not how `networks`
    /// meets `host` addresses): an assumption, documented in docs/engines.md. With
    /// `--cilium-link-local either` (the default) both classifications are evaluated
    /// when the tiers' answer depends on it, and the destination is reachable when
    /// either reaches it; the reason names the other classification's answer.
    fn decide_cilium(
        &self,
        d: EgressDecision,
        sel: &Selected,
        src: &Source<'_>,
        dst: &Destination,
    ) -> EgressDecision {
        use cilium::LinkLocalAs;
        let configured = self.settings.cilium_link_local;
        let link_local = match dst {
            Destination::External(t) if cilium::is_link_local(t.ip) => Some(t.ip),
            _ => None,
        };
        let Some(ip) = link_local else {
            return self.cilium_path(d, sel, src, dst, configured, true);
        };
        match configured {
            LinkLocalAs::World => self.cilium_path(d, sel, src, dst, LinkLocalAs::World, true),
            LinkLocalAs::Host => self.cilium_path(d, sel, src, dst, LinkLocalAs::Host, false),
            LinkLocalAs::Either => {
                let tiered = &self.cluster.tiered;
                let tiers = |address_peers: bool| {
                    (
                        decide_tier_with(tiered, &sel.admin, dst, address_peers),
                        decide_tier_with(tiered, &sel.baseline, dst, address_peers),
                    )
                };
                if tiers(true) == tiers(false) {
                    // The tiers do not depend on it: Cilium's own evaluation covers both.
                    return self.cilium_path(d, sel, src, dst, LinkLocalAs::Either, true);
                }
                let world = self.cilium_path(d.clone(), sel, src, dst, LinkLocalAs::World, true);
                let host = self.cilium_path(d, sel, src, dst, LinkLocalAs::Host, false);
                let (mut chosen, other, used, other_name) = if world.allowed || !host.allowed {
                    (world, host, "world", "host")
                } else {
                    (host, world, "host", "world")
                };
                let verb = if other.allowed { "allowed" } else { "denied" };
                chosen.notes.push(format!(
                    "this assumes Cilium classifies {ip} as `{used}` (--cilium-link-local); as `{other_name}` it is {verb}: {}",
                    explain(self.cluster, &other, Some(3)).reason
                ));
                chosen
            }
        }
    }

    /// [`Prepared::decide_cilium`] under one classification of a link-local destination;
    /// `address_peers`: whether `networks` / `domainNames` peers can match it.
    fn cilium_path(
        &self,
        mut d: EgressDecision,
        sel: &Selected,
        src: &Source<'_>,
        dst: &Destination,
        link_local: cilium::LinkLocalAs,
        address_peers: bool,
    ) -> EgressDecision {
        if self.tier(&mut d, &sel.admin, TierLevel::Admin, dst, address_peers) {
            return d;
        }
        let c = self.cilium(src, dst, link_local);
        let undecided = matches!(
            c.outcome,
            cilium::Outcome::NotIsolated | cilium::Outcome::DefaultAllow
        );
        if undecided
            && self.tier(
                &mut d,
                &sel.baseline,
                TierLevel::Baseline,
                dst,
                address_peers,
            )
        {
            return d;
        }
        d.allowed = c.allowed;
        if c.outcome != cilium::Outcome::NotIsolated {
            d.tier = Tier::Cilium;
            d.object = c.policy().map(PolicyRef::cilium);
            d.rule = c.rule.as_ref().map(|r| r.rule.clone());
        }
        d.reason = Reason::Cilium(Box::new(c));
        d
    }

    /// Cilium's decision: its policies for the source's namespace and that namespace's
    /// NetworkPolicies.
    fn cilium(
        &self,
        src: &Source<'_>,
        dst: &Destination,
        link_local: cilium::LinkLocalAs,
    ) -> cilium::CiliumDecision {
        let cluster = self.cluster;
        let netpols: Vec<&crate::model::NetworkPolicy> = cluster
            .policies_in(src.namespace)
            .iter()
            .map(|&i| &cluster.policies[i])
            .collect();
        let endpoint = cilium::CiliumEndpoint {
            namespace: src.namespace,
            labels: src.labels,
            namespace_labels: src.ns_labels,
            service_account: src.service_account,
        };
        let dest = match dst {
            Destination::External(t) => cilium::CiliumDest::External {
                ip: t.ip,
                port: t.port,
                protocol: t.protocol,
            },
            Destination::Pod {
                namespace,
                labels,
                ns_labels,
                port,
                protocol,
                named_ports,
                ..
            } => cilium::CiliumDest::Pod {
                endpoint: cilium::CiliumEndpoint {
                    namespace,
                    labels,
                    namespace_labels: ns_labels,
                    service_account: None,
                },
                port: *port,
                protocol: *protocol,
                named_ports,
            },
            Destination::Node {
                ip,
                port,
                protocol,
                labels,
            } => cilium::CiliumDest::Node {
                ip: *ip,
                port: *port,
                protocol: *protocol,
                labels,
                local: None,
            },
        };
        cilium::decide_with_netpol(
            &cluster.cilium,
            &netpols,
            &endpoint,
            &dest,
            &cilium::CiliumOptions {
                link_local,
                ..self.settings.cilium_options()
            },
        )
    }

    /// Applies one tier; true when it decided (Accept or Deny). `address_peers`: see
    /// [`crate::tiered::Peer::matches_with`].
    fn tier(
        &self,
        d: &mut EgressDecision,
        sel: &[usize],
        tier: TierLevel,
        dst: &Destination,
        address_peers: bool,
    ) -> bool {
        if sel.is_empty() {
            return false;
        }
        let tiered = &self.cluster.tiered;
        let TierDecision { outcome, ties } = decide_tier_with(tiered, sel, dst, address_peers);
        let hit = match outcome {
            TierOutcome::NoMatch => return false,
            TierOutcome::Accept(r) | TierOutcome::Deny(r) | TierOutcome::Pass(r) => r,
        };
        if !ties.is_empty() {
            d.ties.push(Tie {
                chosen: hit,
                others: ties,
            });
        }
        let action = tiered[hit.policy].egress[hit.rule].effective_action();
        if action == Action::Pass {
            d.passed.push(hit);
            return false;
        }
        d.allowed = action == Action::Accept;
        d.tier = tier.into();
        d.object = Some(PolicyRef::tiered(&tiered[hit.policy]));
        d.rule = Some(format!("egress[{}]", hit.rule));
        d.reason = Reason::Tiered(hit);
        true
    }
}

/// Calico's decision for a source pod (its service account defaults to `default`, as
/// Kubernetes defaults it) and a destination (a node is no Calico endpoint unless it has
/// a HostEndpoint, which is not read: only `nets` match its address).
fn calico_decide(
    policies: &calico::CalicoPolicies,
    src: &Source<'_>,
    dst: &Destination,
) -> calico::CalicoDecision {
    let endpoint = calico::CalicoEndpoint {
        namespace: src.namespace,
        labels: src.labels,
        namespace_labels: src.ns_labels,
        service_account: Some(src.service_account.unwrap_or("default")),
        ips: &[],
        named_ports: &[],
    };
    match dst {
        Destination::External(t) => {
            calico::decide(policies, &endpoint, &calico::CalicoDest::external(t))
        }
        Destination::Pod {
            namespace,
            labels,
            ns_labels,
            ip,
            port,
            protocol,
            named_ports,
        } => {
            let ports: Vec<calico::NamedPort> = named_ports
                .iter()
                .map(|(name, protocol, port)| calico::NamedPort {
                    name: name.clone(),
                    protocol: *protocol,
                    port: *port,
                })
                .collect();
            let pod = calico::CalicoEndpoint {
                namespace,
                labels,
                namespace_labels: ns_labels,
                service_account: None,
                ips: &[],
                named_ports: &ports,
            };
            let dest = calico::CalicoDest {
                ip: *ip,
                port: *port,
                protocol: *protocol,
                endpoint: calico::DestEndpoint::Workload(pod),
            };
            calico::decide(policies, &endpoint, &dest)
        }
        Destination::Node {
            ip, port, protocol, ..
        } => {
            let dest = calico::CalicoDest {
                ip: Some(*ip),
                port: *port,
                protocol: *protocol,
                endpoint: calico::DestEndpoint::None,
            };
            calico::decide(policies, &endpoint, &dest)
        }
    }
}

/// THE egress decision of an engine for one source pod and one destination. Callers
/// deciding many destinations for one pod, or many pods, use [`Prepared`] instead (the
/// same code, with the selection done once).
pub fn decide(
    cluster: &Cluster,
    engine: &EngineSettings,
    src: &Source<'_>,
    dst: &Destination,
) -> EgressDecision {
    let p = Prepared::new(cluster, *engine);
    p.decide(&p.select(src), src, dst)
}

/// `Kind/name#egress[i]` of a tiered rule, with the rule's name when it has one.
pub fn tiered_rule_name(cluster: &Cluster, r: TieredRuleRef) -> String {
    let p = &cluster.tiered[r.policy];
    format!("{}#egress[{}]", p.id(), r.rule)
}

fn tiered_rule_text(cluster: &Cluster, r: TieredRuleRef) -> String {
    let p = &cluster.tiered[r.policy];
    let rule = &p.egress[r.rule];
    let mut s = tiered_rule_name(cluster, r);
    if !rule.name.is_empty() {
        s.push_str(&format!(" \"{}\"", rule.name));
    }
    let tier = match p.tier {
        TierLevel::Admin => "Admin tier",
        TierLevel::Baseline => "Baseline tier",
    };
    match p.priority {
        Some(prio) => s.push_str(&format!(" ({tier}, priority {prio})")),
        None => s.push_str(&format!(" ({tier})")),
    }
    s
}

/// The explanation of a Calico or Cilium decision: its reason with the engine's notes,
/// the deciding (or selecting) policies up to `limit`, and the deciding rule.
fn engine_explanation<N: std::fmt::Display>(
    mut reason: String,
    notes: &[N],
    policies: Vec<String>,
    rules: Vec<String>,
    limit: Option<usize>,
) -> netpol::Explanation {
    for n in notes {
        reason.push_str(&format!("; {n}"));
    }
    netpol::Explanation {
        reason,
        policy_count: policies.len(),
        policies: policies
            .into_iter()
            .take(limit.unwrap_or(usize::MAX))
            .collect(),
        rule_count: rules.len(),
        rules,
    }
}

/// Explains a decision in words, with the deciding policies and rules (at most `limit`
/// of each kind named, all when `None`).
pub fn explain(cluster: &Cluster, d: &EgressDecision, limit: Option<usize>) -> netpol::Explanation {
    let mut e = match (&d.reason, &d.netpol) {
        (Reason::HostNetwork, _) => netpol::Explanation {
            reason: "hostNetwork: its traffic is the node's and no policy applies to it".into(),
            policies: vec![],
            policy_count: 0,
            rules: vec![],
            rule_count: 0,
        },
        (Reason::NoPolicyEngine, _) => netpol::Explanation {
            reason: "no policy engine enforces any policy".into(),
            policies: vec![],
            policy_count: 0,
            rules: vec![],
            rule_count: 0,
        },
        (Reason::Cilium(c), _) => {
            let policies: Vec<String> = match &c.rule {
                Some(r) => vec![r.policy.to_string()],
                None => c.isolating.iter().map(ToString::to_string).collect(),
            };
            let rules: Vec<String> = c.rule.iter().map(ToString::to_string).collect();
            engine_explanation(c.reason.clone(), &c.notes, policies, rules, limit)
        }
        (Reason::Calico(c), _) => {
            let policies: Vec<String> = match &c.policy {
                Some(p) => vec![p.to_string()],
                None => c.selecting.iter().map(ToString::to_string).collect(),
            };
            let rules: Vec<String> = match (&c.policy, &c.rule) {
                (Some(p), Some(r)) => vec![format!("{p}#{r}")],
                _ => vec![],
            };
            engine_explanation(c.reason(), &c.notes, policies, rules, limit)
        }
        (Reason::Tiered(r), np) => {
            let p = &cluster.tiered[r.policy];
            let verb = if d.allowed { "allowed" } else { "denied" };
            let mut reason = format!("{verb} by {}", tiered_rule_text(cluster, *r));
            if p.egress[r.rule].action != p.egress[r.rule].effective_action() {
                reason.push_str(
                    " (a Pass rule with a peer of unknown shape fails closed as a 'Deny all' rule)",
                );
            }
            if p.tier == TierLevel::Baseline
                && let Some(np) = np
            {
                reason.push_str(&format!(
                    "; NetworkPolicy: {}",
                    netpol::explain(cluster, np, limit).reason
                ));
            }
            netpol::Explanation {
                reason,
                policies: vec![p.id()],
                policy_count: 1,
                rules: vec![tiered_rule_name(cluster, *r)],
                rule_count: 1,
            }
        }
        (_, Some(np)) => {
            let mut e = netpol::explain(cluster, np, limit);
            if d.reason == Reason::Default && d.tier == Tier::Default && has_baseline(cluster) {
                e.reason.push_str("; no Baseline-tier rule matches");
            }
            e
        }
        (_, None) => netpol::Explanation {
            reason: "no policy decides it: all egress is allowed".into(),
            policies: vec![],
            policy_count: 0,
            rules: vec![],
            rule_count: 0,
        },
    };
    for n in &d.notes {
        e.reason.push_str(&format!("; {n}"));
    }
    if !d.passed.is_empty() {
        let names: Vec<String> = d
            .passed
            .iter()
            .map(|&r| tiered_rule_text(cluster, r))
            .collect();
        e.reason = format!("passed by {}; then {}", names.join(", "), e.reason);
    }
    e
}

fn has_baseline(cluster: &Cluster) -> bool {
    cluster.tiered.iter().any(|p| p.tier == TierLevel::Baseline)
}

#[cfg(test)]
mod cilium_tests {
    use super::*;
    use crate::target::IMDS;

    const INPUT: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: app}\n---\napiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: deny-imds}\nspec:\n  endpointSelector: {matchExpressions: [{key: app, operator: NotIn, values: [agent]}]}\n  enableDefaultDeny: {egress: false}\n  egressDeny:\n  - toCIDR: [169.254.169.254/32]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: open, namespace: app}\nspec:\n  podSelector: {}\n  egress: [{}]\n";

    fn decide_for(labels: &[(&str, &str)], link_local: cilium::LinkLocalAs) -> EgressDecision {
        let l = crate::manifest::parse("t.yaml", INPUT);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        let cluster = Cluster::build(l.objects);
        assert_eq!(Engine::detect(&cluster), Some(Engine::Cilium));
        let mut settings = EngineSettings::new(Engine::Cilium);
        settings.cilium_link_local = link_local;
        let labels: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let ns_labels = cluster.namespaces["app"].labels.clone();
        let src = Source {
            namespace: "app",
            labels: &labels,
            ns_labels: &ns_labels,
            service_account: None,
            host_network: false,
        };
        decide(&cluster, &settings, &src, &Destination::External(IMDS))
    }

    #[test]
    fn cilium_denies_beat_network_policy_allows() {
        let d = decide_for(&[("app", "web")], cilium::LinkLocalAs::World);
        assert!(!d.allowed);
        assert_eq!(d.tier, Tier::Cilium);
        assert_eq!(
            d.object.as_ref().map(ToString::to_string).as_deref(),
            Some("CiliumClusterwideNetworkPolicy/deny-imds")
        );
        assert_eq!(d.rule.as_deref(), Some("egressDeny[0]"));
        // The agent is not selected by the deny: the NetworkPolicy's allow decides.
        let agent = decide_for(&[("app", "agent")], cilium::LinkLocalAs::World);
        assert!(agent.allowed);
        assert_eq!(agent.rule.as_deref(), Some("egress[0]"));
        assert_eq!(
            agent.object.as_ref().map(|p| p.kind.as_str()),
            Some("NetworkPolicy")
        );
        // By default 169.254.169.254 may be `host`, which a CIDR deny does not cover.
        let either = decide_for(&[("app", "web")], cilium::LinkLocalAs::Either);
        assert!(either.allowed);
        let cluster = Cluster::default();
        let e = explain(&cluster, &either, None);
        assert!(e.reason.contains("as `world`: denied by"), "{}", e.reason);
    }
}

#[cfg(test)]
mod cilium_cnp_tests {
    //! ClusterNetworkPolicy under Cilium (`--cilium-cnp`): its `networks` peers become CIDR
    //! selectors, which never select an address Cilium gives the `host` identity, so
    //! they follow `--cilium-link-local` like Cilium's own CIDR rules (an assumption from
    //! <https://docs.cilium.io/en/latest/security/policy/language/>: "CIDR rules never
    //! match Cilium-managed pods or nodes"; see [`Prepared::decide_cilium`]).
    use super::*;
    use crate::target::IMDS;

    const INPUT: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: app}\n---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: deny-imds}\nspec:\n  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  egress: [{action: Deny, to: [{networks: [169.254.169.254/32, 203.0.113.0/24]}]}]\n";

    fn decide_as(link_local: cilium::LinkLocalAs, dst: Destination) -> EgressDecision {
        let l = crate::manifest::parse("t.yaml", INPUT);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        let cluster = Cluster::build(l.objects);
        let settings = EngineSettings {
            cilium_cluster_network_policy: true,
            cilium_link_local: link_local,
            ..EngineSettings::new(Engine::Cilium)
        };
        let labels = Labels::new();
        let ns_labels = cluster.namespaces["app"].labels.clone();
        let src = Source {
            namespace: "app",
            labels: &labels,
            ns_labels: &ns_labels,
            service_account: None,
            host_network: false,
        };
        let d = decide(&cluster, &settings, &src, &dst);
        // The reason is worded without panicking.
        let _ = explain(&cluster, &d, None);
        d
    }

    #[test]
    fn networks_peers_follow_the_link_local_classification() {
        use cilium::LinkLocalAs::*;
        // world: the CIDR selector covers it; the CNP denies.
        let d = decide_as(World, Destination::External(IMDS));
        assert_eq!((d.allowed, &d.tier), (false, &Tier::Admin));
        assert_eq!(d.rule.as_deref(), Some("egress[0]"));
        // host: no CIDR selector selects it; nothing else decides: allowed.
        let d = decide_as(Host, Destination::External(IMDS));
        assert!(d.allowed, "{d:?}");
        // either (the default): reachable when either reaches, and the reason says what
        // the other classification gives.
        let d = decide_as(Either, Destination::External(IMDS));
        assert!(d.allowed);
        let l = crate::manifest::parse("t.yaml", INPUT);
        let e = explain(&Cluster::build(l.objects), &d, None);
        assert!(
            e.reason
                .contains("this assumes Cilium classifies 169.254.169.254 as `host`")
                && e.reason.contains(
                    "as `world` it is denied: denied by ClusterNetworkPolicy/deny-imds#egress[0]"
                ),
            "{}",
            e.reason
        );
        // An address that is not link-local is `world` whatever the flag says.
        let d = decide_as(
            Host,
            Destination::External("203.0.113.9:80/TCP".parse().unwrap()),
        );
        assert_eq!((d.allowed, &d.tier), (false, &Tier::Admin));
    }
}

#[cfg(test)]
mod calico_tests {
    //! Calico composed with the Kubernetes kinds, as Calico converts them: NetworkPolicy
    //! into the `default` tier at order 1000 (`libcalico-go/lib/backend/k8s/conversion/
    //! conversion.go`: "We insert all the NetworkPolicy Policies at order 1000.0"),
    //! ClusterNetworkPolicy into `kube-admin` / `kube-baseline` with order = priority
    //! (`…/conversion/clusternetworkpolicy.go`), tiers by order
    //! (<https://docs.tigera.io/calico/latest/reference/resources/tier>: "Tiers are sorted
    //! by their order - smallest number first").
    use super::*;
    use crate::target::{IMDS, WIRESERVER};

    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: app}\n";
    const DENY_IMDS: &str = "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: security}\nspec: {order: 100}\n---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: security.deny-imds}\nspec:\n  tier: security\n  selector: app != 'agent'\n  egress:\n  - action: Deny\n    destination: {nets: [169.254.169.254/32]}\n  - action: Pass\n";
    const OPEN_NP: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: open, namespace: app}\nspec:\n  podSelector: {}\n  egress: [{}]\n";
    const ISOLATE_NP: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: dns-only, namespace: app}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: 53, protocol: UDP}]}]\n";
    const CNP_ALLOW_IMDS: &str = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: agent-imds}\nspec:\n  tier: Admin\n  priority: 10\n  subject:\n    pods:\n      namespaceSelector: {}\n      podSelector: {matchLabels: {app: agent}}\n  egress:\n  - action: Accept\n    to: [{networks: [169.254.169.254/32]}]\n";

    fn run(docs: &[&str], engine: Option<Engine>, app: &str, dst: Destination) -> EgressDecision {
        let text = docs.join("---\n");
        let l = crate::manifest::parse("t.yaml", &text);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        let cluster = Cluster::build(l.objects);
        let engine = engine.unwrap_or_else(|| Engine::detect(&cluster).unwrap_or(Engine::Generic));
        let labels: Labels = [("app".to_string(), app.to_string())].into();
        let ns_labels = cluster.namespaces["app"].labels.clone();
        let src = Source {
            namespace: "app",
            labels: &labels,
            ns_labels: &ns_labels,
            service_account: None,
            host_network: false,
        };
        decide(&cluster, &EngineSettings::new(engine), &src, &dst)
    }

    #[test]
    fn calico_kinds_are_detected_and_their_tiers_come_first() {
        let d = run(
            &[NS, DENY_IMDS, OPEN_NP],
            None,
            "web",
            Destination::External(IMDS),
        );
        assert!(!d.allowed);
        assert_eq!(d.tier, Tier::Calico("security".into()));
        assert_eq!(
            d.object.as_ref().map(ToString::to_string).as_deref(),
            Some("GlobalNetworkPolicy/security.deny-imds")
        );
        assert_eq!(d.rule.as_deref(), Some("egress[0]"));
        // Passed to the default tier, where the NetworkPolicy allows.
        let d = run(
            &[NS, DENY_IMDS, OPEN_NP],
            None,
            "web",
            Destination::External(WIRESERVER),
        );
        assert!(d.allowed);
        assert_eq!(d.tier, Tier::Calico("default".into()));
        assert_eq!(
            d.object.as_ref().map(ToString::to_string).as_deref(),
            Some("app/open")
        );
        assert_eq!(d.rule.as_deref(), Some("egress[0]"));
        let e = explain(&Cluster::default(), &d, None);
        assert_eq!(
            e.reason,
            "allowed by NetworkPolicy app/open#egress[0] in Calico tier default"
        );
        // The agent is not selected by the deny; the NetworkPolicy allows.
        let d = run(
            &[NS, DENY_IMDS, OPEN_NP],
            None,
            "agent",
            Destination::External(IMDS),
        );
        assert!(d.allowed);
    }

    #[test]
    fn network_policy_isolation_is_the_default_tiers_end_of_tier_drop() {
        let d = run(
            &[NS, ISOLATE_NP],
            Some(Engine::Calico),
            "web",
            Destination::External(IMDS),
        );
        assert!(!d.allowed);
        assert_eq!(d.tier, Tier::Calico("default".into()));
        assert_eq!(d.rule, None);
        assert_eq!(
            d.object.as_ref().map(ToString::to_string).as_deref(),
            Some("app/dns-only")
        );
        let e = explain(&Cluster::default(), &d, None);
        assert!(
            e.reason.starts_with(
                "denied at the end of Calico tier default: NetworkPolicy app/dns-only selects"
            ),
            "{}",
            e.reason
        );
        // No policy at all: not selected, allowed by the namespace profile.
        let d = run(
            &[NS],
            Some(Engine::Calico),
            "web",
            Destination::External(IMDS),
        );
        assert!(d.allowed);
        assert_eq!(d.tier, Tier::Default);
        assert!(
            matches!(&d.reason, Reason::Calico(c) if c.verdict == calico::CalicoVerdict::NotSelected)
        );
    }

    #[test]
    fn cluster_network_policy_goes_to_kube_admin() {
        // kube-admin (order 1,000) comes before default (1,000,000): the CNP's Accept
        // beats the NetworkPolicy's isolation.
        let d = run(
            &[NS, ISOLATE_NP, CNP_ALLOW_IMDS],
            Some(Engine::Calico),
            "agent",
            Destination::External(IMDS),
        );
        assert!(d.allowed);
        assert_eq!(d.tier, Tier::Calico("kube-admin".into()));
        assert_eq!(
            d.object.as_ref().map(ToString::to_string).as_deref(),
            Some("ClusterNetworkPolicy/agent-imds")
        );
        // A pod the CNP does not select: kube-admin does not apply, default drops.
        let d = run(
            &[NS, ISOLATE_NP, CNP_ALLOW_IMDS],
            Some(Engine::Calico),
            "web",
            Destination::External(IMDS),
        );
        assert!(!d.allowed);
        assert_eq!(d.tier, Tier::Calico("default".into()));
        // A Calico tier at order 100 comes before kube-admin.
        let d = run(
            &[NS, DENY_IMDS, CNP_ALLOW_IMDS],
            Some(Engine::Calico),
            "web2",
            Destination::External(IMDS),
        );
        assert!(!d.allowed);
        assert_eq!(d.tier, Tier::Calico("security".into()));
    }

    #[test]
    fn pods_and_nodes_as_destinations() {
        let pod = |port| Destination::Pod {
            namespace: "app".into(),
            labels: [("app".to_string(), "db".to_string())].into(),
            ns_labels: [("kubernetes.io/metadata.name".to_string(), "app".to_string())].into(),
            ip: Some("10.244.0.9".parse().unwrap()),
            port,
            protocol: Protocol::Tcp,
            named_ports: vec![("pg".into(), Protocol::Tcp, 5432)],
        };
        let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: to-db, namespace: app}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{podSelector: {matchLabels: {app: db}}}]\n    ports: [{port: pg}]\n";
        assert!(run(&[NS, np], Some(Engine::Calico), "web", pod(5432)).allowed);
        assert!(!run(&[NS, np], Some(Engine::Calico), "web", pod(5433)).allowed);
        let node = Destination::Node {
            ip: "10.0.0.4".parse().unwrap(),
            port: 10250,
            protocol: Protocol::Tcp,
            labels: Labels::new(),
        };
        assert!(!run(&[NS, np], Some(Engine::Calico), "web", node.clone()).allowed);
        let by_net = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: nodes, namespace: app}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/24}}]}]\n";
        // Calico matches ipBlocks against node (and pod) addresses.
        assert!(run(&[NS, by_net], Some(Engine::Calico), "web", node).allowed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse;

    fn cluster(text: &str) -> Cluster {
        let l = parse("t.yaml", text);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        Cluster::build(l.objects)
    }

    const ANP: &str = "---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: anp}\nspec:\n  priority: 150\n  subject: {namespaces: {}}\n  egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]\n";
    const BANP: &str = "---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {name: default}\nspec:\n  subject: {namespaces: {}}\n  egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]\n";
    const CNP: &str = "---\napiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {name: cnp}\nspec:\n  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]\n";

    /// Which engine enforces which kind (docs/audit.md's table, and the sources on
    /// [`Engine`]'s variants).
    #[test]
    fn enforcement_table() {
        let c = cluster(&format!("{ANP}{BANP}{CNP}"));
        let by_name = |n: &str| c.tiered.iter().find(|p| p.name == n).unwrap();
        let (anp, banp, cnp) = (by_name("anp"), by_name("default"), by_name("cnp"));
        let cilium_cnp = EngineSettings {
            cilium_cluster_network_policy: true,
            ..EngineSettings::new(Engine::Cilium)
        };
        // (engine settings, ANP priority 150, BANP, CNP)
        let table = [
            (EngineSettings::new(Engine::Generic), true, true, true),
            (EngineSettings::new(Engine::AzureNpm), false, false, false),
            (EngineSettings::new(Engine::Calico), false, false, true),
            (EngineSettings::new(Engine::Cilium), false, false, false),
            (cilium_cnp, false, false, true),
            (
                EngineSettings::new(Engine::KubeNetworkPolicies),
                false,
                false,
                true,
            ),
            // OVN-Kubernetes: AdminNetworkPolicy priorities 0-99 only.
            (
                EngineSettings::new(Engine::OvnKubernetes),
                false,
                true,
                false,
            ),
            (EngineSettings::new(Engine::None), false, false, false),
        ];
        for (s, a, b, n) in table {
            let got = (
                s.engine.enforces(anp, &s).is_ok(),
                s.engine.enforces(banp, &s).is_ok(),
                s.engine.enforces(cnp, &s).is_ok(),
            );
            assert_eq!(got, (a, b, n), "{s:?}");
        }
        for e in Engine::ALL {
            assert_eq!(Engine::from_name(e.name()), Some(e));
        }
        assert!(!Engine::None.enforces_network_policy());
    }

    /// The one composition on pod and node destinations: NetworkPolicy selector peers (a
    /// podSelector-only peer means the policy's own namespace) and named ports resolve on
    /// the pod; the Baseline tier applies to pods no NetworkPolicy isolates.
    #[test]
    fn decide_pod_and_node_destinations() {
        let c = cluster(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: a}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: b}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np, namespace: a}}\nspec:\n  podSelector: {{matchLabels: {{app: web}}}}\n  egress:\n  - to: [{{podSelector: {{matchLabels: {{app: db}}}}}}]\n    ports: [{{port: pg}}]\n{BANP}"
        ));
        let web = Labels::from([("app".to_string(), "web".to_string())]);
        let other = Labels::from([("app".to_string(), "x".to_string())]);
        let ns_a = c.namespaces["a"].labels.clone();
        let src = |labels| Source {
            namespace: "a",
            labels,
            ns_labels: &ns_a,
            service_account: None,
            host_network: false,
        };
        let db = |ns: &str, port: u16| Destination::Pod {
            namespace: ns.into(),
            labels: Labels::from([("app".to_string(), "db".to_string())]),
            ns_labels: c.namespaces[ns].labels.clone(),
            ip: Some("10.244.1.5".parse().unwrap()),
            port,
            protocol: Protocol::Tcp,
            named_ports: vec![("pg".into(), Protocol::Tcp, 5432)],
        };
        let s = EngineSettings::new(Engine::Generic);
        let d = decide(&c, &s, &src(&web), &db("a", 5432));
        assert!(d.allowed);
        assert_eq!(
            (d.tier, d.rule.as_deref()),
            (Tier::NetworkPolicy, Some("egress[0]"))
        );
        assert!(!decide(&c, &s, &src(&web), &db("a", 5433)).allowed);
        assert!(
            !decide(&c, &s, &src(&web), &db("b", 5432)).allowed,
            "own namespace only"
        );
        // Not isolated by NetworkPolicy: the Baseline tier's deny of 0.0.0.0/0 decides,
        // pod addresses included ("cluster-internal traffic will be checked against the
        // rule as well").
        let d = decide(&c, &s, &src(&other), &db("a", 5432));
        assert_eq!((d.allowed, d.tier), (false, Tier::Baseline));
        let node = Destination::Node {
            ip: "10.0.0.4".parse().unwrap(),
            port: 10250,
            protocol: Protocol::Tcp,
            labels: Labels::new(),
        };
        assert!(
            !decide(&c, &s, &src(&web), &node).allowed,
            "isolated, no rule"
        );
        // No engine: allowed, whatever the policies say.
        let d = decide(&c, &EngineSettings::new(Engine::None), &src(&web), &node);
        assert_eq!(
            (d.allowed, d.tier, d.object, d.rule, d.reason),
            (true, Tier::None, None, None, Reason::NoPolicyEngine)
        );
        // hostNetwork: no policy applies; nothing decided.
        let host = Source {
            host_network: true,
            ..src(&web)
        };
        let d = decide(&c, &s, &host, &node);
        assert_eq!(
            (d.allowed, d.tier, d.object, d.rule, d.reason),
            (true, Tier::HostNetwork, None, None, Reason::HostNetwork)
        );
    }
}
