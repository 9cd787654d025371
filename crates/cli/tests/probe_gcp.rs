//! `imdsguard probe --cloud gcp` end to end against the GCE metadata server emulator
//! (`imdsguard_emulator::gcp`) on the real metadata addresses, 169.254.169.254:80 and
//! `[fd20:ce::254]:80`, inside a network namespace of the test's own
//! (`imdsguard_testkit::isolated_test`: only `lo`, the addresses added to it there), so
//! the probe runs with its default endpoint and nothing can leave the machine.
//!
//! The secret test reads the emulator's secrets through the emulator itself (kube-env's
//! values, the shape of its tokens) and greps every output of the probe for them: text
//! and JSON, stdout and stderr.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use imdsguard_emulator::gcp::{GcpConfig, GcpEmulator, GcpOptions};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_imdsguard");
const INNER: &str = "IMDSGUARD_PROBE_GCP_INNER";
const V4: &str = "169.254.169.254";
const V6: &str = "fd20:ce::254";

/// Runs `body` inside a fresh namespace with the metadata addresses on `lo`.
fn isolated(test: &str, body: impl FnOnce()) {
    imdsguard_testkit::isolated_test(test, INNER, &["unshare", "ip", "nft"], || {
        // `nodad`: an IPv6 address is tentative (bind fails, EADDRNOTAVAIL) until
        // duplicate address detection has run, even on `lo` (CI once lost that race).
        for args in [
            vec!["-4", "addr", "add", &format!("{V4}/32"), "dev", "lo"],
            vec![
                "-6",
                "addr",
                "add",
                &format!("{V6}/128"),
                "dev",
                "lo",
                "nodad",
            ],
        ] {
            let addr = args[3];
            let out = Command::new("ip").args(&args).output().expect("ip runs");
            assert!(
                out.status.success(),
                "ip addr add {addr}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        body()
    });
}

/// The emulator on both metadata addresses (seeded), stopped on drop.
struct Emulator {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Emulator {
    fn start() -> Emulator {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let options = GcpOptions {
                    listen: vec![
                        SocketAddr::new(V4.parse().unwrap(), 80),
                        SocketAddr::new(V6.parse().unwrap(), 80),
                    ],
                    allow_metadata_address: true,
                    seed: Some(12),
                    shutdown_grace: Duration::from_millis(100),
                    ..GcpOptions::default()
                };
                let emulator = GcpEmulator::start(GcpConfig::default_gke(), options)
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

fn probe(args: &[&str]) -> Run {
    let out = Command::new(BIN)
        .arg("probe")
        .args([
            "--cloud",
            "gcp",
            "--connect-timeout",
            "1s",
            "--timeout",
            "3s",
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

/// `GET path` with `Metadata-Flavor: Google` straight to the emulator: the body.
fn read(path: &str) -> String {
    let mut s = TcpStream::connect((V4, 80)).expect("the emulator answers");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {V4}\r\nMetadata-Flavor: Google\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
    body.to_owned()
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

/// Words shaped like a JWT (three base64url parts, the first `eyJ…`).
fn jwts(text: &str) -> Vec<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
        .filter(|w| w.starts_with("eyJ") && w.split('.').count() == 3)
        .collect()
}

const WALKED: [(&str, &str); 15] = [
    ("tcp-connect", "reachable"),
    ("tcp-connect-ipv6", "reachable"),
    ("metadata-without-header", "needs-header"),
    ("project-id", "readable"),
    ("numeric-project-id", "readable"),
    ("zone", "readable"),
    ("instance-name", "readable"),
    ("cluster-name", "readable"),
    ("attributes", "readable"),
    ("kube-env", "exposed"),
    ("service-accounts", "readable"),
    ("token", "token-obtained"),
    ("identity-token", "token-obtained"),
    ("legacy-v0.1", "disabled"),
    ("legacy-v1beta1", "disabled"),
];

#[test]
#[ignore = "needs netns"]
fn the_gke_path_is_walked_on_the_metadata_addresses_and_no_secret_is_printed() {
    isolated(
        "the_gke_path_is_walked_on_the_metadata_addresses_and_no_secret_is_printed",
        || {
            let _emulator = Emulator::start();
            let json = probe(&["--ipv6", "--format", "json"]);
            let text = probe(&["--ipv6"]);
            assert_eq!(json.code, 1, "tokens and kube-env: exit 1\n{}", json.stderr);
            assert_eq!(text.code, 1);
            let r = json.json();
            assert_eq!(r["cloud"], "gcp");
            assert_eq!(r["endpoint"], "http://169.254.169.254");
            let expected: Vec<(String, String)> = WALKED
                .iter()
                .map(|(n, c)| (n.to_string(), c.to_string()))
                .collect();
            assert_eq!(classes(&r), expected);
            assert_eq!(
                fact(step(&r, "project-id"), "project_id"),
                "imdsguard-emulated"
            );
            assert_eq!(fact(step(&r, "zone"), "zone"), "us-central1-c");
            assert_eq!(
                fact(step(&r, "cluster-name"), "cluster_name"),
                "imdsguard-gke"
            );
            assert_eq!(fact(step(&r, "attributes"), "kube_env_listed"), "true");
            assert_eq!(
                fact(step(&r, "kube-env"), "kube_env_credential_keys"),
                "KUBE_PROXY_TOKEN, KUBELET_CERT, KUBELET_KEY"
            );
            let token = step(&r, "token");
            assert_eq!(token["token"]["token_type"], "Bearer");
            assert!(token["token"]["claims"].is_null());
            assert!(fact(token, "expires_in").parse::<u64>().unwrap() > 0);
            let identity = step(&r, "identity-token");
            assert_eq!(
                identity["token"]["claims"]["aud"],
                "https://imdsguard.invalid/probe"
            );
            assert_eq!(
                identity["token"]["claims"]["iss"],
                "https://accounts.google.com"
            );
            let summary = r["summary"]["reachable"].as_array().unwrap();
            assert_eq!(summary.len(), 2, "{summary:?}");
            assert!(text.stdout.starts_with("imdsguard probe --cloud gcp\n"));
            assert!(text.stdout.contains("Result: SENSITIVE DATA REACHABLE"));
            assert!(
                text.stdout
                    .contains("kubelet credentials: KUBE_PROXY_TOKEN, KUBELET_CERT, KUBELET_KEY")
            );

            // The emulator's secrets, read from it directly.
            let kube_env = read("/computeMetadata/v1/instance/attributes/kube-env");
            let mut secrets: Vec<String> = kube_env
                .lines()
                .filter_map(|l| l.split_once(": ").map(|(_, v)| v.trim().to_owned()))
                .filter(|v| v.len() >= 16)
                .collect();
            assert!(
                secrets.len() >= 4,
                "kube-env's fake credentials: {kube_env}"
            );
            let sample: Value = serde_json::from_str(&read(
                "/computeMetadata/v1/instance/service-accounts/default/token",
            ))
            .unwrap();
            let sample = sample["access_token"].as_str().unwrap();
            assert!(sample.starts_with("ya29."), "{sample}");
            let identity_sample =
                read("/computeMetadata/v1/instance/service-accounts/default/identity?audience=x");
            assert_eq!(jwts(&identity_sample).len(), 1, "{identity_sample}");
            secrets.push("ya29.".to_owned());
            let outputs = [
                ("JSON stdout", &json.stdout),
                ("JSON stderr", &json.stderr),
                ("text stdout", &text.stdout),
                ("text stderr", &text.stderr),
            ];
            for (what, output) in outputs {
                for secret in &secrets {
                    assert!(
                        !output.contains(secret.as_str()),
                        "{what} holds {secret}:\n{output}"
                    );
                }
                assert!(jwts(output).is_empty(), "{what} holds a JWT:\n{output}");
            }
        },
    );
}

#[test]
#[ignore = "needs netns"]
fn the_ipv6_and_the_ipv4_mapped_endpoints_are_walked_too() {
    isolated(
        "the_ipv6_and_the_ipv4_mapped_endpoints_are_walked_too",
        || {
            let _emulator = Emulator::start();
            let v6 = probe(&["--endpoint", "http://[fd20:ce::254]", "--format", "json"]);
            assert_eq!(v6.code, 1, "{}", v6.stderr);
            let r = v6.json();
            assert_eq!(r["endpoint"], "http://[fd20:ce::254]");
            assert_eq!(step(&r, "tcp-connect")["target"], "[fd20:ce::254]:80");
            assert_eq!(step(&r, "kube-env")["class"], "exposed");
            assert_eq!(step(&r, "token")["class"], "token-obtained");
            let mapped = probe(&[
                "--endpoint",
                "http://[::ffff:169.254.169.254]",
                "--format",
                "json",
            ]);
            assert_eq!(mapped.code, 1, "{}", mapped.stderr);
            assert_eq!(mapped.json()["endpoint"], "http://169.254.169.254");
            // Another cloud's address is refused before anything is sent.
            let other = probe(&["--endpoint", "http://168.63.129.16"]);
            assert_eq!(other.code, 2);
            assert!(
                other.stderr.contains("another cloud's metadata address"),
                "{}",
                other.stderr
            );
        },
    );
}

#[test]
#[ignore = "needs netns"]
fn a_dropped_metadata_address_is_blocked_and_nothing_is_sensitive() {
    isolated(
        "a_dropped_metadata_address_is_blocked_and_nothing_is_sensitive",
        || {
            let _emulator = Emulator::start();
            let nft = Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                child.stdin.take().unwrap().write_all(
                    b"table inet probe_gcp_test {\n chain out {\n  type filter hook output priority 0;\n  ip daddr 169.254.169.254 tcp dport 80 drop\n }\n}\n",
                )?;
                child.wait()
            })
            .expect("nft runs");
            assert!(nft.success(), "nft refused the table");
            let run = probe(&["--ipv6", "--format", "json"]);
            assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
            let r = run.json();
            assert_eq!(step(&r, "tcp-connect")["class"], "blocked-timeout");
            // The IPv6 address is another path: still open.
            assert_eq!(step(&r, "tcp-connect-ipv6")["class"], "reachable");
            for s in r["steps"].as_array().unwrap().iter().skip(2) {
                assert_eq!(s["class"], "not-checked", "{s:#}");
            }
            assert_eq!(r["summary"]["sensitive"], false);
            // The namespace (and its table) goes with the test process.
        },
    );
}
