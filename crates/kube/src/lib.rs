//! imdsguard-kube: the Kubernetes glue of the node agent.
//!
//! - [`pod`]: a Kubernetes `Pod` as the core's plain pod
//!   ([`imdsguard_core::pods::NodePod`]: namespace, name, labels, service account,
//!   addresses, phase, terminating, hostNetwork, the interface annotation), typed, no
//!   text in between; which pod owns which address is the core's
//!   [`imdsguard_core::pods::PodIndex`] to decide;
//! - [`route`]: the node-side interface of a pod address (`ip -j route get ADDR`, a
//!   pure parser and a cache);
//! - [`watch`]: a kube-runtime watcher and reflector store of the pods scheduled on one
//!   node (`spec.nodeName=NODE`), turned into the core's pod index and published as a
//!   snapshot the agent is notified of on every change;
//! - [`events`]: Kubernetes `Warning` Events (`MetadataAccessBlocked`) on pods whose
//!   metadata access was dropped, through kube-runtime's `Recorder` (which aggregates
//!   repeats into a series), capped per pod;
//! - [`live`]: the live audit's read of a whole cluster (kubeconfig context,
//!   discovery, paginated lists) through the core's manifest reader; see
//!   `docs/live-audit.md`.
//!
//! - [`apply`]: server-side apply of dynamic objects (the audit's PolicyReport and
//!   OpenReports objects, `imdsguard audit --apply`), deleting what an earlier run
//!   wrote and this one does not; see `docs/reports.md`.
//!
//! The agent (`imdsguard agent run --kubernetes`) composes these; see `docs/agent.md`.

pub mod apply;
pub mod crd;
pub mod events;
pub mod live;
pub mod pod;
pub mod policies;
pub mod route;
pub mod taint;
pub mod verify;
pub mod watch;

pub use crd::{MetadataAccessPolicy, MetadataAccessPolicySpec, MetadataAccessPolicyStatus};
pub use events::{BlockedAccess, EventReporter, RateLimit};
pub use kube::{Client, Config};
pub use pod::pod_to_node_pod;
pub use route::{InterfaceResolver, parse_route_dev};
pub use watch::{PodWatch, Snapshot};

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
