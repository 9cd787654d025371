//! One reconcile: the cached objects → the core's cluster → the core's generated
//! objects → server-side apply of what differs, delete of what the controller owns and
//! no longer wants → the core's audit of the result for conflicts → status, Events,
//! metrics. Every semantic step is the core's; this module compares and writes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use imdsguard_core::access::PodShapeRef;
use imdsguard_core::audit::{AuditOptions, audit};
use imdsguard_core::cluster::Cluster;
use imdsguard_core::engine::{Engine, EngineSettings};
use imdsguard_core::generate::{DENY_NAME, GenerateOptions, OutputEngine, generate};
use imdsguard_core::manifest::parse_api_response;
use imdsguard_core::target::Target;
use imdsguard_kube::MetadataAccessPolicy;
use imdsguard_kube::crd::{
    Condition, GeneratedRef, MetadataAccessPolicyStatus, RuleStatus, combined_rules,
};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::cache::{Caches, PolicyKind};
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
    let mut v = serde_json::to_value(o).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        m.insert("apiVersion".into(), json!(ar.api_version));
        m.insert("kind".into(), json!(ar.kind));
    }
    v
}

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
    /// and every policy object the controller does not own.
    fn input_items(&self) -> (Vec<Value>, BTreeSet<String>) {
        let mut items = Vec::new();
        let mut terminating = BTreeSet::new();
        for n in self.caches.namespaces.state() {
            if n.metadata.deletion_timestamp.is_some() {
                terminating.insert(n.name_any());
            }
            items.push(json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": n.name_any(), "labels": n.metadata.labels},
            }));
        }
        for p in self.caches.pods.state() {
            if p.finished() {
                continue;
            }
            let mut v = serde_json::to_value(&*p).unwrap_or(Value::Null);
            if let Some(m) = v.as_object_mut() {
                m.insert("apiVersion".into(), json!("v1"));
                m.insert("kind".into(), json!("Pod"));
            }
            items.push(v);
        }
        for k in &self.caches.kinds {
            for o in k.store.state() {
                if !owned(&o.metadata) {
                    items.push(dynamic_json(&o, &k.resource));
                }
            }
        }
        (items, terminating)
    }

    fn cluster(items: &[Value]) -> Cluster {
        let text =
            serde_json::to_string(&json!({"apiVersion": "v1", "kind": "List", "items": items}))
                .unwrap_or_default();
        let loaded = parse_api_response("cluster", &text);
        for e in loaded.errors.iter().take(5) {
            tracing::warn!(error = %e, "an object of the cluster does not read");
        }
        Cluster::build(loaded.objects)
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
        let (rules, refused) = combined_rules(maps.iter().map(|m| &**m));
        let (items, terminating) = self.input_items();
        let cluster = Self::cluster(&items);

        // What the core wants, less excluded and terminating namespaces.
        let desired: Vec<Value> = if maps.is_empty() {
            Vec::new()
        } else {
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
            generated
                .objects
                .into_iter()
                .filter(|o| {
                    let ns = o
                        .pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    ns.is_empty() || (!self.excluded(ns) && !terminating.contains(ns))
                })
                .collect()
        };
        out.desired = desired.len();

        // The live objects of the generated kinds, by key.
        let mut live: HashMap<Key, (Arc<DynamicObject>, &PolicyKind)> = HashMap::new();
        for k in &self.caches.kinds {
            for o in k.store.state() {
                let key = (
                    k.resource.api_version.clone(),
                    k.resource.kind.clone(),
                    o.namespace().unwrap_or_default(),
                    o.name_any(),
                );
                live.insert(key, (o, k));
            }
        }

        // Each with the resourceVersion the cache holds (none: missing).
        let mut applies: Vec<(Value, ApiResource, bool, Option<String>)> = Vec::new();
        let mut in_place: Vec<Value> = Vec::new();
        let mut wanted: BTreeSet<Key> = BTreeSet::new();
        for d in &desired {
            let key = key_of(d);
            wanted.insert(key.clone());
            match live.get(&key) {
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
                    if !up_to_date(&dynamic_json(o, &k.resource), d) {
                        applies.push((
                            d.clone(),
                            k.resource.clone(),
                            k.namespaced,
                            o.resource_version(),
                        ));
                    }
                    in_place.push(d.clone());
                }
                None => match self.kind_of(&key.0, &key.1) {
                    Some(k) => {
                        applies.push((d.clone(), k.resource.clone(), k.namespaced, None));
                        in_place.push(d.clone());
                    }
                    None => out.errors.push(format!(
                        "{} {} is not a kind this controller watches",
                        key.1, key.3
                    )),
                },
            }
        }
        let deletes: Vec<(Arc<DynamicObject>, ApiResource)> = live
            .iter()
            .filter(|(key, (o, _))| {
                owned(&o.metadata) && !wanted.contains(*key) && !terminating.contains(&key.2)
            })
            .map(|(_, (o, k))| (o.clone(), k.resource.clone()))
            .collect();

        // What the cache must show before the next reconcile reads it: each applied
        // object at another resourceVersion than before, each deleted one gone.
        let mut awaited: Vec<Awaited> = Vec::new();
        // Allows (and Calico's tier) before the denies they make exceptions to.
        let (first, second): (Vec<_>, Vec<_>) = applies.into_iter().partition(|(d, ..)| {
            !d.pointer("/metadata/name")
                .and_then(Value::as_str)
                .is_some_and(|n| n.starts_with(DENY_NAME))
        });
        for phase in [first, second] {
            let results: Vec<(Awaited, Result<(), String>)> = futures::stream::iter(phase)
                .map(|(d, ar, namespaced, before)| async move {
                    let (_, _, ns, name) = key_of(&d);
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
        self.caught_up(awaited).await;
        self.metrics.set_managed(in_place.len());

        // Conflicts: the core's audit of the cluster with the generated objects in place.
        if !maps.is_empty() {
            let mut after = items;
            after.extend(in_place.iter().cloned());
            let after = Self::cluster(&after);
            out.conflicts.extend(self.audit_conflicts(&after, &rules));
        }
        out.conflicts.sort();
        out.conflicts.dedup();
        for kind in ["reopens-target", "expected-blocked", "name-taken"] {
            self.metrics.set_conflicts(
                kind,
                out.conflicts.iter().filter(|c| c.kind == kind).count(),
            );
        }

        if *leader.borrow() {
            self.write_statuses(&maps, &refused, &desired, &out, leader)
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
        let report = audit(
            after,
            &AuditOptions {
                targets: self.targets.clone(),
                engine: Some(self.audit_engine),
                list_limit: Some(5),
                expected: Some(rules.clone()),
                signals: Default::default(),
            },
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
        desired: Value,
        ar: ApiResource,
        namespaced: bool,
        leader: &watch::Receiver<bool>,
    ) -> Result<(), String> {
        let (_, kind, ns, name) = key_of(&desired);
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
            &Patch::Apply(&desired),
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
        refused: &[(String, imdsguard_core::access::AccessError)],
        desired: &[Value],
        out: &Outcome,
        leader: &watch::Receiver<bool>,
    ) {
        let mut generated: Vec<GeneratedRef> = desired
            .iter()
            .map(|d| {
                let (api_version, kind, ns, name) = key_of(d);
                GeneratedRef {
                    api_version,
                    kind,
                    namespace: (!ns.is_empty()).then_some(ns),
                    name,
                }
            })
            .collect();
        generated.sort();
        let total = generated.len();
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
                    "InvalidRules",
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
                                let sa = p.service_account();
                                let labels = p.metadata.labels.clone().unwrap_or_default();
                                let labels: imdsguard_core::model::Labels =
                                    labels.into_iter().collect();
                                rule.selects_shape(&PodShapeRef {
                                    namespace: p.metadata.namespace.as_deref().unwrap_or(""),
                                    labels: &labels,
                                    service_account: Some(&sa),
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
