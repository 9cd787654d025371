//! Server-side apply of dynamic objects, and deletion of the objects an earlier run wrote
//! that this one no longer does (`imdsguard audit --apply`: the report objects of
//! `imdsguard_core::report_objects`).
//!
//! Each object is a JSON value with `apiVersion`, `kind` and `metadata.name` (and
//! `metadata.namespace` for a namespaced kind). Its resource is found through discovery
//! ([`kube::discovery::pinned_kind`], once per kind), so a kind the cluster does not
//! serve (its CRD is not installed) is [`ApplyError::NoKind`] before anything is
//! written. Every object is then applied whole with `Patch::Apply` under one field
//! manager, forcing conflicts (the objects are the applier's own): fields and list
//! entries the manager wrote before and no longer writes are removed by the API server.
//! With [`Prune`], objects of the given kinds that carry the label selector, in the given
//! namespaces (and cluster-scoped ones when [`Prune::cluster_scoped`]), and were not
//! applied this time are deleted afterwards; pruning is skipped when an object failed, so
//! a partial run never deletes.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use futures::{StreamExt, TryStreamExt, stream};
use kube::Client;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::Status;
use kube::discovery::{self, Scope};

pub use kube::api::GroupVersionKind;

/// How many requests are in flight at once.
const CONCURRENCY: usize = 8;

/// One object, named as `kubectl` names it: `policyreports.wgpolicyk8s.io
/// payments/imdsguard-payments`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    /// `plural.group` (`plural` for the core group).
    pub resource: String,
    /// Kind.
    pub kind: String,
    /// Namespace, for a namespaced kind.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.resource, self.name),
            None => write!(f, "{} {}", self.resource, self.name),
        }
    }
}

/// What to delete after applying: objects of these kinds carrying `label_selector`, in
/// `namespaces` (namespaced kinds) or cluster-wide (cluster-scoped kinds, only when
/// `cluster_scoped`), that were not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prune {
    /// The kinds (every one is discovered; one the cluster lacks is an error).
    pub kinds: Vec<GroupVersionKind>,
    /// A label selector (`app.kubernetes.io/managed-by=imdsguard`); never empty.
    pub label_selector: String,
    /// The namespaces whose objects the run covers.
    pub namespaces: Vec<String>,
    /// Whether the run covers the cluster-scoped objects too. `false` for a run that
    /// read one namespace (`audit -n NS`): the cluster-scoped objects a whole-cluster run
    /// wrote are not its to delete, and its credentials may not even list them.
    pub cluster_scoped: bool,
}

/// Settings of [`apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOptions {
    /// The field manager (`imdsguard`).
    pub field_manager: String,
    /// Delete what an earlier run wrote and this one does not.
    pub prune: Option<Prune>,
}

/// What [`apply`] did.
#[derive(Debug, Default)]
pub struct ApplyOutcome {
    /// Objects applied, in input order.
    pub applied: Vec<ObjectId>,
    /// Objects deleted by the prune, sorted.
    pub deleted: Vec<ObjectId>,
    /// Objects that could not be applied (then nothing was pruned).
    pub failed: Vec<ApplyError>,
}

/// Why an object could not be applied (or the run could not start).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// An object without `apiVersion`, `kind` or `metadata.name`, or not an object.
    #[error("object {index} cannot be applied: {reason}")]
    BadObject {
        /// Its position in the input (0-based).
        index: usize,
        /// What is missing.
        reason: String,
    },
    /// The API server serves no such kind: its CustomResourceDefinition is not installed.
    #[error(
        "the cluster serves no {kind} in {api_version}: its CustomResourceDefinition is not installed"
    )]
    NoKind {
        /// `group/version`.
        api_version: String,
        /// Kind.
        kind: String,
    },
    /// A namespaced object for a namespace the cluster does not have.
    #[error(
        "namespace {namespace} does not exist in the cluster, so {object} cannot be written: create it (`kubectl create namespace {namespace}`) or audit the cluster itself"
    )]
    NoNamespace {
        /// The namespace.
        namespace: String,
        /// The object.
        object: ObjectId,
    },
    /// RBAC refused a request.
    #[error(
        "forbidden: the credentials may not {verb} {resource}{}: {message}; grant {} on {resource} (docs/reports.md lists the RBAC rules)",
        .namespace.as_ref().map(|n| format!(" in namespace {n}")).unwrap_or_default(),
        grant(.verb)
    )]
    Forbidden {
        /// The verb (`patch`, `list`, `delete`, ...).
        verb: &'static str,
        /// `plural.group`.
        resource: String,
        /// The namespace, for a namespaced request.
        namespace: Option<String>,
        /// The API server's message.
        message: String,
    },
    /// The API server refused the object (schema validation, 422).
    #[error("the API server refused {object}: {message}")]
    Invalid {
        /// The object.
        object: ObjectId,
        /// The API server's message.
        message: String,
    },
    /// Any other answer of the API server.
    #[error("{verb} {what} failed: {message} (HTTP {code}, {reason})")]
    Api {
        /// The verb.
        verb: &'static str,
        /// The object or resource.
        what: String,
        /// HTTP status code.
        code: u16,
        /// The API server's reason.
        reason: String,
        /// The API server's message.
        message: String,
    },
    /// No answer: the API server could not be reached.
    #[error(
        "cannot reach the Kubernetes API server ({verb} {what}): {reason}; check that the cluster is running and reachable from here"
    )]
    Unreachable {
        /// The verb.
        verb: &'static str,
        /// The object or resource.
        what: String,
        /// The cause.
        reason: String,
    },
}

