//! Black-box tests of the probe: the built `imdsguard probe` command runs against a fake
//! IMDS / WireServer (`tests/support/fake_imds.py`, on 127.0.0.1), both INSIDE a network
//! namespace of their own that holds only loopback, so that a slip in the probe cannot
//! send anything to a real metadata address (or anywhere else).
//!
//! The namespace comes from [`imdsguard_testkit::Netns`], which checks that each run sees
//! no interface but `lo` and is not in the test's namespace before starting anything.
//! The tests that run the probe are `#[ignore = "needs netns"]`; when no namespace can
//! be made, or python3 (the fake IMDS) is missing, they fail and say why.
//!
//! No test runs the probe against its default endpoint: every run names `--endpoint`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use imdsguard_testkit::{Netns, require};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_imdsguard");
const FAKE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/fake_imds.py");

const OPEN: &str = "http://127.0.0.1:18080";
const DENYING: &str = "http://127.0.0.1:18081";
const HANGING: &str = "http://127.0.0.1:18082";
const FULL_BACKLOG: &str = "http://127.0.0.1:18083";
const CLOSED: &str = "http://127.0.0.1:18084";
const RESETTING: &str = "http://127.0.0.1:18085";
const SEVERAL_IDENTITIES: &str = "http://127.0.0.1:18086";
const WIRESERVER: &str = "http://127.0.0.1:18090";
const HOSTGAPLUGIN: &str = "http://127.0.0.1:18091";

const KUBELET: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const UNKNOWN: &str = "99999999-0000-4000-8000-000000000009";
const MIRID: &str = "/subscriptions/00000000-1111-4222-8333-444444444444/resourcegroups/MC_rg-prod_aks-prod_westeurope/providers/Microsoft.ManagedIdentity/userAssignedIdentities/aks-prod-agentpool";

// ---------------------------------------------------------------------------------------
// What a run needs: an isolated namespace and python3

/// The isolated namespace, or a panic failing `test` when there is none or no python3
/// (the fake IMDS) to run in it.
fn namespace(test: &str) -> &'static Netns {
    require(test, &["python3"]);
    Netns::require(test)
}

/// `text` as one shell word.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

// ---------------------------------------------------------------------------------------
// Running the probe beside the fake IMDS

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    /// Requests the fake IMDS saw, in order.
    requests: Vec<Value>,
    elapsed: Duration,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "imdsguard-probe-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs in the namespace (after [`Netns`]'s isolation check), with the probe's arguments
/// as `$@`: starts the fake IMDS, waits until it listens, runs the probe.
const SCRIPT: &str = r#"
unset http_proxy HTTP_PROXY no_proxy NO_PROXY
python3 "$FAKE" "$SCRATCH" >"$SCRATCH/fake.log" 2>&1 &
fake=$!
i=0
while [ ! -f "$SCRATCH/ready" ]; do
    i=$((i + 1))
    if [ "$i" -gt 200 ] || ! kill -0 "$fake" 2>/dev/null; then
        echo "fake IMDS did not start:" >&2; cat "$SCRATCH/fake.log" >&2
        kill "$fake" 2>/dev/null; exit 96
    fi
    sleep 0.05
done
timeout 60 "$BIN" probe "$@"
rc=$?
kill "$fake" 2>/dev/null
wait "$fake" 2>/dev/null
exit "$rc"
"#;

/// Runs `imdsguard probe ARGS` in a fresh loopback-only namespace beside the fake IMDS.
fn probe(test: &str, token: &str, args: &[&str]) -> Run {
    assert!(
        args.contains(&"--endpoint"),
        "every test names --endpoint: the default one is never probed"
    );
    let netns = namespace(test);
    let scratch = Scratch::new();
    let quoted: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
    let script = format!("set -- {}\n{SCRIPT}", quoted.join(" "));
    let start = Instant::now();
    let out = netns.run(
        &script,
        &[
            ("FAKE", FAKE),
            ("BIN", BIN),
            ("SCRATCH", &scratch.0.display().to_string()),
            ("FAKE_IMDS_TOKEN", token),
        ],
    );
    let elapsed = start.elapsed();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        requests: read_requests(&scratch.0),
        elapsed,
    };
    assert!(
        matches!(run.code, 0..=2),
        "{test}: the run failed (status {}; 3 or 4: the namespace check refused, nothing \
         was started; 96: the fake IMDS did not start; 124: the probe hung):\nstdout:\n{}\nstderr:\n{}",
        run.code,
        run.stdout,
        run.stderr
    );
    run
}

