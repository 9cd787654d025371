//! Which pod is this? The one answer, for the proxy (a source address) and the agent (an
//! (interface, address) pair the table recorded).
//!
//! Pods come in as plain data ([`NodePod`]): from a pods file or a `PodList`
//! ([`PodIndex::parse`]), or converted from the Kubernetes API's typed pods by
//! `imdsguard-kube` (no text in between). [`PodIndex::from_pods`] then applies one policy:
//!
//! - **finished pods own no address**: a pod in phase `Succeeded` or `Failed` has given
//!   its address back, and the CNI may already have handed it to another pod (a
//!   completed Job's pod stays listed for hours);
//! - **hostNetwork pods own no address**: they share the node's address, which names
//!   no pod; the index keeps them apart ([`PodIndex::host_network_pods`], found by UID
//!   with [`PodIndex::host_pod_by_uid`]): the agent guards them by cgroup, which is named
//!   after the pod's UID (see [`crate::cgroup`]), and the proxy finds them from a
//!   socket's cgroup; finished ones are left out, and a UID that cannot be a pod's is a
//!   [`PodIssue`];
//! - **dual-stack**: every address of a pod (`status.podIPs`, both families, and
//!   `status.podIP`) is its own, compared in canonical form (`::ffff:10.0.0.5` is
//!   `10.0.0.5`);
//! - **address reuse**: a live pod's claim wins over a terminating pod's
//!   (`metadata.deletionTimestamp` set: it still owns its address until a live pod claims
//!   it); two live (or two terminating) pods claiming one address is a [`PodIssue`]:
//!   fail-closed, the address names no pod (its caller is an unknown source, denied) and
//!   the conflict is reported for the caller to log;
//! - **interfaces**: a pod's node-side interface (`azv…`, or the bridge) comes from the
//!   file's `interface` field or the [`INTERFACE_ANNOTATION`]; the agent's known and
//!   allow sets are its (interface, owned address) pairs, and a dropped (interface,
//!   address) pair is attributed by [`PodIndex::attribute`].
//!
//! ```yaml
//! - {ip: 10.244.0.10, namespace: platform, name: allowed, interface: azvallowed}
//! - ips: [10.244.0.11, "fd00::11"]
//!   namespace: shop
//!   name: web
//!   labels: {app: web}
//!   serviceAccount: web
//! - {hostNetwork: true, uid: 0a1b2c3d-0000-4000-8000-00000000000a, namespace: monitoring, name: node-exporter-x2k4p}
//! ```
//!
//! A hostNetwork entry needs no address but its `uid` (the file's only way to name the
//! pod's cgroup).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::Deserialize;
use serde_json::Value;

use crate::access::AccessError;
use crate::model::Labels;
use crate::nft::SourcePair;

/// The annotation naming a pod's node-side interface (in a `PodList`, and on pods in
/// Kubernetes); when set it wins over a route lookup.
pub const INTERFACE_ANNOTATION: &str = "imdsguard.io/interface";

/// Who a pod is, as the access rules see a caller: namespace, name, labels, service
/// account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// Service account (`default` when the pod names none).
    pub service_account: String,
}

impl PodInfo {
    /// A pod without labels, with the `default` service account.
    pub fn new(namespace: &str, name: &str) -> PodInfo {
        PodInfo {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            labels: Labels::new(),
            service_account: "default".to_owned(),
        }
    }

    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The service account a pod runs as: the one named, else `default`.
pub fn service_account_or_default(name: Option<&str>) -> String {
    name.filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_owned()
}

/// A pod's phase (`status.phase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PodPhase {
    /// Accepted, not all containers running yet (it may already have its address).
    Pending,
    /// Bound to the node, containers running. Also what a pods file entry is.
    #[default]
    Running,
    /// Every container exited successfully: the address is given back.
    Succeeded,
    /// Every container exited, one or more failed: the address is given back.
    Failed,
    /// The node could not report (or the phase is not one of the above): the pod may
    /// still run, so it is treated as live.
    Unknown,
}

impl PodPhase {
    /// The phase named by `status.phase`; a missing or unrecognised one is `Unknown`.
    pub fn parse(phase: Option<&str>) -> PodPhase {
        match phase {
            Some("Pending") => PodPhase::Pending,
            Some("Running") => PodPhase::Running,
            Some("Succeeded") => PodPhase::Succeeded,
            Some("Failed") => PodPhase::Failed,
            _ => PodPhase::Unknown,
        }
    }

    /// `Succeeded` or `Failed`: the pod's sandbox is gone.
    pub fn is_finished(self) -> bool {
        matches!(self, PodPhase::Succeeded | PodPhase::Failed)
    }
}

/// One pod of the node as plain data: what the file parser and the Kubernetes glue
/// produce, and what [`PodIndex::from_pods`] decides over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePod {
    /// Who it is.
    pub info: Arc<PodInfo>,
    /// The pod's UID, when the API gave one (Kubernetes Events name it).
    pub uid: Option<String>,
    /// Its phase.
    pub phase: PodPhase,
    /// `metadata.deletionTimestamp` is set: it is shutting down.
    pub terminating: bool,
    /// `spec.hostNetwork`: it uses the node's own network namespace.
    pub host_network: bool,
    /// Its addresses, canonical (see [`canonical_addrs`]). In a [`PodIndex`] these are
    /// the addresses it owns.
    pub addrs: Vec<IpAddr>,
    /// The interface its traffic enters the node on (`azv…`, or the bridge), if known.
    pub interface: Option<String>,
}

/// How strongly a pod claims its addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Claim {
    Terminating,
    Live,
}

