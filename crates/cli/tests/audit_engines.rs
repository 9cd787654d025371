//! Black-box tests of `imdsguard audit` with cluster-scoped policies and `--engine`: the
//! deciding tier, object and rule in JSON, table and SARIF; kinds an engine does not
//! enforce reported as `not-enforced`; Azure NPM's endPort; `--no-policy-engine` as
//! `--engine none`; ties and unknown peers reported.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_imdsguard");
const IMDS: &str = "169.254.169.254:80/TCP";
const HOST_GA_PLUGIN: &str = "168.63.129.16:32526/TCP";

/// Two workloads; an AdminNetworkPolicy denies IMDS to `web` only; a NetworkPolicy opens
/// WireServer ports 80-32526 to every pod of `app` (and isolates them).
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
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: no-imds}
spec:
  priority: 10
  subject:
    pods:
      namespaceSelector: {}
      podSelector: {matchLabels: {app: web}}
  egress:
  - name: imds
    action: Deny
    to: [{networks: [169.254.169.254/32]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: wireserver, namespace: app}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 168.63.129.16/32}}, {ipBlock: {cidr: 169.254.169.254/32}}]
    ports: [{port: 80, endPort: 32526}]
"#;

fn audit(input: &str, args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .args([
            "audit",
            "-f",
            "-",
            "--target",
            IMDS,
            "--target",
            HOST_GA_PLUGIN,
        ])
        .args(args)
        .env("COLUMNS", "250")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run imdsguard");
    // A broken pipe means the binary exited before reading its input (refused an option
    // first); its exit status and output tell the test the rest.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(input: &str, args: &[&str]) -> Value {
    let mut all = vec!["--format", "json"];
    all.extend_from_slice(args);
    let (code, out, err) = audit(input, &all);
    assert!(code == 0 || code == 1, "exit {code}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn verdict<'a>(r: &'a Value, workload: &str, target: &str) -> &'a Value {
    r["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == workload)
        .and_then(|w| {
            w["verdicts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["target"] == target)
        })
        .unwrap_or_else(|| panic!("no verdict for {workload} -> {target}"))
}

fn finding_ids(r: &Value) -> Vec<String> {
    r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn verdicts_name_the_deciding_tier_object_and_rule() {
    let r = json(CLUSTER, &[]);
    assert_eq!(r["engine"], "generic");
    let v = verdict(&r, "web", IMDS);
    assert_eq!(v["policy_allowed"], false);
    assert_eq!(v["tier"], "admin");
    assert_eq!(
        v["object"],
        serde_json::json!({"kind": "AdminNetworkPolicy", "namespace": "", "name": "no-imds"})
    );
    assert_eq!(v["rule"], "egress[0]");
    assert!(
        v["reason"].as_str().unwrap().starts_with(
            "denied by AdminNetworkPolicy/no-imds#egress[0] \"imds\" (Admin tier, priority 10)"
        ),
        "{v}"
    );
    // The agent is not a subject: NetworkPolicy decides, with its rule.
    let v = verdict(&r, "agent", IMDS);
    assert_eq!(v["policy_allowed"], true);
    assert_eq!(v["tier"], "networkpolicy");
    assert_eq!(v["object"]["kind"], "NetworkPolicy");
    assert_eq!(v["object"]["namespace"], "app");
    assert_eq!(v["rule"], "egress[0]");
    // The reaching finding carries the same.
    let f = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| {
            f["id"] == "workload-reaches-target"
                && f["message"].as_str().unwrap().starts_with("app/agent")
        })
        .unwrap();
    assert_eq!(f["decided_by"]["tier"], "networkpolicy");
}

#[test]
fn the_table_and_sarif_show_the_deciding_rule() {
    let (_, table, _) = audit(CLUSTER, &["--color", "never"]);
    assert!(
        table.contains("denied by AdminNetworkPolicy/no-imds#egress[0] (admin tier)"),
        "{table}"
    );
    let (_, sarif, _) = audit(CLUSTER, &["--format", "sarif"]);
    let s: Value = serde_json::from_str(&sarif).unwrap();
    let results = s["runs"][0]["results"].as_array().unwrap();
    let reach = results
        .iter()
        .find(|r| r["ruleId"] == "workload-reaches-target")
        .unwrap();
    assert_eq!(reach["properties"]["tier"], "networkpolicy");
    assert_eq!(reach["properties"]["rule"], "egress[0]");
}

#[test]
fn azure_npm_enforces_network_policy_only_and_ignores_end_port() {
    let generic = json(CLUSTER, &[]);
    assert_eq!(
        verdict(&generic, "agent", HOST_GA_PLUGIN)["policy_allowed"],
        true
    );
    let r = json(CLUSTER, &["--engine", "azure-npm"]);
    assert_eq!(r["engine"], "azure-npm");
    // The AdminNetworkPolicy is not enforced: web reaches IMDS through the NetworkPolicy.
    let v = verdict(&r, "web", IMDS);
    assert_eq!(v["policy_allowed"], true);
    assert_eq!(v["tier"], "networkpolicy");
    // endPort ignored: only port 80 of the range is open.
    let v = verdict(&r, "agent", HOST_GA_PLUGIN);
    assert_eq!(v["policy_allowed"], false, "{v}");
    let not_enforced: Vec<&str> = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == "not-enforced")
        .map(|f| f["message"].as_str().unwrap())
        .collect();
    assert_eq!(not_enforced.len(), 2, "{not_enforced:?}");
    assert!(
        not_enforced
            .iter()
            .any(|m| m.contains("AdminNetworkPolicy/no-imds is not enforced by engine azure-npm"))
    );
    assert!(
        not_enforced
            .iter()
            .any(|m| m.contains("ignores endPort: only port 80"))
    );
}

#[test]
fn engines_enforce_their_kinds() {
    // OVN-Kubernetes enforces AdminNetworkPolicy; kube-network-policies does not (it
    // enforces ClusterNetworkPolicy).
    let ovn = json(CLUSTER, &["--engine", "ovn-kubernetes"]);
    assert_eq!(verdict(&ovn, "web", IMDS)["tier"], "admin");
    assert!(!finding_ids(&ovn).contains(&"not-enforced".to_string()));
    let knp = json(CLUSTER, &["--engine", "kube-network-policies"]);
    assert_eq!(verdict(&knp, "web", IMDS)["tier"], "networkpolicy");
    assert!(finding_ids(&knp).contains(&"not-enforced".to_string()));
    // The same policy as a ClusterNetworkPolicy: the other way round.
    let cnp = CLUSTER
        .replace(
            "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy",
            "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy",
        )
        .replace("  priority: 10\n", "  tier: Admin\n  priority: 10\n");
    let knp = json(&cnp, &["--engine", "kube-network-policies"]);
    assert_eq!(verdict(&knp, "web", IMDS)["tier"], "admin");
    assert_eq!(
        verdict(&knp, "web", IMDS)["object"]["kind"],
        "ClusterNetworkPolicy"
    );
    let ovn = json(&cnp, &["--engine", "ovn-kubernetes"]);
    assert_eq!(verdict(&ovn, "web", IMDS)["tier"], "networkpolicy");
    // Cilium: only with --cilium-cnp.
    let cilium = json(&cnp, &["--engine", "cilium"]);
    assert!(finding_ids(&cilium).contains(&"not-enforced".to_string()));
    let cilium = json(&cnp, &["--engine", "cilium", "--cilium-cnp"]);
    assert!(!finding_ids(&cilium).contains(&"not-enforced".to_string()));
    assert_eq!(verdict(&cilium, "web", IMDS)["policy_allowed"], false);
}

#[test]
fn no_policy_engine_is_engine_none() {
    let a = json(CLUSTER, &["--no-policy-engine"]);
    let b = json(CLUSTER, &["--engine", "none"]);
    assert_eq!(a["engine"], "none");
    assert_eq!(a["workloads"], b["workloads"]);
    let v = verdict(&a, "web", IMDS);
    // What the policies say, and that nothing enforces them.
    assert_eq!(
        (v["policy_allowed"].as_bool(), v["reachable"].as_bool()),
        (Some(false), Some(true))
    );
    assert!(finding_ids(&a).contains(&"no-policy-engine".to_string()));
    let (code, _, err) = audit(CLUSTER, &["--no-policy-engine", "--engine", "calico"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn ties_unknown_peers_and_misnamed_baselines_are_reported() {
    let text = format!(
        "{CLUSTER}---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {{name: also-10}}\nspec:\n  priority: 10\n  subject: {{namespaces: {{}}}}\n  egress:\n  - {{action: Allow, to: [{{networks: [169.254.0.0/16]}}]}}\n---\napiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {{name: newer}}\nspec:\n  tier: Baseline\n  priority: 0\n  subject: {{namespaces: {{}}}}\n  egress:\n  - {{action: Deny, to: [{{someNewPeer: {{}}}}]}}\n---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {{name: strict}}\nspec:\n  subject: {{namespaces: {{}}}}\n  egress: [{{action: Deny, to: [{{networks: [0.0.0.0/0]}}]}}]\n"
    );
    let r = json(&text, &[]);
    let ids = finding_ids(&r);
    for id in ["priority-tie", "unknown-peer", "banp-not-default"] {
        assert!(ids.contains(&id.to_string()), "{id} in {ids:?}");
    }
    let tie = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "priority-tie")
        .unwrap();
    let m = tie["message"].as_str().unwrap();
    assert!(
        m.contains("AdminNetworkPolicy/also-10#egress[0] (Allow)")
            && m.contains("AdminNetworkPolicy/no-imds#egress[0] (Deny)"),
        "{m}"
    );
}

/// A Pass rule whose peer this reader does not know fails closed as a "Deny all" rule
/// (network-policy-api, apis/v1alpha2/clusternetworkpolicy_types.go: 'For "Deny" and
/// "Pass" rules, "fail closed" means: "treat the rule as a 'Deny all' rule"'; v1alpha1's
/// AdminNetworkPolicyEgressPeer says the same): it denies, it does not pass on to the
/// NetworkPolicy that would allow.
#[test]
fn a_pass_rule_with_an_unknown_peer_denies_all() {
    for (api, extra) in [
        ("v1alpha2\nkind: ClusterNetworkPolicy", "  tier: Admin\n"),
        ("v1alpha1\nkind: AdminNetworkPolicy", ""),
    ] {
        let text = format!(
            "{CLUSTER}---\napiVersion: policy.networking.k8s.io/{api}\nmetadata: {{name: newer}}\nspec:\n{extra}  priority: 3\n  subject: {{namespaces: {{}}}}\n  egress:\n  - {{action: Pass, to: [{{fancyPeer: {{}}}}]}}\n"
        );
        let r = json(&text, &[]);
        let v = verdict(&r, "agent", IMDS);
        assert_eq!(v["policy_allowed"], false, "{api}: {v}");
        assert_eq!(v["tier"], "admin");
        assert_eq!(v["object"]["name"], "newer");
        assert_eq!(v["rule"], "egress[0]");
        assert!(
            v["reason"]
                .as_str()
                .unwrap()
                .contains("fails closed as a 'Deny all' rule"),
            "{v}"
        );
        let f = r["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["id"] == "unknown-peer")
            .unwrap();
        assert!(
            f["message"]
                .as_str()
                .unwrap()
                .contains("denies all traffic"),
            "{f}"
        );
    }
}

/// A Deny rule that names its port beside a `networks` peer never matches the metadata
/// address (named ports resolve on destination pods only; the experimental CRD refuses
/// the rule: network-policy-api apis/v1alpha2/clusternetworkpolicy_types.go,
/// "networks/nodes/domainNames peer cannot be set with namedPorts"): the workload still
/// reaches IMDS, and a low `named-port-with-networks` finding names the policy and rule,
/// in JSON and SARIF.
#[test]
fn a_named_port_beside_networks_is_reported() {
    let text = format!(
        "{CLUSTER}---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: named}}\nspec:\n  tier: Admin\n  priority: 1\n  subject: {{pods: {{namespaceSelector: {{}}, podSelector: {{matchLabels: {{app: agent}}}}}}}}\n  egress:\n  - name: imds-by-name\n    action: Deny\n    to: [{{networks: [169.254.169.254/32]}}]\n    protocols: [{{destinationNamedPort: http}}]\n"
    );
    let r = json(&text, &[]);
    let f = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "named-port-with-networks")
        .expect("named-port-with-networks");
    assert_eq!(f["severity"], "low");
    let m = f["message"].as_str().unwrap();
    assert!(
        m.starts_with(
            "ClusterNetworkPolicy/named#egress[0] `imds-by-name` (Deny) names port `http`"
        ),
        "{m}"
    );
    assert_eq!(f["objects"][0]["name"], "named");
    // The rule does not decide IMDS for the agent: the NetworkPolicy below it does.
    let v = verdict(&r, "agent", IMDS);
    assert_ne!(v["object"]["name"], "named", "{v}");
    let (code, sarif, err) = audit(&text, &["--format", "sarif"]);
    assert!(code == 0 || code == 1, "{err}");
    assert!(sarif.contains("\"named-port-with-networks\""));
}

const CALICO_DENY: &str = "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: deny-imds}\nspec:\n  order: 1\n  selector: all()\n  egress: [{action: Deny, destination: {nets: [169.254.169.254/32]}}]\n";
const CILIUM_DENY: &str = "---\napiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: deny-imds}\nspec:\n  endpointSelector: {}\n  egressDeny: [{toCIDR: [169.254.169.254/32]}]\n";

fn messages<'a>(r: &'a Value, id: &str) -> Vec<&'a str> {
    r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == id)
        .map(|f| f["message"].as_str().unwrap())
        .collect()
}

/// Calico's kinds under another engine are reported not-enforced (only Calico implements
/// projectcalico.org policies), as Cilium's and the cluster-scoped kinds are.
#[test]
fn calico_kinds_under_another_engine_are_reported_not_enforced() {
    let text = format!("{CLUSTER}{CALICO_DENY}");
    let r = json(&text, &["--engine", "kube-network-policies"]);
    let m = messages(&r, "not-enforced");
    assert!(
        m.iter().any(|m| m.starts_with(
            "GlobalNetworkPolicy/deny-imds is not enforced by engine kube-network-policies: only Calico implements projectcalico.org policies"
        )),
        "{m:?}"
    );
    // Under Calico it decides.
    let r = json(&text, &["--engine", "calico"]);
    assert!(
        !messages(&r, "not-enforced")
            .iter()
            .any(|m| m.contains("GlobalNetworkPolicy"))
    );
    assert_eq!(verdict(&r, "agent", IMDS)["policy_allowed"], false);
}

/// Both Calico's and Cilium's kinds and no --engine: the audit picks Calico (always),
/// reports engine-ambiguous asking for --engine, and the Cilium policy not-enforced.
#[test]
fn calico_and_cilium_kinds_without_engine_are_ambiguous() {
    let text = format!("{CLUSTER}{CALICO_DENY}{CILIUM_DENY}");
    let r = json(&text, &[]);
    assert_eq!(
        (r["engine"].as_str(), r["engine_detected"].as_bool()),
        (Some("calico"), Some(true))
    );
    let m = messages(&r, "engine-ambiguous");
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(
        m[0].contains("rerun with --engine calico or --engine cilium"),
        "{}",
        m[0]
    );
    assert!(messages(&r, "not-enforced").iter().any(|m| {
        m.starts_with("CiliumClusterwideNetworkPolicy deny-imds is not enforced by engine calico")
    }));
    let r = json(&text, &["--engine", "cilium"]);
    assert!(messages(&r, "engine-ambiguous").is_empty());
}

/// A Cilium deny through a CiliumCIDRGroup the input does not hold: Cilium resolves the
/// missing group to no CIDR (the agent logs it, cilium/cilium#25020), so the deny denies
/// nothing: the workload reaches IMDS and unresolved-reference names policy and group.
#[test]
fn a_cilium_deny_through_a_missing_cidr_group_denies_nothing_and_is_reported() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: app}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: app}\nspec:\n  template:\n    metadata: {labels: {app: web}}\n---\napiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: deny-imds}\nspec:\n  endpointSelector: {}\n  enableDefaultDeny: {egress: false}\n  egressDeny:\n  - toCIDRSet: [{cidrGroupRef: imds}]\n";
    let r = json(
        text,
        &["--engine", "cilium", "--cilium-link-local", "world"],
    );
    assert_eq!(verdict(&r, "web", IMDS)["reachable"], true);
    let m = messages(&r, "unresolved-reference");
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(
        m[0].starts_with(
            "CiliumClusterwideNetworkPolicy deny-imds#egressDeny[0] cidrGroupRef `imds`"
        ) && m[0].contains("the deny denies nothing"),
        "{}",
        m[0]
    );
}