/// The verbs to grant for a refused one: server-side apply creates what is missing.
fn grant(verb: &str) -> &str {
    if verb == "patch" {
        "create and patch"
    } else {
        verb
    }
}

/// `plural.group` of a resource.
fn resource_name(ar: &ApiResource) -> String {
    if ar.group.is_empty() {
        ar.plural.clone()
    } else {
        format!("{}.{}", ar.plural, ar.group)
    }
}

/// The whole cause chain of an error, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// One failed request, as an [`ApplyError`].
struct Request<'a> {
    verb: &'static str,
    resource: &'a str,
    namespace: Option<&'a str>,
    what: String,
}

impl Request<'_> {
    fn error(&self, e: kube::Error) -> ApplyError {
        match e {
            kube::Error::Api(status) => self.status(&status),
            other => ApplyError::Unreachable {
                verb: self.verb,
                what: self.what.clone(),
                reason: chain(&other),
            },
        }
    }

    fn status(&self, s: &Status) -> ApplyError {
        if s.code == 403 {
            return ApplyError::Forbidden {
                verb: self.verb,
                resource: self.resource.to_string(),
                namespace: self.namespace.map(String::from),
                message: s.message.clone(),
            };
        }
        ApplyError::Api {
            verb: self.verb,
            what: self.what.clone(),
            code: s.code,
            reason: s.reason.clone(),
            message: s.message.clone(),
        }
    }
}

/// The `(group, version, kind)` of an object's `apiVersion` and `kind`.
fn gvk_of(v: &serde_json::Value) -> Option<GroupVersionKind> {
    let api_version = v.get("apiVersion")?.as_str()?;
    let kind = v.get("kind")?.as_str()?;
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    if version.is_empty() || kind.is_empty() {
        return None;
    }
    Some(GroupVersionKind::gvk(group, version, kind))
}

/// Discovers kinds once each.
struct Resources {
    client: Client,
    found: HashMap<GroupVersionKind, (ApiResource, bool)>,
}

impl Resources {
    /// The resource of a kind and whether it is namespaced.
    async fn get(&mut self, gvk: &GroupVersionKind) -> Result<(ApiResource, bool), ApplyError> {
        if let Some(r) = self.found.get(gvk) {
            return Ok(r.clone());
        }
        let api_version = gvk.api_version();
        let missing = || ApplyError::NoKind {
            api_version: api_version.clone(),
            kind: gvk.kind.clone(),
        };
        let r = match discovery::pinned_kind(&self.client, gvk).await {
            Ok((ar, caps)) => (ar, caps.scope == Scope::Namespaced),
            Err(kube::Error::Discovery(_)) => return Err(missing()),
            Err(kube::Error::Api(s)) if s.code == 404 => return Err(missing()),
            Err(e) => {
                return Err(Request {
                    verb: "discover",
                    resource: &api_version,
                    namespace: None,
                    what: format!("the resources of {api_version}"),
                }
                .error(e));
            }
        };
        self.found.insert(gvk.clone(), r.clone());
        Ok(r)
    }
}

/// One object ready to apply.
struct Prepared {
    id: ObjectId,
    resource: ApiResource,
    object: DynamicObject,
}

