//! Observe mode named by pod and endpoint: the table records each connection it lets
//! through past the allow rule (what block mode would drop) with its (interface, source
//! address) pair and its endpoint, counting connections (`observed_v4` / `observed_v6`,
//! see [`imdsguard_core::nft`]); every check the agent reads them
//! ([`imdsguard_node::Enforcer::observed_connections`]), keeps what is new since the
//! last read ([`ObservedTracker`]), names each source's pod with the core's one answer
//! ([`PodIndex::attribute`]) and adds the connections up per (pod, endpoint)
//! ([`observations`]): `imdsguard_agent_observed_connections_total{namespace,pod,endpoint}`
//! and one log record per pod and endpoint with new connections ([`log`]).
//!
//! The label sets stay bounded by the node's pods times the protected endpoints:
//! sources no pod of the index has count under `pod="unknown"`, and a pod's label sets
//! leave the metric when the pod leaves the index ([`ObservedSeries::retain_pods`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use imdsguard_core::nft::ObservedConnection;
use imdsguard_core::pods::PodIndex;
use imdsguard_core::target::Target;

use crate::drops::UNKNOWN_POD;

/// The `endpoint` label of a hostNetwork pod's connections: the host table counts them
/// per pod, not per endpoint.
pub const ANY_ENDPOINT: &str = "any";

/// An endpoint as the metric and the log name it: the known service's name (`Azure
/// IMDS`, `Azure WireServer`, …), else `IP:PORT/PROTO`; [`ANY_ENDPOINT`] when not known.
pub fn endpoint_name(t: Option<&Target>) -> String {
    match t {
        Some(t) => t
            .service()
            .map_or_else(|| t.to_string(), |s| s.label().to_owned()),
        None => ANY_ENDPOINT.to_owned(),
    }
}

/// The connection counts of the observed elements as last read, to tell what is new.
#[derive(Debug, Clone, Default)]
pub struct ObservedTracker {
    last: BTreeMap<(String, IpAddr, Target), u64>,
}

impl ObservedTracker {
    /// The connections each element counted since the previous call, for the elements
    /// with new ones. An element's counter restarts from zero when it expired or the
    /// table was rebuilt: a count below the last one is all new. Elements no longer
    /// listed are forgotten.
    pub fn update(&mut self, now: &[ObservedConnection]) -> Vec<(ObservedConnection, u64)> {
        let mut next = BTreeMap::new();
        let mut out = Vec::new();
        for o in now {
            let key = (o.iface.clone(), o.addr, o.endpoint);
            let delta = match self.last.get(&key) {
                Some(&l) if o.connections >= l => o.connections - l,
                _ => o.connections,
            };
            next.insert(key, o.connections);
            if delta > 0 {
                out.push((o.clone(), delta));
            }
        }
        self.last = next;
        out
    }
}

/// New connections of one pod (or of sources no pod has) to one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// The pod's namespace; `None` for unknown sources.
    pub namespace: Option<String>,
    /// The pod's name; `None` for unknown sources.
    pub pod: Option<String>,
    /// The endpoint; `None` for a hostNetwork pod's (counted per pod).
    pub endpoint: Option<Target>,
    /// The (interface, address) pairs the connections came from (none for a
    /// hostNetwork pod's).
    pub sources: Vec<(String, IpAddr)>,
    /// A hostNetwork pod's cgroup directory (or the pod root, for sockets under it no
    /// pod rule names).
    pub cgroup: Option<String>,
    /// How the sources were matched to the pod: `pair`, `interface`, `unknown` (the
    /// weakest of them), `cgroup`, `unknown-pod-cgroup`.
    pub matched_by: &'static str,
    /// New connections since the last read.
    pub connections: u64,
}

impl Observation {
    /// The (namespace, pod) labels: `("", "unknown")` for unknown sources.
    pub fn pod_labels(&self) -> (String, String) {
        match (&self.namespace, &self.pod) {
            (Some(n), Some(p)) => (n.clone(), p.clone()),
            _ => (String::new(), UNKNOWN_POD.to_owned()),
        }
    }
}

/// Groups new connections per (pod, endpoint); unknown sources together per endpoint.
/// Ordered by pod (unknown first), then endpoint (by address, protocol, port).
pub fn observations(pods: &PodIndex, new: &[(ObservedConnection, u64)]) -> Vec<Observation> {
    let mut by: BTreeMap<(Option<(String, String)>, Target), Observation> = BTreeMap::new();
    for (o, n) in new {
        let (pod, attribution) = pods.attribute(&o.iface, o.addr);
        let id = pod.map(|p| (p.info.namespace.clone(), p.info.name.clone()));
        let entry = by
            .entry((id.clone(), o.endpoint))
            .or_insert_with(|| Observation {
                namespace: id.as_ref().map(|(n, _)| n.clone()),
                pod: id.as_ref().map(|(_, p)| p.clone()),
                endpoint: Some(o.endpoint),
                sources: Vec::new(),
                cgroup: None,
                matched_by: attribution.as_str(),
                connections: 0,
            });
        entry.connections += n;
        if rank(attribution.as_str()) > rank(entry.matched_by) {
            entry.matched_by = attribution.as_str();
        }
        let source = (o.iface.clone(), o.addr);
        if !entry.sources.contains(&source) {
            entry.sources.push(source);
        }
    }
    by.into_values().collect()
}

