//! Listeners: what each one serves and the request log line; the accept loop and
//! graceful shutdown are `imdsguard-serve`'s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::body::Incoming;
use imdsguard_core::imds::ImdsApi;
use imdsguard_core::token::redact_jwts;
use imdsguard_serve::{Handler, Open, ServeOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::imds_service::ImdsState;
use crate::wire::WireState;

/// A response as the emulator sends it.
pub(crate) type Answer = Response<Full<Bytes>>;

/// The request is answered by closing the connection (injected drop).
pub(crate) use imdsguard_serve::CloseConnection as Dropped;

/// What a listener serves.
#[derive(Clone)]
pub(crate) enum Role {
    Imds(Arc<ImdsState>),
    WireServer(Arc<WireState>),
    HostGaPlugin(Arc<WireState>),
}

impl Role {
    /// The listener's name in logs.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Role::Imds(_) => "imds",
            Role::WireServer(_) => "wireserver",
            Role::HostGaPlugin(_) => "hostgaplugin",
        }
    }

    async fn answer(
        &self,
        req: http::Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Answer, Dropped> {
        let start = Instant::now();
        let method = req.method().clone();
        // The path only: the query may name identities, and bodies may hold tokens;
        // neither is logged. Whatever a client puts in the path, a JWT is not logged.
        let path = redact_jwts(req.uri().path());
        let (endpoint, result) = match self {
            Role::Imds(state) => (
                ImdsApi::classify(req.uri().path()).as_str(),
                state.handle(req).await,
            ),
            Role::WireServer(state) => ("wireserver", Ok(state.wireserver(&req))),
            Role::HostGaPlugin(state) => ("hostgaplugin", Ok(state.host_ga_plugin(&req))),
        };
        let latency_ms = (start.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0;
        match &result {
            Ok(answer) => tracing::info!(
                listener = self.name(),
                %peer,
                %method,
                %path,
                endpoint,
                status = answer.status().as_u16(),
                latency_ms,
                "request"
            ),
            Err(_) => tracing::info!(
                listener = self.name(),
                %peer,
                %method,
                %path,
                endpoint,
                status = "dropped",
                latency_ms,
                "request"
            ),
        }
        result
    }
}

impl Handler for Role {
    async fn handle(
        self: Arc<Self>,
        req: http::Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Answer, Dropped> {
        self.answer(req, peer).await
    }
}

/// Serves `listener` until `shutdown` turns true, then lets open connections finish
/// their current request (at most `grace`): the one serve loop of `imdsguard-serve`.
pub(crate) async fn serve(
    listener: TcpListener,
    role: Role,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let options = ServeOptions {
        header_read: Duration::from_secs(30),
        max_header_size: None,
        max_connections: usize::MAX,
        grace,
    };
    imdsguard_serve::serve(listener, Arc::new(role), Open, options, shutdown).await;
}
