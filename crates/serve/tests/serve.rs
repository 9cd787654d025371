//! The serve loop and the admin endpoints, on loopback listeners.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::Full;
use hyper::body::Incoming;
use imdsguard_serve::admin::{self, AdminSource, Readiness};
use imdsguard_serve::{CloseConnection, Gate, Handler, Open, Reply, ServeOptions, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Answers `/slow` after 300 ms, `/drop` by closing, anything else at once.
struct Slow;

impl Handler for Slow {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        _peer: SocketAddr,
    ) -> Result<Reply, CloseConnection> {
        match req.uri().path() {
            "/slow" => tokio::time::sleep(Duration::from_millis(300)).await,
            "/drop" => return Err(CloseConnection),
            _ => {}
        }
        Ok(http::Response::new(Full::new("done\n".into())))
    }
}

async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

/// Sends one request and reads until the server closes (`Connection: close`).
async fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

#[tokio::test]
async fn shutdown_lets_the_request_in_flight_finish_and_closes_the_listener() {
    let (l, addr) = listener().await;
    let (stop, stop_rx) = watch::channel(false);
    let server = tokio::spawn(serve(
        l,
        Arc::new(Slow),
        Open,
        ServeOptions::default(),
        stop_rx,
    ));
    let in_flight = tokio::spawn(get(addr, "/slow"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(true).unwrap();
    let answer = in_flight.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("done\n"), "{answer}");
    tokio::time::timeout(Duration::from_secs(2), server)
        .await
        .expect("the loop ends once the request is answered")
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn grace_bounds_how_long_shutdown_waits() {
    let (l, addr) = listener().await;
    let (stop, stop_rx) = watch::channel(false);
    let options = ServeOptions {
        grace: Duration::from_millis(50),
        ..ServeOptions::default()
    };
    let server = tokio::spawn(serve(l, Arc::new(Slow), Open, options, stop_rx));
    let in_flight = tokio::spawn(get(addr, "/slow"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = Instant::now();
    stop.send(true).unwrap();
    server.await.unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    let answer = in_flight.await.unwrap();
    assert!(answer.is_empty(), "dropped before answering: {answer}");
}

#[tokio::test]
async fn a_handler_closes_the_connection_without_an_answer() {
    let (l, addr) = listener().await;
    let (_stop, stop_rx) = watch::channel(false);
    tokio::spawn(serve(
        l,
        Arc::new(Slow),
        Open,
        ServeOptions::default(),
        stop_rx,
    ));
    assert_eq!(get(addr, "/drop").await, "");
    assert!(get(addr, "/").await.starts_with("HTTP/1.1 200"));
}

/// Refuses every second connection; counts the open ones.
#[derive(Default)]
struct EveryOther {
    seen: AtomicUsize,
    open: Arc<AtomicUsize>,
}

struct Held(Arc<AtomicUsize>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Gate for EveryOther {
    type Guard = Held;
    fn admit(&self, _peer: SocketAddr) -> Option<Held> {
        if self.seen.fetch_add(1, Ordering::SeqCst) % 2 == 1 {
            return None;
        }
        self.open.fetch_add(1, Ordering::SeqCst);
        Some(Held(self.open.clone()))
    }
}

#[tokio::test]
async fn the_gate_refuses_connections_and_its_guard_lives_as_long_as_the_connection() {
    let (l, addr) = listener().await;
    let (_stop, stop_rx) = watch::channel(false);
    let gate = Arc::new(EveryOther::default());
    tokio::spawn(serve(
        l,
        Arc::new(Slow),
        gate.clone(),
        ServeOptions::default(),
        stop_rx,
    ));
    assert!(get(addr, "/").await.starts_with("HTTP/1.1 200"));
    assert_eq!(get(addr, "/").await, "", "the second connection is refused");
    let in_flight = tokio::spawn(get(addr, "/slow"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(gate.open.load(Ordering::SeqCst), 1);
    assert!(in_flight.await.unwrap().starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(gate.open.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn admin_endpoints() {
    let (l, addr) = listener().await;
    let (_stop, stop_rx) = watch::channel(false);
    let ready = Arc::new(AtomicUsize::new(0));
    let r = ready.clone();
    let source = AdminSource::new(
        || "# EOF\n".to_string(),
        move || Readiness {
            ready: if r.load(Ordering::SeqCst) == 1 {
                Ok(())
            } else {
                Err("no rules".into())
            },
            summary: "3 rules".into(),
        },
    );
    tokio::spawn(admin::serve(l, source, stop_rx));
    let m = get(addr, "/metrics").await;
    assert!(
        m.contains(admin::METRICS_CONTENT_TYPE) && m.ends_with("# EOF\n"),
        "{m}"
    );
    assert!(get(addr, "/healthz").await.ends_with("\r\n\r\nok\n"));
    let r = get(addr, "/readyz").await;
    assert!(
        r.starts_with("HTTP/1.1 503") && r.ends_with("not ready: no rules (3 rules)\n"),
        "{r}"
    );
    ready.store(1, Ordering::SeqCst);
    let r = get(addr, "/readyz").await;
    assert!(
        r.starts_with("HTTP/1.1 200") && r.ends_with("ready: 3 rules\n"),
        "{r}"
    );
    assert!(get(addr, "/other").await.starts_with("HTTP/1.1 404"));
}
