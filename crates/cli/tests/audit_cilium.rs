//! Black-box tests of `imdsguard audit` on Cilium policies: a small cluster with a
//! CiliumClusterwideNetworkPolicy denying 169.254.169.254 to every pod but an agent, read
//! from standard input, audited with `--engine cilium` and each classification of the
//! link-local metadata address (`--cilium-link-local`).

use serde_json::Value;

#[path = "support/run.rs"]
mod run;
use run::{Run, run_with_stdin};

const IMDS: &str = "169.254.169.254:80/TCP";

const CLUSTER: &str = r#"apiVersion: v1
kind: Namespace
metadata: {name: app}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: app}
spec:
  template:
    metadata: {labels: {app: web}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: agent, namespace: app}
spec:
  template:
    metadata: {labels: {app: agent}}
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: deny-imds}
spec:
  endpointSelector:
    matchExpressions: [{key: app, operator: NotIn, values: [agent]}]
  enableDefaultDeny: {egress: false, ingress: false}
  egressDeny:
  - toCIDR: [169.254.169.254/32]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#;

fn audit(extra: &[&str], stdin: &str) -> Run {
    let mut args = vec!["audit", "-f", "-", "--target", IMDS, "--format", "json"];
    args.extend_from_slice(extra);
    run_with_stdin(&args, stdin)
}

/// The verdict of `app/<name>[Deployment]` for IMDS.
fn verdict(r: &Value, name: &str) -> Value {
    let w = r["workloads"]
        .as_array()
        .expect("workloads")
        .iter()
        .find(|w| w["namespace"] == "app" && w["name"] == name)
        .unwrap_or_else(|| panic!("no workload app/{name} in {:#}", r["workloads"]));
    w["verdicts"]
        .as_array()
        .expect("verdicts")
        .iter()
        .find(|v| v["target"] == IMDS)
        .unwrap_or_else(|| panic!("no IMDS verdict for {name}: {w:#}"))
        .clone()
}

#[test]
fn a_cilium_deny_decides_when_the_address_is_world() {
    let run = audit(
        &["--engine", "cilium", "--cilium-link-local", "world"],
        CLUSTER,
    );
    assert_eq!(
        run.code, 1,
        "the agent reaches IMDS; stderr:\n{}",
        run.stderr
    );
    let r = run.json();
    let web = verdict(&r, "web");
    assert_eq!(web["reachable"], false, "{web:#}");
    assert_eq!(web["tier"], "cilium", "{web:#}");
    assert_eq!(
        web["object"]["kind"], "CiliumClusterwideNetworkPolicy",
        "{web:#}"
    );
    assert_eq!(web["object"]["name"], "deny-imds", "{web:#}");
    assert_eq!(web["rule"], "egressDeny[0]", "{web:#}");
    assert!(
        web["reason"].as_str().unwrap().contains("denied by"),
        "{web:#}"
    );
    let agent = verdict(&r, "agent");
    assert_eq!(agent["reachable"], true, "{agent:#}");
}

#[test]
fn by_default_a_host_classification_is_assumed_possible() {
    // Without --cilium-link-local the audit is cautious: if Cilium classifies the address
    // as `host`, the CIDR deny does not cover it, and the reason says both.
    for extra in [&["--engine", "cilium"][..], &[][..]] {
        let run = audit(extra, CLUSTER);
        assert_eq!(run.code, 1, "stderr:\n{}", run.stderr);
        let web = verdict(&run.json(), "web");
        assert_eq!(web["reachable"], true, "{extra:?}: {web:#}");
        let reason = web["reason"].as_str().unwrap();
        assert!(
            reason.contains("as `world`: denied by"),
            "{extra:?}: {reason}"
        );
        assert!(
            reason.contains("--cilium-link-local"),
            "{extra:?}: {reason}"
        );
    }
    let run = audit(
        &["--engine", "cilium", "--cilium-link-local", "host"],
        CLUSTER,
    );
    let web = verdict(&run.json(), "web");
    assert_eq!(web["reachable"], true, "{web:#}");
}

#[test]
fn the_classification_flag_is_checked() {
    let run = audit(
        &["--engine", "cilium", "--cilium-link-local", "local"],
        CLUSTER,
    );
    assert_eq!(run.code, 2, "stdout:\n{}", run.stdout);
    assert!(run.stderr.contains("--cilium-link-local"), "{}", run.stderr);
    let run = audit(
        &["--engine", "calico", "--cilium-link-local", "world"],
        CLUSTER,
    );
    assert_eq!(run.code, 2, "stdout:\n{}", run.stdout);
    assert!(run.stderr.contains("--engine cilium"), "{}", run.stderr);
}

#[test]
fn a_broken_cilium_policy_is_reported_with_its_place() {
    let broken = format!(
        "{CLUSTER}---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: typo, namespace: app}}\nspec:\n  endpointSelector: {{}}\n  egress:\n  - toEntities: [internet]\n"
    );
    let run = audit(
        &["--engine", "cilium", "--cilium-link-local", "world"],
        &broken,
    );
    assert_eq!(run.code, 2, "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("<stdin>:30")
            && run.stderr.contains("CiliumNetworkPolicy app/typo")
            && run
                .stderr
                .contains("egress[0].toEntities[0]: `internet` is not an entity"),
        "{}",
        run.stderr
    );
}

#[test]
fn cilium_policies_under_another_engine_are_reported_not_enforced() {
    let run = audit(&["--engine", "generic"], CLUSTER);
    assert_eq!(run.code, 1, "stderr:\n{}", run.stderr);
    let r = run.json();
    assert_eq!(verdict(&r, "web")["reachable"], true);
    let finding = r["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["id"] == "not-enforced")
        .unwrap_or_else(|| panic!("no not-enforced finding: {:#}", r["findings"]));
    let message = finding["message"].as_str().unwrap();
    assert!(
        message
            .contains("CiliumClusterwideNetworkPolicy deny-imds is not enforced by engine generic"),
        "{message}"
    );
}
