//! Which policy engine enforces a cluster's policies, decided from what is known about
//! the cluster, and whether AKS's own IMDS restriction is on ([`decide`]).
//!
//! Precedence, first that says something wins:
//!
//! 1. `--engine` (the caller's `explicit` engine);
//! 2. the AKS cluster (`az aks show -o json`, read by [`AksCluster::from_json`]):
//!    `networkProfile.networkDataplane: cilium` (Azure CNI powered by Cilium) or
//!    `networkProfile.networkPolicy` `azure` (Azure NPM), `calico` or `cilium`.
//!    `networkPolicy` `none` or not set means AKS runs no engine: the engine is `none`
//!    unless the cluster itself shows one (a self-managed Calico or Cilium);
//!    `networkPlugin: none` (bring your own CNI) says nothing about the engine;
//! 3. the cluster's DaemonSets and CustomResourceDefinitions ([`ClusterSignals`]);
//! 4. the input's policy kinds ([`crate::engine::Engine::detect_candidates`]);
//! 5. nothing found: [`Engine::Generic`] (every kind, the reference semantics).
//!
//! Two engines at the deciding level (Calico and Cilium DaemonSets, say) is ambiguous:
//! the pick is deterministic (Calico, Cilium, Azure NPM, kube-network-policies, Antrea)
//! and [`EngineDecision::candidates`] lists them, so the audit reports `engine-ambiguous`.
//!
//! Sources for the AKS fields (Microsoft Learn, `@azure/arm-containerservice`):
//! `NetworkPolicy` — "none: Network policies will not be enforced. This is the default
//! value when NetworkPolicy is not specified", "azure: Use Azure network policies",
//! "calico", "cilium: … This requires networkDataplane to be 'cilium'"
//! (<https://learn.microsoft.com/javascript/api/@azure/arm-containerservice/knownnetworkpolicy>);
//! `NetworkDataplane` — "cilium: Use Cilium network dataplane. See Azure CNI Powered by
//! Cilium" (<https://learn.microsoft.com/javascript/api/@azure/arm-containerservice/knownnetworkdataplane>);
//! `PodLinkLocalAccess` (cluster `networkProfile.podLinkLocalAccess`, and per agent pool
//! `AgentPoolPodLinkLocalAccess`, preview) — "IMDS: Pods with hostNetwork=false can access
//! Azure Instance Metadata Service (IMDS) without restriction", "None: Pods with
//! hostNetwork=false cannot access Azure Instance Metadata Service (IMDS)", "If not
//! specified, the default is 'IMDS'"
//! (<https://learn.microsoft.com/dotnet/api/azure.resourcemanager.containerservice.models.podlinklocalaccess>,
//! `…agentpoolpodlinklocalaccess`). What the restriction does on a node (one rule
//! `-I FORWARD 1 ! -s <node's primary IP> -d 169.254.169.254/32 -p tcp --dport 80 -j DROP`,
//! Azure/AgentBaker `ensure_imds_restriction.sh`, PR 4300; hostNetwork pods and the node
//! keep access; WireServer is not part of it) and the add-ons it breaks
//! (<https://learn.microsoft.com/azure/aks/imds-restriction>, "Limitations"): see
//! `docs/engines.md` ("How the engine is decided") and the shared reference notes
//! `cloud-metadata.md` and `azure-imds.md` they were drawn from.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::engine::Engine;

/// What `az aks show -o json` says about a cluster's networking (the fields the audit
/// reads; everything else in the document is ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AksCluster {
    /// `name`.
    pub name: Option<String>,
    /// `resourceGroup`.
    pub resource_group: Option<String>,
    /// `networkProfile.networkPlugin`: `azure`, `kubenet`, `none` (bring your own CNI).
    pub network_plugin: Option<String>,
    /// `networkProfile.networkPolicy`: `none` (or not set), `azure`, `calico`, `cilium`.
    pub network_policy: Option<String>,
    /// `networkProfile.networkDataplane`: `azure` or `cilium`.
    pub network_dataplane: Option<String>,
    /// `networkProfile.podLinkLocalAccess`: `IMDS` (default) or `None` (the AKS IMDS
    /// restriction is on).
    pub pod_link_local_access: Option<String>,
    /// `agentPoolProfiles[]`, in file order.
    pub agent_pools: Vec<AgentPool>,
}

/// One `agentPoolProfiles[]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentPool {
    /// `name`.
    pub name: String,
    /// `osType`: `Linux` or `Windows`.
    pub os_type: Option<String>,
    /// `podLinkLocalAccess`, when the pool sets its own.
    pub pod_link_local_access: Option<String>,
}

