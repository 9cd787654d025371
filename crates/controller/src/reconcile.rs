//! One reconcile: the cached objects → the core's cluster → the core's generated
//! objects → server-side apply of what differs, delete of what the controller owns and
//! no longer wants → the core's audit of the result for conflicts → status, Events,
//! metrics. Every semantic step is the core's; this module compares and writes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use imdsguard_core::access::PodShapeRef;
use imdsguard_core::audit::{AuditOptions, audit_in};
use imdsguard_core::cluster::Cluster;
use imdsguard_core::engine::{Engine, EngineSettings};
use imdsguard_core::generate::{DENY_NAME, GenerateOptions, OutputEngine, generate};
use imdsguard_core::manifest::parse_api_response;
use imdsguard_core::target::{Cloud, Target};
use imdsguard_kube::MetadataAccessPolicy;
use imdsguard_kube::crd::{
    Condition, GeneratedRef, MetadataAccessPolicyStatus, Refusal, RuleStatus, combined_rules,
};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::PartialObjectMeta;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::cache::{Caches, PolicyKind, SlimPod};
use crate::metrics::Metrics;
use crate::own::{FIELD_MANAGER, owned, up_to_date};

/// How many generated objects a status lists (the Ready message gives the count).
pub const STATUS_GENERATED_LIMIT: usize = 100;
/// How many new conflicts one reconcile reports as Events (the rest wait for the next).
pub const EVENTS_PER_RECONCILE: usize = 50;
/// The Event reason of a conflict.
pub const CONFLICT_REASON: &str = "MetadataPolicyConflict";
/// What the generated objects' `imdsguard.io/rules` annotation names.
pub const RULES_SOURCE: &str = "MetadataAccessPolicy";

/// A conflict found by a reconcile.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conflict {
    /// `reopens-target`, `expected-blocked` or `name-taken`.
    pub kind: &'static str,
    /// The namespace concerned.
    pub namespace: String,
    /// What, naming namespace, workload and policy.
    pub message: String,
    /// The `MetadataAccessPolicy` objects it concerns (empty: all of them).
    pub objects: Vec<String>,
}

/// What a reconcile did.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Objects wanted (after exclusions).
    pub desired: usize,
    /// Apply requests sent.
    pub applied: usize,
    /// Delete requests sent.
    pub deleted: usize,
    /// Failed writes, each in words.
    pub errors: Vec<String>,
    /// Conflicts.
    pub conflicts: Vec<Conflict>,
}

pub(crate) struct Reconciler {
    pub client: Client,
    pub caches: Caches,
    pub engine: OutputEngine,
    pub audit_engine: EngineSettings,
    /// The cloud protected: objects of another are refused.
    pub cloud: Cloud,
    pub targets: Vec<Target>,
    pub exclude: BTreeSet<String>,
    pub concurrency: usize,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Conflicts already reported as Events (reported again once gone and back).
    pub published: Mutex<BTreeSet<(String, String)>>,
}

/// The audit engine that enforces an output engine's objects (as `policy generate
/// --verify` audits them).
pub(crate) fn audit_engine(engine: OutputEngine) -> EngineSettings {
    let e = match engine {
        OutputEngine::NetworkPolicy => Engine::Generic,
        OutputEngine::Cnp => Engine::KubeNetworkPolicies,
        OutputEngine::Anp => Engine::OvnKubernetes,
        OutputEngine::Calico => Engine::Calico,
        OutputEngine::Cilium => Engine::Cilium,
    };
    let mut s = EngineSettings::new(e);
    s.cilium_link_local = imdsguard_core::cilium::LinkLocalAs::World;
    s
}

/// The kinds an engine writes, as (resource, namespaced), NetworkPolicy first (always
/// watched: user NetworkPolicies are input to every engine).
pub(crate) fn watched_kinds(engine: OutputEngine) -> Vec<(ApiResource, bool)> {
    let ar = |group: &str, version: &str, kind: &str, plural: &str| {
        ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk(group, version, kind),
            plural,
        )
    };
    let mut v = vec![(
        ar(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
        ),
        true,
    )];
    match engine {
        OutputEngine::NetworkPolicy => {}
        OutputEngine::Cnp => v.push((
            ar(
                "policy.networking.k8s.io",
                "v1alpha2",
                "ClusterNetworkPolicy",
                "clusternetworkpolicies",
            ),
            false,
        )),
        OutputEngine::Anp => v.push((
            ar(
                "policy.networking.k8s.io",
                "v1alpha1",
                "AdminNetworkPolicy",
                "adminnetworkpolicies",
            ),
            false,
        )),
        OutputEngine::Calico => {
            v.push((ar("projectcalico.org", "v3", "Tier", "tiers"), false));
            v.push((
                ar(
                    "projectcalico.org",
                    "v3",
                    "GlobalNetworkPolicy",
                    "globalnetworkpolicies",
                ),
                false,
            ));
        }
        OutputEngine::Cilium => v.push((
            ar(
                "cilium.io",
                "v2",
                "CiliumClusterwideNetworkPolicy",
                "ciliumclusterwidenetworkpolicies",
            ),
            false,
        )),
    }
    v
}