/// A Cilium `toFQDNs` naming metadata.google.internal (which resolves to
/// 169.254.169.254) allows IMDS, by matchName or matchPattern, as a ClusterNetworkPolicy
/// `domainNames` peer does.
#[test]
fn cilium_to_fqdns_naming_the_metadata_server_allows_it() {
    for sel in [
        "matchName: metadata.google.internal",
        "matchPattern: '*.google.internal'",
    ] {
        let text = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: app}}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: app}}\nspec:\n  template:\n    metadata: {{labels: {{app: web}}}}\n---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: fqdn, namespace: app}}\nspec:\n  endpointSelector: {{}}\n  egress:\n  - toFQDNs: [{{{sel}}}]\n"
        );
        let r = json(
            &text,
            &["--engine", "cilium", "--cilium-link-local", "world"],
        );
        let v = verdict(&r, "web", IMDS);
        assert_eq!(v["policy_allowed"], true, "{sel}: {v}");
        assert_eq!(v["tier"], "cilium");
        assert_eq!(v["object"]["name"], "fqdn");
        assert_eq!(v["rule"], "egress[0]");
        // WireServer is no metadata name: default-denied.
        assert_eq!(verdict(&r, "web", HOST_GA_PLUGIN)["policy_allowed"], false);
    }
}

