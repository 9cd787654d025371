//! The upstream side: a pooled keep-alive HTTP/1.1 client to the metadata service, with
//! a connect timeout, a whole-answer timeout and a body size limit. The proxy never
//! connects anywhere else: the target is always the configured upstream.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::{Limits, Timeouts, Upstream};

/// Request headers forwarded to the upstream; everything else (hop-by-hop headers,
/// `Authorization`, cookies, forwarding headers, `Accept-Encoding`...) stays behind.
pub(crate) const FORWARDED_REQUEST_HEADERS: &[header::HeaderName] =
    &[header::USER_AGENT, header::ACCEPT, header::CONTENT_TYPE];

/// Response headers never passed back (hop-by-hop, and the framing the proxy redoes).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// An upstream answer, read whole.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// Why the upstream gave no usable answer.
#[derive(Debug)]
pub(crate) enum UpstreamError {
    /// No connection (refused, unreachable, connect timeout).
    Connect(String),
    /// No whole answer within the timeout.
    Timeout(Duration),
    /// The exchange failed after connecting.
    Io(String),
    /// The answer body is over the limit.
    TooLarge(usize),
    /// The instance document could not be read for redaction.
    BadDocument(String),
    /// An AWS or GCP answer a rule redacts is not a JSON object: withheld.
    NotRedactable(String),
    /// An error answer (this status) not in one of IMDS's documented error shapes:
    /// not passed on, whatever it holds.
    NotImdsError(u16),
}

impl UpstreamError {
    /// The metric label.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Timeout(_) => "timeout",
            UpstreamError::Io(_) => "io",
            UpstreamError::TooLarge(_) => "too-large",
            UpstreamError::BadDocument(_) => "bad-document",
            UpstreamError::NotRedactable(_) => "not-redactable",
            UpstreamError::NotImdsError(_) => "bad-error",
        }
    }

    /// 504 for a timeout, 502 otherwise.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            UpstreamError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "cannot connect: {e}"),
            UpstreamError::Timeout(d) => write!(f, "no answer within {} ms", d.as_millis()),
            UpstreamError::Io(e) => write!(f, "the exchange failed: {e}"),
            UpstreamError::TooLarge(n) => write!(f, "the answer is over {n} bytes"),
            UpstreamError::NotRedactable(e) => write!(
                f,
                "the answer has fields to redact but is not a JSON object ({e}): withheld"
            ),
            UpstreamError::BadDocument(e) => {
                write!(f, "the instance document could not be read: {e}")
            }
            UpstreamError::NotImdsError(status) => write!(
                f,
                "it answered HTTP {status} with a body that is not one of IMDS's error shapes (withheld)"
            ),
        }
    }
}

/// One upstream HTTP/1.1 connection. Its connection future is not spawned: the task
/// of the request using it drives it, so a request costs no hand-over to another task
/// (and no wake-up of another thread) on the way out or back.
struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    conn: Pin<Box<http1::Connection<TokioIo<TcpStream>, Full<Bytes>>>>,
    reused: bool,
}

impl Conn {
    /// Whether the idle connection is still open (polls it once: an upstream that
    /// closed it is seen here, not by the next request).
    async fn is_open(&mut self) -> bool {
        std::future::poll_fn(|cx| match self.conn.as_mut().poll(cx) {
            Poll::Ready(_) => Poll::Ready(false),
            Poll::Pending => Poll::Ready(!self.sender.is_closed()),
        })
        .await
    }
}

/// The upstream client: a small pool of keep-alive connections.
pub(crate) struct Client {
    /// `host:port` to connect to (port 80 when the URL names none).
    authority: String,
    host: HeaderValue,
    base: String,
    idle: Mutex<Vec<Conn>>,
    max_idle: usize,
    connect_timeout: Duration,
    timeout: Duration,
    max_body: usize,
    /// Azure: every request carries `Metadata: true`. AWS and GCP requests carry the
    /// headers their caller gives (`send_with`) instead.
    azure: bool,
}