/// The order of `imdsguard_core::pods::Attribution`'s names, weakest last.
fn rank(matched_by: &str) -> u8 {
    match matched_by {
        "pair" => 0,
        "interface" => 1,
        _ => 2,
    }
}

/// The label sets of `imdsguard_agent_observed_connections_total` and their totals, kept
/// to the pods of the index.
#[derive(Debug, Clone, Default)]
pub struct ObservedSeries {
    totals: BTreeMap<(String, String, String), u64>,
}

impl ObservedSeries {
    /// Counts `o` and returns its labels (namespace, pod, endpoint) and whether this
    /// pod and endpoint are new here, with the total so far.
    pub fn count(&mut self, o: &Observation) -> ((String, String, String), bool, u64) {
        let (namespace, pod) = o.pod_labels();
        let key = (namespace, pod, endpoint_name(o.endpoint.as_ref()));
        let first = !self.totals.contains_key(&key);
        let total = self.totals.entry(key.clone()).or_default();
        *total += o.connections;
        let total = *total;
        (key, first, total)
    }

    /// Forgets the label sets of pods no longer in `pods` (its pods with addresses and
    /// its hostNetwork pods; unknown sources stay); the caller removes them from the
    /// metric.
    pub fn retain_pods(&mut self, pods: &PodIndex) -> Vec<(String, String, String)> {
        let present: BTreeSet<(&str, &str)> = pods
            .pods()
            .iter()
            .chain(pods.host_network_pods())
            .map(|p| (p.info.namespace.as_str(), p.info.name.as_str()))
            .collect();
        let gone: Vec<(String, String, String)> = self
            .totals
            .keys()
            .filter(|(n, p, _)| !n.is_empty() && !present.contains(&(n.as_str(), p.as_str())))
            .cloned()
            .collect();
        for k in &gone {
            self.totals.remove(k);
        }
        gone
    }

    /// How many label sets exist.
    pub fn len(&self) -> usize {
        self.totals.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.totals.is_empty()
    }
}

