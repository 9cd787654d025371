//! Black-box tests of `imdsguard audit`: the built binary is run on the bundled AKS
//! example (`examples/aks-imds`, see its README for the planted failures) and on small
//! manifests written to scratch folders, and its exit status, JSON, SARIF and table
//! output are checked.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_imdsguard");
const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/aks-imds");

const IMDS: &str = "169.254.169.254:80/TCP";
const WIRESERVER: &str = "168.63.129.16:80/TCP";
const HOST_GA_PLUGIN: &str = "168.63.129.16:32526/TCP";
const AZURE_TARGETS: [&str; 3] = [IMDS, WIRESERVER, HOST_GA_PLUGIN];

// ---------------------------------------------------------------------------------------
// Running the binary

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    #[track_caller]
    fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "exit status; stderr:\n{}\nstdout:\n{}",
            self.stderr, self.stdout
        );
        self
    }
}

/// The binary with a stable environment: no NO_COLOR, a wide table.
fn imdsguard(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).env_remove("NO_COLOR").env("COLUMNS", "200");
    c
}

fn finish(c: &mut Command, stdin: Option<&str>) -> Run {
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().expect("run imdsguard");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        // A broken pipe: the binary exited before reading (its status tells).
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().expect("wait for imdsguard");
    Run {
        code: out.status.code().expect("exit status, not a signal"),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    }
}

fn run(args: &[&str]) -> Run {
    finish(&mut imdsguard(args), None)
}

fn run_in(dir: &Path, args: &[&str]) -> Run {
    finish(imdsguard(args).current_dir(dir), None)
}

fn run_with_stdin(args: &[&str], stdin: &str) -> Run {
    finish(&mut imdsguard(args), Some(stdin))
}

// ---------------------------------------------------------------------------------------
// Scratch folders

/// A fresh folder under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "imdsguard-audit-cli-{}-{tag}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create scratch folder");
        TempDir(path)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write scratch file");
        p
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("UTF-8 temp path")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

// ---------------------------------------------------------------------------------------
// Reading reports

fn workload<'a>(r: &'a Value, ns: &str, name: &str, kind: &str) -> &'a Value {
    r["workloads"]
        .as_array()
        .expect("workloads array")
        .iter()
        .find(|w| w["namespace"] == ns && w["name"] == name && w["kind"] == kind)
        .unwrap_or_else(|| panic!("no workload {ns}/{name}[{kind}] in {:#}", r["workloads"]))
}

fn workload_ids(r: &Value) -> Vec<String> {
    r["workloads"]
        .as_array()
        .expect("workloads array")
        .iter()
        .map(|w| {
            format!(
                "{}/{}[{}]",
                w["namespace"].as_str().unwrap(),
                w["name"].as_str().unwrap(),
                w["kind"].as_str().unwrap()
            )
        })
        .collect()
}

fn verdict<'a>(w: &'a Value, target: &str) -> &'a Value {
    w["verdicts"]
        .as_array()
        .expect("verdicts array")
        .iter()
        .find(|v| v["target"] == target)
        .unwrap_or_else(|| panic!("no verdict for {target} in {w:#}"))
}

fn finding_ids(r: &Value) -> BTreeSet<String> {
    r["findings"]
        .as_array()
        .expect("findings array")
        .iter()
        .map(|f| f["id"].as_str().expect("finding id").to_string())
        .collect()
}

fn findings<'a>(r: &'a Value, id: &str) -> Vec<&'a Value> {
    r["findings"]
        .as_array()
        .expect("findings array")
        .iter()
        .filter(|f| f["id"] == id)
        .collect()
}

/// `Kind namespace/name` of a finding's first object.
fn first_object(f: &Value) -> String {
    let o = &f["objects"][0];
    format!(
        "{} {}/{}",
        o["kind"].as_str().unwrap(),
        o["namespace"].as_str().unwrap(),
        o["name"].as_str().unwrap()
    )
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap_or_else(|| panic!("not a string: {x}")))
        .collect()
}

fn example_json(extra: &[&str]) -> Value {
    let mut args = vec!["audit", EXAMPLE, "--format", "json", "--fail-on", "never"];
    args.extend_from_slice(extra);
    run(&args).assert_code(0).json()
}

// ---------------------------------------------------------------------------------------
// The bundled example, JSON

#[test]
fn example_json_exits_1_and_follows_the_report_contract() {
    let out = run(&["audit", EXAMPLE, "--format", "json"]);
    out.assert_code(1);
    let r = out.json();
    for key in [
        "targets",
        "workloads",
        "findings",
        "summary",
        "errors",
        "skipped",
    ] {
        assert!(r.get(key).is_some(), "report lacks `{key}`: {r:#}");
    }
    assert_eq!(strings(&r["targets"]), AZURE_TARGETS, "default target set");

    let ws = r["workloads"].as_array().unwrap();
    assert_eq!(ws.len(), 14, "{:?}", workload_ids(&r));
    let ids = workload_ids(&r);
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "workloads sorted by namespace, name");
    for w in ws {
        let id = format!("{}/{}[{}]", w["namespace"], w["name"], w["kind"]);
        for key in ["namespace", "name", "kind"] {
            assert!(
                w[key].as_str().is_some_and(|s| !s.is_empty()),
                "{id}: {key}"
            );
        }
        assert!(w["host_network"].is_boolean(), "{id}: host_network");
        assert!(
            w["file"]
                .as_str()
                .is_some_and(|f| f.starts_with(EXAMPLE) && f.ends_with(".yaml")),
            "{id}: file {}",
            w["file"]
        );
        assert!(w["line"].as_u64().is_some_and(|l| l > 0), "{id}: line");
        let vs = w["verdicts"].as_array().expect("verdicts");
        assert_eq!(vs.len(), 3, "{id}: one verdict per target");
        for (v, t) in vs.iter().zip(AZURE_TARGETS) {
            assert_eq!(v["target"], t, "{id}: verdicts in target order");
            let allowed = v["policy_allowed"].as_bool().expect("policy_allowed");
            let reachable = v["reachable"].as_bool().expect("reachable");
            assert!(
                !allowed || reachable,
                "{id} {t}: allowed by policy but not reachable"
            );
            assert!(
                v["reason"].as_str().is_some_and(|s| !s.is_empty()),
                "{id} {t}: reason"
            );
            for p in strings(&v["policies"]) {
                assert!(p.contains('/'), "{id} {t}: policy id `{p}`");
            }
        }
    }
    for f in r["findings"].as_array().unwrap() {
        assert!(f["id"].is_string() && f["message"].is_string(), "{f:#}");
        assert!(
            ["high", "medium", "low"].contains(&f["severity"].as_str().unwrap()),
            "{f:#}"
        );
        assert!(f["objects"].is_array(), "{f:#}");
    }
    assert_eq!(r["errors"], json!([]));
    assert_eq!(
        r["skipped"],
        json!({"SecretProviderClass.secrets-store.csi.x-k8s.io": 1, "Service": 3}),
        "Services and the CRD are skipped, not errors"
    );
    assert_eq!(r["summary"]["workloads"], 14);
    assert_eq!(
        r["summary"]["namespaces"], 6,
        "five declared plus the implicit `batch`"
    );
    assert_eq!(r["summary"]["network_policies"], 7);
    assert_eq!(
        r["summary"]["reachable"],
        json!([
            {"target": IMDS, "workloads": 9, "expected": 0},
            {"target": WIRESERVER, "workloads": 8, "expected": 0},
            {"target": HOST_GA_PLUGIN, "workloads": 8, "expected": 0},
        ])
    );
}

