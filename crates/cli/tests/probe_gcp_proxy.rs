//! `imdsguard probe --cloud gcp` through `imdsguard proxy --cloud gcp` in front of
//! `imdsguard emulate --cloud gcp`, all on 127.0.0.1 inside a network namespace of their
//! own (only `lo`): the probe's pod may read its project and zone, not kube-env nor the
//! service account's tokens. Each denial shows as `blocked-by-imdsguard`, `denied by proxy
//! (imdsguard rule …)`, and nothing sensitive is reachable (exit 0); the proxy lets the
//! access token through to a pod its rules name (exit 1).

use imdsguard_testkit::Netns;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_imdsguard");

/// `TOKEN_SUBJECT` is replaced by the subject of the token rule.
const RULES: &str = r#"cloud: gcp
rules:
  - name: everyone-basics
    subjects: [{namespace: "*"}]
    paths:
      - /computeMetadata/v1/project/project-id
      - /computeMetadata/v1/project/numeric-project-id
      - /computeMetadata/v1/instance/zone
      - /computeMetadata/v1/instance/name
      - /computeMetadata/v1/instance/attributes/cluster-name
  - name: node-sa-token
    subjects: [TOKEN_SUBJECT]
    paths: [/computeMetadata/v1/instance/service-accounts/default/token]
"#;

const PODS: &str = "- {ip: 127.0.0.1, namespace: web, name: frontend-0, serviceAccount: web}\n";

const SCRIPT: &str = r#"
set -u
started() {
    for _ in $(seq 100); do grep -q "$2" "$1" && return 0; sleep 0.05; done
    echo "$3 did not start" >&2; cat "$1" >&2; exit 97
}
"$BIN" emulate --cloud gcp --listen 127.0.0.1:8169 --seed 7 >"$DIR/emulate.out" 2>/dev/null &
emu=$!
px=
trap 'kill $emu $px 2>/dev/null' EXIT
started "$DIR/emulate.out" metadata emulator
"$BIN" proxy --cloud gcp --listen 127.0.0.1:8170 --admin-listen 127.0.0.1:9170 \
    --upstream http://127.0.0.1:8169 --rules "$DIR/rules.yaml" --pods "$DIR/pods.yaml" \
    >"$DIR/proxy.out" 2>"$DIR/proxy.err" &
px=$!
started "$DIR/proxy.out" admin proxy
"$BIN" probe --cloud gcp --endpoint http://127.0.0.1:8170 --format json \
    --connect-timeout 1s --timeout 3s
rc=$?
kill $px $emu 2>/dev/null; wait $px $emu 2>/dev/null
exit $rc
"#;

/// The probe's exit status and report, through the proxy with `token_subject` as the
/// token rule's subject.
fn probe_through_proxy(test: &str, token_subject: &str) -> (i32, Value, String) {
    let ns = Netns::require(test);
    let dir = std::env::temp_dir().join(format!(
        "imdsguard-probe-gcp-proxy-{test}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("rules.yaml"),
        RULES.replace("TOKEN_SUBJECT", token_subject),
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
fn the_proxy_denies_kube_env_and_the_tokens_and_the_probe_says_so() {
    let (code, r, stdout) = probe_through_proxy(
        "the_proxy_denies_kube_env_and_the_tokens_and_the_probe_says_so",
        "{namespace: payments, serviceAccount: api}",
    );
    assert_eq!(code, 0, "nothing sensitive through the proxy:\n{stdout}");
    let class = |name: &str| step(&r, name)["class"].as_str().unwrap().to_owned();
    assert_eq!(class("tcp-connect"), "reachable");
    for name in [
        "project-id",
        "numeric-project-id",
        "zone",
        "instance-name",
        "cluster-name",
    ] {
        assert_eq!(class(name), "readable", "{name}");
    }
    assert_eq!(step(&r, "zone")["facts"][0]["value"], "us-central1-c");
    for name in [
        "attributes",
        "kube-env",
        "service-accounts",
        "token",
        "identity-token",
    ] {
        assert_eq!(class(name), "blocked-by-imdsguard", "{name}");
    }
    let token = step(&r, "token");
    assert_eq!(token["http_status"], 403);
    let detail = token["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("denied by proxy (imdsguard rule "),
        "{detail}"
    );
    assert!(token["denial"]["rule"].is_string(), "{token:#}");
    // Header-less and legacy requests never get an answer with data.
    for name in ["metadata-without-header", "legacy-v0.1", "legacy-v1beta1"] {
        let c = class(name);
        assert!(
            ["needs-header", "blocked-by-imdsguard", "disabled"].contains(&c.as_str()),
            "{name}: {c}"
        );
    }
    assert_eq!(r["summary"]["sensitive"], false);
}

#[test]
#[ignore = "needs netns"]
fn the_proxy_lets_a_named_pod_have_the_token() {
    let (code, r, stdout) = probe_through_proxy(
        "the_proxy_lets_a_named_pod_have_the_token",
        "{namespace: web, serviceAccount: web}",
    );
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(step(&r, "token")["class"], "token-obtained");
    assert_eq!(step(&r, "kube-env")["class"], "blocked-by-imdsguard");
    assert!(!stdout.contains("ya29."), "{stdout}");
}
