//! Dry run over real HTTP: the proxy in front of the in-process emulator (both on
//! 127.0.0.1:0), pods played from loopback source addresses. A request the rules deny
//! gets the upstream's answer and a `would-deny` record naming the rule that would
//! deny it; without the dry run the same request is denied. An ambiguous request (a
//! `canonical-form` denial) is forwarded as received.

mod support;

use std::sync::Arc;

use imdsguard_core::access::{RULE_CANONICAL_FORM, RULE_DEFAULT_DENY, RULE_UNKNOWN_SOURCE};
use imdsguard_core::token::TokenSummary;
use imdsguard_emulator::Faults;
use imdsguard_proxy::{PodRate, Proxy};
use support::*;

async fn start_dry(dry_run: bool) -> (Env, Records) {
    let records = Records::default();
    let sink = records.clone();
    let env = start_with(Faults::default(), move |c| {
        c.dry_run = dry_run;
        c.decisions = Some(Arc::new(sink));
    })
    .await;
    (env, records)
}

fn token_target(resource: &str, extra: &str) -> String {
    format!("/metadata/identity/oauth2/token?api-version=2018-02-01&resource={resource}{extra}")
}

#[tokio::test]
async fn a_dry_run_forwards_what_the_rules_deny_and_records_would_deny() {
    let kubelet = format!("&client_id={KUBELET_CLIENT_ID}");
    let (env, records) = start_dry(true).await;

    // A pod no rule grants a token: the upstream's token, recorded as the denial.
    let r = env.get(SHOP_WEB, &token_target(ARM, &kubelet)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let claims = TokenSummary::from_token_response(&r.body)
        .expect("a token")
        .claims
        .expect("claims");
    assert_eq!(claims.appid.as_deref(), Some(KUBELET_CLIENT_ID));
    let rec = records.one();
    assert_eq!(rec["decision"], "would-deny");
    assert_eq!(rec["rule"], RULE_DEFAULT_DENY);
    assert_eq!(rec["status"], 200);
    assert_eq!(rec["pod"], "shop/web-1");
    assert_eq!(rec["resource"], "https://management.azure.com/");
    assert!(
        rec["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{rec}"
    );

    // The closest rule is named, as the deny body names it.
    let r = env.get(PAYMENTS_API, &token_target(VAULT, &kubelet)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = records.one();
    assert_eq!(
        (rec["decision"].as_str(), rec["rule"].as_str()),
        (Some("would-deny"), Some("payments-api-arm"))
    );
    assert!(
        rec["reason"]
            .as_str()
            .unwrap()
            .contains("https://vault.azure.net"),
        "{rec}"
    );

    // An allowed request is still an allow, redacted as ever.
    let r = env
        .get(MONITORING, "/metadata/instance?api-version=2021-02-01")
        .await;
    assert_eq!(r.status, 200);
    assert!(r.json()["compute"].get("customData").is_none(), "redacted");
    let rec = records.one();
    assert_eq!(
        (rec["decision"].as_str(), rec["redacted"].as_bool()),
        (Some("allow"), Some(true))
    );

    // A denied instance request gets the upstream's document, unredacted: what the
    // pod had without imdsguard.
    let r = env
        .get(
            SHOP_WEB,
            "/metadata/instance/compute?api-version=2021-02-01",
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.json().get("customData").is_some(), "{}", r.text());
    let rec = records.one();
    assert_eq!(rec["decision"], "would-deny");
    assert_eq!(rec["redacted"], false);

    // A field the allowing rules hide, asked for directly: forwarded, recorded with the
    // allowing rule that hides it.
    let r = env
        .get(
            MONITORING,
            "/metadata/instance/compute/customData?api-version=2021-02-01&format=text",
        )
        .await;
    assert_eq!(r.status, 200);
    let rec = records.one();
    assert_eq!(
        (rec["decision"].as_str(), rec["rule"].as_str()),
        (Some("would-deny"), Some("monitoring-instance"))
    );

    // An address that is no pod: forwarded, recorded with the built-in rule.
    let r = env.get(UNKNOWN, "/metadata/versions").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = records.one();
    assert_eq!(
        (rec["decision"].as_str(), rec["rule"].as_str()),
        (Some("would-deny"), Some(RULE_UNKNOWN_SOURCE))
    );
    assert_eq!(rec["pod"], "-");

    // What IMDS itself would refuse is refused as before.
    let r = send_from(SHOP_WEB, env.addr(), "GET", "/metadata/versions", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(records.one()["decision"], "invalid");

    // Counted as would_deny; /readyz says it is a dry run.
    let m = admin_get(env.admin(), "/metrics").await;
    m.assert_has(&[
        r#"imdsguard_proxy_decisions_total{namespace="shop",endpoint="identity-token",outcome="would_deny"} 1"#,
        r#"imdsguard_proxy_decisions_total{namespace="-",endpoint="versions",outcome="would_deny"} 1"#,
    ]);
    let ready = admin_get(env.admin(), "/readyz").await;
    assert_eq!(ready.status, 200);
    assert!(ready.text().contains("dry run"), "{}", ready.text());
    env.shutdown().await;

    // Without the dry run, the same requests are denied.
    let (env, records) = start_dry(false).await;
    let r = env.get(SHOP_WEB, &token_target(ARM, &kubelet)).await;
    assert_eq!(r.denied_by(), RULE_DEFAULT_DENY);
    let rec = records.one();
    assert_eq!(
        (rec["decision"].as_str(), rec["status"].as_u64()),
        (Some("deny"), Some(403))
    );
    let r = env.get(PAYMENTS_API, &token_target(VAULT, &kubelet)).await;
    assert_eq!(r.denied_by(), "payments-api-arm");
    let r = env.get(UNKNOWN, "/metadata/versions").await;
    assert_eq!(r.denied_by(), RULE_UNKNOWN_SOURCE);
    let ready = admin_get(env.admin(), "/readyz").await;
    assert!(!ready.text().contains("dry run"), "{}", ready.text());
    env.shutdown().await;
}

#[tokio::test]
async fn a_dry_run_still_throttles() {
    let records = Records::default();
    let sink = records.clone();
    let env = start_with(Faults::default(), move |c| {
        c.dry_run = true;
        c.decisions = Some(Arc::new(sink));
        c.pod_rate = PodRate {
            general: 0.5,
            identity: 0.5,
            burst: 1,
        };
    })
    .await;
    let r = env.get(UNKNOWN, "/metadata/versions").await;
    assert_eq!(r.status, 200);
    let r = env.get(UNKNOWN, "/metadata/versions").await;
    assert_eq!(r.status, 429, "{}", r.text());
    // An ambiguous request forwarded as received counts against the same rate.
    let r = env.get(UNKNOWN, "/metadata//versions").await;
    assert_eq!(r.status, 429, "{}", r.text());
    let all = records.take();
    let decisions: Vec<&str> = all
        .iter()
        .map(|r| r["decision"].as_str().unwrap())
        .collect();
    assert_eq!(decisions, ["would-deny", "throttled", "throttled"]);
    env.shutdown().await;
}

#[tokio::test]
async fn a_dry_run_denial_the_upstream_fails_stays_would_deny() {
    let records = Records::default();
    let sink = records.clone();
    let env = start_with(Faults::default(), move |c| {
        c.dry_run = true;
        c.decisions = Some(Arc::new(sink));
        // Nothing listens there: the forward fails to connect.
        c.upstream = imdsguard_proxy::Upstream::parse("http://127.0.0.1:9").unwrap();
    })
    .await;
    let r = env.get(UNKNOWN, "/metadata/versions").await;
    assert_eq!(r.status, 502, "{}", r.text());
    let rec = records.one();
    assert_eq!(
        (
            rec["decision"].as_str(),
            rec["rule"].as_str(),
            rec["status"].as_u64()
        ),
        (Some("would-deny"), Some(RULE_UNKNOWN_SOURCE), Some(502))
    );
    let m = admin_get(env.admin(), "/metrics").await;
    m.assert_has(&[r#"imdsguard_proxy_upstream_errors_total{kind="connect"} 1"#]);
    env.shutdown().await;
}

/// An ambiguous spelling of a token request: IMDS (and the emulator) resolve the `.`
/// segment; the proxy refuses to guess.
fn dotted_token_target() -> String {
    format!(
        "/metadata/identity/./oauth2/token?api-version=2018-02-01&resource={ARM}&client_id={KUBELET_CLIENT_ID}"
    )
}

/// 70 header fields: over the proxy's 64 (a `canonical-form` denial), under hyper's
/// own limit.
fn many_headers() -> Vec<(String, String)> {
    let mut h = vec![("Metadata".to_string(), "true".to_string())];
    h.extend((0..70).map(|i| (format!("X-Pad-{i}"), "1".to_string())));
    h
}

async fn send_many_headers(addr: std::net::SocketAddr) -> Reply {
    let headers = many_headers();
    let refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    send_from(SHOP_WEB, addr, "GET", "/metadata/versions", &refs, b"")
        .await
        .unwrap()
}

#[tokio::test]
async fn a_dry_run_forwards_an_ambiguous_request_as_received() {
    let (env, records) = start_dry(true).await;

    // A dot segment: the emulator reads it as the token endpoint and answers a token,
    // as IMDS would have without the proxy. Recorded as the canonical-form denial.
    let r = env.get(SHOP_WEB, &dotted_token_target()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let claims = TokenSummary::from_token_response(&r.body)
        .expect("a token")
        .claims
        .expect("claims");
    assert_eq!(claims.appid.as_deref(), Some(KUBELET_CLIENT_ID));
    let rec = records.one();
    assert_eq!(
        (
            rec["decision"].as_str(),
            rec["rule"].as_str(),
            rec["status"].as_u64()
        ),
        (Some("would-deny"), Some(RULE_CANONICAL_FORM), Some(200)),
        "{rec}"
    );
    assert_eq!(rec["pod"], "shop/web-1");
    assert_eq!(rec["path"], "/metadata/identity/./oauth2/token");
    assert!(
        rec["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("dot-segment: ")),
        "{rec}"
    );

    // An encoded slash: the emulator finds no such API; its 404 is what the pod gets.
    let r = env
        .get(
            SHOP_WEB,
            "/metadata/identity%2foauth2/token?api-version=2018-02-01",
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(
        r.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("identity%2foauth2")),
        "{}",
        r.text()
    );
    let rec = records.one();
    assert_eq!(
        (
            rec["decision"].as_str(),
            rec["rule"].as_str(),
            rec["status"].as_u64()
        ),
        (Some("would-deny"), Some(RULE_CANONICAL_FORM), Some(404)),
        "{rec}"
    );

    // A GET with a body, and too many header fields: forwarded too.
    let r = send_from(
        SHOP_WEB,
        env.addr(),
        "GET",
        "/metadata/versions",
        &[("Metadata", "true")],
        b"x=1",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = records.one();
    assert_eq!(
        (rec["decision"].as_str(), rec["rule"].as_str()),
        (Some("would-deny"), Some(RULE_CANONICAL_FORM)),
        "{rec}"
    );
    assert!(
        rec["reason"]
            .as_str()
            .is_some_and(|r| r.contains("a GET request with a body")),
        "{rec}"
    );
    let r = send_many_headers(env.addr()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = records.one();
    assert_eq!(
        (rec["decision"].as_str(), rec["rule"].as_str()),
        (Some("would-deny"), Some(RULE_CANONICAL_FORM)),
        "{rec}"
    );
    assert!(
        rec["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("bad-header: ")),
        "{rec}"
    );

    // IMDS's header checks still come first: no `Metadata: true`, IMDS's 400 (in the
    // token endpoint's shape) from the proxy, recorded invalid.
    let r = send_from(
        SHOP_WEB,
        env.addr(),
        "GET",
        &dotted_token_target(),
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "bad_request_102", "{}", r.text());
    let rec = records.one();
    assert_eq!(
        (rec["decision"].as_str(), rec["rule"].as_str()),
        (Some("invalid"), Some("imds-validation")),
        "{rec}"
    );

    // Counted as would_deny (the endpoint of an ambiguous target is unknown).
    let m = admin_get(env.admin(), "/metrics").await;
    m.assert_has(&[
        r#"imdsguard_proxy_decisions_total{namespace="shop",endpoint="unknown",outcome="would_deny"} 2"#,
        r#"imdsguard_proxy_decisions_total{namespace="shop",endpoint="versions",outcome="would_deny"} 2"#,
    ]);
    env.shutdown().await;

    // Without the dry run, every one of them is the 403.
    let (env, records) = start_dry(false).await;
    let r = env.get(SHOP_WEB, &dotted_token_target()).await;
    assert_eq!(r.denied_by(), RULE_CANONICAL_FORM);
    let rec = records.one();
    assert_eq!(
        (rec["decision"].as_str(), rec["rule"].as_str()),
        (Some("deny"), Some(RULE_CANONICAL_FORM))
    );
    let r = env
        .get(
            SHOP_WEB,
            "/metadata/identity%2foauth2/token?api-version=2018-02-01",
        )
        .await;
    assert_eq!(r.denied_by(), RULE_CANONICAL_FORM);
    let r = send_from(
        SHOP_WEB,
        env.addr(),
        "GET",
        "/metadata/versions",
        &[("Metadata", "true")],
        b"x=1",
    )
    .await
    .unwrap();
    assert_eq!(r.denied_by(), RULE_CANONICAL_FORM);
    assert_eq!(
        send_many_headers(env.addr()).await.denied_by(),
        RULE_CANONICAL_FORM
    );
    assert_eq!(records.take().len(), 3);
    env.shutdown().await;
}

#[tokio::test]
async fn a_dry_run_sends_the_raw_target_and_answers_what_it_cannot_send_as_imds_would() {
    let echo = echo_upstream().await;
    let records = Records::default();
    let mut c = config(echo.addr);
    c.admin_listen = None;
    c.dry_run = true;
    c.decisions = Some(Arc::new(records.clone()));
    let proxy = Proxy::start(c).await.unwrap();
    let addr = proxy.local_addr();

    // The target goes upstream byte for byte, not re-spelled: the empty query piece,
    // the escape and the empty segment stay; `Metadata: true` as sent.
    let raw = "/metadata//versions?b=%41&&api-version=2021-02-01";
    let r = send_from(SHOP_WEB, addr, "GET", raw, &[("Metadata", "true")], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["(target)"], raw, "{}", r.text());
    assert_eq!(r.json()["metadata"], "true");
    let rec = records.one();
    assert_eq!(
        (rec["decision"].as_str(), rec["rule"].as_str()),
        (Some("would-deny"), Some(RULE_CANONICAL_FORM)),
        "{rec}"
    );

    // An absolute-form target for another host: sent as received, to the configured
    // upstream (the only place the proxy connects to).
    let absolute = "http://evil.example/metadata/versions";
    let r = send_from(
        SHOP_WEB,
        addr,
        "GET",
        absolute,
        &[("Metadata", "true")],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["(target)"], absolute, "{}", r.text());
    assert_eq!(r.json()["host"], echo.addr.to_string(), "{}", r.text());
    assert!(
        records.one()["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("other-host: ")),
    );
    let hits = echo.hits.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(hits, 2);

    // What cannot be sent as received (asterisk-form, authority-form) is answered as
    // IMDS answers an unknown API, and so is a request refused by IMDS's header checks
    // (X-Forwarded-For): none reaches the upstream.
    for (method, target) in [("OPTIONS", "*"), ("CONNECT", "evil.example:443")] {
        let r = send_from(SHOP_WEB, addr, method, target, &[("Metadata", "true")], b"")
            .await
            .unwrap();
        assert_eq!(r.status, 404, "{method} {target}: {}", r.text());
        assert!(
            r.json()["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("API isn't found")),
            "{}",
            r.text()
        );
        let rec = records.one();
        assert_eq!(
            (rec["decision"].as_str(), rec["status"].as_u64()),
            (Some("invalid"), Some(404)),
            "{rec}"
        );
    }
    let r = send_from(
        SHOP_WEB,
        addr,
        "GET",
        raw,
        &[("Metadata", "true"), ("X-Forwarded-For", "10.0.0.9")],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(records.one()["decision"], "invalid");
    assert_eq!(echo.hits.load(std::sync::atomic::Ordering::SeqCst), hits);
    proxy.shutdown().await;
}