impl NodePod {
    /// A running pod with these addresses and no interface.
    pub fn new(info: PodInfo, addrs: impl IntoIterator<Item = IpAddr>) -> NodePod {
        NodePod {
            info: Arc::new(info),
            uid: None,
            phase: PodPhase::Running,
            terminating: false,
            host_network: false,
            addrs: canonical_addrs(addrs),
            interface: None,
        }
    }

    /// `namespace/name`.
    pub fn id(&self) -> String {
        self.info.id()
    }

    /// Whether the pod may own addresses at all: not hostNetwork, not finished.
    pub fn claims_addresses(&self) -> bool {
        self.claim().is_some()
    }

    fn claim(&self) -> Option<Claim> {
        if self.host_network || self.phase.is_finished() {
            None
        } else if self.terminating {
            Some(Claim::Terminating)
        } else {
            Some(Claim::Live)
        }
    }
}

/// Addresses in canonical form (IPv4-mapped IPv6 as IPv4), each once, in order.
pub fn canonical_addrs(addrs: impl IntoIterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for a in addrs {
        let a = crate::target::canonical_ip(a);
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// What the index left out, for the caller to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodIssue {
    /// Pods of the same standing (live, or terminating) claim one address: it names none
    /// of them.
    AddressConflict {
        /// The address.
        addr: IpAddr,
        /// The pods claiming it (`namespace/name`), sorted.
        pods: Vec<String>,
    },
    /// A pod's interface is not a valid interface name: the pod has none.
    BadInterface {
        /// The pod (`namespace/name`).
        pod: String,
        /// The interface as given.
        interface: String,
    },
    /// A hostNetwork pod's UID cannot be a pod UID (hex digits and dashes): it is kept
    /// without one, so no cgroup is named after it (its sockets count as an unknown pod's).
    BadUid {
        /// The pod (`namespace/name`).
        pod: String,
        /// The UID as given.
        uid: String,
    },
}

impl fmt::Display for PodIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PodIssue::AddressConflict { addr, pods } => write!(
                f,
                "address {addr} is claimed by {}: it names no pod (its traffic is an unknown source's) until one of them is gone",
                pods.join(" and ")
            ),
            PodIssue::BadInterface { pod, interface } => write!(
                f,
                "pod {pod}: interface `{interface}` is not an interface name (1 to 15 of a-z A-Z 0-9 . _ - @): the pod is not bound to an interface"
            ),
            PodIssue::BadUid { pod, uid } => write!(
                f,
                "hostNetwork pod {pod}: UID `{}` is not a pod UID (hex digits and dashes): no cgroup is matched to it, so its sockets count as an unknown pod's",
                crate::quote::clip(uid)
            ),
        }
    }
}

/// How a dropped (interface, address) pair was matched to a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Attribution {
    /// The pod has this interface and owns this address.
    Pair,
    /// The pod has this interface, which no other pod shares, but not this address: it
    /// sent with another address (spoofing).
    Interface,
    /// No pod of the index.
    Unknown,
}

impl Attribution {
    /// `pair`, `interface` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Attribution::Pair => "pair",
            Attribution::Interface => "interface",
            Attribution::Unknown => "unknown",
        }
    }
}

/// The node's pods, decided: which pod owns each address (the proxy's lookup), each
/// pod with the addresses it owns and its interface (the agent's sets and drop
/// attribution), and what was left out ([`PodIssue`]).
#[derive(Debug, Clone, Default)]
pub struct PodIndex {
    by_ip: FxHashMap<IpAddr, Arc<PodInfo>>,
    pods: Vec<NodePod>,
    host_pods: Vec<NodePod>,
    issues: Vec<PodIssue>,
}

impl PodIndex {
    /// An empty index (every source is unknown).
    pub fn new() -> PodIndex {
        PodIndex::default()
    }

    /// The index of these pods under the module's policy: finished and hostNetwork pods
    /// own nothing and are left out; a live pod's claim beats a terminating pod's; a
    /// tie between different pods leaves the address to none and is reported. Never
    /// fails: what it leaves out is in [`PodIndex::issues`].
    pub fn from_pods(pods: impl IntoIterator<Item = NodePod>) -> PodIndex {
        let mut issues = Vec::new();
        let (host_pods, pods): (Vec<NodePod>, Vec<NodePod>) = pods
            .into_iter()
            .filter(|p| !p.phase.is_finished())
            .partition(|p| p.host_network);
        let host_pods = host_network_pods(host_pods, &mut issues);
        let mut pods: Vec<NodePod> = pods
            .into_iter()
            .filter(NodePod::claims_addresses)
            .map(|mut p| {
                p.addrs = canonical_addrs(std::mem::take(&mut p.addrs));
                if let Some(iface) = &p.interface
                    && !valid_interface(iface)
                {
                    issues.push(PodIssue::BadInterface {
                        pod: p.id(),
                        interface: iface.clone(),
                    });
                    p.interface = None;
                }
                p
            })
            .collect();
        pods.sort_by(|a, b| {
            (&a.info.namespace, &a.info.name).cmp(&(&b.info.namespace, &b.info.name))
        });

        // The strongest claim on each address, and every pod making it.
        let mut claims: FxHashMap<IpAddr, (Claim, Vec<usize>)> = FxHashMap::default();
        for (i, p) in pods.iter().enumerate() {
            let Some(claim) = p.claim() else { continue };
            for addr in &p.addrs {
                let entry = claims.entry(*addr).or_insert((claim, Vec::new()));
                if claim > entry.0 {
                    *entry = (claim, Vec::new());
                }
                if claim == entry.0 && !entry.1.iter().any(|j| pods[*j].info == p.info) {
                    entry.1.push(i);
                }
            }
        }
        let mut owner: FxHashMap<IpAddr, usize> = FxHashMap::default();
        let mut conflicts: Vec<PodIssue> = Vec::new();
        for (addr, (_, claimants)) in claims {
            match claimants.as_slice() {
                [one] => {
                    owner.insert(addr, *one);
                }
                many => {
                    let mut ids: Vec<String> = many.iter().map(|i| pods[*i].id()).collect();
                    ids.sort();
                    ids.dedup();
                    conflicts.push(PodIssue::AddressConflict { addr, pods: ids });
                }
            }
        }
        conflicts.sort_by_key(|c| match c {
            PodIssue::AddressConflict { addr, .. } => Some(*addr),
            PodIssue::BadInterface { .. } | PodIssue::BadUid { .. } => None,
        });
        issues.extend(conflicts);

        let mut by_ip: FxHashMap<IpAddr, Arc<PodInfo>> = FxHashMap::default();
        for (i, p) in pods.iter_mut().enumerate() {
            p.addrs.retain(|a| owner.get(a) == Some(&i));
            for a in &p.addrs {
                by_ip.insert(*a, p.info.clone());
            }
        }
        PodIndex {
            by_ip,
            pods,
            host_pods,
            issues,
        }
    }