impl Client {
    pub(crate) fn new(upstream: &Upstream, timeouts: &Timeouts, limits: &Limits) -> Client {
        Client {
            authority: upstream.connect_addr(),
            host: HeaderValue::from_str(upstream.authority())
                .expect("a parsed authority is a valid header value"),
            base: upstream.to_string(),
            idle: Mutex::new(Vec::new()),
            max_idle: 256,
            connect_timeout: timeouts.upstream_connect,
            timeout: timeouts.upstream_response,
            max_body: limits.max_response_body,
            azure: true,
        }
    }

    /// A client for AWS or GCP: no `Metadata: true`; each request's metadata headers
    /// come from [`Self::send_with`].
    pub(crate) fn for_other_cloud(mut self) -> Client {
        self.azure = false;
        self
    }

    /// The base URL (`http://host:port`), for messages.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    fn checkin(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }

    async fn checkout(&self) -> Result<Conn, UpstreamError> {
        loop {
            let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match pooled {
                Some(mut c) => {
                    if c.is_open().await {
                        c.reused = true;
                        return Ok(c);
                    }
                }
                None => return self.connect().await,
            }
        }
    }

    async fn connect(&self) -> Result<Conn, UpstreamError> {
        let connect = async {
            let stream = TcpStream::connect(self.authority.as_str())
                .await
                .map_err(|e| UpstreamError::Connect(e.to_string()))?;
            let _ = stream.set_nodelay(true);
            let (sender, conn) = http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| UpstreamError::Connect(error_chain(&e)))?;
            Ok(Conn {
                sender,
                conn: Box::pin(conn),
                reused: false,
            })
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Connect(format!(
                "no connection within {} ms",
                self.connect_timeout.as_millis()
            ))),
        }
    }

    /// Sends `method target` (a canonical `path?query`) with `Host`, `Metadata: true`,
    /// the forwarded headers and `body`, and reads the whole answer, within the upstream
    /// timeout. A GET that fails on a reused connection before any answer is retried
    /// once on a new one (the upstream may have closed it while idle).
    pub(crate) async fn send(
        &self,
        method: http::Method,
        target: &str,
        client_headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Answer, UpstreamError> {
        self.send_with(method, target, client_headers, &[], body)
            .await
    }

    /// [`Self::send`] with these headers added (the AWS token headers, GCP's
    /// `Metadata-Flavor`), each once.
    pub(crate) async fn send_with(
        &self,
        method: http::Method,
        target: &str,
        client_headers: &HeaderMap,
        extra: &[(header::HeaderName, HeaderValue)],
        body: Bytes,
    ) -> Result<Answer, UpstreamError> {
        let exchange = async {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let conn = self.checkout().await?;
                let reused = conn.reused;
                let req = self.request(&method, target, client_headers, extra, body.clone())?;
                match self.exchange(conn, req).await {
                    Err(Exchange::BeforeAnswer(_))
                        if reused && attempt == 1 && method == http::Method::GET =>
                    {
                        continue;
                    }
                    Err(Exchange::BeforeAnswer(e) | Exchange::Failed(e)) => return Err(e),
                    Ok(answer) => return Ok(answer),
                }
            }
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout(self.timeout)),
        }
    }

    fn request(
        &self,
        method: &http::Method,
        target: &str,
        client_headers: &HeaderMap,
        extra: &[(header::HeaderName, HeaderValue)],
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, UpstreamError> {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(target)
            .body(Full::new(body))
            .map_err(|e| UpstreamError::Io(format!("cannot build the request: {e}")))?;
        let headers = req.headers_mut();
        headers.insert(header::HOST, self.host.clone());
        if self.azure {
            headers.insert("metadata", HeaderValue::from_static("true"));
        }
        for (name, value) in extra {
            headers.insert(name.clone(), value.clone());
        }
        for name in FORWARDED_REQUEST_HEADERS {
            // The GCE metadata server may read `Accept` as the answer's format, which the
            // proxy decided (and redacts) as `alt` says: AWS and GCP get no `Accept`.
            if !self.azure && *name == header::ACCEPT {
                continue;
            }
            if let Some(v) = client_headers.get(name) {
                headers.insert(name.clone(), v.clone());
            }
        }
        Ok(req)
    }

    /// One exchange on `conn`, driving the connection in this task; the connection goes
    /// back to the pool when it is still usable.
    async fn exchange(&self, conn: Conn, req: Request<Full<Bytes>>) -> Result<Answer, Exchange> {
        let max = self.max_body;
        let Conn {
            mut sender,
            conn: mut driver,
            reused,
        } = conn;
        let mut conn_done = false;
        let result = {
            let sender = &mut sender;
            let work = async {
                let resp = sender
                    .send_request(req)
                    .await
                    .map_err(|e| Exchange::BeforeAnswer(UpstreamError::Io(error_chain(&e))))?;
                let (parts, body) = resp.into_parts();
                let body = Limited::new(body, max)
                    .collect()
                    .await
                    .map_err(|e| {
                        Exchange::Failed(
                            if e.downcast_ref::<http_body_util::LengthLimitError>()
                                .is_some()
                            {
                                UpstreamError::TooLarge(max)
                            } else {
                                UpstreamError::Io(e.to_string())
                            },
                        )
                    })?
                    .to_bytes();
                let mut headers = parts.headers;
                strip_hop_by_hop(&mut headers);
                Ok(Answer {
                    status: parts.status,
                    headers,
                    body,
                })
            };
            tokio::pin!(work);
            loop {
                tokio::select! {
                    biased;
                    r = &mut work => break r,
                    // The connection ended (closed by the upstream, or an error): `work`
                    // still gets what was read, or fails.
                    _ = driver.as_mut(), if !conn_done => conn_done = true,
                }
            }
        };
        if result.is_ok() && !conn_done && !sender.is_closed() {
            self.checkin(Conn {
                sender,
                conn: driver,
                reused,
            });
        }
        result
    }
}

