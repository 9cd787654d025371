//! The AWS and GCP walks against a scripted HTTP server on loopback: which requests they
//! send (methods, paths, the session token and `Metadata-Flavor` headers), what they skip,
//! how the report sums them up, and that no secret the server hands out reaches the
//! report (text, JSON or Debug). The emulators' end-to-end runs are the binary's tests
//! (`crates/cli/tests/probe_aws.rs`, `probe_gcp.rs`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::{BaseUrl, Class, Cloud, ProbeConfig, Report, StepName, probe};

/// One request the server saw: method, target, lower-cased header lines.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Answer = fn(&Seen) -> Option<(u16, String)>;

/// Serves `answer` on 127.0.0.1 (a `None` answer is never sent: the connection stays
/// open until the client gives up) and records every request.
async fn serve(answer: Answer) -> (BaseUrl, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return, // a TCP-only check
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                let mut lines = head.split("\r\n");
                let mut first = lines.next().unwrap_or("").split(' ');
                let request = Seen {
                    method: first.next().unwrap_or("").to_owned(),
                    target: first.next().unwrap_or("").to_owned(),
                    headers: lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                        .collect(),
                };
                log.lock().unwrap().push(request.clone());
                match answer(&request) {
                    Some((status, body)) => {
                        let text = format!(
                            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = stream.write_all(text.as_bytes()).await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(30)).await,
                }
            });
        }
    });
    (
        BaseUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
        seen,
    )
}

const KEY_ID: &str = "ASIAWALKTESTKEY00001";
const SECRET: &str = "walkTestSecretAccessKey/000000000000000000";
const AWS_TOKEN: &str = "walkTestCredentialSessionToken000000";
const SESSION: &str = "AQAEAWalkTestImdsV2SessionToken==";
const GCP_TOKEN: &str = "ya29.walkTestAccessToken000000000000";
const USER_DATA_SECRET: &str = "walkTestUserDataSecret";
const ID_TOKEN_SIGNATURE: &str = "walkTestIdentityTokenSignature";
const KUBELET_KEY: &str = "LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVktLS0tLQ==";

fn config(cloud: Cloud, endpoint: BaseUrl) -> ProbeConfig {
    let mut config = ProbeConfig::for_cloud(cloud, endpoint);
    config.connect_timeout = Duration::from_millis(500);
    config.timeout = Duration::from_millis(700);
    config
}

fn class_of(report: &Report, name: StepName) -> Vec<Class> {
    report
        .steps
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.class)
        .collect()
}

/// Every rendering of the report, for secret checks.
fn everything(report: &Report) -> String {
    format!("{}\n{}\n{report:?}", report.to_text(), report.to_json())
}

fn aws_v2_only(r: &Seen) -> Option<(u16, String)> {
    let token = r.header("x-aws-ec2-metadata-token");
    if r.method == "PUT" {
        assert_eq!(r.target, "/latest/api/token");
        assert_eq!(r.header("x-aws-ec2-metadata-token-ttl-seconds"), Some("60"));
        assert!(r.header("x-forwarded-for").is_none());
        return Some((200, SESSION.to_owned()));
    }
    if token != Some(SESSION) {
        return Some((401, String::new()));
    }
    Some(match r.target.as_str() {
        "/latest/dynamic/instance-identity/document" => (
            200,
            r#"{"accountId":"111122223333","region":"eu-west-1","instanceId":"i-0walk","instanceType":"m5.large"}"#.to_owned(),
        ),
        "/latest/meta-data/iam/info" => (
            200,
            r#"{"Code":"Success","InstanceProfileArn":"arn:aws:iam::111122223333:instance-profile/walk"}"#.to_owned(),
        ),
        "/latest/meta-data/iam/security-credentials/" => (200, "walk-node-role".to_owned()),
        "/latest/meta-data/iam/security-credentials/walk-node-role" => (
            200,
            format!(
                r#"{{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":"{KEY_ID}","SecretAccessKey":"{SECRET}","Token":"{AWS_TOKEN}","Expiration":"2030-01-01T06:00:00Z"}}"#
            ),
        ),
        "/latest/user-data" => (200, format!("#!/bin/sh\nexport SECRET={USER_DATA_SECRET}\n")),
        _ => (404, String::new()),
    })
}

