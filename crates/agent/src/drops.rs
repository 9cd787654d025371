//! Drops named by pod: the table records each dropped (interface, source address) pair
//! with a packet counter (`dropped_v4` / `dropped_v6`, see [`imdsguard_core::nft`]); every
//! tick the agent reads them ([`imdsguard_node::Enforcer::dropped_sources`]), keeps what
//! is new since the last read ([`DropTracker`]), maps each pair to a pod of the pod
//! index ([`PodIndex::attribute`], the core's one answer to "which pod is this?"),
//! and hands one [`DropEvent`] per pod to its [`EventSink`]s
//! (the log, [`LogSink`]; Kubernetes Events can be another sink).
//!
//! No NFLOG parsing: the kernel keeps the per-source counts.

use std::collections::BTreeMap;
use std::net::IpAddr;

use imdsguard_core::nft::DroppedSource;
pub use imdsguard_core::pods::Attribution;
use imdsguard_core::pods::PodIndex;

/// The `pod` label of drops from a source no pod of the index has.
pub const UNKNOWN_POD: &str = "unknown";

/// One dropped source's new packets since the last read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceDrops {
    /// The interface the packets entered the node on.
    pub interface: String,
    /// Their source address.
    pub address: IpAddr,
    /// Packets dropped since the last read.
    pub packets: u64,
    /// How the source was matched to the event's pod.
    pub attribution: Attribution,
}

/// New drops of one pod (or of one unknown source) since the last read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropEvent {
    /// The pod's namespace; `None` for an unknown source.
    pub namespace: Option<String>,
    /// The pod's name; `None` for an unknown source.
    pub pod: Option<String>,
    /// The sources, one per (interface, address) pair (a dual-stack pod has two).
    pub sources: Vec<SourceDrops>,
}

impl DropEvent {
    /// Packets dropped, all sources together.
    pub fn packets(&self) -> u64 {
        self.sources.iter().map(|s| s.packets).sum()
    }

    /// `namespace/name`, or `unknown`.
    pub fn pod_id(&self) -> String {
        match (&self.namespace, &self.pod) {
            (Some(ns), Some(name)) => format!("{ns}/{name}"),
            _ => UNKNOWN_POD.to_owned(),
        }
    }

    /// The interfaces, comma-separated.
    pub fn interfaces(&self) -> String {
        join(self.sources.iter().map(|s| s.interface.clone()))
    }

    /// The addresses, comma-separated.
    pub fn addresses(&self) -> String {
        join(self.sources.iter().map(|s| s.address.to_string()))
    }
}

fn join(items: impl Iterator<Item = String>) -> String {
    let mut v: Vec<String> = items.collect();
    v.dedup();
    v.join(",")
}

/// Where drop events go. Called from the agent's periodic task (a blocking thread):
/// keep it quick, or hand the event to a task of your own.
pub trait EventSink: Send + Sync {
    /// New drops of one pod (or unknown source).
    fn drops(&self, event: &DropEvent);
}

/// Logs each event as one structured `WARN` record (target `imdsguard::drops`): pod,
/// namespace, interface, address, packets.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogSink;

impl EventSink for LogSink {
    fn drops(&self, e: &DropEvent) {
        let attribution = e
            .sources
            .iter()
            .map(|s| s.attribution)
            .max()
            .unwrap_or(Attribution::Unknown);
        tracing::warn!(
            target: "imdsguard::drops",
            pod = e.pod.as_deref().unwrap_or(UNKNOWN_POD),
            namespace = e.namespace.as_deref().unwrap_or(""),
            interface = %e.interfaces(),
            address = %e.addresses(),
            packets = e.packets(),
            matched_by = attribution.as_str(),
            "metadata access dropped"
        );
    }
}

/// Packet counts of the dropped sources as last read, to tell what is new.
#[derive(Debug, Clone, Default)]
pub struct DropTracker {
    last: BTreeMap<(String, IpAddr), u64>,
}

impl DropTracker {
    /// The packets each source dropped since the previous call, for the sources with
    /// new drops. An element's counter restarts from zero when it expired or the table
    /// was rebuilt: a count below the last one is all new. Sources no longer listed are
    /// forgotten.
    pub fn update(&mut self, now: &[DroppedSource]) -> Vec<(DroppedSource, u64)> {
        let mut next = BTreeMap::new();
        let mut out = Vec::new();
        for d in now {
            let key = (d.iface.clone(), d.addr);
            let delta = match self.last.get(&key) {
                Some(&l) if d.packets >= l => d.packets - l,
                _ => d.packets,
            };
            next.insert(key, d.packets);
            if delta > 0 {
                out.push((d.clone(), delta));
            }
        }
        self.last = next;
        out
    }
}

