//! The GCE metadata server emulator, black-box: started on 127.0.0.1:0 (and [::1]:0),
//! raw HTTP/1.1 requests, one table row per behaviour (docs/emulator-gcp.md lists them
//! with their documentation).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Reply, claims, send};
use imdsguard_emulator::gcp::{GcpConfig, GcpEmulator, GcpOptions};
use serde_json::{Value, json};

const F: (&str, &str) = ("Metadata-Flavor", "Google");
const V1: &str = "/computeMetadata/v1";
const EMAIL: &str = "123456789012-compute@developer.gserviceaccount.com";

fn options(seed: u64) -> GcpOptions {
    let o = GcpOptions {
        seed: Some(seed),
        max_wait: Duration::from_millis(300),
        ..GcpOptions::default()
    };
    assert!(o.listen.iter().all(|a| a.ip().is_loopback()));
    o
}

async fn start(seed: u64) -> GcpEmulator {
    GcpEmulator::start(GcpConfig::default_gke(), options(seed))
        .await
        .expect("the emulator starts on loopback")
}

async fn req(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
    send(addr, method, target, headers, b"")
        .await
        .expect("an answer")
}

/// What a row expects of the body.
enum Body {
    /// Exactly this text.
    Is(&'static str),
    /// Contains each of these.
    Has(&'static [&'static str]),
    /// Contains none of these.
    Lacks(&'static [&'static str]),
    /// JSON equal to this.
    Json(Value),
    /// JSON whose value at each pointer is this.
    At(Vec<(&'static str, Value)>),
    /// Any body.
    Any,
}

struct Row {
    what: &'static str,
    method: &'static str,
    target: String,
    headers: Vec<(&'static str, &'static str)>,
    status: u16,
    content_type: Option<&'static str>,
    body: Body,
}

fn row(what: &'static str, target: impl Into<String>, status: u16, body: Body) -> Row {
    Row {
        what,
        method: "GET",
        target: target.into(),
        headers: vec![F],
        status,
        content_type: None,
        body,
    }
}

impl Row {
    fn headers(mut self, h: &[(&'static str, &'static str)]) -> Row {
        self.headers = h.to_vec();
        self
    }
    fn method(mut self, m: &'static str) -> Row {
        self.method = m;
        self
    }
    fn ct(mut self, c: &'static str) -> Row {
        self.content_type = Some(c);
        self
    }
}

const TEXT: &str = "application/text";
const JSON: &str = "application/json";
const HTML: &str = "text/html; charset=UTF-8";

fn table() -> Vec<Row> {
    let v1 = |p: &str| format!("{V1}/{p}");
    vec![
        // Discovery and the header.
        row(
            "discovery needs no header",
            "/",
            200,
            Body::Is("computeMetadata/\n"),
        )
        .headers(&[])
        .ct(TEXT),
        row("versions", "/computeMetadata/", 200, Body::Is("v1/\n")),
        row(
            "v1 root listing",
            v1(""),
            200,
            Body::Is("instance/\nproject/\n"),
        )
        .ct(TEXT),
        row(
            "no Metadata-Flavor: 403 with Google's page",
            v1("instance/zone"),
            403,
            Body::Has(&[
                "Error 403 (Forbidden)",
                "<code>/computeMetadata/v1/instance/zone</code>",
                "Missing Metadata-Flavor:Google header.",
            ]),
        )
        .headers(&[])
        .ct(HTML),
        row(
            "lower-case flavor value",
            v1("instance/zone"),
            403,
            Body::Any,
        )
        .headers(&[("Metadata-Flavor", "google")]),
        row("flavor given twice", v1("instance/zone"), 403, Body::Any)
            .headers(&[F, ("metadata-flavor", "Google")]),
        row("the old header alone", v1("instance/zone"), 403, Body::Any)
            .headers(&[("X-Google-Metadata-Request", "True")]),
        row(
            "lower-case header name is fine",
            v1("instance/zone"),
            200,
            Body::Is("projects/123456789012/zones/us-central1-c"),
        )
        .headers(&[("metadata-flavor", "Google")]),
        row(
            "X-Forwarded-For refused",
            v1("instance/zone"),
            403,
            Body::Has(&["X-Forwarded-For"]),
        )
        .headers(&[F, ("X-Forwarded-For", "10.0.0.7")])
        .ct(HTML),
        row(
            "POST refused",
            v1("instance/zone"),
            405,
            Body::Has(&["<code>POST</code>"]),
        )
        .method("POST")
        .ct(HTML),
        // Values.
        row(
            "project id",
            v1("project/project-id"),
            200,
            Body::Is("imdsguard-emulated"),
        )
        .ct(TEXT),
        row(
            "numeric project id",
            v1("project/numeric-project-id"),
            200,
            Body::Is("123456789012"),
        ),
        row(
            "instance name",
            v1("instance/name"),
            200,
            Body::Is("gke-imdsguard-gke-default-pool-5f3c2a1b-x7k2"),
        ),
        row(
            "machine type",
            v1("instance/machine-type"),
            200,
            Body::Is("projects/123456789012/machineTypes/e2-standard-4"),
        ),
        row(
            "a number with alt=json",
            v1("instance/id?alt=json"),
            200,
            Body::Json(json!(4_520_316_790_173_245_061u64)),
        )
        .ct(JSON),
        row(
            "a string with alt=json",
            v1("instance/hostname?alt=json"),
            200,
            Body::Json(json!(
                "gke-imdsguard-gke-default-pool-5f3c2a1b-x7k2.us-central1-c.c.imdsguard-emulated.internal"
            )),
        ),
        row(
            "tags are JSON by default",
            v1("instance/tags"),
            200,
            Body::Json(json!(["gke-imdsguard-gke-5c0ffee0-node"])),
        )
        .ct(JSON),
        row(
            "tags with alt=text",
            v1("instance/tags?alt=text"),
            200,
            Body::Is("gke-imdsguard-gke-5c0ffee0-node\n"),
        )
        .ct(TEXT),
        row(
            "network interface ip",
            v1("instance/network-interfaces/0/ip"),
            200,
            Body::Is("10.128.0.17"),
        ),
        // Listings.
        row(
            "instance listing",
            v1("instance/"),
            200,
            Body::Has(&[
                "attributes/\n",
                "hostname\n",
                "network-interfaces/\n",
                "service-accounts/\n",
                "zone\n",
            ]),
        )
        .ct(TEXT),
        row(
            "attributes listing names kube-env, no value",
            v1("instance/attributes/"),
            200,
            Body::Has(&["cluster-name\n", "kube-env\n"]),
        ),
        row(
            "attributes listing holds no secret",
            v1("instance/attributes/"),
            200,
            Body::Lacks(&["KUBELET", "FAKE"]),
        ),
        row(
            "a listing with alt=json",
            v1("project/?alt=json"),
            200,
            Body::Json(json!(["attributes/", "numeric-project-id", "project-id"])),
        )
        .ct(JSON),
        row(
            "a directory without its slash is sent to the listing",
            v1("instance/attributes"),
            301,
            Body::Any,
        ),
        // Attributes.
        row(
            "cluster-name",
            v1("instance/attributes/cluster-name"),
            200,
            Body::Is("imdsguard-gke"),
        ),
        row(
            "kube-env with fake kubelet credentials",
            v1("instance/attributes/kube-env"),
            200,
            Body::Has(&[
                "KUBELET_CERT: ",
                "KUBELET_KEY: ",
                "CLUSTER_NAME: imdsguard-gke",
            ]),
        )
        .ct(TEXT),
        row(
            "kube-env's placeholders are filled",
            v1("instance/attributes/kube-env"),
            200,
            Body::Lacks(&["{{fake-secret}}"]),
        ),
        row(
            "project attribute",
            v1("project/attributes/enable-oslogin"),
            200,
            Body::Is("TRUE"),
        ),
        row(
            "missing attribute",
            v1("instance/attributes/nope"),
            404,
            Body::Has(&["was not found on this server"]),
        )
        .ct(HTML),
        row("a value with a slash", v1("instance/zone/"), 404, Body::Any),
        // Recursive reads.
        row(
            "recursive instance: camelCase keys, attributes verbatim",
            v1("instance/?recursive=true"),
            200,
            Body::At(vec![
                (
                    "/machineType",
                    json!("projects/123456789012/machineTypes/e2-standard-4"),
                ),
                ("/networkInterfaces/0/ip", json!("10.128.0.17")),
                ("/networkInterfaces/0/ipAliases", json!(["10.4.1.0/24"])),
                ("/attributes/cluster-name", json!("imdsguard-gke")),
                ("/serviceAccounts/default/email", json!(EMAIL)),
                ("/scheduling/onHostMaintenance", json!("MIGRATE")),
                ("/id", json!(4_520_316_790_173_245_061u64)),
            ]),
        )
        .ct(JSON),
        row(
            "recursive instance holds kube-env",
            v1("instance/?recursive=true"),
            200,
            Body::Has(&["\"kube-env\":", "KUBELET_KEY: "]),
        ),
        row(
            "recursive without the slash",
            v1("instance/attributes?recursive=true"),
            200,
            Body::At(vec![("/cluster-name", json!("imdsguard-gke"))]),
        ),
        row(
            "recursive project",
            v1("project/?recursive=true"),
            200,
            Body::At(vec![
                ("/projectId", json!("imdsguard-emulated")),
                ("/numericProjectId", json!(123_456_789_012u64)),
                ("/attributes/enable-oslogin", json!("TRUE")),
            ]),
        ),
        row(
            "recursive root",
            v1("?recursive=true"),
            200,
            Body::At(vec![
                ("/project/projectId", json!("imdsguard-emulated")),
                (
                    "/instance/zone",
                    json!("projects/123456789012/zones/us-central1-c"),
                ),
            ]),
        ),
        row(
            "recursive in text",
            v1("instance/?recursive=true&alt=text"),
            200,
            Body::Has(&[
                "attributes/cluster-name imdsguard-gke\n",
                "network-interfaces/0/ip 10.128.0.17\n",
                "zone projects/123456789012/zones/us-central1-c\n",
            ]),
        )
        .ct(TEXT),
        // Service accounts.
        row(
            "service accounts listing",
            v1("instance/service-accounts/"),
            200,
            Body::Is("123456789012-compute@developer.gserviceaccount.com/\ndefault/\n"),
        ),
        row(
            "an account's listing",
            v1("instance/service-accounts/default/"),
            200,
            Body::Is("aliases\nemail\nidentity\nscopes\ntoken\n"),
        ),
        row(
            "recursive service accounts: no token",
            v1("instance/service-accounts/?recursive=true"),
            200,
            Body::Json(json!({
                "default": {"aliases": ["default"], "email": EMAIL, "scopes": [
                    "https://www.googleapis.com/auth/devstorage.read_only",
                    "https://www.googleapis.com/auth/logging.write",
                    "https://www.googleapis.com/auth/monitoring",
                    "https://www.googleapis.com/auth/service.management.readonly",
                    "https://www.googleapis.com/auth/servicecontrol",
                    "https://www.googleapis.com/auth/trace.append"]},
                EMAIL: {"aliases": ["default"], "email": EMAIL, "scopes": [
                    "https://www.googleapis.com/auth/devstorage.read_only",
                    "https://www.googleapis.com/auth/logging.write",
                    "https://www.googleapis.com/auth/monitoring",
                    "https://www.googleapis.com/auth/service.management.readonly",
                    "https://www.googleapis.com/auth/servicecontrol",
                    "https://www.googleapis.com/auth/trace.append"]},
            })),
        ),
        row(
            "email",
            v1("instance/service-accounts/default/email"),
            200,
            Body::Is(EMAIL),
        ),
        row(
            "aliases",
            v1(&format!("instance/service-accounts/{EMAIL}/aliases")),
            200,
            Body::Is("default\n"),
        ),
        row(
            "scopes, one a line",
            v1("instance/service-accounts/default/scopes"),
            200,
            Body::Has(&["https://www.googleapis.com/auth/logging.write\n"]),
        )
        .ct(TEXT),
        row(
            "token",
            v1("instance/service-accounts/default/token"),
            200,
            Body::At(vec![
                ("/expires_in", json!(3599)),
                ("/token_type", json!("Bearer")),
            ]),
        )
        .ct(JSON),
        row(
            "token by email with scopes",
            v1(&format!(
                "instance/service-accounts/{EMAIL}/token?scopes=https://www.googleapis.com/auth/cloud-platform"
            )),
            200,
            Body::At(vec![("/token_type", json!("Bearer"))]),
        ),
        row(
            "token of an unknown account",
            v1("instance/service-accounts/nobody@p.iam.gserviceaccount.com/token"),
            404,
            Body::Any,
        ),
        row(
            "identity without audience",
            v1("instance/service-accounts/default/identity"),
            400,
            Body::Is("non-empty audience parameter required\n"),
        ),
        row(
            "identity with an empty audience",
            v1("instance/service-accounts/default/identity?audience="),
            400,
            Body::Any,
        ),
        // Legacy endpoints, case, parameters.
        row(
            "v0.1 is gone",
            "/0.1/meta-data/attributes/kube-env",
            404,
            Body::Has(&["was not found on this server"]),
        )
        .headers(&[]),
        row(
            "v1beta1 is gone",
            "/computeMetadata/v1beta1/instance/service-accounts/default/token",
            404,
            Body::Any,
        )
        .headers(&[]),
        row(
            "v1beta1 is gone with the header too",
            "/computeMetadata/v1beta1/",
            404,
            Body::Any,
        ),
        row(
            "paths are case-sensitive (version)",
            "/computeMetadata/V1/instance/zone",
            404,
            Body::Any,
        ),
        row(
            "paths are case-sensitive (secret)",
            v1("instance/attributes/KUBE-ENV"),
            404,
            Body::Any,
        ),
        row(
            "paths are case-sensitive (value)",
            v1("instance/Zone"),
            404,
            Body::Any,
        ),
        row(
            "an encoded slash is not a separator",
            v1("instance/attributes%2Fkube-env"),
            404,
            Body::Any,
        ),
        row(
            "percent-encoded letters are decoded",
            v1("instance/attributes/cluster-%6Eame"),
            200,
            Body::Is("imdsguard-gke"),
        ),
        row(
            "unknown parameters are ignored",
            v1("instance/attributes/?nonrecursive=true&recursive%3Dtrue"),
            200,
            Body::Lacks(&["KUBELET"]),
        ),
        row(
            "recursive=1 refused",
            v1("instance/?recursive=1"),
            400,
            Body::Any,
        ),
        row(
            "alt=xml refused",
            v1("instance/zone?alt=xml"),
            400,
            Body::Any,
        ),
        row(
            "repeated recursive refused",
            v1("instance/?recursive=false&recursive=true"),
            400,
            Body::Any,
        ),
        row(
            "wait_for_change on a listing needs recursive",
            v1("instance/attributes/?wait_for_change=true"),
            400,
            Body::Any,
        ),
        row(
            "wait_for_change with another etag answers at once",
            v1("instance/attributes/cluster-name?wait_for_change=true&last_etag=0000000000000000"),
            200,
            Body::Is("imdsguard-gke"),
        ),
    ]
}

#[tokio::test]
async fn every_behaviour_in_one_table() {
    let e = start(42).await;
    let a = e.local_addr();
    let mut failures = Vec::new();
    for r in table() {
        let got = req(a, r.method, &r.target, &r.headers).await;
        let mut wrong = Vec::new();
        if got.status != r.status {
            wrong.push(format!("status {} (want {})", got.status, r.status));
        }
        if got.header("Metadata-Flavor") != Some("Google") {
            wrong.push("no Metadata-Flavor: Google on the answer".into());
        }
        if got.header("Server") != Some("Metadata Server for VM") {
            wrong.push("no Server header".into());
        }
        if let Some(ct) = r.content_type
            && got.header("Content-Type") != Some(ct)
        {
            wrong.push(format!(
                "content type {:?} (want {ct})",
                got.header("Content-Type")
            ));
        }
        if got.status == 200 && got.header("ETag").is_none_or(|t| t.len() != 16) {
            wrong.push("a 200 without a 16-digit ETag".into());
        }
        let text = String::from_utf8_lossy(&got.body).into_owned();
        match &r.body {
            Body::Is(want) if text != *want => wrong.push(format!("body {text:?}, want {want:?}")),
            Body::Has(parts) => {
                for p in *parts {
                    if !text.contains(p) {
                        wrong.push(format!("body lacks {p:?}"));
                    }
                }
            }
            Body::Lacks(parts) => {
                for p in *parts {
                    if text.contains(p) {
                        wrong.push(format!("body holds {p:?}"));
                    }
                }
            }
            Body::Json(want) => match serde_json::from_str::<Value>(&text) {
                Ok(v) if v == *want => {}
                _ => wrong.push(format!("body {text:?}, want {want}")),
            },
            Body::At(pointers) => match serde_json::from_str::<Value>(&text) {
                Ok(v) => {
                    for (p, want) in pointers {
                        if v.pointer(p) != Some(want) {
                            wrong.push(format!("{p} is {:?}, want {want}", v.pointer(p)));
                        }
                    }
                }
                Err(_) => wrong.push("body is not JSON".into()),
            },
            _ => {}
        }
        if !wrong.is_empty() {
            // A token row's body holds a (fake) token: the status says enough.
            failures.push(format!(
                "{} ({} {}): {}",
                r.what,
                r.method,
                r.target,
                wrong.join("; ")
            ));
        }
    }
    e.shutdown().await;
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn redirect_keeps_the_query_and_adds_the_slash() {
    let e = start(1).await;
    let r = req(
        e.local_addr(),
        "GET",
        &format!("{V1}/instance/attributes?alt=json"),
        &[F],
    )
    .await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("Location"),
        Some("/computeMetadata/v1/instance/attributes/?alt=json")
    );
    e.shutdown().await;
}

#[tokio::test]
async fn tokens_are_fake_random_and_repeat_per_seed() {
    let token_path = format!("{V1}/instance/service-accounts/default/token");
    let first_token = |seed| {
        let token_path = token_path.clone();
        async move {
            let e = start(seed).await;
            let r = req(e.local_addr(), "GET", &token_path, &[F]).await;
            assert_eq!(r.status, 200);
            let t = r.json()["access_token"].as_str().unwrap().to_string();
            let kube_env = req(
                e.local_addr(),
                "GET",
                &format!("{V1}/instance/attributes/kube-env"),
                &[F],
            )
            .await;
            e.shutdown().await;
            (t, kube_env.text().to_string())
        }
    };
    let (a, env_a) = first_token(5).await;
    let (b, env_b) = first_token(5).await;
    let (c, env_c) = first_token(6).await;
    assert!(a.starts_with("ya29."), "an access token's prefix");
    assert!(a.contains("fake"));
    assert!(
        a == b && env_a == env_b,
        "the same seed gives the same secrets"
    );
    assert!(a != c && env_a != env_c, "another seed other secrets");
    // Two tokens of one emulator differ.
    let e = start(5).await;
    let one = req(e.local_addr(), "GET", &token_path, &[F]).await.json();
    let two = req(e.local_addr(), "GET", &token_path, &[F]).await.json();
    assert_ne!(one["access_token"], two["access_token"]);
    e.shutdown().await;
}

#[tokio::test]
async fn identity_tokens_are_jwts_for_the_audience() {
    let e = start(3).await;
    let a = e.local_addr();
    let id = format!("{V1}/instance/service-accounts/default/identity");
    let r = req(
        a,
        "GET",
        &format!("{id}?audience=https%3A%2F%2Fapi.example.com"),
        &[F],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some(TEXT));
    let c = claims(r.text());
    assert_eq!(c["aud"], "https://api.example.com");
    assert_eq!(c["iss"], "https://accounts.google.com");
    assert_eq!(c["email"], EMAIL);
    assert_eq!(c["azp"], "104857600012345678901");
    assert_eq!(c["sub"], "104857600012345678901");
    assert_eq!(c["email_verified"], true);
    assert!(c["exp"].as_u64().unwrap() > c["iat"].as_u64().unwrap());
    assert!(c.get("google").is_none(), "standard format");
    let r = req(
        a,
        "GET",
        &format!("{id}?audience=x&format=full&licenses=TRUE"),
        &[F],
    )
    .await;
    let c = claims(r.text());
    let engine = &c["google"]["compute_engine"];
    assert_eq!(engine["project_id"], "imdsguard-emulated");
    assert_eq!(engine["project_number"], 123_456_789_012u64);
    assert_eq!(engine["zone"], "us-central1-c");
    assert_eq!(
        engine["instance_name"],
        "gke-imdsguard-gke-default-pool-5f3c2a1b-x7k2"
    );
    assert!(engine["license_id"].is_array());
    e.shutdown().await;
}

#[tokio::test]
async fn wait_for_change_is_answered_within_the_cap() {
    // A 1 s cap: long enough to tell a wait from an immediate answer on a loaded machine.
    let o = GcpOptions {
        max_wait: Duration::from_secs(1),
        ..options(4)
    };
    let e = GcpEmulator::start(GcpConfig::default_gke(), o)
        .await
        .unwrap();
    let a = e.local_addr();
    let value = format!("{V1}/instance/attributes/cluster-name");
    let plain = req(a, "GET", &value, &[F]).await;
    let etag = plain.header("ETag").unwrap().to_string();

    let timed = |target: String| async move {
        let t = Instant::now();
        let r = req(a, "GET", &target, &[F]).await;
        (r, t.elapsed())
    };
    // Unchanged (no last_etag, or the current one): waits, at most the 1 s cap.
    for target in [
        format!("{value}?wait_for_change=true"),
        format!("{value}?wait_for_change=true&last_etag={etag}"),
        format!("{value}?wait_for_change=true&timeout_sec=3600"),
    ] {
        let (r, took) = timed(target.clone()).await;
        assert_eq!((r.status, r.text()), (200, "imdsguard-gke"), "{target}");
        assert_eq!(r.header("ETag"), Some(etag.as_str()));
        assert!(
            took >= Duration::from_millis(950) && took < Duration::from_secs(5),
            "{target}: {took:?}"
        );
    }
    // Changed since last_etag, or timeout_sec=0: at once.
    for target in [
        format!("{value}?wait_for_change=true&last_etag=ffffffffffffffff"),
        format!("{value}?wait_for_change=true&timeout_sec=0"),
        format!("{V1}/instance/attributes/?wait_for_change=true&recursive=true&last_etag=1"),
    ] {
        let (r, took) = timed(target.clone()).await;
        assert_eq!(r.status, 200, "{target}");
        assert!(took < Duration::from_millis(700), "{target}: {took:?}");
    }
    e.shutdown().await;
}

#[tokio::test]
async fn serves_ipv6_loopback_too() {
    let listen: Vec<SocketAddr> = vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()];
    let e = match GcpEmulator::start(
        GcpConfig::default_gke(),
        GcpOptions {
            listen,
            seed: Some(1),
            ..GcpOptions::default()
        },
    )
    .await
    {
        Ok(e) => e,
        Err(err) => panic!("IPv6 loopback is needed for this test: {err}"),
    };
    assert_eq!(e.local_addrs().len(), 2);
    assert!(e.local_addrs()[1].is_ipv6());
    for addr in e.local_addrs() {
        let r = req(*addr, "GET", &format!("{V1}/project/project-id"), &[F]).await;
        assert_eq!((r.status, r.text()), (200, "imdsguard-emulated"), "{addr}");
    }
    let addrs = e.local_addrs().to_vec();
    e.shutdown().await;
    for addr in addrs {
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "{addr} still listening after shutdown"
        );
    }
}

#[tokio::test]
async fn metadata_addresses_and_bad_configs_are_refused_before_binding() {
    for addr in [
        "169.254.169.254:80",
        "[fd20:ce::254]:80",
        "[::ffff:a9fe:a9fe]:80",
    ] {
        let r = GcpEmulator::start(
            GcpConfig::default_gke(),
            GcpOptions {
                listen: vec![addr.parse().unwrap()],
                ..GcpOptions::default()
            },
        )
        .await;
        assert!(
            matches!(
                r,
                Err(imdsguard_emulator::EmulatorError::MetadataAddress(_))
            ),
            "{addr}"
        );
    }
    let mut config = GcpConfig::default_gke();
    config.instance_attributes.insert("../x".into(), "y".into());
    let r = GcpEmulator::start(config, options(1)).await;
    assert!(matches!(r, Err(imdsguard_emulator::EmulatorError::Option(m)) if m.contains("../x")));
}