#[tokio::test]
async fn aws_v2_walk_uses_the_session_token_and_shows_no_secret() {
    let (endpoint, seen) = serve(aws_v2_only).await;
    let report = probe(&config(Cloud::Aws, endpoint)).await;
    assert_eq!(report.cloud, Cloud::Aws);
    assert_eq!(class_of(&report, StepName::TcpConnect), [Class::Reachable]);
    assert_eq!(class_of(&report, StepName::Imdsv1), [Class::NeedsHeader]);
    assert_eq!(
        class_of(&report, StepName::Imdsv2Token),
        [Class::SessionToken]
    );
    assert_eq!(
        class_of(&report, StepName::IdentityDocument),
        [Class::Readable]
    );
    assert_eq!(class_of(&report, StepName::IamInfo), [Class::Readable]);
    assert_eq!(class_of(&report, StepName::IamRole), [Class::Readable]);
    assert_eq!(
        class_of(&report, StepName::Credentials),
        [Class::CredentialsObtained]
    );
    assert_eq!(class_of(&report, StepName::UserData), [Class::Exposed]);
    assert!(report.summary.sensitive);
    assert_eq!(report.summary.exit_code, 1);
    assert_eq!(
        report.summary.reachable,
        ["the credentials of role walk-node-role", "the user data"]
    );
    let creds = report
        .steps
        .iter()
        .find_map(|s| s.credentials.as_ref())
        .unwrap();
    assert_eq!(creds.access_key_id_prefix, "ASIA");
    let shown = everything(&report);
    for secret in [KEY_ID, SECRET, AWS_TOKEN, SESSION, USER_DATA_SECRET] {
        assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
    }
    assert!(shown.contains("\"cloud\": \"aws\""));
    assert!(shown.contains("region eu-west-1, account id 111122223333"));
    // The session token went on every GET after the PUT, never on the first GET.
    let seen = seen.lock().unwrap();
    let gets: Vec<&Seen> = seen.iter().filter(|r| r.method == "GET").collect();
    assert_eq!(gets[0].target, "/latest/meta-data/");
    assert!(gets[0].header("x-aws-ec2-metadata-token").is_none());
    assert!(
        gets[1..]
            .iter()
            .all(|r| r.header("x-aws-ec2-metadata-token") == Some(SESSION))
    );
    assert_eq!(gets.len(), 6, "{gets:?}");
}

fn aws_hop_limited(r: &Seen) -> Option<(u16, String)> {
    match (r.method.as_str(), r.target.as_str()) {
        ("PUT", _) => None, // the answer never arrives
        (_, "/latest/meta-data/") => Some((401, String::new())),
        _ => Some((401, String::new())),
    }
}

#[tokio::test]
async fn aws_token_timeout_names_the_hop_limit_and_stops() {
    let (endpoint, seen) = serve(aws_hop_limited).await;
    let report = probe(&config(Cloud::Aws, endpoint)).await;
    let put = report
        .steps
        .iter()
        .find(|s| s.name == StepName::Imdsv2Token)
        .unwrap();
    assert_eq!(put.class, Class::BlockedTimeout);
    assert!(put.detail.contains("hop limit"), "{}", put.detail);
    for name in [
        StepName::IdentityDocument,
        StepName::IamRole,
        StepName::Credentials,
        StepName::UserData,
    ] {
        assert_eq!(class_of(&report, name), [Class::NotChecked], "{name}");
    }
    assert!(!report.summary.sensitive);
    let seen = seen.lock().unwrap();
    let sent: Vec<&str> = seen.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(sent, ["GET", "PUT"], "nothing after the token PUT");
}