/// A write the cache has to show: an object (kind, namespace, name) changed from this
/// resourceVersion (none: created), or gone (this uid).
enum Awaited {
    Changed(ApiResource, String, String, Option<String>),
    Gone(ApiResource, String, String, Option<String>),
}

/// How long a reconcile waits for the watches to show its own writes.
const CATCH_UP: Duration = Duration::from_secs(3);

/// (apiVersion, kind, namespace, name) of an object.
type Key = (String, String, String, String);

/// (index of the kind in `Caches::kinds`, namespace, name) of a cached object.
type LiveKey<'a> = (usize, &'a str, &'a str);

fn key_of(v: &Value) -> Key {
    let s = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (
        s("/apiVersion"),
        s("/kind"),
        s("/metadata/namespace"),
        s("/metadata/name"),
    )
}

/// A cached dynamic object as JSON with its apiVersion and kind.
fn dynamic_json(o: &DynamicObject, ar: &ApiResource) -> Value {
    serde_json::to_value(Typed::dynamic(o, ar)).unwrap_or(Value::Null)
}

/// An object of the core's input written with its apiVersion and kind (list items
/// carry none), straight from the cache, with no `serde_json::Value` copy.
#[derive(serde::Serialize)]
struct Typed<'a, T: serde::Serialize> {
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    kind: &'a str,
    #[serde(flatten)]
    object: T,
}

/// A Namespace as the core reads it: name and labels.
#[derive(serde::Serialize)]
struct NamespaceItem<'a> {
    metadata: NamespaceMeta<'a>,
}

#[derive(serde::Serialize)]
struct NamespaceMeta<'a> {
    name: &'a str,
    labels: &'a Option<BTreeMap<String, String>>,
}

/// A cached pod as the core reads it: name, namespace, labels, controlling owner,
/// service account, hostNetwork, phase.
#[derive(serde::Serialize)]
struct PodItem<'a> {
    metadata: PodMeta<'a>,
    spec: PodSpecItem<'a>,
    status: &'a crate::cache::SlimPodStatus,
}

#[derive(serde::Serialize)]
struct PodMeta<'a> {
    name: Option<&'a str>,
    namespace: Option<&'a str>,
    labels: &'a imdsguard_core::model::Labels,
    #[serde(rename = "ownerReferences")]
    owner_references: Vec<OwnerItem<'a>>,
}

#[derive(serde::Serialize)]
struct OwnerItem<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    kind: &'a str,
    name: &'a str,
    controller: bool,
}

#[derive(serde::Serialize)]
struct PodSpecItem<'a> {
    #[serde(rename = "serviceAccountName")]
    service_account_name: &'a str,
    #[serde(rename = "hostNetwork")]
    host_network: bool,
}

impl<'a> PodItem<'a> {
    fn of(p: &'a SlimPod) -> Self {
        let s = &p.shape;
        PodItem {
            metadata: PodMeta {
                name: p.metadata.name.as_deref(),
                namespace: p.metadata.namespace.as_deref(),
                labels: &s.labels,
                owner_references: s
                    .owner
                    .iter()
                    .map(|(api_version, kind, name)| OwnerItem {
                        api_version,
                        kind,
                        name,
                        controller: true,
                    })
                    .collect(),
            },
            spec: PodSpecItem {
                service_account_name: &s.service_account,
                host_network: s.host_network,
            },
            status: &p.status,
        }
    }
}

/// A cached dynamic object's metadata and other fields.
#[derive(serde::Serialize)]
struct DynamicItem<'a> {
    metadata: &'a kube::api::ObjectMeta,
    #[serde(flatten)]
    data: std::borrow::Cow<'a, Value>,
}

impl<'a> Typed<'a, DynamicItem<'a>> {
    fn dynamic(o: &'a DynamicObject, ar: &'a ApiResource) -> Self {
        Typed {
            api_version: &ar.api_version,
            kind: &ar.kind,
            object: DynamicItem {
                metadata: &o.metadata,
                data: crate::cache::data_of(o),
            },
        }
    }
}

/// The core's input as one JSON `List` text, written item by item (one `String`, no
/// `Value` tree), read by `core::manifest::parse_api_response` like any API response.
struct ListText(String);

impl ListText {
    fn new() -> ListText {
        ListText(String::from(
            r#"{"apiVersion":"v1","kind":"List","items":["#,
        ))
    }

    fn comma(&mut self) {
        if !self.0.ends_with('[') {
            self.0.push(',');
        }
    }

    fn push(&mut self, item: &impl serde::Serialize) {
        if let Ok(text) = serde_json::to_string(item) {
            self.comma();
            self.0.push_str(&text);
        }
    }

    fn push_raw(&mut self, item: &RawValue) {
        self.comma();
        self.0.push_str(item.get());
    }