/// Why an AKS cluster file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AksClusterError {
    /// Not JSON, or a field of the wrong type.
    #[error(
        "line {line}, column {column}: {message}; expected the JSON that `az aks show --name NAME --resource-group GROUP -o json` prints"
    )]
    Json {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What serde_json said, without its position.
        message: String,
    },
    /// A JSON list (e.g. `az aks list`), not one cluster.
    #[error(
        "a JSON list of {0} item(s), not one cluster (is this `az aks list`?): save one cluster with `az aks show --name NAME --resource-group GROUP -o json`"
    )]
    List(usize),
    /// JSON, but not an object.
    #[error(
        "expected a JSON object (one cluster), found {0}: save it with `az aks show --name NAME --resource-group GROUP -o json`"
    )]
    NotAnObject(&'static str),
    /// An object without `networkProfile`.
    #[error(
        "no `networkProfile` in the object (neither at the top, as `az aks show` prints it, nor under `properties`, as the ARM API returns it): is this an AKS cluster? Save it with `az aks show --name NAME --resource-group GROUP -o json`"
    )]
    NoNetworkProfile,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCluster {
    name: Option<String>,
    resource_group: Option<String>,
    network_profile: Option<RawNetworkProfile>,
    agent_pool_profiles: Option<Vec<RawPool>>,
    properties: Option<Box<RawCluster>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNetworkProfile {
    network_plugin: Option<String>,
    network_policy: Option<String>,
    network_dataplane: Option<String>,
    pod_link_local_access: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPool {
    name: Option<String>,
    os_type: Option<String>,
    pod_link_local_access: Option<String>,
}

fn json_error(e: &serde_json::Error) -> AksClusterError {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full).to_string();
    // serde_json counts a position before a line's first character (an empty file's
    // end) as column 0; the error says 1-based, so it names the first column.
    AksClusterError::Json {
        line: e.line().max(1),
        column: e.column().max(1),
        message,
    }
}

impl AksCluster {
    /// Reads the output of `az aks show -o json` (also the ARM form, with the
    /// properties under `properties`).
    pub fn from_json(text: &str) -> Result<AksCluster, AksClusterError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| json_error(&e))?;
        match &value {
            serde_json::Value::Object(_) => {}
            serde_json::Value::Array(items) => return Err(AksClusterError::List(items.len())),
            serde_json::Value::Null => return Err(AksClusterError::NotAnObject("null")),
            serde_json::Value::Bool(_) => return Err(AksClusterError::NotAnObject("a boolean")),
            serde_json::Value::Number(_) => return Err(AksClusterError::NotAnObject("a number")),
            serde_json::Value::String(_) => return Err(AksClusterError::NotAnObject("a string")),
        }
        // Typed a second time from the text, so that a field of the wrong type is
        // reported at its line and column.
        let raw: RawCluster = serde_json::from_str(text).map_err(|e| json_error(&e))?;
        let RawCluster {
            name,
            resource_group,
            network_profile,
            agent_pool_profiles,
            properties,
        } = raw;
        let (network_profile, agent_pool_profiles) = match (network_profile, properties) {
            (Some(n), _) => (n, agent_pool_profiles),
            (None, Some(p)) => match p.network_profile {
                Some(n) => (n, p.agent_pool_profiles.or(agent_pool_profiles)),
                None => return Err(AksClusterError::NoNetworkProfile),
            },
            (None, None) => return Err(AksClusterError::NoNetworkProfile),
        };
        let nonempty = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
        Ok(AksCluster {
            name: nonempty(name),
            resource_group: nonempty(resource_group),
            network_plugin: nonempty(network_profile.network_plugin),
            network_policy: nonempty(network_profile.network_policy),
            network_dataplane: nonempty(network_profile.network_dataplane),
            pod_link_local_access: nonempty(network_profile.pod_link_local_access),
            agent_pools: agent_pool_profiles
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(i, p)| AgentPool {
                    name: nonempty(p.name).unwrap_or_else(|| format!("agentPoolProfiles[{i}]")),
                    os_type: nonempty(p.os_type),
                    pod_link_local_access: nonempty(p.pod_link_local_access),
                })
                .collect(),
        })
    }

    /// `cluster NAME (resource group GROUP)`, or what is known of it.
    pub fn label(&self) -> String {
        match (&self.name, &self.resource_group) {
            (Some(n), Some(g)) => format!("AKS cluster {n} (resource group {g})"),
            (Some(n), None) => format!("AKS cluster {n}"),
            _ => "the AKS cluster".into(),
        }
    }

    /// What the network profile says about the policy engine.
    fn engine_hint(&self) -> AksEngine {
        let is =
            |v: &Option<String>, x: &str| v.as_deref().is_some_and(|v| v.eq_ignore_ascii_case(x));
        if is(&self.network_dataplane, "cilium") {
            return AksEngine::Engine(
                Engine::Cilium,
                "networkProfile.networkDataplane=cilium".into(),
            );
        }
        let field = |v: &str| format!("networkProfile.networkPolicy={v}");
        match self
            .network_policy
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("azure") => AksEngine::Engine(Engine::AzureNpm, field("azure")),
            Some("calico") => AksEngine::Engine(Engine::Calico, field("calico")),
            Some("cilium") => AksEngine::Engine(Engine::Cilium, field("cilium")),
            None | Some("none") if is(&self.network_plugin, "none") => AksEngine::ByoCni,
            Some("none") => AksEngine::NoEngine(field("none")),
            None => AksEngine::NoEngine("networkProfile.networkPolicy not set (none)".into()),
            Some(_) => AksEngine::Unknown(field(self.network_policy.as_deref().unwrap_or(""))),
        }
    }

    /// Whether the AKS IMDS restriction is on, cluster-wide or on some pools.
    ///
    /// A pool's own `podLinkLocalAccess` wins over the cluster's, which wins over the
    /// default (`IMDS`, no restriction). Windows pools never count as restricted: the
    /// restriction is a Linux iptables rule (AgentBaker) and the AKS page lists Windows
    /// node pools among its limitations.
    pub fn imds_restriction(&self) -> (ImdsRestriction, Vec<String>) {
        let none = |v: Option<&str>| v.is_some_and(|v| v.eq_ignore_ascii_case("none"));
        let mut warnings = Vec::new();
        for (field, v) in std::iter::once((
            "networkProfile.podLinkLocalAccess".to_string(),
            self.pod_link_local_access.as_deref(),
        ))
        .chain(self.agent_pools.iter().map(|p| {
            (
                format!("agentPoolProfiles[{}].podLinkLocalAccess", p.name),
                p.pod_link_local_access.as_deref(),
            )
        })) {
            if let Some(v) = v
                && !v.eq_ignore_ascii_case("imds")
                && !v.eq_ignore_ascii_case("none")
            {
                warnings.push(format!(
                    "{field}={v} is neither IMDS nor None: read as IMDS (no restriction)"
                ));
            }
        }
        let cluster_on = none(self.pod_link_local_access.as_deref());
        if self.agent_pools.is_empty() {
            let r = if cluster_on {
                ImdsRestriction::On { pools: Vec::new() }
            } else {
                ImdsRestriction::Off
            };
            return (r, warnings);
        }
        let (mut restricted, mut open) = (Vec::new(), Vec::new());
        for p in &self.agent_pools {
            let on = match p.pod_link_local_access.as_deref() {
                Some(v) => none(Some(v)),
                None => cluster_on,
            };
            let windows = p
                .os_type
                .as_deref()
                .is_some_and(|o| o.eq_ignore_ascii_case("windows"));
            if on && windows {
                warnings.push(format!(
                    "agent pool {} is a Windows pool: the AKS IMDS restriction does not apply to Windows nodes, so its pods keep access to 169.254.169.254:80/TCP",
                    p.name
                ));
                open.push(p.name.clone());
            } else if on {
                restricted.push(p.name.clone());
            } else {
                open.push(p.name.clone());
            }
        }
        let r = match (restricted.is_empty(), open.is_empty()) {
            (true, _) => ImdsRestriction::Off,
            (false, true) => ImdsRestriction::On { pools: restricted },
            (false, false) => {
                warnings.push(format!(
                    "the AKS IMDS restriction is on for agent pool(s) {} only, not for {}: the audit does not know on which pool each pod runs, so no verdict counts it (pin the workloads with a nodeSelector on kubernetes.azure.com/agentpool, or set podLinkLocalAccess=None on every pool)",
                    restricted.join(", "),
                    open.join(", ")
                ));
                ImdsRestriction::Partial { restricted, open }
            }
        };
        (r, warnings)
    }
}

