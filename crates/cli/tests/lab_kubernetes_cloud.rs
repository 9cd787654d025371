//! `imdsguard lab --kubernetes --cloud aws|gcp` end to end, each inside a network
//! namespace of its own (`imdsguard_testkit::Netns`): the lab starts the test control
//! plane in its node namespace, plays the kubelet for dual-stack pods (`status.podIPs`
//! with both addresses), applies a `MetadataAccessPolicy` written for the cloud
//! (`spec.cloud`), runs `imdsguard controller --cloud X` and `imdsguard agent run
//! --kubernetes --cloud X`, and probes every pod over IPv4 and IPv6 before and after.
//! The rows must show `allowed` and the node keeping the metadata service in both
//! families and every other pod timing out on every endpoint of both families; the
//! read-back NetworkPolicies, audited by the lab and by `imdsguard audit` on the dump,
//! must let `platform/allowed` alone reach the instance metadata service in both
//! families, and nobody AWS's Pod Identity agent and ECS task metadata (the generated
//! policies except expected pods for the instance metadata service only).
//!
//! netpol-analyzer is left out here: it analyzes IPv4 only, the point of these runs is
//! IPv6, and `lab_kubernetes.rs` already checks its IPv4 verdicts on the same generated
//! policies (the deny objects are the same for every cloud but their addresses).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use imdsguard_testkit::control_plane::repo_root;
use imdsguard_testkit::{Netns, Scratch, require, require_path};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_imdsguard");

/// The tools the lab runs (and the control plane's script: bash, openssl, curl, python3).
const TOOLS: [&str; 9] = [
    "nft", "ip", "nsenter", "unshare", "setpriv", "bash", "openssl", "curl", "python3",
];

const ALLOWED: &str = "platform/allowed[Pod]";

/// What one cloud's run must show.
struct Cloud {
    name: &'static str,
    /// The class of the secret step (`token`) and of `imds-ipv6` when it was obtained.
    obtained: &'static str,
    /// The instance metadata service in both families, as the audit writes targets.
    imds: [&'static str; 2],
    /// The cloud's other targets: reachable by no pod under the generated policies.
    others: &'static [&'static str],
    /// The row's endpoint cells besides `imds-ipv6` and `harmless-path`, with the class
    /// they have when open.
    endpoints: &'static [&'static str],
}

const AWS: Cloud = Cloud {
    name: "aws",
    obtained: "credentials-obtained",
    imds: ["169.254.169.254:80/TCP", "[fd00:ec2::254]:80/TCP"],
    others: &[
        "169.254.170.23:80/TCP",
        "[fd00:ec2::23]:80/TCP",
        "169.254.170.2:80/TCP",
    ],
    endpoints: &["pod-identity", "pod-identity-ipv6", "ecs-task-metadata"],
};

const GCP: Cloud = Cloud {
    name: "gcp",
    obtained: "token-obtained",
    imds: ["169.254.169.254:80/TCP", "[fd20:ce::254]:80/TCP"],
    others: &[],
    endpoints: &[],
};

fn row<'a>(phase: &'a Value, pod: &str) -> &'a Value {
    phase["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["pod"] == pod)
        .unwrap_or_else(|| panic!("no row for {pod} in {}", phase["phase"]))
}

/// The class of a row's endpoint cell.
fn cell<'a>(row: &'a Value, endpoint: &str) -> &'a str {
    row["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["endpoint"] == endpoint)
        .unwrap_or_else(|| panic!("no {endpoint} cell in {row}"))["class"]
        .as_str()
        .unwrap()
}

