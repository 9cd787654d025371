//! `imdsguard probe --cloud aws` through `imdsguard proxy --cloud aws` in front of
//! `imdsguard emulate --cloud aws`, all on 127.0.0.1 inside a network namespace of their
//! own (only `lo`): the probe's pod may have an IMDSv2 token and read its placement and
//! role name, not the credentials. Each denial shows as `blocked-by-imdsguard`, `denied by
//! proxy (imdsguard rule …)`, and nothing sensitive is reachable (exit 0); the proxy lets
//! the credentials through to a pod its rules name (exit 1).

use imdsguard_testkit::Netns;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_imdsguard");

/// `ROLE_SUBJECT` is replaced by the subject of the credentials rule.
const RULES: &str = r#"cloud: aws
rules:
  - name: placement-and-role
    subjects: [{namespace: "*"}]
    paths: [/latest/meta-data/placement, /latest/meta-data/iam/info, /latest/meta-data/iam/security-credentials/]
  - name: imdsv2-token
    subjects: [{namespace: "*"}]
    methods: [PUT]
    paths: [/latest/api/token]
  - name: node-role
    subjects: [ROLE_SUBJECT]
    paths: [/latest/meta-data/iam/security-credentials/*]
"#;

const PODS: &str = "- {ip: 127.0.0.1, namespace: web, name: frontend-0, serviceAccount: web}\n";

const SCRIPT: &str = r#"
set -u
started() {
    for _ in $(seq 100); do grep -q "$2" "$1" && return 0; sleep 0.05; done
    echo "$3 did not start" >&2; cat "$1" >&2; exit 97
}
"$BIN" emulate --cloud aws --listen 127.0.0.1:8169 --seed 7 >"$DIR/emulate.out" 2>/dev/null &
emu=$!
px=
trap 'kill $emu $px 2>/dev/null' EXIT
started "$DIR/emulate.out" imds emulator
"$BIN" proxy --cloud aws --listen 127.0.0.1:8170 --admin-listen 127.0.0.1:9170 \
    --upstream http://127.0.0.1:8169 --rules "$DIR/rules.yaml" --pods "$DIR/pods.yaml" \
    >"$DIR/proxy.out" 2>"$DIR/proxy.err" &
px=$!
started "$DIR/proxy.out" admin proxy
"$BIN" probe --cloud aws --endpoint http://127.0.0.1:8170 --format json \
    --connect-timeout 1s --timeout 3s
rc=$?
kill $px $emu 2>/dev/null; wait $px $emu 2>/dev/null
exit $rc
"#;

/// The probe's exit status and report, through the proxy with `role_subject` as the
/// credentials rule's subject.
fn probe_through_proxy(test: &str, role_subject: &str) -> (i32, Value, String) {
    let ns = Netns::require(test);
    let dir = std::env::temp_dir().join(format!(
        "imdsguard-probe-aws-proxy-{test}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("rules.yaml"),
        RULES.replace("ROLE_SUBJECT", role_subject),
    )
    .unwrap();
    std::fs::write(dir.join("pods.yaml"), PODS).unwrap();
    let out = ns.run(SCRIPT, &[("BIN", BIN), ("DIR", dir.to_str().unwrap())]);
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code().unwrap_or(-1);
    assert!(matches!(code, 0 | 1), "status {code}:\n{stdout}\n{stderr}");
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}\n{stderr}"));
    (code, report, stdout)
}

fn step<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no {name} step in {r:#}"))
}

#[test]
#[ignore = "needs netns"]
fn the_proxy_denies_the_credentials_and_the_probe_says_so() {
    let (code, r, stdout) = probe_through_proxy(
        "the_proxy_denies_the_credentials_and_the_probe_says_so",
        "{namespace: payments, serviceAccount: api}",
    );
    assert_eq!(code, 0, "nothing sensitive through the proxy:\n{stdout}");
    let class = |name: &str| step(&r, name)["class"].as_str().unwrap().to_owned();
    assert_eq!(class("tcp-connect"), "reachable");
    // The meta-data root and the identity document are no rule's.
    assert_eq!(class("imdsv1"), "blocked-by-imdsguard");
    assert_eq!(class("imdsv2-token"), "session-token");
    assert_eq!(class("identity-document"), "blocked-by-imdsguard");
    assert_eq!(class("iam-info"), "readable");
    assert_eq!(class("iam-role"), "readable");
    let creds = step(&r, "credentials");
    assert_eq!(creds["class"], "blocked-by-imdsguard", "{creds:#}");
    assert_eq!(creds["http_status"], 403);
    let detail = creds["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("denied by proxy (imdsguard rule "),
        "{detail}"
    );
    assert!(creds["denial"]["rule"].is_string(), "{creds:#}");
    assert_eq!(class("user-data"), "blocked-by-imdsguard");
    assert_eq!(r["summary"]["sensitive"], false);
}

#[test]
#[ignore = "needs netns"]
fn the_proxy_lets_a_named_pod_have_the_credentials() {
    let (code, r, stdout) = probe_through_proxy(
        "the_proxy_lets_a_named_pod_have_the_credentials",
        "{namespace: web, serviceAccount: web}",
    );
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(step(&r, "credentials")["class"], "credentials-obtained");
    assert_eq!(
        step(&r, "credentials")["credentials"]["access_key_id_prefix"],
        "ASIA"
    );
    assert!(!stdout.contains("\"SecretAccessKey\""));
}
