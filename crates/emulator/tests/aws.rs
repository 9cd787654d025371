//! The AWS IMDS emulator, black-box: started on 127.0.0.1:0 (and [::1]:0), raw HTTP/1.1
//! requests, one table row per behaviour of docs/emulator-aws.md.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Reply, send};
use imdsguard_core::aws::{TOKEN_HEADER, TOKEN_PATH, TOKEN_TTL_HEADER};
use imdsguard_emulator::aws::{AwsConfig, AwsEmulator, AwsOptions, HOP_LIMIT_HEADER, HttpTokens};
use serde_json::Value;

const ROLE: &str = "imdsguard-demo-node-role";
const CREDS: &str = "/latest/meta-data/iam/security-credentials/imdsguard-demo-node-role";

fn options() -> AwsOptions {
    AwsOptions {
        seed: Some(42),
        ..AwsOptions::default()
    }
}

async fn start(config: AwsConfig) -> AwsEmulator {
    let e = AwsEmulator::start(config, options())
        .await
        .expect("starts on loopback");
    assert!(e.local_addrs().iter().all(|a| a.ip().is_loopback()));
    e
}

async fn req(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    send(addr, method, path, headers, b"")
        .await
        .expect("an answer")
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    req(addr, "GET", path, &[]).await
}

async fn token(addr: SocketAddr, ttl: &str) -> String {
    let r = req(addr, "PUT", TOKEN_PATH, &[(TOKEN_TTL_HEADER, ttl)]).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.text().to_string()
}

fn is_error_page(r: &Reply, status: u16, reason: &str) -> bool {
    r.status == status
        && r.header("content-type") == Some("text/html")
        && r.text()
            .contains(&format!("<title>{status} - {reason}</title>"))
}

#[tokio::test]
async fn imdsv1_table_on_the_default_eks_node() {
    let e = start(AwsConfig::default_eks()).await;
    let a = e.local_addrs()[0];
    let c = AwsConfig::default_eks();
    let listing_has = |r: &Reply, items: &[&str]| {
        let lines: Vec<&str> = r.text().lines().collect();
        items.iter().all(|i| lines.contains(i))
    };
    // (path, status, what the body must hold)
    let root = get(a, "/").await;
    assert_eq!(root.status, 200);
    assert!(
        listing_has(&root, &["1.0", "2016-09-02", "latest"]),
        "{root:?}"
    );
    let latest = get(a, "/latest/").await;
    assert_eq!(latest.text(), "dynamic\nmeta-data\nuser-data");
    let md = get(a, "/latest/meta-data/").await;
    assert_eq!(md.status, 200);
    assert_eq!(md.header("content-type"), Some("text/plain"));
    assert!(
        listing_has(
            &md,
            &[
                "ami-id",
                "iam/",
                "instance-id",
                "local-ipv4",
                "mac",
                "network/",
                "placement/"
            ]
        ),
        "{md:?}"
    );
    assert!(!md.text().contains("tags/"), "tags are off by default");
    assert_eq!(
        get(a, "/latest/meta-data").await.text(),
        md.text(),
        "no slash lists too"
    );
    for (path, want) in [
        ("/latest/meta-data/instance-id", c.instance_id.clone()),
        ("/latest/meta-data/placement/region", c.region.clone()),
        (
            "/latest/meta-data/placement/availability-zone",
            c.availability_zone.clone(),
        ),
        ("/latest/meta-data/local-ipv4", c.local_ipv4.to_string()),
        ("/latest/meta-data/mac", c.mac.clone()),
        ("/latest/meta-data/ami-id", c.ami_id.clone()),
        ("/latest/meta-data/instance-type", c.instance_type.clone()),
        (
            "/latest/meta-data/iam/",
            "info\nsecurity-credentials/".into(),
        ),
        ("/latest/meta-data/iam/security-credentials/", ROLE.into()),
        (
            "/latest/meta-data/network/interfaces/macs/",
            format!("{}/", c.mac),
        ),
        (
            &format!(
                "/latest/meta-data/network/interfaces/macs/{}/local-ipv4s",
                c.mac
            ),
            c.local_ipv4.to_string(),
        ),
        (
            &format!("/latest/meta-data/network/interfaces/macs/{}/vpc-id", c.mac),
            c.vpc_id.clone(),
        ),
        ("/latest/user-data", c.user_data.clone().unwrap()),
        ("/latest/dynamic/", "fws/\ninstance-identity/".into()),
        // Any listed version answers the same tree.
        ("/2016-09-02/meta-data/instance-id", c.instance_id.clone()),
        // Dot segments and doubled slashes resolve.
        (
            "/latest//meta-data/./placement/../placement/region",
            c.region.clone(),
        ),
    ] {
        let r = get(a, path).await;
        assert_eq!((r.status, r.text()), (200, want.as_str()), "{path}");
    }
    // Case-sensitive paths, unknown leaves, other versions: 404 with EC2's page.
    for path in [
        "/latest/Meta-Data/",
        "/LATEST/meta-data/",
        "/latest/meta-data/Instance-Id",
        "/latest/meta-data/iam/security-credentials/Imdsguard-Demo-Node-Role",
        "/latest/meta-data/iam/security-credentials/other-role",
        "/latest/meta-data/nope",
        "/latest/meta-data/instance-id/more",
        "/2099-01-01/meta-data/",
        "/latest/meta-data/iam%2Fsecurity-credentials/",
        "/metadata/instance",
    ] {
        let r = get(a, path).await;
        assert!(is_error_page(&r, 404, "Not Found"), "{path}: {r:?}");
    }
}