/// The cells a row must have, in order.
fn endpoint_names(row: &Value) -> Vec<&str> {
    row["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["endpoint"].as_str().unwrap())
        .collect()
}

/// A row that got everything: the secret over IPv4 and IPv6, every other endpoint
/// answering.
fn check_open(cloud: &Cloud, r: &Value, at: &str) {
    let who = &r["pod"];
    assert_eq!(r["sensitive"], true, "{who} {at}: {r}");
    assert_eq!(r["token"], cloud.obtained, "{who} {at}: {r}");
    assert_eq!(r["imds"], "readable", "{who} {at}: {r}");
    assert_eq!(cell(r, "imds-ipv6"), cloud.obtained, "{who} {at}: {r}");
    for e in cloud.endpoints {
        assert_eq!(cell(r, e), "reachable", "{who} {at} {e}: {r}");
    }
    assert_eq!(cell(r, "harmless-path"), "readable", "{who} {at}: {r}");
}

/// A row dropped on every endpoint of both families.
fn check_dropped(r: &Value, at: &str) {
    let who = &r["pod"];
    assert_eq!(r["sensitive"], false, "{who} {at}: {r}");
    assert_eq!(r["imds"], "blocked-timeout", "{who} {at}: {r}");
    assert_eq!(r["token"], "blocked-timeout", "{who} {at}: {r}");
    for e in r["endpoints"].as_array().unwrap() {
        assert_eq!(
            e["class"], "blocked-timeout",
            "{who} {at} {}: {r}",
            e["endpoint"]
        );
    }
}

fn check_matrix(cloud: &Cloud, report: &Value) {
    assert_eq!(report["as_expected"], true, "{report:#}");
    assert_eq!(report["cloud"], cloud.name);
    let phases = report["phases"].as_array().unwrap();
    let names: Vec<&str> = phases
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["before", "controller"]);
    let (before, after) = (&phases[0], &phases[1]);
    let mut cells = vec!["imds-ipv6"];
    cells.extend(cloud.endpoints);
    cells.push("harmless-path");
    for pod in ["allowed", "web", "spoofer", "batch", "node"] {
        check_open(cloud, row(before, pod), "before");
        for phase in phases {
            let r = row(phase, pod);
            let at = &phase["phase"];
            assert_eq!(endpoint_names(r), cells, "{pod} in {at}");
            assert_eq!(r["azure_dns"], true, "{pod} the cloud's DNS in {at}");
            assert_eq!(r["node_local_dns"], true, "{pod} node-local DNS in {at}");
            assert_eq!(r["pod_to_pod"], true, "{pod} pod-to-pod in {at}");
        }
    }
    for pod in ["allowed", "node"] {
        check_open(cloud, row(after, pod), "controller");
    }
    for pod in ["web", "spoofer", "batch"] {
        check_dropped(row(after, pod), "controller");
    }
    let enforcement = after["enforcement"].as_str().unwrap();
    for word in [
        "MetadataAccessPolicy/lab".to_owned(),
        format!("spec.cloud {}", cloud.name),
        format!("controller --cloud {}", cloud.name),
        format!("--kubernetes --cloud {}", cloud.name),
    ] {
        assert!(enforcement.contains(&word), "{word}: {enforcement}");
    }
    let blocked = after["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "blocked")
        .expect("a blocked counter");
    assert!(blocked["packets"].as_u64().unwrap() > 0, "{blocked}");
    // The dual-stack pods, both addresses each.
    let allowed = report["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "allowed")
        .unwrap();
    assert_eq!(allowed["address"], "10.244.0.10, fd00:10:244::10");
    assert_eq!(allowed["allowlisted"], true);

    let kube = &report["kubernetes"];
    assert_eq!(kube["node"], "lab-node");
    let pods: Vec<&str> = kube["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(pods, ["platform/allowed", "shop/web", "jobs/batch"]);
    let policies: BTreeSet<&str> = kube["network_policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    for ns in ["platform", "shop", "jobs"] {
        // The IPv4 deny and its IPv6 companion.
        for name in [
            "imdsguard-deny-metadata",
            "imdsguard-deny-metadata-ipv6-sctp",
        ] {
            let p = format!("{ns}/{name}");
            assert!(policies.contains(p.as_str()), "no {p}: {policies:?}");
        }
    }
    // The allow for the expected pod (one per rule).
    assert!(
        policies
            .iter()
            .any(|p| p.starts_with("platform/imdsguard-allow-metadata-lab-platform-allowed")),
        "no allow for platform/allowed: {policies:?}"
    );
    let status = &kube["policy_status"];
    let ready = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "True", "{status:#}");
    assert_eq!(status["engine"], "networkpolicy", "{status:#}");
}

/// The lab's own audit of the read-back objects: target → reachable.
fn lab_audit(report: &Value) -> Vec<(String, BTreeSet<String>, BTreeSet<String>)> {
    let set = |v: &Value| -> BTreeSet<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap().to_owned())
            .collect()
    };
    report["kubernetes"]["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["target"].as_str().unwrap().to_owned(),
                set(&t["reachable"]),
                set(&t["expected"]),
            )
        })
        .collect()
}