/// What an AKS network profile says about the engine.
enum AksEngine {
    /// An engine, and the field that says so (`networkProfile.networkPolicy=calico`).
    Engine(Engine, String),
    /// AKS runs no engine (the field that says so).
    NoEngine(String),
    /// `networkPlugin: none`: the user's CNI, of which AKS knows nothing.
    ByoCni,
    /// A `networkPolicy` value this reader does not know.
    Unknown(String),
}

/// Whether AKS's IMDS restriction keeps pods off IMDS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum ImdsRestriction {
    /// No AKS cluster file: not known (verdicts ignore it).
    #[default]
    Unknown,
    /// Off: pods reach IMDS as far as policies let them.
    Off,
    /// On for every pool (listed; empty when the file lists none): pods that are not
    /// hostNetwork cannot reach 169.254.169.254:80/TCP.
    On {
        /// The restricted pools.
        pools: Vec<String>,
    },
    /// On for some pools only: where a pod runs is not known, so verdicts ignore it.
    Partial {
        /// Pools with the restriction.
        restricted: Vec<String>,
        /// Pools without it.
        open: Vec<String>,
    },
}

impl ImdsRestriction {
    /// Whether every pod off the host network is kept from IMDS.
    pub fn blocks_pods(&self) -> bool {
        matches!(self, ImdsRestriction::On { .. })
    }
}

impl fmt::Display for ImdsRestriction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImdsRestriction::Unknown => f.write_str("unknown"),
            ImdsRestriction::Off => f.write_str("off"),
            ImdsRestriction::On { pools } if pools.is_empty() => f.write_str("on"),
            ImdsRestriction::On { pools } => write!(f, "on (pools {})", pools.join(", ")),
            ImdsRestriction::Partial { restricted, open } => write!(
                f,
                "partial (on for {}, off for {})",
                restricted.join(", "),
                open.join(", ")
            ),
        }
    }
}

/// What is known about the cluster besides its objects: its DaemonSets and CRDs (read
/// from a live cluster) and its AKS description (`--aks-cluster`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterSignals {
    /// DaemonSets, as (namespace, name).
    pub daemonsets: Vec<(String, String)>,
    /// CustomResourceDefinition names, e.g. `tiers.crd.projectcalico.org` (a live read
    /// gives every resource served outside the core group, built-in ones included).
    pub crds: Vec<String>,
    /// The AKS cluster, when described.
    pub aks: Option<AksCluster>,
}

impl ClusterSignals {
    /// Whether the signals come from a live read of the cluster: it always yields the
    /// served resources outside the core group (`deployments.apps`, ...) in `crds`; files
    /// yield no DaemonSet or CRD signal at all.
    pub fn from_cluster(&self) -> bool {
        !self.daemonsets.is_empty() || !self.crds.is_empty()
    }
}

/// Where the engine came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecisionSource {
    /// `--engine` (or `--no-policy-engine`).
    Flag,
    /// The AKS cluster file.
    AksCluster,
    /// The cluster's DaemonSets and CRDs.
    Cluster,
    /// The input's policy kinds.
    InputKinds,
    /// Nothing: the generic engine.
    Default,
}

/// The engine, how it was decided, and the AKS IMDS restriction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EngineDecision {
    /// The engine.
    pub engine: Engine,
    /// How, in one sentence: `from --engine`, `from the AKS cluster file:
    /// networkProfile.networkPolicy=calico`, `from the cluster: DaemonSet
    /// kube-system/azure-npm`, ...
    pub how: String,
    /// Where it came from.
    pub source: DecisionSource,
    /// The AKS IMDS restriction.
    pub imds_restriction: ImdsRestriction,
    /// Engine names whose signals were found at the deciding level when there were
    /// several (ambiguous: the first was picked); empty otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<String>,
    /// What the reader should know (signals that disagree, Antrea's kinds, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// An engine a cluster signal points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Found {
    Calico,
    Cilium,
    AzureNpm,
    KubeNetworkPolicies,
    Antrea,
}

impl Found {
    fn name(self) -> &'static str {
        match self {
            Found::Calico => "calico",
            Found::Cilium => "cilium",
            Found::AzureNpm => "azure-npm",
            Found::KubeNetworkPolicies => "kube-network-policies",
            Found::Antrea => "antrea",
        }
    }

    /// The engine whose semantics evaluate it: Antrea has none of its own here.
    fn engine(self) -> Engine {
        match self {
            Found::Calico => Engine::Calico,
            Found::Cilium => Engine::Cilium,
            Found::AzureNpm => Engine::AzureNpm,
            Found::KubeNetworkPolicies => Engine::KubeNetworkPolicies,
            Found::Antrea => Engine::Generic,
        }
    }
}

