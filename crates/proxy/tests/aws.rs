//! The proxy with `cloud: aws` in front of the AWS IMDS emulator (loopback): the bypass
//! table (case, encodings, dot segments, `//`, absolute-form hosts, IPv4-mapped hosts,
//! query parameters, header tricks, the token PUT without a grant), IMDSv2 tokens bound
//! to the pod that got them, redaction of the identity document, and the headers that
//! go upstream.

mod support;

use std::sync::{Arc, Mutex};

use imdsguard_core::access::{AccessRules, PodIndex};
use imdsguard_emulator::aws::{AwsConfig, AwsEmulator, AwsOptions, HttpTokens};
use imdsguard_proxy::{Cloud, DecisionRecord, DecisionSink, PodRate, Proxy, ProxyConfig, Upstream};
use support::*;

const ROLE: &str = "imdsguard-demo-node-role";

const AWS_RULES: &str = r#"
cloud: aws
rules:
  - name: everyone-basics
    subjects: [{namespace: "*"}]
    paths:
      - /latest/meta-data/placement
      - /latest/meta-data/instance-id
      - /latest/meta-data/iam
      - /latest/dynamic/instance-identity/document
    redact: [accountId]
  - name: imdsv2-token
    subjects: [{namespace: payments}, {namespace: shop}, {namespace: ops}]
    methods: [PUT]
    paths: [/latest/api/token]
  - name: payments-node-role
    subjects: [{namespace: payments, serviceAccount: api}]
    paths: [/latest/meta-data/iam/security-credentials/imdsguard-demo-node-role]
  - name: ops-meta-data
    subjects: [{namespace: ops}]
    paths: [/latest/meta-data, /latest/dynamic]
"#;

/// Decision records, as the proxy gives them (never a token: checked below).
#[derive(Default)]
struct Records(Mutex<Vec<(String, String, String, String)>>);

impl DecisionSink for Records {
    fn record(&self, r: &DecisionRecord<'_>) {
        let mut line = String::new();
        r.write_json_fields(&mut line);
        self.0.lock().unwrap().push((
            r.path.to_string(),
            r.decision.to_string(),
            r.rule.to_string(),
            line,
        ));
    }
}

struct AwsEnv {
    emulator: AwsEmulator,
    proxy: Proxy,
    records: Arc<Records>,
}

impl AwsEnv {
    async fn start(tokens: HttpTokens) -> AwsEnv {
        let config = AwsConfig {
            http_tokens: tokens,
            ..AwsConfig::default_eks()
        };
        let emulator = AwsEmulator::start(
            config,
            AwsOptions {
                seed: Some(12),
                ..AwsOptions::default()
            },
        )
        .await
        .expect("AWS emulator on loopback");
        let upstream = emulator.local_addrs()[0];
        assert!(upstream.ip().is_loopback());
        let (config, records) = aws_config(upstream, Arc::default());
        let proxy = Proxy::start(config).await.expect("proxy on loopback");
        AwsEnv {
            emulator,
            proxy,
            records,
        }
    }

    async fn send(
        &self,
        from: std::net::IpAddr,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        send_from(from, self.proxy.local_addr(), method, target, headers, b"")
            .await
            .expect("an answer")
    }

    async fn get(&self, from: std::net::IpAddr, target: &str) -> Reply {
        self.send(from, "GET", target, &[]).await
    }

