//! The live audit's read of a cluster: connect with a kubeconfig context, discover which
//! of the kinds the core audit reads are served, list each with pagination, and feed
//! every page to the same reader as files ([`imdsguard_core::manifest::parse_api_response`],
//! the converter of [`imdsguard_core::manifest::parse`]), so that a cluster audited live
//! and from a dump gives the same verdicts by construction.
//!
//! - [`connect`]: the kubeconfig kubectl would read (`--kubeconfig`, `KUBECONFIG`,
//!   `~/.kube/config`; in a pod without one, its service account), its current context
//!   unless told another;
//! - [`read`]: discovery (aggregated, two requests; per group on servers without it),
//!   then one paginated list per served kind (`limit`, `continue`), pages parsed while
//!   the next is fetched, kinds listed four at a time, results in a fixed kind order
//!   (Namespaces first); what the cluster does not serve is a [`SkippedKind`] with its
//!   reason; what engine detection needs is collected on the way ([`EngineSignals`]);
//! - [`Progress`]: told of every page (the binary draws a bar from it; this crate draws
//!   nothing).
//!
//! A read is complete or it is a [`LiveError`]: a list that fails after some pages is an
//! error ([`LiveError::Midway`]), never a report of what was read so far.

use std::path::PathBuf;

use futures::{StreamExt, TryStreamExt};
use imdsguard_core::manifest::{Loaded, parse_api_response};
use imdsguard_core::model::{ControllerKind, Object};
use kube::api::{ListParams, PartialObjectMeta};
use kube::core::Request;
use kube::discovery::Discovery;
use serde::Deserialize;
use serde::de::IgnoredAny;

mod connect;
mod error;
mod kinds;

pub use connect::{Connection, connect};
pub use error::{LiveError, Looked};
pub use kinds::{KindToRead, SkippedKind};

/// Objects per page, as kubectl's `--chunk-size` default.
pub const DEFAULT_PAGE_SIZE: u32 = 500;

/// How many kinds are listed at the same time.
const CONCURRENT_KINDS: usize = 4;

/// Which namespaces to read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Namespaces {
    /// Every namespace (`-A`, the default).
    #[default]
    All,
    /// One namespace (`-n NAME`): its namespaced objects and the Namespace itself;
    /// cluster-scoped policies are still read whole, since they select its pods too.
    One(String),
}

/// What to read, from where.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// `--kubeconfig`; `None`: `KUBECONFIG`, then `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// `--context`; `None`: the kubeconfig's current context.
    pub context: Option<String>,
    /// Which namespaces.
    pub namespaces: Namespaces,
    /// Objects per list request ([`DEFAULT_PAGE_SIZE`]).
    pub page_size: u32,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            kubeconfig: None,
            context: None,
            namespaces: Namespaces::All,
            page_size: DEFAULT_PAGE_SIZE,
        }
    }
}

/// Told of the read's progress. Every method has an empty default.
pub trait Progress: Send + Sync {
    /// Discovery is done: these kinds will be read, these are skipped.
    fn discovered(&self, _kinds: &[KindToRead], _skipped: &[SkippedKind]) {}
    /// One more page of `kind` (`Kind` or `Kind.group`): objects and pages read so far,
    /// and how many objects the server says remain (when it says).
    fn page(&self, _kind: &str, _items: usize, _pages: usize, _remaining: Option<u64>) {}
    /// Every page of `kind` is read.
    fn kind_done(&self, _kind: &str, _items: usize, _pages: usize) {}
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// One kind read: how much and at which version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindRead {
    /// `Kind` (`Kind.group` outside the core groups).
    pub kind: String,
    /// The API version listed.
    pub api_version: String,
    /// Objects read.
    pub items: usize,
    /// Requests made (pages).
    pub pages: usize,
}

/// What engine detection reads from a cluster, besides the objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineSignals {
    /// DaemonSets as (namespace, name), sorted: every namespace when they could be
    /// listed, else those that could (see `notes`).
    pub daemonsets: Vec<(String, String)>,
    /// `plural.group` of every resource served outside the core group (CRDs and
    /// built-in APIs alike), sorted, from discovery (no permission needed).
    pub crds: Vec<String>,
    /// What could not be read for detection, and what that means.
    pub notes: Vec<String>,
}

