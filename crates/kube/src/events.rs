//! Kubernetes Events for blocked metadata access: a `Warning` Event, reason
//! `MetadataAccessBlocked`, regarding the pod whose packets to a protected endpoint were
//! dropped, published with kube-runtime's [`Recorder`] (`events.k8s.io/v1`).
//!
//! The Recorder de-duplicates by itself: a repeat for the same pod within its cache
//! time (6 minutes) patches the first Event's `series` (`count`, `lastObservedTime`)
//! instead of creating another. What is left here is the cap that keeps a pod whose
//! drops never stop from writing to the API server at every agent tick: at most one
//! publish per pod per [`RateLimit`] period (reports in between are dropped, not
//! queued), its memory bounded (a pod's entry expires one period after its last
//! publish). Publishing happens on a task of its own: [`EventReporter::report`] never
//! waits for the API.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::Client;

/// The Events' reason.
pub const REASON: &str = "MetadataAccessBlocked";
/// The Events' action.
pub const ACTION: &str = "Drop";
/// The Events' reporting controller.
pub const COMPONENT: &str = "imdsguard-agent";
/// The default period: at most one publish per pod per minute (well inside the
/// Recorder's 6 minutes, so a pod that keeps trying stays on one Event whose series
/// count goes up once a minute).
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(60);
/// Publishes waiting for the API at most; reports beyond are dropped (and logged).
pub const QUEUE: usize = 256;
/// The API's limit on an Event's note, in bytes.
const NOTE_LIMIT: usize = 1024;

/// A pod whose packets to a protected endpoint were dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedAccess {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The pod's UID, when known.
    pub uid: Option<String>,
}

/// At most one publish per pod per period. Entries expire one period after they were
/// set, so the map holds only the pods admitted within the last period or two.
#[derive(Debug, Clone)]
pub struct RateLimit {
    period: Duration,
    last: HashMap<(String, String), Instant>,
    swept: Option<Instant>,
}

impl RateLimit {
    /// At most one publish per pod per `period`.
    pub fn new(period: Duration) -> RateLimit {
        RateLimit {
            period,
            last: HashMap::new(),
            swept: None,
        }
    }

    /// Whether an Event for this pod may go out at `now` (and if so, it counts as
    /// gone out).
    pub fn admit(&mut self, namespace: &str, pod: &str, now: Instant) -> bool {
        let period = self.period;
        if self
            .swept
            .is_none_or(|at| now.saturating_duration_since(at) >= period)
        {
            self.last
                .retain(|_, t| now.saturating_duration_since(*t) < period);
            self.swept = Some(now);
        }
        let key = (namespace.to_owned(), pod.to_owned());
        if let Some(last) = self.last.get(&key)
            && now.saturating_duration_since(*last) < period
        {
            return false;
        }
        self.last.insert(key, now);
        true
    }

    /// Pods remembered.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// Whether no pod is remembered.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

/// The pod an Event is about (`regarding`): `v1` `Pod`, namespace, name, UID.
pub fn pod_reference(access: &BlockedAccess) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(access.namespace.clone()),
        name: Some(access.pod.clone()),
        uid: access.uid.clone(),
        ..ObjectReference::default()
    }
}

/// The Event (pure): `Warning`, reason [`REASON`], action [`ACTION`], the note naming
/// the protected endpoints and the node. The same for every repeat (the Recorder keys
/// a series by type, reason, action and the pod), so no count in it: the series
/// counts.
pub fn blocked_event(endpoints: &str, node: &str) -> Event {
    let mut note = format!(
        "imdsguard dropped packets from this pod to the cloud metadata endpoints ({endpoints}) on node {node}"
    );
    if note.len() > NOTE_LIMIT {
        let mut end = NOTE_LIMIT - 3;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
    Event {
        type_: EventType::Warning,
        reason: REASON.into(),
        note: Some(note),
        action: ACTION.into(),
        secondary: None,
    }
}

/// Publishes [`blocked_event`]s through a [`Recorder`] from a task of its own, at most
/// one per pod per period. Dropping it stops the task.
pub struct EventReporter {
    limit: Mutex<RateLimit>,
    tx: mpsc::Sender<BlockedAccess>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for EventReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReporter").finish_non_exhaustive()
    }
}