    /// Reads a pods file (YAML or JSON): a list of
    /// `{ip, ips, namespace, name, labels, serviceAccount, interface}` (`ip` or `ips`
    /// required), the same under `pods:`, or a Kubernetes `PodList`/`List`
    /// (`kubectl get pods -A -o json`: phase, deletionTimestamp, hostNetwork,
    /// `status.podIPs`, the [`INTERFACE_ANNOTATION`]). Errors name the entry; what
    /// the policy leaves out is in [`PodIndex::issues`], not an error.
    pub fn parse(text: &str) -> Result<PodIndex, AccessError> {
        Ok(PodIndex::from_pods(parse_pods(text)?))
    }

    /// The pod with this source address.
    pub fn get(&self, ip: IpAddr) -> Option<&Arc<PodInfo>> {
        self.by_ip.get(&crate::target::canonical_ip(ip))
    }

    /// How many addresses name a pod.
    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    /// Whether no address names a pod.
    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    /// Every (address, pod), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (IpAddr, &Arc<PodInfo>)> {
        self.by_ip.iter().map(|(ip, pod)| (*ip, pod))
    }

    /// The pods that may own addresses (neither finished nor hostNetwork), by namespace
    /// and name, each with the addresses it owns.
    pub fn pods(&self) -> &[NodePod] {
        &self.pods
    }

    /// What was left out: address conflicts, bad interfaces, bad hostNetwork UIDs.
    pub fn issues(&self) -> &[PodIssue] {
        &self.issues
    }

    /// The hostNetwork pods that are not finished (terminating ones included: their
    /// containers still run), by namespace and name, their UIDs canonical (lowercase;
    /// `None` when the pod had none, or one that cannot be a pod's: a [`PodIssue`]).
    /// They own no address (`addrs` is empty).
    pub fn host_network_pods(&self) -> &[NodePod] {
        &self.host_pods
    }

    /// The hostNetwork pod with this UID (any case).
    pub fn host_pod_by_uid(&self, uid: &str) -> Option<&NodePod> {
        let uid = crate::cgroup::canonical_uid(uid)?;
        self.host_pods
            .iter()
            .find(|p| p.uid.as_deref() == Some(uid.as_str()))
    }

    /// The (interface, address) pairs of the pods `select` picks that have an interface.
    pub fn pairs_of(&self, select: impl Fn(&PodInfo) -> bool) -> Vec<SourcePair> {
        let mut out: Vec<SourcePair> = self
            .pods
            .iter()
            .filter(|p| select(&p.info))
            .filter_map(|p| Some((p.interface.as_deref()?, &p.addrs)))
            .flat_map(|(iface, addrs)| {
                addrs
                    .iter()
                    .filter_map(move |a| SourcePair::new(iface, *a).ok())
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Every (interface, owned address) pair: the pods the node hosts (the known set).
    pub fn known_pairs(&self) -> Vec<SourcePair> {
        self.pairs_of(|_| true)
    }

    /// Pods without an interface (`namespace/name`): in no pair.
    pub fn without_interface(&self) -> Vec<String> {
        self.pods
            .iter()
            .filter(|p| p.interface.is_none())
            .map(NodePod::id)
            .collect()
    }

    /// The pod that sent from `addr` on `iface`: the pod with that interface owning that
    /// address, else the only pod on that interface (a routed CNI's veth: that pod sent
    /// it, whatever the address), else none (a shared bridge, or no such pod). A pod
    /// without an interface is never named.
    pub fn attribute(&self, iface: &str, addr: IpAddr) -> (Option<&NodePod>, Attribution) {
        let addr = crate::target::canonical_ip(addr);
        let on_iface = || {
            self.pods
                .iter()
                .filter(move |p| p.interface.as_deref() == Some(iface))
        };
        if let Some(p) = on_iface().find(|p| p.addrs.contains(&addr)) {
            return (Some(p), Attribution::Pair);
        }
        let mut candidates = on_iface();
        match (candidates.next(), candidates.next()) {
            (Some(p), None) => (Some(p), Attribution::Interface),
            _ => (None, Attribution::Unknown),
        }
    }

    /// The pod `namespace/name`, if it may own addresses.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&NodePod> {
        self.pods
            .iter()
            .find(|p| p.info.namespace == namespace && p.info.name == name)
    }
}

/// The hostNetwork pods as the index keeps them: sorted, no addresses, UIDs canonical
/// (a bad one reported and dropped).
fn host_network_pods(mut pods: Vec<NodePod>, issues: &mut Vec<PodIssue>) -> Vec<NodePod> {
    for p in &mut pods {
        p.addrs.clear();
        if let Some(uid) = p.uid.take() {
            match crate::cgroup::canonical_uid(&uid) {
                Some(c) => p.uid = Some(c),
                None => issues.push(PodIssue::BadUid { pod: p.id(), uid }),
            }
        }
    }
    pods.sort_by(|a, b| (&a.info.namespace, &a.info.name).cmp(&(&b.info.namespace, &b.info.name)));
    pods.dedup_by(|a, b| a.info == b.info && a.uid == b.uid);
    pods
}

fn valid_interface(iface: &str) -> bool {
    SourcePair::new(iface, IpAddr::from([10, 0, 0, 1])).is_ok()
}

// ---------------------------------------------------------------------------------
// Text
// ---------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPod {
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    ips: Vec<String>,
    namespace: String,
    name: String,
    #[serde(default)]
    labels: Labels,
    #[serde(default, alias = "serviceAccountName")]
    service_account: Option<String>,
    #[serde(default)]
    interface: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    host_network: bool,
}

