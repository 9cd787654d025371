//! `imdsguard probe --cloud aws` end to end against the EC2 IMDS emulator
//! (`imdsguard_emulator::aws`) on the real metadata addresses, 169.254.169.254:80 and
//! `[fd00:ec2::254]:80`, in the cloud namespace of a sandbox node
//! (`imdsguard_node::sandbox`) built inside a network namespace of the test's own
//! (`imdsguard_testkit::isolated_test`). The probe runs with its default endpoint in a
//! routed pod's namespace, one hop behind the node as on EKS, so the emulator's hop limit
//! (the token answer's IP TTL) acts as EC2's does; and on the node itself (hostNetwork).
//!
//! The secret test reads the emulator's credentials and user data through the emulator
//! itself and greps every output of the probe for them: text and JSON, stdout and stderr.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use imdsguard_core::target::Cloud;
use imdsguard_emulator::aws::{AwsConfig, AwsEmulator, AwsOptions, HttpTokens};
use imdsguard_node::netns::{Isolated, NetNamespace};
use imdsguard_node::sandbox::{self, PodSpec, Sandbox, Services};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_imdsguard");
const INNER: &str = "IMDSGUARD_PROBE_AWS_INNER";
const V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
const V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
const POD_IDENTITY: Ipv4Addr = Ipv4Addr::new(169, 254, 170, 23);

fn isolated(test: &str, body: impl FnOnce()) {
    imdsguard_testkit::isolated_test(test, INNER, &["nft", "ip", "nsenter", "unshare"], body);
}

/// The sandbox node with one dual-stack routed pod, `web`.
fn node() -> Sandbox {
    let isolated = Isolated::check(None).expect("an isolated namespace");
    let pods = [PodSpec::routed("web", Ipv4Addr::new(10, 244, 0, 11))
        .with_ipv6(Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 0x11))];
    Sandbox::build_for(&isolated, &pods, &sandbox::cloud_addresses(Cloud::Aws))
        .expect("the sandbox node")
}

/// The emulator on both IMDS addresses of `cloud` (seeded), stopped on drop.
struct Emulator {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), imdsguard_node::NodeError>>>,
}

impl Emulator {
    fn start(cloud: &NetNamespace, config: AwsConfig) -> Emulator {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = cloud.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let options = AwsOptions {
                    listen: vec![
                        SocketAddr::new(IpAddr::V4(V4), 80),
                        SocketAddr::new(IpAddr::V6(V6), 80),
                    ],
                    allow_metadata_address: true,
                    seed: Some(21),
                    shutdown_grace: Duration::from_millis(100),
                };
                let emulator = AwsEmulator::start(config, options)
                    .await
                    .expect("the emulator starts");
                ready_tx.send(()).expect("the test waits");
                let _ = stop_rx.await;
                emulator.shutdown().await;
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the emulator is ready");
        Emulator {
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", self.stdout, self.stderr))
    }
}

/// `imdsguard probe --cloud aws ARGS` in `ns` (the node's own namespace when `None`).
fn probe(ns: Option<&NetNamespace>, args: &[&str]) -> Run {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.path().display())).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    let out = cmd
        .arg("probe")
        .args([
            "--cloud",
            "aws",
            "--connect-timeout",
            "1s",
            "--timeout",
            "2s",
        ])
        .args(args)
        .env("RUST_LOG", "trace")
        .output()
        .expect("the binary runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `GET path` (IMDSv1) straight to the emulator from the node: the body.
fn read(path: &str) -> String {
    let mut s = TcpStream::connect((V4, 80)).expect("the emulator answers");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {V4}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
    body.to_owned()
}

fn classes(r: &Value) -> Vec<(String, String)> {
    r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["class"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, c)| (n.to_string(), c.to_string()))
        .collect()
}

fn step<'a>(r: &'a Value, name: &str) -> &'a Value {
    let found: Vec<&Value> = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "one {name} step in {r:#}");
    found[0]
}

fn fact(step: &Value, name: &str) -> String {
    step["facts"]
        .as_array()
        .unwrap_or_else(|| panic!("no facts in {step:#}"))
        .iter()
        .find(|f| f["name"] == name)
        .and_then(|f| f["value"].as_str())
        .unwrap_or_else(|| panic!("no fact {name} in {step:#}"))
        .to_owned()
}

const ROLE: &str = "imdsguard-demo-node-role";