fn read_requests(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("requests.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// A JWT-shaped token like a managed identity's (unsigned: only its shape matters).
fn token() -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"RS256","x5t":"fake"}"#);
    let claims = serde_json::json!({
        "aud": "https://management.azure.com/",
        "iss": "https://sts.windows.net/72f988bf-0000-0000-0000-000000000000/",
        "iat": 1_900_000_000, "nbf": 1_900_000_000, "exp": 1_900_086_400,
        "appid": KUBELET, "appidacr": "2",
        "oid": "bbbbbbbb-0000-4000-8000-000000000002",
        "tid": "72f988bf-0000-0000-0000-000000000000",
        "xms_mirid": MIRID,
    });
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string().as_bytes());
    format!("{header}.{payload}.ZmFrZS1zaWduYXR1cmUtYnl0ZXMtZm9yLXRlc3Rz")
}

fn steps<'a>(report: &'a Value, name: &str) -> Vec<&'a Value> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == name)
        .collect()
}

fn step<'a>(report: &'a Value, name: &str) -> &'a Value {
    let found = steps(report, name);
    assert_eq!(found.len(), 1, "one {name} step");
    found[0]
}

fn token_step<'a>(report: &'a Value, identity: Option<&str>, resource: &str) -> &'a Value {
    steps(report, "token")
        .into_iter()
        .find(|s| {
            s["resource"] == resource
                && match identity {
                    None => s["identity"]["kind"] == "default",
                    Some(id) => s["identity"]["value"] == id,
                }
        })
        .unwrap_or_else(|| panic!("a token step for {identity:?} and {resource}"))
}

/// The token and its signature never appear; its fingerprint does.
fn assert_token_hidden(run: &Run, token: &str) {
    let signature = token.rsplit('.').next().unwrap();
    let payload = token.split('.').nth(1).unwrap();
    for (name, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
        assert!(!text.contains(token), "the token leaked on {name}");
        assert!(!text.contains(signature), "the signature leaked on {name}");
        assert!(!text.contains(payload), "the payload leaked on {name}");
    }
    let fingerprint = imdsguard_core::token::fingerprint(token);
    assert!(
        run.stdout.contains(&fingerprint),
        "fingerprint {fingerprint} shown"
    );
}

// ---------------------------------------------------------------------------------------
// The tests

fn open_args() -> Vec<&'static str> {
    vec![
        "--endpoint",
        OPEN,
        "--wireserver",
        WIRESERVER,
        "--hostgaplugin",
        HOSTGAPLUGIN,
        "--client-id",
        UNKNOWN,
        "--resource",
        "https://error.invalid/",
    ]
}