/// A cluster read whole: what the audit takes as its input.
#[derive(Debug)]
pub struct ClusterRead {
    /// The context read.
    pub context: String,
    /// Its API server.
    pub server: String,
    /// The namespaces read.
    pub namespaces: Namespaces,
    /// The objects, as the core's manifest reader gives them (errors are objects that
    /// could not be read, named `cluster <context>/<Kind>/<ns>/<name>`).
    pub loaded: Loaded,
    /// Per kind read, in reading order.
    pub kinds: Vec<KindRead>,
    /// Kinds the audit reads that this cluster does not serve, with why.
    pub skipped: Vec<SkippedKind>,
    /// For engine detection.
    pub signals: EngineSignals,
}

impl ClusterRead {
    /// `cluster <context> at <server>` (with `, namespace <ns>` under `-n`).
    pub fn describe(&self) -> String {
        match &self.namespaces {
            Namespaces::All => format!("cluster {} at {}", self.context, self.server),
            Namespaces::One(ns) => format!(
                "cluster {} at {}, namespace {ns}",
                self.context, self.server
            ),
        }
    }
}

/// Connects as [`connect`] and reads as [`read`].
pub async fn read_cluster(
    config: &LiveConfig,
    progress: &dyn Progress,
) -> Result<ClusterRead, LiveError> {
    let conn = connect(config.kubeconfig.as_deref(), config.context.as_deref()).await?;
    read(&conn, &config.namespaces, config.page_size, progress).await
}

/// Reads every served kind the audit understands from `conn`'s cluster.
pub async fn read(
    conn: &Connection,
    namespaces: &Namespaces,
    page_size: u32,
    progress: &dyn Progress,
) -> Result<ClusterRead, LiveError> {
    let discovery = discover(conn).await?;
    let (to_read, mut skipped) = kinds::select(&discovery);
    let crds = kinds::served_resources(&discovery);
    drop(discovery);
    progress.discovered(&to_read, &skipped);

    let origin = format!("cluster {}", conn.context);
    let page_size = page_size.max(1);
    // In kind order; the first failure ends the read (lists still running are dropped).
    let results: Vec<Listed> = futures::stream::iter(to_read.iter())
        .map(|kind| {
            let ns = match namespaces {
                Namespaces::One(ns) if kind.namespaced || is_namespace(kind) => Some(ns.as_str()),
                _ => None,
            };
            let origin = origin.clone();
            async move {
                if is_namespace(kind)
                    && let Some(ns) = ns
                {
                    get_namespace(conn, kind, ns, &origin, progress).await
                } else {
                    list_kind(conn, kind, ns, page_size, origin, progress).await
                }
            }
        })
        .buffered(CONCURRENT_KINDS)
        .try_collect()
        .await?;

    let mut loaded = Loaded::default();
    let mut read = Vec::new();
    for r in results {
        match r {
            Listed::Read(part, kind) => {
                loaded.extend(part);
                read.push(kind);
            }
            Listed::Gone(s) => skipped.push(s),
        }
    }

    let mut signals = EngineSignals {
        crds,
        ..EngineSignals::default()
    };
    signals.daemonsets = loaded
        .objects
        .iter()
        .filter_map(|o| match o {
            Object::Controller(c) if c.kind == ControllerKind::DaemonSet => {
                Some((c.namespace.clone(), c.name.clone()))
            }
            _ => None,
        })
        .collect();
    if let Namespaces::One(ns) = namespaces {
        other_daemonsets(conn, ns, page_size, &mut signals).await;
    }
    signals.daemonsets.sort();
    signals.daemonsets.dedup();

    Ok(ClusterRead {
        context: conn.context.clone(),
        server: conn.server.clone(),
        namespaces: namespaces.clone(),
        loaded,
        kinds: read,
        skipped,
        signals,
    })
}

/// The engine signals alone, without reading the cluster's objects: the resources
/// served outside the core group (discovery) and the DaemonSets of every namespace by
/// name, as [`read`] gathers them; what `imdsguard controller` decides its engine from
/// (`core::engine_detect::decide`), as `audit` does.
pub async fn engine_signals(conn: &Connection, page_size: u32) -> Result<EngineSignals, LiveError> {
    use k8s_openapi::api::apps::v1::DaemonSet;
    let discovery = discover(conn).await?;
    let mut signals = EngineSignals {
        crds: kinds::served_resources(&discovery),
        ..EngineSignals::default()
    };
    drop(discovery);
    let all: kube::Api<DaemonSet> = kube::Api::all(conn.client.clone());
    match list_names(&all, page_size.max(1)).await {
        Ok(names) => signals.daemonsets = names,
        Err(e) => signals.notes.push(format!(
            "DaemonSets could not be listed in every namespace ({}); engine detection saw none",
            short(&e)
        )),
    }
    signals.daemonsets.sort();
    signals.daemonsets.dedup();
    Ok(signals)
}

