//! Listeners: the accept loop, one HTTP/1.1 connection task per client, the request
//! log line, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use imdsguard_core::imds::Endpoint;
use imdsguard_core::token::redact_jwts;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::imds_service::ImdsState;
use crate::wire::WireState;

/// A response as the emulator sends it.
pub(crate) type Answer = Response<Full<Bytes>>;

/// The request is answered by closing the connection (injected drop).
#[derive(Debug)]
pub(crate) struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped (injected fault)")
    }
}

impl std::error::Error for Dropped {}

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

    async fn handle(
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
                Endpoint::classify(req.uri().path()).as_str(),
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

/// Serves `listener` until `shutdown` turns true, then lets open connections finish
/// their current request (at most `grace`).
pub(crate) async fn serve(
    listener: TcpListener,
    role: Role,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    conns.spawn(connection(stream, peer, role.clone(), shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!(listener = role.name(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let drained =
        tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        conns.abort_all();
    }
}

/// Resolves once shutdown is asked for (or the emulator is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    role: Role,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| {
        let role = role.clone();
        async move { role.handle(req, peer).await }
    });
    let conn = http1::Builder::new()
        .keep_alive(true)
        .header_read_timeout(Duration::from_secs(30))
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        _ = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
