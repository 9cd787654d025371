//! The pods scheduled on one node, from a Kubernetes watch (`spec.nodeName=NODE`): a
//! kube-runtime [`watcher`](kube::runtime::watcher()) feeding a
//! [`reflector`](kube::runtime::reflector()) store, whose state is turned into the
//! core's [`PodIndex`] (with the pods' node-side interfaces) and published as a
//! [`Snapshot`] on every change.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector::store::Writer};
use kube::{Api, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use imdsguard_core::pods::{INTERFACE_ANNOTATION, NodePod, PodIndex};

use crate::Client;
use crate::pod::pod_to_node_pod;
use crate::route::InterfaceResolver;

/// How long the watch gathers changes before it publishes the next snapshot (a burst of
/// changes, e.g. a Deployment rolled out on the node, becomes one snapshot).
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);

/// The node's pods as last listed and watched, and the core's index of them.
///
/// [`Snapshot::pods`]: every pod the API listed (finished and hostNetwork ones too), as
/// the core's plain pods, ordered by namespace and name, each with its node-side
/// interface: the `imdsguard.io/interface` annotation, else the route to its first
/// address that resolves (looked up only for pods that may own addresses); `None` when
/// neither gives one. [`Snapshot::index`]: [`PodIndex::from_pods`] of them (who owns
/// which address, under the core's one policy, and what it left out).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pods: Vec<NodePod>,
    index: PodIndex,
}

/// Two snapshots are equal when their pods are (the index is a function of them).
impl PartialEq for Snapshot {
    fn eq(&self, other: &Self) -> bool {
        self.pods == other.pods
    }
}

impl Eq for Snapshot {}

impl Snapshot {
    /// The snapshot of these pods (interfaces already resolved): ordered by namespace
    /// and name, and indexed by [`PodIndex::from_pods`].
    pub fn new(pods: impl IntoIterator<Item = NodePod>) -> Snapshot {
        let mut pods: Vec<NodePod> = pods.into_iter().collect();
        pods.sort_by(|a, b| {
            (&a.info.namespace, &a.info.name).cmp(&(&b.info.namespace, &b.info.name))
        });
        let index = PodIndex::from_pods(pods.iter().cloned());
        Snapshot { pods, index }
    }

    /// Every pod listed, ordered by namespace and name.
    pub fn pods(&self) -> &[NodePod] {
        &self.pods
    }

    /// The core's index of the pods.
    pub fn index(&self) -> &PodIndex {
        &self.index
    }

    /// The pod `namespace/name`, whether or not it owns addresses.
    pub fn get(&self, namespace: &str, name: &str) -> Option<&NodePod> {
        self.pods
            .binary_search_by(|p| {
                (p.info.namespace.as_str(), p.info.name.as_str()).cmp(&(namespace, name))
            })
            .ok()
            .map(|i| &self.pods[i])
    }
}

/// A running watch of one node's pods. Dropping it stops the watch.
#[derive(Debug)]
pub struct PodWatch {
    rx: watch::Receiver<Option<Arc<Snapshot>>>,
    store: Store<Pod>,
    task: JoinHandle<()>,
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PodWatch {
    /// Starts watching the pods of `node` (needs a tokio runtime), publishing at most
    /// one snapshot per [`DEFAULT_DEBOUNCE`]. Errors of the API are logged and retried
    /// with backoff; the last snapshot stays meanwhile.
    pub fn start(client: Client, node: &str, resolver: InterfaceResolver) -> PodWatch {
        PodWatch::start_with(client, node, resolver, DEFAULT_DEBOUNCE)
    }

    /// [`PodWatch::start`], gathering changes for `debounce` before each snapshot after
    /// the first (which is published as soon as the first full list is in).
    pub fn start_with(
        client: Client,
        node: &str,
        resolver: InterfaceResolver,
        debounce: Duration,
    ) -> PodWatch {
        let (tx, rx) = watch::channel(None);
        let api: Api<Pod> = Api::all(client);
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let (store, writer) = reflector::store();
        let watch = Watch {
            node: node.to_owned(),
            store: store.clone(),
            resolver,
            tx,
            debounce,
        };
        let task = tokio::spawn(watch.run(api, config, writer));
        PodWatch { rx, store, task }
    }

    /// A receiver of the snapshots: `None` until the first full list, then every change.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.rx.clone()
    }

    /// The latest snapshot (`None` before the first full list).
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.rx.borrow().clone()
    }

    /// Waits for the first full list; `None` if the watch ended first.
    pub async fn initial(&mut self) -> Option<Arc<Snapshot>> {
        self.rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|s| s.clone())
    }

    /// The reflector's store: the node's pods as the API last gave them (trimmed of
    /// what the agent does not read, see [`trim`]).
    pub fn store(&self) -> &Store<Pod> {
        &self.store
    }
}

/// What the store keeps of a pod: no managed fields, no annotation but
/// [`INTERFACE_ANNOTATION`], no containers, volumes or container statuses (a pod's
/// spec can be large; [`pod_to_node_pod`] reads none of these).
pub fn trim(pod: &mut Pod) {
    pod.managed_fields_mut().clear();
    pod.annotations_mut()
        .retain(|k, _| k.as_str() == INTERFACE_ANNOTATION);
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers.clear();
        spec.init_containers = None;
        spec.ephemeral_containers = None;
        spec.volumes = None;
    }
    if let Some(status) = pod.status.as_mut() {
        status.conditions = None;
        status.container_statuses = None;
        status.init_container_statuses = None;
        status.ephemeral_container_statuses = None;
    }
}