/// The workloads `imdsguard audit --format json` says may reach `target`.
fn audit_reaching(report: &Value, target: &str) -> BTreeSet<String> {
    report["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| {
            w["verdicts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["target"] == target && v["reachable"] == true)
        })
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

fn run_cloud(test: &str, cloud: &Cloud) {
    require(test, &TOOLS);
    let root = repo_root();
    let script = root.join("scripts/control-plane.sh");
    require_path(test, &script, "the test control plane's script");
    let scratch = Scratch::new(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        &format!("lab-kubernetes-{}", cloud.name),
    );
    let dump = scratch.join("read-back");
    let ns = Netns::require(test);
    let out = ns.run(
        r#"exec "$BIN" lab --kubernetes --cloud "$CLOUD" --format json --control-plane-script "$SCRIPT" --dump-policies "$DUMP""#,
        &[
            ("BIN", BIN),
            ("CLOUD", cloud.name),
            ("SCRIPT", script.to_str().unwrap()),
            ("DUMP", dump.to_str().unwrap()),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("JSON");
    check_matrix(cloud, &report);

    // The lab's audit: exactly the cloud's targets, IMDS in both families for `allowed`
    // alone (and expected for it alone), the others for nobody.
    let audit = lab_audit(&report);
    let targets: Vec<&str> = audit.iter().map(|(t, _, _)| t.as_str()).collect();
    let mut want_targets: Vec<&str> = cloud.imds.to_vec();
    want_targets.extend(cloud.others);
    assert_eq!(
        targets.iter().copied().collect::<BTreeSet<_>>(),
        want_targets.iter().copied().collect::<BTreeSet<_>>(),
        "the lab's audit's targets"
    );
    let allowed: BTreeSet<String> = [ALLOWED.to_owned()].into();
    for (target, reachable, expected) in &audit {
        if cloud.imds.contains(&target.as_str()) {
            assert_eq!(reachable, &allowed, "the lab's audit, {target}");
            assert_eq!(expected, &allowed, "the lab's audit, {target} expected");
        } else {
            assert!(
                reachable.is_empty(),
                "the lab's audit, {target}: {reachable:?}"
            );
            assert!(
                expected.is_empty(),
                "the lab's audit, {target}: {expected:?}"
            );
        }
    }

    // The dumped pods carry both addresses; the IPv6 deny excepts the IPv6 address.
    let pods = std::fs::read_to_string(dump.join("pods.yaml")).unwrap();
    for ip in ["10.244.0.10", "fd00:10:244::10", "fd00:10:244::11"] {
        assert!(pods.contains(&format!("ip: {ip}")), "{ip} in pods.yaml");
    }
    let policies = std::fs::read_to_string(dump.join("networkpolicies.yaml")).unwrap();
    let v6 = cloud.imds[1]
        .trim_start_matches('[')
        .split(']')
        .next()
        .unwrap();
    assert!(
        policies.contains(&format!("{v6}/128")),
        "{v6} in the policies"
    );

    // `imdsguard audit` on the dump, with the NetworkPolicy API's semantics.
    let out = Command::new(BIN)
        .args(["audit", "--engine", "generic", "--cloud", cloud.name])
        .args(["--format", "json"])
        .arg(&dump)
        .output()
        .unwrap();
    let audit_json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "audit's JSON: {e}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    for target in cloud.imds {
        assert_eq!(
            audit_reaching(&audit_json, target),
            allowed,
            "imdsguard audit, {target}"
        );
    }
    for target in cloud.others {
        let reach = audit_reaching(&audit_json, target);
        assert!(reach.is_empty(), "imdsguard audit, {target}: {reach:?}");
    }
}

#[test]
#[ignore = "needs netns"]
fn the_lab_on_kubernetes_under_aws_protects_imds_in_both_families() {
    run_cloud(
        "the_lab_on_kubernetes_under_aws_protects_imds_in_both_families",
        &AWS,
    );
}

#[test]
#[ignore = "needs netns"]
fn the_lab_on_kubernetes_under_gcp_protects_the_metadata_server_in_both_families() {
    run_cloud(
        "the_lab_on_kubernetes_under_gcp_protects_the_metadata_server_in_both_families",
        &GCP,
    );
}
