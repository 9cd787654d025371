//! The proxy with `cloud: gcp` in front of the GCE metadata server emulator (loopback):
//! the bypass table (case, encodings, dot segments, legacy endpoints, query parameters,
//! `Metadata-Flavor` and `X-Forwarded-For` tricks, absolute-form and IPv4-mapped hosts,
//! recursive reads of the attributes), identity-token audiences, redaction of recursive
//! answers, and the headers that go upstream.

mod support;

use std::net::IpAddr;

use imdsguard_core::access::{AccessRules, PodIndex};
use imdsguard_emulator::gcp::{GcpConfig, GcpEmulator, GcpOptions};
use imdsguard_proxy::{Cloud, PodRate, Proxy, ProxyConfig, Upstream};
use support::*;

const GCP_RULES: &str = r#"
cloud: gcp
rules:
  - name: everyone-basics
    subjects: [{namespace: "*"}]
    paths: ["/", /computeMetadata/v1/instance/zone, /computeMetadata/v1/project/project-id]
  - name: payments-sa
    subjects: [{namespace: payments, serviceAccount: api}]
    paths:
      - /computeMetadata/v1/instance/service-accounts/default/token
      - /computeMetadata/v1/instance/service-accounts/default/identity
    audiences: [https://payments.example]
  - name: monitoring-instance
    subjects: [{namespace: monitoring}]
    paths: [/computeMetadata/v1/instance]
  - name: ops-everything
    subjects: [{namespace: ops}]
    paths: [/computeMetadata/v1]
    redact: []
"#;

const FLAVOR: (&str, &str) = ("Metadata-Flavor", "Google");

fn gcp_config(upstream: std::net::SocketAddr) -> ProxyConfig {
    assert!(upstream.ip().is_loopback());
    let mut c = ProxyConfig::for_cloud(
        Cloud::Gcp,
        "127.0.0.1:0".parse().unwrap(),
        Upstream::parse(&format!("http://{upstream}")).unwrap(),
    );
    c.rules = Some(AccessRules::parse(GCP_RULES).unwrap());
    c.pods = PodIndex::parse(PODS).unwrap();
    c.pod_rate = PodRate::unlimited();
    c
}

async fn start() -> (GcpEmulator, Proxy) {
    let emulator = GcpEmulator::start(
        GcpConfig::default_gke(),
        GcpOptions {
            seed: Some(12),
            ..GcpOptions::default()
        },
    )
    .await
    .expect("GCP emulator on loopback");
    let proxy = Proxy::start(gcp_config(emulator.local_addr()))
        .await
        .expect("proxy on loopback");
    (emulator, proxy)
}

#[derive(Debug)]
enum Want {
    /// 200, the body holding this.
    Ok(&'static str),
    /// imdsguard's 403 by this rule.
    Denied(&'static str),
    /// The server's own answer with this status (not imdsguard's).
    Service(u16),
}

/// From, target, headers, outcome.
type Row = (IpAddr, String, Vec<(&'static str, &'static str)>, Want);

#[tokio::test]
async fn gcp_bypass_table() {
    let (emulator, proxy) = start().await;
    let zone = "/computeMetadata/v1/instance/zone";
    let token = "/computeMetadata/v1/instance/service-accounts/default/token";
    let kube_env = "/computeMetadata/v1/instance/attributes/kube-env";
    let identity = "/computeMetadata/v1/instance/service-accounts/default/identity";
    let rows: Vec<Row> = vec![
        (
            SHOP_WEB,
            zone.into(),
            vec![FLAVOR],
            Want::Ok("us-central1-c"),
        ),
        // A directory without its `/`: the server's redirect to it, passed on.
        (
            MONITORING,
            "/computeMetadata/v1/instance/attributes".into(),
            vec![FLAVOR],
            Want::Service(301),
        ),
        // The root listing (client libraries' GCE check) is granted by `/` alone.
        (
            SHOP_WEB,
            "/".into(),
            vec![FLAVOR],
            Want::Ok("computeMetadata/"),
        ),
        (
            SHOP_WEB,
            "/computeMetadata/".into(),
            vec![FLAVOR],
            Want::Denied("default-deny"),
        ),
        (
            SHOP_WEB,
            "/computeMetadata/v1/".into(),
            vec![FLAVOR],
            Want::Denied("default-deny"),
        ),
        // Metadata-Flavor: the name in any case, the value exactly `Google`, once.
        (
            SHOP_WEB,
            zone.into(),
            vec![("metadata-flavor", "Google")],
            Want::Ok("us-central1-c"),
        ),
        (SHOP_WEB, zone.into(), vec![], Want::Service(403)),
        (
            SHOP_WEB,
            zone.into(),
            vec![("Metadata-Flavor", "google")],
            Want::Service(403),
        ),
        (
            SHOP_WEB,
            zone.into(),
            vec![FLAVOR, FLAVOR],
            Want::Denied("canonical-form"),
        ),
        (
            SHOP_WEB,
            zone.into(),
            vec![FLAVOR, ("Connection", "Metadata-Flavor")],
            Want::Denied("canonical-form"),
        ),
        (
            SHOP_WEB,
            zone.into(),
            vec![FLAVOR, ("X-Forwarded-For", "10.0.0.1")],
            Want::Service(403),
        ),
        // The token: only the rule naming it.
        (PAYMENTS_API, token.into(), vec![FLAVOR], Want::Ok("ya29.")),
        (
            PAYMENTS_API,
            format!("{token}?scopes=https://www.googleapis.com/auth/cloud-platform"),
            vec![FLAVOR],
            Want::Ok("ya29."),
        ),
        (
            MONITORING,
            token.into(),
            vec![FLAVOR],
            Want::Denied("monitoring-instance"),
        ),
        (
            OPS,
            token.into(),
            vec![FLAVOR],
            Want::Denied("ops-everything"),
        ),
        (
            SHOP_WEB,
            token.into(),
            vec![FLAVOR],
            Want::Denied("default-deny"),
        ),
        // Encodings and dot segments.
        (
            MONITORING,
            token.replace("token", "%74oken"),
            vec![FLAVOR],
            Want::Denied("monitoring-instance"),
        ),
        (
            PAYMENTS_API,
            token.replace("token", "%74oken"),
            vec![FLAVOR],
            Want::Ok("ya29."),
        ),
        (
            MONITORING,
            token.replace("/default/", "/default%2f"),
            vec![FLAVOR],
            Want::Denied("canonical-form"),
        ),
        (
            MONITORING,
            token.replace("/default/", "/default/../default/"),
            vec![FLAVOR],
            Want::Denied("canonical-form"),
        ),
        (
            MONITORING,
            token.replace("/default/", "/default/%2e/"),
            vec![FLAVOR],
            Want::Denied("canonical-form"),
        ),
        (
            MONITORING,
            token.replace("/default/", "/default//"),
            vec![FLAVOR],
            Want::Denied("canonical-form"),
        ),
        (
            MONITORING,
            token.replace("/default/", "/default%252f"),
            vec![FLAVOR],
            Want::Denied("canonical-form"),
        ),
        // Case: another path (the server refuses a case variant of a secret outright).
        (
            MONITORING,
            kube_env.replace("kube-env", "KUBE-ENV"),
            vec![FLAVOR],
            Want::Service(404),
        ),
        (
            SHOP_WEB,
            zone.replace("instance", "Instance"),
            vec![FLAVOR],
            Want::Service(404),
        ),
        (
            PAYMENTS_API,
            token.replace("token", "Token"),
            vec![FLAVOR],
            Want::Service(404),
        ),
        // kube-env and the recursive reads of its ancestors.
        (
            MONITORING,
            kube_env.into(),
            vec![FLAVOR],
            Want::Denied("monitoring-instance"),
        ),
        (
            MONITORING,
            kube_env.replace("kube-env", "kube%2denv"),
            vec![FLAVOR],
            Want::Denied("monitoring-instance"),
        ),
        (
            OPS,
            kube_env.into(),
            vec![FLAVOR],
            Want::Denied("ops-everything"),
        ),
        (
            MONITORING,
            "/computeMetadata/v1/instance/attributes/cluster-name".into(),
            vec![FLAVOR],
            Want::Ok("imdsguard-gke"),
        ),
        (
            MONITORING,
            "/computeMetadata/v1/instance/?recursive=true".into(),
            vec![FLAVOR],
            Want::Ok("cluster-name"),
        ),
        (
            MONITORING,
            "/computeMetadata/v1/instance/attributes/?recursive=TRUE".into(),
            vec![FLAVOR],
            Want::Ok("cluster-name"),
        ),
        (
            MONITORING,
            "/computeMetadata/v1/instance/?recursive=true&alt=text".into(),
            vec![FLAVOR],
            Want::Denied("monitoring-instance"),
        ),
        (
            OPS,
            "/computeMetadata/v1/?recursive=true".into(),
            vec![FLAVOR],
            Want::Denied("ops-everything"),
        ),
        (
            OPS,
            "/computeMetadata/v1/project/?recursive=true".into(),
            vec![FLAVOR],
            Want::Denied("ops-everything"),
        ),
        (
            OPS,
            "/computeMetadata/v1/instance/network-interfaces/?recursive=true&alt=text".into(),
            vec![FLAVOR],
            Want::Ok("10.128.0.17"),
        ),
        // The legacy endpoints are gone (the server's 404), whoever asks.
        (
            OPS,
            "/computeMetadata/v1beta1/instance/attributes/kube-env".into(),
            vec![],
            Want::Service(404),
        ),
        (
            OPS,
            "/0.1/meta-data/attributes/kube-env".into(),
            vec![],
            Want::Service(404),
        ),
        // Query parameters: the server's own, once, with their values.
        (
            SHOP_WEB,
            format!("{zone}?foo=bar"),
            vec![FLAVOR],
            Want::Denied("canonical-form"),
        ),
        (
            SHOP_WEB,
            format!("{zone}?nonrecursive=true"),
            vec![FLAVOR],
            Want::Denied("canonical-form"),
        ),
        (
            MONITORING,
            "/computeMetadata/v1/instance/?recursive=true&recursive=false".into(),
            vec![FLAVOR],
            Want::Denied("canonical-form"),
        ),
        (
            MONITORING,
            "/computeMetadata/v1/instance/?recursive=true&Recursive=false".into(),
            vec![FLAVOR],
            Want::Denied("canonical-form"),
        ),
        (
            MONITORING,
            "/computeMetadata/v1/instance/?recursive=1".into(),
            vec![FLAVOR],
            Want::Denied("canonical-form"),
        ),
        (
            SHOP_WEB,
            format!("{zone}?audience=x"),
            vec![FLAVOR],
            Want::Denied("canonical-form"),
        ),
        (
            SHOP_WEB,
            format!("{zone}?wait_for_change=true&timeout_sec=1"),
            vec![FLAVOR],
            Want::Ok("us-central1-c"),
        ),
        // Identity tokens: the audiences allowed only.
        (
            PAYMENTS_API,
            format!("{identity}?audience=https://payments.example"),
            vec![FLAVOR],
            Want::Ok("eyJ"),
        ),
        (
            PAYMENTS_API,
            format!("{identity}?audience=https://evil.example"),
            vec![FLAVOR],
            Want::Denied("payments-sa"),
        ),
        (
            PAYMENTS_API,
            identity.into(),
            vec![FLAVOR],
            Want::Service(400),
        ),
        // Absolute-form: the metadata host names and addresses, nothing else.
        (
            SHOP_WEB,
            format!("http://metadata.google.internal{zone}"),
            vec![FLAVOR],
            Want::Ok("us-central1-c"),
        ),
        (
            SHOP_WEB,
            format!("http://metadata{zone}"),
            vec![FLAVOR],
            Want::Ok("us-central1-c"),
        ),
        (
            SHOP_WEB,
            format!("http://[::ffff:a9fe:a9fe]{zone}"),
            vec![FLAVOR],
            Want::Ok("us-central1-c"),
        ),
        (
            SHOP_WEB,
            format!("http://[::ffff:169.254.169.254]{token}"),
            vec![FLAVOR],
            Want::Denied("default-deny"),
        ),
        (
            SHOP_WEB,
            format!("http://evil.example{zone}"),
            vec![FLAVOR],
            Want::Denied("canonical-form"),
        ),
        (
            SHOP_WEB,
            format!("http://metadata.google.internal.evil.example{zone}"),
            vec![FLAVOR],
            Want::Denied("canonical-form"),
        ),
        (
            UNKNOWN,
            zone.into(),
            vec![FLAVOR],
            Want::Denied("unknown-source"),
        ),
    ];
    for (from, target, headers, want) in rows {
        let r = send_from(from, proxy.local_addr(), "GET", &target, &headers, b"")
            .await
            .expect("an answer");
        let what = format!("{from} {target} {headers:?}: {} {}", r.status, r.text());
        match want {
            Want::Ok(has) => {
                assert_eq!(r.status, 200, "{what}");
                assert!(r.text().contains(has), "{what}");
                assert!(!r.text().contains("KUBELET_KEY"), "{what}");
            }
            Want::Denied(rule) => {
                assert_eq!(r.status, 403, "{what}");
                assert_eq!(r.denied_by(), rule, "{what}");
            }
            Want::Service(status) => {
                assert_eq!(r.status, status, "{what}");
                assert!(!r.text().contains("imdsguard"), "{what}");
                if status == 301 {
                    assert_eq!(
                        r.header("location"),
                        Some("/computeMetadata/v1/instance/attributes/"),
                        "{what}"
                    );
                }
            }
        }
    }
    proxy.shutdown().await;
    emulator.shutdown().await;
}

#[tokio::test]
async fn recursive_answers_lose_the_secret_attributes() {
    let (emulator, proxy) = start().await;
    let target = "/computeMetadata/v1/instance/?recursive=true";
    let direct = send_from(
        UNKNOWN,
        emulator.local_addr(),
        "GET",
        target,
        &[FLAVOR],
        b"",
    )
    .await
    .unwrap();
    assert!(
        direct.text().contains("KUBELET_KEY"),
        "the emulator's tree has kube-env"
    );
    let r = send_from(
        MONITORING,
        proxy.local_addr(),
        "GET",
        target,
        &[FLAVOR],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json();
    let attrs = &doc["attributes"];
    assert_eq!(attrs["cluster-name"], "imdsguard-gke", "{doc}");
    assert!(attrs.get("kube-env").is_none(), "{doc}");
    assert!(!r.text().contains("KUBELET"), "{doc}");
    assert_eq!(r.header("metadata-flavor"), Some("Google"));
    // Everything else is the server's answer.
    let mut want = direct.json();
    want["attributes"]
        .as_object_mut()
        .unwrap()
        .remove("kube-env");
    assert_eq!(doc, want);
    // The project's SSH keys likewise.
    let r = send_from(
        MONITORING,
        proxy.local_addr(),
        "GET",
        "/computeMetadata/v1/instance/attributes/?recursive=true",
        &[FLAVOR],
        b"",
    )
    .await
    .unwrap();
    assert!(r.json().get("kube-env").is_none(), "{}", r.text());
    proxy.shutdown().await;
    emulator.shutdown().await;
}

#[tokio::test]
async fn only_the_clouds_headers_go_upstream() {
    let echo = echo_upstream().await;
    let proxy = Proxy::start(gcp_config(echo.addr)).await.unwrap();
    let r = send_from(
        PAYMENTS_API,
        proxy.local_addr(),
        "GET",
        "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/identity?format=full&audience=https://payments.example",
        &[
            ("metadata-flavor", "Google"),
            ("Metadata", "true"),
            ("Authorization", "Bearer x"),
        ],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert_eq!(
        seen["(target)"],
        "/computeMetadata/v1/instance/service-accounts/default/identity?audience=https%3A%2F%2Fpayments.example&format=full"
    );
    assert_eq!(seen["metadata-flavor"], "Google");
    for absent in ["metadata", "authorization", "x-forwarded-for"] {
        assert!(seen.get(absent).is_none(), "{absent}: {seen}");
    }
    proxy.shutdown().await;
}

async fn start_with(tweak: impl FnOnce(&mut ProxyConfig)) -> (GcpEmulator, Proxy) {
    let emulator = GcpEmulator::start(
        GcpConfig::default_gke(),
        GcpOptions {
            seed: Some(12),
            ..GcpOptions::default()
        },
    )
    .await
    .expect("GCP emulator on loopback");
    let mut config = gcp_config(emulator.local_addr());
    tweak(&mut config);
    let proxy = Proxy::start(config).await.expect("proxy on loopback");
    (emulator, proxy)
}

/// Over its rate a pod gets the server's own 429 (its line of text, with
/// `Metadata-Flavor: Google`) and `Retry-After`; tokens count in the identity class, and
/// one pod's rate is not another's.
#[tokio::test]
async fn over_its_rate_a_pod_gets_the_servers_429() {
    let records = Records::default();
    let sink = records.clone();
    let (emulator, proxy) = start_with(|c| {
        c.decisions = Some(std::sync::Arc::new(sink));
        c.pod_rate = PodRate {
            general: 0.5,
            identity: 0.5,
            burst: 1,
        };
    })
    .await;
    let get = |from, target: &'static str| {
        let addr = proxy.local_addr();
        async move {
            send_from(from, addr, "GET", target, &[FLAVOR], b"")
                .await
                .unwrap()
        }
    };
    let zone = "/computeMetadata/v1/instance/zone";
    let token = "/computeMetadata/v1/instance/service-accounts/default/token";
    assert_eq!(get(SHOP_WEB, zone).await.status, 200);
    let r = get(SHOP_WEB, zone).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.text(), "Too many requests\n");
    assert_eq!(r.header("metadata-flavor"), Some("Google"));
    let wait: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    let last = records.last();
    assert_eq!(last["decision"], "throttled", "{last}");
    // Another pod's budget is its own.
    assert_eq!(get(PAYMENTS_API, zone).await.status, 200);
    // The token is in the identity class: a budget of its own, then 429 too.
    let r = get(PAYMENTS_API, token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(PAYMENTS_API, token).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(!r.text().contains("access_token"), "{}", r.text());
    proxy.shutdown().await;
    emulator.shutdown().await;
}

/// A dry run denies nothing the rules decide: a denied token read and an ambiguous
/// target are forwarded (the second as received) and recorded `would-deny`; an allowed
/// recursive read is still redacted, and the server's own header check still answers.
#[tokio::test]
async fn a_dry_run_records_would_deny_and_forwards() {
    let records = Records::default();
    let sink = records.clone();
    let (emulator, proxy) = start_with(|c| {
        c.dry_run = true;
        c.decisions = Some(std::sync::Arc::new(sink));
    })
    .await;
    let send = |from, target: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let addr = proxy.local_addr();
        async move {
            send_from(from, addr, "GET", target, headers, b"")
                .await
                .unwrap()
        }
    };
    let token = "/computeMetadata/v1/instance/service-accounts/default/token";
    let r = send(SHOP_WEB, token, &[FLAVOR]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["access_token"].is_string(), "forwarded untouched");
    let rec = records.one();
    assert_eq!(
        (rec["decision"].as_str(), rec["rule"].as_str()),
        (Some("would-deny"), Some("default-deny")),
        "{rec}"
    );
    assert!(
        !rec.to_string()
            .contains(r.json()["access_token"].as_str().unwrap()),
        "{rec}"
    );
    // Forwarded as received: the server resolves the dot segment itself.
    let r = send(SHOP_WEB, "/computeMetadata/v1/instance/./zone", &[FLAVOR]).await;
    assert_ne!(r.status, 403, "{}", r.text());
    let rec = records.one();
    assert_eq!(
        (rec["decision"].as_str(), rec["rule"].as_str()),
        (Some("would-deny"), Some("canonical-form")),
        "{rec}"
    );
    // Allowed: redacted as always.
    let r = send(
        MONITORING,
        "/computeMetadata/v1/instance/?recursive=true",
        &[FLAVOR],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json()["attributes"].get("kube-env").is_none(),
        "{}",
        r.text()
    );
    assert_eq!(records.one()["decision"], "allow");
    // The server's header check is the proxy's, and still answers.
    let r = send(SHOP_WEB, "/computeMetadata/v1/instance/zone", &[]).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(records.one()["decision"], "invalid");
    proxy.shutdown().await;
    emulator.shutdown().await;
}

/// The `cloud: gcp` example of docs/proxy.md parses, for its cloud.
#[test]
fn the_documented_gcp_example_parses() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/proxy.md"))
        .expect("docs/proxy.md");
    let block = doc
        .split("```yaml\n")
        .map(|b| b.split("```").next().unwrap())
        .find(|b| b.starts_with("cloud: gcp\n"))
        .expect("a cloud: gcp example");
    let rules = AccessRules::parse(block).expect("the example parses");
    assert_eq!(rules.cloud(), Cloud::Gcp);
    let names: Vec<&str> = rules.rules().iter().map(|r| &*r.name).collect();
    assert_eq!(
        names,
        ["everyone-basics", "payments-token", "monitoring-instance"]
    );
}