#[tokio::test]
async fn credentials_info_and_identity_documents() {
    let e = start(AwsConfig::default_eks()).await;
    let a = e.local_addrs()[0];
    let c = AwsConfig::default_eks();
    let creds = get(a, CREDS).await;
    assert_eq!(creds.status, 200);
    let j = creds.json();
    for key in [
        "Code",
        "LastUpdated",
        "Type",
        "AccessKeyId",
        "SecretAccessKey",
        "Token",
        "Expiration",
    ] {
        assert!(j[key].is_string(), "{key}");
    }
    assert_eq!(j["Code"], "Success");
    assert_eq!(j["Type"], "AWS-HMAC");
    assert!(j["AccessKeyId"].as_str().unwrap().starts_with("ASIA"));
    assert!(j["Expiration"].as_str().unwrap().ends_with('Z'));
    assert_eq!(get(a, CREDS).await.json(), j, "the same until renewed");
    // A trailing slash asks for the same role.
    assert_eq!(get(a, &format!("{CREDS}/")).await.json(), j);

    let info = get(a, "/latest/meta-data/iam/info").await.json();
    assert_eq!(info["Code"], "Success");
    assert_eq!(
        info["InstanceProfileArn"],
        format!(
            "arn:aws:iam::{}:instance-profile/{}",
            c.account_id, c.instance_profile_name
        )
    );
    assert!(
        info["InstanceProfileId"]
            .as_str()
            .unwrap()
            .starts_with("AIPA")
    );

    let ident = get(
        a,
        "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
    )
    .await
    .json();
    assert!(ident["AccessKeyId"].as_str().unwrap().starts_with("ASIA"));
    assert_ne!(ident["AccessKeyId"], j["AccessKeyId"]);

    let doc = get(a, "/latest/dynamic/instance-identity/document")
        .await
        .json();
    assert_eq!(doc["instanceId"], c.instance_id.as_str());
    assert_eq!(doc["region"], c.region.as_str());
    assert_eq!(doc["availabilityZone"], c.availability_zone.as_str());
    assert_eq!(doc["accountId"], c.account_id.as_str());
    assert_eq!(doc["privateIp"], c.local_ipv4.to_string());
    assert_eq!(doc["imageId"], c.ami_id.as_str());
}