fn gcp_server(r: &Seen) -> Option<(u16, String)> {
    let flavor = r.header("metadata-flavor") == Some("Google");
    if r.target.starts_with("/0.1/") || r.target.starts_with("/computeMetadata/v1beta1/") {
        return Some((404, String::new()));
    }
    if !flavor {
        return Some((403, "Missing Metadata-Flavor:Google header.".to_owned()));
    }
    let path = r.target.strip_prefix("/computeMetadata/v1").unwrap();
    Some(match path {
        "/project/project-id" => (200, "walk-project".to_owned()),
        "/project/numeric-project-id" => (200, "123456789".to_owned()),
        "/instance/zone" => (200, "projects/123456789/zones/europe-west1-b".to_owned()),
        "/instance/name" => (200, "gke-walk-pool-1".to_owned()),
        "/instance/attributes/cluster-name" => (200, "walk".to_owned()),
        "/instance/attributes/" => (200, "cluster-name\nkube-env\n".to_owned()),
        "/instance/attributes/kube-env" => (
            200,
            format!("CA_CERT: caCertWalkValue\nKUBELET_CERT: kubeletCertWalkValue\nKUBELET_KEY: {KUBELET_KEY}\n"),
        ),
        "/instance/service-accounts/?recursive=true" => (
            200,
            r#"{"default":{"email":"walk@p.iam.gserviceaccount.com","scopes":["s1"]}}"#
                .to_owned(),
        ),
        "/instance/service-accounts/default/token" => (
            200,
            format!(r#"{{"access_token":"{GCP_TOKEN}","expires_in":3599,"token_type":"Bearer"}}"#),
        ),
        p if p.starts_with(
            "/instance/service-accounts/default/identity?audience=https%3A%2F%2Fimdsguard.invalid%2Fprobe&",
        ) =>
        {
            use base64::Engine as _;
            let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
            let jwt = format!(
                "{}.{}.{}",
                b64(r#"{"alg":"RS256","typ":"JWT"}"#),
                b64(r#"{"aud":"https://imdsguard.invalid/probe","iss":"https://accounts.google.com","exp":1900000000}"#),
                b64(ID_TOKEN_SIGNATURE)
            );
            (200, jwt)
        }
        _ => (404, String::new()),
    })
}

#[tokio::test]
async fn gcp_walk_reads_values_names_kube_env_keys_and_hides_tokens() {
    let (endpoint, seen) = serve(gcp_server).await;
    let report = probe(&config(Cloud::Gcp, endpoint)).await;
    let classes: Vec<(StepName, Class)> = report.steps.iter().map(|s| (s.name, s.class)).collect();
    assert_eq!(
        classes,
        [
            (StepName::TcpConnect, Class::Reachable),
            (StepName::MetadataWithoutHeader, Class::NeedsHeader),
            (StepName::ProjectId, Class::Readable),
            (StepName::NumericProjectId, Class::Readable),
            (StepName::Zone, Class::Readable),
            (StepName::InstanceName, Class::Readable),
            (StepName::ClusterName, Class::Readable),
            (StepName::Attributes, Class::Readable),
            (StepName::KubeEnv, Class::Exposed),
            (StepName::ServiceAccounts, Class::Readable),
            (StepName::Token, Class::TokenObtained),
            (StepName::IdentityToken, Class::TokenObtained),
            (StepName::LegacyV01, Class::Disabled),
            (StepName::LegacyV1beta1, Class::Disabled),
        ]
    );
    assert_eq!(
        report.summary.reachable,
        [
            "2 access token(s): the default service account's access token; an identity \
             token for https://imdsguard.invalid/probe",
            "kube-env (the kubelet's bootstrap settings)",
        ]
    );
    let shown = everything(&report);
    for secret in [
        GCP_TOKEN,
        KUBELET_KEY,
        "kubeletCertWalkValue",
        "caCertWalkValue",
    ] {
        assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
    }
    assert!(shown.contains("kubelet credentials: KUBELET_CERT, KUBELET_KEY"));
    assert!(shown.contains("\"cloud\": \"gcp\""));
    assert!(
        report
            .to_text()
            .starts_with("imdsguard probe --cloud gcp\n")
    );
    // The header went on every v1 request but the first; never on the legacy ones.
    let seen = seen.lock().unwrap();
    let http: Vec<&Seen> = seen.iter().filter(|r| !r.method.is_empty()).collect();
    assert_eq!(http.len(), 13);
    let (v1, legacy): (Vec<&Seen>, Vec<&Seen>) = http
        .iter()
        .partition(|r| r.target.starts_with("/computeMetadata/v1/"));
    assert_eq!(v1[0].target, "/computeMetadata/v1/project/project-id");
    assert!(v1[0].header("metadata-flavor").is_none());
    assert!(
        v1[1..]
            .iter()
            .all(|r| r.header("metadata-flavor") == Some("Google"))
    );
    assert_eq!(legacy.len(), 2);
    assert!(legacy.iter().all(|r| r.header("metadata-flavor").is_none()));
}

#[tokio::test]
async fn an_unreachable_endpoint_leaves_every_request_unsent() {
    // A port nothing listens on: refused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = BaseUrl::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    drop(listener);
    for cloud in [Cloud::Aws, Cloud::Gcp] {
        let report = probe(&config(cloud, endpoint.clone())).await;
        assert_eq!(report.steps[0].class, Class::BlockedRefused);
        assert!(
            report.steps[1..]
                .iter()
                .all(|s| s.class == Class::NotChecked
                    && s.detail == "not attempted: the TCP step ended blocked-refused")
        );
        assert!(!report.summary.sensitive);
    }
}

/// The core's verdict on a request the walk sent: whether its answer bears a secret
/// (`core::aws::secret_kind`, `core::gcp::secret_kind`).
fn core_secret(cloud: Cloud, r: &Seen) -> bool {
    let (path, query) = match r.target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (r.target.as_str(), None),
    };
    let headers = r.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes()));
    match cloud {
        Cloud::Aws => imdsguard_core::aws::validate(&r.method, path, query, headers)
            .map(|req| imdsguard_core::aws::secret_kind(&req).is_some())
            .unwrap_or_else(|e| panic!("{r:?} is not a valid EC2 IMDS request: {e:?}")),
        _ => imdsguard_core::gcp::validate(&r.method, path, query, headers)
            .map(|req| imdsguard_core::gcp::secret_kind(&req).is_some())
            .unwrap_or(false),
    }
}