    /// The cluster the core reads from this text.
    fn cluster(mut self) -> Cluster {
        self.0.push_str("]}");
        let loaded = parse_api_response("cluster", &self.0);
        drop(self);
        for e in loaded.errors.iter().take(5) {
            tracing::warn!(error = %e, "an object of the cluster does not read");
        }
        Cluster::build(loaded.objects)
    }
}

/// What the core reads of one namespace: the Namespace (when cached), its pods that
/// have not finished, and the policy objects the controller does not own.
#[derive(Default)]
struct NamespaceInput {
    namespace: Option<Arc<PartialObjectMeta<Namespace>>>,
    pods: Vec<Arc<SlimPod>>,
    objects: Vec<(Arc<DynamicObject>, usize)>,
}

/// The cluster the core generates from, by namespace (the caches' objects, shared:
/// nothing is copied), and the cluster-scoped policy objects the controller does not
/// own.
#[derive(Default)]
struct Input {
    namespaces: BTreeMap<String, NamespaceInput>,
    cluster_scoped: Vec<(Arc<DynamicObject>, usize)>,
    terminating: BTreeSet<String>,
}

/// A generated object wanted in place, held as its JSON text (its `Value` tree is
/// dropped once compared).
struct Desired {
    key: Key,
    body: Box<RawValue>,
}

/// How many namespaces one generate, compare and audit round covers when the output is
/// NetworkPolicies (each namespace's are generated, and audited, from that namespace
/// alone): the generated objects are held one round at a time.
const NAMESPACES_PER_ROUND: usize = 50;

