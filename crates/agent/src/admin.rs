//! The agent's admin listener: `/metrics` (OpenMetrics text of the shared registry),
//! `/healthz` (the process answers), `/readyz` (the nft rules are in place, and in
//! proxy mode the proxy's rules are loaded). Served in every mode.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use imdsguard_proxy::Metrics;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// OpenMetrics text, which Prometheus reads.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PLAIN: &str = "text/plain; charset=utf-8";

/// Readiness: `Ok` when ready (with what is loaded, if anything to say), else why not.
/// May run `nft`: called off the runtime.
pub(crate) type Readiness = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

async fn handle(
    req: Request<Incoming>,
    metrics: Metrics,
    ready: Readiness,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "GET only\n"));
    }
    Ok(match req.uri().path() {
        "/metrics" => text(StatusCode::OK, METRICS_CONTENT_TYPE, metrics.encode()),
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n"),
        "/readyz" => {
            let verdict = tokio::task::spawn_blocking(move || ready())
                .await
                .unwrap_or_else(|_| Err("the readiness check panicked".into()));
            match verdict {
                Ok(loaded) if loaded.is_empty() => text(StatusCode::OK, PLAIN, "ready\n"),
                Ok(loaded) => text(StatusCode::OK, PLAIN, format!("ready: {loaded}\n")),
                Err(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    PLAIN,
                    format!("not ready: {why}\n"),
                ),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: /metrics, /healthz, /readyz\n",
        ),
    })
}

/// Serves until `stop` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    ready: Readiness,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => break,
        };
        let Ok((stream, _peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let (metrics, ready, mut stop) = (metrics.clone(), ready.clone(), stop.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, metrics.clone(), ready.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                }
            }
        });
    }
}

/// Binds the admin listener.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
