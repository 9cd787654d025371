//! Black-box tests of `imdsguard proxy`: the binary in front of `imdsguard emulate`, both
//! on 127.0.0.1 inside a network namespace of their own (only `lo`), pods played from
//! distinct loopback source addresses (127.0.0.2, 127.0.0.3) by a small python3 client.
//! The proxy's upstream is always the emulator on loopback, never 169.254.169.254.

#[path = "support/proxy_setup.rs"]
mod proxy_setup;

use std::path::{Path, PathBuf};
use std::process::Command;

use imdsguard_testkit::Netns;
use proxy_setup::{ARM, BIN, KUBELET_CLIENT_ID, START_EMULATOR, VAULT, rules, token_path};
use serde_json::Value;

const PODS: &str = "- ip: 127.0.0.2
  namespace: payments
  name: api-0
  serviceAccount: api
  labels: {app: api}
- ip: 127.0.0.3
  namespace: web
  name: frontend-0
";

/// A python3 client that sends one GET from a given loopback source address and
/// prints `{"status": N, "body": "..."}` (the body only in part when it is a token
/// answer: the test checks its shape, nothing prints a token).
const CLIENT: &str = r#"
import http.client, json, sys
source, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
c.request("GET", path, headers={"Metadata": "true"})
r = c.getresponse()
body = r.read().decode("utf-8", "replace")
try:
    doc = json.loads(body)
    if isinstance(doc, dict) and "access_token" in doc:
        doc["access_token"] = "<%d chars>" % len(doc["access_token"])
except ValueError:
    doc = body
print(json.dumps({"status": r.status, "body": doc}))
"#;

/// After [`START_EMULATOR`]: starts the proxy (127.0.0.1:8170, admin :9170) in front of
/// the emulator and waits for it; then the test's script runs, and [`EPILOGUE`] stops
/// the proxy with SIGTERM and prints `proxy-exit N`. `$DIR` holds rules.yaml, pods.yaml
/// and client.py.
const PRELUDE: &str = r#"
px_out="$DIR/proxy.out"; px_err="$DIR/proxy.err"
"$BIN" proxy --listen 127.0.0.1:8170 --admin-listen 127.0.0.1:9170 \
    --upstream http://127.0.0.1:8169 --rules "$DIR/rules.yaml" --pods "$DIR/pods.yaml" \
    --log-format json >"$px_out" 2>"$px_err" &
px=$!
started "$px_out" admin proxy "$px_err"
req() { python3 "$DIR/client.py" "$1" 8170 "$2"; }
"#;

const EPILOGUE: &str = r#"
kill -TERM $px
wait $px
echo "proxy-exit $?"
px=
echo "== decisions"
grep '"imdsguard::decision"' "$px_err" || true
kill $emu 2>/dev/null; wait $emu 2>/dev/null
"#;

/// A scratch directory with the rules, pods and client files.
struct Files(PathBuf);

