//! The decision log: one JSON record per request with the decision's facts, and never a
//! token, an `Authorization` value or a token body. (Its own test binary: it installs
//! the process-wide log subscriber.)

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use support::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn one_record_per_decision_and_never_a_token() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter("imdsguard::decision=info")
        .with_writer(move || writer.clone())
        .init();

    let env = start().await;
    let secret_auth = "Bearer eyJhbGciOiJub25lIn0.eyJzZWNyZXQiOiJ5ZXMifQ.c2lnbmF0dXJl";
    let target = format!(
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource={ARM}&client_id={KUBELET_CLIENT_ID}"
    );
    let r = send_from(
        PAYMENTS_API,
        env.addr(),
        "GET",
        &target,
        &[("Metadata", "true"), ("Authorization", secret_auth)],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let token = r.json()["access_token"].as_str().unwrap().to_string();
    let r = env
        .get(
            SHOP_WEB,
            "/metadata/identity%2foauth2/token?api-version=2018-02-01",
        )
        .await;
    assert_eq!(r.status, 403);
    let r = env.get(UNKNOWN, "/metadata/versions").await;
    assert_eq!(r.status, 403);
    let r = env
        .get(MONITORING, "/metadata/instance?api-version=2021-02-01")
        .await;
    assert_eq!(r.status, 200);
    env.shutdown().await;

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|v: &Value| v["target"] == "imdsguard::decision")
        .collect();
    assert_eq!(records.len(), 4, "{text}");
    let f = |i: usize, k: &str| records[i]["fields"][k].clone();

    assert_eq!(f(0, "pod"), "payments/api-7d9f");
    assert_eq!(f(0, "namespace"), "payments");
    assert_eq!(f(0, "service_account"), "api");
    assert_eq!(f(0, "method"), "GET");
    assert_eq!(f(0, "path"), "/metadata/identity/oauth2/token");
    assert_eq!(f(0, "endpoint"), "identity-token");
    assert_eq!(f(0, "decision"), "allow");
    assert_eq!(f(0, "rule"), "payments-api-arm");
    assert_eq!(f(0, "status"), 200);
    assert_eq!(f(0, "resource"), "https://management.azure.com/");
    assert_eq!(f(0, "identity"), format!("client_id={KUBELET_CLIENT_ID}"));
    assert!(f(0, "latency_us").as_u64().is_some());
    assert_eq!(f(0, "peer"), "127.0.0.2");

    assert_eq!(f(1, "decision"), "deny");
    assert_eq!(f(1, "rule"), "canonical-form");
    assert!(
        f(1, "reason")
            .as_str()
            .unwrap()
            .starts_with("encoded-slash")
    );
    assert_eq!(f(1, "path"), "/metadata/identity%2foauth2/token");

    assert_eq!(f(2, "rule"), "unknown-source");
    assert_eq!(f(2, "pod"), "-");
    assert_eq!(f(3, "redacted"), true);

    // Neither the token, nor any of its parts, nor the Authorization value.
    assert!(!text.contains(&token));
    for part in token.split('.') {
        assert!(!text.contains(part), "a token part is in the log");
    }
    assert!(!text.contains("eyJ"), "{text}");
    assert!(!text.contains("Bearer"));
    assert!(!text.contains("access_token"));
}