/// How an exchange failed: before any answer (safe to retry a GET), or after.
enum Exchange {
    BeforeAnswer(UpstreamError),
    Failed(UpstreamError),
}

/// Removes hop-by-hop headers, those the `Connection` header names, and
/// `Content-Length` (the proxy frames the answer itself).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        headers.remove(name);
    }
}

/// An error and its sources, `a: b: c`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, X-Secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("content-length", HeaderValue::from_static("12"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }

    #[test]
    fn accept_reaches_azure_only() {
        // Found in review: GCE may answer in the format `Accept` asks for, bypassing the
        // `alt` the proxy decided and redacts by.
        let upstream = Upstream::parse("http://127.0.0.1:8169").unwrap();
        let azure = Client::new(&upstream, &Timeouts::default(), &Limits::default());
        let other =
            Client::new(&upstream, &Timeouts::default(), &Limits::default()).for_other_cloud();
        let mut client = HeaderMap::new();
        client.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        client.insert(header::USER_AGENT, HeaderValue::from_static("sdk/1"));
        let method = http::Method::GET;
        let sent = |c: &Client| {
            c.request(&method, "/x", &client, &[], Bytes::new())
                .unwrap()
                .headers()
                .clone()
        };
        let a = sent(&azure);
        assert_eq!(a.get(header::ACCEPT).unwrap(), "application/json");
        assert_eq!(a.get("metadata").unwrap(), "true");
        let g = sent(&other);
        assert!(g.get(header::ACCEPT).is_none(), "{g:?}");
        assert!(g.get("metadata").is_none(), "{g:?}");
        assert_eq!(g.get(header::USER_AGENT).unwrap(), "sdk/1");
    }
}
