//! Kubernetes Events for blocked metadata access: one `Warning` Event, reason
//! `MetadataAccessBlocked`, on the pod whose packets to a protected endpoint were
//! dropped, at most one per pod per [`RateLimit`] period (the packets dropped meanwhile
//! are counted into the next one).
//!
//! The Events are core `v1` Events (`POST /api/v1/namespaces/NS/events`), posted from a
//! task of their own: [`EventReporter::report`] never waits for the API.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::Client;

/// The Events' reason.
pub const REASON: &str = "MetadataAccessBlocked";
/// The Events' reporting component.
pub const COMPONENT: &str = "imdsguard-agent";
/// The default period: one Event per pod per 5 minutes.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(300);

/// Packets of one pod dropped on their way to a protected endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedAccess {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The pod's UID, when known.
    pub uid: Option<String>,
    /// Packets dropped.
    pub packets: u64,
}

/// One Event per pod per period; what is held back is added to the next one.
#[derive(Debug, Clone)]
pub struct RateLimit {
    period: Duration,
    last: HashMap<(String, String), Instant>,
    held: HashMap<(String, String), u64>,
}

impl RateLimit {
    /// At most one Event per pod per `period`.
    pub fn new(period: Duration) -> RateLimit {
        RateLimit {
            period,
            last: HashMap::new(),
            held: HashMap::new(),
        }
    }

    /// `Some(packets)` (with those held back since the last Event) when an Event for
    /// this pod may go out at `now`; `None` when it is held back.
    pub fn admit(&mut self, namespace: &str, pod: &str, packets: u64, now: Instant) -> Option<u64> {
        let key = (namespace.to_owned(), pod.to_owned());
        let held = self.held.entry(key.clone()).or_insert(0);
        *held += packets;
        if let Some(last) = self.last.get(&key)
            && now.duration_since(*last) < self.period
        {
            return None;
        }
        let total = std::mem::take(held);
        self.held.remove(&key);
        self.last.insert(key, now);
        // Pods not heard of for a period have nothing held back: forget them.
        let period = self.period;
        self.last.retain(|_, t| now.duration_since(*t) < period * 2);
        let last = &self.last;
        self.held.retain(|k, _| last.contains_key(k));
        Some(total)
    }
}

/// The Event for `access` (pure): `Warning`, reason [`REASON`], involvedObject the pod,
/// the message naming the endpoints and the packet count. A classic core `v1` Event
/// (`firstTimestamp`, `lastTimestamp`, `count`, `source`; no `eventTime`, which would
/// put it under the `events.k8s.io` rules).
pub fn blocked_event(access: &BlockedAccess, endpoints: &str, node: &str, now: Timestamp) -> Event {
    let plural = if access.packets == 1 { "" } else { "s" };
    Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", access.pod)),
            namespace: Some(access.namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(access.namespace.clone()),
            name: Some(access.pod.clone()),
            uid: access.uid.clone(),
            ..ObjectReference::default()
        },
        type_: Some("Warning".into()),
        reason: Some(REASON.into()),
        action: Some("Drop".into()),
        message: Some(format!(
            "imdsguard dropped {} packet{plural} from this pod to the cloud metadata endpoints ({endpoints}) on node {node}",
            access.packets
        )),
        count: Some(1),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        source: Some(EventSource {
            component: Some(COMPONENT.into()),
            host: Some(node.into()),
        }),
        reporting_component: Some(COMPONENT.into()),
        reporting_instance: Some(node.into()),
        ..Event::default()
    }
}

/// Posts [`blocked_event`]s from a task of its own, rate-limited per pod. Dropping it
/// stops the task.
#[derive(Debug)]
pub struct EventReporter {
    tx: mpsc::UnboundedSender<BlockedAccess>,
    task: JoinHandle<()>,
}

impl Drop for EventReporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EventReporter {
    /// Starts the task (needs a tokio runtime). `endpoints` names the protected
    /// endpoints in the message (`Azure IMDS, Azure WireServer`); `node` is the node.
    pub fn start(client: Client, node: &str, endpoints: &str, period: Duration) -> EventReporter {
        let (tx, mut rx) = mpsc::unbounded_channel::<BlockedAccess>();
        let node = node.to_owned();
        let endpoints = endpoints.to_owned();
        let task = tokio::spawn(async move {
            let mut limit = RateLimit::new(period);
            while let Some(mut access) = rx.recv().await {
                let Some(packets) = limit.admit(
                    &access.namespace,
                    &access.pod,
                    access.packets,
                    Instant::now(),
                ) else {
                    continue;
                };
                access.packets = packets;
                let event = blocked_event(&access, &endpoints, &node, Timestamp::now());
                let api: Api<Event> = Api::namespaced(client.clone(), &access.namespace);
                match api.create(&PostParams::default(), &event).await {
                    Ok(_) => tracing::debug!(
                        pod = %access.pod, namespace = %access.namespace, packets,
                        "MetadataAccessBlocked event posted"
                    ),
                    Err(e) => tracing::warn!(
                        pod = %access.pod, namespace = %access.namespace, error = %e,
                        "cannot post the MetadataAccessBlocked event"
                    ),
                }
            }
        });
        EventReporter { tx, task }
    }

    /// Queues an Event (never blocks; may be held back by the rate limit).
    pub fn report(&self, access: BlockedAccess) {
        let _ = self.tx.send(access);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_pod_per_period_with_the_held_packets() {
        let mut l = RateLimit::new(Duration::from_secs(300));
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(l.admit("a", "web", 3, t0), Some(3));
        assert_eq!(l.admit("a", "web", 2, t0 + s(10)), None);
        assert_eq!(l.admit("a", "api", 1, t0 + s(10)), Some(1));
        assert_eq!(l.admit("a", "web", 4, t0 + s(299)), None);
        assert_eq!(l.admit("a", "web", 1, t0 + s(300)), Some(7));
        assert_eq!(l.admit("a", "web", 1, t0 + s(301)), None);
        assert_eq!(l.admit("a", "web", 1, t0 + s(2000)), Some(2));
    }

    #[test]
    fn the_event_names_the_pod_the_endpoints_and_the_packets() {
        let access = BlockedAccess {
            namespace: "shop".into(),
            pod: "web".into(),
            uid: Some("u-1".into()),
            packets: 12,
        };
        let e = blocked_event(
            &access,
            "Azure IMDS, Azure WireServer",
            "node-a",
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reason.as_deref(), Some(REASON));
        assert_eq!(e.involved_object.kind.as_deref(), Some("Pod"));
        assert_eq!(e.involved_object.name.as_deref(), Some("web"));
        assert_eq!(e.involved_object.uid.as_deref(), Some("u-1"));
        assert_eq!(e.metadata.namespace.as_deref(), Some("shop"));
        let m = e.message.unwrap();
        assert!(
            m.contains("12 packets") && m.contains("Azure IMDS, Azure WireServer"),
            "{m}"
        );
    }
}
