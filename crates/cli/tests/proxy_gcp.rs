//! Black-box test of `imdsguard proxy --cloud gcp`: the binary in front of `imdsguard
//! emulate --cloud gcp`, both on 127.0.0.1 inside a network namespace of their own (only
//! `lo`), pods played from loopback source addresses (127.0.0.2, 127.0.0.3) by a small
//! python3 client. The upstream is the emulator on loopback, never 169.254.169.254.
//! The client prints token lengths only and whether kube-env's secrets were seen.

use imdsguard_testkit::Netns;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_imdsguard");

const RULES: &str = r#"cloud: gcp
rules:
  - name: everyone-zone
    subjects: [{namespace: "*"}]
    paths: [/computeMetadata/v1/instance/zone]
  - name: payments-token
    subjects: [{namespace: payments, serviceAccount: api}]
    paths: [/computeMetadata/v1/instance/service-accounts/default/token]
  - name: web-instance
    subjects: [{namespace: web}]
    paths: [/computeMetadata/v1/instance]
"#;

const PODS: &str = "- {ip: 127.0.0.2, namespace: payments, name: api-0, serviceAccount: api}
- {ip: 127.0.0.3, namespace: web, name: frontend-0}
";

/// `client.py SOURCE PATH [FLAVOR]`: one GET with `Metadata-Flavor: FLAVOR` (`Google`
/// unless given; `-`: none); prints status, whether the body names a kubelet secret,
/// an access token's length, and the imdsguard rule of a denial.
const CLIENT: &str = r#"
import http.client, json, sys
source, path = sys.argv[1], sys.argv[2]
flavor = sys.argv[3] if len(sys.argv) > 3 else "Google"
headers = {} if flavor == "-" else {"Metadata-Flavor": flavor}
c = http.client.HTTPConnection("127.0.0.1", 8170, timeout=5, source_address=(source, 0))
c.request("GET", path, headers=headers)
r = c.getresponse()
body = r.read().decode("utf-8", "replace")
out = {"status": r.status, "kubelet_secret": "KUBELET_KEY" in body}
try:
    doc = json.loads(body)
    if isinstance(doc, dict) and "access_token" in doc:
        out["token_chars"] = len(doc["access_token"])
    if isinstance(doc, dict) and "imdsguard" in doc:
        out["rule"] = doc["imdsguard"]["rule"]
except ValueError:
    pass
print(json.dumps(out))
"#;

const SCRIPT: &str = r#"
set -u
started() {
    for _ in $(seq 100); do grep -q "$2" "$1" && return 0; sleep 0.05; done
    echo "$3 did not start" >&2; [ -n "${4:-}" ] && cat "$4" >&2; exit 97
}
"$BIN" emulate --cloud gcp --listen 127.0.0.1:8169 --seed 7 >"$DIR/emulate.out" 2>/dev/null &
emu=$!
px=
trap 'kill $emu $px 2>/dev/null' EXIT
started "$DIR/emulate.out" metadata emulator
"$BIN" proxy --cloud gcp --listen 127.0.0.1:8170 --admin-listen 127.0.0.1:9170 \
    --upstream http://127.0.0.1:8169 --rules "$DIR/rules.yaml" --pods "$DIR/pods.yaml" \
    --log-format json >"$DIR/proxy.out" 2>"$DIR/proxy.err" &
px=$!
started "$DIR/proxy.out" admin proxy "$DIR/proxy.err"
sa=/computeMetadata/v1/instance/service-accounts/default
req() { python3 "$DIR/client.py" "$@"; }
echo "== payments-token"; req 127.0.0.2 $sa/token
echo "== web-token"; req 127.0.0.3 $sa/token
echo "== web-kube-env"; req 127.0.0.3 /computeMetadata/v1/instance/attributes/kube-env
echo "== web-recursive"; req 127.0.0.3 '/computeMetadata/v1/instance/?recursive=true'
echo "== web-recursive-text"; req 127.0.0.3 '/computeMetadata/v1/instance/?recursive=true&alt=text'
echo "== web-lower-case-flavor"; req 127.0.0.3 /computeMetadata/v1/instance/zone google
echo "== web-legacy"; req 127.0.0.3 /computeMetadata/v1beta1/instance/attributes/kube-env -
kill -TERM $px
wait $px
echo "proxy-exit $?"
px=
echo "== decisions"
grep '"imdsguard::decision"' "$DIR/proxy.err" || true
kill $emu 2>/dev/null; wait $emu 2>/dev/null
"#;

fn answer(stdout: &str, name: &str) -> Value {
    let marker = format!("== {name}");
    let line = stdout
        .lines()
        .skip_while(|l| *l != marker)
        .nth(1)
        .unwrap_or_else(|| panic!("no answer for {name}:\n{stdout}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}: {e}: {line}"))
}

#[test]
#[ignore = "needs netns"]
fn tokens_and_kube_env_only_through_rules_naming_them() {
    let ns = Netns::require("proxy_gcp");
    let dir = std::env::temp_dir().join(format!("imdsguard-proxy-gcp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("rules.yaml"), RULES).unwrap();
    std::fs::write(dir.join("pods.yaml"), PODS).unwrap();
    std::fs::write(dir.join("client.py"), CLIENT).unwrap();
    let out = ns.run(SCRIPT, &[("BIN", BIN), ("DIR", dir.to_str().unwrap())]);
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("proxy-exit 0"), "{stdout}");

    let token = answer(&stdout, "payments-token");
    assert_eq!(token["status"], 200, "{stdout}");
    assert!(token["token_chars"].as_u64().unwrap() > 20, "{token}");
    for (name, rule) in [
        ("web-token", "web-instance"),
        ("web-kube-env", "web-instance"),
        ("web-recursive-text", "web-instance"),
    ] {
        let a = answer(&stdout, name);
        assert_eq!(
            (a["status"].as_u64(), a["rule"].as_str()),
            (Some(403), Some(rule)),
            "{name}: {a}"
        );
    }
    let recursive = answer(&stdout, "web-recursive");
    assert_eq!(recursive["status"], 200, "{stdout}");
    assert_eq!(recursive["kubelet_secret"], false, "kube-env redacted");
    assert_eq!(answer(&stdout, "web-lower-case-flavor")["status"], 403);
    assert_eq!(answer(&stdout, "web-legacy")["status"], 404);
    for name in ["web-kube-env", "web-lower-case-flavor", "web-legacy"] {
        assert_eq!(answer(&stdout, name)["kubelet_secret"], false, "{name}");
    }

    let decisions: Vec<Value> = stdout
        .split_once("== decisions\n")
        .map(|(_, d)| d)
        .unwrap_or("")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(decisions.len(), 7, "{stdout}");
    let recursive = decisions
        .iter()
        .find(|d| {
            d["fields"]["path"] == "/computeMetadata/v1/instance/"
                && d["fields"]["decision"] == "allow"
        })
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(recursive["fields"]["redacted"], true);
    assert!(!stdout.contains("ya29."), "no token printed or logged");
}