#[test]
#[ignore = "needs netns"]
fn an_eks_pod_reads_the_node_role_credentials_and_no_secret_is_printed() {
    isolated(
        "an_eks_pod_reads_the_node_role_credentials_and_no_secret_is_printed",
        || {
            let sandbox = node();
            // EKS's usual node: IMDSv1 and IMDSv2, hop limit 2 (pods get tokens).
            let _emulator = Emulator::start(sandbox.cloud(), AwsConfig::default_eks());
            let mut agent = Services::new();
            agent
                .tcp_banner(
                    Some(sandbox.cloud()),
                    SocketAddr::new(IpAddr::V4(POD_IDENTITY), 80),
                    "pod identity",
                )
                .unwrap();
            let pod = sandbox.pod("web").unwrap().netns();
            let args = ["--ipv6", "--pod-identity"];
            let json = probe(Some(pod), &[&args[..], &["--format", "json"]].concat());
            let text = probe(Some(pod), &args);
            assert_eq!(
                json.code, 1,
                "credentials: exit 1\n{}\n{}",
                json.stdout, json.stderr
            );
            assert_eq!(text.code, 1);
            let r = json.json();
            assert_eq!(r["cloud"], "aws");
            assert_eq!(r["endpoint"], "http://169.254.169.254");
            assert_eq!(
                classes(&r),
                pairs(&[
                    ("tcp-connect", "reachable"),
                    ("tcp-connect-ipv6", "reachable"),
                    ("pod-identity-tcp", "reachable"),
                    // Nothing listens on [fd00:ec2::23] in this sandbox.
                    ("pod-identity-tcp", "blocked-refused"),
                    ("imdsv1", "readable"),
                    ("imdsv2-token", "session-token"),
                    ("identity-document", "readable"),
                    ("iam-info", "readable"),
                    ("iam-role", "readable"),
                    ("credentials", "credentials-obtained"),
                    ("user-data", "exposed"),
                ])
            );
            let doc = step(&r, "identity-document");
            assert_eq!(fact(doc, "region"), "us-west-2");
            assert_eq!(fact(doc, "account_id"), "111122223333");
            assert_eq!(fact(doc, "instance_id"), "i-0abc0000deadbeef1");
            assert_eq!(fact(doc, "instance_type"), "m5.large");
            assert!(
                fact(step(&r, "iam-info"), "instance_profile_arn")
                    .ends_with(":instance-profile/eks-imdsguard-demo-node-profile")
            );
            assert_eq!(fact(step(&r, "iam-role"), "role"), ROLE);
            let creds = step(&r, "credentials");
            assert_eq!(creds["resource"], ROLE);
            assert_eq!(creds["credentials"]["access_key_id_prefix"], "ASIA");
            assert_eq!(creds["credentials"]["secret_access_key_present"], true);
            assert!(creds["credentials"]["expiration"].is_string());
            assert_eq!(
                r["summary"]["reachable"],
                serde_json::json!([format!("the credentials of role {ROLE}"), "the user data"])
            );
            assert!(text.stdout.starts_with("imdsguard probe --cloud aws\n"));
            assert!(text.stdout.contains("AccessKeyId ASIA… (sha256:"));

            // The emulator's secrets, read from it directly (its credentials are stable
            // until near their expiry).
            let live: Value = serde_json::from_str(&read(&format!(
                "/latest/meta-data/iam/security-credentials/{ROLE}"
            )))
            .unwrap();
            let key_id = live["AccessKeyId"].as_str().unwrap().to_owned();
            assert_eq!(
                creds["credentials"]["access_key_id_fingerprint"],
                imdsguard_core::token::fingerprint(&key_id),
                "the probe saw the credentials the emulator serves"
            );
            let mut secrets = vec![
                key_id,
                live["SecretAccessKey"].as_str().unwrap().to_owned(),
                live["Token"].as_str().unwrap().to_owned(),
                // Every session token the emulator issues starts so.
                "AQAEAFAKE".to_owned(),
            ];
            let user_data = read("/latest/user-data");
            secrets.extend(
                user_data
                    .split_whitespace()
                    .filter(|w| w.len() >= 16)
                    .map(str::to_owned),
            );
            assert!(secrets.len() >= 6, "{secrets:?}");
            for (what, output) in [
                ("JSON stdout", &json.stdout),
                ("JSON stderr", &json.stderr),
                ("text stdout", &text.stdout),
                ("text stderr", &text.stderr),
            ] {
                for secret in &secrets {
                    assert!(
                        !output.contains(secret.as_str()),
                        "{what} holds {secret}:\n{output}"
                    );
                }
            }
        },
    );
}