/// Applies `objects` in order with server-side apply, then prunes (see the module docs).
/// `Err` only when nothing could be applied: an object is malformed or a kind is not
/// served; per-object failures are in [`ApplyOutcome::failed`].
pub async fn apply(
    client: &Client,
    objects: &[serde_json::Value],
    opts: &ApplyOptions,
) -> Result<ApplyOutcome, ApplyError> {
    let mut resources = Resources {
        client: client.clone(),
        found: HashMap::new(),
    };
    // Discover every kind and check every object before writing anything.
    let mut prepared = Vec::with_capacity(objects.len());
    for (index, v) in objects.iter().enumerate() {
        let bad = |reason: &str| ApplyError::BadObject {
            index,
            reason: reason.to_string(),
        };
        let gvk = gvk_of(v).ok_or_else(|| bad("it has no apiVersion and kind"))?;
        let (resource, namespaced) = resources.get(&gvk).await?;
        let object: DynamicObject =
            serde_json::from_value(v.clone()).map_err(|e| bad(&e.to_string()))?;
        let name = object
            .metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("it has no metadata.name"))?;
        let namespace = object.metadata.namespace.clone();
        match (namespaced, &namespace) {
            (true, None) => {
                return Err(bad(&format!(
                    "{} {name} is namespaced and has no metadata.namespace",
                    gvk.kind
                )));
            }
            (false, Some(ns)) => {
                return Err(bad(&format!(
                    "{} {name} is cluster-scoped but has metadata.namespace {ns}",
                    gvk.kind
                )));
            }
            _ => {}
        }
        prepared.push(Prepared {
            id: ObjectId {
                resource: resource_name(&resource),
                kind: gvk.kind.clone(),
                namespace,
                name,
            },
            resource,
            object,
        });
    }
    let mut prune_kinds = Vec::new();
    if let Some(p) = &opts.prune {
        for gvk in &p.kinds {
            let (ar, namespaced) = resources.get(gvk).await?;
            prune_kinds.push((ar, namespaced));
        }
    }

    let params = PatchParams::apply(&opts.field_manager).force();
    let results: Vec<Result<ObjectId, ApplyError>> = stream::iter(prepared)
        .map(|p| apply_one(client, p, &params))
        .buffered(CONCURRENCY)
        .collect()
        .await;
    let mut outcome = ApplyOutcome::default();
    for r in results {
        match r {
            Ok(id) => outcome.applied.push(id),
            Err(e) => outcome.failed.push(e),
        }
    }
    if let Some(p) = &opts.prune
        && outcome.failed.is_empty()
    {
        let keep: BTreeSet<&ObjectId> = outcome.applied.iter().collect();
        let mut stale = Vec::new();
        for (ar, namespaced) in &prune_kinds {
            if !namespaced && !p.cluster_scoped {
                continue;
            }
            stale.extend(list_labelled(client, ar, *namespaced, p).await?);
        }
        stale.retain(|id| !keep.contains(id));
        stale.sort();
        let deleted: Vec<Result<ObjectId, ApplyError>> = stream::iter(stale)
            .map(|id| delete_one(client, &prune_kinds, id))
            .buffered(CONCURRENCY)
            .collect()
            .await;
        for d in deleted {
            match d {
                Ok(id) => outcome.deleted.push(id),
                Err(e) => outcome.failed.push(e),
            }
        }
    }
    Ok(outcome)
}

async fn apply_one(
    client: &Client,
    p: Prepared,
    params: &PatchParams,
) -> Result<ObjectId, ApplyError> {
    let api: Api<DynamicObject> = match &p.id.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &p.resource),
        None => Api::all_with(client.clone(), &p.resource),
    };
    let req = Request {
        verb: "patch",
        resource: &p.id.resource,
        namespace: p.id.namespace.as_deref(),
        what: p.id.to_string(),
    };
    match api
        .patch(&p.id.name, params, &Patch::Apply(&p.object))
        .await
    {
        Ok(_) => Ok(p.id),
        Err(kube::Error::Api(s)) if s.code == 404 && p.id.namespace.is_some() => {
            Err(ApplyError::NoNamespace {
                namespace: p.id.namespace.clone().unwrap_or_default(),
                object: p.id,
            })
        }
        Err(kube::Error::Api(s)) if s.code == 422 => Err(ApplyError::Invalid {
            object: p.id,
            message: s.message,
        }),
        Err(e) => Err(req.error(e)),
    }
}

