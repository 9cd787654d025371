//! Black-box tests of `imdsguard audit --rules/--preset` (docs/expected-access.md): the
//! ama-logs DaemonSet of AKS Container Insights, with the labels its chart gives its pods
//! (presets/aks.yaml cites them), reported as `expected-access` (info) when it reaches
//! IMDS and `expected-blocked` (medium) when a blanket deny blocks it; the exit status
//! under `--fail-on reachable`; errors for a bad rules file and an unknown preset; SARIF.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_imdsguard");
const IMDS: &str = "169.254.169.254:80/TCP";
const WIRESERVER: &str = "168.63.129.16:80/TCP";

/// The ama-logs DaemonSet as the add-on's chart writes its pod template
/// (ama-logs-daemonset-aks.yaml in microsoft/Docker-Provider, cited in presets/aks.yaml).
const AMA_LOGS: &str = r#"apiVersion: apps/v1
kind: DaemonSet
metadata: {name: ama-logs, namespace: kube-system}
spec:
  selector:
    matchLabels: {component: ama-logs-agent, tier: node}
  template:
    metadata:
      labels:
        component: ama-logs-agent
        tier: node
        kubernetes.azure.com/managedby: aks
    spec:
      serviceAccountName: ama-logs
"#;

/// A namespace-wide deny of all egress but DNS: the seed's "blanket deny".
const BLANKET_DENY: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: kube-system}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
"#;

/// A workload no rule expects.
const SHOP_WEB: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  template:
    metadata: {labels: {app: web}}
"#;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

/// `imdsguard audit -f - ARGS` with `docs` on standard input.
fn audit(docs: &[&str], args: &[&str]) -> Run {
    let mut child = Command::new(BIN)
        .args(["audit", "-f", "-"])
        .args(args)
        .env("COLUMNS", "250")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run imdsguard");
    // The binary may exit before reading its input (a bad --rules file is refused
    // first): a broken pipe here is that, and the exit status tells the rest.
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(docs.join("---\n").as_bytes());
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().expect("exit code"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn findings<'a>(r: &'a Value, id: &str) -> Vec<&'a Value> {
    r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == id)
        .collect()
}

fn workload<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == name)
        .unwrap_or_else(|| panic!("no workload {name}: {r:#}"))
}

/// A folder for a test's rules files, removed with everything in it when dropped (also
/// when the test panics).
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh folder under the target dir for rules files, removed when dropped.
fn temp_dir(tag: &str) -> TempDir {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("audit-expected-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn ama_logs_under_a_blanket_deny_is_expected_blocked_naming_the_policy() {
    let run = audit(
        &[AMA_LOGS, BLANKET_DENY],
        &["--preset", "aks", "--format", "json"],
    );
    let r = run.json();
    let ama = workload(&r, "ama-logs");
    assert_eq!(ama["expected"], true);
    assert_eq!(
        ama["expected_by"],
        serde_json::json!(["aks-container-insights"])
    );
    assert_eq!(ama["verdicts"][0]["target"], IMDS);
    assert_eq!(ama["verdicts"][0]["reachable"], false);
    assert_eq!(ama["verdicts"][0]["expected"], true);

    let blocked = findings(&r, "expected-blocked");
    assert_eq!(blocked.len(), 1, "{:#}", r["findings"]);
    let f = blocked[0];
    assert_eq!(f["severity"], "medium");
    assert_eq!(f["targets"], serde_json::json!([IMDS]));
    let message = f["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "kube-system/ama-logs[DaemonSet] is expected to reach 169.254.169.254:80/TCP (rule(s) aks-container-insights) but is blocked by the networkpolicy tier (NetworkPolicy kube-system/deny-egress):"
        ),
        "{message}"
    );
    assert_eq!(f["decided_by"]["tier"], "networkpolicy");
    assert_eq!(f["decided_by"]["object"]["name"], "deny-egress");
    assert_eq!(f["objects"][0]["name"], "ama-logs");
    assert_eq!(f["objects"][1]["kind"], "NetworkPolicy");
    assert_eq!(f["objects"][1]["name"], "deny-egress");
    assert!(findings(&r, "expected-access").is_empty());
    assert!(findings(&r, "workload-reaches-target").is_empty());

    // Nothing reaches a target: `--fail-on reachable` passes, `--fail-on medium` fails on
    // the blocked add-on.
    assert_eq!(run.code, 0, "{}", run.stderr);
    let medium = audit(
        &[AMA_LOGS, BLANKET_DENY],
        &["--preset", "aks", "--fail-on", "medium"],
    );
    assert_eq!(medium.code, 1, "{}", medium.stderr);
}