fn is_namespace(kind: &KindToRead) -> bool {
    kind.resource.group.is_empty() && kind.resource.kind == "Namespace"
}

/// The display name of a kind: `Kind`, or `Kind.group` outside the core groups (as the
/// core's skipped counts name kinds).
fn kind_name(kind: &KindToRead) -> String {
    match kind.resource.group.as_str() {
        "" | "apps" | "batch" | "networking.k8s.io" => kind.resource.kind.clone(),
        g => format!("{}.{g}", kind.resource.kind),
    }
}

/// The error's causes, outermost first, joined.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}

/// Whether the error is about reaching the server (no HTTP answer at all).
fn is_transport(e: &kube::Error) -> bool {
    matches!(e, kube::Error::HyperError(_) | kube::Error::Service(_))
}

/// Aggregated discovery (two requests); the per-group walk on servers without it.
async fn discover(conn: &Connection) -> Result<Discovery, LiveError> {
    let fail = |e: kube::Error| -> LiveError {
        match &e {
            _ if is_transport(&e) => LiveError::Unreachable {
                context: conn.context.clone(),
                server: conn.server.clone(),
                reason: chain(&e),
            },
            kube::Error::Api(s) if s.code == 401 => LiveError::Unauthorized {
                context: conn.context.clone(),
                server: conn.server.clone(),
                message: s.message.clone(),
            },
            _ => LiveError::Discovery {
                context: conn.context.clone(),
                server: conn.server.clone(),
                reason: chain(&e),
            },
        }
    };
    // A server without aggregated discovery may answer its legacy documents, which read
    // as an empty aggregated list: no core group means the walk is needed.
    let discovery = match Discovery::new(conn.client.clone()).run_aggregated().await {
        Ok(d) if d.has_group("") => d,
        Ok(_) => {
            tracing::debug!("aggregated discovery gave no core group; discovering group by group");
            Discovery::new(conn.client.clone())
                .run()
                .await
                .map_err(fail)?
        }
        Err(e) if is_transport(&e) || matches!(&e, kube::Error::Api(s) if s.code == 401) => {
            return Err(fail(e));
        }
        Err(e) => {
            tracing::debug!("aggregated discovery failed ({e}); discovering group by group");
            Discovery::new(conn.client.clone())
                .run()
                .await
                .map_err(fail)?
        }
    };
    if !discovery.has_group("") {
        return Err(LiveError::Discovery {
            context: conn.context.clone(),
            server: conn.server.clone(),
            reason: "the server serves no core API (v1): is this a Kubernetes API server?"
                .to_string(),
        });
    }
    Ok(discovery)
}

/// The result of reading one kind.
enum Listed {
    Read(Loaded, KindRead),
    /// Served at discovery, gone when listed (a CRD deleted meanwhile).
    Gone(SkippedKind),
}

