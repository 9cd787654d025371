//! What can go wrong reading a live cluster, each error saying what, where and what to do.

use std::fmt;
use std::path::PathBuf;

/// Where a kubeconfig was looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Looked {
    /// `--kubeconfig PATH`.
    Flag(PathBuf),
    /// A path of the `KUBECONFIG` variable.
    Env(PathBuf),
    /// The default `~/.kube/config`.
    Home(PathBuf),
    /// No home folder to look in (`HOME` unset).
    NoHome,
}

impl fmt::Display for Looked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Looked::Flag(p) => write!(f, "{} (--kubeconfig)", p.display()),
            Looked::Env(p) => write!(f, "{} (KUBECONFIG)", p.display()),
            Looked::Home(p) => write!(f, "{} (the default)", p.display()),
            Looked::NoHome => f.write_str("~/.kube/config (HOME is not set)"),
        }
    }
}

fn list(items: &[impl fmt::Display]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn contexts(available: &[String]) -> String {
    if available.is_empty() {
        "it defines no context".to_string()
    } else {
        format!("its contexts: {}", available.join(", "))
    }
}

fn scope(namespace: &Option<String>) -> String {
    match namespace {
        Some(ns) => format!("in namespace {ns}"),
        None => "at the cluster scope (all namespaces)".to_string(),
    }
}

/// Why a live cluster could not be read. Nothing is reported when one of these occurs:
/// a read is complete or it is an error.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// No kubeconfig file where kubectl would look, and not running in a pod.
    #[error(
        "no kubeconfig: none found at {}; name one with --kubeconfig FILE or KUBECONFIG, or create ~/.kube/config (e.g. `az aks get-credentials -g GROUP -n CLUSTER`)",
        list(.looked)
    )]
    NoKubeconfig {
        /// Where it was looked for.
        looked: Vec<Looked>,
    },

    /// A kubeconfig file exists but cannot be read.
    #[error("cannot read the kubeconfig {}: {reason}; fix the file (`kubectl config view --kubeconfig {}` shows what kubectl makes of it)", .path.display(), .path.display())]
    KubeconfigUnreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// No `--context` and no `current-context` in the kubeconfig.
    #[error("the kubeconfig has no current context; pass --context NAME ({}) or run `kubectl config use-context NAME`", contexts(.available))]
    NoCurrentContext {
        /// The contexts the kubeconfig defines.
        available: Vec<String>,
    },

    /// `--context` (or `current-context`) names a context the kubeconfig does not define.
    #[error("no context {context:?} in the kubeconfig ({}); pass one of them with --context, or check `kubectl config get-contexts`", contexts(.available))]
    UnknownContext {
        /// The context asked for.
        context: String,
        /// The contexts the kubeconfig defines.
        available: Vec<String>,
    },

    /// The context exists but a client cannot be made from it (no cluster, bad URL,
    /// unreadable certificate, ...).
    #[error(
        "cannot use context {context:?} of the kubeconfig: {reason}; fix its cluster and user entries (`kubectl config view --minify --context {context}`)"
    )]
    BadContext {
        /// The context.
        context: String,
        /// Why.
        reason: String,
    },

    /// The API server does not answer (connection refused, DNS, TLS, timeout).
    #[error(
        "cannot reach the Kubernetes API server {server} (context {context}): {reason}; check that the cluster is running and reachable from here (VPN, firewall, `kubectl --context {context} cluster-info`)"
    )]
    Unreachable {
        /// The context.
        context: String,
        /// The server URL.
        server: String,
        /// The cause, as the connection reported it.
        reason: String,
    },

    /// The API server refused the credentials (401).
    #[error(
        "the API server {server} refused the credentials of context {context} (401 Unauthorized: {message}); log in again (expired token? `az aks get-credentials`, `kubelogin`)"
    )]
    Unauthorized {
        /// The context.
        context: String,
        /// The server URL.
        server: String,
        /// The server's message.
        message: String,
    },

    /// RBAC refused a request (403).
    #[error(
        "forbidden: {} cannot {verb} {resource} {}: the live audit needs `{verb}` on {resource} {}; grant it (docs/live-audit.md has a ClusterRole with exactly the verbs needed), or audit files instead (`kubectl get ... -o json | imdsguard audit -f -`). The server said: {message}",
        .user.as_deref().unwrap_or("the user"),
        scope(.namespace),
        scope(.namespace)
    )]
    Forbidden {
        /// The verb refused (`list` or `get`).
        verb: String,
        /// The resource, `plural` or `plural.group`.
        resource: String,
        /// `None`: at the cluster scope.
        namespace: Option<String>,
        /// The user the server named, when it did.
        user: Option<String>,
        /// The server's message.
        message: String,
    },

    /// `-n NAMESPACE` names a namespace the cluster does not have.
    #[error(
        "namespace {namespace:?} not found in context {context}; check the name (`kubectl get namespaces`)"
    )]
    NamespaceNotFound {
        /// The context.
        context: String,
        /// The namespace.
        namespace: String,
    },

    /// API discovery failed.
    #[error(
        "API discovery on {server} failed: {reason}; check `kubectl --context {context} api-resources`"
    )]
    Discovery {
        /// The context.
        context: String,
        /// The server URL.
        server: String,
        /// Why.
        reason: String,
    },

    /// The first page of a list failed (other than 401/403).
    #[error("{verb} {resource} {} failed: {reason}; nothing was reported; run again, or check `kubectl get {resource}`", scope(.namespace))]
    ListFailed {
        /// `list` or `get`.
        verb: String,
        /// The resource, `plural` or `plural.group`.
        resource: String,
        /// `None`: at the cluster scope.
        namespace: Option<String>,
        /// The error.
        reason: String,
    },

    /// A list failed after some pages were read: the audit would be incomplete, so it is
    /// not reported at all.
    #[error("listing {resource} {} failed midway, after {pages} page(s) and {items} object(s): {reason}; nothing was reported, since a partial read would give verdicts that look complete; {hint}", scope(.namespace))]
    Midway {
        /// The resource, `plural` or `plural.group`.
        resource: String,
        /// `None`: at the cluster scope.
        namespace: Option<String>,
        /// Pages read before the failure.
        pages: usize,
        /// Objects read before the failure.
        items: usize,
        /// The error.
        reason: String,
        /// What to do.
        hint: String,
    },
}