#[test]
fn ama_logs_without_policy_is_expected_access_info_not_high() {
    let args = ["--target", IMDS, "--format", "json"];
    // Without the preset it is an exposure like any other.
    let plain = audit(&[AMA_LOGS], &args);
    assert_eq!(plain.code, 1);
    let r = plain.json();
    assert_eq!(findings(&r, "workload-reaches-target").len(), 1);
    assert_eq!(workload(&r, "ama-logs")["expected"], false);

    let run = audit(&[AMA_LOGS], &[&args[..], &["--preset", "aks"]].concat());
    let r = run.json();
    assert!(
        findings(&r, "workload-reaches-target").is_empty(),
        "{:#}",
        r["findings"]
    );
    let access = findings(&r, "expected-access");
    assert_eq!(access.len(), 1);
    assert_eq!(access[0]["severity"], "info");
    assert!(
        access[0]["message"]
            .as_str()
            .unwrap()
            .contains("as rule(s) aks-container-insights expect"),
        "{}",
        access[0]["message"]
    );
    assert_eq!(access[0]["decided_by"]["tier"], "default");
    assert!(
        r["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["severity"] != "high"),
        "{:#}",
        r["findings"]
    );
    assert_eq!(r["summary"]["findings"]["info"], 1);
    assert_eq!(
        r["summary"]["reachable"],
        serde_json::json!([{"target": IMDS, "workloads": 1, "expected": 1}])
    );
    assert_eq!(workload(&r, "ama-logs")["verdicts"][0]["expected"], true);
    // Only expected workloads reach IMDS: the default --fail-on reachable passes, and so
    // does --fail-on low (info never fails) once no other finding is left.
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        audit(
            &[AMA_LOGS],
            &["--target", IMDS, "--preset", "aks", "--fail-on", "high"]
        )
        .code,
        0
    );

    // An unexpected workload reaching IMDS fails it, and is the only one named.
    let run = audit(
        &[AMA_LOGS, SHOP_WEB],
        &[&args[..], &["--preset", "aks"]].concat(),
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let r = run.json();
    let reach = findings(&r, "workload-reaches-target");
    assert_eq!(reach.len(), 1);
    assert_eq!(reach[0]["objects"][0]["name"], "web");
    assert_eq!(reach[0]["severity"], "high");
    assert_eq!(findings(&r, "expected-access").len(), 1);
    assert_eq!(
        r["summary"]["reachable"],
        serde_json::json!([{"target": IMDS, "workloads": 2, "expected": 1}])
    );
}

#[test]
fn wireserver_reached_by_an_expected_workload_stays_a_finding() {
    let run = audit(
        &[AMA_LOGS],
        &[
            "--target", IMDS, "--target", WIRESERVER, "--preset", "aks", "--format", "json",
        ],
    );
    assert_eq!(
        run.code, 1,
        "the rules are about IMDS: WireServer is an exposure"
    );
    let r = run.json();
    let reach = findings(&r, "workload-reaches-target");
    assert_eq!(reach.len(), 1);
    assert_eq!(reach[0]["targets"], serde_json::json!([WIRESERVER]));
    assert_eq!(
        findings(&r, "expected-access")[0]["targets"],
        serde_json::json!([IMDS])
    );
    assert_eq!(workload(&r, "ama-logs")["verdicts"][1]["expected"], false);
}

/// The pattern `policy generate --engine networkpolicy` writes: a namespace-wide deny of
/// IMDS only, and an allow for the expected add-on's pods.
const DENY_IMDS_ALLOW_AMA_LOGS: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-imds, namespace: kube-system}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [169.254.169.254/32]}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-imds-ama-logs, namespace: kube-system}
spec:
  podSelector: {matchLabels: {component: ama-logs-agent}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 169.254.169.254/32}}]
    ports: [{port: 80, protocol: TCP}]
"#;

#[test]
fn an_expected_allow_is_no_reopening_and_info_never_fails() {
    let run = audit(
        &[AMA_LOGS, DENY_IMDS_ALLOW_AMA_LOGS],
        &[
            "--target",
            IMDS,
            "--preset",
            "aks",
            "--format",
            "json",
            "--fail-on",
            "low",
        ],
    );
    let r = run.json();
    let ids: Vec<&str> = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    // The allow re-opens IMDS for exactly the pods the rules expect: not
    // allow-reopens-target, and info does not reach --fail-on low.
    assert_eq!(ids, ["expected-access"], "{:#}", r["findings"]);
    let f = findings(&r, "expected-access")[0];
    assert_eq!(f["decided_by"]["object"]["name"], "allow-imds-ama-logs");
    assert_eq!(f["decided_by"]["tier"], "networkpolicy");
    assert_eq!(run.code, 0, "{}", run.stderr);

    // Without the rules, the same allow is a re-opening (high).
    let run = audit(
        &[AMA_LOGS, DENY_IMDS_ALLOW_AMA_LOGS],
        &["--target", IMDS, "--format", "json", "--fail-on", "low"],
    );
    assert_eq!(run.code, 1);
    let r = run.json();
    assert_eq!(findings(&r, "allow-reopens-target").len(), 1);
    assert_eq!(findings(&r, "workload-reaches-target").len(), 1);
}

