//! Black-box: `imdsguard emulate --cloud aws` as a process on 127.0.0.1 (and [::1]), talked
//! to with raw HTTP/1.1; the flags of other clouds refused; SIGTERM stops it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_imdsguard");
const CREDS: &str = "/latest/meta-data/iam/security-credentials/imdsguard-demo-node-role";

/// The emulator process, killed on drop (a failing test leaves nothing running).
struct Emulate {
    child: Child,
    addrs: Vec<SocketAddr>,
}

impl Emulate {
    fn start(args: &[&str]) -> Emulate {
        let mut child = Command::new(BIN)
            .arg("emulate")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("imdsguard runs");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut emulate = Emulate {
            child,
            addrs: Vec::new(),
        };
        let listens = args.iter().filter(|a| **a == "--listen").count().max(1);
        for _ in 0..listens {
            let line = lines
                .next()
                .expect("a line per listener")
                .expect("UTF-8 output");
            let addr = line
                .strip_prefix("imds http://")
                .unwrap_or_else(|| panic!("`imds http://ADDR`, not {line:?}"));
            let addr: SocketAddr = addr.parse().expect("an address");
            assert!(addr.ip().is_loopback(), "{addr}");
            emulate.addrs.push(addr);
        }
        emulate
    }

    /// SIGTERM, then the exit status and standard error.
    fn stop(mut self) -> (Option<i32>, String) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(ok.success());
        let status = self.child.wait().unwrap();
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (status.code(), stderr)
    }
}

impl Drop for Emulate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    assert!(addr.ip().is_loopback());
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a whole answer");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Reply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

#[test]
fn emulate_cloud_aws_serves_imdsv2_required_on_both_families() {
    let e = Emulate::start(&[
        "--cloud",
        "aws",
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "[::1]:0",
        "--seed",
        "7",
        "--http-tokens",
        "required",
        "--hop-limit",
        "1",
    ]);
    let mut secrets = Vec::new();
    for addr in e.addrs.clone() {
        let r = send(addr, "GET", CREDS, &[]);
        assert_eq!(
            r.status, 401,
            "{addr}: IMDSv1 refused when tokens are required"
        );
        assert!(r.body.contains("401 - Unauthorized"), "{}", r.body);
        let put = send(
            addr,
            "PUT",
            "/latest/api/token",
            &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
        );
        assert_eq!(put.status, 200);
        assert_eq!(put.header("X-Imdsguard-Hop-Limit"), Some("1"));
        let token = put.body.clone();
        let creds = send(addr, "GET", CREDS, &[("X-aws-ec2-metadata-token", &token)]);
        assert_eq!(creds.status, 200);
        let j: serde_json::Value = serde_json::from_str(&creds.body).unwrap();
        let key = j["AccessKeyId"].as_str().unwrap().to_string();
        assert!(key.starts_with("ASIA"), "{key}");
        let region = send(
            addr,
            "GET",
            "/latest/meta-data/placement/region",
            &[("X-aws-ec2-metadata-token", &token)],
        );
        assert_eq!((region.status, region.body.as_str()), (200, "us-west-2"));
        let xff = send(
            addr,
            "PUT",
            "/latest/api/token",
            &[
                ("X-aws-ec2-metadata-token-ttl-seconds", "60"),
                ("X-Forwarded-For", "10.0.0.9"),
            ],
        );
        assert_eq!(xff.status, 403);
        secrets.extend([
            token,
            key,
            j["SecretAccessKey"].as_str().unwrap().to_string(),
        ]);
    }
    let (code, stderr) = e.stop();
    assert_eq!(code, Some(0), "SIGTERM stops it cleanly:\n{stderr}");
    assert!(
        stderr.contains("security-credentials"),
        "the request log:\n{stderr}"
    );
    for s in &secrets {
        assert!(
            !stderr.contains(s.as_str()),
            "a secret in the log:\n{stderr}"
        );
    }
}

#[test]
fn flags_of_another_cloud_are_refused() {
    for (args, flag, owner) in [
        (
            &["--cloud", "aws", "--wireserver", "127.0.0.1:8080"][..],
            "--wireserver",
            "azure",
        ),
        (
            &["--cloud", "aws", "--no-throttle"][..],
            "--no-throttle",
            "azure",
        ),
        (
            &["--cloud", "gcp", "--fail-rate", "0.5"][..],
            "--fail-rate",
            "azure",
        ),
        (&["--hop-limit", "2"][..], "--hop-limit", "aws"),
        (
            &["--cloud", "gcp", "--http-tokens", "required"][..],
            "--http-tokens",
            "aws",
        ),
        (
            &["--cloud", "aws", "--max-wait", "2s"][..],
            "--max-wait",
            "gcp",
        ),
    ] {
        let out = Command::new(BIN)
            .arg("emulate")
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("{flag} ({owner} only)")),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "nothing started: {args:?}");
    }
    for args in [
        &["--cloud", "aws", "--hop-limit", "0"][..],
        &["--cloud", "aws", "--hop-limit", "65"][..],
        &["--cloud", "aws", "--http-tokens", "maybe"][..],
        &["--cloud", "ibm"][..],
    ] {
        let out = Command::new(BIN)
            .arg("emulate")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "a usage error: {args:?}");
    }
    let out = Command::new(BIN)
        .args([
            "emulate",
            "--cloud",
            "aws",
            "--listen",
            "169.254.169.254:80",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("metadata address"), "{stderr}");
}

#[test]
fn the_default_aws_configuration_prints_and_reads_back() {
    let out = Command::new(BIN)
        .args([
            "emulate",
            "--cloud",
            "aws",
            "--print-default-config",
            "--hop-limit",
            "3",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(yaml.contains("hop_limit: 3"), "{yaml}");
    assert!(yaml.contains("http_tokens: optional"), "{yaml}");
    let dir = std::env::temp_dir().join(format!("imdsguard-emulate-aws-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("instance.yaml");
    std::fs::write(
        &file,
        yaml.replace("region: us-west-2", "region: eu-central-1"),
    )
    .unwrap();
    let e = Emulate::start(&[
        "--cloud",
        "aws",
        "--listen",
        "127.0.0.1:0",
        "--config",
        file.to_str().unwrap(),
    ]);
    let r = send(e.addrs[0], "GET", "/latest/meta-data/placement/region", &[]);
    assert_eq!(r.body, "eu-central-1");
    let put = send(
        e.addrs[0],
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "5")],
    );
    assert_eq!(put.header("X-Imdsguard-Hop-Limit"), Some("3"));
    drop(e);
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(dir.with_extension("bad.yaml"), "hop_limit: 99\n").unwrap();
    let out = Command::new(BIN)
        .args(["emulate", "--cloud", "aws", "--config"])
        .arg(dir.with_extension("bad.yaml"))
        .output()
        .unwrap();
    std::fs::remove_file(dir.with_extension("bad.yaml")).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("hop_limit 99"), "{stderr}");
}