#[test]
#[ignore = "needs netns"]
fn imdsv2_required_with_hop_limit_1_keeps_pods_out_but_not_the_node() {
    isolated(
        "imdsv2_required_with_hop_limit_1_keeps_pods_out_but_not_the_node",
        || {
            let sandbox = node();
            let hardened = AwsConfig {
                http_tokens: HttpTokens::Required,
                hop_limit: 1,
                ..AwsConfig::default_eks()
            };
            let _emulator = Emulator::start(sandbox.cloud(), hardened);
            let pod = sandbox.pod("web").unwrap().netns();
            let run = probe(Some(pod), &["--format", "json"]);
            assert_eq!(
                run.code, 0,
                "nothing sensitive from the pod\n{}",
                run.stdout
            );
            let r = run.json();
            assert_eq!(
                classes(&r),
                pairs(&[
                    ("tcp-connect", "reachable"),
                    ("imdsv1", "needs-header"),
                    ("imdsv2-token", "blocked-timeout"),
                    ("identity-document", "not-checked"),
                    ("iam-info", "not-checked"),
                    ("iam-role", "not-checked"),
                    ("credentials", "not-checked"),
                    ("user-data", "not-checked"),
                ])
            );
            let put = step(&r, "imdsv2-token");
            assert!(
                put["detail"].as_str().unwrap().contains("hop limit"),
                "{put:#}"
            );
            // The node's own processes are no hop away: IMDSv2 works for them.
            let node = probe(None, &["--format", "json"]);
            assert_eq!(node.code, 1, "{}", node.stdout);
            let r = node.json();
            assert_eq!(step(&r, "imdsv1")["class"], "needs-header");
            assert_eq!(step(&r, "imdsv2-token")["class"], "session-token");
            assert_eq!(step(&r, "credentials")["class"], "credentials-obtained");
        },
    );
}

#[test]
#[ignore = "needs netns"]
fn the_ipv6_endpoint_is_walked_and_a_blocked_path_is_nothing_sensitive() {
    isolated(
        "the_ipv6_endpoint_is_walked_and_a_blocked_path_is_nothing_sensitive",
        || {
            let sandbox = node();
            let _emulator = Emulator::start(sandbox.cloud(), AwsConfig::default_eks());
            let pod = sandbox.pod("web").unwrap().netns();
            let v6 = probe(
                Some(pod),
                &["--endpoint", "http://[fd00:ec2::254]", "--format", "json"],
            );
            assert_eq!(v6.code, 1, "{}\n{}", v6.stdout, v6.stderr);
            let r = v6.json();
            assert_eq!(r["endpoint"], "http://[fd00:ec2::254]");
            assert_eq!(step(&r, "tcp-connect")["target"], "[fd00:ec2::254]:80");
            assert_eq!(step(&r, "imdsv2-token")["class"], "session-token");
            assert_eq!(step(&r, "credentials")["class"], "credentials-obtained");

            // The node drops the pods' IPv4 IMDS traffic (as a NetworkPolicy or
            // imdsguard's table would); IPv6 stays open, and the probe says both.
            let mut nft = Command::new("nft")
                .args(["-f", "-"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .expect("nft runs");
            nft.stdin
                .take()
                .unwrap()
                .write_all(
                    b"table inet probe_aws_test {\n chain forward_imds {\n  type filter hook forward priority 0;\n  ip daddr 169.254.169.254 tcp dport 80 drop\n }\n}\n",
                )
                .unwrap();
            assert!(nft.wait().unwrap().success(), "nft refused the table");
            let run = probe(Some(pod), &["--ipv6", "--format", "json"]);
            assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
            let r = run.json();
            assert_eq!(step(&r, "tcp-connect")["class"], "blocked-timeout");
            assert_eq!(step(&r, "tcp-connect-ipv6")["class"], "reachable");
            for s in r["steps"].as_array().unwrap().iter().skip(2) {
                assert_eq!(s["class"], "not-checked", "{s:#}");
            }
            assert_eq!(r["summary"]["sensitive"], false);
            // An IPv4-mapped spelling of the address is the same, blocked, address.
            let mapped = probe(
                Some(pod),
                &[
                    "--endpoint",
                    "http://[::ffff:169.254.169.254]",
                    "--format",
                    "json",
                ],
            );
            let r = mapped.json();
            assert_eq!(r["endpoint"], "http://169.254.169.254");
            assert_eq!(step(&r, "tcp-connect")["class"], "blocked-timeout");
            // The table goes with the namespace when the test process exits.
        },
    );
}
