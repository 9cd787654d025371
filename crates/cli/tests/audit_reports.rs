//! `imdsguard audit --format policyreport|openreports [--apply]` against a real API
//! server with the report CRDs installed (docs/reports.md).
//!
//! The CRDs come from the modules that publish them (scripts/report-crds.sh, through the
//! Go module proxy). Each test has a control plane of its own (`ControlPlane::dedicated`):
//! the bundled example's namespaces have fixed names, and the CRDs are cluster-wide.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use imdsguard_testkit::control_plane::repo_root;
use imdsguard_testkit::{ControlPlane, Scratch};
use serde_json::Value;

const EXAMPLE: &str = "examples/aks-imds";

/// The example's namespaces (`batch` is only referenced, never declared).
const NAMESPACES: [&str; 6] = [
    "batch",
    "default",
    "kube-system",
    "monitoring",
    "payments",
    "shop",
];

/// A fixed time for the results, so that printed and applied objects compare equal.
const EPOCH: &str = "1767225600";

/// A fresh, empty folder of this test under the target dir, removed when dropped (the
/// service-account kubeconfigs written into it hold tokens).
fn scratch(name: &str) -> Scratch {
    Scratch::new(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        &format!("audit-reports-{name}"),
    )
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `imdsguard ARGS` from the repository's root with `envs`.
fn imdsguard(args: &[&str], envs: &[(&str, &str)]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_imdsguard"))
        .args(args)
        .current_dir(repo_root())
        .env_remove("KUBECONFIG")
        .env_remove("SOURCE_DATE_EPOCH")
        .envs(envs.iter().copied())
        .output()
        .expect("imdsguard runs");
    Run {
        code: out.status.code().expect("exit status, not a signal"),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    }
}

/// The folder of the CRD files (scripts/report-crds.sh downloads them once).
fn crd_dir() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/report-crds.sh"))
        .output()
        .expect("bash runs scripts/report-crds.sh");
    assert!(
        out.status.success(),
        "scripts/report-crds.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Installs the report CRDs and waits until the API server serves them.
fn install_crds(cp: &ControlPlane) {
    let dir = crd_dir();
    cp.kubectl_ok(
        &["apply", "--server-side", "-f", &dir.display().to_string()],
        None,
    );
    cp.wait_established(&[
        "crd/policyreports.wgpolicyk8s.io",
        "crd/clusterpolicyreports.wgpolicyk8s.io",
        "crd/reports.openreports.io",
        "crd/clusterreports.openreports.io",
    ]);
}

/// Creates the example's namespaces.
fn create_namespaces(cp: &ControlPlane) {
    let text = std::fs::read_to_string(repo_root().join(EXAMPLE).join("00-namespaces.yaml"))
        .expect("the example's namespaces read");
    cp.apply(&text);
    cp.apply("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: batch\n");
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `kubectl get RESOURCE -A -o json` items.
fn items(cp: &ControlPlane, resource: &str) -> Vec<Value> {
    let list = json(&cp.kubectl_ok(&["get", resource, "-A", "-o", "json"], None));
    list["items"].as_array().expect("a list").clone()
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

/// (namespace, workload kind, workload name, target) of every verdict that reaches its
/// target and is not expected, from the JSON audit of the same input.
fn reaching(extra: &[&str]) -> BTreeSet<(String, String, String, String)> {
    let mut args = vec!["audit", EXAMPLE, "--format", "json"];
    args.extend_from_slice(extra);
    let run = imdsguard(&args, &[]);
    let report = json(&run.stdout);
    let mut out = BTreeSet::new();
    for w in report["workloads"].as_array().unwrap() {
        for v in w["verdicts"].as_array().unwrap() {
            if v["reachable"] == true && v["expected"] == false {
                out.insert((
                    str_of(&w["namespace"]).to_string(),
                    str_of(&w["kind"]).to_string(),
                    str_of(&w["name"]).to_string(),
                    str_of(&v["target"]).to_string(),
                ));
            }
        }
    }
    out
}

/// The same set, from the metadata-access results of the reports read back.
fn failing(reports: &[Value]) -> BTreeSet<(String, String, String, String)> {
    let mut out = BTreeSet::new();
    for r in reports {
        for res in r["results"].as_array().into_iter().flatten() {
            if res["policy"] == "metadata-access" && res["result"] == "fail" {
                let w = &res["resources"][0];
                out.insert((
                    str_of(&w["namespace"]).to_string(),
                    str_of(&w["kind"]).to_string(),
                    str_of(&w["name"]).to_string(),
                    str_of(&res["rule"]).to_string(),
                ));
            }
        }
    }
    out
}

/// Every report's summary counts its results.
fn assert_summaries(reports: &[Value]) {
    for r in reports {
        let results = r["results"].as_array().cloned().unwrap_or_default();
        for outcome in ["pass", "fail", "warn", "error", "skip"] {
            let n = results.iter().filter(|x| x["result"] == outcome).count() as u64;
            assert_eq!(
                r["summary"][outcome].as_u64(),
                Some(n),
                "{}: summary.{outcome} of {}",
                r["metadata"]["name"],
                r["summary"]
            );
        }
    }
}

/// The reports of one namespace, by name.
fn report_of<'a>(reports: &'a [Value], namespace: &str) -> &'a Value {
    reports
        .iter()
        .find(|r| r["metadata"]["namespace"] == namespace)
        .unwrap_or_else(|| panic!("no report in namespace {namespace}"))
}

/// The result of `policy`/`rule` for a workload.
fn result_for<'a>(report: &'a Value, workload: &str, rule: &str) -> &'a Value {
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            r["policy"] == "metadata-access"
                && r["resources"][0]["name"] == workload
                && r["rule"] == rule
        })
        .unwrap_or_else(|| panic!("no result for {workload} {rule}"))
}