#[tokio::test]
async fn the_steps_answering_secrets_are_the_ones_the_core_names() {
    // Each answered request of a full walk: sensitive exactly when the core says its
    // answer bears a secret. The IMDSv2 session token is the one exception: the core
    // names it (the proxy redacts it), the probe reports it as `session-token`, not
    // sensitive by itself (what it reads is judged by the steps after it).
    for (cloud, answer) in [
        (Cloud::Aws, aws_v2_only as Answer),
        (Cloud::Gcp, gcp_server),
    ] {
        let (endpoint, seen) = serve(answer).await;
        let report = probe(&config(cloud, endpoint)).await;
        let seen = seen.lock().unwrap();
        let http: Vec<&Seen> = seen.iter().filter(|r| !r.method.is_empty()).collect();
        let steps: Vec<&crate::Step> = report
            .steps
            .iter()
            .filter(|s| s.http_status.is_some())
            .collect();
        assert_eq!(http.len(), steps.len(), "{cloud}: one request a step");
        let mut secrets = 0;
        for (request, step) in http.iter().zip(steps) {
            assert!(
                step.target.ends_with(&request.target),
                "{step:?} {request:?}"
            );
            if step.http_status != Some(200) {
                continue;
            }
            let secret = core_secret(cloud, request);
            secrets += usize::from(secret);
            if step.name == StepName::Imdsv2Token {
                assert!(secret && step.class == Class::SessionToken);
                continue;
            }
            assert_eq!(
                step.class.is_sensitive(),
                secret,
                "{cloud}: {} ({}) vs the core",
                step.name,
                step.class
            );
        }
        assert!(
            secrets >= 3,
            "{cloud}: the walk reached the secrets ({secrets})"
        );
    }
}
