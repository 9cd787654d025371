//! The admin endpoints: `/metrics` (OpenMetrics text), `/healthz` (the process
//! answers), `/readyz` (the owner's readiness check; 503 with the reason when not
//! ready). Anything else is 404, any method but GET and HEAD 405.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::{CloseConnection, Handler, Open, Reply, ServeOptions};

/// OpenMetrics text, which Prometheus reads.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PLAIN: &str = "text/plain; charset=utf-8";

/// The answer of a readiness check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// `Ok` when ready, else why not.
    pub ready: Result<(), String>,
    /// What is loaded (e.g. `12 rules, 40 pod addresses`); may be empty.
    pub summary: String,
}

/// What the admin endpoints show: the metrics text and the readiness check. The check
/// may block (the agent runs `nft`): it runs off the async runtime's workers.
#[derive(Clone)]
pub struct AdminSource {
    metrics: Arc<dyn Fn() -> String + Send + Sync>,
    readiness: Arc<dyn Fn() -> Readiness + Send + Sync>,
}

impl AdminSource {
    /// The admin endpoints of an owner.
    pub fn new(
        metrics: impl Fn() -> String + Send + Sync + 'static,
        readiness: impl Fn() -> Readiness + Send + Sync + 'static,
    ) -> AdminSource {
        AdminSource {
            metrics: Arc::new(metrics),
            readiness: Arc::new(readiness),
        }
    }

    /// Answers one admin request (any body is ignored).
    pub async fn answer(&self, method: &http::Method, path: &str) -> Reply {
        if method != http::Method::GET && method != http::Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "GET only\n");
        }
        match path {
            "/metrics" => text(StatusCode::OK, METRICS_CONTENT_TYPE, (self.metrics)()),
            "/healthz" => text(StatusCode::OK, PLAIN, "ok\n"),
            "/readyz" => {
                let check = self.readiness.clone();
                let verdict = tokio::task::spawn_blocking(move || check())
                    .await
                    .unwrap_or_else(|_| Readiness {
                        ready: Err("the readiness check panicked".into()),
                        summary: String::new(),
                    });
                let Readiness { ready, summary } = verdict;
                match (ready, summary.is_empty()) {
                    (Ok(()), true) => text(StatusCode::OK, PLAIN, "ready\n"),
                    (Ok(()), false) => text(StatusCode::OK, PLAIN, format!("ready: {summary}\n")),
                    (Err(why), true) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        PLAIN,
                        format!("not ready: {why}\n"),
                    ),
                    (Err(why), false) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        PLAIN,
                        format!("not ready: {why} ({summary})\n"),
                    ),
                }
            }
            _ => text(
                StatusCode::NOT_FOUND,
                PLAIN,
                "not found: /metrics, /healthz, /readyz\n",
            ),
        }
    }
}

impl Handler for AdminSource {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        _peer: SocketAddr,
    ) -> Result<Reply, CloseConnection> {
        Ok(self.answer(req.method(), req.uri().path()).await)
    }
}

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Serves the admin endpoints on `listener` until `shutdown` turns true (64
/// connections, 10 s header read, 1 s grace).
pub async fn serve(listener: TcpListener, source: AdminSource, shutdown: watch::Receiver<bool>) {
    crate::serve(
        listener,
        Arc::new(source),
        Open,
        ServeOptions::default(),
        shutdown,
    )
    .await;
}
