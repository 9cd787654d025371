//! The probe's HTTP/1.1 client: one connection per request, explicit timeouts, and
//! failures told apart (timeout, refused, reset, unreachable) because each means
//! something different about what blocks the path.
//!
//! No proxy is ever used (IMDS clients must not use one), no header is added beyond
//! those the caller names, `Host`, `User-Agent` and `Connection: close`; in particular no
//! `X-Forwarded-For`.

use std::error::Error as _;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::BaseUrl;

/// The largest body the probe reads (instance documents are tens of KiB).
pub(crate) const MAX_BODY: usize = 4 * 1024 * 1024;

const USER_AGENT: &str = concat!("imdsguard-probe/", env!("CARGO_PKG_VERSION"));

/// Why a request got no HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The TCP connection was not established in time (SYN dropped).
    ConnectTimeout,
    /// Connected, but no complete answer in time.
    ResponseTimeout,
    /// The connection was refused (RST to the SYN).
    Refused,
    /// The connection was reset or closed before an answer.
    Reset(String),
    /// No route, or an ICMP unreachable answer.
    Unreachable(String),
    /// Anything else (name resolution, a malformed answer, an oversized body, ...).
    Other(String),
}

/// An HTTP answer.
#[derive(Clone)]
pub(crate) struct Response {
    pub status: u16,
    pub body: Bytes,
}

/// The body of a token answer is the token: Debug shows its length and fingerprint only.
impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field(
                "body",
                &format_args!(
                    "<{} bytes, sha256:{}>",
                    self.body.len(),
                    fingerprint_bytes(&self.body)
                ),
            )
            .finish()
    }
}

fn fingerprint_bytes(body: &[u8]) -> String {
    imdsguard_core::token::fingerprint(&String::from_utf8_lossy(body))
}

/// A request's outcome and how long it took.
#[derive(Debug)]
pub(crate) struct Exchange {
    pub result: Result<Response, Failure>,
    pub latency: Duration,
}

/// Opens a TCP connection to `endpoint` and closes it.
pub(crate) async fn connect_only(endpoint: &BaseUrl, connect_timeout: Duration) -> Exchange {
    let start = Instant::now();
    let result = connect(endpoint, connect_timeout)
        .await
        .map(|_stream| Response {
            status: 0,
            body: Bytes::new(),
        });
    Exchange {
        result,
        latency: start.elapsed(),
    }
}

/// `GET path_and_query` on `endpoint` with `headers`, within `timeout` in all (the
/// connection within `connect_timeout`).
pub(crate) async fn get(
    endpoint: &BaseUrl,
    path_and_query: &str,
    headers: &[(&str, &str)],
    connect_timeout: Duration,
    timeout: Duration,
) -> Exchange {
    request(
        http::Method::GET,
        endpoint,
        path_and_query,
        headers,
        connect_timeout,
        timeout,
    )
    .await
}

/// `method path_and_query` on `endpoint` with `headers` and an empty body, within
/// `timeout` in all (the connection within `connect_timeout`). A `PUT` carries
/// `Content-Length: 0`.
pub(crate) async fn request(
    method: http::Method,
    endpoint: &BaseUrl,
    path_and_query: &str,
    headers: &[(&str, &str)],
    connect_timeout: Duration,
    timeout: Duration,
) -> Exchange {
    let start = Instant::now();
    let result = match tokio::time::timeout(
        timeout,
        exchange(
            method,
            endpoint,
            path_and_query,
            headers,
            connect_timeout.min(timeout),
        ),
    )
    .await
    {
        Ok(result) => result,
        Err(_elapsed) => Err(Failure::ResponseTimeout),
    };
    Exchange {
        result,
        latency: start.elapsed(),
    }
}

