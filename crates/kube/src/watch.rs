//! The pods scheduled on one node, from a Kubernetes watch (`spec.nodeName=NODE`), with
//! their node-side interfaces: a [`Snapshot`] published on every change.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use imdsguard_core::pods::NodePod;

use crate::Client;
use crate::pod::pod_to_node_pod;
use crate::route::InterfaceResolver;

/// The node's pods as last listed and watched, by namespace and name: every pod the API
/// listed (finished and hostNetwork ones too: the core's
/// [`imdsguard_core::pods::PodIndex::from_pods`] decides who owns which address), each
/// with its node-side interface: the `imdsguard.io/interface` annotation, else the
/// route to its first address that resolves (looked up only for pods that may own
/// addresses); `None` when neither gives one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The pods, ordered by namespace and name.
    pub pods: Vec<NodePod>,
}

impl Snapshot {
    /// The pod `namespace/name`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<&NodePod> {
        self.pods
            .iter()
            .find(|p| p.info.namespace == namespace && p.info.name == name)
    }
}

type Key = (String, String);

/// A running watch of one node's pods. Dropping it stops the watch.
#[derive(Debug)]
pub struct PodWatch {
    rx: watch::Receiver<Option<Arc<Snapshot>>>,
    task: JoinHandle<()>,
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PodWatch {
    /// Starts watching the pods of `node` (needs a tokio runtime). Errors of the API
    /// are logged and retried with backoff; the last snapshot stays meanwhile.
    pub fn start(client: Client, node: &str, resolver: InterfaceResolver) -> PodWatch {
        let (tx, rx) = watch::channel(None);
        let api: Api<Pod> = Api::all(client);
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let node = node.to_owned();
        let task = tokio::spawn(run(api, config, node, resolver, tx));
        PodWatch { rx, task }
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
}

fn upsert(map: &mut BTreeMap<Key, NodePod>, pod: &Pod) {
    let key = (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    match pod_to_node_pod(pod) {
        Some(p) => {
            map.insert(key, p);
        }
        None => {
            map.remove(&key);
        }
    }
}

fn remove(map: &mut BTreeMap<Key, NodePod>, pod: &Pod) {
    map.remove(&(
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    ));
}

/// Resolves the interfaces (blocking: `ip route get`) and builds the snapshot.
fn snapshot(pods: &BTreeMap<Key, NodePod>, resolver: &mut InterfaceResolver) -> Snapshot {
    let live: HashSet<_> = pods
        .values()
        .filter(|p| p.claims_addresses())
        .flat_map(|p| p.addrs.iter().copied())
        .collect();
    resolver.retain(|a| live.contains(a));
    Snapshot {
        pods: pods
            .values()
            .map(|p| {
                let mut p = p.clone();
                if p.interface.is_none() && p.claims_addresses() {
                    p.interface = resolver.resolve(&p.addrs);
                }
                p
            })
            .collect(),
    }
}

async fn run(
    api: Api<Pod>,
    config: watcher::Config,
    node: String,
    mut resolver: InterfaceResolver,
    tx: watch::Sender<Option<Arc<Snapshot>>>,
) {
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut pods: BTreeMap<Key, NodePod> = BTreeMap::new();
    let mut init: Option<BTreeMap<Key, NodePod>> = None;
    let mut listed = false;
    while let Some(event) = stream.next().await {
        let changed = match event {
            Ok(Event::Init) => {
                init = Some(BTreeMap::new());
                false
            }
            Ok(Event::InitApply(pod)) => {
                if let Some(buffer) = init.as_mut() {
                    upsert(buffer, &pod);
                }
                false
            }
            Ok(Event::InitDone) => {
                if let Some(buffer) = init.take() {
                    pods = buffer;
                }
                listed = true;
                true
            }
            Ok(Event::Apply(pod)) => {
                upsert(&mut pods, &pod);
                listed
            }
            Ok(Event::Delete(pod)) => {
                remove(&mut pods, &pod);
                listed
            }
            Err(e) => {
                tracing::warn!(error = %e, node = %node, "pod watch: retrying");
                false
            }
        };
        if !changed {
            continue;
        }
        let current = pods.clone();
        let (r, snap) = match tokio::task::spawn_blocking(move || {
            let snap = snapshot(&current, &mut resolver);
            (resolver, snap)
        })
        .await
        {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(error = %e, "pod watch: interface lookup failed");
                return;
            }
        };
        resolver = r;
        let published = tx.send_if_modified(|old| {
            if old.as_deref() == Some(&snap) {
                false
            } else {
                *old = Some(Arc::new(snap));
                true
            }
        });
        if published {
            tracing::debug!(node = %node, pods = pods.len(), "pod watch: the node's pods changed");
        }
        if tx.is_closed() {
            return;
        }
    }
}