/// The watch task's state.
struct Watch {
    node: String,
    store: Store<Pod>,
    resolver: InterfaceResolver,
    tx: watch::Sender<Option<Arc<Snapshot>>>,
    debounce: Duration,
}

impl Watch {
    async fn run(mut self, api: Api<Pod>, config: watcher::Config, writer: Writer<Pod>) {
        let mut stream = watcher::watcher(api, config)
            .default_backoff()
            .modify(trim)
            .reflect(writer)
            .boxed();
        let mut listed = false;
        // When the changes gathered since the last snapshot are to be published.
        let mut due: Option<Instant> = None;
        loop {
            let event = tokio::select! {
                event = stream.next() => event,
                () = sleep_until(due), if due.is_some() => {
                    due = None;
                    if !self.publish().await {
                        return;
                    }
                    continue;
                }
            };
            match event {
                None => return,
                // The store swapped in the full list: the first one goes out at once.
                Some(Ok(Event::InitDone)) if !listed => {
                    listed = true;
                    due = None;
                    if !self.publish().await {
                        return;
                    }
                }
                Some(Ok(Event::InitDone | Event::Apply(_) | Event::Delete(_))) if listed => {
                    due.get_or_insert_with(|| Instant::now() + self.debounce);
                }
                // A (re)list in progress: the store keeps the previous list meanwhile.
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, node = %self.node, "pod watch: retrying");
                }
            }
            if self.tx.is_closed() {
                return;
            }
        }
    }

    /// Converts the store's pods, resolves their interfaces (blocking: `ip route get`,
    /// on a blocking thread), indexes them and publishes the snapshot if it changed.
    /// `false` when the task is to stop.
    async fn publish(&mut self) -> bool {
        let listed: Vec<NodePod> = self
            .store
            .state()
            .iter()
            .filter_map(|p| pod_to_node_pod(p))
            .collect();
        let count = listed.len();
        let resolver = std::mem::take(&mut self.resolver);
        let done = tokio::task::spawn_blocking(move || {
            let mut resolver = resolver;
            let snap = snapshot(listed, &mut resolver);
            (resolver, snap)
        })
        .await;
        let snap = match done {
            Ok((resolver, snap)) => {
                self.resolver = resolver;
                snap
            }
            Err(e) => {
                tracing::error!(error = %e, "pod watch: interface lookup failed");
                return false;
            }
        };
        let published = self.tx.send_if_modified(|old| {
            if old.as_deref() == Some(&snap) {
                false
            } else {
                *old = Some(Arc::new(snap));
                true
            }
        });
        if published {
            tracing::debug!(node = %self.node, pods = count, "pod watch: the node's pods changed");
        }
        !self.tx.is_closed()
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves the interfaces of the pods that may own addresses and lack the annotation
/// (forgetting the cached lookups of addresses no such pod has any more), then
/// indexes them.
fn snapshot(mut pods: Vec<NodePod>, resolver: &mut InterfaceResolver) -> Snapshot {
    let live: std::collections::HashSet<_> = pods
        .iter()
        .filter(|p| p.claims_addresses())
        .flat_map(|p| p.addrs.iter().copied())
        .collect();
    resolver.retain(|a| live.contains(a));
    for p in &mut pods {
        if p.interface.is_none() && p.claims_addresses() {
            p.interface = resolver.resolve(&p.addrs);
        }
    }
    Snapshot::new(pods)
}

#[cfg(test)]
mod tests {
    use super::*;
    use imdsguard_core::pods::PodInfo;

    fn pod(ns: &str, name: &str, addr: &str) -> NodePod {
        NodePod::new(PodInfo::new(ns, name), [addr.parse().unwrap()])
    }

    #[test]
    fn a_snapshot_is_ordered_indexed_and_found_by_name() {
        let s = Snapshot::new([
            pod("shop", "web", "10.0.0.2"),
            pod("a", "z", "10.0.0.3"),
            pod("shop", "api", "10.0.0.1"),
        ]);
        let ids: Vec<String> = s.pods().iter().map(NodePod::id).collect();
        assert_eq!(ids, ["a/z", "shop/api", "shop/web"]);
        assert_eq!(s.get("shop", "web").unwrap().id(), "shop/web");
        assert!(s.get("shop", "nope").is_none() && s.get("a", "web").is_none());
        assert_eq!(
            s.index().get("10.0.0.1".parse().unwrap()).unwrap().id(),
            "shop/api"
        );
        assert_eq!(s.index().len(), 3);
    }

    #[test]
    fn trimming_keeps_what_the_conversion_reads() {
        let mut p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1",
                         "labels": {"app": "web"},
                         "annotations": {"imdsguard.io/interface": "azvweb", "big": "x"},
                         "managedFields": [{"manager": "kubelet"}]},
            "spec": {"containers": [{"name": "c", "image": "i"}], "serviceAccountName": "sa",
                     "hostNetwork": false, "volumes": [{"name": "v"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}],
                       "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": true,
                                              "restartCount": 0}]}
        }))
        .unwrap();
        let before = pod_to_node_pod(&p).unwrap();
        trim(&mut p);
        assert_eq!(pod_to_node_pod(&p).unwrap(), before);
        assert!(p.metadata.managed_fields.unwrap_or_default().is_empty());
        assert_eq!(p.metadata.annotations.unwrap().len(), 1);
        assert!(p.spec.unwrap().containers.is_empty());
        assert!(p.status.unwrap().container_statuses.is_none());
    }
}
