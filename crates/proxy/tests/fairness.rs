//! Issue 7: one pod's abuse costs only itself (connections per source address, request
//! rate per pod), what goes upstream is what was decided, and upstream error bodies pass
//! only in IMDS's shapes.
//!
//! Each test re-runs itself inside a fresh network namespace holding only `lo`
//! (`imdsguard_testkit::isolated_test`); the proxy, the emulator and the recording
//! upstreams listen on 127.0.0.1 there, pods are loopback source addresses.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use imdsguard_emulator::Faults;
use imdsguard_proxy::PodRate;
use serde_json::json;
use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const INNER: &str = "IMDSGUARD_PROXY_FAIRNESS_INNER";

/// Runs `body` on a tokio runtime inside a namespace of its own.
fn isolated<F: std::future::Future<Output = ()>>(test: &str, body: impl FnOnce() -> F) {
    imdsguard_testkit::isolated_test(test, INNER, &["unshare", "ip"], || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(body());
    });
}

/// A connection from `from` that sends nothing (a slowloris holding a slot).
async fn idle_connection(from: std::net::IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.expect("connects")
}

/// Whether the server closed `s` within `wait` (EOF or reset), without answering.
async fn closed_by_server(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(wait, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(n)) => panic!(
            "the server answered a connection that sent nothing: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(_) => false,
    }
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
#[ignore = "needs netns"]
fn a_source_at_its_connection_maximum_does_not_hold_anothers_slots() {
    isolated(
        "a_source_at_its_connection_maximum_does_not_hold_anothers_slots",
        || async {
            // 8 connections in all, 4 per source; the attacker opens all 8. Before the
            // per-source limit it held every slot, and the victim's connection waited in
            // the backlog for the attacker's header timeout (10 s).
            let env = start_with(Faults::default(), |c| {
                c.limits.max_connections = 8;
                c.limits.max_connections_per_source = 4;
            })
            .await;
            let mut held = Vec::new();
            for _ in 0..8 {
                held.push(idle_connection(PAYMENTS_API, env.addr()).await);
            }
            let mut closed = 0;
            for s in &mut held {
                if closed_by_server(s, Duration::from_millis(300)).await {
                    closed += 1;
                }
            }
            assert_eq!(closed, 4, "the attacker keeps exactly its 4 connections");

            let start = Instant::now();
            let r = tokio::time::timeout(
                Duration::from_secs(2),
                env.get(SHOP_WEB, "/metadata/versions"),
            )
            .await
            .expect("another source is served while the first holds its maximum");
            assert_eq!(r.status, 200, "{}", r.text());
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "{:?}",
                start.elapsed()
            );

            // The attacker is still refused, and gets a slot back when it lets one go.
            let mut extra = idle_connection(PAYMENTS_API, env.addr()).await;
            assert!(closed_by_server(&mut extra, Duration::from_secs(1)).await);
            held.truncate(3);
            tokio::time::sleep(Duration::from_millis(100)).await;
            let r = env.get(PAYMENTS_API, "/metadata/versions").await;
            assert_eq!(r.status, 200, "a freed slot serves its source again");

            let m = admin_get(env.admin(), "/metrics").await;
            assert!(
                metric(
                    m.text(),
                    r#"imdsguard_proxy_connections_refused_total{reason="per-source"}"#
                ) >= 5.0,
                "{}",
                m.text()
            );
            drop(held);
            env.shutdown().await;
        },
    );
}

