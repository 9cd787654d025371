//! Test support: an in-process emulator on 127.0.0.1:0, the proxy on 127.0.0.1:0 in
//! front of it, and a raw HTTP/1.1 client that binds its socket to a chosen loopback
//! source address (127.0.0.2, 127.0.0.3, ...) to play different pods. Nothing here
//! connects anywhere but loopback.

#![allow(dead_code, missing_docs)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use imdsguard_core::access::{AccessRules, PodIndex};
use imdsguard_emulator::{Config, Emulator, Faults, Options, Throttle};
use imdsguard_proxy::{PodRate, Proxy, ProxyConfig, Upstream};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

pub const KUBELET_CLIENT_ID: &str = "2d7b9c41-6e83-4f1a-b5c2-8a9e0f3d1c67";
pub const KEYVAULT_CLIENT_ID: &str = "5e1c8a7d-2f94-4b63-9d0e-7a3b1c6f8e52";
pub const ARM: &str = "https%3A%2F%2Fmanagement.azure.com%2F";
pub const VAULT: &str = "https%3A%2F%2Fvault.azure.net";

/// The callers: one loopback address per pod; 127.0.0.1 is no pod.
pub const PAYMENTS_API: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
pub const SHOP_WEB: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
pub const MONITORING: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));
pub const OPS: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5));
pub const UNKNOWN: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));

pub const PODS: &str = r#"
- {ip: 127.0.0.2, namespace: payments, name: api-7d9f, serviceAccount: api, labels: {app: api}}
- {ip: 127.0.0.3, namespace: shop, name: web-1, serviceAccount: web}
- {ip: 127.0.0.4, namespace: monitoring, name: agent-x, labels: {app: agent}}
- {ip: 127.0.0.5, namespace: ops, name: drainer}
"#;

pub const RULES: &str = r#"
rules:
  - name: payments-api-arm
    subjects: [{namespace: payments, serviceAccount: api}]
    token:
      resources: [https://management.azure.com/]
      identities: [{clientId: 2d7b9c41-6e83-4f1a-b5c2-8a9e0f3d1c67}]
  - name: basics
    subjects: [{namespace: "*"}]
    paths: [/metadata/versions, /metadata/instance/compute/location]
  - name: monitoring-instance
    subjects: [{namespace: monitoring}]
    paths: [/metadata/instance]
  - name: ops-events
    subjects: [{namespace: ops}]
    methods: [GET, POST]
    paths: [/metadata/scheduledevents]
"#;

pub fn emulator_options() -> Options {
    let o = Options {
        throttle: Throttle::disabled(),
        seed: Some(7),
        ..Options::default()
    };
    assert!(o.imds.iter().all(|a| a.ip().is_loopback()));
    o
}

pub async fn emulator(faults: Faults) -> Emulator {
    Emulator::start(
        Config::default_aks(),
        Options {
            faults,
            ..emulator_options()
        },
    )
    .await
    .expect("emulator on loopback")
}

/// A proxy configuration in front of `upstream` (loopback), with the test rules and pods.
pub fn config(upstream: SocketAddr) -> ProxyConfig {
    assert!(
        upstream.ip().is_loopback(),
        "tests use loopback upstreams only"
    );
    let mut c = ProxyConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Upstream::parse(&format!("http://{upstream}")).unwrap(),
    );
    c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    c.rules = Some(AccessRules::parse(RULES).unwrap());
    c.pods = PodIndex::parse(PODS).unwrap();
    // The functional tests send more than a pod's default burst; the rate has tests of
    // its own (tests/fairness.rs).
    c.pod_rate = PodRate::unlimited();
    c
}

pub struct Env {
    pub emulator: Emulator,
    pub proxy: Proxy,
}

impl Env {
    pub fn addr(&self) -> SocketAddr {
        self.proxy.local_addr()
    }

    pub fn admin(&self) -> SocketAddr {
        self.proxy.admin_addr().expect("admin listener")
    }

    pub async fn get(&self, from: IpAddr, target: &str) -> Reply {
        send_from(
            from,
            self.addr(),
            "GET",
            target,
            &[("Metadata", "true")],
            b"",
        )
        .await
        .expect("an answer")
    }

    pub async fn shutdown(self) {
        self.proxy.shutdown().await;
        self.emulator.shutdown().await;
    }
}