#[test]
fn rules_files_add_up_with_the_preset() {
    let dir = temp_dir("add-up");
    let rules = dir.join("shop-rules.yaml");
    std::fs::write(
        &rules,
        "rules:\n- name: shop-web\n  subjects: [{namespace: shop, podSelector: {matchLabels: {app: web}}}]\n  paths: [/metadata/instance/compute/location]\n",
    )
    .unwrap();
    let run = audit(
        &[AMA_LOGS, SHOP_WEB],
        &[
            "--target",
            IMDS,
            "--preset",
            "aks",
            "--rules",
            s(&rules),
            "--format",
            "json",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let r = run.json();
    assert_eq!(
        workload(&r, "web")["expected_by"],
        serde_json::json!(["shop-web"])
    );
    assert_eq!(findings(&r, "expected-access").len(), 2);
}

#[test]
fn a_bad_rules_file_is_an_input_error_naming_the_file_and_rule() {
    let dir = temp_dir("bad");
    let bad = dir.join("bad-rules.yaml");
    std::fs::write(
        &bad,
        "rules:\n- name: fine\n  subjects: [{namespace: a}]\n  paths: [/metadata/instance]\n- name: broken\n  subjects: [{}]\n  paths: [/metadata/instance]\n",
    )
    .unwrap();
    let run = audit(&[AMA_LOGS], &["--rules", s(&bad)]);
    assert_eq!(run.code, 2, "as other input errors: {}", run.stderr);
    assert!(run.stdout.is_empty(), "no report: {}", run.stdout);
    assert!(run.stderr.contains(s(&bad)), "{}", run.stderr);
    assert!(run.stderr.contains("rule `broken`"), "{}", run.stderr);

    let missing = dir.join("missing.yaml");
    let run = audit(&[AMA_LOGS], &["--rules", s(&missing)]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains(s(&missing)), "{}", run.stderr);

    // A rule name the preset uses too.
    let dup = dir.join("dup.yaml");
    std::fs::write(
        &dup,
        "rules:\n- name: aks-container-insights\n  subjects: [{namespace: a}]\n  paths: [/metadata/instance]\n",
    )
    .unwrap();
    let run = audit(&[AMA_LOGS], &["--preset", "aks", "--rules", s(&dup)]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains(s(&dup)), "{}", run.stderr);
    assert!(
        run.stderr.contains("rule `aks-container-insights`"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_unknown_preset_is_an_error_listing_the_presets() {
    let run = audit(&[AMA_LOGS], &["--preset", "gke"]);
    assert_eq!(run.code, 2);
    assert!(run.stdout.is_empty());
    assert!(
        run.stderr
            .contains("unknown --preset `gke`: the presets are aks"),
        "{}",
        run.stderr
    );
}

#[test]
fn sarif_reports_info_as_note() {
    let run = audit(
        &[AMA_LOGS, SHOP_WEB],
        &["--target", IMDS, "--preset", "aks", "--format", "sarif"],
    );
    let log = run.json();
    let driver = &log["runs"][0]["tool"]["driver"];
    let rule = |id: &str| {
        driver["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("no rule {id}"))
            .clone()
    };
    assert_eq!(
        rule("expected-access")["defaultConfiguration"]["level"],
        "note"
    );
    assert_eq!(
        rule("expected-blocked")["defaultConfiguration"]["level"],
        "warning"
    );
    let results = log["runs"][0]["results"].as_array().unwrap();
    let access: Vec<&Value> = results
        .iter()
        .filter(|r| r["ruleId"] == "expected-access")
        .collect();
    assert_eq!(access.len(), 1);
    assert_eq!(access[0]["level"], "note");
    let index = access[0]["ruleIndex"].as_u64().unwrap() as usize;
    assert_eq!(driver["rules"][index]["id"], "expected-access");
    assert_eq!(access[0]["properties"]["tier"], "default");
    let reach: Vec<&Value> = results
        .iter()
        .filter(|r| r["ruleId"] == "workload-reaches-target")
        .collect();
    assert_eq!(reach.len(), 1);
    assert_eq!(reach[0]["level"], "error");
}

#[test]
fn table_marks_expected_workloads_and_verdicts() {
    let run = audit(
        &[AMA_LOGS, SHOP_WEB],
        &["--target", IMDS, "--preset", "aks", "--color", "never"],
    );
    let out = &run.stdout;
    assert!(
        out.contains(
            "2 of 2 workloads reach 169.254.169.254:80/TCP (Azure IMDS), 1 of them expected"
        ),
        "{out}"
    );
    assert!(out.contains("expected (aks-container-insights)"), "{out}");
    assert!(out.contains("(expected)"), "{out}");
    assert!(out.contains("info "), "{out}");
    assert!(out.contains("expected-access"), "{out}");

    let run = audit(
        &[AMA_LOGS, BLANKET_DENY],
        &["--target", IMDS, "--preset", "aks", "--color", "never"],
    );
    assert!(run.stdout.contains("BLOCKED"), "{}", run.stdout);
    assert!(run.stdout.contains("(expected!)"), "{}", run.stdout);
    assert!(run.stdout.contains("expected-blocked"), "{}", run.stdout);
}