/// The head of a list response: its continue token and how many items it holds.
#[derive(Deserialize)]
struct PageHead {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: PageMeta,
    #[serde(default)]
    items: Option<Vec<IgnoredAny>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PageMeta {
    #[serde(default, rename = "continue")]
    continue_token: Option<String>,
    #[serde(default)]
    remaining_item_count: Option<u64>,
}

fn url(kind: &KindToRead, namespace: Option<&str>) -> String {
    let r = &kind.resource;
    let base = if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    match namespace {
        Some(ns) if kind.namespaced => format!("{base}/namespaces/{ns}/{}", r.plural),
        _ => format!("{base}/{}", r.plural),
    }
}

/// The user a 403 message names (`User "system:serviceaccount:a:b" cannot ...`).
fn forbidden_user(message: &str) -> Option<String> {
    let rest = &message[message.find("User \"")? + 6..];
    Some(rest[..rest.find('"')?].to_string())
}

/// What a failed request means, given how much of the list was read before it.
#[allow(clippy::too_many_arguments)]
fn request_error(
    e: kube::Error,
    conn: &Connection,
    verb: &str,
    resource: String,
    namespace: Option<&str>,
    pages: usize,
    items: usize,
) -> LiveError {
    let namespace = namespace.map(str::to_string);
    if let kube::Error::Api(s) = &e {
        match s.code {
            401 => {
                return LiveError::Unauthorized {
                    context: conn.context.clone(),
                    server: conn.server.clone(),
                    message: s.message.clone(),
                };
            }
            403 => {
                return LiveError::Forbidden {
                    verb: verb.to_string(),
                    resource,
                    namespace,
                    user: forbidden_user(&s.message),
                    message: s.message.clone(),
                };
            }
            _ => {}
        }
    }
    if pages == 0 {
        if is_transport(&e) {
            return LiveError::Unreachable {
                context: conn.context.clone(),
                server: conn.server.clone(),
                reason: chain(&e),
            };
        }
        return LiveError::ListFailed {
            verb: verb.to_string(),
            resource,
            namespace,
            reason: chain(&e),
        };
    }
    let hint = match &e {
        kube::Error::Api(s) if s.code == 410 => {
            "the server no longer holds the snapshot the first page was read from (410 Gone: the list took longer than its compaction interval, about 5 minutes); run again"
        }
        _ => {
            "run again; if it keeps failing, check the API server's health (`kubectl get --raw /readyz?verbose`)"
        }
    };
    LiveError::Midway {
        resource,
        namespace,
        pages,
        items,
        reason: chain(&e),
        hint: hint.to_string(),
    }
}

/// Lists one kind page by page; each page is parsed (on a blocking thread) while the
/// next one is fetched.
async fn list_kind(
    conn: &Connection,
    kind: &KindToRead,
    namespace: Option<&str>,
    page_size: u32,
    origin: String,
    progress: &dyn Progress,
) -> Result<Listed, LiveError> {
    let name = kind_name(kind);
    let resource = kind.resource_name();
    let request = Request::new(url(kind, namespace));
    let mut params = ListParams::default().limit(page_size);
    let mut loaded = Loaded::default();
    let mut pending: Option<tokio::task::JoinHandle<Loaded>> = None;
    let (mut pages, mut items) = (0usize, 0usize);
    loop {
        let req = request
            .list(&params)
            .expect("a list request with a limit and a continue token is valid");
        let text = match conn.client.request_text(req).await {
            Ok(t) => t,
            Err(kube::Error::Api(s)) if s.code == 404 && pages == 0 => {
                return Ok(Listed::Gone(SkippedKind {
                    kind: name,
                    reason: format!(
                        "{} was served at discovery but not found when listed (its CRD was removed meanwhile?)",
                        kind.resource.api_version
                    ),
                }));
            }
            Err(e) => {
                return Err(request_error(
                    e, conn, "list", resource, namespace, pages, items,
                ));
            }
        };
        let head = match serde_json::from_str::<PageHead>(&text) {
            Ok(h) if h.kind.ends_with("List") && h.items.is_some() => h,
            other => {
                let why = match other {
                    Ok(h) => format!("the answer is a {:?}, not a list", h.kind),
                    Err(e) => format!("the answer is not a list: {e}"),
                };
                let e = LiveError::ListFailed {
                    verb: "list".into(),
                    resource: resource.clone(),
                    namespace: namespace.map(str::to_string),
                    reason: why.clone(),
                };
                return Err(if pages == 0 {
                    e
                } else {
                    LiveError::Midway {
                        resource,
                        namespace: namespace.map(str::to_string),
                        pages,
                        items,
                        reason: why,
                        hint: "run again".into(),
                    }
                });
            }
        };
        pages += 1;
        items += head.items.map_or(0, |i| i.len());
        let next = head.metadata.continue_token.filter(|c| !c.is_empty());
        progress.page(&name, items, pages, head.metadata.remaining_item_count);
        let origin = origin.clone();
        let parse = tokio::task::spawn_blocking(move || parse_api_response(&origin, &text));
        if let Some(previous) = pending.replace(parse) {
            loaded.extend(previous.await.expect("the page parser does not panic"));
        }
        match next {
            Some(token) => params.continue_token = Some(token),
            None => break,
        }
    }
    if let Some(last) = pending {
        loaded.extend(last.await.expect("the page parser does not panic"));
    }
    progress.kind_done(&name, items, pages);
    Ok(Listed::Read(
        loaded,
        KindRead {
            kind: name,
            api_version: kind.resource.api_version.clone(),
            items,
            pages,
        },
    ))
}

/// `-n NAME`: the one Namespace, by `get`.
async fn get_namespace(
    conn: &Connection,
    kind: &KindToRead,
    namespace: &str,
    origin: &str,
    progress: &dyn Progress,
) -> Result<Listed, LiveError> {
    let name = kind_name(kind);
    let req = Request::new(url(kind, None))
        .get(namespace, &Default::default())
        .expect("a get request is valid");
    let text = match conn.client.request_text(req).await {
        Ok(t) => t,
        Err(kube::Error::Api(s)) if s.code == 404 => {
            return Err(LiveError::NamespaceNotFound {
                context: conn.context.clone(),
                namespace: namespace.to_string(),
            });
        }
        Err(e) => {
            return Err(request_error(
                e,
                conn,
                "get",
                kind.resource_name(),
                // RBAC sees the get of a Namespace as a request in that namespace (a
                // RoleBinding there can grant it): named so, not the cluster scope.
                Some(namespace),
                0,
                0,
            ));
        }
    };
    let loaded = parse_api_response(origin, &text);
    progress.page(&name, 1, 1, None);
    progress.kind_done(&name, 1, 1);
    Ok(Listed::Read(
        loaded,
        KindRead {
            kind: name,
            api_version: kind.resource.api_version.clone(),
            items: 1,
            pages: 1,
        },
    ))
}

/// Under `-n`, DaemonSets of the other namespaces for engine detection (names only):
/// every namespace if allowed, else `kube-system`, else a note saying what detection
/// could not see.
async fn other_daemonsets(
    conn: &Connection,
    namespace: &str,
    page_size: u32,
    signals: &mut EngineSignals,
) {
    use k8s_openapi::api::apps::v1::DaemonSet;
    let all: kube::Api<DaemonSet> = kube::Api::all(conn.client.clone());
    match list_names(&all, page_size).await {
        Ok(names) => signals.daemonsets.extend(names),
        Err(e) => {
            let system: kube::Api<DaemonSet> =
                kube::Api::namespaced(conn.client.clone(), "kube-system");
            match list_names(&system, page_size).await {
                Ok(names) => {
                    signals.daemonsets.extend(names);
                    signals.notes.push(format!(
                        "DaemonSets could not be listed in every namespace ({}); engine detection saw those of kube-system and {namespace} only",
                        short(&e)
                    ));
                }
                Err(e2) => signals.notes.push(format!(
                    "DaemonSets could not be listed outside namespace {namespace} ({}; kube-system: {}); engine detection saw those of {namespace} only",
                    short(&e),
                    short(&e2)
                )),
            }
        }
    }
}

fn short(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}", s.code, s.reason),
        e => chain(e),
    }
}

