//! Dry run over real HTTP: the proxy in front of the in-process emulator (both on
//! 127.0.0.1:0), pods played from loopback source addresses. A request the rules deny
//! gets the upstream's answer and a `would-deny` record naming the rule that would
//! deny it; without the dry run the same request is denied.

mod support;

use std::sync::Arc;

use imdsguard_core::access::{RULE_CANONICAL_FORM, RULE_DEFAULT_DENY, RULE_UNKNOWN_SOURCE};
use imdsguard_core::token::TokenSummary;
use imdsguard_emulator::Faults;
use imdsguard_proxy::PodRate;
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

    // What IMDS itself would refuse is refused as before, and an ambiguous target is
    // never forwarded.
    let r = send_from(SHOP_WEB, env.addr(), "GET", "/metadata/versions", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(records.one()["decision"], "invalid");
    let r = env
        .get(
            SHOP_WEB,
            "/metadata/identity%2foauth2/token?api-version=2018-02-01",
        )
        .await;
    assert_eq!(r.denied_by(), RULE_CANONICAL_FORM);
    assert_eq!(records.one()["decision"], "deny");

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
    let all = records.take();
    let decisions: Vec<&str> = all
        .iter()
        .map(|r| r["decision"].as_str().unwrap())
        .collect();
    assert_eq!(decisions, ["would-deny", "throttled"]);
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