const EXPECTED: &str = "expected a list of pods, `pods: [...]`, or a Kubernetes PodList";

/// The pods of a pods file (see [`PodIndex::parse`]), before the policy.
pub fn parse_pods(text: &str) -> Result<Vec<NodePod>, AccessError> {
    let value: Value = serde_norway::from_str(text)
        .map_err(|e| AccessError::Parse(format!("not YAML or JSON: {e}")))?;
    let entries = match value {
        Value::Array(items) => items,
        Value::Null => Vec::new(),
        Value::Object(mut map) => {
            if let Some(Value::Array(items)) = map.remove("items") {
                return kubernetes_pods(&items);
            }
            match map.remove("pods") {
                Some(Value::Array(items)) => items,
                Some(Value::Null) => Vec::new(),
                _ => return Err(AccessError::Parse(EXPECTED.into())),
            }
        }
        _ => return Err(AccessError::Parse(EXPECTED.into())),
    };
    let mut pods = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let raw: RawPod = serde_json::from_value(entry).map_err(|e| AccessError::Pod {
            pod: format!("[{i}]"),
            message: e.to_string(),
        })?;
        if raw.namespace.is_empty() || raw.name.is_empty() {
            return Err(AccessError::Pod {
                pod: format!("[{i}]"),
                message: "namespace and name must not be empty".into(),
            });
        }
        let info = PodInfo {
            service_account: service_account_or_default(raw.service_account.as_deref()),
            labels: raw.labels,
            ..PodInfo::new(&raw.namespace, &raw.name)
        };
        let ips: Vec<&str> = raw.ip.iter().chain(&raw.ips).map(String::as_str).collect();
        if ips.is_empty() && !raw.host_network {
            return Err(AccessError::Pod {
                pod: info.id(),
                message: "no `ip` (or `ips`; a hostNetwork pod says `hostNetwork: true` and its `uid` instead)".into(),
            });
        }
        if let Some(uid) = &raw.uid
            && crate::cgroup::canonical_uid(uid).is_none()
        {
            return Err(AccessError::Pod {
                pod: info.id(),
                message: format!(
                    "`uid: {}` is not a pod UID (hex digits and dashes, as `kubectl get pod -o jsonpath='{{.metadata.uid}}'` prints it)",
                    crate::quote::clip(uid)
                ),
            });
        }
        if raw.host_network && raw.uid.is_none() {
            return Err(AccessError::Pod {
                pod: info.id(),
                message: "a hostNetwork pod needs its `uid` (its cgroup is named after it)".into(),
            });
        }
        let mut pod = NodePod::new(info, parse_addrs(&ips, &raw.namespace, &raw.name)?);
        pod.interface = raw.interface;
        pod.uid = raw.uid;
        pod.host_network = raw.host_network;
        if pod.claims_addresses() {
            check_interface(&pod)?;
        }
        pods.push(pod);
    }
    Ok(pods)
}

fn parse_addrs(ips: &[&str], namespace: &str, name: &str) -> Result<Vec<IpAddr>, AccessError> {
    ips.iter()
        .map(|ip| {
            ip.trim()
                .parse()
                .map(crate::target::canonical_ip)
                .map_err(|_| AccessError::Pod {
                    pod: format!("{namespace}/{name}"),
                    message: format!("`{ip}` is not an IP address"),
                })
        })
        .collect()
}

fn check_interface(pod: &NodePod) -> Result<(), AccessError> {
    match &pod.interface {
        Some(iface) if !valid_interface(iface) => Err(AccessError::Pod {
            pod: pod.id(),
            message: format!(
                "interface `{iface}` is not an interface name (1 to 15 of a-z A-Z 0-9 . _ - @, no wildcard)"
            ),
        }),
        _ => Ok(()),
    }
}