#[test]
#[ignore = "needs netns"]
fn a_flooding_pod_gets_imds_429_with_retry_after_and_others_are_served() {
    isolated(
        "a_flooding_pod_gets_imds_429_with_retry_after_and_others_are_served",
        || async {
            let env = start_with(Faults::default(), |c| {
                c.pod_rate = PodRate {
                    general: 1.0,
                    identity: 1.0,
                    burst: 3,
                };
            })
            .await;
            let versions = "/metadata/versions";
            for i in 0..3 {
                let r = env.get(PAYMENTS_API, versions).await;
                assert_eq!(r.status, 200, "request {i} is within the burst");
            }
            let r = env.get(PAYMENTS_API, versions).await;
            assert_eq!(r.status, 429, "{}", r.text());
            let wait: u64 = r
                .header("retry-after")
                .expect("Retry-After")
                .parse()
                .expect("seconds");
            assert!((1..=2).contains(&wait), "{wait}");
            assert_eq!(
                r.json(),
                json!({"error": "Too many requests"}),
                "IMDS's body"
            );

            // Another pod is served, at its own rate.
            for _ in 0..3 {
                assert_eq!(env.get(SHOP_WEB, versions).await.status, 200);
            }
            // The identity class has a bucket of its own, answered in the identity shape.
            let token = format!(
                "/metadata/identity/oauth2/token?api-version=2018-02-01&resource={ARM}&client_id={KUBELET_CLIENT_ID}"
            );
            for _ in 0..3 {
                assert_eq!(env.get(PAYMENTS_API, &token).await.status, 200);
            }
            let r = env.get(PAYMENTS_API, &token).await;
            assert_eq!(r.status, 429);
            assert_eq!(
                r.json(),
                json!({"error": "too_many_requests", "error_description": "Too many requests"})
            );
            // Unknown callers are counted by address.
            for _ in 0..3 {
                assert_eq!(env.get(UNKNOWN, versions).await.status, 403);
            }
            assert_eq!(env.get(UNKNOWN, versions).await.status, 429);

            // The pod's bucket refills.
            tokio::time::sleep(Duration::from_millis(1100)).await;
            assert_eq!(env.get(PAYMENTS_API, versions).await.status, 200);

            let m = admin_get(env.admin(), "/metrics").await;
            let text = m.text();
            assert_eq!(
                metric(text, r#"imdsguard_proxy_throttled_total{class="general"}"#),
                2.0,
                "{text}"
            );
            assert_eq!(
                metric(
                    text,
                    r#"imdsguard_proxy_decisions_total{namespace="payments",endpoint="versions",outcome="throttled"}"#
                ),
                1.0,
                "{text}"
            );
            env.shutdown().await;
        },
    );
}

#[test]
#[ignore = "needs netns"]
fn what_goes_upstream_is_what_was_decided() {
    isolated("what_goes_upstream_is_what_was_decided", || async {
        let echo = echo_upstream().await;
        let emulator = emulator(Faults::default()).await;
        let mut c = config(echo.addr);
        c.pod_rate = PodRate::unlimited();
        let proxy = imdsguard_proxy::Proxy::start(c).await.unwrap();
        let env = Env { emulator, proxy };
        let base = format!("/metadata/identity/oauth2/token?resource={ARM}&api-version=2018-02-01");

        // Two selectors, one of them empty: IMDS's own 400, nothing goes upstream.
        let r = env
            .get(
                PAYMENTS_API,
                &format!("{base}&client_id={KUBELET_CLIENT_ID}&mi_res_id="),
            )
            .await;
        assert_eq!(r.status, 400, "{}", r.text());
        let body = r.json();
        assert_eq!(body["error"], "invalid_request", "{body}");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("mi_res_id"),
            "{body}"
        );
        assert_eq!(echo.hits.load(std::sync::atomic::Ordering::SeqCst), 0);

        // Unknown parameters stay behind; the decided ones go in canonical form.
        let cases = [
            (
                PAYMENTS_API,
                format!("{base}&Client_ID={KUBELET_CLIENT_ID}&principal_id=P&bypass_cache=true"),
                format!("{base}&client_id={KUBELET_CLIENT_ID}"),
            ),
            (
                PAYMENTS_API,
                "/metadata/versions?principal_id=P&api-version=2021-02-01".to_string(),
                "/metadata/versions".to_string(),
            ),
            (
                OPS,
                "/metadata/scheduledevents?format=json&API-Version=2020-07-01&x=1".to_string(),
                "/metadata/scheduledevents?api-version=2020-07-01".to_string(),
            ),
        ];
        for (from, sent, want) in cases {
            let r = env.get(from, &sent).await;
            assert_eq!(r.status, 200, "{sent}: {}", r.text());
            assert_eq!(r.json()["(target)"], want.as_str(), "{sent}");
        }
        env.shutdown().await;
    });
}