impl Drop for EventReporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EventReporter {
    /// Starts the task (needs a tokio runtime). `endpoints` names the protected
    /// endpoints in the note (`Azure IMDS, Azure WireServer`); `node` is the node (the
    /// Events' reporting instance); `period` the per-pod cap.
    pub fn start(client: Client, node: &str, endpoints: &str, period: Duration) -> EventReporter {
        let (tx, mut rx) = mpsc::channel::<BlockedAccess>(QUEUE);
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: COMPONENT.into(),
                instance: Some(node.to_owned()),
            },
        );
        let node = node.to_owned();
        let endpoints = endpoints.to_owned();
        let task = tokio::spawn(async move {
            while let Some(access) = rx.recv().await {
                let event = blocked_event(&endpoints, &node);
                match recorder.publish(&event, &pod_reference(&access)).await {
                    Ok(()) => tracing::debug!(
                        pod = %access.pod, namespace = %access.namespace,
                        "MetadataAccessBlocked event published"
                    ),
                    Err(e) => tracing::warn!(
                        pod = %access.pod, namespace = %access.namespace, error = %e,
                        "cannot publish the MetadataAccessBlocked event"
                    ),
                }
            }
        });
        EventReporter {
            limit: Mutex::new(RateLimit::new(period)),
            tx,
            task,
        }
    }

    /// Queues an Event unless this pod had one within the period (never blocks). `true`
    /// when queued.
    pub fn report(&self, access: BlockedAccess) -> bool {
        let admitted = self
            .limit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(&access.namespace, &access.pod, Instant::now());
        if !admitted {
            return false;
        }
        match self.tx.try_send(access) {
            Ok(()) => true,
            Err(e) => {
                let access = match &e {
                    mpsc::error::TrySendError::Full(a) | mpsc::error::TrySendError::Closed(a) => a,
                };
                tracing::warn!(
                    pod = %access.pod, namespace = %access.namespace,
                    "MetadataAccessBlocked event not published: {QUEUE} events already wait for the API"
                );
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_publish_per_pod_per_period() {
        let mut l = RateLimit::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert!(l.admit("a", "web", t0));
        assert!(!l.admit("a", "web", t0 + s(10)));
        assert!(
            l.admit("a", "api", t0 + s(10)),
            "another pod is not held back"
        );
        assert!(
            l.admit("b", "web", t0 + s(10)),
            "nor the same name elsewhere"
        );
        assert!(!l.admit("a", "web", t0 + s(59)));
        assert!(l.admit("a", "web", t0 + s(60)));
        assert!(!l.admit("a", "web", t0 + s(61)));
        assert!(l.admit("a", "web", t0 + s(2000)));
    }

    #[test]
    fn entries_expire() {
        let mut l = RateLimit::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..1000 {
            assert!(l.admit("flood", &format!("pod-{i}"), t0));
        }
        assert_eq!(l.len(), 1000);
        // A period later the next admit sweeps them all out.
        assert!(l.admit("a", "web", t0 + Duration::from_secs(60)));
        assert_eq!(l.len(), 1);
        assert!(!l.is_empty());
    }

    #[test]
    fn the_event_is_a_warning_naming_the_endpoints_and_the_node() {
        let e = blocked_event("Azure IMDS, Azure WireServer", "node-a");
        assert_eq!(e.type_, EventType::Warning);
        assert_eq!(e.reason, REASON);
        assert_eq!(e.action, ACTION);
        assert!(e.secondary.is_none());
        let note = e.note.unwrap();
        assert!(
            note.contains("(Azure IMDS, Azure WireServer)") && note.contains("node node-a"),
            "{note}"
        );
        let long = blocked_event(&"é".repeat(2000), "n");
        assert!(long.note.unwrap().len() <= NOTE_LIMIT);
        let r = pod_reference(&BlockedAccess {
            namespace: "shop".into(),
            pod: "web".into(),
            uid: Some("u-1".into()),
        });
        assert_eq!(r.kind.as_deref(), Some("Pod"));
        assert_eq!(r.api_version.as_deref(), Some("v1"));
        assert_eq!(
            (r.namespace.as_deref(), r.name.as_deref(), r.uid.as_deref()),
            (Some("shop"), Some("web"), Some("u-1"))
        );
    }
}