/// The engine a DaemonSet is the agent of. Names and namespaces as the engines install
/// them: AKS's Azure NPM (`kube-system/azure-npm`, `azure-npm-win`), Calico
/// (`calico-node` in `kube-system` by manifest, `calico-system` by the Tigera operator,
/// which runs in `tigera-operator`), Cilium (`kube-system/cilium`, also AKS's Azure CNI
/// powered by Cilium), kube-network-policies (`kube-system`) and Antrea
/// (`kube-system/antrea-agent`). A DaemonSet of the same name elsewhere is not taken as
/// a signal.
fn daemonset_engine(namespace: &str, name: &str) -> Option<Found> {
    match (namespace, name) {
        ("kube-system", "azure-npm" | "azure-npm-win") => Some(Found::AzureNpm),
        ("kube-system" | "calico-system", "calico-node") => Some(Found::Calico),
        ("tigera-operator", "tigera-operator") => Some(Found::Calico),
        ("kube-system", "cilium") => Some(Found::Cilium),
        ("kube-system", "kube-network-policies") => Some(Found::KubeNetworkPolicies),
        ("kube-system", "antrea-agent") => Some(Found::Antrea),
        _ => None,
    }
}

/// The engine a CRD belongs to, by its API group (the name after the first dot).
fn crd_engine(name: &str) -> Option<Found> {
    let (_, group) = name.split_once('.')?;
    match group.to_ascii_lowercase().as_str() {
        "crd.projectcalico.org" | "projectcalico.org" | "operator.tigera.io" => Some(Found::Calico),
        "cilium.io" => Some(Found::Cilium),
        "crd.antrea.io" => Some(Found::Antrea),
        _ => None,
    }
}

/// The engines the cluster's signals point at, in preference order, each with its
/// evidence (`DaemonSet kube-system/cilium`, `CRD tiers.crd.projectcalico.org`).
fn cluster_engines(signals: &ClusterSignals) -> Vec<(Found, Vec<String>)> {
    let mut found: Vec<(Found, Vec<String>)> = Vec::new();
    let mut add = |f: Found, evidence: String| match found.iter_mut().find(|(g, _)| *g == f) {
        Some((_, ev)) => ev.push(evidence),
        None => found.push((f, vec![evidence])),
    };
    for (ns, name) in &signals.daemonsets {
        if let Some(f) = daemonset_engine(ns, name) {
            add(f, format!("DaemonSet {ns}/{name}"));
        }
    }
    for crd in &signals.crds {
        if let Some(f) = crd_engine(crd) {
            add(f, format!("CRD {crd}"));
        }
    }
    found.sort_by_key(|(f, _)| *f);
    found
}

/// At most three pieces of evidence, then a count.
fn evidence(ev: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut s = ev
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if ev.len() > SHOWN {
        s.push_str(&format!(" and {} more", ev.len() - SHOWN));
    }
    s
}

const ANTREA_WARNING: &str = "Antrea runs in the cluster: imdsguard has no Antrea engine, so NetworkPolicy and AdminNetworkPolicy/BaselineAdminNetworkPolicy are evaluated with the network-policy-api reference semantics (generic), and Antrea's own policy kinds (crd.antrea.io ClusterNetworkPolicy, NetworkPolicy) are not read: a deny written in them is not counted";

