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
use std::time::{Duration, Instant};

use imdsguard_core::decisions::{DROP_MESSAGE, DROP_TARGET, WOULD_DROP_MESSAGE};
use imdsguard_core::nft::DroppedSource;
pub use imdsguard_core::pods::Attribution;
use imdsguard_core::pods::PodIndex;

/// The `pod` label of drops from a source no pod of the index has.
pub const UNKNOWN_POD: &str = "unknown";

/// The `pod` label of drops from a pod that found [`PodSeries`] full.
pub const OTHER_PODS: &str = "other";

/// At most this many (namespace, pod) label sets in `imdsguard_agent_drops_total`; past
/// it, drops of further pods count under `namespace="",pod="other"`.
pub const MAX_POD_SERIES: usize = 1000;

/// A pod's label set leaves `imdsguard_agent_drops_total` this long after its last new
/// drop (its count restarts from zero if it drops again: a counter reset to Prometheus).
pub const POD_SERIES_TTL: Duration = Duration::from_secs(15 * 60);

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

/// New drops of a hostNetwork pod (or of sockets in an unknown pod cgroup) since the last
/// read: the host table counts them per pod cgroup, not per address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDrops {
    /// The pod's cgroup directory (relative to the cgroup2 mount), or the pod root for
    /// sockets under it that no pod rule names.
    pub cgroup: String,
    /// Packets dropped since the last read.
    pub packets: u64,
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
    /// A hostNetwork pod's drops on the node's output path (matched by its sockets'
    /// cgroup, `sources` empty).
    pub host: Option<HostDrops>,
    /// A dry run: the table let these packets through; enforcing would have dropped
    /// them. Logged as a would-drop, never a Kubernetes Event.
    pub would_drop: bool,
}

impl DropEvent {
    /// Packets dropped, all sources together.
    pub fn packets(&self) -> u64 {
        self.sources.iter().map(|s| s.packets).sum::<u64>()
            + self.host.as_ref().map_or(0, |h| h.packets)
    }

    /// How the event's pod was found: `pair`, `interface`, `unknown` (the weakest of
    /// its sources), `cgroup` for a hostNetwork pod, `unknown-pod-cgroup` for sockets
    /// in a pod cgroup no known pod has.
    pub fn matched_by(&self) -> &'static str {
        match (&self.host, &self.pod) {
            (Some(_), Some(_)) => "cgroup",
            (Some(_), None) => "unknown-pod-cgroup",
            (None, _) => self
                .sources
                .iter()
                .map(|s| s.attribution)
                .max()
                .unwrap_or(Attribution::Unknown)
                .as_str(),
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
        let pod = e.pod.as_deref().unwrap_or(UNKNOWN_POD);
        let namespace = e.namespace.as_deref().unwrap_or("");
        if e.would_drop {
            let (cgroup, interface, address) = match &e.host {
                Some(h) => (Some(h.cgroup.as_str()), None, None),
                None => (None, Some(e.interfaces()), Some(e.addresses())),
            };
            tracing::info!(
                target: DROP_TARGET,
                pod,
                namespace,
                host_network = e.host.is_some(),
                cgroup,
                interface,
                address,
                packets = e.packets(),
                matched_by = e.matched_by(),
                would_drop = true,
                "{}",
                WOULD_DROP_MESSAGE
            );
            return;
        }
        match &e.host {
            Some(h) => tracing::warn!(
                target: DROP_TARGET,
                pod,
                namespace,
                host_network = true,
                cgroup = %h.cgroup,
                packets = e.packets(),
                matched_by = e.matched_by(),
                "{}",
                DROP_MESSAGE
            ),
            None => tracing::warn!(
                target: DROP_TARGET,
                pod,
                namespace,
                interface = %e.interfaces(),
                address = %e.addresses(),
                packets = e.packets(),
                matched_by = e.matched_by(),
                "{}",
                DROP_MESSAGE
            ),
        }
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
/// one per unknown source. Ordered by pod, unknown sources last. `would_drop`: a dry
/// run's (the table let them through).
pub fn events(pods: &PodIndex, new: &[(DroppedSource, u64)], would_drop: bool) -> Vec<DropEvent> {
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
                host: None,
                would_drop,
            }),
        }
    }
    by_pod
        .into_iter()
        .map(|((namespace, pod), sources)| DropEvent {
            namespace: Some(namespace),
            pod: Some(pod),
            sources,
            host: None,
            would_drop,
        })
        .chain(unknown)
        .collect()
}