/// The "Expected verdicts" table of examples/aks-imds/README.md: for each workload,
/// whether it uses hostNetwork and whether it reaches IMDS, WireServer :80 and :32526.
const README_VERDICTS: [(&str, &str, &str, bool, [bool; 3]); 14] = [
    ("default", "azure-cli", "Pod", false, [true, true, true]),
    ("kube-system", "coredns", "Deployment", false, [false; 3]),
    ("kube-system", "kube-proxy", "DaemonSet", true, [true; 3]),
    (
        "kube-system",
        "aks-secrets-store-provider-azure",
        "DaemonSet",
        false,
        [true; 3],
    ),
    (
        "kube-system",
        "ingress-appgw-deployment",
        "Deployment",
        false,
        [true; 3],
    ),
    (
        "kube-system",
        "ama-logs",
        "DaemonSet",
        false,
        [true, false, false],
    ),
    (
        "monitoring",
        "prometheus-node-exporter",
        "DaemonSet",
        true,
        [true; 3],
    ),
    (
        "monitoring",
        "prometheus-server",
        "Deployment",
        false,
        [true; 3],
    ),
    ("shop", "frontend", "Deployment", false, [false; 3]),
    ("shop", "cart", "Deployment", false, [false; 3]),
    ("shop", "redis", "StatefulSet", false, [false; 3]),
    ("payments", "api", "Deployment", false, [true; 3]),
    ("payments", "ledger-worker", "Deployment", false, [false; 3]),
    ("batch", "nightly-report", "CronJob", false, [true; 3]),
];

#[test]
fn example_json_verdicts_match_the_readme_table() {
    let r = example_json(&[]);
    for (ns, name, kind, host_network, reach) in README_VERDICTS {
        let w = workload(&r, ns, name, kind);
        assert_eq!(w["host_network"], host_network, "{ns}/{name}: host_network");
        for (t, want) in AZURE_TARGETS.into_iter().zip(reach) {
            let v = verdict(w, t);
            assert_eq!(v["reachable"], want, "{ns}/{name}[{kind}] -> {t}: {v:#}");
            if !host_network {
                assert_eq!(
                    v["policy_allowed"], want,
                    "{ns}/{name}[{kind}] -> {t}: without hostNetwork, reachable is the policy verdict"
                );
            }
        }
    }
}

#[test]
fn example_json_explains_each_planted_verdict() {
    let r = example_json(&[]);

    // (a) the forgotten `default` namespace: nothing selects the attacker's pod.
    let v = verdict(workload(&r, "default", "azure-cli", "Pod"), IMDS);
    assert_eq!(v["policy_allowed"], true);
    assert_eq!(v["reachable"], true);
    assert_eq!(v["policies"], json!([]));

    // shop/deny-imds blocks the frontend; frontend-ingress (Ingress only) plays no part.
    let w = workload(&r, "shop", "frontend", "Deployment");
    for t in AZURE_TARGETS {
        let v = verdict(w, t);
        assert_eq!(v["policy_allowed"], false, "{t}");
        assert_eq!(v["reachable"], false, "{t}");
        assert_eq!(v["policies"], json!(["shop/deny-imds"]), "{t}");
    }

    // (b) payments/allow-egress-all is OR-ed with deny-imds.
    let w = workload(&r, "payments", "api", "Deployment");
    for t in AZURE_TARGETS {
        let v = verdict(w, t);
        assert_eq!(v["policy_allowed"], true, "{t}");
        assert_eq!(v["reachable"], true, "{t}");
        assert_eq!(v["policies"], json!(["payments/allow-egress-all"]), "{t}");
        let reason = v["reason"].as_str().unwrap();
        assert!(
            reason.contains("payments/allow-egress-all") && reason.contains("payments/deny-imds"),
            "{t}: {reason}"
        );
    }

    // hostNetwork: the policy denies, the pod still reaches.
    let w = workload(&r, "kube-system", "kube-proxy", "DaemonSet");
    assert_eq!(w["host_network"], true);
    for t in AZURE_TARGETS {
        let v = verdict(w, t);
        assert_eq!(v["policy_allowed"], false, "{t}");
        assert_eq!(v["reachable"], true, "{t}");
        assert_eq!(v["policies"], json!(["kube-system/deny-imds"]), "{t}");
        assert!(
            v["reason"].as_str().unwrap().starts_with("hostNetwork"),
            "{t}: {}",
            v["reason"]
        );
    }

    // ama-logs: IMDS re-opened by the narrow allow, WireServer still blocked.
    let w = workload(&r, "kube-system", "ama-logs", "DaemonSet");
    let imds = verdict(w, IMDS);
    assert_eq!(imds["reachable"], true);
    assert_eq!(imds["policies"], json!(["kube-system/allow-imds-ama-logs"]));
    for t in [WIRESERVER, HOST_GA_PLUGIN] {
        let v = verdict(w, t);
        assert_eq!(v["policy_allowed"], false, "{t}");
        assert_eq!(v["reachable"], false, "{t}");
        let policies = strings(&v["policies"]);
        assert!(
            policies.contains(&"kube-system/deny-imds"),
            "{t}: {policies:?}"
        );
    }

    // (e) the CronJob in the undeclared `batch` namespace.
    let w = workload(&r, "batch", "nightly-report", "CronJob");
    assert!(w["file"].as_str().unwrap().ends_with("60-batch.yaml"));
    for t in AZURE_TARGETS {
        assert_eq!(verdict(w, t)["reachable"], true, "{t}");
        assert_eq!(verdict(w, t)["policy_allowed"], true, "{t}");
    }

    // (d) the typo'd monitoring/deny-imds protects nothing.
    let v = verdict(
        workload(&r, "monitoring", "prometheus-server", "Deployment"),
        IMDS,
    );
    assert_eq!(v["reachable"], true);
    assert_eq!(v["policies"], json!([]));
}

