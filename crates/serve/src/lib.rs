//! imdsguard-serve: the one HTTP serve loop of imdsguard's servers (the emulator, the
//! proxy and the agent) and their admin endpoints.
//!
//! - [`serve`]: the accept loop (a bounded number of connections, a [`Gate`] that may
//!   refuse or account for each connection), one HTTP/1.1 connection task per client
//!   with a header-read timeout and a header size limit, and graceful shutdown with
//!   hyper-util's [`GracefulShutdown`]: when asked to stop, the listener closes, open
//!   connections finish the request in progress, and whatever is still open after the
//!   grace period is dropped.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz` for an owner that gives the metrics
//!   text and a readiness check.
//!
//! Nothing here parses arguments, sets up logging or handles signals: the `imdsguard`
//! binary does.

pub mod admin;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
pub use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

/// An answer, read whole.
pub type Reply = Response<Full<Bytes>>;

/// A handler's way to answer a request by closing the connection without a response
/// (the emulator's injected drops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseConnection;

impl std::fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection closed without an answer")
    }
}

impl std::error::Error for CloseConnection {}

/// What a listener serves.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request from `peer`, or closes the connection.
    fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Result<Reply, CloseConnection>> + Send;
}

/// Decides, for each accepted connection, whether it is served; the guard it returns
/// lives as long as the connection (per-source limits, open-connection gauges).
pub trait Gate: Send + Sync + 'static {
    /// Held while the connection is open.
    type Guard: Send + 'static;
    /// `None` closes the connection at once, before anything is read.
    fn admit(&self, peer: SocketAddr) -> Option<Self::Guard>;
    /// [`Gate::admit`] with the accepted socket, for a gate that keeps a handle on it
    /// (the AWS emulator sets a connection's IP TTL per answer); the default calls
    /// `admit`.
    fn admit_stream(&self, stream: &TcpStream, peer: SocketAddr) -> Option<Self::Guard> {
        let _ = stream;
        self.admit(peer)
    }
}

impl<G: Gate> Gate for Arc<G> {
    type Guard = G::Guard;
    fn admit(&self, peer: SocketAddr) -> Option<G::Guard> {
        (**self).admit(peer)
    }
    fn admit_stream(&self, stream: &TcpStream, peer: SocketAddr) -> Option<G::Guard> {
        (**self).admit_stream(stream, peer)
    }
}

/// Admits every connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Open;

impl Gate for Open {
    type Guard = ();
    fn admit(&self, _peer: SocketAddr) -> Option<()> {
        Some(())
    }
}

/// How a listener treats its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// Time for a client to send a request's header block; also how long an idle
    /// keep-alive connection is kept.
    pub header_read: Duration,
    /// Largest request line and header block (hyper answers 431 above it); `None`
    /// keeps hyper's default.
    pub max_header_size: Option<usize>,
    /// Most connections open at once; the next waits in the listen queue. `usize::MAX`
    /// is no limit.
    pub max_connections: usize,
    /// How long shutdown waits for requests in flight before dropping connections.
    pub grace: Duration,
}

impl Default for ServeOptions {
    /// 10 s header read, 16 KiB headers, 64 connections, 1 s grace: an admin listener.
    fn default() -> Self {
        ServeOptions {
            header_read: Duration::from_secs(10),
            max_header_size: Some(16 * 1024),
            max_connections: 64,
            grace: Duration::from_secs(1),
        }
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Serves `listener` with `handler` until `shutdown` turns true, then closes the
/// listener, lets open connections finish their current request (hyper-util's
/// [`GracefulShutdown`]) for at most `options.grace`, and drops what is left.
pub async fn serve<H: Handler, G: Gate>(
    listener: TcpListener,
    handler: Arc<H>,
    gate: G,
    options: ServeOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(
        options.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(options.header_read);
    if let Some(max) = options.max_header_size {
        builder.max_header_size(max);
    }
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = accept(&listener, &permits) => match accepted {
                Ok((stream, peer, permit)) => {
                    // A refused connection is closed now, before anything is read;
                    // nobody else waits for it.
                    let Some(guard) = gate.admit_stream(&stream, peer) else {
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let handler = handler.clone();
                    let service = service_fn(move |req| handler.clone().handle(req, peer));
                    let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                    conns.spawn(async move {
                        let _held = (permit, guard);
                        if let Err(e) = conn.await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(options.grace, async {
        graceful.shutdown().await;
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
}

/// Waits for a connection slot, then for a connection (both cancel-safe).
async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
) -> std::io::Result<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let permit = permits
        .clone()
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    let (stream, peer) = listener.accept().await?;
    Ok((stream, peer, permit))
}