/// The printed objects, as JSON values (documents of the YAML stream).
fn printed(format: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["audit", EXAMPLE, "--format", format, "--fail-on", "never"];
    args.extend_from_slice(extra);
    let run = imdsguard(&args, &[("SOURCE_DATE_EPOCH", EPOCH)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.stdout
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_norway::from_str::<Value>(d).expect("each document is YAML"))
        .collect()
}

/// Removes what the API server adds, to compare with what was printed.
fn as_written(mut v: Value) -> Value {
    let meta = v["metadata"].as_object_mut().unwrap();
    meta.retain(|k, _| matches!(k.as_str(), "name" | "namespace" | "labels"));
    v
}

fn apply_args<'a>(format: &'a str, kubeconfig: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "audit",
        EXAMPLE,
        "--format",
        format,
        "--apply",
        "--kubeconfig",
        kubeconfig,
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
#[ignore = "needs control plane"]
fn policyreports_are_applied_read_back_updated_and_pruned() {
    let cp = ControlPlane::dedicated("policyreports_are_applied_read_back_updated_and_pruned");
    install_crds(&cp);
    create_namespaces(&cp);
    let kubeconfig = cp.kubeconfig().display().to_string();

    // An earlier run's extra part in an audited namespace (stale), someone else's report
    // there, and an earlier run's report in a namespace this audit does not cover.
    cp.kubectl_ok(&["create", "namespace", "elsewhere"], None);
    let stale = |ns: &str, name: &str, labelled: bool| {
        let labels = if labelled {
            "  labels:\n    app.kubernetes.io/managed-by: imdsguard\n"
        } else {
            ""
        };
        format!(
            "apiVersion: wgpolicyk8s.io/v1alpha2\nkind: PolicyReport\nmetadata:\n  name: {name}\n  namespace: {ns}\n{labels}results: []\n"
        )
    };
    cp.apply(&stale("payments", "imdsguard-payments-2", true));
    cp.apply(&stale("payments", "kyverno-report", false));
    cp.apply(&stale("elsewhere", "imdsguard-elsewhere", true));

    let run = imdsguard(
        &apply_args("policyreport", &kubeconfig, &[]),
        &[("SOURCE_DATE_EPOCH", EPOCH)],
    );
    // The example has workloads reaching IMDS: the audit's exit status is kept.
    assert_eq!(
        run.code, 1,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    for ns in NAMESPACES {
        assert!(
            run.stdout.contains(&format!(
                "policyreports.wgpolicyk8s.io {ns}/imdsguard-{ns} serverside-applied"
            )),
            "{}",
            run.stdout
        );
    }
    assert!(
        run.stdout
            .contains("clusterpolicyreports.wgpolicyk8s.io imdsguard serverside-applied"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("policyreports.wgpolicyk8s.io payments/imdsguard-payments-2 deleted (stale"),
        "{}",
        run.stdout
    );

    let reports = items(&cp, "policyreports");
    let mut names: Vec<(String, String)> = reports
        .iter()
        .map(|r| {
            (
                str_of(&r["metadata"]["namespace"]).to_string(),
                str_of(&r["metadata"]["name"]).to_string(),
            )
        })
        .collect();
    names.sort();
    let mut expected: Vec<(String, String)> = NAMESPACES
        .iter()
        .map(|ns| (ns.to_string(), format!("imdsguard-{ns}")))
        .collect();
    // Untouched: not labelled, or in a namespace the audit does not cover.
    expected.push(("elsewhere".into(), "imdsguard-elsewhere".into()));
    expected.push(("payments".into(), "kyverno-report".into()));
    expected.sort();
    assert_eq!(names, expected);

    let ours: Vec<Value> = reports
        .iter()
        .filter(|r| r["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "imdsguard")
        .filter(|r| r["metadata"]["namespace"] != "elsewhere")
        .cloned()
        .collect();
    assert_eq!(ours.len(), NAMESPACES.len());
    assert_summaries(&ours);
    // Exactly the workloads and targets the JSON audit says are reached fail.
    let want = reaching(&[]);
    assert!(want.len() >= 20, "the example reaches: {want:?}");
    assert_eq!(failing(&ours), want);

    let payments = report_of(&ours, "payments");
    assert_eq!(payments["scope"]["kind"], "Namespace");
    assert_eq!(payments["scope"]["name"], "payments");
    let api = result_for(payments, "api", "169.254.169.254:80/TCP");
    assert_eq!(api["result"], "fail");
    assert_eq!(api["severity"], "high");
    assert_eq!(api["source"], "imdsguard");
    assert_eq!(api["resources"][0]["kind"], "Deployment");
    assert_eq!(api["resources"][0]["apiVersion"], "apps/v1");
    assert_eq!(
        api["properties"]["object"],
        "NetworkPolicy/payments/allow-egress-all"
    );
    assert_eq!(api["timestamp"]["seconds"], 1_767_225_600_i64);
    let ledger = result_for(payments, "ledger-worker", "169.254.169.254:80/TCP");
    assert_eq!(ledger["result"], "pass");
    assert!(
        payments["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["policy"] == "allow-reopens-target" && r["result"] == "fail"),
        "{payments}"
    );
    // The field manager is imdsguard's, by server-side apply.
    let with_fields = json(&cp.kubectl_ok(
        &[
            "get",
            "policyreport",
            "-n",
            "payments",
            "imdsguard-payments",
            "-o",
            "json",
            "--show-managed-fields",
        ],
        None,
    ));
    let managers: Vec<&Value> = with_fields["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["manager"])
        .collect();
    assert!(
        managers.contains(&&Value::from("imdsguard")),
        "{managers:?}"
    );
    let ours_managed = with_fields["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["manager"] == "imdsguard")
        .unwrap();
    assert_eq!(ours_managed["operation"], "Apply", "{ours_managed}");

    // What was applied is what --format policyreport prints.
    let printed_objects = printed("policyreport", &[]);
    assert_eq!(printed_objects.len(), NAMESPACES.len() + 1);
    for p in &printed_objects[..NAMESPACES.len()] {
        let ns = str_of(&p["metadata"]["namespace"]);
        assert_eq!(
            &as_written(report_of(&ours, ns).clone()),
            p,
            "namespace {ns}"
        );
    }
    let cluster = items(&cp, "clusterpolicyreports");
    assert_eq!(cluster.len(), 1);
    assert_eq!(cluster[0]["metadata"]["name"], "imdsguard");
    assert_eq!(
        as_written(cluster[0].clone()),
        printed_objects[NAMESPACES.len()]
    );

    // A second run with the AKS preset: the add-ons' IMDS access is expected now, and
    // every list is replaced (not merged) by the new results.
    let run = imdsguard(
        &apply_args("policyreport", &kubeconfig, &["--preset", "aks"]),
        &[("SOURCE_DATE_EPOCH", EPOCH)],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let reports: Vec<Value> = items(&cp, "policyreports")
        .into_iter()
        .filter(|r| {
            r["metadata"]["name"] == format!("imdsguard-{}", str_of(&r["metadata"]["namespace"]))
        })
        .filter(|r| r["metadata"]["namespace"] != "elsewhere")
        .collect();
    assert_summaries(&reports);
    assert_eq!(failing(&reports), reaching(&["--preset", "aks"]));
    let kube_system = report_of(&reports, "kube-system");
    let ama = result_for(kube_system, "ama-logs", "169.254.169.254:80/TCP");
    assert_eq!(ama["result"], "pass", "{ama}");
    assert_eq!(ama["severity"], "info");
    assert_eq!(ama["properties"]["finding"], "expected-access");
    for p in printed("policyreport", &["--preset", "aks"])
        .iter()
        .filter(|p| p["kind"] == "PolicyReport")
    {
        let ns = str_of(&p["metadata"]["namespace"]);
        assert_eq!(
            &as_written(report_of(&reports, ns).clone()),
            p,
            "namespace {ns}"
        );
    }

    // --engine none: the cluster-scoped finding goes to the ClusterPolicyReport.
    let run = imdsguard(
        &apply_args("policyreport", &kubeconfig, &["--engine", "none"]),
        &[],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let cluster = items(&cp, "clusterpolicyreports");
    let results = cluster[0]["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0]["policy"], "no-policy-engine");
    assert_eq!(results[0]["result"], "fail");
    assert_eq!(cluster[0]["summary"]["fail"], 1);
}

#[test]
#[ignore = "needs control plane"]
fn openreports_are_applied_and_read_back() {
    let cp = ControlPlane::dedicated("openreports_are_applied_and_read_back");
    install_crds(&cp);
    create_namespaces(&cp);
    let kubeconfig = cp.kubeconfig().display().to_string();
    let run = imdsguard(
        &apply_args("openreports", &kubeconfig, &["--fail-on", "never"]),
        &[("SOURCE_DATE_EPOCH", EPOCH)],
    );
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(
        run.stdout
            .contains("reports.openreports.io payments/imdsguard-payments serverside-applied"),
        "{}",
        run.stdout
    );
    let reports = items(&cp, "reports.openreports.io");
    assert_eq!(reports.len(), NAMESPACES.len());
    assert_summaries(&reports);
    assert_eq!(failing(&reports), reaching(&[]));
    for r in &reports {
        assert_eq!(r["apiVersion"], "openreports.io/v1alpha1");
        assert_eq!(
            r["source"], "imdsguard",
            "the top-level source of OpenReports"
        );
    }
    let default = report_of(&reports, "default");
    let cli = result_for(default, "azure-cli", "168.63.129.16:32526/TCP");
    assert_eq!(cli["result"], "fail");
    assert_eq!(cli["resources"][0]["kind"], "Pod");
    assert_eq!(
        cli["properties"]["service"],
        "Azure WireServer HostGAPlugin"
    );
    let cluster = items(&cp, "clusterreports.openreports.io");
    assert_eq!(cluster.len(), 1);
    assert_eq!(cluster[0]["kind"], "ClusterReport");
    assert_eq!(cluster[0]["source"], "imdsguard");
    // Nothing of the other API was written.
    assert!(items(&cp, "policyreports").is_empty());
    let printed_objects = printed("openreports", &[]);
    for p in printed_objects.iter().filter(|p| p["kind"] == "Report") {
        let ns = str_of(&p["metadata"]["namespace"]);
        assert_eq!(
            &as_written(report_of(&reports, ns).clone()),
            p,
            "namespace {ns}"
        );
    }
}

#[test]
#[ignore = "needs control plane"]
fn printed_reports_pass_the_crd_schemas() {
    let cp = ControlPlane::dedicated("printed_reports_pass_the_crd_schemas");
    install_crds(&cp);
    create_namespaces(&cp);
    for format in ["policyreport", "openreports"] {
        for extra in [&[][..], &["--preset", "aks"][..], &["--engine", "none"][..]] {
            let mut args = vec!["audit", EXAMPLE, "--format", format, "--fail-on", "never"];
            args.extend_from_slice(extra);
            let run = imdsguard(&args, &[]);
            assert_eq!(run.code, 0, "{}", run.stderr);
            // Strict validation refuses any field the CRD's schema lacks, and the schema
            // checks types and enums (result, severity).
            let out = cp.kubectl_ok(
                &[
                    "apply",
                    "--dry-run=server",
                    "--validate=strict",
                    "--server-side",
                    "--field-manager=imdsguard",
                    "-f",
                    "-",
                ],
                Some(&run.stdout),
            );
            assert_eq!(
                out.lines().count(),
                NAMESPACES.len() + 1,
                "{format} {extra:?}: {out}"
            );
            assert!(
                out.lines()
                    .all(|l| l.ends_with("serverside-applied (server dry run)")),
                "{out}"
            );
        }
    }
    // Nothing was stored.
    assert!(items(&cp, "policyreports").is_empty());
    // A value outside the schema is refused: the check can fail.
    let run = imdsguard(
        &[
            "audit",
            EXAMPLE,
            "--format",
            "policyreport",
            "--fail-on",
            "never",
        ],
        &[],
    );
    let broken = run.stdout.replacen("result: fail", "result: failed", 1);
    let out = cp.kubectl(
        &["apply", "--dry-run=server", "--server-side", "-f", "-"],
        Some(&broken),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unsupported value: \"failed\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "needs control plane"]
fn a_missing_crd_and_missing_rights_are_clear_errors() {
    let cp = ControlPlane::dedicated("a_missing_crd_and_missing_rights_are_clear_errors");
    create_namespaces(&cp);
    let kubeconfig = cp.kubeconfig().display().to_string();
    let run = imdsguard(&apply_args("policyreport", &kubeconfig, &[]), &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "the cluster has no PolicyReport CRD (wgpolicyk8s.io/v1alpha2): install it with "
        ),
        "{}",
        run.stderr
    );
    let run = imdsguard(&apply_args("openreports", &kubeconfig, &[]), &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("the cluster has no Report CRD (openreports.io/v1alpha1): install it with "),
        "{}",
        run.stderr
    );

    // With the CRDs, a service account without RBAC rights is refused, naming the verb
    // and resource; with the rights docs/reports.md lists, the same run succeeds.
    install_crds(&cp);

    // A namespace of the input that the cluster lacks: that report fails, saying so, the
    // others are written, and nothing is pruned.
    let dir = scratch("nowhere");
    let manifest = dir.join("nowhere.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: lost, namespace: nowhere}\nspec:\n  template:\n    metadata: {labels: {app: lost}}\n",
    )
    .unwrap();
    cp.apply(
        "apiVersion: wgpolicyk8s.io/v1alpha2\nkind: PolicyReport\nmetadata:\n  name: imdsguard-shop-2\n  namespace: shop\n  labels: {app.kubernetes.io/managed-by: imdsguard}\n",
    );
    let manifest_arg = manifest.display().to_string();
    let run = imdsguard(
        &[
            "audit",
            EXAMPLE,
            &manifest_arg,
            "--format",
            "policyreport",
            "--apply",
            "--kubeconfig",
            &kubeconfig,
        ],
        &[],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "namespace nowhere does not exist in the cluster, so policyreports.wgpolicyk8s.io nowhere/imdsguard-nowhere cannot be written: create it"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(
            "1 report object(s) could not be written (7 applied); stale reports were not deleted"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout
            .contains("policyreports.wgpolicyk8s.io shop/imdsguard-shop serverside-applied")
    );
    let names: Vec<String> = items(&cp, "policyreports")
        .iter()
        .map(|r| str_of(&r["metadata"]["name"]).to_string())
        .collect();
    assert!(names.contains(&"imdsguard-shop-2".to_string()), "{names:?}");
    assert_eq!(names.len(), NAMESPACES.len() + 1, "{names:?}");
    cp.kubectl_ok(&["delete", "policyreports", "--all", "-A"], None);
    drop(dir);

    let ns = cp.namespace("reporter");
    let sa_dir = scratch("sa");
    let sa_config = sa_dir.join("kubeconfig");
    cp.service_account_kubeconfig(&ns, "reporter", &sa_config);
    let sa = sa_config.display().to_string();
    let run = imdsguard(&apply_args("policyreport", &sa, &[]), &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "forbidden: the credentials may not patch policyreports.wgpolicyk8s.io in namespace "
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("grant create and patch on policyreports.wgpolicyk8s.io")
    );
    assert!(items(&cp, "policyreports").is_empty());
    cp.apply(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: imdsguard-reports
rules:
- apiGroups: [wgpolicyk8s.io]
  resources: [policyreports, clusterpolicyreports]
  verbs: [create, patch, list, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: imdsguard-reports
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: imdsguard-reports
subjects:
- kind: ServiceAccount
  name: reporter
  namespace: {ns}
"
    ));
    let run = imdsguard(
        &apply_args("policyreport", &sa, &["--fail-on", "never"]),
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(items(&cp, "policyreports").len(), NAMESPACES.len());
}

/// Loads the example into the cluster (its SecretProviderClass has no CRD here: refused,
/// the rest is stored).
fn load_example(cp: &ControlPlane) {
    let out = cp.kubectl(
        &[
            "apply",
            "--server-side",
            "-f",
            &repo_root().join(EXAMPLE).display().to_string(),
        ],
        None,
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("deployment.apps/api serverside-applied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `metadata.name` (namespace/name for a namespaced object) → `resourceVersion`.
fn versions(objects: &[Value]) -> std::collections::BTreeMap<String, String> {
    objects
        .iter()
        .map(|o| {
            let m = &o["metadata"];
            let name = match m["namespace"].as_str() {
                Some(ns) => format!("{ns}/{}", str_of(&m["name"])),
                None => str_of(&m["name"]).to_string(),
            };
            (name, str_of(&m["resourceVersion"]).to_string())
        })
        .collect()
}

/// The `seconds` of every result's timestamp in these reports.
fn result_times(objects: &[Value]) -> BTreeSet<i64> {
    objects
        .iter()
        .flat_map(|o| o["results"].as_array().cloned().unwrap_or_default())
        .map(|r| r["timestamp"]["seconds"].as_i64().expect("a timestamp"))
        .collect()
}

#[test]
#[ignore = "needs control plane"]
fn a_live_audit_writes_its_reports_back() {
    let cp = ControlPlane::dedicated("a_live_audit_writes_its_reports_back");
    install_crds(&cp);
    create_namespaces(&cp);
    load_example(&cp);
    let kubeconfig = cp.kubeconfig().display().to_string();
    let run = imdsguard(
        &[
            "audit",
            "--kubeconfig",
            &kubeconfig,
            "--format",
            "policyreport",
            "--apply",
            "--fail-on",
            "never",
        ],
        &[],
    );
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let reports = items(&cp, "policyreports");
    // Every namespace of the cluster is audited: the example's and the API server's own.
    let mut namespaces: Vec<&str> = reports
        .iter()
        .map(|r| str_of(&r["metadata"]["namespace"]))
        .collect();
    namespaces.sort_unstable();
    for ns in NAMESPACES {
        assert!(namespaces.contains(&ns), "{namespaces:?}");
    }
    assert_summaries(&reports);
    // The live audit of the example reaches what the audit of its files does.
    assert_eq!(failing(&reports), reaching(&[]));
    // Objects read from the cluster have no file and line.
    let payments = report_of(&reports, "payments");
    let api = result_for(payments, "api", "169.254.169.254:80/TCP");
    assert_eq!(api["result"], "fail");
    assert!(api["properties"].get("file").is_none(), "{api}");
    assert_eq!(
        api["properties"]["object"],
        "NetworkPolicy/payments/allow-egress-all"
    );
}

#[test]
#[ignore = "needs control plane"]
fn a_one_namespace_audit_leaves_the_cluster_report_alone() {
    let cp = ControlPlane::dedicated("a_one_namespace_audit_leaves_the_cluster_report_alone");
    install_crds(&cp);
    create_namespaces(&cp);
    load_example(&cp);
    let kubeconfig = cp.kubeconfig().display().to_string();
    let live = |extra: &[&str], epoch: &str| {
        let mut args = vec![
            "audit",
            "--kubeconfig",
            &kubeconfig,
            "--format",
            "policyreport",
            "--fail-on",
            "never",
            // No policy engine: the cluster report holds a result (no-policy-engine).
            "--engine",
            "none",
        ];
        args.extend_from_slice(extra);
        let run = imdsguard(&args, &[("SOURCE_DATE_EPOCH", epoch)]);
        assert_eq!(
            run.code, 0,
            "{args:?}\nstdout:\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        );
        run
    };

    // A full run writes every namespace's report and the cluster report.
    let full = live(&["--apply"], EPOCH);
    assert!(
        full.stdout
            .contains("clusterpolicyreports.wgpolicyk8s.io imdsguard serverside-applied"),
        "{}",
        full.stdout
    );
    // Parts a full run with more than 500 results per report writes (labelled as ours).
    cp.apply(
        "apiVersion: wgpolicyk8s.io/v1alpha2
kind: ClusterPolicyReport
metadata: {name: imdsguard-2, labels: {app.kubernetes.io/managed-by: imdsguard}}
summary: {pass: 0, fail: 0, warn: 0, error: 0, skip: 0}
---
apiVersion: wgpolicyk8s.io/v1alpha2
kind: PolicyReport
metadata: {name: imdsguard-shop-2, namespace: shop, labels: {app.kubernetes.io/managed-by: imdsguard}}
summary: {pass: 0, fail: 0, warn: 0, error: 0, skip: 0}
---
apiVersion: wgpolicyk8s.io/v1alpha2
kind: PolicyReport
metadata: {name: imdsguard-payments-2, namespace: payments, labels: {app.kubernetes.io/managed-by: imdsguard}}
summary: {pass: 0, fail: 0, warn: 0, error: 0, skip: 0}
",
    );
    let cluster_before = items(&cp, "clusterpolicyreports");
    assert_eq!(cluster_before.len(), 2);
    let report = cluster_before
        .iter()
        .find(|r| r["metadata"]["name"] == "imdsguard")
        .unwrap();
    assert_eq!(report["results"][0]["policy"], "no-policy-engine");
    let namespaced_before = items(&cp, "policyreports");
    let epoch: i64 = EPOCH.parse().unwrap();
    assert_eq!(result_times(&namespaced_before), BTreeSet::from([epoch]));

    // Printed, a one-namespace audit holds that namespace's report alone.
    let printed = live(&["-n", "payments"], "1767229200");
    let docs: Vec<Value> = printed
        .stdout
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_norway::from_str(d).expect("YAML"))
        .collect();
    let kinds: Vec<(&str, &str)> = docs
        .iter()
        .map(|d| {
            let ns = d["metadata"]["namespace"].as_str().unwrap_or("");
            (str_of(&d["kind"]), ns)
        })
        .collect();
    assert_eq!(kinds, [("PolicyReport", "payments")], "{}", printed.stdout);

    // Applied an hour later: payments' report is rewritten, its stale part pruned; the
    // cluster reports and the other namespaces' reports are untouched.
    let one = live(&["-n", "payments", "--apply"], "1767229200");
    assert!(
        !one.stdout.contains("clusterpolicyreports"),
        "a -n run names no cluster report:\n{}",
        one.stdout
    );
    assert!(
        one.stdout
            .contains("policyreports.wgpolicyk8s.io payments/imdsguard-payments-2 deleted (stale"),
        "{}",
        one.stdout
    );
    let cluster_after = items(&cp, "clusterpolicyreports");
    assert_eq!(versions(&cluster_after), versions(&cluster_before));
    assert_eq!(cluster_after, cluster_before);
    let namespaced_after = items(&cp, "policyreports");
    let (payments, others): (Vec<Value>, Vec<Value>) = namespaced_after
        .into_iter()
        .partition(|r| r["metadata"]["namespace"] == "payments");
    assert_eq!(payments.len(), 1, "{payments:?}");
    assert_eq!(payments[0]["metadata"]["name"], "imdsguard-payments");
    assert_eq!(result_times(&payments), BTreeSet::from([1_767_229_200]));
    assert_summaries(&payments);
    let others_before: Vec<Value> = namespaced_before
        .iter()
        .filter(|r| r["metadata"]["namespace"] != "payments")
        .cloned()
        .collect();
    assert!(
        versions(&others).contains_key("shop/imdsguard-shop-2"),
        "another namespace's part stays"
    );
    assert_eq!(versions(&others), versions(&others_before));
}

#[test]
fn the_printed_stream_holds_one_object_per_namespace_and_the_cluster_report() {
    for (format, api, kinds) in [
        (
            "policyreport",
            "wgpolicyk8s.io/v1alpha2",
            ["PolicyReport", "ClusterPolicyReport"],
        ),
        (
            "openreports",
            "openreports.io/v1alpha1",
            ["Report", "ClusterReport"],
        ),
    ] {
        let objects = printed(format, &[]);
        let got: Vec<(String, String)> = objects
            .iter()
            .map(|o| {
                assert_eq!(o["apiVersion"], api);
                (
                    str_of(&o["kind"]).to_string(),
                    o["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                )
            })
            .collect();
        let mut want: Vec<(String, String)> = NAMESPACES
            .iter()
            .map(|ns| (kinds[0].to_string(), ns.to_string()))
            .collect();
        want.push((kinds[1].to_string(), String::new()));
        assert_eq!(got, want, "{format}");
        assert_summaries(&objects);
        assert_eq!(failing(&objects), reaching(&[]), "{format}");
        // SOURCE_DATE_EPOCH sets every result's time.
        assert!(
            objects
                .iter()
                .flat_map(|o| o["results"].as_array().cloned().unwrap_or_default())
                .all(|r| r["timestamp"]
                    == serde_json::json!({"seconds": 1_767_225_600_i64, "nanos": 0}))
        );
    }
}

#[test]
fn apply_needs_a_report_format() {
    let run = imdsguard(&["audit", EXAMPLE, "--apply"], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "--apply writes report objects to the cluster: use it with --format policyreport or --format openreports"
        ),
        "{}",
        run.stderr
    );
    // -n chooses what a live audit reads: with files it is refused, --apply or not.
    let run = imdsguard(
        &[
            "audit",
            EXAMPLE,
            "--format",
            "policyreport",
            "--apply",
            "-n",
            "shop",
        ],
        &[],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("give them without PATH or -f"),
        "{}",
        run.stderr
    );
}