/// Groups new drops into events: one per pod (attributed sources of a pod together),
/// one per unknown source. Ordered by pod, unknown sources last.
pub fn events(pods: &PodIndex, new: &[(DroppedSource, u64)]) -> Vec<DropEvent> {
    let mut by_pod: BTreeMap<(String, String), Vec<SourceDrops>> = BTreeMap::new();
    let mut unknown = Vec::new();
    for (d, packets) in new {
        let (pod, attribution) = pods.attribute(&d.iface, d.addr);
        let source = SourceDrops {
            interface: d.iface.clone(),
            address: d.addr,
            packets: *packets,
            attribution,
        };
        match pod {
            Some(p) => by_pod
                .entry((p.info.namespace.clone(), p.info.name.clone()))
                .or_default()
                .push(source),
            None => unknown.push(DropEvent {
                namespace: None,
                pod: None,
                sources: vec![source],
            }),
        }
    }
    by_pod
        .into_iter()
        .map(|((namespace, pod), sources)| DropEvent {
            namespace: Some(namespace),
            pod: Some(pod),
            sources,
        })
        .chain(unknown)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lab's pods; attribution itself is tested beside [`PodIndex::attribute`].
    fn lab() -> PodIndex {
        PodIndex::parse(
            "
- {ips: [10.244.0.11, 'fd00::11'], namespace: apps, name: web, interface: azvweb}
- {ip: 10.244.0.10, namespace: apps, name: allowed, interface: azvallowed}
- {ip: 10.244.1.10, namespace: batch, name: a, interface: cbr0}
- {ip: 10.244.1.11, namespace: batch, name: b, interface: cbr0}
- {ip: 10.244.2.1, namespace: batch, name: nowhere}
",
        )
        .unwrap()
    }

    fn src(iface: &str, addr: &str, packets: u64) -> DroppedSource {
        DroppedSource {
            iface: iface.into(),
            addr: addr.parse().unwrap(),
            packets,
            bytes: packets * 60,
        }
    }

    #[test]
    fn only_new_drops_are_reported_and_resets_count_in_full() {
        let mut t = DropTracker::default();
        let first = t.update(&[src("azvweb", "10.244.0.11", 3)]);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].1, 3);
        assert!(t.update(&[src("azvweb", "10.244.0.11", 3)]).is_empty());
        let more = t.update(&[
            src("azvweb", "10.244.0.11", 5),
            src("azvx", "10.244.0.99", 1),
        ]);
        assert_eq!(more.iter().map(|m| m.1).collect::<Vec<_>>(), [2, 1]);
        // The element expired and came back (or the table was rebuilt): 2 new packets.
        assert_eq!(t.update(&[src("azvweb", "10.244.0.11", 2)])[0].1, 2);
        // Forgotten when gone, so a return counts from zero.
        assert!(t.update(&[]).is_empty());
        assert_eq!(t.update(&[src("azvweb", "10.244.0.11", 2)])[0].1, 2);
    }

    #[test]
    fn one_event_per_pod_and_per_unknown_source() {
        let new = vec![
            (src("azvweb", "10.244.0.11", 2), 2),
            (src("azvweb", "fd00::11", 1), 1),
            (src("cbr0", "10.244.1.10", 4), 4),
            (src("azvgone", "10.244.0.99", 1), 1),
            (src("cbr0", "10.244.0.10", 7), 7),
        ];
        let ev = events(&lab(), &new);
        let summary: Vec<(String, u64)> = ev.iter().map(|e| (e.pod_id(), e.packets())).collect();
        assert_eq!(
            summary,
            [
                ("apps/web".to_owned(), 3),
                ("batch/a".to_owned(), 4),
                ("unknown".to_owned(), 1),
                ("unknown".to_owned(), 7),
            ]
        );
        assert_eq!(ev[0].interfaces(), "azvweb");
        assert_eq!(ev[0].addresses(), "10.244.0.11,fd00::11");
        assert!(events(&lab(), &[]).is_empty());
    }
}
