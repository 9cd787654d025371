//! `--kubernetes`: the node's pods from a Kubernetes watch ([`imdsguard_kube::PodWatch`])
//! instead of the pods file, and drop events as Kubernetes Events on the pods
//! ([`KubeEventSink`]).

use std::sync::Arc;

use imdsguard_core::nft::RulesetConfig;
use imdsguard_core::pods::PodIndex;
use imdsguard_kube::{BlockedAccess, EventReporter, Snapshot};
use tokio::sync::watch;

use crate::drops::{DropEvent, EventSink};

/// The node's pods of a watch snapshot: the index the watch built with the core's one
/// policy ([`PodIndex::from_pods`]: finished and hostNetwork pods own nothing, a live
/// pod wins over a terminating one, two live pods on one address name neither and are
/// reported in [`PodIndex::issues`]).
pub fn node_pods(snapshot: &Snapshot) -> PodIndex {
    snapshot.index().clone()
}

/// The protected endpoints by name (`Azure IMDS, Azure WireServer`), for the Events.
pub fn endpoint_names(config: &RulesetConfig) -> String {
    let mut names: Vec<String> = Vec::new();
    for t in &config.protected {
        let name = t
            .service()
            .map_or_else(|| t.to_string(), |e| e.label().to_owned());
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names.join(", ")
}

/// Drop events as Kubernetes `Warning` Events (`MetadataAccessBlocked`) on the pods
/// ([`EventReporter`]: kube-runtime's Recorder, at most one publish per pod per
/// period); sources no pod has are left to the log, and so are a dry run's
/// would-drops ([`DropEvent::would_drop`]: nothing was blocked).
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
        if e.would_drop {
            return;
        }
        let (Some(namespace), Some(pod)) = (&e.namespace, &e.pod) else {
            return;
        };
        let uid = self
            .pods
            .borrow()
            .as_ref()
            .and_then(|s| s.get(namespace, pod)?.uid.clone());
        self.reporter.report(BlockedAccess {
            namespace: namespace.clone(),
            pod: pod.clone(),
            uid,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imdsguard_core::pods::{NodePod, PodInfo, PodIssue, PodPhase};

    fn entry(name: &str, iface: Option<&str>, addrs: &[&str]) -> NodePod {
        let mut p = NodePod::new(
            PodInfo::new("shop", name),
            addrs.iter().map(|a| a.parse().unwrap()),
        );
        p.interface = iface.map(str::to_owned);
        p
    }

    #[test]
    fn a_snapshot_gives_the_index_and_the_pairs() {
        let mut done = entry("done", Some("azvdone"), &["10.244.0.14"]);
        done.phase = PodPhase::Succeeded;
        let s = Snapshot::new([
            entry("web", Some("azvweb"), &["10.244.0.11", "fd00::11"]),
            entry("api", None, &["10.244.0.12"]),
            entry("old", Some("azvold"), &["10.244.0.13"]),
            entry("new", Some("azvnew"), &["10.244.0.13"]),
            done,
            entry("next", Some("azvnext"), &["10.244.0.14"]),
        ]);
        let pods = node_pods(&s);
        assert_eq!(pods.len(), 4);
        assert_eq!(
            pods.get("10.244.0.12".parse().unwrap()).unwrap().id(),
            "shop/api"
        );
        // Two live pods on one address: neither, and reported.
        assert!(pods.get("10.244.0.13".parse().unwrap()).is_none());
        assert!(matches!(
            pods.issues(),
            [PodIssue::AddressConflict { pods, .. }] if pods == &["shop/new", "shop/old"]
        ));
        // A finished pod's address is its successor's.
        assert_eq!(
            pods.get("10.244.0.14".parse().unwrap()).unwrap().id(),
            "shop/next"
        );
        let known: Vec<String> = pods.known_pairs().iter().map(|p| p.to_string()).collect();
        assert_eq!(known.len(), 3, "{known:?}");
        assert_eq!(pods.without_interface(), ["shop/api"]);
    }
}