#[test]
fn example_json_findings_name_every_planted_failure() {
    let r = example_json(&[]);
    let ids = finding_ids(&r);
    for id in [
        "workload-reaches-target",
        "host-network",
        "allow-reopens-target",
        "namespace-unrestricted",
        "egress-rules-ignored",
        "policy-selects-nothing",
    ] {
        assert!(ids.contains(id), "missing finding `{id}` in {ids:?}");
    }
    assert!(!ids.contains("no-policy-engine"));
    assert!(
        !ids.contains("no-dns-egress"),
        "every deny-imds keeps DNS open: {ids:?}"
    );

    let reaching: BTreeSet<String> = findings(&r, "workload-reaches-target")
        .iter()
        .map(|f| first_object(f))
        .collect();
    let want: BTreeSet<String> = [
        "CronJob batch/nightly-report",
        "Pod default/azure-cli",
        "DaemonSet kube-system/aks-secrets-store-provider-azure",
        "DaemonSet kube-system/ama-logs",
        "DaemonSet kube-system/kube-proxy",
        "Deployment kube-system/ingress-appgw-deployment",
        "DaemonSet monitoring/prometheus-node-exporter",
        "Deployment monitoring/prometheus-server",
        "Deployment payments/api",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(reaching, want);

    let host: BTreeSet<String> = findings(&r, "host-network")
        .iter()
        .map(|f| first_object(f))
        .collect();
    assert_eq!(
        host,
        BTreeSet::from([
            "DaemonSet kube-system/kube-proxy".to_string(),
            "DaemonSet monitoring/prometheus-node-exporter".to_string(),
        ])
    );

    let reopen = findings(&r, "allow-reopens-target");
    let api = reopen
        .iter()
        .find(|f| first_object(f) == "Deployment payments/api")
        .expect("allow-reopens-target for payments/api");
    let msg = api["message"].as_str().unwrap();
    assert!(
        msg.contains("payments/allow-egress-all") && msg.contains("payments/deny-imds"),
        "{msg}"
    );

    let namespaces: BTreeSet<&str> = findings(&r, "namespace-unrestricted")
        .iter()
        .map(|f| f["objects"][0]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        namespaces,
        BTreeSet::from(["batch", "default", "monitoring"])
    );
    let batch = findings(&r, "namespace-unrestricted")
        .into_iter()
        .find(|f| f["objects"][0]["name"] == "batch")
        .unwrap();
    assert!(
        batch["objects"][0].get("file").is_none(),
        "the implicit namespace was read from no file: {batch:#}"
    );

    let ignored = findings(&r, "egress-rules-ignored");
    assert_eq!(ignored.len(), 1);
    assert_eq!(
        first_object(ignored[0]),
        "NetworkPolicy shop/frontend-ingress"
    );

    let nothing = findings(&r, "policy-selects-nothing");
    assert_eq!(nothing.len(), 1);
    assert_eq!(
        first_object(nothing[0]),
        "NetworkPolicy monitoring/deny-imds"
    );

    let rank = |s: &str| match s {
        "high" => 3,
        "medium" => 2,
        "low" => 1,
        other => panic!("severity {other}"),
    };
    let sev: Vec<i32> = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| rank(f["severity"].as_str().unwrap()))
        .collect();
    assert!(
        sev.windows(2).all(|w| w[0] >= w[1]),
        "most severe first: {sev:?}"
    );
}

