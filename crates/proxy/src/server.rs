//! Listeners: the accept loop (bounded number of connections, and of connections per
//! source address), one HTTP/1.1 connection task per client with a header-read timeout
//! and a header size limit, and graceful shutdown.

use std::convert::Infallible;
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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::Metrics;
use crate::fairness::{SourceLimiter, SourceSlot};
use crate::handler::State;

/// An answer, read whole.
pub(crate) type Reply = Response<Full<Bytes>>;

/// What a listener serves.
pub(crate) trait Handler: Send + Sync + 'static {
    /// Answers one request from `peer`.
    fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Reply> + Send;
}

/// How a listener treats its connections.
#[derive(Clone)]
pub(crate) struct ServeOptions {
    pub(crate) header_read: Duration,
    pub(crate) max_header_size: usize,
    pub(crate) max_connections: usize,
    /// Most connections from one source address; further ones are closed at once.
    pub(crate) max_per_source: Option<usize>,
    pub(crate) grace: Duration,
    pub(crate) metrics: Option<Metrics>,
}

/// Serves the proxy listener.
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
        max_header_size: l.max_target + 2 * l.max_header_bytes + 1024,
        max_connections: state.limits.max_connections,
        max_per_source: Some(state.limits.max_connections_per_source),
        grace,
        metrics: Some(state.metrics.clone()),
    };
    serve(listener, state, options, shutdown).await;
}

/// Serves `listener` until `shutdown` turns true, then lets open connections finish
/// their current request (at most `grace`).
pub(crate) async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    options: ServeOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(options.max_connections));
    let per_source = options.max_per_source.map(SourceLimiter::new);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = accept(&listener, &permits) => match accepted {
                Ok((stream, peer, permit)) => {
                    // A source at its maximum loses this connection (closed now, before
                    // anything is read) and keeps the ones it has; nobody else waits.
                    let slot = match &per_source {
                        Some(limiter) => match limiter.try_acquire(peer.ip()) {
                            Some(slot) => Some(slot),
                            None => {
                                if let Some(m) = &options.metrics {
                                    m.connection_refused("per-source");
                                }
                                tracing::debug!(%peer, "connection closed: its source holds its maximum of connections");
                                drop(stream);
                                continue;
                            }
                        },
                        None => None,
                    };
                    conns.spawn(connection(
                        stream,
                        peer,
                        handler.clone(),
                        options.clone(),
                        shutdown.clone(),
                        (permit, slot),
                    ));
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
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        conns.abort_all();
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

/// Resolves once shutdown is asked for (or the owner is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

struct OpenConnection(Option<Metrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if let Some(m) = &self.0 {
            m.connection_closed();
        }
    }
}

async fn connection<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<H>,
    options: ServeOptions,
    mut shutdown: watch::Receiver<bool>,
    _slots: (OwnedSemaphorePermit, Option<SourceSlot>),
) {
    let _ = stream.set_nodelay(true);
    if let Some(m) = &options.metrics {
        m.connection_opened();
    }
    let _open = OpenConnection(options.metrics.clone());
    let service = service_fn(move |req| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler.handle(req, peer).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(options.header_read)
        .max_header_size(options.max_header_size)
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
            let _ = tokio::time::timeout(options.grace, conn).await;
        }
    }
}
