//! Throttling, injected faults, listen-address safety, shutdown and logging.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use imdsguard_emulator::{Config, Emulator, EmulatorError, Faults, Options, Throttle};
use serde_json::json;

#[tokio::test]
async fn instance_requests_past_the_rate_are_429() {
    let throttle = Throttle {
        general_per_sec: 2.0,
        ..Throttle::IMDS
    };
    let e = start(
        Config::default_aks(),
        Options {
            throttle,
            ..options()
        },
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = get(e.local_addr(), &format!("/metadata/instance/compute?{V}")).await;
        if r.status == 429 {
            assert_eq!(r.json(), json!({"error": "Too many requests"}));
        }
        statuses.push(r.status);
    }
    assert_eq!(&statuses[..2], &[200, 200], "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
}

#[tokio::test]
async fn identity_requests_past_the_rate_are_429() {
    let throttle = Throttle {
        identity_per_sec: 3.0,
        ..Throttle::IMDS
    };
    let e = start(
        Config::default_aks(),
        Options {
            throttle,
            ..options()
        },
    )
    .await;
    let target = format!("{TOKEN}?{V}&{ARM}&client_id=2d7b9c41-6e83-4f1a-b5c2-8a9e0f3d1c67");
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(get(e.local_addr(), &target).await.status);
    }
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    // Instance data has its own budget.
    assert_eq!(
        get(e.local_addr(), &format!("/metadata/instance?{V}"))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn concurrent_identity_requests_past_the_limit_are_429() {
    let throttle = Throttle {
        identity_concurrent: 2,
        ..Throttle::IMDS
    };
    let faults = Faults {
        delay: Duration::from_millis(800),
        ..Faults::default()
    };
    let e = start(
        Config::default_aks(),
        Options {
            throttle,
            faults,
            ..options()
        },
    )
    .await;
    let a = e.local_addr();
    let target = format!("{TOKEN}?{V}&{ARM}&client_id=2d7b9c41-6e83-4f1a-b5c2-8a9e0f3d1c67");
    let first: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn({
                let t = target.clone();
                async move { get(a, &t).await }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = get(a, &target).await;
    assert_eq!(third.status, 429);
    assert_eq!(
        third.json(),
        json!({"error": "too_many_requests", "error_description": "Too many requests"})
    );
    for h in first {
        assert_eq!(h.await.unwrap().status, 200);
    }
}

#[tokio::test]
async fn no_throttle_answers_every_request() {
    let e = start_default().await; // test options disable throttling
    for _ in 0..30 {
        assert_eq!(
            get(
                e.local_addr(),
                &format!("/metadata/instance/compute/vmId?{V}&format=text")
            )
            .await
            .status,
            200
        );
    }
}

#[tokio::test]
async fn fail_rate_one_answers_500_with_imds_bodies() {
    let faults = Faults {
        fail_rate: 1.0,
        ..Faults::default()
    };
    let e = start(
        Config::default_aks(),
        Options {
            faults,
            ..options()
        },
    )
    .await;
    let r = get(e.local_addr(), &format!("/metadata/instance?{V}")).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json(), json!({"error": "Internal server error"}));
    let r = get(e.local_addr(), &format!("{TOKEN}?{V}&{ARM}")).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"], "unknown");
}

#[tokio::test]
async fn fail_status_chooses_the_status() {
    let faults = Faults {
        fail_rate: 1.0,
        fail_status: 410,
        ..Faults::default()
    };
    let e = start(
        Config::default_aks(),
        Options {
            faults,
            ..options()
        },
    )
    .await;
    assert_eq!(
        get(e.local_addr(), &format!("/metadata/instance?{V}"))
            .await
            .status,
        410
    );
}

#[tokio::test]
async fn seeded_fail_rate_is_repeatable() {
    async fn pattern(seed: u64) -> Vec<u16> {
        let faults = Faults {
            fail_rate: 0.5,
            ..Faults::default()
        };
        let e = start(
            Config::default_aks(),
            Options {
                faults,
                seed: Some(seed),
                ..options()
            },
        )
        .await;
        let mut out = Vec::new();
        for _ in 0..16 {
            out.push(get(e.local_addr(), "/metadata/versions").await.status);
        }
        out
    }
    let a = pattern(7).await;
    assert_eq!(a, pattern(7).await);
    assert!(a.contains(&200) && a.contains(&500), "{a:?}");
}

#[tokio::test]
async fn drop_rate_one_closes_without_answer() {
    let faults = Faults {
        drop_rate: 1.0,
        ..Faults::default()
    };
    let e = start(
        Config::default_aks(),
        Options {
            faults,
            ..options()
        },
    )
    .await;
    let r = send(
        e.local_addr(),
        "GET",
        &format!("/metadata/instance?{V}"),
        &[("Metadata", "true")],
        b"",
    )
    .await;
    assert!(r.is_err(), "expected a closed connection, got {r:?}");
}

#[tokio::test]
async fn delay_delays_answers() {
    let faults = Faults {
        delay: Duration::from_millis(150),
        ..Faults::default()
    };
    let e = start(
        Config::default_aks(),
        Options {
            faults,
            ..options()
        },
    )
    .await;
    let t = Instant::now();
    assert_eq!(get(e.local_addr(), "/metadata/versions").await.status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn metadata_addresses_are_refused_before_binding() {
    // None of these is bound: the check runs before any listener is created, so the
    // error is the refusal, not a bind failure.
    let imds: SocketAddr = "169.254.169.254:80".parse().unwrap();
    let wire: SocketAddr = "168.63.129.16:80".parse().unwrap();
    let hostga: SocketAddr = "168.63.129.16:32526".parse().unwrap();
    let cases = [
        Options {
            imds: vec![imds],
            ..options()
        },
        Options {
            wireserver: Some(wire),
            ..options()
        },
        Options {
            hostgaplugin: Some(hostga),
            ..options()
        },
    ];
    for o in cases {
        match Emulator::start(Config::default_aks(), o).await {
            Err(EmulatorError::MetadataAddress(addr)) => {
                assert!(addr == imds || addr == wire || addr == hostga)
            }
            Err(other) => panic!("expected the refusal, got {other}"),
            Ok(_) => panic!("bound a metadata address"),
        }
    }
    // The allowed form only passes the check (never bound here).
    let o = Options {
        imds: vec![imds],
        allow_metadata_address: true,
        ..options()
    };
    assert!(o.check().is_ok());
}

#[tokio::test]
async fn invalid_options_are_refused() {
    let bad = [
        Options {
            faults: Faults {
                fail_rate: 2.0,
                ..Faults::default()
            },
            ..options()
        },
        Options {
            faults: Faults {
                fail_status: 9,
                ..Faults::default()
            },
            ..options()
        },
        Options {
            imds: vec![],
            ..options()
        },
    ];
    for o in bad {
        assert!(matches!(
            Emulator::start(Config::default_aks(), o).await,
            Err(EmulatorError::Option(_))
        ));
    }
}

#[tokio::test]
async fn shutdown_stops_listening() {
    let e = start_default().await;
    let addr = e.local_addr();
    assert_eq!(get(addr, "/metadata/versions").await.status, 200);
    e.shutdown().await;
    assert!(
        send(
            addr,
            "GET",
            "/metadata/versions",
            &[("Metadata", "true")],
            b""
        )
        .await
        .is_err()
    );
}

#[tokio::test]
async fn ipv6_loopback_listener() {
    let Ok(probe) = std::net::TcpListener::bind("[::1]:0") else {
        return;
    }; // no IPv6 here
    drop(probe);
    let o = Options {
        imds: vec!["[::1]:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap()],
        ..options()
    };
    let e = start(Config::default_aks(), o).await;
    for addr in e.imds_addrs() {
        assert_eq!(get(*addr, "/metadata/versions").await.status, 200);
    }
}

#[derive(Clone, Default)]
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn one_log_line_per_request_without_tokens() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // A current-thread runtime keeps every task on this thread, under the subscriber.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let token = rt.block_on(async {
        let e = start_default().await;
        let r = get(
            e.local_addr(),
            &format!("{TOKEN}?{V}&{ARM}&client_id=2d7b9c41-6e83-4f1a-b5c2-8a9e0f3d1c67"),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(get(e.local_addr(), "/metadata/nothing").await.status, 404);
        e.shutdown().await;
        r.json()["access_token"].as_str().unwrap().to_string()
    });
    let log = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" request ") || l.ends_with(" request"))
        .collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(
        lines[0].contains("endpoint=\"identity-token\"")
            || lines[0].contains("endpoint=identity-token"),
        "{log}"
    );
    assert!(
        lines[0].contains("status=200") && lines[0].contains("latency_ms="),
        "{log}"
    );
    assert!(
        lines[0].contains("method=GET")
            && lines[0].contains("path=/metadata/identity/oauth2/token"),
        "{log}"
    );
    assert!(lines[1].contains("status=404"), "{log}");
    for part in token.split('.') {
        assert!(!log.contains(part), "a token part leaked into the log");
    }
    assert!(!log.contains("client_id="), "queries are not logged");
}

#[test]
fn a_jwt_in_the_path_is_not_logged() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A client may put anything in the path, a bearer token too.
    let jwt = "eyJhbGciOiJub25lIn0.eyJhcHBpZCI6ImEifQ.c2lnbmF0dXJlLWJ5dGVz";
    rt.block_on(async {
        let e = start_default().await;
        let r = get(e.local_addr(), &format!("/metadata/{jwt}?{V}")).await;
        assert_eq!(r.status, 404);
        e.shutdown().await;
    });
    let log = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("path=/metadata/<token sha256:"), "{log}");
    for part in jwt.split('.') {
        assert!(!log.contains(part), "{log}");
    }
}