#[test]
fn example_azure_dns_stays_open_for_every_workload() {
    let r = example_json(&[
        "--target",
        "168.63.129.16:53/UDP",
        "--target",
        "168.63.129.16:53/TCP",
    ]);
    assert_eq!(
        strings(&r["targets"]),
        ["168.63.129.16:53/UDP", "168.63.129.16:53/TCP"]
    );
    for (ns, name, kind, _, _) in README_VERDICTS {
        let w = workload(&r, ns, name, kind);
        for t in ["168.63.129.16:53/UDP", "168.63.129.16:53/TCP"] {
            assert_eq!(
                verdict(w, t)["policy_allowed"],
                true,
                "{ns}/{name} -> {t}: Azure DNS must stay open"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The bundled example, SARIF

fn example_sarif() -> Value {
    // Run from the workspace root with a relative path, as in CI.
    run_in(
        Path::new(WORKSPACE),
        &["audit", "examples/aks-imds", "--format", "sarif"],
    )
    .assert_code(1)
    .json()
}

#[test]
fn example_sarif_is_a_2_1_0_log_with_a_rule_for_every_result() {
    let log = example_sarif();
    assert_eq!(log["version"], "2.1.0");
    assert!(
        log["$schema"].as_str().is_some_and(|s| s.contains("sarif")),
        "{}",
        log["$schema"]
    );
    let runs = log["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1);
    let driver = &runs[0]["tool"]["driver"];
    assert_eq!(driver["name"], "imdsguard");
    let rules: Vec<&str> = driver["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| r["id"].as_str().expect("rule id"))
        .collect();
    let results = runs[0]["results"].as_array().expect("results");
    assert!(!results.is_empty());
    let mut seen = BTreeSet::new();
    for res in results {
        let id = res["ruleId"].as_str().expect("ruleId");
        let index = res["ruleIndex"].as_u64().expect("ruleIndex") as usize;
        assert_eq!(rules.get(index), Some(&id), "ruleIndex points at its rule");
        assert!(
            ["error", "warning", "note"].contains(&res["level"].as_str().unwrap()),
            "{res:#}"
        );
        assert!(
            res["message"]["text"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        );
        seen.insert(id);
    }
    for id in [
        "workload-reaches-target",
        "host-network",
        "allow-reopens-target",
        "namespace-unrestricted",
        "egress-rules-ignored",
        "policy-selects-nothing",
    ] {
        assert!(seen.contains(id), "no SARIF result for `{id}`");
    }
    let json_findings = example_json(&[])["findings"].as_array().unwrap().len();
    assert_eq!(results.len(), json_findings, "one result per finding");
    for res in results
        .iter()
        .filter(|r| r["ruleId"] == "workload-reaches-target")
    {
        assert_eq!(res["level"], "error");
        assert!(
            res["locations"].as_array().is_some_and(|l| l.len() == 1),
            "{res:#}"
        );
    }
}

fn is_noise(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// Checks that a SARIF location points at the first content line of the YAML document
/// of the object its message names (`Kind namespace/name`).
fn check_location(loc: &Value) -> String {
    let phys = &loc["physicalLocation"];
    let uri = phys["artifactLocation"]["uri"].as_str().expect("uri");
    assert!(uri.starts_with("examples/aks-imds/"), "uri {uri}");
    let line = phys["region"]["startLine"]
        .as_u64()
        .unwrap_or_else(|| panic!("no startLine: {loc:#}")) as usize;
    assert!(line > 0);
    let what = loc["message"]["text"].as_str().expect("location message");
    let (kind, id) = what.split_once(' ').expect("`Kind ns/name`");
    let (ns, name) = id.split_once('/').unwrap_or(("", id));

    let text = std::fs::read_to_string(Path::new(WORKSPACE).join(uri)).expect("read file");
    let lines: Vec<&str> = text.lines().collect();
    let i = line - 1;
    assert!(i < lines.len(), "{uri}:{line} is past the end");
    let first = lines[i];
    assert!(
        ["apiVersion:", "kind:", "metadata:"]
            .iter()
            .any(|k| first.starts_with(k)),
        "{uri}:{line} ({what}) starts with `{first}`, not the object"
    );
    // Everything between the document marker (or the file start) and that line is
    // blank or a comment: it is the document's first content line.
    for l in lines[..i].iter().rev().take_while(|l| l.trim() != "---") {
        assert!(
            is_noise(l),
            "{uri}:{line} ({what}) is not the first line of its document: `{l}` comes before"
        );
    }
    // And that document is the object named.
    let doc: Vec<&str> = lines[i..]
        .iter()
        .copied()
        .take_while(|l| l.trim() != "---")
        .collect();
    assert!(
        doc.contains(&format!("kind: {kind}").as_str()),
        "{uri}:{line}: the document is not a {kind}"
    );
    let doc_name = doc
        .iter()
        .find_map(|l| l.strip_prefix("  name: "))
        .unwrap_or_else(|| panic!("{uri}:{line}: no metadata.name"));
    assert_eq!(doc_name.trim(), name, "{uri}:{line}");
    if !ns.is_empty() {
        let doc_ns = doc
            .iter()
            .find_map(|l| l.strip_prefix("  namespace: "))
            .unwrap_or_else(|| panic!("{uri}:{line}: no metadata.namespace"));
        assert_eq!(doc_ns.trim(), ns, "{uri}:{line}");
    }
    format!("{uri}:{line}")
}

#[test]
fn example_sarif_regions_start_at_the_first_line_of_each_object() {
    let log = example_sarif();
    let mut checked = BTreeSet::new();
    for res in log["runs"][0]["results"].as_array().unwrap() {
        for key in ["locations", "relatedLocations"] {
            for loc in res[key].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                checked.insert(check_location(loc));
            }
        }
    }
    // Objects from every file of the example, workloads and policies alike.
    for f in [
        "00-namespaces.yaml",
        "10-kube-system.yaml",
        "20-monitoring.yaml",
        "30-default.yaml",
        "40-shop.yaml",
        "50-payments.yaml",
        "60-batch.yaml",
        "network-policy-deny-imds.yaml",
    ] {
        assert!(
            checked
                .iter()
                .any(|c| c.starts_with(&format!("examples/aks-imds/{f}:"))),
            "no location in {f}: {checked:?}"
        );
    }
    assert!(checked.len() >= 15, "{checked:?}");
}

// ---------------------------------------------------------------------------------------
// The bundled example, table

#[test]
fn table_groups_by_namespace_and_has_no_ansi_escapes_when_piped() {
    let out = run(&["audit", EXAMPLE]);
    out.assert_code(1);
    let t = &out.stdout;
    assert!(!t.contains('\x1b'), "escape codes in piped output:\n{t}");
    for needle in [
        "imdsguard audit: 14 workloads",
        "namespace batch",
        "namespace default",
        "namespace kube-system",
        "namespace shop",
        "azure-cli[Pod]",
        "nightly-report[CronJob]",
        "redis[StatefulSet]",
        "REACHABLE",
        "(hostNetwork)",
        "blocked",
        "IMDS",
        "169.254.169.254:80",
        "WireServer",
        "Findings (",
        "workload-reaches-target",
        "9 of 14 workloads reach 169.254.169.254:80/TCP",
        "Skipped (kinds the audit does not read)",
    ] {
        assert!(
            t.contains(needle),
            "`{needle}` missing from the table:\n{t}"
        );
    }
    let pos = |n: &str| t.find(n).unwrap();
    assert!(
        pos("namespace batch") < pos("namespace default")
            && pos("namespace default") < pos("namespace kube-system"),
        "namespaces in order"
    );
}

#[test]
fn table_has_ansi_escapes_only_with_color_always() {
    let always = run(&["audit", EXAMPLE, "--color", "always"]);
    always.assert_code(1);
    assert!(always.stdout.contains("\x1b["), "{}", always.stdout);
    assert!(always.stdout.contains("namespace default"));
    // `always` wins over NO_COLOR, which only tempers `auto`.
    let mut c = imdsguard(&["audit", EXAMPLE, "--color", "always"]);
    c.env("NO_COLOR", "1");
    assert!(finish(&mut c, None).stdout.contains("\x1b["));
    let never = run(&["audit", EXAMPLE, "--color", "never"]);
    assert!(!never.stdout.contains('\x1b'));
    let auto = run(&["audit", EXAMPLE, "--color", "auto"]);
    assert!(
        !auto.stdout.contains('\x1b'),
        "stdout is a pipe, not a terminal"
    );
}

#[test]
fn table_with_many_targets_shows_counts_instead_of_columns() {
    let mut args = vec!["audit", EXAMPLE, "--fail-on", "never"];
    let targets = [
        "169.254.169.254:80",
        "168.63.129.16:80",
        "168.63.129.16:32526",
        "168.63.129.16:53/UDP",
        "8.8.8.8:443",
        "10.0.0.1:443",
        "1.1.1.1:53/UDP",
    ];
    for t in &targets {
        args.extend(["--target", t]);
    }
    let out = run(&args);
    out.assert_code(0);
    assert!(out.stdout.contains("Reaches (of 7)"), "{}", out.stdout);
}

// ---------------------------------------------------------------------------------------
// Exit status and --fail-on

#[test]
fn fail_on_never_exits_0_and_fail_on_high_exits_1_on_the_example() {
    run(&["audit", EXAMPLE, "--fail-on", "never"]).assert_code(0);
    run(&["audit", EXAMPLE, "--fail-on", "never", "--format", "sarif"]).assert_code(0);
    run(&["audit", EXAMPLE, "--fail-on", "high"]).assert_code(1);
    run(&["audit", EXAMPLE, "--fail-on", "low"]).assert_code(1);
    run(&["audit", EXAMPLE, "--fail-on", "reachable"]).assert_code(1);
}

const CLEAN_NAMESPACE: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: app
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-metadata
  namespace: app
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: kube-system}
      podSelector:
        matchLabels: {k8s-app: kube-dns}
    ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
  - to:
    - ipBlock:
        cidr: 0.0.0.0/0
        except: [169.254.169.254/32, 168.63.129.16/32]
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: app
  labels: {app: web}
";

#[test]
fn fail_on_low_exits_0_on_a_clean_namespace_and_1_once_a_low_finding_appears() {
    let dir = TempDir::new("clean");
    dir.write("cluster.yaml", CLEAN_NAMESPACE);

    // Meaningful: the pod is isolated, the metadata endpoints are cut, the internet is not.
    let r = run(&[
        "audit",
        dir.path(),
        "--format",
        "json",
        "--cloud",
        "azure",
        "--target",
        "8.8.8.8:443",
        "--fail-on",
        "never",
    ])
    .assert_code(0)
    .json();
    let w = workload(&r, "app", "web", "Pod");
    assert_eq!(verdict(w, "8.8.8.8:443/TCP")["reachable"], true);
    for t in AZURE_TARGETS {
        assert_eq!(verdict(w, t)["reachable"], false, "{t}");
        assert_eq!(verdict(w, t)["policies"], json!(["app/deny-metadata"]));
    }

    let r = run(&["audit", dir.path(), "--format", "json"])
        .assert_code(0)
        .json();
    assert_eq!(
        r["findings"],
        json!([]),
        "a clean namespace has no findings"
    );
    for level in ["reachable", "high", "medium", "low", "never"] {
        run(&["audit", dir.path(), "--fail-on", level]).assert_code(0);
    }
    let table = run(&["audit", dir.path()]).assert_code(0).stdout.clone();
    assert!(table.contains("No findings."), "{table}");

    // A typo'd policy that selects nothing: a low finding only.
    dir.write(
        "typo.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: typo\n  namespace: app\nspec:\n  podSelector:\n    matchLabels: {app: wbe}\n  policyTypes: [Egress]\n",
    );
    let r = run(&["audit", dir.path(), "--format", "json"])
        .assert_code(0)
        .json();
    assert_eq!(
        finding_ids(&r),
        BTreeSet::from(["policy-selects-nothing".to_string()])
    );
    assert_eq!(r["findings"][0]["severity"], "low");
    run(&["audit", dir.path(), "--fail-on", "low"]).assert_code(1);
    run(&["audit", dir.path(), "--fail-on", "medium"]).assert_code(0);
    run(&["audit", dir.path(), "--fail-on", "high"]).assert_code(0);
    run(&["audit", dir.path(), "--fail-on", "reachable"]).assert_code(0);
}

// ---------------------------------------------------------------------------------------
// Targets

fn one_pod_dir() -> TempDir {
    let dir = TempDir::new("pod");
    dir.write(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: a\n",
    );
    dir
}

fn targets_of(args: &[&str]) -> Vec<String> {
    let dir = one_pod_dir();
    let mut all = vec![
        "audit",
        dir.path(),
        "--format",
        "json",
        "--fail-on",
        "never",
    ];
    all.extend_from_slice(args);
    let r = run(&all).assert_code(0).json();
    let targets: Vec<String> = strings(&r["targets"])
        .into_iter()
        .map(String::from)
        .collect();
    let verdict_targets: Vec<String> = r["workloads"][0]["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["target"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(targets, verdict_targets, "one verdict per target, in order");
    targets
}

#[test]
fn explicit_targets_are_echoed_canonically_and_replace_the_default_set() {
    assert_eq!(
        targets_of(&[
            "--target",
            "169.254.169.254:80",
            "--target",
            "[fd00:ec2::254]:80/tcp"
        ]),
        ["169.254.169.254:80/TCP", "[fd00:ec2::254]:80/TCP"]
    );
    assert_eq!(
        targets_of(&["--target", "10.0.0.1:9/sctp", "--target", "10.0.0.1:9/SCTP"]),
        ["10.0.0.1:9/SCTP"],
        "duplicates are dropped"
    );
    assert_eq!(targets_of(&[]), AZURE_TARGETS, "azure by default");
}

#[test]
fn cloud_sets_add_their_targets_after_explicit_ones() {
    assert_eq!(
        targets_of(&["--cloud", "aws"]),
        [
            "169.254.169.254:80/TCP",
            "[fd00:ec2::254]:80/TCP",
            "169.254.170.23:80/TCP",
            "[fd00:ec2::23]:80/TCP",
            "169.254.170.2:80/TCP"
        ]
    );
    assert_eq!(
        targets_of(&["--cloud", "gcp"]),
        ["169.254.169.254:80/TCP", "[fd20:ce::254]:80/TCP"]
    );
    let mut want = vec!["1.2.3.4:5/UDP"];
    want.extend(AZURE_TARGETS);
    assert_eq!(
        targets_of(&["--cloud", "azure", "--target", "1.2.3.4:5/udp"]),
        want
    );
}

#[test]
fn cloud_aws_ipv6_target_is_blocked_by_an_isolating_ipv4_only_policy() {
    let r = example_json(&["--cloud", "aws"]);
    let v6 = "[fd00:ec2::254]:80/TCP";
    let cli = workload(&r, "default", "azure-cli", "Pod");
    assert_eq!(verdict(cli, v6)["reachable"], true);
    // shop/deny-imds allows 0.0.0.0/0 (IPv4) except IMDS: no IPv6 at all.
    let frontend = workload(&r, "shop", "frontend", "Deployment");
    assert_eq!(verdict(frontend, v6)["policy_allowed"], false);
}

#[test]
fn targets_file_skips_comments_and_blank_lines() {
    let dir = TempDir::new("targets");
    let file = dir.write(
        "targets.txt",
        "# metadata endpoints\n169.254.169.254:80\n\n   168.63.129.16:53/udp   # Azure DNS\n[fd00:ec2::254]:80/TCP\n# the end\n",
    );
    assert_eq!(
        targets_of(&["--targets-file", s(&file)]),
        [
            "169.254.169.254:80/TCP",
            "168.63.129.16:53/UDP",
            "[fd00:ec2::254]:80/TCP"
        ]
    );
    assert_eq!(
        targets_of(&["--target", "8.8.8.8:443", "--targets-file", s(&file)]),
        [
            "8.8.8.8:443/TCP",
            "169.254.169.254:80/TCP",
            "168.63.129.16:53/UDP",
            "[fd00:ec2::254]:80/TCP"
        ],
        "--target first, then the file"
    );
}

#[test]
fn bad_target_exits_2_and_names_the_bad_text() {
    let dir = one_pod_dir();
    for bad in [
        "169.254.169.254",
        "nope:80",
        "169.254.169.254:0",
        "169.254.169.254:99999",
        "169.254.169.254:80/ICMP",
        "fd00:ec2::254:80",
    ] {
        let out = run(&["audit", dir.path(), "--target", bad]);
        out.assert_code(2);
        assert!(
            out.stderr.contains(bad),
            "stderr does not name `{bad}`: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "no report on a usage error");
    }

    let file = dir.write("targets.txt", "# ok\n169.254.169.254:80\nnot-a-target\n");
    let out = run(&["audit", dir.path(), "--targets-file", s(&file)]);
    out.assert_code(2);
    assert!(
        out.stderr.contains(&format!("{}:3", s(&file))),
        "stderr names file:line: {}",
        out.stderr
    );
    assert!(out.stderr.contains("not-a-target"), "{}", out.stderr);

    let missing = dir.0.join("missing.txt");
    let out = run(&["audit", dir.path(), "--targets-file", s(&missing)]);
    out.assert_code(2);
    assert!(out.stderr.contains("missing.txt"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------------------
// Input errors

const GOOD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: good\n  namespace: app\n";

/// Line 6 is indented under a scalar: "mapping values are not allowed".
const BROKEN: &str = "# a lone broken pod\napiVersion: v1\nkind: Pod\nmetadata:\n  name: broken\n   namespace: app\n";

/// Three documents; the second is broken at line 12.
const MULTI: &str = "\
# first
apiVersion: v1
kind: Pod
metadata:
  name: first
  namespace: app
---
apiVersion: v1
kind: Pod
metadata:
  name: second
   namespace: bad-indent
  labels: {a: b}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: third
  namespace: app
spec:
  template:
    metadata:
      labels: {app: third}
";

fn broken_inputs() -> TempDir {
    let dir = TempDir::new("broken");
    dir.write("good.yaml", GOOD);
    dir.write("broken.yaml", BROKEN);
    dir.write("multi.yaml", MULTI);
    dir
}

fn error_at<'a>(r: &'a Value, file: &str) -> &'a Value {
    r["errors"]
        .as_array()
        .expect("errors array")
        .iter()
        .find(|e| e["file"].as_str().is_some_and(|f| f.ends_with(file)))
        .unwrap_or_else(|| panic!("no error for {file}: {:#}", r["errors"]))
}

#[test]
fn broken_yaml_exits_2_names_file_and_line_and_still_reports_the_good_objects() {
    let dir = broken_inputs();
    let out = run(&["audit", dir.path(), "--format", "json"]);
    out.assert_code(2);
    let broken = dir.0.join("broken.yaml");
    let multi = dir.0.join("multi.yaml");
    assert!(
        out.stderr.contains(&format!("{}:6", s(&broken))),
        "stderr names broken.yaml:6: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("{}:12", s(&multi))),
        "stderr names multi.yaml:12: {}",
        out.stderr
    );

    let r = out.json();
    assert_eq!(
        workload_ids(&r),
        ["app/first[Pod]", "app/good[Pod]", "app/third[Deployment]"],
        "the good objects, before and after the broken document, are audited"
    );
    assert_eq!(workload(&r, "app", "first", "Pod")["line"], 2);
    assert_eq!(workload(&r, "app", "third", "Deployment")["line"], 15);
    let errors = r["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    let e = error_at(&r, "broken.yaml");
    assert_eq!(e["file"], s(&broken));
    assert_eq!(e["line"], 6);
    assert!(e["message"].as_str().unwrap().contains("not valid YAML"));
    let e = error_at(&r, "multi.yaml");
    assert_eq!(e["file"], s(&multi));
    assert_eq!(e["line"], 12);

    // The table says so too, and SARIF has an input-error result at file and line.
    let table = run(&["audit", dir.path()]);
    table.assert_code(2);
    assert!(
        table.stdout.contains("2 input error(s)"),
        "{}",
        table.stdout
    );
    let sarif = run(&["audit", dir.path(), "--format", "sarif"]);
    sarif.assert_code(2);
    let log = sarif.json();
    let located: BTreeSet<(String, u64)> = log["runs"][0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|res| res["ruleId"] == "input-error")
        .map(|res| {
            let p = &res["locations"][0]["physicalLocation"];
            (
                p["artifactLocation"]["uri"].as_str().unwrap().to_string(),
                p["region"]["startLine"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        located,
        BTreeSet::from([(s(&broken).to_string(), 6), (s(&multi).to_string(), 12)])
    );
}

#[test]
fn input_errors_win_over_reachable_and_fail_on_never() {
    // azure-cli-like pods reach IMDS (exit 1), but a broken input makes it 2.
    let dir = broken_inputs();
    run(&["audit", dir.path(), "--fail-on", "never"]).assert_code(2);
    run(&["audit", dir.path(), "--fail-on", "reachable"]).assert_code(2);
}

#[test]
fn invalid_policy_in_a_json_list_is_reported_at_its_item_line() {
    let dir = TempDir::new("json-errors");
    let file = dir.write(
        "dump.json",
        r#"{
  "apiVersion": "v1",
  "kind": "List",
  "items": [
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "n"}},
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
     "metadata": {"name": "bad", "namespace": "n"},
     "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {"cidr": "169.254.169.254"}}]}]}},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "b", "namespace": "n"}}
  ]
}
"#,
    );
    let out = run(&["audit", "-f", s(&file), "--format", "json"]);
    out.assert_code(2);
    assert!(
        out.stderr.contains(&format!("{}:6", s(&file))),
        "{}",
        out.stderr
    );
    let r = out.json();
    assert_eq!(workload_ids(&r), ["n/a[Pod]", "n/b[Pod]"]);
    assert_eq!(workload(&r, "n", "b", "Pod")["line"], 9);
    let e = error_at(&r, "dump.json");
    assert_eq!(e["line"], 6);
    assert_eq!(e["object"], "NetworkPolicy n/bad");
    assert!(
        e["message"].as_str().unwrap().contains("ipBlock.cidr"),
        "{e:#}"
    );
}

#[test]
fn missing_input_path_is_an_input_error() {
    let dir = TempDir::new("missing");
    let missing = dir.0.join("nope.yaml");
    let out = run(&["audit", s(&missing), "--format", "json"]);
    out.assert_code(2);
    assert!(out.stderr.contains(s(&missing)), "{}", out.stderr);
    let r = out.json();
    assert_eq!(error_at(&r, "nope.yaml")["file"], s(&missing));
    assert_eq!(r["workloads"], json!([]));
}

#[test]
fn no_input_exits_2_with_a_helpful_message() {
    // No PATH means the live cluster; with no kubeconfig anywhere, the error names both
    // ways out: manifests (PATH, -f -) and a kubeconfig.
    let home = std::env::temp_dir().join(format!("imdsguard-nohome-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let run = |args: &[&str]| {
        let mut cmd = imdsguard(args);
        cmd.env_remove("KUBECONFIG").env("HOME", &home);
        finish(&mut cmd, None)
    };
    let out = run(&["audit"]);
    out.assert_code(2);
    assert!(out.stdout.is_empty());
    assert!(out.stderr.contains("no input"), "{}", out.stderr);
    assert!(
        out.stderr.contains("-f -"),
        "mentions standard input: {}",
        out.stderr
    );
    assert!(out.stderr.contains("kubeconfig"), "{}", out.stderr);
    // Only options, still no input.
    run(&["audit", "--format", "json", "--cloud", "aws"]).assert_code(2);
    let _ = std::fs::remove_dir_all(&home);
}

// ---------------------------------------------------------------------------------------
// Input forms

#[test]
fn dash_reads_manifests_from_standard_input() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n# the pod\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: a\n";
    for args in [
        &["audit", "-f", "-", "--format", "json"][..],
        &["audit", "-", "--format", "json"][..],
    ] {
        let out = run_with_stdin(args, text);
        out.assert_code(1);
        let r = out.json();
        let w = workload(&r, "a", "p", "Pod");
        assert_eq!(w["file"], "<stdin>", "{args:?}");
        assert_eq!(w["line"], 6, "{args:?}");
        assert_eq!(verdict(w, IMDS)["reachable"], true);
    }
    // JSON on stdin too.
    let out = run_with_stdin(
        &["audit", "-f", "-", "--format", "json"],
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "j", "namespace": "a"}}"#,
    );
    out.assert_code(1);
    workload(&out.json(), "a", "j", "Pod");
}

/// What `kubectl get ns,pods,rs,deploy,svc,cm,netpol -A -o json` prints, trimmed.
const KUBECTL_LIST: &str = r#"{
    "apiVersion": "v1",
    "kind": "List",
    "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "web", "labels": {"team": "a"}}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-5d9-x7k", "namespace": "web",
            "labels": {"app": "web", "pod-template-hash": "5d9"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d9", "controller": true}]},
         "spec": {"containers": [{"name": "c", "image": "nginx"}]}, "status": {"phase": "Running"}},
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web-5d9", "namespace": "web",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "controller": true}]},
         "spec": {"template": {"metadata": {"labels": {"app": "web", "pod-template-hash": "5d9"}}}}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "web"},
         "spec": {"template": {"metadata": {"labels": {"app": "web"}}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "web"}, "spec": {"ports": [{"port": 80}]}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "web"}, "data": {"a": "b"}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "deny", "namespace": "web"},
         "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]}}
    ]
}
"#;

#[test]
fn kubectl_json_list_groups_pods_under_their_deployment_and_skips_other_kinds() {
    let dir = TempDir::new("list");
    let file = dir.write("cluster.json", KUBECTL_LIST);
    let r = run(&["audit", "-f", s(&file), "--format", "json"])
        .assert_code(0)
        .json();
    assert_eq!(workload_ids(&r), ["web/web[Deployment]"]);
    let w = workload(&r, "web", "web", "Deployment");
    assert_eq!(w["pods"], 1);
    assert_eq!(w["line"], 13, "the Deployment item's line");
    for t in AZURE_TARGETS {
        assert_eq!(verdict(w, t)["reachable"], false, "{t}");
        assert_eq!(verdict(w, t)["policies"], json!(["web/deny"]));
    }
    assert_eq!(r["skipped"], json!({"ConfigMap": 1, "Service": 1}));
    assert_eq!(r["errors"], json!([]));
    assert_eq!(r["summary"]["network_policies"], 1);
    assert_eq!(r["findings"], json!([]));
}

#[test]
fn pod_list_items_without_kind_are_read_as_pods() {
    let dir = TempDir::new("podlist");
    let file = dir.write(
        "pods.json",
        r#"{"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": [
  {"metadata": {"name": "a", "namespace": "x", "labels": {"app": "a"}}},
  {"metadata": {"name": "b", "namespace": "x"}, "spec": {"hostNetwork": true}}
]}
"#,
    );
    let r = run(&["audit", s(&file), "--format", "json"])
        .assert_code(1)
        .json();
    assert_eq!(workload_ids(&r), ["x/a[Pod]", "x/b[Pod]"]);
    assert_eq!(workload(&r, "x", "a", "Pod")["line"], 2);
    assert_eq!(workload(&r, "x", "b", "Pod")["host_network"], true);
    assert_eq!(r["errors"], json!([]));

    // The YAML form of a typed list.
    let file = dir.write(
        "ns.yaml",
        "apiVersion: v1\nkind: NamespaceList\nitems:\n- metadata: {name: declared, labels: {team: x}}\n",
    );
    let r = run(&["audit", s(&file), "--format", "json"])
        .assert_code(0)
        .json();
    assert_eq!(r["summary"]["namespaces"], 1);
    assert_eq!(r["errors"], json!([]));
}

#[test]
fn unknown_kinds_are_counted_in_skipped_and_are_not_errors() {
    let dir = TempDir::new("unknown");
    dir.write(
        "misc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: s1}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s2}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n---\napiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata: {name: c}\nspec: {secretName: x}\n---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: calico}\nspec: {selector: all()}\n---\napiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata: {name: h}\nspec: {node: n}\n---\nreplicaCount: 3\n",
    );
    dir.write("pod.yaml", GOOD);
    let r = run(&[
        "audit",
        dir.path(),
        "--format",
        "json",
        "--fail-on",
        "never",
    ])
    .assert_code(0)
    .json();
    assert_eq!(
        r["skipped"],
        json!({
            "(not a Kubernetes object)": 1,
            "Certificate.cert-manager.io": 1,
            "ConfigMap": 1,
            "HostEndpoint.projectcalico.org": 1,
            "Service": 2
        })
    );
    assert_eq!(r["errors"], json!([]));
    assert_eq!(
        r["summary"]["network_policies"], 0,
        "a Calico policy is not a networking.k8s.io one"
    );
    assert_eq!(workload_ids(&r), ["app/good[Pod]"]);
    let table = run(&["audit", dir.path(), "--fail-on", "never"])
        .assert_code(0)
        .stdout
        .clone();
    assert!(
        table.contains("Skipped (kinds the audit does not read):") && table.contains("Service 2"),
        "{table}"
    );
}

// ---------------------------------------------------------------------------------------
// --no-policy-engine

#[test]
fn no_policy_engine_makes_every_workload_reachable_and_keeps_policy_verdicts() {
    let with = example_json(&[]);
    let without = example_json(&["--no-policy-engine"]);
    assert_eq!(workload_ids(&with), workload_ids(&without));
    let mut denied = 0;
    for (a, b) in with["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .zip(without["workloads"].as_array().unwrap())
    {
        for (va, vb) in a["verdicts"]
            .as_array()
            .unwrap()
            .iter()
            .zip(b["verdicts"].as_array().unwrap())
        {
            let id = format!("{}/{} -> {}", b["namespace"], b["name"], vb["target"]);
            assert_eq!(vb["reachable"], true, "{id}");
            assert_eq!(
                va["policy_allowed"], vb["policy_allowed"],
                "{id}: the policy verdict is unchanged"
            );
            if vb["policy_allowed"] == false && b["host_network"] == false {
                denied += 1;
                assert!(
                    vb["reason"]
                        .as_str()
                        .unwrap()
                        .starts_with("no policy engine"),
                    "{id}: {}",
                    vb["reason"]
                );
            }
        }
    }
    assert!(
        denied >= 15,
        "coredns, shop, ledger-worker and ama-logs are policy-denied: {denied}"
    );
    let ids = finding_ids(&without);
    assert!(ids.contains("no-policy-engine"), "{ids:?}");
    assert!(!finding_ids(&with).contains("no-policy-engine"));
    let reaching: BTreeSet<String> = findings(&without, "workload-reaches-target")
        .iter()
        .map(|f| first_object(f))
        .collect();
    assert_eq!(reaching.len(), 14, "every workload reaches: {reaching:?}");
    for c in without["summary"]["reachable"].as_array().unwrap() {
        assert_eq!(c["workloads"], 14, "{c}");
    }
    let table = run(&["audit", EXAMPLE, "--no-policy-engine"]);
    table.assert_code(1);
    assert!(table.stdout.contains("(no engine)"), "{}", table.stdout);
}

// ---------------------------------------------------------------------------------------
// Defects found by these tests, fixed; kept as regression tests

/// Was a bug: a manifest saved with a UTF-8 byte-order mark (Windows editors, PowerShell
/// `Out-File -Encoding utf8`) is rejected. `manifest::parse` strips the BOM only to tell
/// JSON from YAML, then hands the text with the BOM to the parsers: YAML fails with
/// "deserializing from YAML containing more than one document is not supported", JSON
/// with "expected value at line 1 column 1", and the objects are left out.
#[test]
fn regression_utf8_bom_at_file_start_is_accepted() {
    let dir = TempDir::new("bom");
    dir.write(
        "pod.yaml",
        "\u{feff}apiVersion: v1\nkind: Pod\nmetadata:\n  name: y\n  namespace: a\n",
    );
    dir.write(
        "pod.json",
        "\u{feff}{\"apiVersion\": \"v1\", \"kind\": \"Pod\", \"metadata\": {\"name\": \"j\", \"namespace\": \"a\"}}\n",
    );
    let out = run(&["audit", dir.path(), "--format", "json"]);
    let r = out.json();
    assert_eq!(r["errors"], json!([]), "{}", out.stderr);
    assert_eq!(workload_ids(&r), ["a/j[Pod]", "a/y[Pod]"]);
    out.assert_code(1);
}

/// Was a bug: the YAML error message quotes the parser's line, counted from the start of the
/// document, next to the file line: `multi.yaml:12: not valid YAML: mapping values are
/// not allowed in this context at line 5 column 13`. Line 5 of the file is fine.
#[test]
fn regression_yaml_error_message_cites_only_file_lines() {
    let dir = TempDir::new("relative");
    let multi = dir.write("multi.yaml", MULTI);
    let out = run(&["audit", s(&multi), "--format", "json"]);
    out.assert_code(2);
    let r = out.json();
    let e = error_at(&r, "multi.yaml");
    assert_eq!(e["line"], 12);
    let msg = e["message"].as_str().unwrap();
    assert!(
        !msg.contains("at line 5 "),
        "the message cites a line that is not the error's: {msg}"
    );
}

/// Was a bug: an object read twice (a folder and a file inside it, or the same file twice) is
/// counted twice: the NetworkPolicy count doubles and finding messages repeat policy
/// names (`which payments/deny-imds, payments/deny-imds would deny on its own`). The
/// API server keeps one object per kind, namespace and name.
#[test]
fn regression_the_same_object_given_twice_is_counted_once() {
    let policies = format!("{EXAMPLE}/network-policy-deny-imds.yaml");
    let once = example_json(&[]);
    let twice = run(&[
        "audit",
        EXAMPLE,
        &policies,
        "--format",
        "json",
        "--fail-on",
        "never",
    ])
    .assert_code(0)
    .json();
    assert_eq!(
        twice["summary"]["network_policies"],
        once["summary"]["network_policies"]
    );
    for f in findings(&twice, "allow-reopens-target") {
        let msg = f["message"].as_str().unwrap();
        assert!(
            !msg.contains("payments/deny-imds, payments/deny-imds"),
            "{msg}"
        );
    }
}

/// Was a bug: the folder walk follows symbolic links to folders without remembering where it
/// has been. One link back to a parent makes every file under it read again until the
/// OS gives up (ELOOP, about 40 levels; the error is swallowed): here one Pod is counted
/// 41 times. Two such links make the walk exponential and `imdsguard audit` hangs.
#[cfg(unix)]
#[test]
fn regression_symlink_loop_in_an_input_folder_is_read_once() {
    let dir = TempDir::new("symlink-loop");
    std::fs::create_dir(dir.0.join("d")).unwrap();
    dir.write("d/pod.yaml", GOOD);
    std::os::unix::fs::symlink("..", dir.0.join("d/up")).unwrap();
    let r = run(&[
        "audit",
        dir.path(),
        "--format",
        "json",
        "--fail-on",
        "never",
    ])
    .json();
    assert_eq!(workload_ids(&r), ["app/good[Pod]"]);
    assert_eq!(r["summary"]["pods"], 1, "the pod was read more than once");
}

/// Was a bug: libyaml's time grows with the square of the flow nesting depth, and serde's
/// recursion limit applies only after the whole document was scanned. A Pod whose labels
/// are 100,000 nested `[` took over 60 s (40,000: 10.7 s) before "recursion limit
/// exceeded". Over-deep documents are now refused by a linear pre-scan, naming the line;
/// the other documents of the file are still read.
#[test]
fn regression_deeply_nested_yaml_is_refused_in_linear_time() {
    let dir = TempDir::new("deep");
    for (name, open, close) in [("seq", "[", "]"), ("map", "{a: ", "}")] {
        let d = 100_000;
        let text = format!(
            "{GOOD}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: x, labels: {}{}}}\n",
            open.repeat(d),
            close.repeat(d)
        );
        let file = dir.write(&format!("deep-{name}.yaml"), &text);
        let started = std::time::Instant::now();
        let out = run(&["audit", s(&file), "--format", "json"]);
        let took = started.elapsed();
        // The pre-scan takes milliseconds even in a debug build on a busy machine; the
        // old code took minutes.
        assert!(
            took < std::time::Duration::from_secs(10),
            "{name}: took {took:?}"
        );
        out.assert_code(2);
        let r = out.json();
        assert_eq!(workload_ids(&r), ["app/good[Pod]"], "{name}");
        let e = error_at(&r, &format!("deep-{name}.yaml"));
        assert_eq!(e["line"], 9, "{name}: {e}");
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains("nested deeper than 128 levels"), "{msg}");
        assert!(
            out.stderr.contains(&format!("deep-{name}.yaml:9:")),
            "{}",
            out.stderr
        );
    }
}

/// N pods and N egress policies whose `NotIn` selectors select every pod.
fn pods_times_policies(n: usize) -> String {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: pod-{i}, namespace: ns, labels: {{app: a{i}}}}}\n"
        ));
    }
    for i in 0..n {
        text.push_str(&format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny-{i}, namespace: ns}}\nspec:\n  podSelector:\n    matchExpressions: [{{key: tier, operator: NotIn, values: [x{i}]}}]\n  policyTypes: [Egress]\n"
        ));
    }
    text
}