/// `--engine none` and hostNetwork: nothing enforces the policies, so the verdict and
/// the finding name no policy as the decider of "reaches": tier `none` / `host-network`,
/// object and rule null; what the policies alone say stays in the reason.
#[test]
fn unenforced_verdicts_name_no_deciding_policy() {
    let r = json(CLUSTER, &["--engine", "none"]);
    for w in ["web", "agent"] {
        let v = verdict(&r, w, IMDS);
        assert_eq!(v["reachable"], true);
        assert_eq!(v["tier"], "none", "{v}");
        assert_eq!(v["object"], Value::Null);
        assert_eq!(v["rule"], Value::Null);
        assert!(
            v["reason"]
                .as_str()
                .unwrap()
                .starts_with("no policy engine enforces any policy (policy alone: "),
            "{v}"
        );
    }
    assert!(
        verdict(&r, "web", IMDS)["reason"]
            .as_str()
            .unwrap()
            .contains("policy alone: denied by AdminNetworkPolicy/no-imds#egress[0]")
    );
    for f in r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == "workload-reaches-target")
    {
        assert_eq!(
            f["decided_by"],
            serde_json::json!({"tier": "none", "object": null, "rule": null}),
            "{f}"
        );
    }
    let (_, table, _) = audit(CLUSTER, &["--engine", "none", "--color", "never"]);
    assert!(
        table
            .contains("no policy engine (would be denied by AdminNetworkPolicy/no-imds#egress[0])"),
        "{table}"
    );
    // hostNetwork.
    let host = CLUSTER.replace(
        "    metadata: {labels: {app: web}}\n",
        "    metadata: {labels: {app: web}}\n    spec: {hostNetwork: true}\n",
    );
    let r = json(&host, &[]);
    let v = verdict(&r, "web", IMDS);
    assert_eq!(
        (v["policy_allowed"].as_bool(), v["reachable"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(v["tier"], "host-network");
    assert_eq!(
        (v["object"].clone(), v["rule"].clone()),
        (Value::Null, Value::Null)
    );
    assert!(
        v["reason"].as_str().unwrap().starts_with("hostNetwork: "),
        "{v}"
    );
    let f = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| {
            f["id"] == "workload-reaches-target"
                && f["message"].as_str().unwrap().starts_with("app/web")
        })
        .unwrap();
    assert_eq!(f["decided_by"]["tier"], "host-network");
    assert_eq!(f["decided_by"]["object"], Value::Null);
}

/// Under --engine cilium --cilium-cnp, a ClusterNetworkPolicy `networks` peer becomes a
/// CIDR selector, which never selects an address Cilium gives the `host` identity: it
/// follows --cilium-link-local like Cilium's own CIDR rules (default either: reachable if
/// either classification reaches).
#[test]
fn cnp_networks_under_cilium_follow_the_link_local_classification() {
    // Without the isolating NetworkPolicy: only the CNP can deny.
    let cnp = CLUSTER
        .split("---\napiVersion: networking.k8s.io/v1\n")
        .next()
        .unwrap()
        .replace(
            "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy",
            "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy",
        )
        .replace("  priority: 10\n", "  tier: Admin\n  priority: 10\n");
    let run = |ll: &str| {
        json(
            &cnp,
            &[
                "--engine",
                "cilium",
                "--cilium-cnp",
                "--cilium-link-local",
                ll,
            ],
        )
    };
    let v = verdict(&run("world"), "web", IMDS).clone();
    assert_eq!(
        (v["policy_allowed"].as_bool(), v["tier"].as_str()),
        (Some(false), Some("admin")),
        "{v}"
    );
    let v = verdict(&run("host"), "web", IMDS).clone();
    assert_eq!(v["policy_allowed"], true, "{v}");
    let r = json(&cnp, &["--engine", "cilium", "--cilium-cnp"]);
    let v = verdict(&r, "web", IMDS);
    assert_eq!(v["policy_allowed"], true, "{v}");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("as `world` it is denied: denied by ClusterNetworkPolicy/no-imds#egress[0]"),
        "{v}"
    );
}

/// `protocols: [{tcp: {}}]` is refused by the CRD (MinProperties=1): an input error naming
/// the field, the object left out.
#[test]
fn an_empty_cnp_protocol_is_an_input_error_naming_the_field() {
    let text = format!(
        "{CLUSTER}---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: empty-tcp}}\nspec:\n  tier: Admin\n  priority: 1\n  subject: {{namespaces: {{}}}}\n  egress:\n  - action: Deny\n    to: [{{networks: [0.0.0.0/0]}}]\n    protocols: [{{tcp: {{}}}}]\n"
    );
    let (_, _, err) = audit(&text, &["--format", "json"]);
    assert!(
        err.contains("ClusterNetworkPolicy empty-tcp: spec.egress[0].protocols[0].tcp is empty"),
        "{err}"
    );
}