/// Pods of a Kubernetes list: `metadata.{namespace,name,labels,uid,deletionTimestamp}`,
/// the [`INTERFACE_ANNOTATION`], `spec.{serviceAccountName,hostNetwork}`,
/// `status.{phase,podIPs,podIP}`. Items of other kinds are skipped.
fn kubernetes_pods(items: &[Value]) -> Result<Vec<NodePod>, AccessError> {
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        if item
            .get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k != "Pod")
        {
            continue;
        }
        let meta = &item["metadata"];
        let name = meta["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            return Err(AccessError::Pod {
                pod: format!("items[{i}]"),
                message: "no metadata.name".into(),
            });
        }
        let namespace = meta["namespace"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("default");
        let labels: Labels = meta["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let spec = &item["spec"];
        let status = &item["status"];
        let info = PodInfo {
            labels,
            service_account: service_account_or_default(spec["serviceAccountName"].as_str()),
            ..PodInfo::new(namespace, name)
        };
        let ips: Vec<&str> = status["podIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["ip"].as_str())
            .chain(status["podIP"].as_str())
            .filter(|s| !s.is_empty())
            .collect();
        let mut pod = NodePod::new(info, parse_addrs(&ips, namespace, name)?);
        pod.uid = meta["uid"].as_str().map(str::to_owned);
        pod.phase = PodPhase::parse(status["phase"].as_str());
        pod.terminating = !meta["deletionTimestamp"].is_null();
        pod.host_network = spec["hostNetwork"].as_bool() == Some(true);
        pod.interface = meta["annotations"][INTERFACE_ANNOTATION]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        if pod.claims_addresses() {
            check_interface(&pod)?;
        }
        out.push(pod);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn pod(ns: &str, name: &str, addrs: &[&str]) -> NodePod {
        NodePod::new(PodInfo::new(ns, name), addrs.iter().map(|a| ip(a)))
    }

    fn owner(idx: &PodIndex, addr: &str) -> Option<String> {
        idx.get(ip(addr)).map(|p| p.id())
    }

    fn pair(i: &str, a: &str) -> SourcePair {
        SourcePair::new(i, ip(a)).unwrap()
    }

    /// The reported defect: `kubectl get pods -A -o json` with a completed Job pod and
    /// the running pod that got its address. It failed with "address 10.244.1.7 is
    /// also jobs/migrate-28xk2's", so the proxy did not start.
    const COMPLETED_JOB_AND_REUSE: &str = r#"{
  "apiVersion": "v1",
  "kind": "List",
  "items": [
    {
      "apiVersion": "v1",
      "kind": "Pod",
      "metadata": {
        "name": "migrate-28xk2",
        "namespace": "jobs",
        "uid": "3b1f0c52-9a0e-4c4e-8d3e-4f2d7c1a9b10",
        "labels": {"batch.kubernetes.io/job-name": "migrate", "job-name": "migrate"},
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "migrate",
                             "uid": "0a6c", "controller": true, "blockOwnerDeletion": true}]
      },
      "spec": {
        "containers": [{"name": "migrate", "image": "example.azurecr.io/migrate:1.4"}],
        "nodeName": "aks-nodepool1-12345678-vmss000000",
        "restartPolicy": "Never",
        "serviceAccountName": "migrate"
      },
      "status": {
        "phase": "Succeeded",
        "hostIP": "10.224.0.4",
        "podIP": "10.244.1.7",
        "podIPs": [{"ip": "10.244.1.7"}],
        "containerStatuses": [{"name": "migrate", "ready": false, "restartCount": 0,
          "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]
      }
    },
    {
      "apiVersion": "v1",
      "kind": "Pod",
      "metadata": {
        "name": "api-7d9c5b8f6-x2k4p",
        "namespace": "payments",
        "uid": "c2d4e6f8-1a2b-4c3d-9e8f-0a1b2c3d4e5f",
        "labels": {"app": "api", "pod-template-hash": "7d9c5b8f6"}
      },
      "spec": {
        "containers": [{"name": "api", "image": "example.azurecr.io/api:2.0"}],
        "nodeName": "aks-nodepool1-12345678-vmss000000",
        "serviceAccountName": "api"
      },
      "status": {
        "phase": "Running",
        "hostIP": "10.224.0.4",
        "podIP": "10.244.1.7",
        "podIPs": [{"ip": "10.244.1.7"}]
      }
    }
  ]
}"#;

    #[test]
    fn a_completed_job_pod_does_not_break_the_index() {
        let idx = PodIndex::parse(COMPLETED_JOB_AND_REUSE).expect("the PodList is accepted");
        assert_eq!(
            owner(&idx, "10.244.1.7").as_deref(),
            Some("payments/api-7d9c5b8f6-x2k4p")
        );
        assert_eq!(idx.get(ip("10.244.1.7")).unwrap().service_account, "api");
        assert_eq!(idx.len(), 1);
        assert!(idx.issues().is_empty(), "{:?}", idx.issues());
        // The finished pod is not one of the node's pods any more.
        assert!(idx.pod("jobs", "migrate-28xk2").is_none());
        assert_eq!(idx.pods().len(), 1);
    }

    #[test]
    fn finished_pods_own_nothing_even_alone() {
        let mut failed = pod("jobs", "failed", &["10.0.0.1"]);
        failed.phase = PodPhase::Failed;
        failed.interface = Some("azvfailed".into());
        let mut done = pod("jobs", "done", &["10.0.0.2"]);
        done.phase = PodPhase::Succeeded;
        let mut pending = pod("jobs", "pending", &["10.0.0.3"]);
        pending.phase = PodPhase::Pending;
        let mut unknown = pod("jobs", "unknown", &["10.0.0.4"]);
        unknown.phase = PodPhase::Unknown;
        let idx = PodIndex::from_pods([failed, done, pending, unknown]);
        assert_eq!(owner(&idx, "10.0.0.1"), None);
        assert_eq!(owner(&idx, "10.0.0.2"), None);
        assert_eq!(owner(&idx, "10.0.0.3").as_deref(), Some("jobs/pending"));
        assert_eq!(owner(&idx, "10.0.0.4").as_deref(), Some("jobs/unknown"));
        assert!(
            idx.known_pairs().is_empty(),
            "a finished pod's pair is not known"
        );
        assert_eq!(
            idx.attribute("azvfailed", ip("10.0.0.1")),
            (None, Attribution::Unknown)
        );
    }

    #[test]
    fn host_network_pods_never_own_the_node_address() {
        let mut ds = pod("kube-system", "ds", &["10.224.0.4"]);
        ds.host_network = true;
        let idx = PodIndex::from_pods([ds.clone(), pod("shop", "web", &["10.244.0.5"])]);
        assert_eq!(owner(&idx, "10.224.0.4"), None);
        assert_eq!(idx.len(), 1);
        // Two hostNetwork pods share the node's address: no conflict either.
        let mut ds2 = ds.clone();
        ds2.info = Arc::new(PodInfo::new("kube-system", "ds2"));
        assert!(PodIndex::from_pods([ds, ds2]).issues().is_empty());
    }

    #[test]
    fn host_network_pods_are_kept_apart_by_uid() {
        let mut ds = pod("monitoring", "node-exporter", &["10.224.0.4"]);
        ds.host_network = true;
        ds.uid = Some("0A1B2C3D-0000-4000-8000-00000000000A".into());
        ds.interface = Some("azv*".into()); // never checked: it owns no address
        let mut debug = pod("debug", "node-debugger", &[]);
        debug.host_network = true;
        debug.uid = Some("0a1b2c3d-0000-4000-8000-00000000000b".into());
        debug.terminating = true;
        let mut done = pod("debug", "done", &[]);
        done.host_network = true;
        done.phase = PodPhase::Succeeded;
        done.uid = Some("0a1b2c3d-0000-4000-8000-00000000000c".into());
        let mut bad = pod("x", "bad", &[]);
        bad.host_network = true;
        bad.uid = Some("../../system.slice".into());
        let idx = PodIndex::from_pods([ds, debug, done, bad, pod("shop", "web", &["10.244.0.5"])]);
        let names: Vec<String> = idx.host_network_pods().iter().map(NodePod::id).collect();
        assert_eq!(
            names,
            ["debug/node-debugger", "monitoring/node-exporter", "x/bad"],
            "finished ones left out, terminating ones kept"
        );
        assert!(idx.host_network_pods().iter().all(|p| p.addrs.is_empty()));
        assert_eq!(
            idx.host_network_pods()[1].uid.as_deref(),
            Some("0a1b2c3d-0000-4000-8000-00000000000a"),
            "canonical: lowercase"
        );
        assert_eq!(idx.host_network_pods()[2].uid, None);
        assert!(matches!(idx.issues(), [PodIssue::BadUid { pod, .. }] if pod == "x/bad"));
        assert!(idx.issues()[0].to_string().contains("not a pod UID"));
        assert_eq!(
            idx.host_pod_by_uid("0a1b2c3d-0000-4000-8000-00000000000A")
                .map(NodePod::id),
            Some("monitoring/node-exporter".into())
        );
        assert!(
            idx.host_pod_by_uid("0a1b2c3d-0000-4000-8000-00000000000c")
                .is_none()
        );
        assert!(idx.host_pod_by_uid("../x").is_none());
        // Still no address for them, and the other pods as before.
        assert_eq!(owner(&idx, "10.224.0.4"), None);
        assert_eq!(idx.pods().len(), 1);
        assert!(idx.pod("monitoring", "node-exporter").is_none());
    }

    #[test]
    fn host_network_entries_in_the_pods_file() {
        let file = "
- {hostNetwork: true, uid: 0a1b2c3d-0000-4000-8000-00000000000a, namespace: monitoring, name: node-exporter, labels: {app: node-exporter}}
- {ip: 10.244.0.5, uid: 0a1b2c3d-0000-4000-8000-00000000000d, namespace: shop, name: web}
";
        let idx = PodIndex::parse(file).unwrap();
        let host = idx.host_network_pods();
        assert_eq!(host.len(), 1);
        assert_eq!(
            host[0].info.labels.get("app").map(String::as_str),
            Some("node-exporter")
        );
        assert_eq!(
            host[0].uid.as_deref(),
            Some("0a1b2c3d-0000-4000-8000-00000000000a")
        );
        assert_eq!(
            idx.pods()[0].uid.as_deref(),
            Some("0a1b2c3d-0000-4000-8000-00000000000d")
        );
        assert_eq!(owner(&idx, "10.244.0.5").as_deref(), Some("shop/web"));
        // A hostNetwork pod's address (the node's) names no pod.
        let idx = PodIndex::parse(
            "[{hostNetwork: true, ip: 10.224.0.4, uid: ab12, namespace: a, name: b}]",
        )
        .unwrap();
        assert!(idx.is_empty());
        assert_eq!(idx.host_network_pods().len(), 1);
        for (bad, want) in [
            (
                "[{hostNetwork: true, namespace: a, name: b}]",
                "needs its `uid`",
            ),
            (
                "[{hostNetwork: true, uid: 'a;b', namespace: a, name: b}]",
                "is not a pod UID",
            ),
            (
                "[{ip: 10.0.0.1, uid: 'x y', namespace: a, name: b}]",
                "is not a pod UID",
            ),
            ("[{hostNetwork: false, namespace: a, name: b}]", "no `ip`"),
            (
                "[{hostNetwork: yes please, uid: ab, namespace: a, name: b}]",
                "[0]",
            ),
        ] {
            let e = PodIndex::parse(bad).expect_err(bad).to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
        // A PodList's hostNetwork pods, by their metadata.uid.
        let list = r#"{"kind":"PodList","items":[
          {"metadata":{"name":"h","namespace":"kube-system","uid":"0a1b2c3d-0000-4000-8000-00000000000e"},
           "spec":{"hostNetwork":true},"status":{"phase":"Running","podIP":"10.224.0.4"}}]}"#;
        let idx = PodIndex::parse(list).unwrap();
        assert_eq!(
            idx.host_pod_by_uid("0a1b2c3d-0000-4000-8000-00000000000e")
                .map(NodePod::id),
            Some("kube-system/h".into())
        );
    }

    #[test]
    fn dual_stack_addresses_are_all_the_pods_and_canonical() {
        let idx = PodIndex::from_pods([pod("shop", "web", &["::ffff:10.244.0.6", "fd00::6"])]);
        assert_eq!(owner(&idx, "10.244.0.6").as_deref(), Some("shop/web"));
        assert_eq!(
            owner(&idx, "::ffff:10.244.0.6").as_deref(),
            Some("shop/web")
        );
        assert_eq!(owner(&idx, "fd00::6").as_deref(), Some("shop/web"));
        assert_eq!(idx.pods()[0].addrs, [ip("10.244.0.6"), ip("fd00::6")]);

        let list = r#"{"kind":"PodList","items":[
          {"metadata":{"name":"a","namespace":"n"},"status":{"phase":"Running",
           "podIP":"10.1.0.1","podIPs":[{"ip":"10.1.0.1"},{"ip":"fd00::1"}]}}]}"#;
        let idx = PodIndex::parse(list).unwrap();
        assert_eq!(idx.pods()[0].addrs, [ip("10.1.0.1"), ip("fd00::1")]);
        // A pods file that writes the address in IPv4-mapped form: the IPv4 address.
        let mapped = list.replace(r#"{"ip":"10.1.0.1"}"#, r#"{"ip":"::ffff:10.1.0.1"}"#);
        let idx = PodIndex::parse(&mapped).unwrap();
        assert_eq!(idx.pods()[0].addrs, [ip("10.1.0.1"), ip("fd00::1")]);
        assert!(idx.get(ip("10.1.0.1")).is_some());
    }

    #[test]
    fn a_live_pod_wins_over_a_terminating_one() {
        let mut old = pod("shop", "old", &["10.0.0.9", "fd00::9"]);
        old.terminating = true;
        let new = pod("shop", "new", &["10.0.0.9"]);
        let idx = PodIndex::from_pods([old.clone(), new]);
        assert_eq!(owner(&idx, "10.0.0.9").as_deref(), Some("shop/new"));
        // The terminating pod keeps what nobody live claims.
        assert_eq!(owner(&idx, "fd00::9").as_deref(), Some("shop/old"));
        assert!(idx.issues().is_empty());
        // Alone, a terminating pod still owns its address (its containers still run).
        let idx = PodIndex::from_pods([old]);
        assert_eq!(owner(&idx, "10.0.0.9").as_deref(), Some("shop/old"));
    }

    #[test]
    fn two_live_pods_on_one_address_name_neither_and_are_reported() {
        let mut a = pod("shop", "a", &["10.0.0.7", "10.0.0.8"]);
        a.interface = Some("azva".into());
        let mut b = pod("shop", "b", &["10.0.0.7"]);
        b.interface = Some("azvb".into());
        let idx = PodIndex::from_pods([b, a]);
        assert_eq!(owner(&idx, "10.0.0.7"), None, "fail-closed");
        assert_eq!(owner(&idx, "10.0.0.8").as_deref(), Some("shop/a"));
        assert_eq!(
            idx.issues(),
            [PodIssue::AddressConflict {
                addr: ip("10.0.0.7"),
                pods: vec!["shop/a".into(), "shop/b".into()],
            }]
        );
        assert!(idx.issues()[0].to_string().contains("shop/a and shop/b"));
        // Neither pod's pair for that address is known (proxy mode drops it).
        assert_eq!(idx.known_pairs(), [pair("azva", "10.0.0.8")]);
        // Two terminating pods tie as well.
        let (mut c, mut d) = (pod("x", "c", &["10.0.0.1"]), pod("x", "d", &["10.0.0.1"]));
        c.terminating = true;
        d.terminating = true;
        let idx = PodIndex::from_pods([c, d]);
        assert!(idx.is_empty());
        assert_eq!(idx.issues().len(), 1);
        // The same pod listed twice is no conflict.
        let idx = PodIndex::from_pods([pod("x", "e", &["10.0.0.1"]), pod("x", "e", &["10.0.0.1"])]);
        assert_eq!(owner(&idx, "10.0.0.1").as_deref(), Some("x/e"));
        assert!(idx.issues().is_empty());
    }

    #[test]
    fn interfaces_give_pairs_and_attribution() {
        let file = "
- {ip: 10.244.0.10, namespace: platform, name: allowed, interface: azvallowed}
- {ips: [10.244.0.11, 'fd00::11'], namespace: apps, name: web, interface: azvweb}
- {ip: 10.244.1.10, namespace: batch, name: a, interface: cbr0}
- {ip: 10.244.1.11, namespace: batch, name: b, interface: cbr0}
- {ip: 10.244.2.1, namespace: batch, name: nowhere}
";
        let idx = PodIndex::parse(file).unwrap();
        assert_eq!(
            idx.known_pairs(),
            [
                pair("azvallowed", "10.244.0.10"),
                pair("azvweb", "10.244.0.11"),
                pair("azvweb", "fd00::11"),
                pair("cbr0", "10.244.1.10"),
                pair("cbr0", "10.244.1.11"),
            ]
        );
        assert_eq!(
            idx.pairs_of(|p| p.namespace == "platform"),
            [pair("azvallowed", "10.244.0.10")]
        );
        assert_eq!(idx.without_interface(), ["batch/nowhere"]);
        let name = |iface: &str, addr: &str| {
            let (p, how) = idx.attribute(iface, ip(addr));
            (p.map(|p| p.info.name.as_str()), how)
        };
        assert_eq!(
            name("azvweb", "10.244.0.11"),
            (Some("web"), Attribution::Pair)
        );
        assert_eq!(name("cbr0", "10.244.1.11"), (Some("b"), Attribution::Pair));
        // allowed's address from web's interface: web sent it.
        assert_eq!(
            name("azvweb", "10.244.0.10"),
            (Some("web"), Attribution::Interface)
        );
        // A shared bridge says nothing about who borrowed an address.
        assert_eq!(name("cbr0", "10.244.0.10"), (None, Attribution::Unknown));
        assert_eq!(name("azvgone", "10.244.0.99"), (None, Attribution::Unknown));
        // A pod without an interface is never matched (not even by address).
        assert_eq!(name("azvx", "10.244.2.1"), (None, Attribution::Unknown));

        // The annotation in a PodList; a bad one is refused in a file, and dropped
        // (reported) when pods come from elsewhere.
        let list = format!(
            r#"{{"kind":"PodList","items":[{{"metadata":{{"name":"web","namespace":"shop",
              "annotations":{{"{INTERFACE_ANNOTATION}":"azvweb"}}}},"status":{{"podIP":"10.244.0.11"}}}}]}}"#
        );
        assert_eq!(
            PodIndex::parse(&list).unwrap().known_pairs(),
            [pair("azvweb", "10.244.0.11")]
        );
        let e = PodIndex::parse(&list.replace("azvweb", "azv*")).unwrap_err();
        assert!(e.to_string().contains("interface `azv*`"), "{e}");
        let mut bad = pod("shop", "web", &["10.0.0.1"]);
        bad.interface = Some("azv*".into());
        let idx = PodIndex::from_pods([bad]);
        assert_eq!(owner(&idx, "10.0.0.1").as_deref(), Some("shop/web"));
        assert!(idx.known_pairs().is_empty());
        assert!(matches!(idx.issues(), [PodIssue::BadInterface { .. }]));
    }

    #[test]
    fn pods_file_formats() {
        let yaml = r#"
- ip: 10.244.1.5
  namespace: payments
  name: api-7d9
  labels: {app: api}
  serviceAccount: api
- ips: [10.244.1.6, "fd00::6"]
  namespace: shop
  name: web
"#;
        let idx = PodIndex::parse(yaml).unwrap();
        assert_eq!(idx.len(), 3);
        let p = idx.get(ip("10.244.1.5")).unwrap();
        assert_eq!(
            (p.id(), p.service_account.as_str()),
            ("payments/api-7d9".into(), "api")
        );
        assert_eq!(p.labels.get("app").map(String::as_str), Some("api"));
        let web = idx.get(ip("::ffff:10.244.1.6")).unwrap();
        assert_eq!(web.service_account, "default");
        assert!(idx.get(ip("fd00::6")).is_some());
        assert!(idx.get(ip("10.0.0.1")).is_none());

        let json =
            r#"{"pods":[{"ip":"127.0.0.2","namespace":"a","name":"b","serviceAccountName":"sa"}]}"#;
        assert_eq!(PodIndex::parse(json).unwrap().len(), 1);
        assert!(PodIndex::parse("").unwrap().is_empty());
        assert!(PodIndex::parse("pods:").unwrap().is_empty());

        let list = r#"{"kind":"PodList","items":[
          {"metadata":{"name":"a","namespace":"n","labels":{"x":"y"},"uid":"u1"},"spec":{"serviceAccountName":"s"},
           "status":{"podIP":"10.1.0.1","podIPs":[{"ip":"10.1.0.1"},{"ip":"fd00::1"}]}},
          {"metadata":{"name":"h","namespace":"kube-system"},"spec":{"hostNetwork":true},"status":{"podIP":"10.224.0.4"}},
          {"metadata":{"name":"t","namespace":"n","deletionTimestamp":"2024-05-01T10:00:00Z"},"status":{"phase":"Running","podIP":"10.1.0.2"}},
          {"kind":"Service","metadata":{"name":"svc"}},
          {"metadata":{"name":"pending","namespace":"n"},"spec":{},"status":{}}]}"#;
        let pods = parse_pods(list).unwrap();
        assert_eq!(pods.len(), 4);
        assert!(pods[1].host_network && pods[2].terminating && !pods[0].terminating);
        assert_eq!(pods[0].uid.as_deref(), Some("u1"));
        let idx = PodIndex::from_pods(pods);
        assert_eq!(idx.len(), 3);
        assert_eq!(idx.get(ip("fd00::1")).unwrap().service_account, "s");
        assert_eq!(owner(&idx, "10.1.0.2").as_deref(), Some("n/t"));

        for (bad, want) in [
            ("[{ip: x, namespace: a, name: b}]", "not an IP address"),
            ("[{namespace: a, name: b}]", "no `ip`"),
            (
                "[{ip: 10.0.0.1, namespace: a, name: b, extra: 1}]",
                "unknown field",
            ),
            (
                "[{ip: 10.0.0.1, namespace: a, name: b, interface: [x]}]",
                "[0]",
            ),
            (
                "[{ip: 10.0.0.1, namespace: '', name: b}]",
                "must not be empty",
            ),
            (r#"{"items":[{"metadata":{}}]}"#, "no metadata.name"),
            (
                r#"{"items":[{"metadata":{"name":"a"},"status":{"podIP":"nope"}}]}"#,
                "`nope` is not an IP address",
            ),
            ("42", "expected a list"),
            ("pods: 42", "expected a list"),
            ("[{", "not YAML or JSON"),
        ] {
            let e = PodIndex::parse(bad).expect_err(bad).to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
        // Two entries claiming one address: not an error any more, the address names
        // neither pod and the conflict is reported.
        let idx = PodIndex::parse(
            "[{ip: 10.0.0.1, namespace: a, name: b}, {ip: 10.0.0.1, namespace: a, name: c}]",
        )
        .unwrap();
        assert!(idx.is_empty());
        assert!(idx.issues()[0].to_string().contains("a/b and a/c"));
    }
}
