//! `imdsguard audit --aks-cluster FILE`: the engine and the AKS IMDS restriction from
//! `az aks show -o json` (the samples in tests/data/aks/, see their README for the
//! documented values), on the bundled example; and the report saying how the engine was
//! decided, whatever decided it.

#[path = "support/run.rs"]
mod run;

use run::{Run, run_with_stdin};
use serde_json::Value;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/aks-imds");
const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/aks");
const IMDS: &str = "169.254.169.254:80/TCP";

fn aks_file(name: &str) -> String {
    format!("{DATA}/{name}")
}

fn audit(extra: &[&str]) -> Run {
    let mut args = vec!["audit", EXAMPLE];
    args.extend_from_slice(extra);
    run_with_stdin(&args, "")
}

fn audit_json(extra: &[&str]) -> Value {
    let mut args = extra.to_vec();
    args.extend(["--format", "json"]);
    let r = audit(&args);
    assert!(
        r.code == 0 || r.code == 1,
        "exit {}: {}\n{}",
        r.code,
        r.stderr,
        r.stdout
    );
    r.json()
}

/// The verdicts, workload by workload, as (workload, target, reachable, tier).
fn verdicts(r: &Value) -> Vec<(String, String, bool, String)> {
    let mut out = Vec::new();
    for w in r["workloads"].as_array().unwrap() {
        let id = format!(
            "{}/{}[{}]",
            w["namespace"].as_str().unwrap(),
            w["name"].as_str().unwrap(),
            w["kind"].as_str().unwrap()
        );
        for v in w["verdicts"].as_array().unwrap() {
            out.push((
                id.clone(),
                v["target"].as_str().unwrap().to_string(),
                v["reachable"].as_bool().unwrap(),
                v["tier"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

fn reach_count(r: &Value, target: &str) -> u64 {
    r["summary"]["reachable"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["target"] == target)
        .unwrap()["workloads"]
        .as_u64()
        .unwrap()
}

/// The seed's own cluster: `networkPolicy: none`. Every workload reaches every target,
/// the engine is `none`, and both the JSON and the table say why.
#[test]
fn network_policy_none_means_no_engine_and_says_why() {
    let file = aks_file("network-policy-none.json");
    let r = audit_json(&["--aks-cluster", &file]);
    assert_eq!(r["engine"], "none");
    assert_eq!(r["engine_detected"], true);
    let d = &r["engine_decision"];
    assert_eq!(d["engine"], "none");
    assert_eq!(d["source"], "aks-cluster");
    assert_eq!(
        d["how"],
        "from the AKS cluster file: networkProfile.networkPolicy=none, so no engine enforces NetworkPolicy (policies are stored but not enforced)"
    );
    assert_eq!(d["imds_restriction"]["state"], "off");
    let n = r["summary"]["workloads"].as_u64().unwrap();
    assert_eq!(n, 14);
    for t in [IMDS, "168.63.129.16:80/TCP", "168.63.129.16:32526/TCP"] {
        assert_eq!(reach_count(&r, t), n, "{t}");
    }
    let findings = r["findings"].as_array().unwrap();
    let none = findings
        .iter()
        .find(|f| f["id"] == "no-policy-engine")
        .expect("no-policy-engine finding");
    assert!(
        none["message"]
            .as_str()
            .unwrap()
            .contains("networkProfile.networkPolicy=none"),
        "{none}"
    );

    let t = audit(&["--aks-cluster", &file]);
    assert_eq!(t.code, 1, "{}", t.stderr);
    assert!(
        t.stdout.contains(
            "\nengine: none (from the AKS cluster file: networkProfile.networkPolicy=none, so no engine enforces NetworkPolicy (policies are stored but not enforced))\n"
        ),
        "{}",
        t.stdout
    );
    assert!(
        t.stdout
            .contains("14 of 14 workloads reach 169.254.169.254:80/TCP")
    );
    assert!(t.stdout.contains("AKS IMDS restriction: off"));
}

/// `azure`, `calico`, `cilium` (with its dataplane): the engine the file names, the same
/// verdicts as `--engine` gives, and a sentence naming the field.
#[test]
fn the_aks_engine_decides_like_the_flag() {
    for (file, engine, field) in [
        (
            "azure-npm.json",
            "azure-npm",
            "networkProfile.networkPolicy=azure",
        ),
        (
            "calico.json",
            "calico",
            "networkProfile.networkPolicy=calico",
        ),
        (
            "cilium.json",
            "cilium",
            "networkProfile.networkDataplane=cilium",
        ),
    ] {
        let from_file = audit_json(&["--aks-cluster", &aks_file(file)]);
        let from_flag = audit_json(&["--engine", engine]);
        assert_eq!(from_file["engine"], engine, "{file}");
        assert_eq!(
            from_file["engine_decision"]["how"],
            format!("from the AKS cluster file: {field}"),
            "{file}"
        );
        assert_eq!(from_file["engine_decision"]["source"], "aks-cluster");
        assert_eq!(verdicts(&from_file), verdicts(&from_flag), "{file}");
        assert_eq!(from_file["findings"], from_flag["findings"], "{file}");
        assert_eq!(from_flag["engine_decision"]["how"], "from --engine");
        assert_eq!(from_flag["engine_decision"]["source"], "flag");

        let t = audit(&["--aks-cluster", &aks_file(file)]);
        assert!(
            t.stdout.contains(&format!(
                "\nengine: {engine} (from the AKS cluster file: {field})\n"
            )),
            "{}",
            t.stdout
        );
    }
    // The policies matter again: under Azure NPM the example's deny-imds policies
    // block some workloads, unlike with no engine.
    let npm = audit_json(&["--aks-cluster", &aks_file("azure-npm.json")]);
    assert!(reach_count(&npm, IMDS) < 14);
}

/// `--engine` beats the file, and the report says that the file said otherwise.
#[test]
fn the_flag_beats_the_file() {
    let r = audit_json(&[
        "--engine",
        "generic",
        "--aks-cluster",
        &aks_file("calico.json"),
    ]);
    assert_eq!(r["engine"], "generic");
    assert_eq!(r["engine_decision"]["how"], "from --engine");
    let warnings = r["engine_decision"]["warnings"].as_array().unwrap();
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .starts_with("the AKS cluster file says calico (networkProfile.networkPolicy=calico)"),
        "{warnings:?}"
    );
}

/// podLinkLocalAccess None: IMDS is blocked for every workload on the pod network (tier
/// aks-imds-restriction) and stays reachable for the hostNetwork ones; WireServer is not
/// part of the restriction; the add-ons that need IMDS are reported broken.
#[test]
fn imds_restriction_blocks_pod_network_workloads_only() {
    let r = audit_json(&["--aks-cluster", &aks_file("imds-restricted.json")]);
    let d = &r["engine_decision"];
    assert_eq!(d["engine"], "none");
    assert_eq!(d["imds_restriction"]["state"], "on");
    assert_eq!(d["imds_restriction"]["pools"][0], "nodepool1");
    let mut host = Vec::new();
    for w in r["workloads"].as_array().unwrap() {
        let v = w["verdicts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["target"] == IMDS)
            .unwrap();
        let host_network = w["host_network"].as_bool().unwrap();
        assert_eq!(v["reachable"], host_network, "{w}");
        if host_network {
            host.push(w["name"].as_str().unwrap().to_string());
            assert_eq!(v["tier"], "host-network");
        } else {
            assert_eq!(v["tier"], "aks-imds-restriction", "{v}");
            assert!(
                v["reason"].as_str().unwrap().starts_with(
                    "blocked by the AKS IMDS restriction (networkProfile.podLinkLocalAccess=None)"
                ),
                "{v}"
            );
        }
    }
    host.sort();
    assert_eq!(host, ["kube-proxy", "prometheus-node-exporter"]);
    assert_eq!(reach_count(&r, IMDS), 2);
    // WireServer: no engine, so every workload still reaches it.
    assert_eq!(reach_count(&r, "168.63.129.16:80/TCP"), 14);
    assert_eq!(reach_count(&r, "168.63.129.16:32526/TCP"), 14);
    // The add-ons the AKS page lists as incompatible: expected access broken.
    let broken: Vec<&str> = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == "expected-blocked")
        .map(|f| f["objects"][0]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        broken,
        [
            "aks-secrets-store-provider-azure",
            "ama-logs",
            "ingress-appgw-deployment"
        ]
    );
    assert!(
        r["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["id"] == "expected-blocked")
            .all(|f| f["decided_by"]["tier"] == "aks-imds-restriction")
    );

    let t = audit(&["--aks-cluster", &aks_file("imds-restricted.json")]);
    assert!(
        t.stdout.contains(
            "AKS IMDS restriction: on (pools nodepool1): pods off the host network cannot reach 169.254.169.254:80/TCP"
        ),
        "{}",
        t.stdout
    );
    assert!(
        t.stdout
            .contains("2 of 14 workloads reach 169.254.169.254:80/TCP")
    );
    assert!(t.stdout.contains("blocked by the AKS IMDS restriction"));
}

/// On one pool only: where a pod runs is not known, so the verdicts do not count it, and
/// the report says so.
#[test]
fn partial_imds_restriction_is_said_and_not_counted() {
    let partial = audit_json(&["--aks-cluster", &aks_file("imds-restricted-partial.json")]);
    let none = audit_json(&["--aks-cluster", &aks_file("network-policy-none.json")]);
    assert_eq!(verdicts(&partial), verdicts(&none));
    assert_eq!(
        partial["engine_decision"]["imds_restriction"],
        serde_json::json!({"state": "partial", "restricted": ["nodepool1"], "open": ["userpool"]})
    );
    let t = audit(&["--aks-cluster", &aks_file("imds-restricted-partial.json")]);
    assert!(
        t.stdout
            .contains("AKS IMDS restriction: partial (on for nodepool1, off for userpool): not counted in the verdicts"),
        "{}",
        t.stdout
    );
    assert!(
        t.stdout
            .contains("note: the AKS IMDS restriction is on for agent pool(s) nodepool1 only")
    );
}

/// A malformed or missing file: exit 2, the file named, the line and what to do.
#[test]
fn a_bad_aks_cluster_file_is_a_usage_error() {
    let file = aks_file("malformed.json");
    let r = audit(&["--aks-cluster", &file]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(r.stdout.is_empty(), "no report: {}", r.stdout);
    assert!(
        r.stderr.contains(&format!("--aks-cluster {file}"))
            && r.stderr.contains("line 18, column")
            && r.stderr
                .contains("az aks show --name NAME --resource-group GROUP -o json"),
        "{}",
        r.stderr
    );

    let missing = aks_file("no-such-file.json");
    let r = audit(&["--aks-cluster", &missing]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains(&format!("cannot read the --aks-cluster file {missing}")),
        "{}",
        r.stderr
    );

    // A list (az aks list) is refused with a hint.
    let dir = std::env::temp_dir().join(format!("imdsguard-aks-list-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let list = dir.join("list.json");
    std::fs::write(&list, "[{\"name\": \"a\"}]").unwrap();
    let r = audit(&["--aks-cluster", list.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("az aks list"), "{}", r.stderr);
}

/// Without the file, the report still says how the engine was decided: nothing found
/// (generic), or from the input's kinds.
#[test]
fn the_decision_is_always_reported() {
    let r = audit_json(&[]);
    assert_eq!(r["engine_decision"]["source"], "default");
    assert_eq!(r["engine_decision"]["imds_restriction"]["state"], "unknown");
    assert!(
        r["engine_decision"]["how"]
            .as_str()
            .unwrap()
            .starts_with("no engine found (no --engine, no --aks-cluster"),
        "{}",
        r["engine_decision"]
    );
    let t = audit(&[]);
    assert!(
        t.stdout.contains("\nengine: generic (no engine found"),
        "{}",
        t.stdout
    );
    assert!(!t.stdout.contains("AKS IMDS restriction"));

    let calico = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: a}\n---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: deny-imds}\nspec:\n  selector: all()\n  egress: [{action: Deny, destination: {nets: [169.254.169.254/32]}}]\n";
    let r = run_with_stdin(&["audit", "-f", "-", "--format", "json"], calico).json();
    assert_eq!(r["engine_decision"]["source"], "input-kinds");
    assert_eq!(
        r["engine_decision"]["how"],
        "from the input's kinds (Calico policies, projectcalico.org)"
    );
}