fn now() -> String {
    // RFC 3339 in seconds, as metav1.Time is written.
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl Reconciler {
    /// Whether a namespace is excluded.
    fn excluded(&self, ns: &str) -> bool {
        self.exclude.contains(ns)
    }

    /// The cluster the core generates from: namespaces, pods that have not finished,
    /// and every policy object the controller does not own, by namespace.
    fn input(&self) -> Input {
        let mut input = Input::default();
        for n in self.caches.namespaces.state() {
            let name = n.name_any();
            if n.metadata.deletion_timestamp.is_some() {
                input.terminating.insert(name.clone());
            }
            input.namespaces.entry(name).or_default().namespace = Some(n);
        }
        for p in self.caches.pods.state() {
            if p.finished() {
                continue;
            }
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            input.namespaces.entry(ns).or_default().pods.push(p);
        }
        for (i, k) in self.caches.kinds.iter().enumerate() {
            for o in k.store.state() {
                if owned(&o.metadata) {
                    continue;
                }
                match o.namespace() {
                    Some(ns) if k.namespaced => {
                        input.namespaces.entry(ns).or_default().objects.push((o, i))
                    }
                    _ => input.cluster_scoped.push((o, i)),
                }
            }
        }
        input
    }

    /// The core's input for these namespaces (and the cluster-scoped objects when
    /// `cluster_scoped`) as a List text.
    fn list_text<'a>(
        &self,
        namespaces: impl Iterator<Item = (&'a String, &'a NamespaceInput)>,
        cluster_scoped: &[(Arc<DynamicObject>, usize)],
    ) -> ListText {
        let mut text = ListText::new();
        for (name, ns) in namespaces {
            if let Some(n) = &ns.namespace {
                text.push(&Typed {
                    api_version: "v1",
                    kind: "Namespace",
                    object: NamespaceItem {
                        metadata: NamespaceMeta {
                            name,
                            labels: &n.metadata.labels,
                        },
                    },
                });
            }
            for p in &ns.pods {
                text.push(&Typed {
                    api_version: "v1",
                    kind: "Pod",
                    object: PodItem::of(p),
                });
            }
            for (o, k) in &ns.objects {
                text.push(&Typed::dynamic(o, &self.caches.kinds[*k].resource));
            }
        }
        for (o, k) in cluster_scoped {
            text.push(&Typed::dynamic(o, &self.caches.kinds[*k].resource));
        }
        text
    }

    fn kind_index(&self, api_version: &str, kind: &str) -> Option<usize> {
        self.caches
            .kinds
            .iter()
            .position(|k| k.resource.api_version == api_version && k.resource.kind == kind)
    }

    fn kind_of(&self, api_version: &str, kind: &str) -> Option<&PolicyKind> {
        self.caches
            .kinds
            .iter()
            .find(|k| k.resource.api_version == api_version && k.resource.kind == kind)
    }

    /// Waits (at most [`CATCH_UP`]) until the caches show the writes just made, so that
    /// the next reconcile does not write them again from a cache a few events behind.
    async fn caught_up(&self, mut awaited: Vec<Awaited>) {
        let deadline = Instant::now() + CATCH_UP;
        loop {
            awaited.retain(|a| {
                let (ar, ns, name) = match a {
                    Awaited::Changed(ar, ns, name, _) | Awaited::Gone(ar, ns, name, _) => {
                        (ar, ns, name)
                    }
                };
                let Some(k) = self.kind_of(&ar.api_version, &ar.kind) else {
                    return false;
                };
                let mut r = ObjectRef::new_with(name, ar.clone());
                if !ns.is_empty() {
                    r = r.within(ns);
                }
                let cached = k.store.get(&r);
                match a {
                    Awaited::Changed(_, _, _, before) => {
                        cached.is_none_or(|o| o.resource_version() == *before)
                    }
                    Awaited::Gone(_, _, _, uid) => cached.is_some_and(|o| o.uid() == *uid),
                }
            });
            if awaited.is_empty() || Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs one reconcile; writes only while `leader` is true.
    pub async fn run(&self, leader: &watch::Receiver<bool>) -> Outcome {
        let t0 = Instant::now();
        let out = self.run_inner(leader).await;
        self.metrics
            .reconciled(out.errors.is_empty(), t0.elapsed().as_secs_f64());
        out
    }

    async fn run_inner(&self, leader: &watch::Receiver<bool>) -> Outcome {
        let mut out = Outcome::default();
        let maps: Vec<Arc<MetadataAccessPolicy>> = self.caches.policies.state();
        let (rules, refused) = combined_rules(self.cloud, maps.iter().map(|m| &**m));
        let input = self.input();

        // The live objects of the generated kinds, by (kind, namespace, name), borrowed
        // from the caches' snapshots.
        let states: Vec<Vec<Arc<DynamicObject>>> =
            self.caches.kinds.iter().map(|k| k.store.state()).collect();
        let mut live: HashMap<LiveKey<'_>, &Arc<DynamicObject>> =
            HashMap::with_capacity(states.iter().map(Vec::len).sum());
        for (i, objects) in states.iter().enumerate() {
            for o in objects {
                let ns = o.metadata.namespace.as_deref().unwrap_or("");
                live.insert((i, ns, o.metadata.name.as_deref().unwrap_or("")), o);
            }
        }

        // Rounds of namespaces: NetworkPolicies are namespaced, and each namespace's are
        // generated and audited from that namespace's objects alone, so the generated
        // objects are held one round at a time; any other engine writes cluster-scoped
        // objects from the whole cluster: one round.
        let per_round = if self.caches.kinds.iter().all(|k| k.namespaced) {
            NAMESPACES_PER_ROUND
        } else {
            usize::MAX
        };
        let names: Vec<&String> = input.namespaces.keys().collect();
        let rounds: Vec<&[&String]> = if names.is_empty() {
            vec![&[][..]]
        } else {
            names.chunks(per_round).collect()
        };
        // The live objects wanted, by address (the others the controller owns are
        // deleted), and the
        // first wanted objects in order for the status.
        let mut wanted: HashSet<usize> = HashSet::new();
        let mut listed: BTreeSet<Key> = BTreeSet::new();
        let mut in_place = 0usize;
        // What the cache must show before the next reconcile reads it: each applied
        // object at another resourceVersion than before, each deleted one gone.
        let mut awaited: Vec<Awaited> = Vec::new();
        for (round, namespaces) in rounds.iter().enumerate() {
            let cluster_scoped: &[(Arc<DynamicObject>, usize)] = if round == 0 {
                &input.cluster_scoped
            } else {
                &[]
            };
            let of_round = || namespaces.iter().map(|n| (*n, &input.namespaces[*n]));
            let generated = if maps.is_empty() {
                // With no MetadataAccessPolicy nothing is wanted.
                Vec::new()
            } else {
                let cluster = self.list_text(of_round(), cluster_scoped).cluster();
                let generated = generate(
                    &cluster,
                    &GenerateOptions {
                        engine: self.engine,
                        targets: self.targets.clone(),
                        expected: Some(rules.clone()),
                        rules_source: Some(RULES_SOURCE.into()),
                    },
                );
                for w in &generated.warnings {
                    tracing::debug!(warning = %w, "generate");
                }
                generated.objects
            };

            // What the core wants, less excluded and terminating namespaces, each
            // compared with the live object and then kept as text only.
            let mut applies: Vec<(Desired, ApiResource, bool, Option<String>)> = Vec::new();
            let mut round_in_place: Vec<Box<RawValue>> = Vec::new();
            for d in generated {
                let key = key_of(&d);
                if !key.2.is_empty()
                    && (self.excluded(&key.2) || input.terminating.contains(&key.2))
                {
                    continue;
                }
                out.desired += 1;
                listed.insert(key.clone());
                if listed.len() > STATUS_GENERATED_LIMIT {
                    listed.pop_last();
                }
                let body = || serde_json::value::to_raw_value(&d).ok();
                let kind = self.kind_index(&key.0, &key.1);
                let found = kind
                    .and_then(|i| live.get(&(i, key.2.as_str(), key.3.as_str())))
                    .map(|o| Arc::clone(o));
                if let Some(o) = &found {
                    wanted.insert(Arc::as_ptr(o) as usize);
                }
                match found.map(|o| (o, &self.caches.kinds[kind.unwrap_or_default()])) {
                    Some((o, k)) if !owned(&o.metadata) => {
                        let where_ = if key.2.is_empty() {
                            String::new()
                        } else {
                            format!("{}/", key.2)
                        };
                        out.conflicts.push(Conflict {
                            kind: "name-taken",
                            namespace: key.2.clone(),
                            message: format!(
                                "{} {where_}{} exists and was not created by imdsguard (no {} label or no `{FIELD_MANAGER}` field manager): left alone, so the generated one is not in place; rename or delete it",
                                k.resource.kind,
                                key.3,
                                imdsguard_core::generate::MANAGED_BY_LABEL
                            ),
                            objects: Vec::new(),
                        });
                    }
                    Some((o, k)) => {
                        let Some(body) = body() else { continue };
                        if !up_to_date(&dynamic_json(&o, &k.resource), &d) {
                            applies.push((
                                Desired {
                                    key,
                                    body: body.clone(),
                                },
                                k.resource.clone(),
                                k.namespaced,
                                o.resource_version(),
                            ));
                        }
                        round_in_place.push(body);
                    }
                    None => match self.kind_of(&key.0, &key.1) {
                        Some(k) => {
                            let Some(body) = body() else { continue };
                            applies.push((
                                Desired {
                                    key,
                                    body: body.clone(),
                                },
                                k.resource.clone(),
                                k.namespaced,
                                None,
                            ));
                            round_in_place.push(body);
                        }
                        None => out.errors.push(format!(
                            "{} {} is not a kind this controller watches",
                            key.1, key.3
                        )),
                    },
                }
            }
            in_place += round_in_place.len();

            // Allows (and Calico's tier) before the denies they make exceptions to.
            let (first, second): (Vec<_>, Vec<_>) = applies
                .into_iter()
                .partition(|(d, ..)| !d.key.3.starts_with(DENY_NAME));
            for phase in [first, second] {
                let results: Vec<(Awaited, Result<(), String>)> = futures::stream::iter(phase)
                    .map(|(d, ar, namespaced, before)| async move {
                        let (_, _, ns, name) = d.key.clone();
                        let r = self.apply(d, ar.clone(), namespaced, leader).await;
                        (Awaited::Changed(ar, ns, name, before), r)
                    })
                    .buffer_unordered(self.concurrency.max(1))
                    .collect()
                    .await;
                for (a, r) in results {
                    match r {
                        Ok(()) => {
                            out.applied += 1;
                            awaited.push(a);
                        }
                        Err(e) => out.errors.push(e),
                    }
                }
            }

            // Conflicts: the core's audit of these namespaces with the generated objects
            // in place.
            if !maps.is_empty() {
                let mut after = self.list_text(of_round(), cluster_scoped);
                for body in &round_in_place {
                    after.push_raw(body);
                }
                drop(round_in_place);
                let after = after.cluster();
                out.conflicts.extend(self.audit_conflicts(&after, &rules));
            }
        }

        let deletes: Vec<(Arc<DynamicObject>, ApiResource)> = live
            .iter()
            .filter(|(key, o)| {
                owned(&o.metadata)
                    && !wanted.contains(&(Arc::as_ptr(o) as usize))
                    && !input.terminating.contains(key.1)
            })
            .map(|(key, o)| ((*o).clone(), self.caches.kinds[key.0].resource.clone()))
            .collect();
        let results: Vec<(Awaited, Result<(), String>)> = futures::stream::iter(deletes)
            .map(|(o, ar)| async move {
                let a = Awaited::Gone(
                    ar.clone(),
                    o.namespace().unwrap_or_default(),
                    o.name_any(),
                    o.uid(),
                );
                (a, self.delete(o, ar, leader).await)
            })
            .buffer_unordered(self.concurrency.max(1))
            .collect()
            .await;
        for (a, r) in results {
            match r {
                Ok(()) => {
                    out.deleted += 1;
                    awaited.push(a);
                }
                Err(e) => out.errors.push(e),
            }
        }
        drop(wanted);
        drop(live);
        drop(states);
        drop(input);
        self.caught_up(awaited).await;
        self.metrics.set_managed(in_place);

        out.conflicts.sort();
        out.conflicts.dedup();
        for kind in ["reopens-target", "expected-blocked", "name-taken"] {
            self.metrics.set_conflicts(
                kind,
                out.conflicts.iter().filter(|c| c.kind == kind).count(),
            );
        }

        if *leader.borrow() {
            self.write_statuses(&maps, &refused, &listed, &out, leader)
                .await;
            self.publish_events(&maps, &out.conflicts, leader).await;
        }
        out
    }

    fn audit_conflicts(
        &self,
        after: &Cluster,
        rules: &imdsguard_core::access::AccessRules,
    ) -> Vec<Conflict> {
        // Azure's wording as before clouds were named; AWS and GCP name their services.
        let report = audit_in(
            after,
            &AuditOptions {
                targets: self.targets.clone(),
                engine: Some(self.audit_engine),
                list_limit: Some(5),
                expected: Some(rules.clone()),
                signals: Default::default(),
            },
            (self.cloud != Cloud::Azure).then_some(self.cloud),
        );
        let mut out = Vec::new();
        for w in &report.workloads {
            if self.excluded(&w.namespace) || w.host_network {
                continue;
            }
            let reopened: Vec<&imdsguard_core::audit::Verdict> = w
                .verdicts
                .iter()
                .filter(|v| !v.expected && v.policy_allowed)
                .collect();
            if let Some(v) = reopened.first() {
                let targets: Vec<String> = reopened.iter().map(|v| v.target.to_string()).collect();
                out.push(Conflict {
                    kind: "reopens-target",
                    namespace: w.namespace.clone(),
                    message: format!(
                        "namespace {}: {} re-open(s) {} for workload {}, which no MetadataAccessPolicy rule expects ({})",
                        w.namespace,
                        if v.policies.is_empty() {
                            "no policy".to_string()
                        } else {
                            format!("policy {}", v.policies.join(", "))
                        },
                        targets.join(", "),
                        w.id(),
                        v.reason
                    ),
                    objects: Vec::new(),
                });
            }
            if let Some(v) = w.verdicts.iter().find(|v| v.expected && !v.policy_allowed) {
                let objects: Vec<String> = w
                    .expected_by
                    .iter()
                    .filter_map(|r| r.split_once('/').map(|(o, _)| o.to_string()))
                    .collect();
                out.push(Conflict {
                    kind: "expected-blocked",
                    namespace: w.namespace.clone(),
                    message: format!(
                        "namespace {}: workload {} is expected by {} but cannot reach {}: {}{}",
                        w.namespace,
                        w.id(),
                        w.expected_by.join(", "),
                        v.target,
                        v.reason,
                        if v.policies.is_empty() {
                            String::new()
                        } else {
                            format!(" (policy {})", v.policies.join(", "))
                        }
                    ),
                    objects,
                });
            }
        }
        out
    }

    async fn apply(
        &self,
        desired: Desired,
        ar: ApiResource,
        namespaced: bool,
        leader: &watch::Receiver<bool>,
    ) -> Result<(), String> {
        let (_, kind, ns, name) = desired.key;
        let what = if ns.is_empty() {
            format!("{kind} {name}")
        } else {
            format!("{kind} {ns}/{name}")
        };
        if !*leader.borrow() {
            return Err(format!("{what}: not applied, this replica lost the lease"));
        }
        let api: Api<DynamicObject> = if namespaced {
            Api::namespaced_with(self.client.clone(), &ns, &ar)
        } else {
            Api::all_with(self.client.clone(), &ar)
        };
        self.metrics.write("apply", &kind);
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&desired.body),
        )
        .await
        .map(|_| tracing::info!(object = %what, "applied"))
        .map_err(|e| format!("{what}: server-side apply failed: {e}"))
    }

    async fn delete(
        &self,
        o: Arc<DynamicObject>,
        ar: ApiResource,
        leader: &watch::Receiver<bool>,
    ) -> Result<(), String> {
        let ns = o.namespace();
        let name = o.name_any();
        let what = match &ns {
            Some(ns) => format!("{} {ns}/{name}", ar.kind),
            None => format!("{} {name}", ar.kind),
        };
        if !*leader.borrow() {
            return Err(format!("{what}: not deleted, this replica lost the lease"));
        }
        let api: Api<DynamicObject> = match &ns {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        };
        let params = DeleteParams {
            // Only the object seen (a user's object re-created under the name is not ours).
            preconditions: Some(Preconditions {
                uid: o.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        self.metrics.write("delete", &ar.kind);
        match api.delete(&name, &params).await {
            Ok(_) => {
                tracing::info!(object = %what, "deleted");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(format!("{what}: delete failed: {e}")),
        }
    }

    async fn write_statuses(
        &self,
        maps: &[Arc<MetadataAccessPolicy>],
        refused: &[(String, Refusal)],
        listed: &BTreeSet<Key>,
        out: &Outcome,
        leader: &watch::Receiver<bool>,
    ) {
        let mut generated: Vec<GeneratedRef> = listed
            .iter()
            .map(|(api_version, kind, ns, name)| GeneratedRef {
                api_version: api_version.clone(),
                kind: kind.clone(),
                namespace: (!ns.is_empty()).then(|| ns.clone()),
                name: name.clone(),
            })
            .collect();
        generated.sort();
        let total = out.desired;
        generated.truncate(STATUS_GENERATED_LIMIT);
        let pods = self.caches.pods.state();
        let api: Api<MetadataAccessPolicy> = Api::all(self.client.clone());
        for m in maps {
            let name = m.name_any();
            let old = m.status.clone().unwrap_or_default();
            let generation = m.metadata.generation;
            let condition = |type_: &str, status: bool, reason: &str, message: String| {
                let status = if status { "True" } else { "False" };
                let since = old
                    .conditions
                    .iter()
                    .find(|c| c.type_ == type_ && c.status == status)
                    .map(|c| c.last_transition_time.clone())
                    .unwrap_or_else(now);
                Condition {
                    type_: type_.into(),
                    status: status.into(),
                    reason: reason.into(),
                    message,
                    last_transition_time: since,
                    observed_generation: generation,
                }
            };
            let refusal = refused.iter().find(|(n, _)| *n == name);
            let ready = match (refusal, out.errors.is_empty()) {
                (Some((_, e)), _) => condition(
                    "Ready",
                    false,
                    e.reason(),
                    format!(
                        "the rules were refused (they add no access; the pods they name stay denied): {e}"
                    ),
                ),
                (None, false) => condition(
                    "Ready",
                    false,
                    "ApplyFailed",
                    format!(
                        "{} write(s) failed: {}",
                        out.errors.len(),
                        out.errors
                            .iter()
                            .take(3)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                ),
                (None, true) => condition(
                    "Ready",
                    true,
                    "Applied",
                    format!(
                        "{total} {} object(s) in place{}",
                        self.engine.policy_kind(),
                        if total > STATUS_GENERATED_LIMIT {
                            format!(" (status lists the first {STATUS_GENERATED_LIMIT})")
                        } else {
                            String::new()
                        }
                    ),
                ),
            };
            let mine: Vec<&Conflict> = out
                .conflicts
                .iter()
                .filter(|c| c.objects.is_empty() || c.objects.contains(&name))
                .collect();
            let conflicting = if mine.is_empty() {
                condition(
                    "Conflicting",
                    false,
                    "NoConflict",
                    "no conflict found".into(),
                )
            } else {
                let mut msg = mine
                    .iter()
                    .take(5)
                    .map(|c| c.message.clone())
                    .collect::<Vec<_>>()
                    .join("; ");
                if mine.len() > 5 {
                    msg.push_str(&format!("; and {} more", mine.len() - 5));
                }
                condition("Conflicting", true, CONFLICT_REASON, msg)
            };
            let rules = match m.access_rules() {
                Ok(r) => r
                    .rules()
                    .iter()
                    .map(|rule| {
                        let selected = pods
                            .iter()
                            .filter(|p| p.running())
                            .filter(|p| {
                                rule.selects_shape(&PodShapeRef {
                                    namespace: p.metadata.namespace.as_deref().unwrap_or(""),
                                    labels: &p.shape.labels,
                                    service_account: Some(p.service_account()),
                                })
                            })
                            .count();
                        RuleStatus {
                            name: rule
                                .name
                                .strip_prefix(&format!("{name}/"))
                                .unwrap_or(&rule.name)
                                .to_string(),
                            selected_pods: selected as i64,
                        }
                    })
                    .collect(),
                Err(_) => Vec::new(),
            };
            let status = MetadataAccessPolicyStatus {
                observed_generation: generation,
                conditions: vec![ready, conflicting],
                rules,
                engine: Some(self.engine.as_str().into()),
                generated: if refusal.is_some() {
                    Vec::new()
                } else {
                    generated.clone()
                },
            };
            if status == old {
                continue;
            }
            if !*leader.borrow() {
                return;
            }
            let mut body = serde_json::to_value(&status).unwrap_or(Value::Null);
            if let Some(o) = body.as_object_mut() {
                // A merge patch removes what is null: clear what the status no longer has.
                for f in [
                    "observedGeneration",
                    "conditions",
                    "rules",
                    "engine",
                    "generated",
                ] {
                    o.entry(f).or_insert(Value::Null);
                }
            }
            self.metrics.write("status", "MetadataAccessPolicy");
            if let Err(e) = api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "status": body })),
                )
                .await
            {
                tracing::warn!(policy = %name, error = %e, "cannot write the status");
            }
        }
    }

    async fn publish_events(
        &self,
        maps: &[Arc<MetadataAccessPolicy>],
        conflicts: &[Conflict],
        leader: &watch::Receiver<bool>,
    ) {
        let current: BTreeSet<(String, String)> = conflicts
            .iter()
            .map(|c| (c.kind.to_string(), c.message.clone()))
            .collect();
        let new: Vec<&Conflict> = {
            let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
            published.retain(|k| current.contains(k));
            conflicts
                .iter()
                .filter(|c| !published.contains(&(c.kind.to_string(), c.message.clone())))
                .take(EVENTS_PER_RECONCILE)
                .collect()
        };
        let ns_uids: BTreeMap<String, Option<String>> = self
            .caches
            .namespaces
            .state()
            .iter()
            .map(|n| (n.name_any(), n.uid()))
            .collect();
        for c in new {
            if !*leader.borrow() {
                return;
            }
            let event = Event {
                type_: EventType::Warning,
                reason: CONFLICT_REASON.into(),
                note: Some(c.message.chars().take(1000).collect()),
                action: "Reconcile".into(),
                secondary: None,
            };
            let mut refs: Vec<ObjectReference> = maps
                .iter()
                .filter(|m| c.objects.is_empty() || c.objects.contains(&m.name_any()))
                .map(|m| m.object_ref(&()))
                .collect();
            if !c.namespace.is_empty() {
                refs.push(ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Namespace".into()),
                    name: Some(c.namespace.clone()),
                    // In the namespace itself, where `kubectl get events -n NS` finds it.
                    namespace: Some(c.namespace.clone()),
                    uid: ns_uids.get(&c.namespace).cloned().flatten(),
                    ..ObjectReference::default()
                });
            }
            let mut ok = true;
            for r in refs {
                self.metrics.write("event", "Event");
                if let Err(e) = self.recorder.publish(&event, &r).await {
                    tracing::warn!(error = %e, "cannot publish a conflict Event");
                    ok = false;
                }
            }
            if ok {
                self.published
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((c.kind.to_string(), c.message.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! What the rounds of [`NAMESPACES_PER_ROUND`] rely on: with NetworkPolicy output,
    //! the core's generated objects and its audit verdicts for a namespace come from that
    //! namespace's objects alone, so generating and auditing a few namespaces at a time
    //! gives what one pass over the whole cluster gives.

    use super::*;
    use imdsguard_core::access::AccessRules;
    use imdsguard_core::audit::audit;
    use imdsguard_core::manifest::parse;
    use imdsguard_core::model::Object;

    const CLUSTER: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: batch}
---
apiVersion: v1
kind: Namespace
metadata: {name: iso}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}, ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-7d, uid: u1, controller: true}]}
spec: {serviceAccountName: web}
---
apiVersion: v1
kind: Pod
metadata: {name: agent, namespace: batch, labels: {app: agent}}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: iso, labels: {app: db}}
---
apiVersion: v1
kind: Pod
metadata: {name: agent, namespace: iso, labels: {app: agent}}
---
apiVersion: v1
kind: Pod
metadata: {name: stray, namespace: implicit, labels: {app: web}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-egress, namespace: iso}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 169.254.169.254/32}}]}]
";

    const RULES: &str = "\
rules:
- name: p/web
  subjects: [{namespace: shop, podSelector: {matchLabels: {app: web}}}]
  paths: [/metadata/instance/compute]
