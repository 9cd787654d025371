//! The controller's caches: kube-runtime watchers feeding reflector stores, each object
//! trimmed to what the reconcile reads before it is stored (the memory goal: 10,000
//! namespaces and 50,000 pods under 256 MiB).
//!
//! - `MetadataAccessPolicy`: whole, without managedFields and annotations;
//! - Namespaces: metadata only (`metadata_watcher`): name, labels, deletionTimestamp;
//! - Pods: [`SlimPod`], a type of its own that deserializes only labels, owners, the
//!   service account, hostNetwork and the phase (serde skips the rest of the spec);
//!   labels, controlling owner, service account and hostNetwork are then held once per
//!   distinct [`PodShape`], shared by the pods that have it (a workload's replicas);
//! - the policy kinds (NetworkPolicies, and the kinds of the chosen engine) as dynamic
//!   objects: a user's keeps its spec and loses managedFields and annotations; a
//!   labelled one keeps the names of its field managers (no `fieldsV1`) and the
//!   `imdsguard.io/` annotations, which ownership and the comparison read, and its
//!   other fields as JSON text (one generated object per namespace and name: as a
//!   `serde_json::Value` tree each would weigh about ten times its JSON).

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex};

use futures::StreamExt;
use imdsguard_core::generate::MANAGED_BY_LABEL;
use imdsguard_kube::MetadataAccessPolicy;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject, PartialObjectMeta};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// A Pod with only what the controller reads.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct SlimPod {
    /// Name and namespace once stored (labels and owner move into `shape`; the rest is
    /// cleared).
    pub metadata: ObjectMeta,
    /// The service account and hostNetwork as read (moved into `shape` once stored).
    #[serde(default)]
    pub spec: SlimPodSpec,
    /// The phase.
    #[serde(default)]
    pub status: SlimPodStatus,
    /// Labels, controlling owner, service account and hostNetwork, shared by every
    /// stored pod that has the same (the replicas of a workload).
    #[serde(skip)]
    pub shape: Arc<PodShape>,
}

/// What the pods of a workload share: labels, controlling owner, service account,
/// hostNetwork (each distinct one held once, [`intern`]).
#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct PodShape {
    /// `metadata.labels`.
    pub labels: imdsguard_core::model::Labels,
    /// The controlling ownerReference: apiVersion, kind, name.
    pub owner: Option<(String, String, String)>,
    /// The service account, as the API server defaults it.
    pub service_account: String,
    /// `spec.hostNetwork`.
    pub host_network: bool,
}

/// The one shared copy of a pod shape. Shapes no stored pod holds any more are dropped
/// whenever the set has doubled since the last sweep.
fn intern(shape: PodShape) -> Arc<PodShape> {
    struct Shapes {
        set: HashSet<Arc<PodShape>>,
        sweep_at: usize,
    }
    static SHAPES: LazyLock<Mutex<Shapes>> = LazyLock::new(|| {
        Mutex::new(Shapes {
            set: HashSet::new(),
            sweep_at: 1024,
        })
    });
    let mut shapes = SHAPES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = shapes.set.get(&shape) {
        return s.clone();
    }
    if shapes.set.len() >= shapes.sweep_at {
        shapes.set.retain(|s| Arc::strong_count(s) > 1);
        shapes.sweep_at = (shapes.set.len() * 2).max(1024);
    }
    let s = Arc::new(shape);
    shapes.set.insert(s.clone());
    s
}

/// What the controller reads of a pod's spec.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimPodSpec {
    /// `spec.serviceAccountName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// The deprecated `spec.serviceAccount`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// `spec.hostNetwork`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_network: Option<bool>,
}

/// What the controller reads of a pod's status.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct SlimPodStatus {
    /// `Pending`, `Running`, `Succeeded`, `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

impl SlimPod {
    /// Whether it has finished (`Succeeded`, `Failed`): it selects nothing and is left
    /// out of the cluster.
    pub fn finished(&self) -> bool {
        matches!(self.status.phase.as_deref(), Some("Succeeded" | "Failed"))
    }

    /// Whether it runs (`Running`): what `selectedPods` counts.
    pub fn running(&self) -> bool {
        self.status.phase.as_deref() == Some("Running")
    }

    /// Its service account, as the API server defaults it.
    pub fn service_account(&self) -> &str {
        &self.shape.service_account
    }
}

impl Resource for SlimPod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;
    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Clears what no reconcile reads from any object's metadata.