#[tokio::test]
async fn an_instance_without_role_user_data_but_with_tags() {
    let mut c = AwsConfig::default_eks();
    c.role_name = None;
    c.user_data = None;
    c.tags_in_metadata = true;
    let e = start(c.clone()).await;
    let a = e.local_addrs()[0];
    assert_eq!(get(a, "/latest/").await.text(), "dynamic\nmeta-data");
    for path in [
        "/latest/user-data",
        "/latest/meta-data/iam/",
        "/latest/meta-data/iam/info",
        CREDS,
    ] {
        assert_eq!(get(a, path).await.status, 404, "{path}");
    }
    assert!(!get(a, "/latest/meta-data/").await.text().contains("iam/"));
    let keys = get(a, "/latest/meta-data/tags/instance/").await;
    assert!(keys.text().lines().any(|k| k == "Name"), "{keys:?}");
    assert_eq!(
        get(a, "/latest/meta-data/tags/instance/Name").await.text(),
        c.tags["Name"]
    );
}

#[tokio::test]
async fn imdsv2_tokens_ttls_and_the_hop_limit() {
    let e = start(AwsConfig::default_eks()).await;
    let a = e.local_addrs()[0];
    let put = req(a, "PUT", TOKEN_PATH, &[(TOKEN_TTL_HEADER, "21600")]).await;
    assert_eq!(put.status, 200);
    assert_eq!(put.header(TOKEN_TTL_HEADER), Some("21600"));
    assert_eq!(
        put.header(HOP_LIMIT_HEADER),
        Some("2"),
        "the EKS node's hop limit"
    );
    let t = put.text().to_string();
    assert!(t.starts_with("AQAEAFAKE") && t.len() > 40);
    let with = |tok: &str| [(TOKEN_HEADER, tok.to_string())];
    let r = req(a, "GET", CREDS, &[(TOKEN_HEADER, &t)]).await;
    assert_eq!(r.status, 200);
    assert!(r.json()["AccessKeyId"].is_string());
    // A token that was never minted here: 401 even though tokens are optional.
    let forged = format!("{}A", &t[..t.len() - 1]);
    for bad in [forged.as_str(), "AQAEAnothing"] {
        let h = with(bad);
        let r = req(a, "GET", "/latest/meta-data/", &[(h[0].0, h[0].1.as_str())]).await;
        assert!(is_error_page(&r, 401, "Unauthorized"), "{r:?}");
    }
    // An empty or repeated token header: 401.
    let r = req(a, "GET", "/latest/meta-data/", &[(TOKEN_HEADER, "")]).await;
    assert_eq!(r.status, 401);
    let r = req(
        a,
        "GET",
        "/latest/meta-data/",
        &[(TOKEN_HEADER, &t), (TOKEN_HEADER, &t)],
    )
    .await;
    assert_eq!(r.status, 401);
    // Tokens expire after their TTL.
    let short = token(a, "1").await;
    assert_eq!(
        req(a, "GET", "/latest/meta-data/", &[(TOKEN_HEADER, &short)])
            .await
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = req(a, "GET", "/latest/meta-data/", &[(TOKEN_HEADER, &short)]).await;
    assert_eq!(r.status, 401, "expired");
    assert_ne!(
        token(a, "60").await,
        token(a, "60").await,
        "a new token each time"
    );

    // The token PUT's own rules.
    for (method, path, headers, status, reason) in [
        ("PUT", TOKEN_PATH, vec![], 400, "Bad Request"),
        (
            "PUT",
            TOKEN_PATH,
            vec![(TOKEN_TTL_HEADER, "0")],
            400,
            "Bad Request",
        ),
        (
            "PUT",
            TOKEN_PATH,
            vec![(TOKEN_TTL_HEADER, "21601")],
            400,
            "Bad Request",
        ),
        (
            "PUT",
            TOKEN_PATH,
            vec![(TOKEN_TTL_HEADER, "sixty")],
            400,
            "Bad Request",
        ),
        (
            "PUT",
            TOKEN_PATH,
            vec![(TOKEN_TTL_HEADER, "60"), ("X-Forwarded-For", "10.0.0.7")],
            403,
            "Forbidden",
        ),
        ("GET", TOKEN_PATH, vec![], 405, "Method Not Allowed"),
        (
            "POST",
            TOKEN_PATH,
            vec![(TOKEN_TTL_HEADER, "60")],
            405,
            "Method Not Allowed",
        ),
        (
            "PUT",
            "/latest/meta-data/",
            vec![(TOKEN_TTL_HEADER, "60")],
            405,
            "Method Not Allowed",
        ),
        (
            "DELETE",
            "/latest/meta-data/",
            vec![],
            405,
            "Method Not Allowed",
        ),
        (
            "PUT",
            "/latest/API/token",
            vec![(TOKEN_TTL_HEADER, "60")],
            404,
            "Not Found",
        ),
    ] {
        let r = req(a, method, path, &headers).await;
        assert!(
            is_error_page(&r, status, reason),
            "{method} {path} {headers:?}: {r:?}"
        );
        assert!(r.header(HOP_LIMIT_HEADER).is_none());
    }
    // X-Forwarded-For is refused on the token PUT only.
    let r = req(
        a,
        "GET",
        "/latest/meta-data/",
        &[("X-Forwarded-For", "10.0.0.7")],
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn tokens_required() {
    let mut c = AwsConfig::default_eks();
    c.http_tokens = HttpTokens::Required;
    c.hop_limit = 1;
    let e = start(c).await;
    let a = e.local_addrs()[0];
    for path in [
        "/latest/meta-data/",
        CREDS,
        "/latest/user-data",
        "/nowhere",
        "/",
    ] {
        let r = get(a, path).await;
        assert!(is_error_page(&r, 401, "Unauthorized"), "{path}: {r:?}");
    }
    let put = req(a, "PUT", TOKEN_PATH, &[(TOKEN_TTL_HEADER, "60")]).await;
    assert_eq!(put.header(HOP_LIMIT_HEADER), Some("1"));
    let t = put.text().to_string();
    let r = req(a, "GET", CREDS, &[(TOKEN_HEADER, &t)]).await;
    assert_eq!(r.status, 200);
    let r = req(a, "GET", "/nowhere", &[(TOKEN_HEADER, &t)]).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn same_seed_same_secrets_and_ipv6_listeners() {
    let e1 = start(AwsConfig::default_eks()).await;
    let e2 = start(AwsConfig::default_eks()).await;
    let (a1, a2) = (e1.local_addrs()[0], e2.local_addrs()[0]);
    assert_eq!(token(a1, "60").await, token(a2, "60").await);
    assert_eq!(
        get(a1, CREDS).await.json()["AccessKeyId"],
        get(a2, CREDS).await.json()["AccessKeyId"]
    );
    let o = AwsOptions {
        listen: vec!["[::1]:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap()],
        ..options()
    };
    let e = AwsEmulator::start(AwsConfig::default_eks(), o)
        .await
        .expect("IPv6 loopback");
    assert_eq!(e.local_addrs().len(), 2);
    for addr in e.local_addrs() {
        let t = token(*addr, "60").await;
        let r = req(
            *addr,
            "GET",
            "/latest/meta-data/instance-id",
            &[(TOKEN_HEADER, &t)],
        )
        .await;
        assert_eq!(r.status, 200, "{addr}");
    }
    e.shutdown().await;
    let refused = AwsEmulator::start(
        AwsConfig::default_eks(),
        AwsOptions {
            listen: vec!["169.254.169.254:80".parse().unwrap()],
            ..options()
        },
    )
    .await;
    assert!(matches!(
        refused,
        Err(imdsguard_emulator::EmulatorError::MetadataAddress(_))
    ));
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
fn the_request_log_holds_no_token_or_credential() {
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
    let (t, creds): (String, Value) = rt.block_on(async {
        let e = start(AwsConfig::default_eks()).await;
        let a = e.local_addrs()[0];
        let t = token(a, "60").await;
        let creds = req(a, "GET", CREDS, &[(TOKEN_HEADER, &t)]).await.json();
        let _ = req(a, "GET", "/latest/user-data", &[(TOKEN_HEADER, &t)]).await;
        e.shutdown().await;
        (t, creds)
    });
    let log = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let requests = log.lines().filter(|l| l.contains("request")).count();
    assert_eq!(requests, 3, "{log}");
    assert!(log.contains("kind=\"credentials\""), "{log}");
    for secret in [
        t.as_str(),
        creds["SecretAccessKey"].as_str().unwrap(),
        creds["Token"].as_str().unwrap(),
        creds["AccessKeyId"].as_str().unwrap(),
        "bootstrap.sh",
    ] {
        assert!(!log.contains(secret), "a secret in the log:\n{log}");
    }
}