/// The per-pod label sets of `imdsguard_agent_drops_total`, kept bounded as pods come
/// and go: a label set expires [`POD_SERIES_TTL`] after its last new drop, and no more
/// than a cap of them exist at once (further pods share `pod="other"`).
#[derive(Debug, Clone)]
pub struct PodSeries {
    last: BTreeMap<(String, String), Instant>,
    max: usize,
    ttl: Duration,
}

impl Default for PodSeries {
    fn default() -> Self {
        PodSeries::new(MAX_POD_SERIES, POD_SERIES_TTL)
    }
}

impl PodSeries {
    /// At most `max` label sets (the two shared ones, `unknown` and `other`, aside),
    /// each kept `ttl` after its last use.
    pub fn new(max: usize, ttl: Duration) -> PodSeries {
        PodSeries {
            last: BTreeMap::new(),
            max,
            ttl,
        }
    }

    /// The (namespace, pod) labels to count `event` under at `now`.
    pub fn labels(&mut self, event: &DropEvent, now: Instant) -> (String, String) {
        let (Some(namespace), Some(pod)) = (&event.namespace, &event.pod) else {
            return (String::new(), UNKNOWN_POD.to_owned());
        };
        let key = (namespace.clone(), pod.clone());
        if !self.last.contains_key(&key) && self.last.len() >= self.max {
            return (String::new(), OTHER_PODS.to_owned());
        }
        self.last.insert(key.clone(), now);
        key
    }

    /// The label sets whose last drop is `ttl` or more before `now`, forgotten here; the
    /// caller removes them from the metric.
    pub fn expire(&mut self, now: Instant) -> Vec<(String, String)> {
        let ttl = self.ttl;
        let old: Vec<(String, String)> = self
            .last
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(**at) >= ttl)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &old {
            self.last.remove(k);
        }
        old
    }

    /// How many per-pod label sets exist.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
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
        let ev = events(&lab(), &new, false);
        let pod_id = |e: &DropEvent| match (&e.namespace, &e.pod) {
            (Some(ns), Some(name)) => format!("{ns}/{name}"),
            _ => UNKNOWN_POD.to_owned(),
        };
        let summary: Vec<(String, u64)> = ev.iter().map(|e| (pod_id(e), e.packets())).collect();
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
        assert_eq!(ev[0].matched_by(), "pair");
        assert_eq!(ev[3].matched_by(), "unknown");
        assert_eq!(ev[0].addresses(), "10.244.0.11,fd00::11");
        assert!(events(&lab(), &[], false).is_empty());
        assert!(ev.iter().all(|e| !e.would_drop));
        // A dry run's are the same events, each a would-drop.
        let dry = events(&lab(), &new, true);
        assert!(dry.iter().all(|e| e.would_drop));
        let strip = |v: Vec<DropEvent>| {
            v.into_iter()
                .map(|mut e| {
                    e.would_drop = false;
                    e
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(dry), ev);
    }

    fn event(namespace: Option<&str>, pod: Option<&str>) -> DropEvent {
        DropEvent {
            namespace: namespace.map(str::to_owned),
            pod: pod.map(str::to_owned),
            sources: Vec::new(),
            host: None,
            would_drop: false,
        }
    }

    #[test]
    fn pod_series_are_capped_and_expire() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        let mut series = PodSeries::new(2, ttl);
        let pair = |n: &str, p: &str| (n.to_owned(), p.to_owned());
        assert_eq!(
            series.labels(&event(Some("a"), Some("one")), t0),
            pair("a", "one")
        );
        assert_eq!(
            series.labels(&event(Some("a"), Some("two")), t0),
            pair("a", "two")
        );
        // Full: a third pod shares `other`, a known pod keeps its own labels.
        assert_eq!(
            series.labels(&event(Some("b"), Some("three")), t0),
            pair("", OTHER_PODS)
        );
        assert_eq!(series.labels(&event(None, None), t0), pair("", UNKNOWN_POD));
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(
            series.labels(&event(Some("a"), Some("two")), t1),
            pair("a", "two")
        );
        assert_eq!(series.len(), 2);
        // `one` has had no new drop for the ttl; `two` dropped again 30 s later.
        assert_eq!(series.expire(t0 + ttl), [pair("a", "one")]);
        assert_eq!(series.len(), 1);
        // Room again: the third pod gets labels of its own.
        let t2 = t0 + ttl;
        assert_eq!(
            series.labels(&event(Some("b"), Some("three")), t2),
            pair("b", "three")
        );
        assert_eq!(series.expire(t1 + ttl), [pair("a", "two")]);
        assert_eq!(series.expire(t2 + ttl), [pair("b", "three")]);
        assert!(series.is_empty());
    }
}