- name: p/agent
  subjects: [{podSelector: {matchLabels: {app: agent}}}]
  paths: [/metadata/instance]
";

    fn namespace_of(o: &Object) -> &str {
        match o {
            Object::Namespace(n) => &n.name,
            Object::Pod(p) => &p.namespace,
            Object::NetworkPolicy(p) => &p.namespace,
            other => panic!("not in this test: {other:?}"),
        }
    }

    fn opts() -> GenerateOptions {
        GenerateOptions {
            engine: OutputEngine::NetworkPolicy,
            targets: Cloud::Azure.targets(),
            expected: Some(AccessRules::parse(RULES).unwrap()),
            rules_source: Some(RULES_SOURCE.into()),
        }
    }

    /// Generated objects by key, and each workload's verdicts in words, for a cluster.
    fn generate_and_audit(objects: Vec<Object>) -> (BTreeMap<Key, Value>, BTreeSet<String>) {
        let generated = generate(&Cluster::build(objects.clone()), &opts());
        let text = serde_json::to_string(
            &json!({"apiVersion": "v1", "kind": "List", "items": generated.objects}),
        )
        .unwrap();
        let mut after = objects;
        after.extend(parse_api_response("generated", &text).objects);
        let report = audit(
            &Cluster::build(after),
            &AuditOptions {
                targets: Cloud::Azure.targets(),
                engine: Some(audit_engine(OutputEngine::NetworkPolicy)),
                list_limit: Some(5),
                expected: Some(AccessRules::parse(RULES).unwrap()),
                signals: Default::default(),
            },
        );
        let verdicts = report
            .workloads
            .iter()
            .flat_map(|w| {
                w.verdicts.iter().map(move |v| {
                    format!(
                        "{} {} expected={} allowed={} {:?} {}",
                        w.id(),
                        v.target,
                        v.expected,
                        v.policy_allowed,
                        v.policies,
                        v.reason
                    )
                })
            })
            .collect();
        let objects = generated
            .objects
            .into_iter()
            .map(|o| (key_of(&o), o))
            .collect();
        (objects, verdicts)
    }

    #[test]
    fn networkpolicy_output_and_verdicts_are_the_same_namespace_by_namespace() {
        let loaded = parse("cluster.yaml", CLUSTER);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let (whole, whole_verdicts) = generate_and_audit(loaded.objects.clone());
        let names: BTreeSet<&str> = loaded.objects.iter().map(namespace_of).collect();
        let mut rounds = BTreeMap::new();
        let mut round_verdicts = BTreeSet::new();
        for ns in names {
            let (objects, verdicts) = generate_and_audit(
                loaded
                    .objects
                    .iter()
                    .filter(|o| namespace_of(o) == ns)
                    .cloned()
                    .collect(),
            );
            rounds.extend(objects);
            round_verdicts.extend(verdicts);
        }
        // Every namespace has its deny; shop its allow; iso's db stays isolated by its
        // own policy (which re-opens IMDS): the case is not trivial.
        assert!(whole.len() >= 8, "{:?}", whole.keys());
        assert!(
            whole_verdicts
                .iter()
                .any(|v| v.starts_with("iso/db[Pod]") && v.contains("db-egress"))
        );
        assert_eq!(rounds, whole);
        assert_eq!(round_verdicts, whole_verdicts);
    }
}
