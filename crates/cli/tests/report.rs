//! Black-box tests of `imdsguard report`: decision logs written by a real `imdsguard
//! proxy --log-format json` (with the emulator, both on 127.0.0.1 in a network namespace
//! of their own; pods played from loopback source addresses by a small python3 client),
//! enforcing and with `--dry-run`; the log of a real `imdsguard agent run --mode block
//! --dry-run --log-format json` on the sandbox node (`imdsguard_node::sandbox`, in a
//! network namespace of its own, the emulator on the real IMDS address in its cloud
//! namespace); and hand-written logs read from files and standard input.

#[path = "support/proxy_setup.rs"]
mod proxy_setup;
#[path = "support/run.rs"]
mod run;
#[path = "support/sandbox_cloud.rs"]
mod sandbox_cloud;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imdsguard_core::imds::IMDS_ADDRESS;
use imdsguard_node::netns::Isolated;
use imdsguard_node::sandbox::{Sandbox, lab_pods};
use imdsguard_testkit::Netns;
use proxy_setup::{ARM, BIN, KUBELET_CLIENT_ID, START_EMULATOR, VAULT, rules, token_path};
use run::run_with_stdin;
use sandbox_cloud::Cloud;
use serde_json::{Value, json};

const PODS: &str = "- ip: 127.0.0.2
  namespace: payments
  name: api-7d9f8c6b5d-x2x4q
  serviceAccount: api
- ip: 127.0.0.3
  namespace: web
  name: frontend-0
";

/// One GET from a loopback source address; prints the status only (never a body, so
/// never a token).
const CLIENT: &str = r#"
import http.client, sys
source, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
c.request("GET", path, headers={"Metadata": "true"})
r = c.getresponse()
r.read()
print(r.status)
"#;

/// After [`START_EMULATOR`]: starts the proxy (with `$PROXY_FLAGS`) writing its log to
/// `$DIR/decisions.log`, sends the requests, stops the proxy with SIGTERM (its log is
/// flushed) and prints `== NAME STATUS` per request.
const SCRIPT: &str = r#"
"$BIN" proxy --listen 127.0.0.1:8170 --no-admin --upstream http://127.0.0.1:8169 \
    --rules "$DIR/rules.yaml" --pods "$DIR/pods.yaml" --log-format json $PROXY_FLAGS \
    >"$DIR/proxy.out" 2>"$DIR/decisions.log" &
px=$!
started "$DIR/proxy.out" proxy proxy "$DIR/decisions.log"
req() { echo "== $1 $(python3 "$DIR/client.py" "$2" 8170 "$3")"; }
req allowed 127.0.0.2 "$ARM_PATH"
req versions 127.0.0.3 /metadata/versions
req other-audience 127.0.0.2 "$VAULT_PATH"
req other-pod 127.0.0.3 "$ARM_PATH"
req other-pod 127.0.0.3 "$ARM_PATH"
kill -TERM $px
wait $px
echo "proxy-exit $?"
px=
"#;

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("imdsguard-report-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Scratch(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the proxy with `flags` in a namespace of its own; the statuses by request name,
/// and the decision log.
fn proxy_run(test: &str, dir: &Scratch, flags: &str) -> (Vec<(String, u16)>, PathBuf) {
    let ns = Netns::require(test);
    dir.write("rules.yaml", &rules());
    dir.write("pods.yaml", PODS);
    dir.write("client.py", CLIENT);
    let out = ns.run(
        &format!("{START_EMULATOR}{SCRIPT}"),
        &[
            ("BIN", BIN),
            ("DIR", dir.path().to_str().expect("UTF-8 temp dir")),
            ("PROXY_FLAGS", flags),
            ("ARM_PATH", &token_path(ARM)),
            ("VAULT_PATH", &token_path(VAULT)),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("proxy-exit 0"), "{stdout}\n{stderr}");
    let statuses = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("== "))
        .map(|l| {
            let (name, status) = l.rsplit_once(' ').expect("NAME STATUS");
            (name.to_string(), status.parse().expect("a status"))
        })
        .collect();
    (statuses, dir.path().join("decisions.log"))
}

fn report(args: &[&str]) -> (String, String) {
    let out = Command::new(BIN)
        .arg("report")
        .args(args)
        .output()
        .expect("run imdsguard report");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8");
    let stderr = String::from_utf8(out.stderr).expect("UTF-8");
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    (stdout, stderr)
}

fn report_json(args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["--format", "json"]);
    let (stdout, stderr) = report(&args);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"))
}

