//! The admin listener: `/metrics` (OpenMetrics text), `/healthz` (the process answers),
//! `/readyz` (rules loaded, at least one unless allowed, and the owner's readiness
//! condition holds; the body says how many rules and pod addresses are loaded).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::ProxyControl;
use crate::server::{self, Handler, Reply, ServeOptions};

/// OpenMetrics text, which Prometheus reads.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

struct Admin {
    control: ProxyControl,
}

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

impl Handler for Admin {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, _peer: SocketAddr) -> Reply {
        const PLAIN: &str = "text/plain; charset=utf-8";
        if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "GET only\n");
        }
        match req.uri().path() {
            "/metrics" => text(
                StatusCode::OK,
                METRICS_CONTENT_TYPE,
                self.control.metrics().encode(),
            ),
            "/healthz" => text(StatusCode::OK, PLAIN, "ok\n"),
            "/readyz" => {
                let loaded = self.control.summary();
                match self.control.readiness() {
                    Ok(()) => text(StatusCode::OK, PLAIN, format!("ready: {loaded}\n")),
                    Err(why) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        PLAIN,
                        format!("not ready: {why} ({loaded})\n"),
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

pub(crate) async fn serve(
    listener: TcpListener,
    control: ProxyControl,
    shutdown: watch::Receiver<bool>,
) {
    let options = ServeOptions {
        header_read: Duration::from_secs(10),
        max_header_size: 16 * 1024,
        max_connections: 64,
        max_per_source: None,
        grace: Duration::from_secs(1),
        metrics: None,
    };
    server::serve(listener, Arc::new(Admin { control }), options, shutdown).await;
}