/// Was a bug: every verdict, reason and finding named every deciding policy, so the JSON
/// grew with workloads × policies (800 pods and 800 `NotIn` egress policies, 360 KB of
/// input: 349 MB of JSON, 437 MB of memory). It now names the first 5 with the counts
/// (`policy_count`, `rule_count`); `--full` names them all.
#[test]
fn regression_report_size_is_linear_in_workloads_times_targets_plus_policies() {
    let n = 300;
    let dir = TempDir::new("pods-x-policies");
    let file = dir.write("cluster.yaml", &pods_times_policies(n));
    let out = run(&["audit", s(&file), "--format", "json", "--fail-on", "never"]);
    out.assert_code(0);
    let r = out.json();
    assert_eq!(r["summary"]["workloads"], n);
    // Before: 76 bytes per policy for each of the 300 × 3 verdicts alone (about 23 KB a
    // unit); now under 1 KB.
    let units = n * AZURE_TARGETS.len() + n;
    assert!(
        out.stdout.len() < 2_000 * units,
        "{} bytes of JSON for {units} workload×target verdicts and policies",
        out.stdout.len()
    );
    let w = workload(&r, "ns", "pod-7", "Pod");
    let v = verdict(w, IMDS);
    assert_eq!(v["policy_allowed"], false);
    assert_eq!(v["policy_count"], n);
    // The first 5 by name (NetworkPolicies are named in namespace and name order).
    assert_eq!(
        strings(&v["policies"]),
        [
            "ns/deny-0",
            "ns/deny-1",
            "ns/deny-10",
            "ns/deny-100",
            "ns/deny-101"
        ]
    );
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains("ns/deny-101 and 295 more"), "{reason}");
    for f in findings(&r, "no-dns-egress") {
        assert_eq!(f["objects"].as_array().unwrap().len(), 6, "{f}");
    }

    // The table stays readable: one short line per workload.
    let table = run(&["audit", s(&file), "--fail-on", "never"])
        .assert_code(0)
        .stdout
        .clone();
    assert!(
        table.contains(
            "denied: isolated by ns/deny-0, ns/deny-1, ns/deny-10, ns/deny-100, ns/deny-101 and 295 more"
        ),
        "{}",
        &table[..table.len().min(3000)]
    );
    assert!(
        table.len() < 2_000 * units,
        "{} bytes of table",
        table.len()
    );

    // --full names every policy.
    let full = run(&[
        "audit",
        s(&file),
        "--format",
        "json",
        "--fail-on",
        "never",
        "--full",
    ])
    .json();
    let v = verdict(workload(&full, "ns", "pod-7", "Pod"), IMDS);
    assert_eq!(v["policies"].as_array().unwrap().len(), n);
    assert_eq!(v["policy_count"], n);
}