/// Decides the engine: `explicit` (`--engine`) first, then the AKS cluster, the
/// cluster's DaemonSets and CRDs, the input's kinds (`input_kinds`, in
/// [`Engine::detect_candidates`]'s order), and the generic engine. See the module
/// documentation.
pub fn decide(
    explicit: Option<Engine>,
    signals: &ClusterSignals,
    input_kinds: &[Engine],
) -> EngineDecision {
    let (imds_restriction, mut warnings) = match &signals.aks {
        Some(a) => a.imds_restriction(),
        None => (ImdsRestriction::Unknown, Vec::new()),
    };
    let aks = signals.aks.as_ref().map(AksCluster::engine_hint);
    let cluster = cluster_engines(signals);
    let decision = |engine, how: String, source, candidates, warnings| EngineDecision {
        engine,
        how,
        source,
        imds_restriction: imds_restriction.clone(),
        candidates,
        warnings,
    };

    // 1. --engine.
    if let Some(e) = explicit {
        if let Some(AksEngine::Engine(a, field)) = &aks
            && *a != e
        {
            warnings.push(format!(
                "the AKS cluster file says {a} ({field}); --engine {e} overrides it"
            ));
        }
        if let Some(AksEngine::NoEngine(field)) = &aks
            && e != Engine::None
            && cluster.is_empty()
        {
            warnings.push(format!(
                "the AKS cluster file says AKS runs no policy engine ({field}) and none was found in the cluster; --engine {e} overrides it"
            ));
        }
        let others: Vec<String> = cluster
            .iter()
            .filter(|(f, _)| f.engine() != e)
            .map(|(f, ev)| format!("{} ({})", f.name(), evidence(ev)))
            .collect();
        if !others.is_empty() {
            warnings.push(format!(
                "the cluster shows {}; --engine {e} overrides it",
                others.join(", ")
            ));
        }
        return decision(
            e,
            "from --engine".into(),
            DecisionSource::Flag,
            vec![],
            warnings,
        );
    }

    // 2. The AKS cluster file.
    let mut aks_none = None;
    match aks {
        Some(AksEngine::Engine(e, field)) => {
            let others: Vec<String> = cluster
                .iter()
                .filter(|(f, _)| f.engine() != e)
                .map(|(f, ev)| format!("{} ({})", f.name(), evidence(ev)))
                .collect();
            if !others.is_empty() {
                warnings.push(format!(
                    "the cluster also shows {}; the AKS cluster file decides ({field}): name the engine with --engine if it is wrong",
                    others.join(", ")
                ));
            }
            return decision(
                e,
                format!("from the AKS cluster file: {field}"),
                DecisionSource::AksCluster,
                vec![],
                warnings,
            );
        }
        Some(AksEngine::NoEngine(field)) => aks_none = Some(field),
        Some(AksEngine::ByoCni) => warnings.push(
            "the AKS cluster file says networkProfile.networkPlugin=none (bring your own CNI): it does not say which engine runs".into(),
        ),
        Some(AksEngine::Unknown(field)) => warnings.push(format!(
            "the AKS cluster file says {field}, a value this version does not know: the engine is decided from the other signals"
        )),
        None => {}
    }

    // 3. The cluster's DaemonSets and CRDs.
    if let Some((first, ev)) = cluster.first() {
        let candidates: Vec<String> = if cluster.len() > 1 {
            cluster.iter().map(|(f, _)| f.name().to_string()).collect()
        } else {
            Vec::new()
        };
        let mut how = format!("from the cluster: {}", evidence(ev));
        if *first == Found::Antrea {
            how.push_str(" (Antrea, evaluated as generic)");
            warnings.push(ANTREA_WARNING.into());
        }
        if !candidates.is_empty() {
            let others: Vec<String> = cluster[1..]
                .iter()
                .map(|(f, ev)| format!("{}: {}", f.name(), evidence(ev)))
                .collect();
            how.push_str(&format!(
                "; ambiguous, the cluster also shows {}",
                others.join("; ")
            ));
            if cluster[1..].iter().any(|(f, _)| *f == Found::Antrea) {
                warnings.push(ANTREA_WARNING.into());
            }
        }
        if let Some(field) = &aks_none {
            how.push_str(&format!(
                " (the AKS cluster file says {field}: no AKS-managed engine)"
            ));
        }
        return decision(
            first.engine(),
            how,
            DecisionSource::Cluster,
            candidates,
            warnings,
        );
    }
    if let Some(field) = aks_none {
        if let Some(k) = input_kinds.first() {
            warnings.push(format!(
                "the input holds {k} policy kinds, but AKS runs no policy engine and none was found in the cluster: they are reported not enforced (if you installed {k} yourself, say so with --engine {k})"
            ));
        }
        return decision(
            Engine::None,
            format!(
                "from the AKS cluster file: {field}, so no engine enforces NetworkPolicy (policies are stored but not enforced)"
            ),
            DecisionSource::AksCluster,
            vec![],
            warnings,
        );
    }

    // 4. The input's kinds.
    if let Some(first) = input_kinds.first() {
        let kinds = |e: &Engine| match e {
            Engine::Calico => "Calico policies, projectcalico.org".to_string(),
            Engine::Cilium => "Cilium policies, cilium.io".to_string(),
            e => format!("{e} policies"),
        };
        let how = if input_kinds.len() > 1 {
            format!(
                "from the input's kinds ({}); ambiguous, it also holds {}",
                kinds(first),
                input_kinds[1..]
                    .iter()
                    .map(kinds)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            format!("from the input's kinds ({})", kinds(first))
        };
        let candidates = if input_kinds.len() > 1 {
            input_kinds.iter().map(|e| e.name().to_string()).collect()
        } else {
            Vec::new()
        };
        return decision(
            *first,
            how,
            DecisionSource::InputKinds,
            candidates,
            warnings,
        );
    }

    // 5. Nothing.
    if signals.from_cluster() {
        // A live read listed the cluster and found no engine: the generic engine counts
        // every NetworkPolicy as enforced, which nothing may do.
        let way_out = if signals.aks.is_some() {
            "name the engine with --engine (--engine none if nothing enforces them)"
        } else {
            "pass --aks-cluster FILE (`az aks show -o json`) or --engine (--engine none if nothing enforces them)"
        };
        warnings.push(format!(
            "no policy engine DaemonSet or CRD found in the cluster: NetworkPolicies may not be enforced at all (e.g. an AKS cluster created without --network-policy), yet the audit evaluates them as enforced (generic) and may report IMDS blocked when nothing blocks it; {way_out}"
        ));
    }
    let consulted = match (
        &signals.aks,
        signals.daemonsets.is_empty() && signals.crds.is_empty(),
    ) {
        (Some(_), _) => {
            "no --engine, no engine in the AKS cluster file or the cluster, no Calico or Cilium kinds in the input"
        }
        (None, false) => {
            "no --engine, no engine's DaemonSet or CRD in the cluster, no Calico or Cilium kinds in the input"
        }
        (None, true) => "no --engine, no --aks-cluster, no Calico or Cilium kinds in the input",
    };
    decision(
        Engine::Generic,
        format!(
            "no engine found ({consulted}): every policy kind is evaluated with the network-policy-api reference semantics"
        ),
        DecisionSource::Default,
        vec![],
        warnings,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aks(network_profile: &str, pools: &str) -> String {
        format!(
            r#"{{"name": "seed", "resourceGroup": "rg", "networkProfile": {network_profile}, "agentPoolProfiles": [{pools}]}}"#
        )
    }

    fn parse(text: &str) -> AksCluster {
        AksCluster::from_json(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn with_aks(text: &str) -> ClusterSignals {
        ClusterSignals {
            aks: Some(parse(text)),
            ..ClusterSignals::default()
        }
    }

    fn ds(pairs: &[(&str, &str)]) -> ClusterSignals {
        ClusterSignals {
            daemonsets: pairs
                .iter()
                .map(|(n, d)| (n.to_string(), d.to_string()))
                .collect(),
            ..ClusterSignals::default()
        }
    }

    const LINUX_POOL: &str = r#"{"name": "nodepool1", "osType": "Linux", "mode": "System"}"#;

    /// Each documented AKS value, as `az aks show -o json` prints it, and the engine and
    /// sentence it gives. Values: `KnownNetworkPolicy` ("none … is the default value when
    /// NetworkPolicy is not specified"; azure; calico; "cilium … requires
    /// networkDataplane to be 'cilium'"), `KnownNetworkDataplane` (azure, cilium), and
    /// `networkPlugin` `none` (bring your own CNI).
    #[test]
    fn aks_network_profile_table() {
        let cases: &[(&str, &str, Engine, &str, DecisionSource)] = &[
            (
                "the seed's az aks create: --network-plugin azure, no --network-policy (null)",
                r#"{"networkPlugin": "azure", "networkPolicy": null, "networkDataplane": "azure"}"#,
                Engine::None,
                "from the AKS cluster file: networkProfile.networkPolicy not set (none), so no engine enforces NetworkPolicy (policies are stored but not enforced)",
                DecisionSource::AksCluster,
            ),
            (
                "networkPolicy none",
                r#"{"networkPlugin": "azure", "networkPolicy": "none"}"#,
                Engine::None,
                "from the AKS cluster file: networkProfile.networkPolicy=none, so no engine enforces NetworkPolicy (policies are stored but not enforced)",
                DecisionSource::AksCluster,
            ),
            (
                "kubenet, field absent",
                r#"{"networkPlugin": "kubenet"}"#,
                Engine::None,
                "from the AKS cluster file: networkProfile.networkPolicy not set (none), so no engine enforces NetworkPolicy (policies are stored but not enforced)",
                DecisionSource::AksCluster,
            ),
            (
                "azure: Azure NPM",
                r#"{"networkPlugin": "azure", "networkPolicy": "azure", "networkDataplane": "azure"}"#,
                Engine::AzureNpm,
                "from the AKS cluster file: networkProfile.networkPolicy=azure",
                DecisionSource::AksCluster,
            ),
            (
                "calico",
                r#"{"networkPlugin": "azure", "networkPolicy": "calico"}"#,
                Engine::Calico,
                "from the AKS cluster file: networkProfile.networkPolicy=calico",
                DecisionSource::AksCluster,
            ),
            (
                "Azure CNI powered by Cilium",
                r#"{"networkPlugin": "azure", "networkPluginMode": "overlay", "networkPolicy": "cilium", "networkDataplane": "cilium"}"#,
                Engine::Cilium,
                "from the AKS cluster file: networkProfile.networkDataplane=cilium",
                DecisionSource::AksCluster,
            ),
            (
                "networkPolicy cilium alone",
                r#"{"networkPlugin": "azure", "networkPolicy": "cilium"}"#,
                Engine::Cilium,
                "from the AKS cluster file: networkProfile.networkPolicy=cilium",
                DecisionSource::AksCluster,
            ),
            (
                "values compare ignoring case",
                r#"{"networkPlugin": "azure", "networkPolicy": "Calico"}"#,
                Engine::Calico,
                "from the AKS cluster file: networkProfile.networkPolicy=calico",
                DecisionSource::AksCluster,
            ),
            (
                "bring your own CNI: AKS says nothing",
                r#"{"networkPlugin": "none", "networkPolicy": null}"#,
                Engine::Generic,
                "no engine found (no --engine, no engine in the AKS cluster file or the cluster, no Calico or Cilium kinds in the input): every policy kind is evaluated with the network-policy-api reference semantics",
                DecisionSource::Default,
            ),
        ];
        for (what, profile, engine, how, source) in cases {
            let d = decide(None, &with_aks(&aks(profile, LINUX_POOL)), &[]);
            assert_eq!(
                (d.engine, d.how.as_str(), d.source),
                (*engine, *how, *source),
                "{what}"
            );
            assert_eq!(d.imds_restriction, ImdsRestriction::Off, "{what}");
        }
    }

    /// `podLinkLocalAccess`: "IMDS" (default) or "None" ("Pods with hostNetwork=false
    /// cannot access … IMDS"), on the cluster and per agent pool; Windows pools are
    /// never restricted.
    #[test]
    fn pod_link_local_access_table() {
        let pool = |name: &str, os: &str, access: Option<&str>| match access {
            Some(a) => {
                format!(r#"{{"name": "{name}", "osType": "{os}", "podLinkLocalAccess": "{a}"}}"#)
            }
            None => format!(r#"{{"name": "{name}", "osType": "{os}"}}"#),
        };
        let cases: Vec<(&str, Option<&str>, Vec<String>, ImdsRestriction)> = vec![
            (
                "not set",
                None,
                vec![pool("p1", "Linux", None)],
                ImdsRestriction::Off,
            ),
            (
                "IMDS",
                Some("IMDS"),
                vec![pool("p1", "Linux", None)],
                ImdsRestriction::Off,
            ),
            (
                "None on the cluster",
                Some("None"),
                vec![pool("p1", "Linux", None), pool("p2", "Linux", None)],
                ImdsRestriction::On {
                    pools: vec!["p1".into(), "p2".into()],
                },
            ),
            (
                "None, no pools in the file",
                Some("None"),
                vec![],
                ImdsRestriction::On { pools: vec![] },
            ),
            (
                "None on every pool, cluster not set",
                None,
                vec![pool("p1", "Linux", Some("None"))],
                ImdsRestriction::On {
                    pools: vec!["p1".into()],
                },
            ),
            (
                "a pool opts out",
                Some("None"),
                vec![pool("p1", "Linux", None), pool("p2", "Linux", Some("IMDS"))],
                ImdsRestriction::Partial {
                    restricted: vec!["p1".into()],
                    open: vec!["p2".into()],
                },
            ),
            (
                "a Windows pool keeps access",
                Some("None"),
                vec![pool("p1", "Linux", None), pool("win", "Windows", None)],
                ImdsRestriction::Partial {
                    restricted: vec!["p1".into()],
                    open: vec!["win".into()],
                },
            ),
        ];
        for (what, cluster, pools, want) in cases {
            let access = cluster
                .map(|a| format!(r#", "podLinkLocalAccess": "{a}""#))
                .unwrap_or_default();
            let text = aks(
                &format!(r#"{{"networkPlugin": "azure"{access}}}"#),
                &pools.join(", "),
            );
            let text = if pools.is_empty() {
                text.replace(r#", "agentPoolProfiles": []"#, "")
            } else {
                text
            };
            let d = decide(None, &with_aks(&text), &[]);
            assert_eq!(d.imds_restriction, want, "{what}");
            assert_eq!(
                d.imds_restriction.blocks_pods(),
                matches!(want, ImdsRestriction::On { .. }),
                "{what}"
            );
            if matches!(want, ImdsRestriction::Partial { .. }) {
                assert!(
                    d.warnings
                        .iter()
                        .any(|w| w.contains("does not know on which pool")),
                    "{what}: {:?}",
                    d.warnings
                );
            }
        }
    }

    /// DaemonSets (namespace, name), CRDs, the engine, the sentence.
    type SignalCase = (
        &'static [(&'static str, &'static str)],
        &'static [&'static str],
        Engine,
        &'static str,
    );

    /// The cluster's DaemonSets and CRDs, as the engines install them.
    #[test]
    fn cluster_signal_table() {
        let cases: &[SignalCase] = &[
            (
                &[("kube-system", "azure-npm")],
                &[],
                Engine::AzureNpm,
                "from the cluster: DaemonSet kube-system/azure-npm",
            ),
            (
                &[("kube-system", "azure-npm-win")],
                &[],
                Engine::AzureNpm,
                "from the cluster: DaemonSet kube-system/azure-npm-win",
            ),
            (
                &[("calico-system", "calico-node")],
                &["tiers.crd.projectcalico.org"],
                Engine::Calico,
                "from the cluster: DaemonSet calico-system/calico-node, CRD tiers.crd.projectcalico.org",
            ),
            (
                &[("kube-system", "calico-node")],
                &[],
                Engine::Calico,
                "from the cluster: DaemonSet kube-system/calico-node",
            ),
            (
                &[],
                &["installations.operator.tigera.io"],
                Engine::Calico,
                "from the cluster: CRD installations.operator.tigera.io",
            ),
            (
                &[("kube-system", "cilium")],
                &["ciliumnetworkpolicies.cilium.io"],
                Engine::Cilium,
                "from the cluster: DaemonSet kube-system/cilium, CRD ciliumnetworkpolicies.cilium.io",
            ),
            (
                &[("kube-system", "kube-network-policies")],
                &[],
                Engine::KubeNetworkPolicies,
                "from the cluster: DaemonSet kube-system/kube-network-policies",
            ),
            (
                &[("kube-system", "antrea-agent")],
                &[],
                Engine::Generic,
                "from the cluster: DaemonSet kube-system/antrea-agent (Antrea, evaluated as generic)",
            ),
        ];
        for (daemonsets, crds, engine, how) in cases {
            let mut s = ds(daemonsets);
            s.crds = crds.iter().map(|c| c.to_string()).collect();
            let d = decide(None, &s, &[]);
            assert_eq!((d.engine, d.how.as_str()), (*engine, *how));
            assert_eq!(d.source, DecisionSource::Cluster);
            assert!(d.candidates.is_empty(), "{how}");
            assert_eq!(d.imds_restriction, ImdsRestriction::Unknown);
        }
        // Antrea says which kinds are left out.
        let d = decide(None, &ds(&[("kube-system", "antrea-agent")]), &[]);
        assert!(d.warnings.iter().any(|w| w.contains("crd.antrea.io")));
        // Same names elsewhere, and unrelated ones, are no signal.
        let d = decide(
            None,
            &ds(&[("team-a", "cilium"), ("kube-system", "kube-proxy")]),
            &[],
        );
        assert_eq!(
            (d.engine, d.source),
            (Engine::Generic, DecisionSource::Default)
        );
    }

    /// A live read that found no engine: generic, with a warning that nothing may enforce
    /// the NetworkPolicies and how to say so; none for files (no cluster signals), none
    /// when an engine is found or named.
    #[test]
    fn a_live_cluster_without_an_engine_warns() {
        let live = ClusterSignals {
            daemonsets: vec![("kube-system".into(), "kube-proxy".into())],
            crds: vec!["deployments.apps".into(), "daemonsets.apps".into()],
            aks: None,
        };
        let d = decide(None, &live, &[]);
        assert_eq!(
            (d.engine, d.source),
            (Engine::Generic, DecisionSource::Default)
        );
        assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
        let w = &d.warnings[0];
        for part in [
            "no policy engine DaemonSet or CRD found in the cluster",
            "NetworkPolicies may not be enforced at all",
            "without --network-policy",
            "--aks-cluster FILE (`az aks show -o json`) or --engine",
        ] {
            assert!(w.contains(part), "{part:?} not in {w}");
        }
        // Discovery alone (no DaemonSet at all) is a live read too.
        let bare = ClusterSignals {
            crds: vec!["deployments.apps".into()],
            ..ClusterSignals::default()
        };
        assert_eq!(decide(None, &bare, &[]).warnings, d.warnings);
        // Files: no cluster signals, no warning.
        let files = decide(None, &ClusterSignals::default(), &[]);
        assert_eq!(files.engine, Engine::Generic);
        assert!(files.warnings.is_empty(), "{:?}", files.warnings);
        // An engine found, or named, or the AKS file deciding: no such warning.
        let mut npm = live.clone();
        npm.daemonsets
            .push(("kube-system".into(), "azure-npm".into()));
        assert!(decide(None, &npm, &[]).warnings.is_empty());
        assert!(
            decide(Some(Engine::Generic), &live, &[])
                .warnings
                .is_empty()
        );
        let aks_none = ClusterSignals {
            aks: Some(parse(&aks(r#"{"networkPolicy": "none"}"#, ""))),
            ..live.clone()
        };
        let d = decide(None, &aks_none, &[]);
        assert_eq!(d.engine, Engine::None);
        assert!(
            !d.warnings
                .iter()
                .any(|w| w.contains("no policy engine DaemonSet")),
            "{:?}",
            d.warnings
        );
        // An AKS file that does not say (bring your own CNI): --engine is the way out.
        let byo = ClusterSignals {
            aks: Some(parse(&aks(r#"{"networkPlugin": "none"}"#, ""))),
            ..live
        };
        let d = decide(None, &byo, &[]);
        assert_eq!(d.engine, Engine::Generic);
        let w = d
            .warnings
            .iter()
            .find(|w| w.contains("no policy engine DaemonSet"))
            .expect("the warning");
        assert!(w.contains("name the engine with --engine"), "{w}");
    }

    /// Two engines' signals: the pick is deterministic (Calico first) and both are
    /// named, so the audit reports `engine-ambiguous`.
    #[test]
    fn two_engines_in_the_cluster_are_ambiguous() {
        let d = decide(
            None,
            &ds(&[("kube-system", "cilium"), ("calico-system", "calico-node")]),
            &[],
        );
        assert_eq!(d.engine, Engine::Calico);
        assert_eq!(d.candidates, ["calico", "cilium"]);
        assert_eq!(
            d.how,
            "from the cluster: DaemonSet calico-system/calico-node; ambiguous, the cluster also shows cilium: DaemonSet kube-system/cilium"
        );
    }

    /// --engine > AKS file > cluster > input kinds > generic, with the overridden
    /// signals said.
    #[test]
    fn precedence() {
        let calico_file = aks(r#"{"networkPolicy": "calico"}"#, LINUX_POOL);
        let mut s = with_aks(&calico_file);
        s.daemonsets = vec![("kube-system".into(), "cilium".into())];
        let d = decide(Some(Engine::AzureNpm), &s, &[Engine::Cilium]);
        assert_eq!(
            (d.engine, d.how.as_str()),
            (Engine::AzureNpm, "from --engine")
        );
        assert_eq!(d.source, DecisionSource::Flag);
        assert_eq!(d.warnings.len(), 2, "{:?}", d.warnings);
        assert!(d.warnings[0].contains("says calico (networkProfile.networkPolicy=calico)"));
        assert!(d.warnings[1].contains("cilium (DaemonSet kube-system/cilium)"));

        let d = decide(None, &s, &[Engine::Cilium]);
        assert_eq!(
            (d.engine, d.source),
            (Engine::Calico, DecisionSource::AksCluster)
        );
        assert!(d.warnings[0].contains("the cluster also shows cilium"));

        s.aks = None;
        let d = decide(None, &s, &[Engine::Calico]);
        assert_eq!(
            (d.engine, d.source),
            (Engine::Cilium, DecisionSource::Cluster)
        );

        s.daemonsets.clear();
        let d = decide(None, &s, &[Engine::Calico]);
        assert_eq!(
            (d.engine, d.source),
            (Engine::Calico, DecisionSource::InputKinds)
        );
        assert_eq!(
            d.how,
            "from the input's kinds (Calico policies, projectcalico.org)"
        );

        let d = decide(None, &s, &[Engine::Calico, Engine::Cilium]);
        assert_eq!(d.candidates, ["calico", "cilium"]);
        assert!(d.how.contains("ambiguous"), "{}", d.how);

        let d = decide(None, &ClusterSignals::default(), &[]);
        assert_eq!(
            (d.engine, d.source),
            (Engine::Generic, DecisionSource::Default)
        );
        assert!(
            d.how
                .starts_with("no engine found (no --engine, no --aks-cluster")
        );
    }

    /// AKS without an engine, but a self-managed one in the cluster: the cluster's
    /// engine, and the sentence says what the AKS file said. Calico kinds in the input
    /// do not overrule the AKS file: a warning says how to.
    #[test]
    fn aks_without_engine() {
        let none = aks(r#"{"networkPlugin": "azure"}"#, LINUX_POOL);
        let mut s = with_aks(&none);
        s.daemonsets = vec![("calico-system".into(), "calico-node".into())];
        let d = decide(None, &s, &[]);
        assert_eq!(
            (d.engine, d.source),
            (Engine::Calico, DecisionSource::Cluster)
        );
        assert!(d.how.ends_with("(the AKS cluster file says networkProfile.networkPolicy not set (none): no AKS-managed engine)"), "{}", d.how);

        let d = decide(None, &with_aks(&none), &[Engine::Calico]);
        assert_eq!(d.engine, Engine::None);
        assert!(
            d.warnings[0].contains("--engine calico"),
            "{:?}",
            d.warnings
        );
    }

    /// Errors name the line and column and say what file is expected.
    #[test]
    fn errors() {
        let e =
            AksCluster::from_json("{\n  \"name\": \"x\",\n  \"networkProfile\": {\n").unwrap_err();
        assert!(matches!(e, AksClusterError::Json { line: 4, .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("line 4, column 1: EOF while parsing"),
            "{e}"
        );
        assert!(e.to_string().contains("az aks show"), "{e}");

        let e = AksCluster::from_json(r#"{"networkProfile": {"networkPolicy": 5}}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 1, column 38: invalid type: integer `5`, expected a string; expected the JSON that `az aks show --name NAME --resource-group GROUP -o json` prints"
        );

        let e = AksCluster::from_json(r#"[{"name": "a"}, {"name": "b"}]"#).unwrap_err();
        assert_eq!(e, AksClusterError::List(2));
        assert!(e.to_string().contains("az aks list"));
        assert_eq!(
            AksCluster::from_json("\"x\"").unwrap_err(),
            AksClusterError::NotAnObject("a string")
        );
        assert_eq!(
            AksCluster::from_json(r#"{"name": "x"}"#).unwrap_err(),
            AksClusterError::NoNetworkProfile
        );
    }

    /// The ARM form (`az resource show`, the REST API) nests the properties.
    #[test]
    fn arm_form_and_labels() {
        let c = parse(
            r#"{"name": "c1", "properties": {"networkProfile": {"networkPolicy": "azure", "podLinkLocalAccess": "None"}, "agentPoolProfiles": [{"name": "np"}]}}"#,
        );
        assert_eq!(c.network_policy.as_deref(), Some("azure"));
        assert_eq!(c.agent_pools[0].name, "np");
        assert_eq!(c.label(), "AKS cluster c1");
        let c = parse(&aks("{}", LINUX_POOL));
        assert_eq!(c.label(), "AKS cluster seed (resource group rg)");
        assert_eq!(c.imds_restriction().0.to_string(), "off",);
    }

    /// Found by the aks_cluster_parse fuzz target: an empty file's error was at column 0.
    #[test]
    fn an_empty_file_is_an_error_at_line_1_column_1() {
        for text in ["", "\n", "   "] {
            match AksCluster::from_json(text) {
                Err(AksClusterError::Json { line, column, .. }) => {
                    assert!(line >= 1 && column >= 1, "{text:?}: {line}:{column}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }
}
