//! The proxy in front of the in-process emulator, both on 127.0.0.1:0; callers play
//! different pods by binding their sockets to 127.0.0.2, 127.0.0.3, ...

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use imdsguard_core::access::{
    PodIndex, RULE_CANONICAL_FORM, RULE_DEFAULT_DENY, RULE_UNKNOWN_SOURCE,
};
use imdsguard_core::token::TokenSummary;
use imdsguard_emulator::Faults;
use imdsguard_proxy::{Proxy, Timeouts};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn token_target(resource: &str, extra: &str) -> String {
    format!("/metadata/identity/oauth2/token?api-version=2018-02-01&resource={resource}{extra}")
}

#[tokio::test]
async fn tokens_only_for_the_permitted_audience_and_identity() {
    let env = start().await;
    let kubelet = format!("&client_id={KUBELET_CLIENT_ID}");

    let r = env.get(PAYMENTS_API, &token_target(ARM, &kubelet)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let summary = TokenSummary::from_token_response(&r.body).expect("a token");
    let claims = summary.claims.expect("JWT claims");
    assert_eq!(claims.appid.as_deref(), Some(KUBELET_CLIENT_ID));
    assert_eq!(claims.aud.as_deref(), Some("https://management.azure.com/"));

    // Another audience, another identity, the default identity: denied by the rule
    // that came closest, with a body that says so.
    let r = env.get(PAYMENTS_API, &token_target(VAULT, &kubelet)).await;
    assert_eq!(r.denied_by(), "payments-api-arm");
    let v = r.json();
    assert!(
        v["imdsguard"]["reason"]
            .as_str()
            .unwrap()
            .contains("https://vault.azure.net"),
        "{v}"
    );
    assert!(
        v["imdsguard"]["help"]
            .as_str()
            .unwrap()
            .contains("namespace payments, service account api"),
        "{v}"
    );
    let r = env
        .get(
            PAYMENTS_API,
            &token_target(ARM, &format!("&client_id={KEYVAULT_CLIENT_ID}")),
        )
        .await;
    assert_eq!(r.denied_by(), "payments-api-arm");
    assert!(r.text().contains(KEYVAULT_CLIENT_ID));
    let r = env.get(PAYMENTS_API, &token_target(ARM, "")).await;
    assert_eq!(r.denied_by(), "payments-api-arm");

    // Another pod of the cluster: no token at all.
    let r = env.get(SHOP_WEB, &token_target(ARM, &kubelet)).await;
    assert_eq!(r.denied_by(), RULE_DEFAULT_DENY);
    assert!(r.text().contains("shop/web-1"), "{}", r.text());

    // An address that is no pod.
    let r = env.get(UNKNOWN, &token_target(ARM, &kubelet)).await;
    assert_eq!(r.denied_by(), RULE_UNKNOWN_SOURCE);
    let r = env.get(UNKNOWN, "/metadata/versions").await;
    assert_eq!(r.denied_by(), RULE_UNKNOWN_SOURCE);
    env.shutdown().await;
}

#[tokio::test]
async fn instance_document_is_redacted_including_sub_paths() {
    let env = start().await;
    let v = "api-version=2021-02-01";
    let r = env
        .get(MONITORING, &format!("/metadata/instance?{v}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json();
    let compute = doc["compute"].as_object().unwrap();
    for hidden in ["customData", "userData", "publicKeys", "tags", "tagsList"] {
        assert!(!compute.contains_key(hidden), "{hidden} in {doc}");
    }
    assert_eq!(compute["vmScaleSetName"], "aks-nodepool1-12345678-vmss");
    assert!(doc["network"]["interface"][0]["ipv4"].is_object());
    assert!(!r.text().contains("aks-managed-kubeletIdentityClientID"));
    assert!(!r.text().contains("ssh-rsa"));

    let r = env
        .get(MONITORING, &format!("/metadata/instance/compute?{v}"))
        .await;
    assert_eq!(r.status, 200);
    assert!(r.json().get("tagsList").is_none());
    assert!(r.json().get("vmId").is_some());

    // A text listing does not name hidden fields either.
    let r = env
        .get(
            MONITORING,
            &format!("/metadata/instance/compute?{v}&format=text"),
        )
        .await;
    assert_eq!(r.status, 200);
    let names: Vec<&str> = r.text().lines().collect();
    assert!(
        names.contains(&"vmId") && names.contains(&"osProfile/"),
        "{names:?}"
    );
    for hidden in ["customData", "userData", "publicKeys/", "tags", "tagsList/"] {
        assert!(!names.contains(&hidden), "{hidden} listed");
    }

    // Hidden fields asked for directly (any case) are denied; others answer as IMDS.
    for target in [
        "/metadata/instance/compute/customData?api-version=2021-02-01&format=text",
        "/metadata/instance/compute/userData?api-version=2021-02-01&format=text",
        "/metadata/instance/compute/TAGS?api-version=2021-02-01&format=text",
        "/metadata/instance/compute/tagsList/3/value?api-version=2021-02-01&format=text",
        "/metadata/instance/compute/publicKeys?api-version=2021-02-01",
    ] {
        let r = env.get(MONITORING, target).await;
        assert_eq!(r.denied_by(), "monitoring-instance", "{target}");
    }
    let r = env
        .get(
            MONITORING,
            &format!("/metadata/instance/compute/vmId?{v}&format=text"),
        )
        .await;
    assert_eq!(
        (r.status, r.text()),
        (200, "8f3c1a2b-4d5e-46f7-9a8b-0c1d2e3f4a5b")
    );
    let r = env
        .get(MONITORING, &format!("/metadata/instance/compute/vmId?{v}"))
        .await;
    assert_eq!(r.status, 400, "a leaf needs format=text, as IMDS says");
    let r = env
        .get(
            MONITORING,
            &format!("/metadata/instance/compute/nothing?{v}&format=text"),
        )
        .await;
    assert_eq!(r.status, 404);

    // A pod granted only compute/location gets that, and nothing around it.
    let r = env
        .get(
            SHOP_WEB,
            &format!("/metadata/instance/compute/location?{v}&format=text"),
        )
        .await;
    assert_eq!((r.status, r.text()), (200, "westeurope"));
    let r = env
        .get(SHOP_WEB, &format!("/metadata/instance/compute?{v}"))
        .await;
    assert_eq!(r.denied_by(), RULE_DEFAULT_DENY);
    env.shutdown().await;
}

#[tokio::test]
async fn imds_rules_are_answered_by_the_proxy() {
    let env = start().await;
    let addr = env.addr();
    // No Metadata header: 400 as IMDS answers it (identity endpoints in their shape).
    let r = send_from(
        SHOP_WEB,
        addr,
        "GET",
        "/metadata/instance?api-version=2021-02-01",
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"],
        "Bad request. Required metadata header not specified"
    );
    let r = send_from(
        PAYMENTS_API,
        addr,
        "GET",
        &token_target(ARM, ""),
        &[("Metadata", "false")],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "bad_request_102");
    // Unknown path, bad api-version, wrong method: IMDS's answers.
    assert_eq!(
        env.get(SHOP_WEB, "/metadata/nothing?api-version=2021-02-01")
            .await
            .status,
        404
    );
    assert_eq!(
        env.get(
            SHOP_WEB,
            "/metadata/instance/compute/location?api-version=1999-01-01"
        )
        .await
        .status,
        400
    );
    let r = send_from(
        SHOP_WEB,
        addr,
        "PUT",
        "/metadata/versions",
        &[("Metadata", "true")],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 405);
    env.shutdown().await;
}

#[tokio::test]
async fn forwarding_headers_and_hop_by_hop_headers() {
    let echo = echo_upstream().await;
    let mut c = config(echo.addr);
    c.admin_listen = None;
    let proxy = Proxy::start(c).await.unwrap();
    let addr = proxy.local_addr();

    // A client's X-Forwarded-For is refused as IMDS refuses it, and never forwarded.
    let r = send_from(
        SHOP_WEB,
        addr,
        "GET",
        "/metadata/versions",
        &[("Metadata", "true"), ("X-Forwarded-For", "10.0.0.9")],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.text().contains("X-Forwarded-For"), "{}", r.text());
    assert_eq!(
        echo.hits.load(Ordering::SeqCst),
        0,
        "nothing reached upstream"
    );

    let r = send_from(
        SHOP_WEB,
        addr,
        "GET",
        "/metadata/versions",
        &[
            ("Metadata", "true"),
            ("User-Agent", "azsdk/1.0"),
            ("Connection", "keep-alive, X-Custom"),
            ("X-Custom", "hop"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Proxy-Authorization", "Basic eA=="),
            ("Authorization", "Bearer eyJhbGciOi.not-a-real.token"),
            ("Forwarded", "for=10.0.0.9"),
            ("X-Real-IP", "10.0.0.9"),
            ("Cookie", "a=b"),
            ("Accept-Encoding", "gzip"),
        ],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(echo.hits.load(Ordering::SeqCst), 1);
    let seen = r.json();
    let names: Vec<&str> = seen
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        names,
        ["(target)", "host", "metadata", "user-agent"],
        "{seen}"
    );
    assert_eq!(seen["metadata"], "true");
    assert_eq!(seen["host"], echo.addr.to_string());
    assert_eq!(seen["user-agent"], "azsdk/1.0");
    assert_eq!(seen["(target)"], "/metadata/versions");
    // Hop-by-hop answer headers stay behind; others pass.
    assert_eq!(r.header("x-kept"), Some("yes"));
    for h in ["x-hop", "keep-alive", "proxy-authenticate"] {
        assert_eq!(r.header(h), None, "{h}");
    }

    // What goes upstream is the canonical form, not the bytes received.
    let r = send_from(
        PAYMENTS_API,
        addr,
        "GET",
        &format!(
            "http://169.254.169.254/Metadata/Identity/OAuth2/Token/?Resource=https://management.azure.com/&API-Version=2018-02-01&Client_ID={}",
            KUBELET_CLIENT_ID.to_uppercase()
        ),
        &[("Metadata", "true")],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["(target)"],
        format!(
            "/metadata/identity/oauth2/token?resource=https%3A%2F%2Fmanagement.azure.com%2F&api-version=2018-02-01&client_id={}",
            KUBELET_CLIENT_ID.to_uppercase()
        )
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn bypass_attempts_over_http_are_denied_or_decided_like_the_clean_form() {
    let env = start().await;
    let q = format!("api-version=2018-02-01&resource={ARM}&client_id={KUBELET_CLIENT_ID}");
    // shop/web may read compute/location only; none of these may yield a token.
    let attempts = [
        format!("/metadata/identity/oauth2/token/?{q}"),
        format!("//metadata/identity/oauth2/token?{q}"),
        format!("/metadata/identity/./oauth2/token?{q}"),
        format!("/Metadata/Identity/OAuth2/Token?{q}"),
        format!("/metadata/identity%2foauth2/token?{q}"),
        format!("/metadata\\identity\\oauth2\\token?{q}"),
        format!("/metadata/instance/../identity/oauth2/token?{q}"),
        format!("/metadata/instance/compute/location/../../../identity/oauth2/token?{q}"),
        format!(
            "/metadata/instance/compute/location/%2e%2e/%2e%2e/%2e%2e/identity/oauth2/token?{q}"
        ),
        format!("/metadata/instance/compute/location%2f..%2f..%2f..%2fidentity/oauth2/token?{q}"),
        format!("/metadata/identity/oauth2/token;/?{q}"),
        format!("/metadata/identity/oauth2/token%00?{q}"),
        format!("http://evil.example/metadata/identity/oauth2/token?{q}"),
        format!("http://169.254.169.254/metadata/identity/oauth2/token?{q}"),
        format!("/metadata/identity/oauth2/token?{q}&resource=https://vault.azure.net"),
        format!("/metadata/identity/oauth2/token?{q}&Resource=https://vault.azure.net"),
        format!("/metadata/identity/oauth2/token?{q}#x"),
    ];
    for attempt in &attempts {
        for from in [SHOP_WEB, MONITORING] {
            let r = env.get(from, attempt).await;
            assert_ne!(r.status, 200, "{attempt}: {}", r.text());
            assert!(!r.text().contains("access_token"), "{attempt}");
        }
    }
    // Spellings of an allowed path stay allowed (the same rule decides).
    let v = "api-version=2021-02-01&format=text";
    for allowed in [
        format!("/metadata/instance/compute/location?{v}"),
        format!("/metadata/instance/compute/location/?{v}"),
        format!("/METADATA/INSTANCE/compute/location?{v}"),
        format!("/metadata/instance/compute/%6cocation?{v}"),
        format!("http://169.254.169.254:80/metadata/instance/compute/location?{v}"),
        "/metadata/instance/compute/location?Format=text&Api-Version=2021-02-01".to_string(),
    ] {
        let r = env.get(SHOP_WEB, &allowed).await;
        assert_eq!((r.status, r.text()), (200, "westeurope"), "{allowed}");
    }
    // Rejections say why, under the canonical-form rule.
    let r = env
        .get(
            SHOP_WEB,
            "/metadata/identity%2foauth2/token?api-version=2018-02-01",
        )
        .await;
    assert_eq!(r.denied_by(), RULE_CANONICAL_FORM);
    assert!(r.text().contains("%2f"), "{}", r.text());
    env.shutdown().await;
}

#[tokio::test]
async fn oversized_and_malformed_requests_are_rejected() {
    let env = start().await;
    let addr = env.addr();
    let long = format!(
        "/metadata/instance/compute/location?api-version=2021-02-01&x={}",
        "a".repeat(3000)
    );
    assert_eq!(
        env.get(SHOP_WEB, &long).await.denied_by(),
        RULE_CANONICAL_FORM
    );
    let big = "v".repeat(9000);
    let r = send_from(
        SHOP_WEB,
        addr,
        "GET",
        "/metadata/versions",
        &[("Metadata", "true"), ("X-Big", &big)],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.denied_by(), RULE_CANONICAL_FORM);
    // Far over hyper's header limit: 431 before any rule.
    let huge = "v".repeat(40_000);
    let r = send_from(
        SHOP_WEB,
        addr,
        "GET",
        "/metadata/versions",
        &[("Metadata", "true"), ("X-Huge", &huge)],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 431);
    // Non-ASCII in the target.
    let head = "GET /metadata/versions/\u{e9} HTTP/1.1\r\nHost: x\r\nMetadata: true\r\nConnection: close\r\n\r\n";
    let r = send_raw(SHOP_WEB, addr, head.as_bytes(), b"")
        .await
        .unwrap();
    assert_eq!(r.denied_by(), RULE_CANONICAL_FORM);
    // A GET with a body.
    let r = send_from(
        SHOP_WEB,
        addr,
        "GET",
        "/metadata/versions",
        &[("Metadata", "true"), ("Content-Length", "3")],
        b"abc",
    )
    .await
    .unwrap();
    assert_eq!(r.denied_by(), RULE_CANONICAL_FORM);
    // The connection is still usable by others.
    assert_eq!(env.get(SHOP_WEB, "/metadata/versions").await.status, 200);
    env.shutdown().await;
}

#[tokio::test]
async fn scheduled_event_approval_is_forwarded_with_its_body() {
    let env = start().await;
    let t = "/metadata/scheduledevents?api-version=2020-07-01";
    let events = env.get(OPS, t).await.json();
    let id = events["Events"][0]["EventId"].as_str().unwrap().to_string();
    let body = format!(r#"{{"StartRequests":[{{"EventId":"{id}"}}]}}"#);
    let r = send_from(
        OPS,
        env.addr(),
        "POST",
        t,
        &[("Metadata", "true"), ("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        env.get(OPS, t).await.json()["Events"][0]["EventStatus"],
        "Started"
    );
    // Other pods may not approve, nor read.
    let r = send_from(
        SHOP_WEB,
        env.addr(),
        "POST",
        t,
        &[("Metadata", "true")],
        body.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.denied_by(), RULE_DEFAULT_DENY);
    env.shutdown().await;
}

#[tokio::test]
async fn upstream_down_is_a_502_and_counted() {
    // A port that was free a moment ago: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut c = config(port);
    c.timeouts.upstream_connect = Duration::from_millis(500);
    let proxy = Proxy::start(c).await.unwrap();
    let r = send_from(
        SHOP_WEB,
        proxy.local_addr(),
        "GET",
        "/metadata/versions",
        &[("Metadata", "true")],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"], "imdsguard_upstream_error");
    let d = v["error_description"].as_str().unwrap();
    assert!(
        d.contains("cannot connect") && d.contains(&port.to_string()),
        "{d}"
    );
    // Denials do not need the upstream.
    let r = send_from(
        SHOP_WEB,
        proxy.local_addr(),
        "GET",
        &token_target(ARM, ""),
        &[("Metadata", "true")],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403);
    let metrics = admin_get(proxy.admin_addr().unwrap(), "/metrics").await;
    assert!(
        metrics
            .text()
            .contains(r#"imdsguard_proxy_upstream_errors_total{kind="connect"} 1"#),
        "{}",
        metrics.text()
    );
    assert!(metrics.text().contains(r#"imdsguard_proxy_decisions_total{namespace="shop",endpoint="versions",outcome="upstream-error"} 1"#));
    proxy.shutdown().await;
}

#[tokio::test]
async fn timeouts_bound_every_wait() {
    // A slow upstream: 504 after the upstream timeout, not after the emulator's delay.
    let faults = Faults {
        delay: Duration::from_secs(3),
        ..Faults::default()
    };
    let env = start_with(faults, |c| {
        c.timeouts = Timeouts {
            header_read: Duration::from_millis(300),
            upstream_response: Duration::from_millis(300),
            ..Timeouts::default()
        };
    })
    .await;
    let started = std::time::Instant::now();
    let r = env.get(SHOP_WEB, "/metadata/versions").await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        r.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("no answer within 300 ms")
    );

    // A client that never finishes its headers is cut off.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((SHOP_WEB, 0).into()).unwrap();
    let mut stream = socket.connect(env.addr()).await.unwrap();
    stream
        .write_all(b"GET /metadata/versions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the proxy closed the slow connection");
    // An idle keep-alive connection is closed too.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((SHOP_WEB, 0).into()).unwrap();
    let mut idle = socket.connect(env.addr()).await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(3), idle.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the proxy closed the idle connection");
    let m = admin_get(env.admin(), "/metrics").await;
    m.assert_has(&[r#"imdsguard_proxy_upstream_errors_total{kind="timeout"} 1"#]);
    env.shutdown().await;
}

#[tokio::test]
async fn metrics_after_some_requests() {
    let env = start().await;
    let kubelet = format!("&client_id={KUBELET_CLIENT_ID}");
    assert_eq!(
        env.get(PAYMENTS_API, &token_target(ARM, &kubelet))
            .await
            .status,
        200
    );
    assert_eq!(
        env.get(PAYMENTS_API, &token_target(VAULT, &kubelet))
            .await
            .status,
        403
    );
    assert_eq!(
        env.get(PAYMENTS_API, &token_target(VAULT, &kubelet))
            .await
            .status,
        403
    );
    assert_eq!(env.get(UNKNOWN, "/metadata/versions").await.status, 403);
    assert_eq!(
        env.get(MONITORING, "/metadata/instance?api-version=2021-02-01")
            .await
            .status,
        200
    );
    assert_eq!(
        env.get(SHOP_WEB, "/metadata/instance?api-version=nope")
            .await
            .status,
        400
    );
    env.proxy.metrics().record_blocked_packets("imds", 2);

    let r = admin_get(env.admin(), "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = r.text();
    for want in [
        r#"imdsguard_proxy_decisions_total{namespace="payments",endpoint="identity-token",outcome="allow"} 1"#,
        r#"imdsguard_proxy_decisions_total{namespace="payments",endpoint="identity-token",outcome="deny"} 2"#,
        r#"imdsguard_proxy_decisions_total{namespace="-",endpoint="versions",outcome="deny"} 1"#,
        r#"imdsguard_proxy_decisions_total{namespace="monitoring",endpoint="instance",outcome="allow"} 1"#,
        r#"imdsguard_proxy_decisions_total{namespace="shop",endpoint="instance",outcome="invalid"} 1"#,
        r#"imdsguard_proxy_redactions_total{namespace="monitoring"} 1"#,
        r#"imdsguard_proxy_request_duration_seconds_count{outcome="deny"} 3"#,
        r#"imdsguard_proxy_upstream_duration_seconds_count{endpoint="identity-token"} 1"#,
        r#"imdsguard_blocked_packets_total{destination="imds"} 2"#,
        "imdsguard_proxy_rules 4",
        "imdsguard_proxy_pods 4",
        "# EOF",
    ] {
        assert!(text.contains(want), "{want} missing in\n{text}");
    }
    // Never a token in the metrics.
    assert!(!text.contains("eyJ"));
    env.shutdown().await;
}

#[tokio::test]
async fn health_readiness_and_live_reloads() {
    let emulator = emulator(Faults::default()).await;
    let mut c = config(emulator.local_addr());
    c.rules = None;
    c.pods = PodIndex::new();
    let proxy = Proxy::start(c).await.unwrap();
    let admin = proxy.admin_addr().unwrap();
    assert_eq!(admin_get(admin, "/healthz").await.status, 200);
    let r = admin_get(admin, "/readyz").await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("access rules not loaded"), "{}", r.text());
    assert_eq!(admin_get(admin, "/nothing").await.status, 404);

    // Without rules everything is denied; unknown sources first.
    let get = |from| {
        let addr = proxy.local_addr();
        async move {
            send_from(
                from,
                addr,
                "GET",
                "/metadata/versions",
                &[("Metadata", "true")],
                b"",
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(get(SHOP_WEB).await.denied_by(), RULE_UNKNOWN_SOURCE);
    proxy.set_pods(PodIndex::parse(PODS).unwrap());
    assert_eq!(get(SHOP_WEB).await.denied_by(), "no-rules-loaded");
    proxy.set_rules(imdsguard_core::access::AccessRules::parse(RULES).unwrap());
    assert_eq!(get(SHOP_WEB).await.status, 200);
    assert_eq!(admin_get(admin, "/readyz").await.status, 200);

    // The owner's condition (the agent's "nft rules in place").
    let control = proxy.control();
    control.set_ready_check(Some(std::sync::Arc::new(|| {
        Err("nft rules not in place".to_string())
    })));
    let r = admin_get(admin, "/readyz").await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("nft rules not in place"));
    control.set_ready_check(None);
    assert_eq!(admin_get(admin, "/readyz").await.status, 200);

    // A pod that leaves is unknown again.
    control.set_pods(PodIndex::parse("[{ip: 127.0.0.9, namespace: x, name: y}]").unwrap());
    assert_eq!(get(SHOP_WEB).await.denied_by(), RULE_UNKNOWN_SOURCE);
    proxy.shutdown().await;
    emulator.shutdown().await;
}

/// An upstream that answers each request on a keep-alive connection and then closes it
/// without saying so: the proxy's pool must notice (or retry the GET once) instead of
/// failing the next request.
#[tokio::test]
async fn pooled_connections_closed_by_the_upstream_are_replaced() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let body = r#"{"apiVersions":["2021-02-01"]}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
                // Close after a short while, as an idle timeout would.
                tokio::time::sleep(Duration::from_millis(20)).await;
            });
        }
    });
    let mut c = config(upstream);
    c.admin_listen = None;
    let proxy = Proxy::start(c).await.unwrap();
    for i in 0..6 {
        let r = send_from(
            SHOP_WEB,
            proxy.local_addr(),
            "GET",
            "/metadata/versions",
            &[("Metadata", "true")],
            b"",
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        // Half of the time the upstream has already closed, half it is about to.
        tokio::time::sleep(Duration::from_millis(if i % 2 == 0 { 40 } else { 5 })).await;
    }
    assert!(accepted.load(Ordering::SeqCst) >= 3);
    proxy.shutdown().await;
}

#[tokio::test]
async fn upstream_dropping_connections_is_a_502() {
    let faults = Faults {
        drop_rate: 1.0,
        ..Faults::default()
    };
    let env = start_with(faults, |_| {}).await;
    let r = env.get(SHOP_WEB, "/metadata/versions").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"], "imdsguard_upstream_error");
    let m = admin_get(env.admin(), "/metrics").await;
    m.assert_has(&[r#"imdsguard_proxy_upstream_errors_total{kind="io"} 1"#]);
    env.shutdown().await;
}

/// The rules and pods examples of docs/proxy.md parse, and decide as the text says.
#[test]
fn documented_examples_parse() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/proxy.md"))
        .expect("docs/proxy.md");
    let blocks: Vec<&str> = doc
        .split("```yaml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert!(blocks.len() >= 2, "yaml examples in docs/proxy.md");
    let rules = imdsguard_core::access::AccessRules::parse(blocks[0]).expect("the rules example");
    let names: Vec<&str> = rules.rules().iter().map(|r| &*r.name).collect();
    assert_eq!(
        names,
        [
            "payments-api-arm",
            "payments-vault",
            "basics",
            "monitoring-instance",
            "debug",
            "ops-events"
        ]
    );
    let pods = PodIndex::parse(blocks[1]).expect("the pods example");
    assert_eq!(pods.len(), 1);
    assert_eq!(
        pods.get("10.244.1.5".parse().unwrap())
            .unwrap()
            .service_account,
        "api"
    );
}

/// Issue 7: `kubectl get pods -A -o json` with a completed pod and the running pod that
/// reuses its address. The pods file used to be refused ("address ... is also ...'s"),
/// so the proxy did not start; now the running pod is the caller, never the finished
/// one (which here had a token grant), and two live pods on one address are denied as
/// unknown.
#[tokio::test]
async fn a_completed_pod_and_its_addresses_new_owner() {
    let list = r#"{"apiVersion": "v1", "kind": "List", "items": [
      {"kind": "Pod", "metadata": {"name": "api-old", "namespace": "payments"},
       "spec": {"serviceAccountName": "api"},
       "status": {"phase": "Succeeded", "podIP": "127.0.0.3", "podIPs": [{"ip": "127.0.0.3"}]}},
      {"kind": "Pod", "metadata": {"name": "web-1", "namespace": "shop"},
       "spec": {"serviceAccountName": "web"},
       "status": {"phase": "Running", "podIP": "127.0.0.3", "podIPs": [{"ip": "127.0.0.3"}]}},
      {"kind": "Pod", "metadata": {"name": "a", "namespace": "monitoring"},
       "status": {"phase": "Running", "podIP": "127.0.0.4"}},
      {"kind": "Pod", "metadata": {"name": "b", "namespace": "monitoring"},
       "status": {"phase": "Running", "podIP": "127.0.0.4"}}
    ]}"#;
    let pods = PodIndex::parse(list).expect("the proxy takes the PodList");
    assert_eq!(pods.issues().len(), 1, "{:?}", pods.issues());
    let env = start_with(Faults::default(), |c| c.pods = pods).await;
    let kubelet = format!("&client_id={KUBELET_CLIENT_ID}");
    let r = env.get(SHOP_WEB, &token_target(ARM, &kubelet)).await;
    assert_eq!(r.denied_by(), RULE_DEFAULT_DENY);
    assert!(r.text().contains("shop/web-1"), "{}", r.text());
    assert_eq!(env.get(SHOP_WEB, "/metadata/versions").await.status, 200);
    let r = env.get(MONITORING, "/metadata/versions").await;
    assert_eq!(r.denied_by(), RULE_UNKNOWN_SOURCE);
    env.shutdown().await;
}
