//! End to end: `imdsguard emulate` and `imdsguard probe` walk the seed tutorial's steps
//! (instance document, kubelet identity from the tags, ARM token, WireServer) on loopback,
//! inside a network namespace of their own so that nothing can leave the machine.

use imdsguard_testkit::Netns;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_imdsguard");

/// The default emulator config's kubelet identity (crates/emulator/src/default-config.yaml).
const KUBELET_CLIENT_ID: &str = "2d7b9c41-6e83-4f1a-b5c2-8a9e0f3d1c67";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "probe output is not JSON ({e}):\n{}\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Starts the emulator with `emulate_args` (IMDS on 127.0.0.1:8169, WireServer on
/// :8080, HostGAPlugin on :32526) and runs the probe with `probe_args`, in a fresh
/// namespace.
fn run(test: &str, emulate_args: &str, probe_args: &str) -> Run {
    let ns = Netns::require(test);
    let script = r#"
out=$(mktemp)
"$BIN" emulate --listen 127.0.0.1:8169 --wireserver 127.0.0.1:8080 --hostgaplugin 127.0.0.1:32526 --seed 7 $EMULATE_ARGS >"$out" 2>/dev/null &
emu=$!
for _ in $(seq 100); do grep -q hostgaplugin "$out" && break; sleep 0.05; done
grep -q hostgaplugin "$out" || { echo "emulator did not start" >&2; kill $emu; exit 97; }
"$BIN" probe $PROBE_ARGS --format json --connect-timeout 500ms --timeout 2s
rc=$?
kill $emu; wait $emu 2>/dev/null; rm -f "$out"
exit $rc
"#;
    let out = ns.run(
        script,
        &[
            ("BIN", BIN),
            ("EMULATE_ARGS", emulate_args),
            ("PROBE_ARGS", probe_args),
        ],
    );
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_ne!(run.code, 97, "{}", run.stderr);
    run
}

const ALL_ENDPOINTS: &str = "--endpoint http://127.0.0.1:8169 --wireserver http://127.0.0.1:8080 --hostgaplugin http://127.0.0.1:32526";

fn steps<'a>(report: &'a Value, name: &str) -> Vec<&'a Value> {
    report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|s| s["name"] == name)
        .collect()
}

fn classes(report: &Value, name: &str) -> Vec<String> {
    steps(report, name)
        .iter()
        .map(|s| s["class"].as_str().unwrap_or("").to_string())
        .collect()
}

/// True when `text` holds something shaped like a JWT (`eyJ…` header, three dot-separated
/// base64url parts): the probe must never print a token.
fn contains_jwt(text: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
        .any(|w| w.starts_with("eyJ") && w.split('.').count() == 3 && w.len() > 100)
}

#[test]
fn the_token_detector_finds_an_emulator_shaped_token() {
    // base64url of {"typ":"JWT","alg":"RS256",...}: what the emulator issues.
    let token = format!(
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.{}.{}",
        "eyJhdWQiOiJodHRwczovL21hbmFnZW1lbnQuYXp1cmUuY29tLyJ9".repeat(3),
        "c2lnbmF0dXJl".repeat(8)
    );
    assert!(contains_jwt(&format!("access_token: \"{token}\"")));
    assert!(!contains_jwt("fingerprint sha256:de7675d45d9c"));
}

#[test]
#[ignore = "needs netns"]
fn the_seed_attack_path_is_walked_end_to_end_and_no_token_is_printed() {
    let run = run("seed_path", "", ALL_ENDPOINTS);
    assert_eq!(
        run.code, 1,
        "sensitive data reachable means exit 1:\n{}\n{}",
        run.stdout, run.stderr
    );
    let r = run.json();
    assert_eq!(classes(&r, "tcp-connect"), ["reachable"]);
    assert_eq!(classes(&r, "instance-without-header"), ["needs-header"]);
    assert_eq!(classes(&r, "instance"), ["exposed"]);
    let instance = run.stdout.as_str();
    assert!(
        instance.contains("MC_rg-prod_aks-prod_westeurope"),
        "resource group exposed"
    );
    assert!(
        instance.contains("aks-managed-kubeletIdentityClientID"),
        "tag naming the kubelet identity"
    );

    // The kubelet identity found in the tags yields ARM and Key Vault tokens.
    let tokens: Vec<&Value> = steps(&r, "token")
        .into_iter()
        .filter(|s| s["class"] == "token-obtained")
        .collect();
    assert!(tokens.len() >= 2, "{}", run.stdout);
    let arm = tokens
        .iter()
        .find(|s| s.to_string().contains("https://management.azure.com/"))
        .expect("an ARM token");
    let arm = arm.to_string();
    assert!(arm.contains(KUBELET_CLIENT_ID), "{arm}");
    assert!(
        arm.contains("userAssignedIdentities/aks-prod-agentpool"),
        "xms_mirid claim: {arm}"
    );
    assert!(arm.contains("sha256:"), "a fingerprint is shown: {arm}");

    assert_eq!(classes(&r, "wireserver-goalstate"), ["exposed"]);
    assert_eq!(classes(&r, "hostgaplugin-vmsettings"), ["exposed"]);
    assert!(
        !contains_jwt(&run.stdout) && !contains_jwt(&run.stderr),
        "a token was printed"
    );
}