#[test]
#[ignore = "needs netns"]
fn an_open_endpoint_is_walked_to_the_end_and_reported_in_json() {
    let token = token();
    let mut args = open_args();
    args.extend(["--format", "json"]);
    let run = probe("open_json", &token, &args);
    assert_eq!(
        run.code, 1,
        "something sensitive is reachable\n{}",
        run.stderr
    );
    assert_token_hidden(&run, &token);
    let report = run.json();

    let tcp = step(&report, "tcp-connect");
    assert_eq!(tcp["class"], "reachable");
    assert_eq!(tcp["target"], "127.0.0.1:18080");
    assert!(tcp["latency_ms"].is_u64());

    let bare = step(&report, "instance-without-header");
    assert_eq!(bare["class"], "needs-header");
    assert_eq!(bare["http_status"], 400);
    assert_eq!(
        bare["target"],
        "http://127.0.0.1:18080/metadata/instance?api-version=2021-02-01"
    );

    let instance = step(&report, "instance");
    assert_eq!(instance["class"], "exposed");
    assert_eq!(instance["http_status"], 200);
    let exposed = &instance["instance"];
    assert_eq!(
        exposed["subscription_id"],
        "00000000-1111-4222-8333-444444444444"
    );
    assert_eq!(exposed["resource_group"], "MC_rg-prod_aks-prod_westeurope");
    assert_eq!(exposed["vm_scale_set"], "aks-nodepool1-12345678-vmss");
    assert_eq!(
        exposed["computer_name"],
        "aks-nodepool1-12345678-vmss000000"
    );
    assert_eq!(exposed["admin_username"], "azureuser");
    assert_eq!(exposed["ssh_public_keys"], 1);
    assert_eq!(exposed["custom_data_present"], false);
    assert_eq!(exposed["user_data_present"], true);
    assert_eq!(
        exposed["identity_tags"][0]["name"],
        "aks-managed-kubeletIdentityClientID"
    );
    assert!(
        !run.stdout.contains("FAKEKEYMATERIAL"),
        "SSH key data shown"
    );
    assert!(!run.stdout.contains("I2Nsb3Vk"), "user data shown");

    let identities = step(&report, "identities");
    assert_eq!(identities["class"], "info");
    assert_eq!(
        report["identities"],
        serde_json::json!([
            {"kind": "client_id", "value": KUBELET, "source": "tag aks-managed-kubeletIdentityClientID"},
            {"kind": "client_id", "value": UNKNOWN, "source": "--client-id"},
        ])
    );

    // 3 identities (default, kubelet, unknown) x 3 resources.
    assert_eq!(steps(&report, "token").len(), 9);
    for identity in [None, Some(KUBELET)] {
        let obtained = token_step(&report, identity, "https://management.azure.com/");
        assert_eq!(obtained["class"], "token-obtained", "{obtained}");
        assert_eq!(obtained["http_status"], 200);
        let summary = &obtained["token"];
        assert_eq!(
            summary["fingerprint"],
            imdsguard_core::token::fingerprint(&token)
        );
        assert_eq!(summary["length"], token.len());
        assert_eq!(summary["token_type"], "Bearer");
        assert_eq!(summary["claims"]["appid"], KUBELET);
        assert_eq!(summary["claims"]["xms_mirid"], MIRID);
        assert_eq!(summary["claims"]["aud"], "https://management.azure.com/");
        assert_eq!(summary["claims"]["exp"], 1_900_086_400);
        assert!(
            obtained["detail"]
                .as_str()
                .unwrap()
                .contains("xms_mirid /subscriptions/")
        );

        let throttled = token_step(&report, identity, "https://vault.azure.net");
        assert_eq!(throttled["class"], "throttled");
        assert_eq!(throttled["http_status"], 429);

        let failed = token_step(&report, identity, "https://error.invalid/");
        assert_eq!(failed["class"], "error");
        assert_eq!(failed["http_status"], 500);
        assert!(
            failed["detail"]
                .as_str()
                .unwrap()
                .contains("HTTP 500 Internal Server Error: unknown: token service failed"),
            "{failed}"
        );
    }
    let missing = token_step(&report, Some(UNKNOWN), "https://management.azure.com/");
    assert_eq!(missing["class"], "identity-not-found");
    assert_eq!(missing["http_status"], 400);
    assert_eq!(missing["identity"]["source"], "--client-id");

    let goalstate = step(&report, "wireserver-goalstate");
    assert_eq!(goalstate["class"], "exposed");
    assert_eq!(
        goalstate["target"],
        "http://127.0.0.1:18090/machine/?comp=goalstate"
    );
    assert!(
        goalstate["detail"]
            .as_str()
            .unwrap()
            .contains("Incarnation 3")
    );
    let vmsettings = step(&report, "hostgaplugin-vmsettings");
    assert_eq!(vmsettings["class"], "exposed");
    assert!(
        vmsettings["detail"]
            .as_str()
            .unwrap()
            .contains("protected settings present")
    );
    assert!(!run.stdout.contains("FAKEENCRYPTED"));

    let summary = &report["summary"];
    assert_eq!(summary["sensitive"], true);
    assert_eq!(summary["exit_code"], 1);
    assert_eq!(summary["counts"]["token-obtained"], 2);
    assert_eq!(summary["counts"]["exposed"], 3);
    for step in report["steps"].as_array().unwrap() {
        for key in [
            "name",
            "target",
            "class",
            "detail",
            "http_status",
            "latency_ms",
        ] {
            assert!(step.get(key).is_some(), "{key} in {step}");
        }
    }

    // What went over the wire: the header-less request first, then `Metadata: true`
    // on everything else, never X-Forwarded-For, the documented token query.
    let imds: Vec<&Value> = run.requests.iter().filter(|r| r["port"] == 18080).collect();
    assert_eq!(imds.len(), 2 + 9);
    assert!(imds[0]["headers"].get("metadata").is_none());
    for request in &imds[1..] {
        assert_eq!(request["headers"]["metadata"], "true", "{request}");
    }
    for request in &run.requests {
        assert!(request["headers"].get("x-forwarded-for").is_none());
    }
    assert!(imds.iter().any(|r| r["path"]
        == "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F"));
    assert!(imds.iter().any(|r| r["path"]
        == format!("/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F&client_id={KUBELET}")));
    let goal = run
        .requests
        .iter()
        .find(|r| r["port"] == 18090)
        .expect("goal state asked");
    assert_eq!(goal["headers"]["x-ms-version"], "2012-11-30");
}