fn trim_meta(m: &mut ObjectMeta) {
    m.managed_fields = None;
    m.annotations = None;
    m.finalizers = None;
    m.generate_name = None;
    m.creation_timestamp = None;
    m.deletion_grace_period_seconds = None;
}

fn trim_pod(p: &mut SlimPod) {
    trim_meta(&mut p.metadata);
    p.metadata.uid = None;
    p.metadata.resource_version = None;
    p.metadata.generation = None;
    p.metadata.deletion_timestamp = None;
    let owner = p
        .metadata
        .owner_references
        .take()
        .and_then(|o| o.into_iter().find(|o| o.controller == Some(true)))
        .map(|o| (o.api_version, o.kind, o.name));
    let service_account = imdsguard_core::model::PodTemplate::service_account_of(
        p.spec.service_account_name.as_deref(),
        p.spec.service_account.as_deref(),
    );
    p.shape = intern(PodShape {
        labels: p
            .metadata
            .labels
            .take()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        owner,
        service_account,
        host_network: p.spec.host_network.unwrap_or(false),
    });
    p.spec = SlimPodSpec::default();
}

fn trim_namespace(n: &mut PartialObjectMeta<Namespace>) {
    n.types = None;
    trim_meta(&mut n.metadata);
    n.metadata.owner_references = None;
    n.metadata.resource_version = None;
}

fn trim_policy_object(p: &mut MetadataAccessPolicy) {
    trim_meta(&mut p.metadata);
}

/// A policy object: a user's keeps its spec only; a labelled one the names of its
/// field managers and the `imdsguard.io/` annotations (ownership and comparison).
pub(crate) fn trim_policy(o: &mut DynamicObject) {
    o.types = None;
    let m = &mut o.metadata;
    let labelled = m
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(MANAGED_BY_LABEL));
    m.finalizers = None;
    m.generate_name = None;
    m.creation_timestamp = None;
    m.owner_references = None;
    if labelled {
        if let Some(fields) = m.managed_fields.as_mut() {
            for f in fields.iter_mut() {
                f.fields_v1 = None;
                f.time = None;
            }
        }
        if let Some(a) = m.annotations.as_mut() {
            a.retain(|k, _| k.starts_with("imdsguard.io/"));
        }
    } else {
        m.managed_fields = None;
        m.annotations = None;
    }
    if let Some(obj) = o.data.as_object_mut() {
        obj.remove("status");
    }
    if labelled {
        // Held as its JSON text (a `serde_json::Value` tree is about ten times larger):
        // there is one such object per namespace and generated name, read only to be
        // compared, one at a time ([`data_of`]).
        if let Ok(text) = serde_json::to_string(&o.data) {
            o.data = serde_json::Value::String(text);
        }
    }
}

/// The fields of a cached policy object besides `metadata` (`spec`, …): a labelled
/// object's are held as JSON text ([`trim_policy`]) and read back here. An object's
/// fields are always a JSON object, so a string is that text, never a field value.
pub(crate) fn data_of(o: &DynamicObject) -> Cow<'_, serde_json::Value> {
    match &o.data {
        serde_json::Value::String(text) => {
            Cow::Owned(serde_json::from_str(text).unwrap_or(serde_json::Value::Null))
        }
        v => Cow::Borrowed(v),
    }
}

/// One dynamic kind the controller watches.
#[derive(Clone)]
pub struct PolicyKind {
    /// Its API resource.
    pub resource: ApiResource,
    /// Whether it is namespaced.
    pub namespaced: bool,
    /// Its store.
    pub store: Store<DynamicObject>,
}

/// The stores of every watch.
#[derive(Clone)]
pub struct Caches {
    /// `MetadataAccessPolicy` objects.
    pub policies: Store<MetadataAccessPolicy>,
    /// Namespaces (metadata).
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Pods (slim).
    pub pods: Store<SlimPod>,
    /// NetworkPolicies and the generated kinds of the engine (NetworkPolicy first).
    pub kinds: Vec<PolicyKind>,
}

impl Caches {
    /// Waits until every store holds its initial list.
    pub async fn ready(&self) {
        let _ = self.policies.wait_until_ready().await;
        let _ = self.namespaces.wait_until_ready().await;
        let _ = self.pods.wait_until_ready().await;
        for k in &self.kinds {
            let _ = k.store.wait_until_ready().await;
        }
    }
}