#[test]
#[ignore = "needs netns"]
fn the_text_report_names_the_token_by_fingerprint_only() {
    let ns = Netns::require("text_report");
    let out = ns.run(
        r#"
out=$(mktemp)
"$BIN" emulate --listen 127.0.0.1:8169 --seed 7 >"$out" 2>/dev/null &
emu=$!
for _ in $(seq 100); do grep -q imds "$out" && break; sleep 0.05; done
"$BIN" probe --endpoint http://127.0.0.1:8169
rc=$?
kill $emu; wait $emu 2>/dev/null; rm -f "$out"
exit $rc
"#,
        &[("BIN", BIN)],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("TOKEN-OBTAINED"), "{stdout}");
    assert!(stdout.contains("fingerprint sha256:"), "{stdout}");
    assert!(!contains_jwt(&stdout), "{stdout}");
}

#[test]
#[ignore = "needs netns"]
fn without_wireserver_urls_the_wireserver_steps_are_not_checked() {
    let run = run("no_wireserver", "", "--endpoint http://127.0.0.1:8169");
    let r = run.json();
    assert_eq!(classes(&r, "wireserver-goalstate"), ["not-checked"]);
    assert_eq!(classes(&r, "hostgaplugin-vmsettings"), ["not-checked"]);
}

#[test]
#[ignore = "needs netns"]
fn an_unknown_identity_is_reported_as_not_found() {
    let args = format!("{ALL_ENDPOINTS} --client-id 99999999-0000-4000-8000-000000000009");
    let run = run("unknown_identity", "", &args);
    let r = run.json();
    assert!(
        classes(&r, "token")
            .iter()
            .any(|c| c == "identity-not-found"),
        "{}",
        run.stdout
    );
}

#[test]
#[ignore = "needs netns"]
fn emulator_throttling_shows_as_throttled() {
    // One identity request a second: the probe's later token requests get 429.
    let run = run("throttled", "--identity-rate 1", ALL_ENDPOINTS);
    let r = run.json();
    assert!(
        classes(&r, "token").iter().any(|c| c == "throttled"),
        "{}",
        run.stdout
    );
}

#[test]
#[ignore = "needs netns"]
fn emulator_failures_show_as_errors_and_nothing_is_exposed() {
    let run = run(
        "failing",
        "--fail-rate 1.0",
        "--endpoint http://127.0.0.1:8169",
    );
    let r = run.json();
    assert_eq!(classes(&r, "instance"), ["error"], "{}", run.stdout);
    assert!(
        classes(&r, "token").iter().all(|c| c == "error"),
        "{}",
        run.stdout
    );
    assert_eq!(run.code, 0, "nothing sensitive was reachable");
}

#[test]
#[ignore = "needs netns"]
fn a_stopped_emulator_is_blocked_refused() {
    // Nothing listens on the port: the connection is refused.
    let ns = Netns::require("refused");
    let out = ns.run(
        r#""$BIN" probe --endpoint http://127.0.0.1:8169 --format json --connect-timeout 500ms"#,
        &[("BIN", BIN)],
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(classes(&r, "tcp-connect"), ["blocked-refused"]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
#[ignore = "needs netns"]
fn an_emulator_slower_than_the_timeout_is_blocked_timeout() {
    // --delay 3000 ms against the probe's 2 s request timeout.
    let run = run("slow", "--delay 3000", "--endpoint http://127.0.0.1:8169");
    let r = run.json();
    assert_eq!(
        classes(&r, "instance"),
        ["blocked-timeout"],
        "{}",
        run.stdout
    );
    assert_eq!(run.code, 0);
}

#[test]
#[ignore = "needs netns"]
fn dropped_connections_are_blocked_refused() {
    let run = run(
        "dropped",
        "--drop-rate 1.0",
        "--endpoint http://127.0.0.1:8169",
    );
    let r = run.json();
    assert_eq!(
        classes(&r, "instance"),
        ["blocked-refused"],
        "{}",
        run.stdout
    );
    assert_eq!(run.code, 0);
}
