//! The proxy listener on the shared serve loop of `imdsguard-serve`: its options
//! (header-read timeout, header size limit, connection limit, grace) and its gate (at
//! most `max_connections_per_source` connections from one source address, counted in
//! the metrics; further ones are closed at once).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use imdsguard_serve::{CloseConnection, Handler, Reply};
use imdsguard_serve::{Gate, ServeOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Metrics;
use crate::fairness::{SourceLimiter, SourceSlot};
use crate::handler::State;

/// Admits a connection unless its source holds its maximum; counts open and refused
/// connections.
struct ProxyGate {
    per_source: Arc<SourceLimiter>,
    metrics: Metrics,
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
        let Some(slot) = self.per_source.try_acquire(peer.ip()) else {
            self.metrics.connection_refused("per-source");
            tracing::debug!(%peer, "connection closed: its source holds its maximum of connections");
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
    };
    imdsguard_serve::serve(listener, state, gate, options, shutdown).await;
}