#[test]
#[ignore = "needs netns"]
fn an_open_endpoint_reads_well_as_text() {
    let token = token();
    let run = probe("open_text", &token, &open_args());
    assert_eq!(run.code, 1);
    assert_token_hidden(&run, &token);
    let text = &run.stdout;
    for expected in [
        "imdsguard probe",
        "tcp-connect",
        "reachable",
        "needs-header",
        "EXPOSED",
        "subscription 00000000-1111-4222-8333-444444444444",
        "admin user azureuser, 1 SSH public key, custom data absent, user data present",
        "tags naming identities: aks-managed-kubeletIdentityClientID=aaaaaaaa-0000-4000-8000-000000000001",
        "TOKEN-OBTAINED",
        "default identity (no selector) -> https://management.azure.com/",
        "xms_mirid /subscriptions/",
        "exp 2030-03-18T",
        "expires_on 20",
        "identity-not-found",
        "throttled",
        "HTTP 500",
        "wireserver-goalstate",
        "hostgaplugin-vmsettings",
        "SENSITIVE DATA REACHABLE",
        "2 access token(s)",
    ] {
        assert!(
            text.contains(expected),
            "`{expected}` missing from:\n{text}"
        );
    }
    assert!(run.stderr.is_empty(), "{}", run.stderr);
}

#[test]
#[ignore = "needs netns"]
fn several_identities_without_selector_is_identity_required_not_an_error() {
    let run = probe(
        "identity_required",
        &token(),
        &["--endpoint", SEVERAL_IDENTITIES, "--format", "json"],
    );
    assert_eq!(run.code, 1, "the kubelet identity's token is reachable");
    let report = run.json();
    for resource in ["https://management.azure.com/", "https://vault.azure.net"] {
        let default = token_step(&report, None, resource);
        assert_eq!(default["class"], "identity-required", "{default}");
        assert_eq!(default["http_status"], 400);
        let detail = default["detail"].as_str().unwrap();
        assert!(detail.contains("needs client_id"), "{detail}");
        assert!(
            detail.contains("invalid_request: Multiple user assigned identities exist"),
            "{detail}"
        );
    }
    let kubelet = token_step(&report, Some(KUBELET), "https://management.azure.com/");
    assert_eq!(kubelet["class"], "token-obtained", "{kubelet}");
    let counts = &report["summary"]["counts"];
    assert_eq!(counts["identity-required"], 2);
    assert!(counts.get("error").is_none(), "{counts}");
    // The requests without selector went out as documented.
    assert!(run.requests.iter().any(|r| r["port"] == 18086
        && r["path"]
            == "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F"));
}

#[test]
#[ignore = "needs netns"]
fn an_explicit_endpoint_leaves_the_real_wireserver_alone() {
    let run = probe(
        "wireserver_not_checked",
        &token(),
        &["--endpoint", OPEN, "--format", "json"],
    );
    let report = run.json();
    for name in ["wireserver-goalstate", "hostgaplugin-vmsettings"] {
        let step = step(&report, name);
        assert_eq!(step["class"], "not-checked");
        assert!(step["latency_ms"].is_null());
        assert!(step["detail"].as_str().unwrap().contains("--endpoint"));
    }
    assert!(report["wireserver"].is_null() && report["hostgaplugin"].is_null());
    assert!(run.requests.iter().all(|r| r["port"] == 18080));
}