async fn list_names<K>(
    api: &kube::Api<K>,
    page_size: u32,
) -> Result<Vec<(String, String)>, kube::Error>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let mut params = ListParams::default().limit(page_size);
    let mut out = Vec::new();
    loop {
        let page = api.list_metadata(&params).await?;
        out.extend(page.items.iter().map(|m: &PartialObjectMeta<K>| {
            (
                m.metadata.namespace.clone().unwrap_or_default(),
                m.metadata.name.clone().unwrap_or_default(),
            )
        }));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => params.continue_token = Some(c),
            None => return Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_user_is_read_from_the_message() {
        assert_eq!(
            forbidden_user(
                r#"pods is forbidden: User "system:serviceaccount:a:b" cannot list resource "pods" in API group "" at the cluster scope"#
            )
            .as_deref(),
            Some("system:serviceaccount:a:b")
        );
        assert_eq!(forbidden_user("forbidden"), None);
    }

    #[test]
    fn page_head_reads_the_continue_token_and_counts_items() {
        let h: PageHead = serde_json::from_str(
            r#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"9","continue":"tok","remainingItemCount":700},"items":[{"a":1},{}]}"#,
        )
        .unwrap();
        assert_eq!(h.kind, "PodList");
        assert_eq!(h.metadata.continue_token.as_deref(), Some("tok"));
        assert_eq!(h.metadata.remaining_item_count, Some(700));
        assert_eq!(h.items.map(|i| i.len()), Some(2));
    }

    #[test]
    fn every_kind_the_audit_reads_is_wanted() {
        // The kinds `imdsguard_core::manifest` classifies (Nodes aside) each have an entry.
        for kind in [
            "Namespace",
            "Pod",
            "ReplicationController",
            "Deployment",
            "ReplicaSet",
            "StatefulSet",
            "DaemonSet",
            "Job",
            "CronJob",
            "NetworkPolicy",
            "AdminNetworkPolicy",
            "BaselineAdminNetworkPolicy",
            "ClusterNetworkPolicy",
            "GlobalNetworkPolicy",
            "Tier",
            "GlobalNetworkSet",
            "NetworkSet",
            "CiliumNetworkPolicy",
            "CiliumClusterwideNetworkPolicy",
            "CiliumCIDRGroup",
        ] {
            assert!(
                kinds::WANTED.iter().any(|w| w.kind == kind),
                "{kind} is not listed"
            );
        }
    }
}