/// Spawns one watcher into a reflector store; every event wakes `changed`. Errors are
/// retried with kube-runtime's default backoff (and logged).
fn spawn<K>(
    writer: reflector::store::Writer<K>,
    stream: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    what: String,
    changed: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()>
where
    K: Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    tokio::spawn(async move {
        let stream = reflector::reflector(writer, stream.default_backoff());
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                _ = imdsguard_serve::stopped(&mut stop) => return,
                ev = stream.next() => match ev {
                    None => return,
                    Some(Ok(_)) => changed.notify_one(),
                    Some(Err(e)) => tracing::warn!(watch = %what, error = %e, "watch failed; retrying"),
                },
            }
        }
    })
}

/// Starts the watches; `kinds` are the policy kinds (apiVersion, kind, plural,
/// namespaced) to watch besides NetworkPolicies.
pub(crate) fn start(
    client: &Client,
    kinds: &[(ApiResource, bool)],
    changed: Arc<Notify>,
    stop: watch::Receiver<bool>,
) -> (Caches, Vec<JoinHandle<()>>) {
    let mut tasks = Vec::new();
    let cfg = watcher::Config::default();

    let (policies, w) = reflector::store();
    let api: Api<MetadataAccessPolicy> = Api::all(client.clone());
    tasks.push(spawn(
        w,
        watcher(api, cfg.clone()).modify(trim_policy_object),
        "metadataaccesspolicies".into(),
        changed.clone(),
        stop.clone(),
    ));

    let (namespaces, w) = reflector::store();
    let api: Api<PartialObjectMeta<Namespace>> = Api::all(client.clone());
    tasks.push(spawn(
        w,
        watcher(api, cfg.clone()).modify(trim_namespace),
        "namespaces".into(),
        changed.clone(),
        stop.clone(),
    ));

    let (pods, w) = reflector::store();
    let api: Api<SlimPod> = Api::all(client.clone());
    tasks.push(spawn(
        w,
        watcher(api, cfg.clone()).modify(trim_pod),
        "pods".into(),
        changed.clone(),
        stop.clone(),
    ));

    let mut out = Vec::new();
    for (resource, namespaced) in kinds {
        let w = reflector::store::Writer::new(resource.clone());
        let store = w.as_reader();
        let api: Api<DynamicObject> = Api::all_with(client.clone(), resource);
        tasks.push(spawn(
            w,
            watcher(api, cfg.clone()).modify(trim_policy),
            resource.plural.clone(),
            changed.clone(),
            stop.clone(),
        ));
        out.push(PolicyKind {
            resource: resource.clone(),
            namespaced: *namespaced,
            store,
        });
    }
    (
        Caches {
            policies,
            namespaces,
            pods,
            kinds: out,
        },
        tasks,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, app: &str, extra: &str) -> SlimPod {
        let text = format!(
            r#"{{"metadata":{{"name":"{name}","namespace":"shop","uid":"u-{name}","labels":{{"app":"{app}"}},
               "ownerReferences":[{{"apiVersion":"v1","kind":"Node","name":"n","uid":"x"}},
                                  {{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-5d","uid":"u","controller":true}}]}},
               "spec":{{"containers":[{{"name":"c","image":"i"}}]{extra}}},"status":{{"phase":"Running","podIP":"10.0.0.1"}}}}"#
        );
        let mut p: SlimPod = serde_json::from_str(&text).unwrap();
        trim_pod(&mut p);
        p
    }

    #[test]
    fn replicas_share_one_shape_and_keep_what_the_core_reads() {
        let a = pod("web-1", "web", "");
        let b = pod("web-2", "web", "");
        assert!(Arc::ptr_eq(&a.shape, &b.shape));
        assert_eq!(a.metadata.name.as_deref(), Some("web-1"));
        assert_eq!(a.metadata.labels, None);
        assert_eq!(a.metadata.uid, None);
        assert_eq!(a.service_account(), "default");
        assert_eq!(
            a.shape.owner,
            Some(("apps/v1".into(), "ReplicaSet".into(), "web-5d".into()))
        );
        assert_eq!(a.shape.labels.get("app").map(String::as_str), Some("web"));
        assert!(a.running());
        let other_labels = pod("db-1", "db", "");
        assert!(!Arc::ptr_eq(&a.shape, &other_labels.shape));
        let other_account = pod(
            "web-3",
            "web",
            r#","serviceAccountName":"web","hostNetwork":true"#,
        );
        assert!(!Arc::ptr_eq(&a.shape, &other_account.shape));
        assert_eq!(other_account.service_account(), "web");
        assert!(other_account.shape.host_network);
    }
}