pub async fn start() -> Env {
    start_with(Faults::default(), |_| {}).await
}

pub async fn start_with(faults: Faults, tweak: impl FnOnce(&mut ProxyConfig)) -> Env {
    let emulator = emulator(faults).await;
    let mut c = config(emulator.local_addr());
    tweak(&mut c);
    let proxy = Proxy::start(c).await.expect("proxy on loopback");
    Env { emulator, proxy }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }

    /// Fails the test unless the body holds every line of `want` (e.g. metric samples).
    pub fn assert_has(&self, want: &[&str]) {
        for w in want {
            assert!(self.text().contains(w), "{w} in\n{}", self.text());
        }
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

    /// The imdsguard denial's `rule`, or panics with the answer.
    pub fn denied_by(&self) -> String {
        assert_eq!(self.status, 403, "expected a denial: {}", self.text());
        let v = self.json();
        assert_eq!(v["error"], "imdsguard_denied", "{v}");
        assert_eq!(v["imdsguard"]["decision"], "deny", "{v}");
        for k in ["rule", "reason", "help"] {
            assert!(
                v["imdsguard"][k].as_str().is_some_and(|s| !s.is_empty()),
                "{k} in {v}"
            );
        }
        v["imdsguard"]["rule"].as_str().unwrap().to_string()
    }
}

/// Sends one request from source address `from` (`Connection: close`) and reads the
/// whole answer. A close without an answer is an `Err`.
pub async fn send_from(
    from: IpAddr,
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    let head = {
        let mut h =
            format!("{method} {target} HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n");
        for (k, v) in headers {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            h.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        h.push_str("\r\n");
        h
    };
    send_raw(from, addr, head.as_bytes(), body).await
}

/// Sends raw bytes from `from` and reads the answer until the server closes.
pub async fn send_raw(
    from: IpAddr,
    addr: SocketAddr,
    head: &[u8],
    body: &[u8],
) -> std::io::Result<Reply> {
    assert!(
        from.is_loopback() && addr.ip().is_loopback(),
        "tests talk over loopback only"
    );
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let mut stream = socket.connect(addr).await?;
    stream.write_all(head).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 10 s")
        })??;
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
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
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

/// A fake upstream on 127.0.0.1:0 that answers every request with 200 and the request
/// headers it received as JSON (`{"name": "value"}`, names lower-case), the request
/// target under `"(target)"`, and hop-by-hop response headers the proxy must strip.
pub struct Echo {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
}

pub async fn echo_upstream() -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let mut seen: BTreeMap<String, String> = req
                        .headers()
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.as_str().to_string(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect();
                    seen.insert("(target)".into(), req.uri().to_string());
                    let body = serde_json::to_vec(&seen).unwrap();
                    let resp = http::Response::builder()
                        .status(200)
                        .header("content-type", "application/json; charset=utf-8")
                        .header("connection", "x-hop")
                        .header("x-hop", "must not pass")
                        .header("keep-alive", "timeout=5")
                        .header("proxy-authenticate", "Basic")
                        .header("x-kept", "yes")
                        .body(Full::new(Bytes::from(body)))
                        .unwrap();
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Echo { addr, hits }
}

/// GET on the admin listener.
pub async fn admin_get(addr: SocketAddr, path: &str) -> Reply {
    send_from(UNKNOWN, addr, "GET", path, &[], b"")
        .await
        .expect("admin answers")
}

/// Keeps every decision record as the JSON the log would hold.
#[derive(Clone, Default)]
pub struct Records(Arc<std::sync::Mutex<Vec<Value>>>);

impl imdsguard_proxy::DecisionSink for Records {
    fn record(&self, record: &imdsguard_proxy::DecisionRecord<'_>) {
        let mut out = String::new();
        record.write_json_fields(&mut out);
        let v = serde_json::from_str(&out).expect("a JSON record");
        self.0.lock().unwrap().push(v);
    }
}

impl Records {
    /// The records since the last call.
    pub fn take(&self) -> Vec<Value> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    /// The one record taken since the last call.
    pub fn one(&self) -> Value {
        let mut all = self.take();
        assert_eq!(all.len(), 1, "{all:?}");
        all.remove(0)
    }

    /// The latest record.
    pub fn last(&self) -> Value {
        self.0.lock().unwrap().last().cloned().expect("a record")
    }
}
