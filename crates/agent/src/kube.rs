//! `--kubernetes`: the node's pods from a Kubernetes watch ([`imdsguard_kube::PodWatch`])
//! instead of the pods file, and drop events as Kubernetes Events on the pods
//! ([`KubeEventSink`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use imdsguard_core::access::PodIndex;
use imdsguard_core::nft::RulesetConfig;
use imdsguard_kube::{BlockedAccess, EventReporter, Snapshot};
use tokio::sync::watch;

use crate::drops::{DropEvent, EventSink};
use crate::pods::{NodePod, NodePods};

/// The node's pods of a watch snapshot: the proxy's index and the pairs. An address two
/// pods claim (a finished pod's, reused) names neither: both are logged and left out of
/// the index for it.
pub fn node_pods(snapshot: &Snapshot) -> NodePods {
    let mut claims: HashMap<IpAddr, usize> = HashMap::new();
    for p in &snapshot.pods {
        for a in &p.pod.addrs {
            *claims.entry(a.to_canonical()).or_default() += 1;
        }
    }
    let unique = |a: &IpAddr| claims.get(&a.to_canonical()) == Some(&1);
    let mut pods = Vec::new();
    let mut entries = Vec::new();
    for p in &snapshot.pods {
        let addrs: Vec<IpAddr> = p.pod.addrs.iter().copied().filter(unique).collect();
        if addrs.len() != p.pod.addrs.len() {
            tracing::warn!(pod = %p.pod.info.id(), "an address of this pod is also another pod's: left out");
        }
        entries.extend(addrs.iter().map(|a| (*a, p.pod.info.clone())));
        pods.push(NodePod {
            namespace: p.pod.info.namespace.clone(),
            name: p.pod.info.name.clone(),
            interface: p.interface.clone(),
            addrs,
        });
    }
    let index = PodIndex::from_pods(entries).unwrap_or_else(|e| {
        tracing::error!(error = %e, "pod index");
        PodIndex::new()
    });
    NodePods { index, pods }
}

/// The protected endpoints by name (`Azure IMDS, Azure WireServer`), for the Events.
pub fn endpoint_names(config: &RulesetConfig) -> String {
    let mut names: Vec<String> = Vec::new();
    for t in &config.protected {
        let name = t
            .endpoint()
            .map_or_else(|| t.to_string(), |e| e.label().to_owned());
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names.join(", ")
}

/// Drop events as Kubernetes `Warning` Events (`MetadataAccessBlocked`) on the pods,
/// rate-limited per pod ([`EventReporter`]); sources no pod has are left to the log.
pub struct KubeEventSink {
    reporter: EventReporter,
    pods: watch::Receiver<Option<Arc<Snapshot>>>,
}

impl KubeEventSink {
    /// Events through `reporter`, the pods' UIDs from `pods`.
    pub fn new(reporter: EventReporter, pods: watch::Receiver<Option<Arc<Snapshot>>>) -> Self {
        KubeEventSink { reporter, pods }
    }
}

impl EventSink for KubeEventSink {
    fn drops(&self, e: &DropEvent) {
        let (Some(namespace), Some(pod)) = (&e.namespace, &e.pod) else {
            return;
        };
        let uid = self
            .pods
            .borrow()
            .as_ref()
            .and_then(|s| s.get(namespace, pod)?.pod.uid.clone());
        self.reporter.report(BlockedAccess {
            namespace: namespace.clone(),
            pod: pod.clone(),
            uid,
            packets: e.packets(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imdsguard_core::access::PodInfo;
    use imdsguard_kube::{KubePod, NodePodEntry};

    fn entry(name: &str, iface: Option<&str>, addrs: &[&str]) -> NodePodEntry {
        NodePodEntry {
            pod: KubePod {
                info: PodInfo {
                    namespace: "shop".into(),
                    name: name.into(),
                    labels: Default::default(),
                    service_account: "default".into(),
                },
                uid: None,
                addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
                interface_annotation: None,
            },
            interface: iface.map(str::to_owned),
        }
    }

    #[test]
    fn a_snapshot_gives_the_index_and_the_pairs() {
        let s = Snapshot {
            pods: vec![
                entry("web", Some("azvweb"), &["10.244.0.11", "fd00::11"]),
                entry("api", None, &["10.244.0.12"]),
                entry("old", Some("azvold"), &["10.244.0.13"]),
                entry("new", Some("azvnew"), &["10.244.0.13"]),
            ],
        };
        let pods = node_pods(&s);
        assert_eq!(pods.index.len(), 3);
        assert_eq!(
            pods.index.get("10.244.0.12".parse().unwrap()).unwrap().id(),
            "shop/api"
        );
        assert!(pods.index.get("10.244.0.13".parse().unwrap()).is_none());
        let known: Vec<String> = pods
            .known_pairs()
            .iter()
            .map(|p| format!("{p:?}"))
            .collect();
        assert_eq!(known.len(), 2, "{known:?}");
        assert_eq!(pods.without_interface(), ["shop/api"]);
    }
}