/// One `INFO` record (target `imdsguard::observed`, message `metadata access
/// observed`): pod, namespace, endpoint, interface, address, connections (new since the
/// last check), total (since the pod and endpoint were first seen), first (whether this
/// is the first record of this pod and endpoint), matched_by.
pub fn log(o: &Observation, first: bool, total: u64) {
    let (namespace, pod) = o.pod_labels();
    let interfaces: Vec<&str> = o.sources.iter().map(|(i, _)| i.as_str()).collect();
    let addresses: Vec<String> = o.sources.iter().map(|(_, a)| a.to_string()).collect();
    let mut interfaces = interfaces;
    interfaces.dedup();
    match (&o.cgroup, &o.endpoint) {
        (Some(cgroup), _) => tracing::info!(
            target: "imdsguard::observed",
            pod = %pod,
            namespace = %namespace,
            endpoint = %endpoint_name(o.endpoint.as_ref()),
            host_network = true,
            cgroup = %cgroup,
            connections = o.connections,
            total,
            first,
            matched_by = o.matched_by,
            "metadata access observed"
        ),
        (None, endpoint) => tracing::info!(
            target: "imdsguard::observed",
            pod = %pod,
            namespace = %namespace,
            endpoint = %endpoint_name(endpoint.as_ref()),
            target_address = %endpoint.map_or_else(String::new, |t| t.to_string()),
            interface = %interfaces.join(","),
            address = %addresses.join(","),
            connections = o.connections,
            total,
            first,
            matched_by = o.matched_by,
            "metadata access observed"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imdsguard_core::target::{IMDS, WIRESERVER};

    fn lab() -> PodIndex {
        PodIndex::parse(
            "
- {ips: [10.244.0.11, 'fd00::11'], namespace: apps, name: web, interface: azvweb}
- {ip: 10.244.1.10, namespace: batch, name: a, interface: cbr0}
- {ip: 10.244.1.11, namespace: batch, name: b, interface: cbr0}
",
        )
        .unwrap()
    }

    fn seen(iface: &str, addr: &str, endpoint: Target, connections: u64) -> ObservedConnection {
        ObservedConnection {
            iface: iface.into(),
            addr: addr.parse().unwrap(),
            endpoint,
            connections,
        }
    }

    #[test]
    fn only_new_connections_are_reported_per_source_and_endpoint() {
        let mut t = ObservedTracker::default();
        let first = t.update(&[
            seen("azvweb", "10.244.0.11", IMDS, 2),
            seen("azvweb", "10.244.0.11", WIRESERVER, 1),
        ]);
        assert_eq!(first.iter().map(|f| f.1).collect::<Vec<_>>(), [2, 1]);
        assert!(
            t.update(&[
                seen("azvweb", "10.244.0.11", IMDS, 2),
                seen("azvweb", "10.244.0.11", WIRESERVER, 1),
            ])
            .is_empty()
        );
        let more = t.update(&[seen("azvweb", "10.244.0.11", IMDS, 5)]);
        assert_eq!(more.len(), 1);
        assert_eq!((more[0].0.endpoint, more[0].1), (IMDS, 3));
        // Expired and back (or the table rebuilt): all new.
        assert_eq!(t.update(&[seen("azvweb", "10.244.0.11", IMDS, 1)])[0].1, 1);
        // The WireServer element was forgotten when it left the listing.
        assert_eq!(
            t.update(&[seen("azvweb", "10.244.0.11", WIRESERVER, 1)])[0].1,
            1
        );
    }

    #[test]
    fn connections_add_up_per_pod_and_endpoint() {
        let new = vec![
            (seen("azvweb", "10.244.0.11", IMDS, 2), 2),
            (seen("azvweb", "fd00::11", IMDS, 1), 1),
            (seen("azvweb", "10.244.0.11", WIRESERVER, 4), 4),
            (seen("cbr0", "10.244.1.10", IMDS, 3), 3),
            // Borrowed on the bridge: no pod; on web's veth: web (its only pod).
            (seen("cbr0", "10.244.1.99", IMDS, 1), 1),
            (seen("azvgone", "10.244.0.99", IMDS, 6), 6),
            (seen("azvweb", "10.244.0.77", WIRESERVER, 1), 1),
        ];
        let obs = observations(&lab(), &new);
        let summary: Vec<(String, String, String, u64)> = obs
            .iter()
            .map(|o| {
                let (n, p) = o.pod_labels();
                (n, p, endpoint_name(o.endpoint.as_ref()), o.connections)
            })
            .collect();
        let row = |n: &str, p: &str, e: &str, c: u64| (n.into(), p.into(), e.into(), c);
        assert_eq!(
            summary,
            [
                row("", "unknown", "Azure IMDS", 7),
                row("apps", "web", "Azure WireServer", 5),
                row("apps", "web", "Azure IMDS", 3),
                row("batch", "a", "Azure IMDS", 3),
            ]
        );
        assert_eq!(obs[1].matched_by, "interface", "the weakest");
        assert_eq!(obs[2].sources.len(), 2, "both of web's addresses");
        assert_eq!(obs[2].matched_by, "pair");
        assert_eq!(obs[0].matched_by, "unknown");
        assert_eq!(endpoint_name(None), ANY_ENDPOINT);
        assert!(observations(&lab(), &[]).is_empty());
    }

    #[test]
    fn series_count_totals_and_leave_with_their_pods() {
        let new = vec![
            (seen("azvweb", "10.244.0.11", IMDS, 2), 2),
            (seen("cbr0", "10.244.1.10", IMDS, 1), 1),
            (seen("azvgone", "10.244.0.99", IMDS, 1), 1),
        ];
        let mut series = ObservedSeries::default();
        let obs = observations(&lab(), &new);
        let counted: Vec<_> = obs.iter().map(|o| series.count(o)).collect();
        assert!(counted.iter().all(|(_, first, _)| *first));
        let again = series.count(&obs[1]);
        assert_eq!(
            again,
            (("apps".into(), "web".into(), "Azure IMDS".into()), false, 4)
        );
        assert_eq!(series.len(), 3);
        // batch/a leaves the node: its label set goes; unknown stays.
        let without_a = PodIndex::parse(
            "- {ips: [10.244.0.11], namespace: apps, name: web, interface: azvweb}",
        )
        .unwrap();
        assert_eq!(
            series.retain_pods(&without_a),
            [("batch".into(), "a".into(), "Azure IMDS".into())]
        );
        assert_eq!(series.len(), 2);
        assert!(series.retain_pods(&without_a).is_empty());
        // A hostNetwork pod's label set (counted from the host table) stays while the
        // pod does.
        let host = Observation {
            namespace: Some("debug".into()),
            pod: Some("shell".into()),
            endpoint: None,
            sources: Vec::new(),
            cgroup: Some("kubepods.slice/kubepods-podx.slice".into()),
            matched_by: "cgroup",
            connections: 2,
        };
        assert_eq!(
            series.count(&host).0,
            ("debug".into(), "shell".into(), ANY_ENDPOINT.into())
        );
        let with_shell = PodIndex::parse(
            "- {ips: [10.244.0.11], namespace: apps, name: web, interface: azvweb}
- {namespace: debug, name: shell, hostNetwork: true, uid: 0a1b2c3d-0000-4000-8000-0000000000b2}",
        )
        .unwrap();
        assert!(series.retain_pods(&with_shell).is_empty());
        assert_eq!(
            series.retain_pods(&without_a),
            [("debug".into(), "shell".into(), ANY_ENDPOINT.into())]
        );
    }
}