/// What both runs must report: the two refused requests, each under its workload, with
/// the rule that came closest; nothing of the allowed ones.
fn check_refusals(r: &Value, decision: &str) {
    let key = if decision == "deny" {
        "deny"
    } else {
        "would_deny"
    };
    assert_eq!(r["totals"]["allow"], 2, "{r:#}");
    assert_eq!(r["totals"][key], 3, "{r:#}");
    assert_eq!(r["totals"]["records"], 5, "{r:#}");
    assert_eq!(r["nothing_would_break"], false);
    let workloads = r["workloads"].as_array().expect("workloads");
    let names: Vec<String> = workloads
        .iter()
        .map(|w| {
            format!(
                "{}/{}",
                w["namespace"].as_str().unwrap(),
                w["workload"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(names, ["payments/api", "web/frontend"], "{r:#}");

    let api = &workloads[0];
    assert_eq!(api["caller"], "pod");
    assert_eq!(api["pods"], json!(["api-7d9f8c6b5d-x2x4q"]));
    assert_eq!(api["service_accounts"], json!(["api"]));
    assert_eq!(api["count"], 1);
    let q = &api["requests"][0];
    assert_eq!(api["requests"].as_array().unwrap().len(), 1, "{r:#}");
    assert_eq!(q["endpoint"], "identity-token");
    assert_eq!(q["path"], "/metadata/identity/oauth2/token");
    assert_eq!(q["resource"], "https://vault.azure.net");
    assert_eq!(q["identity"], format!("client_id={KUBELET_CLIENT_ID}"));
    assert_eq!(q["rule"], "payments-api-arm", "the closest rule: {r:#}");
    assert!(
        q["reason"]
            .as_str()
            .is_some_and(|s| s.contains("vault.azure.net")),
        "{r:#}"
    );
    assert_eq!(q[key], 1);
    assert!(
        q["first_seen"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{r:#}"
    );

    let web = &workloads[1];
    assert_eq!(web["pods"], json!(["frontend-0"]));
    assert_eq!(web["count"], 2);
    let q = &web["requests"][0];
    assert_eq!(q["resource"], "https://management.azure.com/");
    assert_eq!(q["rule"], "default-deny");
    assert_eq!(q["count"], 2);
    assert_eq!(q[key], 2);
    assert!(q["first_seen"].as_str() <= q["last_seen"].as_str(), "{r:#}");
    // The allowed requests are nowhere.
    let text = r["workloads"].to_string();
    assert!(!text.contains("/metadata/versions"), "{r:#}");
}

#[test]
#[ignore = "needs netns"]
fn a_real_proxy_log_reports_the_denied_requests_and_not_the_allowed_ones() {
    let dir = Scratch::new("enforcing");
    let (statuses, log) = proxy_run("report_enforcing", &dir, "");
    let want: Vec<(String, u16)> = [
        ("allowed", 200),
        ("versions", 200),
        ("other-audience", 403),
        ("other-pod", 403),
        ("other-pod", 403),
    ]
    .iter()
    .map(|(n, s)| (n.to_string(), *s))
    .collect();
    assert_eq!(statuses, want);
    let log = log.to_str().unwrap();
    let r = report_json(&[log]);
    check_refusals(&r, "deny");
    // The proxy's other log lines (start, stop) are skipped, none malformed.
    assert!(r["lines"]["skipped"].as_u64().unwrap() > 0, "{r:#}");
    assert_eq!(r["lines"]["malformed"], 0);
    assert_eq!(r["lines"]["decisions"], 5);

    // The table names the same workloads, paths and rules.
    let (table, _) = report(&[log]);
    assert!(
        table.starts_with("5 decision record(s): 2 allowed, 0 would be denied (dry run), 3 denied"),
        "{table}"
    );
    for want in [
        "payments/api",
        "api-7d9f8c6b5d-x2x4q",
        "web/frontend",
        "frontend-0",
        "identity-token /metadata/identity/oauth2/token",
        "resource https://vault.azure.net",
        "payments-api-arm",
        "default-deny",
        "2 denied",
    ] {
        assert!(table.contains(want), "{want} in:\n{table}");
    }
    assert!(!table.contains("/metadata/versions"), "{table}");
}

/// A decision line as the proxy writes it.
fn line(ts: &str, pod: &str, path: &str, decision: &str, rule: &str) -> String {
    let ns = pod.split_once('/').map_or("-", |p| p.0);
    json!({"timestamp": ts, "level": "INFO", "fields": {"message": "decision",
        "peer": "10.244.1.5", "pod": pod, "namespace": ns, "service_account": "default",
        "method": "GET", "path": path, "endpoint": "instance", "decision": decision,
        "rule": rule, "status": 403, "latency_us": 9, "reason": "no rule selects it",
        "redacted": false}, "target": "imdsguard::decision"})
    .to_string()
}

#[test]
fn files_and_standard_input_add_up_and_bad_lines_are_named() {
    let dir = Scratch::new("files");
    let a = dir.write(
        "a.log",
        &[
            line(
                "2026-11-18T10:00:00Z",
                "shop/cart-7d9f8c6b5d-x2x4q",
                "/metadata/instance",
                "deny",
                "default-deny",
            ),
            "2026-11-18T10:00:00Z  INFO imdsguard: proxy listening".into(),
            "{\"timestamp\": truncated".into(),
            line(
                "2026-11-18T10:00:00Z",
                "shop/web-0",
                "/metadata/versions",
                "allow",
                "basics",
            ),
        ]
        .join("\n"),
    );
    let b = dir.write(
        "b.log",
        &(line(
            "2026-11-18T12:00:00Z",
            "shop/cart-7d9f8c6b5d-q8w2z",
            "/metadata/instance",
            "deny",
            "default-deny",
        ) + "\n"),
    );
    let stdin = line(
        "2026-11-18T11:00:00Z",
        "-",
        "/metadata/instance",
        "deny",
        "unknown-source",
    );
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let r = run_with_stdin(&["report", a, "-", b, "--format", "json"], &stdin);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    assert_eq!(v["lines"]["read"], 6, "{v:#}");
    assert_eq!(v["lines"]["decisions"], 4);
    assert_eq!(v["lines"]["skipped"], 1);
    assert_eq!(v["lines"]["malformed"], 1);
    assert_eq!(v["malformed"][0]["source"], a);
    assert_eq!(v["malformed"][0]["line"], 3);
    assert!(
        r.stderr.contains(&format!(
            "{a}:3: skipped a malformed line: not a JSON object"
        )),
        "{}",
        r.stderr
    );
    assert_eq!(v["totals"]["deny"], 3);
    assert_eq!(v["totals"]["allow"], 1);
    let w = &v["workloads"];
    assert_eq!(w.as_array().unwrap().len(), 2, "{v:#}");
    assert_eq!(w[0]["workload"], "cart");
    assert_eq!(
        w[0]["pods"],
        json!(["cart-7d9f8c6b5d-q8w2z", "cart-7d9f8c6b5d-x2x4q"])
    );
    let q = &w[0]["requests"][0];
    assert_eq!(q["count"], 2);
    assert_eq!(q["first_seen"], "2026-11-18T10:00:00Z");
    assert_eq!(q["last_seen"], "2026-11-18T12:00:00Z");
    assert_eq!(w[1]["caller"], "unknown");
    assert_eq!(w[1]["workload"], "10.244.1.5");
    assert_eq!(w[1]["requests"][0]["rule"], "unknown-source");

    // No file: standard input.
    let r = run_with_stdin(&["report"], &stdin);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("unknown caller 10.244.1.5"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("unknown-source"), "{}", r.stdout);
}

#[test]
fn nothing_would_break_when_every_request_was_allowed() {
    let text = line(
        "2026-11-18T10:00:00Z",
        "shop/web-0",
        "/metadata/versions",
        "allow",
        "basics",
    );
    let r = run_with_stdin(&["report"], &text);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("Nothing would break"), "{}", r.stdout);
    let r = run_with_stdin(&["report", "--format", "json"], &text);
    let v = r.json();
    assert_eq!(v["nothing_would_break"], true);
    assert_eq!(v["workloads"], json!([]));

    // A text-format log: nothing read, and the report says why.
    let r = run_with_stdin(
        &["report"],
        "2026-11-18T10:00:00Z  INFO imdsguard::decision: decision peer=10.0.0.1 pod=- decision=deny\n",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("--log-format json"), "{}", r.stdout);
}

#[test]
fn an_unreadable_input_is_an_error_naming_it() {
    let dir = Scratch::new("unreadable");
    let missing = dir.path().join("missing.log");
    for path in [missing.as_path(), dir.path()] {
        let r = run_with_stdin(&["report", path.to_str().unwrap()], "");
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(
            r.stderr
                .contains(&format!("decision log {}", path.display())),
            "{}",
            r.stderr
        );
        assert!(r.stdout.is_empty(), "{}", r.stdout);
    }
}

#[test]
#[ignore = "needs netns"]
fn a_dry_run_answers_every_request_and_the_report_lists_what_would_be_denied() {
    let dir = Scratch::new("dry-run");
    let (statuses, log) = proxy_run("report_dry_run", &dir, "--dry-run");
    // The same requests: nothing refused.
    let want: Vec<(String, u16)> = [
        "allowed",
        "versions",
        "other-audience",
        "other-pod",
        "other-pod",
    ]
    .iter()
    .map(|n| (n.to_string(), 200))
    .collect();
    assert_eq!(statuses, want);
    let log = log.to_str().unwrap();
    let r = report_json(&[log]);
    check_refusals(&r, "would-deny");
    assert_eq!(r["totals"]["deny"], 0, "{r:#}");
    assert_eq!(r["lines"]["malformed"], 0);

    let (table, _) = report(&[log]);
    assert!(
        table.starts_with("5 decision record(s): 2 allowed, 3 would be denied (dry run), 0 denied"),
        "{table}"
    );
    for want in [
        "payments/api",
        "web/frontend",
        "payments-api-arm",
        "2 would-deny",
    ] {
        assert!(table.contains(want), "{want} in:\n{table}");
    }
}

// The agent's would-drops: `agent run --mode block --dry-run` on the sandbox node.

const INNER: &str = "IMDSGUARD_REPORT_TEST_INNER";

/// The sandbox node's pods (the spoofer borrows `allowed`'s address on its own
/// interface: no pod of the file).
const AGENT_PODS: &str = "
- {ip: 10.244.0.10, namespace: platform, name: allowed, interface: azvallowed}
- {ip: 10.244.0.11, namespace: shop, name: web-7d9f8c6b5d-x2x4q, interface: azvweb}
- {ip: 10.244.1.10, namespace: jobs, name: batch, interface: cbr0}
";

/// `imdsguard agent run`, killed on drop.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A plain HTTP/1.1 GET with `Metadata: true`; the status, `None` when no connection
/// was made. Never prints the body.
fn imds_status(path: &str) -> Option<u16> {
    let addr = SocketAddr::new(IMDS_ADDRESS.into(), 80);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nMetadata: true\r\nConnection: close\r\n\r\n",
        addr.ip()
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

/// The drops `imdsguard report` reads from `log` so far, as `namespace/workload`.
fn would_dropped(log: &Path) -> Vec<String> {
    let text = std::fs::read(log).unwrap_or_default();
    let mut d = imdsguard_core::decisions::DecisionLog::new();
    d.read("agent.log", &text);
    d.report()
        .drops
        .iter()
        .map(|w| format!("{}/{}", w.namespace, w.workload))
        .collect()
}

#[test]
#[ignore = "needs netns"]
fn an_agent_dry_run_log_names_the_pods_block_mode_would_cut_off() {
    let test = "an_agent_dry_run_log_names_the_pods_block_mode_would_cut_off";
    imdsguard_testkit::isolated_test(test, INNER, &["nft", "ip", "nsenter", "unshare"], || {
        let isolated = Isolated::check(None).expect("an isolated namespace");
        let node = Sandbox::build(&isolated, &lab_pods()).expect("the sandbox node");
        let _cloud = Cloud::start(node.cloud());
        let dir = Scratch::new("agent-dry-run");
        let pods = dir.write("pods.yaml", AGENT_PODS);
        let log = dir.path().join("agent.log");
        let mut agent = Agent(
            Command::new(BIN)
                .args(["agent", "run", "--mode", "block", "--dry-run"])
                .args(["--pods", pods.to_str().unwrap()])
                .args(["--allow", "platform/allowed"])
                .args(["--check-interval", "300ms", "--log-format", "json"])
                .args(["--admin-listen", "127.0.0.1:0"])
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log).expect("the log file"))
                .spawn()
                .expect("run imdsguard agent run"),
        );
        let started = BufReader::new(agent.0.stdout.take().expect("stdout"))
            .lines()
            .map_while(Result::ok)
            .any(|l| l == "enforcing block");
        let show = || std::fs::read_to_string(&log).unwrap_or_default();
        assert!(started, "the agent did not start:\n{}", show());

        // Every pod reaches IMDS (a dry run drops nothing): the allowlisted one as
        // always, the others let through and recorded as would-drops.
        let path = "/metadata/instance?api-version=2021-02-01";
        for pod in ["allowed", "web", "batch", "spoofer"] {
            let status = node
                .pod(pod)
                .expect("a sandbox pod")
                .netns()
                .run(|| imds_status(path))
                .expect("run in the pod");
            assert_eq!(status, Some(200), "{pod} to IMDS:\n{}", show());
        }
        let want = ["jobs/batch", "shop/web", "-/10.244.0.10"];
        let deadline = Instant::now() + Duration::from_secs(15);
        while want
            .iter()
            .any(|w| !would_dropped(&log).iter().any(|d| d == w))
        {
            assert!(
                Instant::now() < deadline,
                "no would-drops of {want:?}:\n{}",
                show()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Stopped: its log is complete.
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&agent.0),
            rustix::process::Signal::TERM,
        )
        .expect("SIGTERM");
        let status = agent.0.wait().expect("the agent exits");
        assert!(status.success(), "{status}:\n{}", show());
        let text = show();

        // The log, piped into `imdsguard report`.
        let r = run_with_stdin(&["report", "--format", "json"], &text);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let v = r.json();
        assert_eq!(v["nothing_would_break"], false, "{v:#}");
        assert_eq!(v["lines"]["malformed"], 0, "{v:#}");
        assert_eq!(v["totals"]["records"], 0, "no proxy in block mode: {v:#}");
        assert_eq!(v["drop_totals"]["dropped_packets"], 0, "a dry run: {v:#}");
        assert!(
            v["drop_totals"]["would_drop_packets"].as_u64() > Some(0),
            "{v:#}"
        );
        let drops = v["drops"].as_array().expect("drops");
        let named: Vec<String> = drops
            .iter()
            .map(|w| {
                format!(
                    "{}/{}",
                    w["namespace"].as_str().unwrap(),
                    w["workload"].as_str().unwrap()
                )
            })
            .collect();
        // The allowlisted pod is not named; the others are, the spoofer as a source no
        // pod has.
        assert_eq!(named, want, "{v:#}");
        for w in drops {
            assert!(w["would_drop"].as_u64() > Some(0), "{w:#}");
            assert_eq!(w["dropped"], 0, "{w:#}");
            assert_eq!(w["host_network"], false, "{w:#}");
            assert!(w["first_seen"].as_str() <= w["last_seen"].as_str(), "{w:#}");
        }
        let web = &drops[1];
        assert_eq!(web["caller"], "pod");
        assert_eq!(web["pods"], json!(["web-7d9f8c6b5d-x2x4q"]));
        assert_eq!(web["interfaces"], json!(["azvweb"]));
        assert_eq!(web["addresses"], json!(["10.244.0.11"]));
        assert_eq!(web["matched_by"], json!(["pair"]));
        assert_eq!(drops[0]["interfaces"], json!(["cbr0"]));
        let spoofer = &drops[2];
        assert_eq!(spoofer["caller"], "unknown");
        assert_eq!(spoofer["pods"], json!([]));
        assert_eq!(spoofer["addresses"], json!(["10.244.0.10"]));
        assert_eq!(spoofer["matched_by"], json!(["unknown"]));
        // Its own interface, not the one of the pod whose address it borrows.
        let spoofer_iface = node
            .pod("spoofer")
            .expect("the spoofer")
            .spec()
            .host_iface();
        assert_eq!(spoofer["interfaces"], json!([spoofer_iface]), "{spoofer:#}");

        // The table says the same.
        let r = run_with_stdin(&["report"], &text);
        assert_eq!(r.code, 0, "{}", r.stderr);
        for want in [
            "agent drop record(s): 0 packet(s) dropped,",
            "What the agent's table dropped or would drop:",
            "jobs/batch",
            "shop/web",
            "web-7d9f8c6b5d-x2x4q",
            "interface azvweb",
            "unknown source 10.244.0.10",
            "would-drop",
        ] {
            assert!(r.stdout.contains(want), "{want} in:\n{}", r.stdout);
        }
        assert!(!r.stdout.contains("platform/allowed"), "{}", r.stdout);
        assert!(!r.stdout.contains("Nothing would break"), "{}", r.stdout);
    });
}