impl Files {
    fn new(test: &str) -> Files {
        let dir =
            std::env::temp_dir().join(format!("imdsguard-proxy-cli-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("rules.yaml"), rules()).expect("rules");
        std::fs::write(dir.join("pods.yaml"), PODS).expect("pods");
        std::fs::write(dir.join("client.py"), CLIENT).expect("client");
        Files(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The JSON line after the marker line `== NAME`.
    fn answer(&self, name: &str) -> Value {
        let marker = format!("== {name}");
        let line = self
            .stdout
            .lines()
            .skip_while(|l| *l != marker)
            .nth(1)
            .unwrap_or_else(|| panic!("no answer for {name}:\n{}\n{}", self.stdout, self.stderr));
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}: {e}: {line}"))
    }

    fn after(&self, marker: &str) -> String {
        self.stdout
            .split_once(&format!("== {marker}\n"))
            .map(|(_, rest)| rest.split("\n== ").next().unwrap_or("").to_string())
            .unwrap_or_default()
    }
}

/// Runs `PRELUDE`, `script`, `EPILOGUE` in a fresh namespace.
fn run(test: &str, script: &str) -> Run {
    let ns = Netns::require(test);
    let files = Files::new(test);
    let out = ns.run(
        &format!("{START_EMULATOR}{PRELUDE}{script}{EPILOGUE}"),
        &[
            ("BIN", BIN),
            ("DIR", files.path().to_str().expect("UTF-8 temp dir")),
        ],
    );
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_ne!(run.code, 97, "{}", run.stderr);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    run
}

#[test]
#[ignore = "needs netns"]
fn allowed_pods_get_their_tokens_denied_ones_a_named_403_and_metrics_count_both() {
    let script = format!(
        r#"
echo "== allowed"; req 127.0.0.2 '{arm}'
echo "== other-audience"; req 127.0.0.2 '{vault}'
echo "== other-pod"; req 127.0.0.3 '{arm}'
echo "== versions"; req 127.0.0.3 /metadata/versions
echo "== metrics"; python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:9170/metrics", timeout=5).read().decode())'
"#,
        arm = token_path(ARM),
        vault = token_path(VAULT),
    );
    let run = run("tokens_and_denials", &script);

    let allowed = run.answer("allowed");
    assert_eq!(allowed["status"], 200, "{allowed}");
    assert_eq!(allowed["body"]["resource"], "https://management.azure.com/");
    assert_eq!(allowed["body"]["client_id"], KUBELET_CLIENT_ID, "{allowed}");
    assert!(
        allowed["body"]["access_token"]
            .as_str()
            .is_some_and(|t| t.ends_with(" chars>")),
        "{allowed}"
    );

    // The allowed pod asking for another audience: denied by the rule that came closest.
    let other = run.answer("other-audience");
    assert_eq!(other["status"], 403, "{other}");
    assert_eq!(other["body"]["error"], "imdsguard_denied");
    assert_eq!(other["body"]["imdsguard"]["decision"], "deny");
    assert_eq!(other["body"]["imdsguard"]["rule"], "payments-api-arm");
    assert!(
        other["body"]["imdsguard"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("vault.azure.net")),
        "{other}"
    );

    // Another pod asking for the ARM token: nothing grants it.
    let denied = run.answer("other-pod");
    assert_eq!(denied["status"], 403, "{denied}");
    assert_eq!(denied["body"]["error"], "imdsguard_denied");
    assert_eq!(denied["body"]["imdsguard"]["rule"], "default-deny");
    assert!(
        denied["body"]["imdsguard"]["help"]
            .as_str()
            .is_some_and(|h| h.contains("namespace web")),
        "{denied}"
    );
    assert!(!denied.to_string().contains("access_token"));

    // What the `basics` rule grants every pod passes through.
    let versions = run.answer("versions");
    assert_eq!(versions["status"], 200, "{versions}");
    assert!(versions["body"]["apiVersions"].is_array(), "{versions}");

    let metrics = run.after("metrics");
    for want in [
        r#"imdsguard_proxy_decisions_total{namespace="payments",endpoint="identity-token",outcome="allow"} 1"#,
        r#"imdsguard_proxy_decisions_total{namespace="payments",endpoint="identity-token",outcome="deny"} 1"#,
        r#"imdsguard_proxy_decisions_total{namespace="web",endpoint="identity-token",outcome="deny"} 1"#,
        r#"imdsguard_proxy_decisions_total{namespace="web",endpoint="versions",outcome="allow"} 1"#,
        "imdsguard_proxy_rules 2",
        "imdsguard_proxy_pods 2",
    ] {
        assert!(metrics.contains(want), "{want} in:\n{metrics}");
    }

    assert!(
        run.stdout.contains("proxy-exit 0"),
        "SIGTERM: {}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("eyJ") && !run.stderr.contains("eyJ"),
        "a token was printed"
    );
}

#[test]
#[ignore = "needs netns"]
fn the_probe_from_an_unknown_source_is_blocked_by_imdsguard() {
    // The probe connects from 127.0.0.1, which no pod has.
    let script = r#"
"$BIN" probe --endpoint http://127.0.0.1:8170 --format json --connect-timeout 500ms --timeout 2s >"$DIR/probe.json"
rc=$?
echo "== probe"
tr -d '\n' <"$DIR/probe.json"
echo
echo "probe-exit $rc"
"#;
    let run = run("probe_unknown_source", script);
    let report = run.answer("probe");
    let steps = report["steps"].as_array().expect("steps");
    let class = |name: &str| -> Vec<&str> {
        steps
            .iter()
            .filter(|s| s["name"] == name)
            .filter_map(|s| s["class"].as_str())
            .collect()
    };
    assert_eq!(class("tcp-connect"), ["reachable"], "{report}");
    assert_eq!(class("instance"), ["blocked-by-imdsguard"], "{report}");
    let tokens = class("token");
    assert!(!tokens.is_empty(), "{report}");
    assert!(
        tokens.iter().all(|c| *c == "blocked-by-imdsguard"),
        "{report}"
    );
    assert!(run.stdout.contains("probe-exit 0"), "{}", run.stdout);
    assert!(run.stdout.contains("proxy-exit 0"), "{}", run.stdout);
}

#[test]
#[ignore = "needs netns"]
fn sigterm_stops_the_proxy_with_status_0_and_it_logs_its_decisions() {
    // A request, then SIGTERM: exit status 0, one JSON decision record on stderr.
    let script = r#"
echo "== versions"; req 127.0.0.3 /metadata/versions
"#;
    let run = run("sigterm", script);
    assert_eq!(run.answer("versions")["status"], 200);
    assert!(run.stdout.contains("proxy-exit 0"), "{}", run.stdout);
    let decisions: Vec<Value> = run
        .after("decisions")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON log record"))
        .collect();
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    let f = &decisions[0]["fields"];
    assert_eq!(f["decision"], "allow", "{f}");
    assert_eq!(f["pod"], "web/frontend-0", "{f}");
    assert_eq!(f["path"], "/metadata/versions", "{f}");
    assert_eq!(f["rule"], "basics", "{f}");
    assert_eq!(f["status"], 200, "{f}");
}

#[test]
#[ignore = "needs netns"]
fn a_stuck_log_never_stalls_requests_or_shutdown() {
    // A second proxy whose standard error is a pipe nobody reads: it is full after
    // about 200 decision records. Log lines go through the writer thread's queue, so
    // requests are still answered (before, the runtime threads blocked in `write` on
    // stderr and every request hung), and SIGTERM still ends it with status 0.
    let script = r#"
mkfifo "$DIR/stuck.fifo"
exec 3<>"$DIR/stuck.fifo"
"$BIN" proxy --listen 127.0.0.1:8171 --admin-listen 127.0.0.1:9171 \
    --upstream http://127.0.0.1:8169 --rules "$DIR/rules.yaml" --pods "$DIR/pods.yaml" \
    --pod-rate 0 --pod-identity-rate 0 --log-format json >"$DIR/stuck.out" 2>"$DIR/stuck.fifo" &
stuck=$!
for _ in $(seq 100); do grep -q admin "$DIR/stuck.out" && break; sleep 0.05; done
echo "== flood"
python3 -c '
import http.client, json, time
c = http.client.HTTPConnection("127.0.0.1", 8171, timeout=5, source_address=("127.0.0.3", 0))
ok, start = 0, time.monotonic()
try:
    for _ in range(2000):
        c.request("GET", "/metadata/versions", headers={"Metadata": "true"})
        r = c.getresponse()
        r.read()
        ok += r.status == 200
except Exception as e:
    print(json.dumps({"ok": ok, "error": str(e)}))
else:
    print(json.dumps({"ok": ok, "seconds": time.monotonic() - start}))
'
echo "== stuck-metrics"; python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:9171/metrics", timeout=5).read().decode())'
kill -TERM $stuck
wait $stuck
echo "stuck-exit $?"
exec 3>&-
"#;
    let run = run("stuck_log", script);
    let flood = run.answer("flood");
    assert_eq!(flood["ok"], 2000, "{flood}");
    assert!(
        run.after("stuck-metrics")
            .contains("imdsguard_log_dropped_lines_total "),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("stuck-exit 0"), "{}", run.stdout);
}

/// `imdsguard proxy --check` only reads files: no listener, no namespace needed.
fn check(rules: &str, pods: Option<&str>) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(format!(
        "imdsguard-proxy-cli-check-{}-{}",
        std::process::id(),
        rules.len()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let rules_file = dir.join("rules.yaml");
    std::fs::write(&rules_file, rules).expect("rules");
    let mut cmd = Command::new(BIN);
    cmd.args(["proxy", "--check", "--rules"]).arg(&rules_file);
    if let Some(p) = pods {
        let pods_file = dir.join("pods.yaml");
        std::fs::write(&pods_file, p).expect("pods");
        cmd.arg("--pods").arg(&pods_file);
    }
    let out = cmd.output().expect("imdsguard runs");
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_validates_the_files_and_names_file_and_line_of_an_error() {
    let (code, stdout, stderr) = check(&rules(), Some(PODS));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("rules.yaml: 2 rule(s): payments-api-arm, basics"),
        "{stdout}"
    );
    assert!(stdout.contains("pods.yaml: 2 address(es)"), "{stdout}");

    // A typo in a field: an error, never a silently ignored field.
    let typo = rules().replace(
        "    paths: [/metadata/versions]",
        "    pahts: [/metadata/versions]",
    );
    let (code, stdout, stderr) = check(&typo, None);
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("rules.yaml") && stderr.contains("line 12"),
        "file and line: {stderr}"
    );
    assert!(stderr.contains("pahts"), "{stderr}");

    // Broken YAML.
    let (code, _, stderr) = check("rules:\n  - name: a\n    subjects: [{namespace: x}\n", None);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("rules.yaml") && stderr.contains("line 4"),
        "{stderr}"
    );

    // A broken pods file is named too.
    let (code, _, stderr) = check(
        &rules(),
        Some("- ip: not-an-address\n  namespace: a\n  name: b\n"),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("pods.yaml"), "{stderr}");
}