/// Status, headers and body of an answer.
type Answer = Arc<Mutex<(u16, Vec<(String, String)>, String)>>;

/// An upstream answering every request with the status, headers and body in `answer`.
async fn fixed_upstream(answer: Answer) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                    let (status, headers, body) = answer.lock().unwrap().clone();
                    let mut b = http::Response::builder().status(status);
                    for (k, v) in headers {
                        b = b.header(k, v);
                    }
                    let resp = b.body(Full::new(Bytes::from(body))).unwrap();
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[test]
#[ignore = "needs netns"]
fn upstream_errors_pass_only_in_imds_shapes() {
    isolated("upstream_errors_pass_only_in_imds_shapes", || async {
        let answer = Arc::new(Mutex::new((200, Vec::new(), String::new())));
        let upstream = fixed_upstream(answer.clone()).await;
        let emulator = emulator(Faults::default()).await;
        let mut c = config(upstream);
        c.pod_rate = PodRate::unlimited();
        let proxy = imdsguard_proxy::Proxy::start(c).await.unwrap();
        let env = Env { emulator, proxy };
        let token = format!(
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource={ARM}&client_id={KUBELET_CLIENT_ID}"
        );
        let instance = "/metadata/instance?api-version=2021-02-01";
        let set = |status: u16, headers: &[(&str, &str)], body: &str| {
            *answer.lock().unwrap() = (
                status,
                headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                body.to_string(),
            );
        };

        // Not an IMDS error: the proxy's own 502, nothing of the body passed on.
        for (from, target) in [(PAYMENTS_API, token.as_str()), (MONITORING, instance)] {
            for (status, body) in [
                (500, "<html>upstream stack trace: secret-value</html>"),
                (403, r#"{"message":"secret-value"}"#),
                (302, r#"{"error":"secret-value"}"#),
            ] {
                set(
                    status,
                    &[
                        ("content-type", "text/html"),
                        ("set-cookie", "s=secret-value"),
                    ],
                    body,
                );
                let r = env.get(from, target).await;
                assert_eq!(r.status, 502, "{status} {body}: {}", r.text());
                assert_eq!(r.json()["error"], "imdsguard_upstream_error");
                assert!(!r.text().contains("secret-value"), "{}", r.text());
                assert!(
                    r.headers.iter().all(|(_, v)| !v.contains("secret-value")),
                    "{:?}",
                    r.headers
                );
            }
        }

        // IMDS's shapes pass, with only the documented fields (and Retry-After).
        set(
            400,
            &[("x-upstream", "secret-value")],
            r#"{"error":"invalid_resource","error_description":"AADSTS500011: not found","error_codes":[500011],"trace_id":"secret-value"}"#,
        );
        let r = env.get(PAYMENTS_API, &token).await;
        assert_eq!(r.status, 400);
        assert_eq!(
            r.json(),
            json!({"error": "invalid_resource", "error_description": "AADSTS500011: not found"})
        );
        assert!(r.header("x-upstream").is_none());
        set(
            429,
            &[("retry-after", "7")],
            r#"{"error":"too_many_requests","error_description":"Too many requests"}"#,
        );
        let r = env.get(PAYMENTS_API, &token).await;
        assert_eq!((r.status, r.header("retry-after")), (429, Some("7")));
        set(
            410,
            &[],
            r#"{"error":"Gone. IMDS is being updated, retry later"}"#,
        );
        let r = env.get(MONITORING, instance).await;
        assert_eq!(r.status, 410);
        assert_eq!(
            r.json(),
            json!({"error": "Gone. IMDS is being updated, retry later"})
        );

        let m = admin_get(env.admin(), "/metrics").await;
        assert_eq!(
            metric(
                m.text(),
                r#"imdsguard_proxy_upstream_errors_total{kind="bad-error"}"#
            ),
            6.0,
            "{}",
            m.text()
        );
        env.shutdown().await;
    });
}
