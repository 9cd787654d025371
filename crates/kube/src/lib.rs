//! imdsguard-kube: the Kubernetes glue of the node agent.
//!
//! - [`pod`]: a Kubernetes `Pod` as the agent needs it (pure: namespace, name, labels,
//!   service account, addresses; hostNetwork, finished and address-less pods skipped);
//! - [`route`]: the node-side interface of a pod address (`ip -j route get ADDR`, a
//!   pure parser and a cache);
//! - [`watch`]: a watch of the pods scheduled on one node (`spec.nodeName=NODE`), kept as
//!   a snapshot the agent is notified of on every change;
//! - [`events`]: Kubernetes `Warning` Events (`MetadataAccessBlocked`) on pods whose
//!   metadata access was dropped, rate-limited per pod.
//!
//! The agent (`imdsguard agent run --kubernetes`) composes these; see `docs/agent.md`.

pub mod events;
pub mod pod;
pub mod route;
pub mod watch;

pub use events::{BlockedAccess, EventReporter, RateLimit};
pub use kube::{Client, Config};
pub use pod::{KubePod, pod_to_info};
pub use route::{InterfaceResolver, parse_route_dev};
pub use watch::{NodePodEntry, PodWatch, Snapshot};

/// Why the Kubernetes glue could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No Kubernetes client configuration (in-cluster service account or kubeconfig).
    #[error("no Kubernetes configuration: {0}")]
    Config(#[source] kube::Error),
}

/// A client from the environment: the in-cluster service account (a pod of the
/// DaemonSet), else the kubeconfig.
pub async fn default_client() -> Result<Client, KubeError> {
    Client::try_default().await.map_err(KubeError::Config)
}