async fn exchange(
    method: http::Method,
    endpoint: &BaseUrl,
    path_and_query: &str,
    headers: &[(&str, &str)],
    connect_timeout: Duration,
) -> Result<Response, Failure> {
    let stream = connect(endpoint, connect_timeout).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(hyper_failure)?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let host = if endpoint.port == 80 {
        endpoint.host.clone()
    } else {
        endpoint.authority()
    };
    let with_length = method != http::Method::GET;
    let mut request = http::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, USER_AGENT)
        .header(http::header::CONNECTION, "close");
    if with_length {
        request = request.header(http::header::CONTENT_LENGTH, "0");
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| Failure::Other(format!("cannot build the request: {e}")))?;
    let result = async {
        let response = sender.send_request(request).await.map_err(hyper_failure)?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(e) => hyper_failure(*e),
                Err(e) => Failure::Other(format!("reading the body: {e}")),
            })?
            .to_bytes();
        Ok(Response { status, body })
    }
    .await;
    driver.abort();
    result
}

async fn connect(endpoint: &BaseUrl, connect_timeout: Duration) -> Result<TcpStream, Failure> {
    let attempt = async {
        let addr = resolve(endpoint).await?;
        // The crate's unit tests never leave loopback (the black-box tests run the
        // binary, built without cfg(test), inside an isolated network namespace).
        #[cfg(test)]
        assert!(
            addr.ip().is_loopback(),
            "a unit test tried to connect to {addr}"
        );
        TcpStream::connect(addr).await.map_err(|e| io_failure(&e))
    };
    match tokio::time::timeout(connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_elapsed) => Err(Failure::ConnectTimeout),
    }
}

async fn resolve(endpoint: &BaseUrl) -> Result<SocketAddr, Failure> {
    if let Ok(ip) = endpoint.bare_host().parse() {
        return Ok(SocketAddr::new(ip, endpoint.port));
    }
    let mut addrs = tokio::net::lookup_host((endpoint.bare_host(), endpoint.port))
        .await
        .map_err(|e| Failure::Other(format!("cannot resolve {}: {e}", endpoint.host)))?;
    addrs
        .next()
        .ok_or_else(|| Failure::Other(format!("{} resolves to no address", endpoint.host)))
}

fn io_failure(e: &io::Error) -> Failure {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Failure::Refused,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => Failure::Reset(e.to_string()),
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
            Failure::Unreachable(e.to_string())
        }
        io::ErrorKind::TimedOut => Failure::ConnectTimeout,
        _ => Failure::Other(e.to_string()),
    }
}

fn hyper_failure(e: hyper::Error) -> Failure {
    let mut source = e.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return io_failure(io);
        }
        source = cause.source();
    }
    if e.is_incomplete_message() {
        return Failure::Reset("connection closed before a complete answer".to_owned());
    }
    Failure::Other(format!("HTTP: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "a unit test tried to connect to 192.0.2.1:80")]
    fn unit_tests_cannot_leave_loopback() {
        // 192.0.2.1 is TEST-NET-1; the guard fires before any packet is sent.
        let endpoint = BaseUrl::parse("http://192.0.2.1").unwrap();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(connect(&endpoint, Duration::from_secs(1)))
            .ok();
    }

    #[test]
    fn debug_never_shows_a_body() {
        let exchange = Exchange {
            result: Ok(Response {
                status: 200,
                body: Bytes::from_static(br#"{"access_token":"secret-token-value"}"#),
            }),
            latency: Duration::from_millis(1),
        };
        let shown = format!("{exchange:?}");
        assert!(!shown.contains("secret-token-value"), "{shown}");
        assert!(
            shown.contains("status: 200") && shown.contains("37 bytes"),
            "{shown}"
        );
    }

    #[test]
    fn io_errors_are_told_apart() {
        let f = |kind| io_failure(&io::Error::from(kind));
        assert_eq!(f(io::ErrorKind::ConnectionRefused), Failure::Refused);
        assert!(matches!(
            f(io::ErrorKind::ConnectionReset),
            Failure::Reset(_)
        ));
        assert!(matches!(f(io::ErrorKind::UnexpectedEof), Failure::Reset(_)));
        assert!(matches!(
            f(io::ErrorKind::NetworkUnreachable),
            Failure::Unreachable(_)
        ));
        assert!(matches!(
            f(io::ErrorKind::HostUnreachable),
            Failure::Unreachable(_)
        ));
        assert_eq!(f(io::ErrorKind::TimedOut), Failure::ConnectTimeout);
        assert!(matches!(
            f(io::ErrorKind::PermissionDenied),
            Failure::Other(_)
        ));
    }
}