/// The objects of one kind that carry the prune's labels, where the run covers.
async fn list_labelled(
    client: &Client,
    ar: &ApiResource,
    namespaced: bool,
    p: &Prune,
) -> Result<Vec<ObjectId>, ApplyError> {
    let resource = resource_name(ar);
    let lp = ListParams::default().labels(&p.label_selector);
    let scopes: Vec<Option<&str>> = if namespaced {
        p.namespaces.iter().map(|n| Some(n.as_str())).collect()
    } else {
        vec![None]
    };
    stream::iter(scopes)
        .map(|ns| {
            let (resource, lp) = (&resource, &lp);
            async move {
                let api: Api<DynamicObject> = match ns {
                    Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
                    None => Api::all_with(client.clone(), ar),
                };
                let list = api.list_metadata(lp).await.map_err(|e| {
                    Request {
                        verb: "list",
                        resource,
                        namespace: ns,
                        what: resource.clone(),
                    }
                    .error(e)
                })?;
                Ok::<_, ApplyError>(
                    list.items
                        .into_iter()
                        .filter_map(|o| {
                            Some(ObjectId {
                                resource: resource.clone(),
                                kind: ar.kind.clone(),
                                namespace: o.metadata.namespace,
                                name: o.metadata.name?,
                            })
                        })
                        .collect::<Vec<_>>(),
                )
            }
        })
        .buffered(CONCURRENCY)
        .try_concat()
        .await
}

async fn delete_one(
    client: &Client,
    kinds: &[(ApiResource, bool)],
    id: ObjectId,
) -> Result<ObjectId, ApplyError> {
    let Some((ar, _)) = kinds
        .iter()
        .find(|(ar, _)| resource_name(ar) == id.resource)
    else {
        return Ok(id);
    };
    let api: Api<DynamicObject> = match &id.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    };
    match api.delete(&id.name, &DeleteParams::default()).await {
        Ok(_) => Ok(id),
        // Gone already: what the prune wanted.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(id),
        Err(e) => Err(Request {
            verb: "delete",
            resource: &id.resource,
            namespace: id.namespace.as_deref(),
            what: id.to_string(),
        }
        .error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_ids_read_like_kubectl() {
        let id = ObjectId {
            resource: "policyreports.wgpolicyk8s.io".into(),
            kind: "PolicyReport".into(),
            namespace: Some("payments".into()),
            name: "imdsguard-payments".into(),
        };
        assert_eq!(
            id.to_string(),
            "policyreports.wgpolicyk8s.io payments/imdsguard-payments"
        );
        let cluster = ObjectId {
            namespace: None,
            name: "imdsguard".into(),
            ..id
        };
        assert_eq!(
            cluster.to_string(),
            "policyreports.wgpolicyk8s.io imdsguard"
        );
    }

    #[test]
    fn kinds_come_from_api_version_and_kind() {
        let v = serde_json::json!({"apiVersion": "openreports.io/v1alpha1", "kind": "Report"});
        assert_eq!(
            gvk_of(&v),
            Some(GroupVersionKind::gvk(
                "openreports.io",
                "v1alpha1",
                "Report"
            ))
        );
        let core = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap"});
        assert_eq!(
            gvk_of(&core),
            Some(GroupVersionKind::gvk("", "v1", "ConfigMap"))
        );
        assert_eq!(gvk_of(&serde_json::json!({"kind": "Report"})), None);
        assert_eq!(
            gvk_of(&serde_json::json!({"apiVersion": "x/", "kind": "Report"})),
            None
        );
    }

    #[test]
    fn forbidden_names_verb_resource_and_namespace() {
        let req = Request {
            verb: "patch",
            resource: "policyreports.wgpolicyk8s.io",
            namespace: Some("payments"),
            what: "x".into(),
        };
        let status = Status::failure(
            "policyreports.wgpolicyk8s.io \"imdsguard-payments\" is forbidden",
            "Forbidden",
        )
        .with_code(403);
        let e = req.status(&status);
        assert_eq!(
            e.to_string(),
            "forbidden: the credentials may not patch policyreports.wgpolicyk8s.io in namespace payments: policyreports.wgpolicyk8s.io \"imdsguard-payments\" is forbidden; grant create and patch on policyreports.wgpolicyk8s.io (docs/reports.md lists the RBAC rules)"
        );
        let other = req.status(&Status::failure("boom", "InternalError").with_code(500));
        assert_eq!(
            other.to_string(),
            "patch x failed: boom (HTTP 500, InternalError)"
        );
    }
}
