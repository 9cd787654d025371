//! Test support: start the emulator on 127.0.0.1:0 and talk raw HTTP/1.1 to it.
//! Nothing here connects anywhere but the loopback addresses the emulator reports.

#![allow(dead_code, missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use imdsguard_emulator::{Config, Emulator, Options, Throttle};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const V: &str = "api-version=2021-02-01";
pub const TOKEN: &str = "/metadata/identity/oauth2/token";
pub const ARM: &str = "resource=https%3A%2F%2Fmanagement.azure.com%2F";

/// Options for tests: loopback, ephemeral port, no throttling, fixed seed.
pub fn options() -> Options {
    let o = Options {
        throttle: Throttle::disabled(),
        seed: Some(42),
        ..Options::default()
    };
    assert!(o.imds.iter().all(|a| a.ip().is_loopback()));
    o
}

pub async fn start(config: Config, options: Options) -> Emulator {
    Emulator::start(config, options)
        .await
        .expect("emulator starts on loopback")
}

pub async fn start_default() -> Emulator {
    start(Config::default_aks(), options()).await
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A token answer's body holds a token: Debug shows the body with JWTs redacted.
impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field(
                "body",
                &imdsguard_core::token::redact_jwts(&String::from_utf8_lossy(&self.body)),
            )
            .finish()
    }
}

impl Reply {
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("JSON body ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request (`Connection: close`) and reads the whole answer. An answer-less
/// close is an `Err`.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    assert!(addr.ip().is_loopback(), "tests talk to loopback only");
    let mut stream = TcpStream::connect(addr).await?;
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 5 s"))??;
    parse(&raw)
}

fn parse(raw: &[u8]) -> std::io::Result<Reply> {
    let eof = || {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed without an answer",
        )
    };
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(eof)?;
    let head = std::str::from_utf8(&raw[..split]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(eof)?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(eof)?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// `GET target` with `Metadata: true`.
pub async fn get(addr: SocketAddr, target: &str) -> Reply {
    send(addr, "GET", target, &[("Metadata", "true")], b"")
        .await
        .expect("an answer")
}

/// `GET target` with exactly these headers.
pub async fn get_with(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Reply {
    send(addr, "GET", target, headers, b"")
        .await
        .expect("an answer")
}

/// Decodes a JWT's claims.
pub fn claims(token: &str) -> Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "header.claims.signature");
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["typ"], "JWT");
    assert!(!URL_SAFE_NO_PAD.decode(parts[2]).unwrap().is_empty());
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap()
}