#[test]
#[ignore = "needs netns"]
fn an_imdsguard_denial_is_recognised() {
    let run = probe(
        "imdsguard_denial",
        &token(),
        &["--endpoint", DENYING, "--format", "json"],
    );
    assert_eq!(run.code, 0, "nothing sensitive behind imdsguard");
    let report = run.json();
    assert_eq!(step(&report, "tcp-connect")["class"], "reachable");
    for name in ["instance-without-header", "instance"] {
        let step = step(&report, name);
        assert_eq!(step["class"], "blocked-by-imdsguard");
        assert_eq!(step["http_status"], 403);
        assert_eq!(step["denial"]["rule"], "deny-all-pods");
        assert!(
            step["detail"]
                .as_str()
                .unwrap()
                .contains("denied by imdsguard (rule deny-all-pods): pods may not reach IMDS")
        );
    }
    let tokens = steps(&report, "token");
    assert_eq!(tokens.len(), 2, "default identity x ARM, Key Vault");
    assert!(tokens.iter().all(|s| s["class"] == "blocked-by-imdsguard"));
    assert_eq!(report["summary"]["sensitive"], false);
}

#[test]
#[ignore = "needs netns"]
fn a_refused_connection_is_blocked_refused() {
    let run = probe(
        "refused",
        &token(),
        &["--endpoint", CLOSED, "--format", "json"],
    );
    assert_eq!(run.code, 0);
    let report = run.json();
    let tcp = step(&report, "tcp-connect");
    assert_eq!(tcp["class"], "blocked-refused");
    assert_eq!(tcp["detail"], "connection refused");
    for step in report["steps"].as_array().unwrap().iter().skip(1) {
        if step["name"] != "identities" {
            assert_eq!(step["class"], "not-checked", "{step}");
        }
    }
}

#[test]
#[ignore = "needs netns"]
fn a_dropped_connection_is_blocked_timeout() {
    let run = probe(
        "connect_timeout",
        &token(),
        &[
            "--endpoint",
            FULL_BACKLOG,
            "--connect-timeout",
            "300ms",
            "--format",
            "json",
        ],
    );
    assert_eq!(run.code, 0);
    let report = run.json();
    let tcp = step(&report, "tcp-connect");
    assert_eq!(tcp["class"], "blocked-timeout");
    assert!(tcp["latency_ms"].as_u64().unwrap() >= 250, "{tcp}");
    assert!(
        tcp["detail"]
            .as_str()
            .unwrap()
            .contains("not established in time")
    );
    assert_eq!(step(&report, "instance")["class"], "not-checked");
}

#[test]
#[ignore = "needs netns"]
fn an_endpoint_that_never_answers_is_blocked_timeout() {
    let run = probe(
        "answer_timeout",
        &token(),
        &[
            "--endpoint",
            HANGING,
            "--timeout",
            "400ms",
            "--format",
            "json",
        ],
    );
    assert_eq!(run.code, 0);
    let report = run.json();
    assert_eq!(step(&report, "tcp-connect")["class"], "reachable");
    let hung: Vec<&Value> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s["name"] == "instance"
                || s["name"] == "instance-without-header"
                || s["name"] == "token"
        })
        .collect();
    assert_eq!(hung.len(), 4);
    for step in hung {
        assert_eq!(step["class"], "blocked-timeout", "{step}");
        assert!(step["http_status"].is_null());
        let ms = step["latency_ms"].as_u64().unwrap();
        assert!((350..3000).contains(&ms), "{step}");
    }
    assert!(run.elapsed < Duration::from_secs(15));
}

#[test]
#[ignore = "needs netns"]
fn a_reset_connection_is_blocked_refused() {
    let run = probe(
        "reset",
        &token(),
        &["--endpoint", RESETTING, "--format", "json"],
    );
    assert_eq!(run.code, 0);
    let report = run.json();
    assert_eq!(step(&report, "tcp-connect")["class"], "reachable");
    let instance = step(&report, "instance");
    assert_eq!(instance["class"], "blocked-refused", "{instance}");
    assert!(instance["detail"].as_str().unwrap().contains("reset"));
}

#[test]
#[ignore = "needs netns"]
fn usage_errors_exit_2_without_probing() {
    for args in [
        &["--endpoint", "https://127.0.0.1:18080"][..],
        &["--endpoint", OPEN, "--wireserver", "127.0.0.1:18090"],
        &["--endpoint", OPEN, "--timeout", "0"],
        &["--endpoint", OPEN, "--format", "yaml"],
        &["--endpoint", OPEN, "--no-such-flag"],
    ] {
        let run = probe("usage", &token(), args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{args:?}");
        assert!(!run.stderr.is_empty(), "{args:?}");
        assert!(run.requests.is_empty(), "{args:?}");
    }
}
