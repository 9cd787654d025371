//! Black-box tests of `imdsguard audit` on Calico policies: a small cluster with a Calico
//! tier denying the metadata endpoints to every pod but an agent (a GlobalNetworkSet names
//! them), a Kubernetes NetworkPolicy isolating one namespace, read from standard input
//! and audited with `--engine calico` (and by detection, without it).

use serde_json::Value;

#[path = "support/run.rs"]
mod run;
use run::{Run, run_with_stdin};

const IMDS: &str = "169.254.169.254:80/TCP";
const DNS: &str = "10.0.0.10:53/UDP";

const CLUSTER: &str = r#"apiVersion: v1
kind: Namespace
metadata: {name: app}
---
apiVersion: v1
kind: Namespace
metadata: {name: locked}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: app}
spec:
  template:
    metadata: {labels: {app: web}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: app}
spec:
  template:
    metadata: {labels: {app: agent}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: locked}
spec:
  template:
    metadata: {labels: {app: api}}
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkSet
metadata:
  name: metadata
  labels: {role: metadata}
spec:
  nets: [169.254.169.254/32, 168.63.129.16/32]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.deny-metadata}
spec:
  tier: security
  order: 10
  selector: app != 'agent'
  egress:
  - action: Deny
    destination: {selector: role == 'metadata'}
  - action: Pass
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dns-only, namespace: locked}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - ports: [{port: 53, protocol: UDP}]
"#;

fn audit(extra: &[&str], stdin: &str) -> Run {
    let mut args = vec![
        "audit", "-f", "-", "--target", IMDS, "--target", DNS, "--format", "json",
    ];
    args.extend_from_slice(extra);
    run_with_stdin(&args, stdin)
}

/// The verdict of `namespace/name` for `target`.
fn verdict<'a>(report: &'a Value, namespace: &str, name: &str, target: &str) -> &'a Value {
    report["workloads"]
        .as_array()
        .expect("workloads")
        .iter()
        .find(|w| w["namespace"] == namespace && w["name"] == name)
        .unwrap_or_else(|| panic!("no workload {namespace}/{name}"))["verdicts"]
        .as_array()
        .expect("verdicts")
        .iter()
        .find(|v| v["target"] == target)
        .unwrap_or_else(|| panic!("no verdict for {target}"))
}

#[test]
fn calico_tiers_decide_with_tier_object_and_rule() {
    let run = audit(&["--engine", "calico"], CLUSTER);
    // The agent reaches IMDS: exit status 1 (a high finding).
    assert_eq!(run.code, 1, "stderr:\n{}", run.stderr);
    let r = run.json();
    assert_eq!(r["engine"], "calico");
    let web = verdict(&r, "app", "web", IMDS);
    assert_eq!(web["reachable"], false, "{web}");
    assert_eq!(web["tier"], "calico:security");
    assert_eq!(web["object"]["kind"], "GlobalNetworkPolicy");
    assert_eq!(web["object"]["name"], "security.deny-metadata");
    assert_eq!(web["rule"], "egress[0]");
    assert_eq!(
        web["reason"],
        "denied by GlobalNetworkPolicy security.deny-metadata#egress[0] in Calico tier security"
    );
    // Passed by the security tier; no other tier applies: the namespace profile allows.
    let web_dns = verdict(&r, "app", "web", DNS);
    assert_eq!(web_dns["reachable"], true, "{web_dns}");
    assert_eq!(web_dns["tier"], "calico:security");
    let agent = verdict(&r, "app", "agent", IMDS);
    assert_eq!(agent["reachable"], true, "{agent}");
    assert_eq!(agent["tier"], "default");
    // The NetworkPolicy sits in Calico's default tier: IMDS is denied in security first,
    // DNS passes to default, where the NetworkPolicy allows it.
    let api = verdict(&r, "locked", "api", IMDS);
    assert_eq!(api["tier"], "calico:security", "{api}");
    let api_dns = verdict(&r, "locked", "api", DNS);
    assert_eq!(api_dns["reachable"], true, "{api_dns}");
    assert_eq!(api_dns["tier"], "calico:default");
    assert_eq!(api_dns["object"]["kind"], "NetworkPolicy");
    assert_eq!(api_dns["object"]["namespace"], "locked");
    assert_eq!(api_dns["object"]["name"], "dns-only");
    assert_eq!(api_dns["rule"], "egress[0]");
}

#[test]
fn calico_kinds_select_the_engine_and_bad_selectors_are_reported() {
    let run = audit(&[], CLUSTER);
    let r = run.json();
    assert_eq!(r["engine"], "calico");
    assert_eq!(r["engine_detected"], true);
    // A broken policy is reported and left out: without the deny, the end of the default
    // tier drops what the NetworkPolicy does not allow, and web is open.
    let bad = CLUSTER.replace("selector: app != 'agent'", "selector: app = 'agent'");
    let run = audit(&["--engine", "calico"], &bad);
    assert_eq!(
        run.code, 2,
        "a broken object: exit status 2\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(
            "GlobalNetworkPolicy security.deny-metadata: spec.selector: selector `app = 'agent'`: column 5: expected `==`, found a single `=`"
        ),
        "{}",
        run.stderr
    );
    let r = run.json();
    let api = verdict(&r, "locked", "api", IMDS);
    assert_eq!(api["reachable"], false, "{api}");
    assert_eq!(api["tier"], "calico:default");
    assert!(
        api["reason"]
            .as_str()
            .unwrap()
            .starts_with("denied at the end of Calico tier default: NetworkPolicy locked/dns-only"),
        "{api}"
    );
    let web = verdict(&r, "app", "web", IMDS);
    assert_eq!(web["reachable"], true, "{web}");
}
