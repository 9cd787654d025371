//! Black-box test of `imdsguard proxy --cloud aws`: the binary in front of `imdsguard
//! emulate --cloud aws`, both on 127.0.0.1 inside a network namespace of their own (only
//! `lo`), pods played from distinct loopback source addresses (127.0.0.2, 127.0.0.3) by a
//! small python3 client. The upstream is the emulator on loopback, never 169.254.169.254.
//! Nothing prints a token or a secret key: the client prints lengths and prefixes.

use std::process::Command;

use imdsguard_testkit::Netns;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_imdsguard");

const RULES: &str = r#"cloud: aws
rules:
  - name: everyone-placement
    subjects: [{namespace: "*"}]
    paths: [/latest/meta-data/placement, /latest/meta-data/iam]
  - name: imdsv2-token
    subjects: [{namespace: "*"}]
    methods: [PUT]
    paths: [/latest/api/token]
  - name: payments-node-role
    subjects: [{namespace: payments, serviceAccount: api}]
    paths: [/latest/meta-data/iam/security-credentials/*]
"#;

const PODS: &str = "- {ip: 127.0.0.2, namespace: payments, name: api-0, serviceAccount: api}
- {ip: 127.0.0.3, namespace: web, name: frontend-0}
";

/// `client.py SOURCE METHOD PATH [TOKEN_FILE] [SAVE_FILE]`: one request from SOURCE;
/// sends the token in TOKEN_FILE (`-`: none), saves a token answer to SAVE_FILE; prints
/// `{"status", "body"}` with a token answer as its length and credentials as the
/// AccessKeyId's first 4 characters.
const CLIENT: &str = r#"
import http.client, json, sys
source, method, path = sys.argv[1], sys.argv[2], sys.argv[3]
token_file = sys.argv[4] if len(sys.argv) > 4 else "-"
save = sys.argv[5] if len(sys.argv) > 5 else None
headers = {}
if method == "PUT":
    headers["X-aws-ec2-metadata-token-ttl-seconds"] = "300"
if token_file != "-":
    headers["X-aws-ec2-metadata-token"] = open(token_file).read()
c = http.client.HTTPConnection("127.0.0.1", 8170, timeout=5, source_address=(source, 0))
c.request(method, path, headers=headers)
r = c.getresponse()
body = r.read().decode("utf-8", "replace")
if save and r.status == 200:
    open(save, "w").write(body)
    body = "<%d chars>" % len(body)
try:
    doc = json.loads(body)
    if isinstance(doc, dict) and "AccessKeyId" in doc:
        doc = {"AccessKeyId": doc["AccessKeyId"][:4]}
except ValueError:
    doc = body
print(json.dumps({"status": r.status, "body": doc}))
"#;

const SCRIPT: &str = r#"
set -u
started() {
    for _ in $(seq 100); do grep -q "$2" "$1" && return 0; sleep 0.05; done
    echo "$3 did not start" >&2; [ -n "${4:-}" ] && cat "$4" >&2; exit 97
}
"$BIN" emulate --cloud aws --listen 127.0.0.1:8169 --seed 7 >"$DIR/emulate.out" 2>/dev/null &
emu=$!
px=
trap 'kill $emu $px 2>/dev/null' EXIT
started "$DIR/emulate.out" imds emulator
"$BIN" proxy --cloud aws --listen 127.0.0.1:8170 --admin-listen 127.0.0.1:9170 \
    --upstream http://127.0.0.1:8169 --rules "$DIR/rules.yaml" --pods "$DIR/pods.yaml" \
    --log-format json >"$DIR/proxy.out" 2>"$DIR/proxy.err" &
px=$!
started "$DIR/proxy.out" admin proxy "$DIR/proxy.err"
creds=/latest/meta-data/iam/security-credentials/imdsguard-demo-node-role
req() { python3 "$DIR/client.py" "$@"; }
echo "== payments-token"; req 127.0.0.2 PUT /latest/api/token - "$DIR/payments.token"
echo "== web-token"; req 127.0.0.3 PUT /latest/api/token - "$DIR/web.token"
echo "== payments-creds"; req 127.0.0.2 GET $creds "$DIR/payments.token"
echo "== web-creds"; req 127.0.0.3 GET $creds "$DIR/web.token"
echo "== web-reuses-payments-token"; req 127.0.0.3 GET /latest/meta-data/placement/region "$DIR/payments.token"
echo "== web-region"; req 127.0.0.3 GET /latest/meta-data/placement/region "$DIR/web.token"
echo "== upper-case-role"; req 127.0.0.2 GET /latest/meta-data/iam/security-credentials/IMDSGUARD-DEMO-NODE-ROLE "$DIR/payments.token"
echo "== dot-segment"; req 127.0.0.3 GET /latest/meta-data/placement/../iam/security-credentials/imdsguard-demo-node-role
kill -TERM $px
wait $px
echo "proxy-exit $?"
px=
echo "== decisions"
grep '"imdsguard::decision"' "$DIR/proxy.err" || true
echo "== tokens"
cat "$DIR/payments.token"; echo; cat "$DIR/web.token"; echo
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

fn section<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .split_once(&format!("== {name}\n"))
        .map(|(_, rest)| rest.split("\n== ").next().unwrap_or(""))
        .unwrap_or("")
}

#[test]
#[ignore = "needs netns"]
fn imdsv2_tokens_are_bound_to_their_pod_and_credentials_to_their_rule() {
    let ns = Netns::require("proxy_aws");
    let dir = std::env::temp_dir().join(format!("imdsguard-proxy-aws-{}", std::process::id()));
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

    for name in ["payments-token", "web-token", "web-region"] {
        assert_eq!(answer(&stdout, name)["status"], 200, "{name}: {stdout}");
    }
    let creds = answer(&stdout, "payments-creds");
    assert_eq!(creds["status"], 200, "{stdout}");
    assert_eq!(creds["body"]["AccessKeyId"], "ASIA");
    let denied = answer(&stdout, "web-creds");
    assert_eq!(denied["status"], 403);
    assert_eq!(denied["body"]["error"], "imdsguard_denied");
    assert_eq!(denied["body"]["imdsguard"]["rule"], "everyone-placement");
    let reuse = answer(&stdout, "web-reuses-payments-token");
    assert_eq!(reuse["status"], 401, "{stdout}");
    // A case variant is another path: the `*` for the role name lets it through, and
    // IMDS has no such role.
    assert_eq!(answer(&stdout, "upper-case-role")["status"], 404);
    let dot = answer(&stdout, "dot-segment");
    assert_eq!(
        dot["body"]["imdsguard"]["rule"], "canonical-form",
        "{stdout}"
    );

    // The decision log: one line per request, the reuse named, never a token.
    let decisions = section(&stdout, "decisions");
    let records: Vec<Value> = decisions
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(records.len(), 8, "{decisions}");
    let reuse = records
        .iter()
        .find(|r| r["fields"]["rule"] == "token-not-issued-to-caller")
        .unwrap_or_else(|| panic!("{decisions}"));
    assert_eq!(reuse["fields"]["pod"], "web/frontend-0");
    assert_eq!(reuse["fields"]["endpoint"], "meta-data");
    assert!(
        reuse["fields"]["reason"]
            .as_str()
            .unwrap()
            .contains("issued to pod payments/api-0"),
        "{reuse}"
    );
    let tokens = section(&stdout, "tokens");
    for token in tokens.lines().filter(|t| !t.is_empty()) {
        assert!(token.len() > 20, "{token}");
        assert!(!decisions.contains(token), "a token in the log");
        assert!(!stderr.contains(token), "a token on stderr");
    }
}

#[test]
fn check_names_the_cloud_and_refuses_rules_of_another() {
    let dir =
        std::env::temp_dir().join(format!("imdsguard-proxy-aws-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dir.join("rules.yaml");
    std::fs::write(&rules, RULES).unwrap();
    let check = |cloud: &str| {
        Command::new(BIN)
            .args(["proxy", "--check", "--cloud", cloud, "--rules"])
            .arg(&rules)
            .output()
            .unwrap()
    };
    let ok = check("aws");
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        stdout.contains("3 rule(s): everyone-placement, imdsv2-token, payments-node-role"),
        "{stdout}"
    );
    assert!(stdout.contains("cloud aws"), "{stdout}");
    for other in ["azure", "gcp"] {
        let refused = check(other);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success());
        assert!(
            stderr.contains("rules are for cloud aws")
                && stderr.contains(&format!("--cloud {other}")),
            "{stderr}"
        );
    }
    // Azure rules (no `cloud:`) under --cloud aws: the error says what to write.
    std::fs::write(
        &rules,
        "rules: [{name: v, subjects: [{namespace: '*'}], paths: [/metadata/versions]}]",
    )
    .unwrap();
    let refused = check("aws");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("write `cloud: aws`"), "{stderr}");
    // A case typo in an AWS path is an error naming the rule.
    std::fs::write(
        &rules,
        "cloud: aws\nrules: [{name: v, subjects: [{namespace: '*'}], paths: [/latest/Meta-Data]}]",
    )
    .unwrap();
    let refused = check("aws");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("rule `v`") && stderr.contains("case-sensitive"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