    async fn token(&self, from: std::net::IpAddr) -> String {
        let r = self
            .send(
                from,
                "PUT",
                "/latest/api/token",
                &[("X-aws-ec2-metadata-token-ttl-seconds", "300")],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.text().to_string()
    }

    fn last_record(&self) -> (String, String, String, String) {
        self.records
            .0
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a record")
    }

    async fn shutdown(self) {
        self.proxy.shutdown().await;
        self.emulator.shutdown().await;
    }
}

fn aws_config(
    upstream: std::net::SocketAddr,
    records: Arc<Records>,
) -> (ProxyConfig, Arc<Records>) {
    let mut c = ProxyConfig::for_cloud(
        Cloud::Aws,
        "127.0.0.1:0".parse().unwrap(),
        Upstream::parse(&format!("http://{upstream}")).unwrap(),
    );
    c.rules = Some(AccessRules::parse(AWS_RULES).unwrap());
    c.pods = PodIndex::parse(PODS).unwrap();
    c.pod_rate = PodRate::unlimited();
    c.decisions = Some(records.clone());
    (c, records)
}

/// What a row of the table must come to.
#[derive(Debug)]
enum Want {
    /// 200, the body holding this.
    Ok(&'static str),
    /// imdsguard's 403 by this rule.
    Denied(&'static str),
    /// The service's own answer with this status (not imdsguard's body).
    Service(u16),
}

/// From, method, target, headers, outcome.
type Row = (
    std::net::IpAddr,
    &'static str,
    String,
    Vec<(&'static str, &'static str)>,
    Want,
);

#[tokio::test]
async fn aws_bypass_table() {
    let env = AwsEnv::start(HttpTokens::Optional).await;
    let creds = format!("/latest/meta-data/iam/security-credentials/{ROLE}");
    let upper_role = creds.replace(ROLE, &ROLE.to_ascii_uppercase());
    let rows: Vec<Row> = vec![
        // The role's credentials: only the rule naming them, only its pods.
        (
            PAYMENTS_API,
            "GET",
            creds.clone(),
            vec![],
            Want::Ok("AccessKeyId"),
        ),
        (
            SHOP_WEB,
            "GET",
            creds.clone(),
            vec![],
            Want::Denied("everyone-basics"),
        ),
        (
            OPS,
            "GET",
            creds.clone(),
            vec![],
            Want::Denied("everyone-basics"),
        ),
        (
            PAYMENTS_API,
            "GET",
            format!("{creds}/"),
            vec![],
            Want::Ok("AccessKeyId"),
        ),
        // Case: another path, never granted by the lower-case rule (and secret).
        (
            PAYMENTS_API,
            "GET",
            upper_role,
            vec![],
            Want::Denied("everyone-basics"),
        ),
        (
            PAYMENTS_API,
            "GET",
            creds.replace("/iam/", "/IAM/"),
            vec![],
            Want::Denied("default-deny"),
        ),
        (
            SHOP_WEB,
            "GET",
            "/latest/meta-data/Placement/region".into(),
            vec![],
            Want::Denied("default-deny"),
        ),
        (
            SHOP_WEB,
            "GET",
            "/Latest/meta-data/placement/region".into(),
            vec![],
            Want::Service(404),
        ),
        (
            SHOP_WEB,
            "GET",
            "/latest/meta-data/placement/region".into(),
            vec![],
            Want::Ok("us-west-2"),
        ),
        // Encodings: decoded once to the same path, or refused.
        (
            PAYMENTS_API,
            "GET",
            creds.replace("imdsguard-demo", "imdsguard%2ddemo"),
            vec![],
            Want::Ok("AccessKeyId"),
        ),
        (
            SHOP_WEB,
            "GET",
            creds.replace("imdsguard-demo", "imdsguard%2ddemo"),
            vec![],
            Want::Denied("everyone-basics"),
        ),
        (
            SHOP_WEB,
            "GET",
            creds.replace("/iam/", "%2fiam/"),
            vec![],
            Want::Denied("canonical-form"),
        ),
        (
            SHOP_WEB,
            "GET",
            creds.replace("/iam/", "/iam%252f"),
            vec![],
            Want::Denied("canonical-form"),
        ),
        (
            SHOP_WEB,
            "GET",
            format!("{creds}%00"),
            vec![],
            Want::Denied("canonical-form"),
        ),
        (
            SHOP_WEB,
            "GET",
            creds.replace("/iam/", "/placement/%2e%2e/iam/"),
            vec![],
            Want::Denied("canonical-form"),
        ),
        (
            SHOP_WEB,
            "GET",
            creds.replace("/iam/", "/placement/../iam/"),
            vec![],
            Want::Denied("canonical-form"),
        ),
        (
            SHOP_WEB,
            "GET",
            creds.replace("/iam/", "/placement/./../iam/"),
            vec![],
            Want::Denied("canonical-form"),
        ),
        (
            SHOP_WEB,
            "GET",
            format!("/{creds}"),
            vec![],
            Want::Denied("canonical-form"),
        ),
        (
            SHOP_WEB,
            "GET",
            creds.replace("/iam/", "//iam/"),
            vec![],
            Want::Denied("canonical-form"),
        ),
        (
            SHOP_WEB,
            "GET",
            creds.replace("/iam/", "/iam;x=1/"),
            vec![],
            Want::Denied("canonical-form"),
        ),
        (
            SHOP_WEB,
            "GET",
            "/latest/meta-data/placement/region?x=1".into(),
            vec![],
            Want::Denied("canonical-form"),
        ),
        // Absolute-form: the metadata hosts (IPv4-mapped forms folded), nothing else.
        (
            SHOP_WEB,
            "GET",
            "http://169.254.169.254/latest/meta-data/placement/region".into(),
            vec![],
            Want::Ok("us-west-2"),
        ),
        (
            SHOP_WEB,
            "GET",
            "http://[::ffff:a9fe:a9fe]/latest/meta-data/placement/region".into(),
            vec![],
            Want::Ok("us-west-2"),
        ),
        (
            SHOP_WEB,
            "GET",
            format!("http://[::ffff:169.254.169.254]{creds}"),
            vec![],
            Want::Denied("everyone-basics"),
        ),
        (
            SHOP_WEB,
            "GET",
            format!("http://[fd00:ec2::254]{creds}"),
            vec![],
            Want::Denied("everyone-basics"),
        ),
        (
            SHOP_WEB,
            "GET",
            "http://evil.example/latest/meta-data/placement/region".into(),
            vec![],
            Want::Denied("canonical-form"),
        ),
        (
            SHOP_WEB,
            "GET",
            "http://metadata.google.internal/latest/meta-data/placement/region".into(),
            vec![],
            Want::Denied("canonical-form"),
        ),
        // Another version of the same secret is not the path the rule names.
        (
            PAYMENTS_API,
            "GET",
            creds.replace("/latest/", "/2016-09-02/"),
            vec![],
            Want::Denied("default-deny"),
        ),
        // User data: not even `/latest/meta-data` gives it.
        (
            OPS,
            "GET",
            "/latest/user-data".into(),
            vec![],
            Want::Denied("default-deny"),
        ),
        (
            OPS,
            "GET",
            "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance".into(),
            vec![],
            Want::Denied("ops-meta-data"),
        ),
        (
            OPS,
            "GET",
            "/latest/meta-data/hostname".into(),
            vec![],
            Want::Ok("compute.internal"),
        ),
        // The token step is a grant of its own.
        (
            MONITORING,
            "PUT",
            "/latest/api/token".into(),
            vec![("X-aws-ec2-metadata-token-ttl-seconds", "60")],
            Want::Denied("default-deny"),
        ),
        (
            SHOP_WEB,
            "PUT",
            "/latest/api/token".into(),
            vec![("X-aws-ec2-metadata-token-ttl-seconds", "0")],
            Want::Service(400),
        ),
        (
            SHOP_WEB,
            "PUT",
            "/latest/api/token".into(),
            vec![("X-aws-ec2-metadata-token-ttl-seconds", "21601")],
            Want::Service(400),
        ),
        (
            SHOP_WEB,
            "PUT",
            "/latest/api/token".into(),
            vec![],
            Want::Service(400),
        ),
        (
            SHOP_WEB,
            "PUT",
            "/latest/api/token".into(),
            vec![
                ("X-aws-ec2-metadata-token-ttl-seconds", "60"),
                ("X-Forwarded-For", "10.0.0.1"),
            ],
            Want::Service(403),
        ),
        (
            SHOP_WEB,
            "GET",
            "/latest/api/token".into(),
            vec![],
            Want::Service(405),
        ),
        // Header tricks.
        (
            SHOP_WEB,
            "GET",
            "/latest/meta-data/placement/region".into(),
            vec![
                ("X-aws-ec2-metadata-token", "a"),
                ("X-aws-ec2-metadata-token", "b"),
            ],
            Want::Denied("canonical-form"),
        ),
        (
            SHOP_WEB,
            "GET",
            "/latest/meta-data/placement/region".into(),
            vec![("Connection", "close, X-aws-ec2-metadata-token")],
            Want::Denied("canonical-form"),
        ),
        (
            SHOP_WEB,
            "PUT",
            "/latest/api/token".into(),
            vec![
                ("X-aws-ec2-metadata-token-ttl-seconds", "60"),
                ("x-aws-ec2-metadata-token-ttl-seconds", "60"),
            ],
            Want::Denied("canonical-form"),
        ),
        // Unknown callers.
        (
            UNKNOWN,
            "GET",
            "/latest/meta-data/placement/region".into(),
            vec![],
            Want::Denied("unknown-source"),
        ),
    ];
    for (from, method, target, headers, want) in rows {
        let r = env.send(from, method, &target, &headers).await;
        let what = format!(
            "{from} {method} {target} {headers:?}: {} {}",
            r.status,
            r.text()
        );
        match want {
            Want::Ok(has) => {
                assert_eq!(r.status, 200, "{what}");
                assert!(r.text().contains(has), "{what}");
            }
            Want::Denied(rule) => {
                assert_eq!(r.status, 403, "{what}");
                assert_eq!(r.denied_by(), rule, "{what}");
            }
            Want::Service(status) => {
                assert_eq!(r.status, status, "{what}");
                assert!(!r.text().contains("imdsguard"), "{what}");
                assert!(r.text().contains(&format!("{status} - ")), "{what}");
            }
        }
        // Never a credential in a decision record.
        let (_, _, _, line) = env.last_record();
        assert!(!line.contains("ASIA") && !line.contains("Secret"), "{line}");
    }
    env.shutdown().await;
}

#[tokio::test]
async fn imdsv2_tokens_are_good_only_for_the_pod_that_got_them_here() {
    let env = AwsEnv::start(HttpTokens::Required).await;
    let region = "/latest/meta-data/placement/region";
    let with = |t: &str| vec![("X-aws-ec2-metadata-token", t.to_string())];
    let send = |from, t: Option<&str>| {
        let headers: Vec<(&str, String)> = t.map(with).unwrap_or_default();
        let env = &env;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            env.send(from, "GET", region, &h).await
        }
    };

    let payments = env.token(PAYMENTS_API).await;
    let shop = env.token(SHOP_WEB).await;
    assert_ne!(payments, shop);
    // Each pod with its own token.
    assert_eq!(send(PAYMENTS_API, Some(&payments)).await.status, 200);
    assert_eq!(send(SHOP_WEB, Some(&shop)).await.status, 200);
    // Without one: the instance requires tokens (IMDS's own 401).
    assert_eq!(send(SHOP_WEB, None).await.status, 401);

    // Another pod's token: IMDS's 401 (so SDKs fetch their own), recorded as
    // imdsguard's denial with the token's fingerprint, never the token.
    for (from, token) in [
        (SHOP_WEB, &payments),
        (PAYMENTS_API, &shop),
        (OPS, &payments),
    ] {
        let r = send(from, Some(token)).await;
        assert_eq!(r.status, 401, "{}", r.text());
        assert!(r.text().contains("401 - Unauthorized"), "{}", r.text());
        let (_, decision, rule, line) = env.last_record();
        assert_eq!(
            (decision.as_str(), rule.as_str()),
            ("deny", "token-not-issued-to-caller")
        );
        assert!(
            line.contains("sha256:") && line.contains("was issued to pod"),
            "{line}"
        );
        assert!(!line.contains(token.as_str()), "{line}");
    }
    // A token obtained from IMDS directly (not through the proxy) is no better.
    let direct = send_from(
        UNKNOWN,
        env.emulator.local_addrs()[0],
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "300")],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(direct.status, 200);
    let r = send(PAYMENTS_API, Some(direct.text())).await;
    assert_eq!(r.status, 401);
    let (_, _, rule, line) = env.last_record();
    assert_eq!(rule, "token-not-issued-to-caller");
    assert!(
        line.contains("was not issued to pod payments/api-7d9f"),
        "{line}"
    );
    // The credentials with the right token, and the token stays good.
    let creds = format!("/latest/meta-data/iam/security-credentials/{ROLE}");
    let r = env
        .send(
            PAYMENTS_API,
            "GET",
            &creds,
            &[("X-aws-ec2-metadata-token", &payments)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json()["AccessKeyId"]
            .as_str()
            .unwrap()
            .starts_with("ASIA")
    );
    // The token answers never reach a record.
    for (_, _, _, line) in env.records.0.lock().unwrap().iter() {
        assert!(!line.contains(&payments) && !line.contains(&shop), "{line}");
    }
    env.shutdown().await;
}

#[tokio::test]
async fn the_identity_document_is_redacted_as_the_rule_says() {
    let env = AwsEnv::start(HttpTokens::Optional).await;
    let direct = send_from(
        UNKNOWN,
        env.emulator.local_addrs()[0],
        "GET",
        "/latest/dynamic/instance-identity/document",
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(direct.json()["accountId"], "111122223333");
    let r = env
        .get(SHOP_WEB, "/latest/dynamic/instance-identity/document")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json();
    assert!(doc.get("accountId").is_none(), "{doc}");
    assert_eq!(doc["region"], "us-west-2");
    let (_, decision, rule, line) = env.last_record();
    assert_eq!(
        (decision.as_str(), rule.as_str()),
        ("allow", "everyone-basics")
    );
    assert!(line.contains(r#""redacted":true"#), "{line}");
    // ops' rule redacts nothing.
    let r = env
        .get(OPS, "/latest/dynamic/instance-identity/document")
        .await;
    assert_eq!(r.json()["accountId"], "111122223333");
    env.shutdown().await;
}

#[tokio::test]
async fn only_the_clouds_headers_go_upstream() {
    let echo = echo_upstream().await;
    let (config, _) = aws_config(echo.addr, Arc::default());
    let proxy = Proxy::start(config).await.unwrap();
    let r = send_from(
        PAYMENTS_API,
        proxy.local_addr(),
        "PUT",
        "http://[::ffff:a9fe:a9fe]/latest/api/token",
        &[
            ("X-aws-ec2-metadata-token-ttl-seconds", "120"),
            ("Metadata", "true"),
            ("Authorization", "Bearer x"),
            ("User-Agent", "aws-sdk-go/1"),
        ],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert_eq!(seen["(target)"], "/latest/api/token");
    assert_eq!(seen["x-aws-ec2-metadata-token-ttl-seconds"], "120");
    assert_eq!(seen["user-agent"], "aws-sdk-go/1");
    for absent in ["metadata", "authorization", "x-forwarded-for"] {
        assert!(seen.get(absent).is_none(), "{absent}: {seen}");
    }
    // The echo's body was taken for a token and bound to payments: a GET with it
    // from payments is forwarded with the token header, and X-Forwarded-For stays.
    let token = r.text().trim().to_string();
    let r = send_from(
        PAYMENTS_API,
        proxy.local_addr(),
        "GET",
        "/latest/meta-data/placement/region",
        &[
            ("X-aws-ec2-metadata-token", &token),
            ("X-Forwarded-For", "10.1.2.3"),
        ],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert_eq!(seen["x-aws-ec2-metadata-token"], token.as_str());
    assert!(seen.get("x-forwarded-for").is_none(), "{seen}");
    assert!(
        seen.get("x-aws-ec2-metadata-token-ttl-seconds").is_none(),
        "{seen}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn rules_of_another_cloud_are_refused() {
    let (mut c, _) = aws_config("127.0.0.1:9".parse().unwrap(), Arc::default());
    c.rules = Some(AccessRules::parse(RULES).unwrap());
    let e = Proxy::start(c).await.err().expect("Azure rules under aws");
    assert!(e.to_string().contains("cloud: aws"), "{e}");
    let (mut c, _) = aws_config("127.0.0.1:9".parse().unwrap(), Arc::default());
    c.rules = Some(AccessRules::parse("cloud: gcp\nrules: [{name: z, subjects: [{namespace: a}], paths: [/computeMetadata/v1/instance/zone]}]").unwrap());
    let e = Proxy::start(c).await.err().expect("GCP rules under aws");
    assert!(e.to_string().contains("--cloud aws"), "{e}");
    // A reload of another cloud's rules is refused and the rules in force kept.
    let (c, _) = aws_config("127.0.0.1:9".parse().unwrap(), Arc::default());
    let proxy = Proxy::start(c).await.unwrap();
    let control = proxy.control();
    let azure = AccessRules::parse(RULES).unwrap();
    assert!(control.check_rules(&azure).is_err());
    let e = <imdsguard_proxy::ProxyControl as imdsguard_proxy::ReloadTarget>::set_rules(
        &control, azure,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("cloud"), "{e}");
    assert_eq!(
        control.rules().as_ref().as_ref().unwrap().cloud(),
        Cloud::Aws
    );
    proxy.shutdown().await;
}

/// The `cloud: aws` example of docs/proxy.md parses, for its cloud.
#[test]
fn the_documented_aws_example_parses() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/proxy.md"))
        .expect("docs/proxy.md");
    let block = doc
        .split("```yaml\n")
        .map(|b| b.split("```").next().unwrap())
        .find(|b| b.starts_with("cloud: aws\n"))
        .expect("a cloud: aws example");
    let rules = AccessRules::parse(block).expect("the example parses");
    assert_eq!(rules.cloud(), Cloud::Aws);
    let names: Vec<&str> = rules.rules().iter().map(|r| &*r.name).collect();
    assert_eq!(
        names,
        [
            "everyone-placement",
            "imdsv2-token",
            "aws-node-role",
            "payments-role"
        ]
    );
}

/// Over its rate a pod gets IMDS's own 429 page with `Retry-After`; credentials count in
/// the identity class, and one pod's rate is not another's.
#[tokio::test]
async fn over_its_rate_a_pod_gets_imds_429() {
    let emulator = AwsEmulator::start(AwsConfig::default_eks(), AwsOptions::default())
        .await
        .unwrap();
    let (mut config, records) = aws_config(emulator.local_addrs()[0], Arc::default());
    config.pod_rate = PodRate {
        general: 0.5,
        identity: 0.5,
        burst: 1,
    };
    let proxy = Proxy::start(config).await.unwrap();
    let get = |from, target: String| {
        let addr = proxy.local_addr();
        async move {
            send_from(from, addr, "GET", &target, &[], b"")
                .await
                .unwrap()
        }
    };
    let region = "/latest/meta-data/placement/region".to_string();
    let creds = format!("/latest/meta-data/iam/security-credentials/{ROLE}");
    assert_eq!(get(SHOP_WEB, region.clone()).await.status, 200);
    let r = get(SHOP_WEB, region.clone()).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.text(), imdsguard_core::aws::error_page(429));
    assert_eq!(
        r.header("content-type"),
        Some(imdsguard_core::aws::CONTENT_TYPE_HTML)
    );
    let wait: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    let last = records.0.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.1, "throttled", "{last:?}");
    // Another pod's budget is its own; credentials have a budget of their own.
    assert_eq!(get(PAYMENTS_API, region.clone()).await.status, 200);
    let r = get(PAYMENTS_API, creds.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(PAYMENTS_API, creds).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(!r.text().contains("SecretAccessKey"), "{}", r.text());
    proxy.shutdown().await;
    emulator.shutdown().await;
}

/// A dry run denies nothing: rule, token-binding and canonical-form denials are
/// recorded `would-deny` and forwarded (the last as received).
#[tokio::test]
async fn a_dry_run_records_would_deny_and_forwards() {
    let emulator = AwsEmulator::start(AwsConfig::default_eks(), AwsOptions::default())
        .await
        .unwrap();
    let (mut config, records) = aws_config(emulator.local_addrs()[0], Arc::default());
    config.dry_run = true;
    let proxy = Proxy::start(config).await.unwrap();
    let last = || records.0.lock().unwrap().last().cloned().unwrap();
    let creds = format!("/latest/meta-data/iam/security-credentials/{ROLE}");
    let send = |from, target: String, headers: Vec<(&'static str, String)>| {
        let addr = proxy.local_addr();
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            send_from(from, addr, "GET", &target, &h, b"")
                .await
                .unwrap()
        }
    };
    let r = send(SHOP_WEB, creds.clone(), vec![]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (last().1.as_str(), last().2.as_str()),
        ("would-deny", "everyone-basics")
    );
    let dotted = creds.replace("/iam/", "/placement/../iam/");
    let r = send(SHOP_WEB, dotted.clone(), vec![]).await;
    assert_eq!(r.status, 200, "forwarded as received: {}", r.text());
    assert_eq!(
        (last().1.as_str(), last().2.as_str()),
        ("would-deny", "canonical-form")
    );
    let token = send_from(
        PAYMENTS_API,
        proxy.local_addr(),
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
        b"",
    )
    .await
    .unwrap()
    .text()
    .to_string();
    let r = send(
        SHOP_WEB,
        "/latest/meta-data/placement/region".into(),
        vec![("X-aws-ec2-metadata-token", token.clone())],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (last().1.as_str(), last().2.as_str()),
        ("would-deny", "token-not-issued-to-caller")
    );
    assert!(!last().3.contains(&token));
    proxy.shutdown().await;
    emulator.shutdown().await;
}
