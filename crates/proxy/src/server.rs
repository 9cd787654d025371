//! The proxy listener on the shared serve loop of `imdsguard-serve`: its options
//! (header-read timeout, header size limit, connection limit, grace) and its gate (at
//! most `max_connections_per_source` connections from one source, counted in the
//! metrics; further ones are closed at once). A source is an address, except for a
//! caller on the proxy's own host when host callers are looked up: its address and its
//! client socket's cgroup, so that hostNetwork pods and node processes, which all
//! share the node's addresses, do not share one budget.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use imdsguard_serve::{CloseConnection, Handler, Reply};
use imdsguard_serve::{Gate, ServeOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Metrics;
use crate::fairness::{SourceKey, SourceLimiter, SourceSlot};
use crate::handler::State;

/// Admits a connection unless its source holds its maximum; counts open and refused
/// connections.
struct ProxyGate {
    per_source: Arc<SourceLimiter>,
    metrics: Metrics,
    /// The pod index and the host-caller lookup.
    state: Arc<State>,
}

impl ProxyGate {
    /// The source `peer` counts as: a known pod's address as it is (no lookup); another
    /// address, when host callers are looked up, with its client socket's cgroup (a
    /// process of this host: a hostNetwork pod's container, the kubelet), else as it is.
    fn source(&self, peer: SocketAddr) -> SourceKey {
        let Some(host) = self.state.host.as_ref() else {
            return SourceKey::new(peer.ip(), None);
        };
        let known_pod = self.state.control.pods.load().get(peer.ip()).is_some();
        let (key, failed) =
            SourceKey::of_connection(peer.ip(), known_pod, || host.client_cgroup(peer));
        if let Some(e) = failed {
            // Counted by address, as without the lookup; the request's own lookup logs
            // and counts the failure.
            tracing::debug!(%peer, error = %e, "looking up a connection's socket failed; it counts against its address");
        }
        key
    }
}

/// Held while a proxy connection is open.
struct OpenConnection {
    metrics: Metrics,
    _slot: SourceSlot,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.metrics.connection_closed();
    }
}

impl Gate for ProxyGate {
    type Guard = OpenConnection;

    fn admit(&self, peer: SocketAddr) -> Option<OpenConnection> {
        // A source at its maximum loses this connection (closed now, before anything
        // is read) and keeps the ones it has; nobody else waits.
        let source = self.source(peer);
        let Some(slot) = self.per_source.try_acquire(source) else {
            self.metrics.connection_refused("per-source");
            tracing::debug!(%peer, cgroup_id = source.cgroup(), "connection closed: its source holds its maximum of connections");
            return None;
        };
        self.metrics.connection_opened();
        Some(OpenConnection {
            metrics: self.metrics.clone(),
            _slot: slot,
        })
    }
}

/// Serves the proxy listener until `shutdown` turns true.
pub(crate) async fn serve_proxy(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let l = state.limits.request;
    let options = ServeOptions {
        header_read: state.timeouts.header_read,
        // The request line and the header block; canon then applies its finer limits
        // and answers with a denial hyper's bare 431 cannot give.
        max_header_size: Some(l.max_target + 2 * l.max_header_bytes + 1024),
        max_connections: state.limits.max_connections,
        grace,
    };
    let gate = ProxyGate {
        per_source: SourceLimiter::new(state.limits.max_connections_per_source),
        metrics: state.metrics.clone(),
        state: state.clone(),
    };
    imdsguard_serve::serve(listener, state, gate, options, shutdown).await;
}
