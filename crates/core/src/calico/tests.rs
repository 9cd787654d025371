//! The Calico test table. Every case names the documentation (or, where the docs say
//! nothing, the Calico source) it checks, with a short quote:
//!
//! - GNP: <https://docs.tigera.io/calico/latest/reference/resources/globalnetworkpolicy>
//! - NP: <https://docs.tigera.io/calico/latest/reference/resources/networkpolicy>
//! - TIER: <https://docs.tigera.io/calico/latest/reference/resources/tier>
//! - Sources under <https://github.com/projectcalico/calico/blob/master/>.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::*;
use crate::model::{Labels, Source};
use crate::target::{IMDS, Protocol, Target, WIRESERVER};

fn src() -> Source {
    Source {
        file: Arc::from("test.yaml"),
        line: 1,
    }
}

fn object(yaml: &str) -> Result<CalicoObject, CalicoError> {
    let v: serde_json::Value = serde_norway::from_str(yaml).expect("test YAML");
    parse(&v, src())
}

fn policy(yaml: &str) -> CalicoPolicy {
    match object(yaml).unwrap_or_else(|e| panic!("{e}")) {
        CalicoObject::Policy(p) => *p,
        other => panic!("not a policy: {other:?}"),
    }
}

fn err(yaml: &str) -> String {
    object(yaml).expect_err(yaml).to_string()
}

fn cluster(docs: &[&str]) -> CalicoPolicies {
    let objects = docs
        .iter()
        .map(|d| object(d).unwrap_or_else(|e| panic!("{e}")));
    let mut ns = BTreeMap::new();
    ns.insert(
        "apps".to_string(),
        labels(&[("team", "a"), ("kubernetes.io/metadata.name", "apps")]),
    );
    ns.insert(
        "other".to_string(),
        labels(&[("team", "b"), ("kubernetes.io/metadata.name", "other")]),
    );
    CalicoPolicies::from_objects(objects, ns)
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

struct Pod {
    namespace: &'static str,
    labels: Labels,
    ns_labels: Labels,
    sa: Option<&'static str>,
    ips: Vec<IpAddr>,
    ports: Vec<NamedPort>,
}

fn pod(namespace: &'static str, pairs: &[(&str, &str)]) -> Pod {
    let team = if namespace == "apps" { "a" } else { "b" };
    Pod {
        namespace,
        labels: labels(pairs),
        ns_labels: labels(&[("team", team), ("kubernetes.io/metadata.name", namespace)]),
        sa: Some("default"),
        ips: vec!["10.244.1.5".parse().unwrap()],
        ports: vec![],
    }
}

impl Pod {
    fn endpoint(&self) -> CalicoEndpoint<'_> {
        CalicoEndpoint {
            namespace: self.namespace,
            labels: &self.labels,
            namespace_labels: &self.ns_labels,
            service_account: self.sa,
            ips: &self.ips,
            named_ports: &self.ports,
        }
    }
}

fn to(p: &CalicoPolicies, from: &Pod, target: &Target) -> CalicoDecision {
    decide(p, &from.endpoint(), &CalicoDest::external(target))
}

fn addr(s: &str) -> Target {
    s.parse().unwrap()
}

fn web() -> Pod {
    pod("apps", &[("app", "web")])
}

const ALLOW_ALL: &str = "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: allow-all}
spec:
  order: 5000
  selector: all()
  egress: [{action: Allow}]
";

fn deny_imds(order: f64) -> String {
    format!(
        "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: deny-imds}}
spec:
  order: {order}
  selector: all()
  egress:
  - action: Deny
    destination: {{nets: [169.254.169.254/32]}}
  - action: Allow
"
    )
}

fn assert_decision(
    d: &CalicoDecision,
    verdict: CalicoVerdict,
    tier: Option<&str>,
    policy: Option<&str>,
    rule: Option<&str>,
) {
    assert_eq!(d.verdict, verdict, "{}", d.reason());
    assert_eq!(d.tier.as_deref(), tier, "{}", d.reason());
    assert_eq!(
        d.policy.as_ref().map(|p| p.name.as_str()),
        policy,
        "{}",
        d.reason()
    );
    assert_eq!(d.rule.as_deref(), rule, "{}", d.reason());
}

#[test]
fn policy_order_lowest_first() {
    // GNP, spec.order: "Controls the order of precedence. Calico applies the policy with
    // the lowest value first."
    let p = cluster(&[ALLOW_ALL, &deny_imds(100.0)]);
    let d = to(&p, &web(), &IMDS);
    assert_decision(
        &d,
        CalicoVerdict::Deny,
        Some("default"),
        Some("deny-imds"),
        Some("egress[0]"),
    );
    assert!(!d.allowed());
    assert_eq!(
        d.reason(),
        "denied by GlobalNetworkPolicy deny-imds#egress[0] in Calico tier default"
    );
    let p = cluster(&[ALLOW_ALL, &deny_imds(9000.0)]);
    assert_decision(
        &to(&p, &web(), &IMDS),
        CalicoVerdict::Allow,
        Some("default"),
        Some("allow-all"),
        Some("egress[0]"),
    );
    // A policy's other rules still apply in order: its catch-all Allow after the Deny.
    let p = cluster(&[&deny_imds(100.0)]);
    assert_decision(
        &to(&p, &web(), &WIRESERVER),
        CalicoVerdict::Allow,
        Some("default"),
        Some("deny-imds"),
        Some("egress[1]"),
    );
}

#[test]
fn unset_order_sorts_last_and_ties_break_by_name() {
    // felix/calc/policy_sorter.go PolKVLess: "nil order maps to infinity"; equal orders
    // "use name as tie-break".
    let no_order = "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: a-allow}
spec:
  egress: [{action: Allow}]
";
    let p = cluster(&[no_order, &deny_imds(1e9)]);
    assert_decision(
        &to(&p, &web(), &IMDS),
        CalicoVerdict::Deny,
        Some("default"),
        Some("deny-imds"),
        Some("egress[0]"),
    );
    let tie = "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: aaa}
spec:
  order: 100
  egress: [{action: Allow}]
";
    // `default.aaa` sorts before `default.deny-imds`.
    let p = cluster(&[tie, &deny_imds(100.0)]);
    assert_decision(
        &to(&p, &web(), &IMDS),
        CalicoVerdict::Allow,
        Some("default"),
        Some("aaa"),
        Some("egress[0]"),
    );
}

const SECURITY_TIER: &str = "
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100}
";

#[test]
fn tiers_by_ascending_order() {
    // TIER: "Tiers are sorted by their order - smallest number first." and "If a
    // NetworkPolicy or GlobalNetworkPolicy in the Tier Allows or Denies the packet, then
    // evaluation is done".
    let deny = "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.deny-imds}
spec:
  tier: security
  order: 9999
  egress:
  - action: Deny
    destination: {nets: [169.254.169.254/32]}
  - action: Pass
";
    let allow_first = "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: allow-imds}
spec:
  order: 1
  egress:
  - action: Allow
    destination: {nets: [169.254.169.254/32]}
";
    let p = cluster(&[SECURITY_TIER, deny, allow_first]);
    assert_decision(
        &to(&p, &web(), &IMDS),
        CalicoVerdict::Deny,
        Some("security"),
        Some("security.deny-imds"),
        Some("egress[0]"),
    );
    // The security tier passes everything else to the default tier, where allow-imds
    // selects the pod and allows only IMDS: WireServer is dropped there.
    let d = to(&p, &web(), &WIRESERVER);
    assert_decision(&d, CalicoVerdict::EndOfTier, Some("default"), None, None);
    // A tier ordered after default (1,000,000) comes too late.
    let late = SECURITY_TIER.replace("order: 100", "order: 2000000");
    let p = cluster(&[&late, deny, allow_first]);
    assert_decision(
        &to(&p, &web(), &IMDS),
        CalicoVerdict::Allow,
        Some("default"),
        Some("allow-imds"),
        Some("egress[0]"),
    );
    // TIER, spec.order: "No value indicates highest order (lowest precedence)".
    let unordered = SECURITY_TIER.replace("spec: {order: 100}", "spec: {}");
    let p = cluster(&[&unordered, deny, allow_first]);
    assert_decision(
        &to(&p, &web(), &IMDS),
        CalicoVerdict::Allow,
        Some("default"),
        Some("allow-imds"),
        Some("egress[0]"),
    );
}

#[test]
fn pass_goes_to_the_next_tier_that_applies() {
    // TIER: "If a NetworkPolicy or GlobalNetworkPolicy in the Tier Passes the packet, the
    // next Tier containing a Policy that applies to the endpoint processes the packet."
    let pass = "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.pass-apps}
spec:
  tier: security
  order: 1
  namespaceSelector: team == 'a'
  egress: [{action: Pass}]
";
    let deny_later_in_security = "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.deny-all}
spec:
  tier: security
  order: 2
  egress: [{action: Deny}]
";
    let p = cluster(&[
        SECURITY_TIER,
        pass,
        deny_later_in_security,
        &deny_imds(10.0),
    ]);
    // apps (team a): passed over security.deny-all, decided in the default tier.
    assert_decision(
        &to(&p, &web(), &IMDS),
        CalicoVerdict::Deny,
        Some("default"),
        Some("deny-imds"),
        Some("egress[0]"),
    );
    assert_decision(
        &to(&p, &web(), &WIRESERVER),
        CalicoVerdict::Allow,
        Some("default"),
        Some("deny-imds"),
        Some("egress[1]"),
    );
    // other (team b): not passed, denied in security.
    let other = pod("other", &[("app", "web")]);
    assert_decision(
        &to(&p, &other, &WIRESERVER),
        CalicoVerdict::Deny,
        Some("security"),
        Some("security.deny-all"),
        Some("egress[0]"),
    );
    // TIER: "If the last Tier applying to the endpoint Passes the packet, that
    // endpoint's Profiles are evaluated." Kubernetes namespace profiles allow all egress
    // (libcalico-go/lib/backend/k8s/conversion/conversion.go NamespaceToProfile:
    // "default ingress and egress rules, which are both 'allow'").
    let p = cluster(&[SECURITY_TIER, pass]);
    let d = to(&p, &web(), &IMDS);
    assert_decision(
        &d,
        CalicoVerdict::Passed,
        Some("security"),
        Some("security.pass-apps"),
        Some("egress[0]"),
    );
    assert!(d.allowed());
    assert!(
        d.reason()
            .contains("passed by GlobalNetworkPolicy security.pass-apps#egress[0]"),
        "{}",
        d.reason()
    );
}

#[test]
fn end_of_tier_drop_and_default_action_pass() {
    // TIER: "If the Tier applies to the endpoint, but takes no action on the packet the
    // packet is dropped."
    let only_cluster = "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.cluster-only}
spec:
  tier: security
  selector: app == 'web'
  egress:
  - action: Allow
    destination: {nets: [10.0.0.0/8]}
";
    let p = cluster(&[SECURITY_TIER, only_cluster, ALLOW_ALL]);
    let d = to(&p, &web(), &IMDS);
    assert_decision(&d, CalicoVerdict::EndOfTier, Some("security"), None, None);
    assert_eq!(d.selecting.len(), 1);
    assert_eq!(
        d.reason(),
        "denied at the end of Calico tier security: GlobalNetworkPolicy security.cluster-only selects the pod for egress and no rule allows or passes it"
    );
    assert!(to(&p, &web(), &addr("10.1.2.3:443")).allowed());
    // A pod the tier's policies do not select skips the tier ("each tier that contains a
    // policy that applies to the endpoint processes the packet").
    let db = pod("apps", &[("app", "db")]);
    assert_decision(
        &to(&p, &db, &IMDS),
        CalicoVerdict::Allow,
        Some("default"),
        Some("allow-all"),
        Some("egress[0]"),
    );
    // TIER: "This behaviour can be changed by setting the defaultAction of a tier to Pass."
    let passing = "
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100, defaultAction: Pass}
";
    let p = cluster(&[passing, only_cluster, ALLOW_ALL]);
    assert_decision(
        &to(&p, &web(), &IMDS),
        CalicoVerdict::Allow,
        Some("default"),
        Some("allow-all"),
        Some("egress[0]"),
    );
    // Without a later policy, the default tier does not apply: passed to the profile.
    let p = cluster(&[passing, only_cluster]);
    assert_decision(
        &to(&p, &web(), &IMDS),
        CalicoVerdict::Passed,
        Some("security"),
        None,
        None,
    );
    // The default tier drops too (its defaultAction is Deny, tier.go: "The 'default'
    // tier must have default action 'Deny'").
    let p = cluster(&[&only_cluster
        .replace("tier: security", "tier: default")
        .replace("security.cluster-only", "cluster-only")]);
    assert_decision(
        &to(&p, &web(), &IMDS),
        CalicoVerdict::EndOfTier,
        Some("default"),
        None,
        None,
    );
}

#[test]
fn built_in_kube_tiers_pass_by_default() {
    // api/pkg/apis/projectcalico/v3/tier.go: "The 'kube-admin' tier must have default
    // action 'Pass'", "kube-admin tier order must be 1000", "kube-baseline tier order
    // must be 10000000".
    let admin = "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: kube-admin.allow-dns}
spec:
  tier: kube-admin
  egress:
  - action: Allow
    protocol: UDP
    destination: {ports: [53]}
";
    let baseline = "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: kube-baseline.deny-all}
spec:
  tier: kube-baseline
  egress: [{action: Deny}]
";
    let p = cluster(&[admin, baseline, &deny_imds(10.0)]);
    // kube-admin has no verdict for IMDS: passes to default, which denies.
    assert_decision(
        &to(&p, &web(), &IMDS),
        CalicoVerdict::Deny,
        Some("default"),
        Some("deny-imds"),
        Some("egress[0]"),
    );
    let p = cluster(&[admin, baseline]);
    assert_decision(
        &to(&p, &web(), &IMDS),
        CalicoVerdict::Deny,
        Some("kube-baseline"),
        Some("kube-baseline.deny-all"),
        Some("egress[0]"),
    );
    assert_decision(
        &to(&p, &web(), &addr("10.0.0.10:53/UDP")),
        CalicoVerdict::Allow,
        Some("kube-admin"),
        Some("kube-admin.allow-dns"),
        Some("egress[0]"),
    );
    let tiers: Vec<(String, bool)> = p
        .tiers()
        .map(|(t, declared, _)| (t.name.clone(), declared))
        .collect();
    assert_eq!(
        tiers,
        [
            ("kube-admin".to_string(), true),
            ("default".into(), true),
            ("kube-baseline".into(), true)
        ]
    );
}

#[test]
fn types_default_from_the_rules_present() {
    // GNP: "If types has no value, Calico defaults as follows": egress rules only ->
    // Egress; ingress rules only -> Ingress; no rules -> Ingress; both -> Ingress, Egress.
    let egress_only = policy(
        "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: e}
spec:
  egress: [{action: Deny}]
",
    );
    assert!(egress_only.egress_type && !egress_only.ingress_type && !egress_only.types_written);
    let ingress_only = policy(
        "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: i}
spec:
  ingress: [{action: Deny}]
",
    );
    assert!(!ingress_only.egress_type && ingress_only.ingress_type);
    let none = policy(
        "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: n}
spec: {selector: all()}
",
    );
    assert!(!none.egress_type && none.ingress_type);
    let both = policy(
        "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: b}
spec:
  ingress: [{action: Allow}]
  egress: [{action: Allow}]
",
    );
    assert!(both.egress_type && both.ingress_type);
    // A policy that does not govern egress does not make its tier apply to egress
    // (felix/rules/endpoints.go renders a tier only when it has egress policies for the
    // endpoint): the ingress-only and rule-less policies leave IMDS open.
    let docs = [
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: i}\nspec:\n  ingress: [{action: Deny}]\n",
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: n}\nspec: {selector: all()}\n",
    ];
    let p = cluster(&docs);
    assert_decision(
        &to(&p, &web(), &IMDS),
        CalicoVerdict::NotSelected,
        None,
        None,
        None,
    );
    assert!(to(&p, &web(), &IMDS).allowed());
    // `types: [Egress]` with no rules: the pod is selected and nothing allows: default
    // deny.
    let p = cluster(&[
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: d}\nspec:\n  types: [Egress]\n",
    ]);
    assert_decision(
        &to(&p, &web(), &IMDS),
        CalicoVerdict::EndOfTier,
        Some("default"),
        None,
        None,
    );
    // Written types win: egress rules of an Ingress-only policy are ignored.
    let ingress_typed = policy(
        "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: t}
spec:
  types: [Ingress]
  egress: [{action: Deny}]
",
    );
    assert!(!ingress_typed.egress_type && ingress_typed.types_written);
    assert!(
        ingress_typed.warnings[0].contains("lacks Egress"),
        "{:?}",
        ingress_typed.warnings
    );
}

#[test]
fn not_nets_and_nets() {
    // GNP EntityRule: "nets: Match packets with IP in any of the listed CIDRs." and
    // "notNets: Negative match on CIDRs. Match packets with IP not in any of the listed
    // CIDRs."
    let p = cluster(&["
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: no-link-local}
spec:
  egress:
  - action: Allow
    destination:
      nets: [0.0.0.0/0]
      notNets: [169.254.0.0/16, 168.63.129.16/32]
"]);
    assert_decision(
        &to(&p, &web(), &IMDS),
        CalicoVerdict::EndOfTier,
        Some("default"),
        None,
        None,
    );
    assert_decision(
        &to(&p, &web(), &WIRESERVER),
        CalicoVerdict::EndOfTier,
        Some("default"),
        None,
        None,
    );
    assert_decision(
        &to(&p, &web(), &addr("8.8.8.8:443")),
        CalicoVerdict::Allow,
        Some("default"),
        Some("no-link-local"),
        Some("egress[0]"),
    );
    // An IPv4 rule never matches an IPv6 address.
    assert_decision(
        &to(&p, &web(), &addr("[fd00:ec2::254]:80")),
        CalicoVerdict::EndOfTier,
        Some("default"),
        None,
        None,
    );
}

#[test]
fn not_ports_ranges_and_named_ports() {
    // GNP EntityRule: "ports: Positive match on the specified ports", "notPorts: Negative
    // match on the specified ports"; Ports: "start:end All (numeric) ports within the
    // range start ≤ x ≤ end".
    let p = cluster(&["
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: ports}
spec:
  egress:
  - action: Allow
    protocol: TCP
    destination:
      ports: ['1:1024', 8080]
      notPorts: [80]
"]);
    assert_decision(
        &to(&p, &web(), &IMDS),
        CalicoVerdict::EndOfTier,
        Some("default"),
        None,
        None,
    );
    assert!(to(&p, &web(), &addr("1.2.3.4:443")).allowed());
    assert!(to(&p, &web(), &addr("1.2.3.4:8080")).allowed());
    assert!(!to(&p, &web(), &addr("1.2.3.4:1025")).allowed());
    // The rule's protocol is TCP: UDP to the same port does not match.
    assert!(!to(&p, &web(), &addr("1.2.3.4:443/UDP")).allowed());
    // Ports: "named-port A named port, as defined in the ports list of one or more
    // endpoints": an address outside the cluster has no named ports.
    let named = cluster(&["
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: named}
spec:
  egress:
  - action: Allow
    protocol: TCP
    destination: {ports: [http]}
"]);
    assert_decision(
        &to(&named, &web(), &IMDS),
        CalicoVerdict::EndOfTier,
        Some("default"),
        None,
        None,
    );
    // ... but a pod declaring `http` on 80/TCP is reached on it.
    let mut server = pod("other", &[("app", "server")]);
    server.ports = vec![NamedPort {
        name: "http".into(),
        protocol: Protocol::Tcp,
        port: 80,
    }];
    let client = web();
    let dst = CalicoDest {
        ip: Some("10.244.2.7".parse().unwrap()),
        port: 80,
        protocol: Protocol::Tcp,
        endpoint: DestEndpoint::Workload(server.endpoint()),
    };
    let d = decide(&named, &client.endpoint(), &dst);
    assert_decision(
        &d,
        CalicoVerdict::Allow,
        Some("default"),
        Some("named"),
        Some("egress[0]"),
    );
    let dst81 = CalicoDest { port: 81, ..dst };
    assert!(!decide(&named, &client.endpoint(), &dst81).allowed());
}

#[test]
fn nets_match_pod_addresses_too() {
    // GNP EntityRule: "Source/destination IP address, protocol and port" are matched on
    // the packet: a pod's address inside `nets` matches, whatever the pod.
    let p = cluster(&["
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-pods}
spec:
  egress:
  - action: Deny
    destination: {nets: [10.244.0.0/16]}
  - action: Allow
"]);
    let server = pod("other", &[("app", "server")]);
    let dst = CalicoDest {
        ip: Some("10.244.2.7".parse().unwrap()),
        port: 80,
        protocol: Protocol::Tcp,
        endpoint: DestEndpoint::Workload(server.endpoint()),
    };
    let d = decide(&p, &web().endpoint(), &dst);
    assert_decision(
        &d,
        CalicoVerdict::Deny,
        Some("default"),
        Some("deny-pods"),
        Some("egress[0]"),
    );
}

#[test]
fn selectors_match_endpoints_and_network_sets_never_bare_addresses() {
    // GNP EntityRule: "Selectors can match workload endpoints, host endpoints and
    // (namespaced or global) network sets." and "selectors only match (known) resources,
    // but rules match packets".
    let deny_by_label = "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-metadata}
spec:
  order: 10
  egress:
  - action: Deny
    destination: {selector: role == 'metadata'}
  - action: Allow
";
    let p = cluster(&[deny_by_label]);
    assert_decision(
        &to(&p, &web(), &IMDS),
        CalicoVerdict::Allow,
        Some("default"),
        Some("deny-metadata"),
        Some("egress[1]"),
    );
    let set = "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkSet
metadata:
  name: metadata
  labels: {role: metadata}
spec:
  nets: [169.254.169.254/32, 168.63.129.16/32]
";
    let p = cluster(&[deny_by_label, set]);
    assert_decision(
        &to(&p, &web(), &IMDS),
        CalicoVerdict::Deny,
        Some("default"),
        Some("deny-metadata"),
        Some("egress[0]"),
    );
    assert_decision(
        &to(&p, &web(), &WIRESERVER),
        CalicoVerdict::Deny,
        Some("default"),
        Some("deny-metadata"),
        Some("egress[0]"),
    );
    // A namespaced NetworkPolicy's selector ranges over its own namespace: a
    // GlobalNetworkSet is out of scope unless namespaceSelector is global()
    // (selector scopes: "The global() operator can be used (only) in a namespaceSelector
    // to change the scope of the main selector to include non-namespaced resources such
    // as GlobalNetworkSet").
    let np = "
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: deny-metadata, namespace: apps}
spec:
  order: 10
  egress:
  - action: Deny
    destination: {selector: role == 'metadata'}
  - action: Allow
";
    let p = cluster(&[np, set]);
    assert_decision(
        &to(&p, &web(), &IMDS),
        CalicoVerdict::Allow,
        Some("default"),
        Some("deny-metadata"),
        Some("egress[1]"),
    );
    let np_global = np.replace(
        "destination: {selector: role == 'metadata'}",
        "destination: {selector: role == 'metadata', namespaceSelector: global()}",
    );
    let p = cluster(&[&np_global, set]);
    assert_decision(
        &to(&p, &web(), &IMDS),
        CalicoVerdict::Deny,
        Some("default"),
        Some("deny-metadata"),
        Some("egress[0]"),
    );
    // A NetworkSet in the policy's namespace is in scope.
    let ns_set = "
apiVersion: projectcalico.org/v3
kind: NetworkSet
metadata:
  name: metadata
  namespace: apps
  labels: {role: metadata}
spec:
  nets: [169.254.169.254/32]
";
    let p = cluster(&[np, ns_set]);
    assert_decision(
        &to(&p, &web(), &IMDS),
        CalicoVerdict::Deny,
        Some("default"),
        Some("deny-metadata"),
        Some("egress[0]"),
    );
    // ... and a namespaceSelector on its namespace's labels selects it from elsewhere.
    let gnp_ns = deny_by_label.replace(
        "destination: {selector: role == 'metadata'}",
        "destination: {selector: role == 'metadata', namespaceSelector: team == 'a'}",
    );
    let p = cluster(&[&gnp_ns, ns_set]);
    assert_decision(
        &to(&p, &web(), &IMDS),
        CalicoVerdict::Deny,
        Some("default"),
        Some("deny-metadata"),
        Some("egress[0]"),
    );
    let gnp_other = gnp_ns.replace("team == 'a'", "team == 'b'");
    let p = cluster(&[&gnp_other, ns_set]);
    assert!(to(&p, &web(), &IMDS).allowed());
}

#[test]
fn not_selector_matches_outside_the_cluster() {
    // GNP EntityRule: "notSelector: has(foo) matches packets from/to anywhere (including
    // outside the cluster), except traffic from/to endpoints and network sets that have
    // the label foo."
    let p = cluster(&["
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: not-foo}
spec:
  egress:
  - action: Allow
    destination: {notSelector: has(foo)}
"]);
    assert_decision(
        &to(&p, &web(), &IMDS),
        CalicoVerdict::Allow,
        Some("default"),
        Some("not-foo"),
        Some("egress[0]"),
    );
    // "selector: !has(foo) matches packets from/to endpoints and network sets that do not
    // have the label foo": not a bare address.
    let p = cluster(&["
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: sel-not-foo}
spec:
  egress:
  - action: Allow
    destination: {selector: '!has(foo)'}
"]);
    assert_decision(
        &to(&p, &web(), &IMDS),
        CalicoVerdict::EndOfTier,
        Some("default"),
        None,
        None,
    );
    // In a namespaced NetworkPolicy the destination is scoped to its namespace as soon as
    // a selector field is used, notSelector included (updateprocessors/rules.go
    // getEndpointSelector): an outside address does not match.
    let p = cluster(&["
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: not-foo, namespace: apps}
spec:
  egress:
  - action: Allow
    destination: {notSelector: has(foo)}
"]);
    assert_decision(
        &to(&p, &web(), &IMDS),
        CalicoVerdict::EndOfTier,
        Some("default"),
        None,
        None,
    );
}

#[test]
fn policy_selectors_all_operators() {
    // NP/GNP "Selectors" table, each operator as a policy selector choosing the pods.
    let deny_for = |sel: &str| {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: sel}}\nspec:\n  selector: \"{sel}\"\n  egress: [{{action: Deny}}]\n"
        )
    };
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);
    let cases: &[Case] = &[
        ("app == 'web'", &[("app", "web")], true),
        ("app == 'web'", &[("app", "db")], false),
        // "k != 'v' Matches resources without label 'k' or with label 'k' and value not
        // equal to v"
        ("app != 'trusted'", &[], true),
        ("app != 'trusted'", &[("app", "trusted")], false),
        ("has(app)", &[("app", "x")], true),
        ("!has(app)", &[("app", "x")], false),
        ("app in {'a', 'b'}", &[("app", "b")], true),
        ("app not in {'a', 'b'}", &[], true),
        ("app not in {'a', 'b'}", &[("app", "a")], false),
        ("app contains 'eb'", &[("app", "web")], true),
        ("app starts with 'w'", &[("app", "web")], true),
        ("app ends with 'w'", &[("app", "web")], false),
        ("all()", &[], true),
        ("!all()", &[], false),
        (
            "app == 'web' && tier == 'fe' || has(admin)",
            &[("admin", "")],
            true,
        ),
        (
            "app == 'web' && (tier == 'fe' || has(admin))",
            &[("admin", "")],
            false,
        ),
    ];
    for (sel, pod_labels, selected) in cases {
        let p = cluster(&[&deny_for(sel)]);
        let d = to(&p, &pod("apps", pod_labels), &IMDS);
        assert_eq!(
            d.verdict == CalicoVerdict::Deny,
            *selected,
            "{sel} on {pod_labels:?}: {}",
            d.reason()
        );
    }
}

#[test]
fn namespace_and_service_account_selection() {
    // GNP: "Select a namespace in a GlobalNetworkPolicy in the standard selector by using
    // projectcalico.org/namespace as the label name"; "namespaceSelector: Selects the
    // namespace(s) to which this policy applies. Select a specific namespace by name
    // using the projectcalico.org/name label."; "serviceAccountSelector ... Select all
    // service accounts in the cluster with a specific name using the
    // projectcalico.org/name label."
    let with = |field: &str, sel: &str| {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: p}}\nspec:\n  {field}: \"{sel}\"\n  egress: [{{action: Deny}}]\n"
        )
    };
    let selected =
        |doc: &str, p: &Pod| to(&cluster(&[doc]), p, &IMDS).verdict == CalicoVerdict::Deny;
    let apps = web();
    let other = pod("other", &[("app", "web")]);
    let s = with("selector", "projectcalico.org/namespace == 'apps'");
    assert!(selected(&s, &apps) && !selected(&s, &other));
    let s = with("namespaceSelector", "projectcalico.org/name == 'other'");
    assert!(!selected(&s, &apps) && selected(&s, &other));
    let s = with("namespaceSelector", "team == 'a'");
    assert!(selected(&s, &apps) && !selected(&s, &other));
    let s = with("namespaceSelector", "kubernetes.io/metadata.name == 'apps'");
    assert!(selected(&s, &apps));
    // Namespace labels are inherited as pcns.<key> (conversion.go NamespaceToProfile).
    let s = with("selector", "pcns.team == 'b'");
    assert!(!selected(&s, &apps) && selected(&s, &other));
    let s = with(
        "serviceAccountSelector",
        "projectcalico.org/name == 'default'",
    );
    assert!(selected(&s, &apps));
    let s = with(
        "serviceAccountSelector",
        "projectcalico.org/name == 'builder'",
    );
    assert!(!selected(&s, &apps));
    let s = with("selector", "projectcalico.org/serviceaccount == 'default'");
    assert!(selected(&s, &apps));
    // NP: "NetworkPolicy in a specific namespace only applies to workload endpoint
    // resources in that namespace."
    let np = "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: apps}\nspec:\n  egress: [{action: Deny}]\n";
    assert!(selected(np, &apps) && !selected(np, &other));
    // NP metadata.namespace: Default "default".
    let p = policy("apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p}\n");
    assert_eq!(p.namespace.as_deref(), Some("default"));
}

#[test]
fn log_continues_with_the_next_rule() {
    // Rule: "After a Log action, processing continues with the next rule; Allow and Deny
    // are immediate and final and no further rules are processed."
    let p = cluster(&["
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: log-then-allow}
spec:
  egress:
  - action: Log
  - action: Allow
    destination: {nets: [169.254.169.254/32]}
"]);
    assert_decision(
        &to(&p, &web(), &IMDS),
        CalicoVerdict::Allow,
        Some("default"),
        Some("log-then-allow"),
        Some("egress[1]"),
    );
    assert_decision(
        &to(&p, &web(), &WIRESERVER),
        CalicoVerdict::EndOfTier,
        Some("default"),
        None,
        None,
    );
}

#[test]
fn protocols_and_ip_versions() {
    // Rule: "protocol: Positive protocol match. TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite,
    // 1-255"; "notProtocol: Negative protocol match."; "ipVersion: Positive IP version
    // match."
    let rule = |body: &str| {
        cluster(&[&format!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: r}}\nspec:\n  egress:\n  - action: Allow\n{body}"
        )])
    };
    assert!(to(&rule("    protocol: 6\n"), &web(), &IMDS).allowed());
    assert!(to(&rule("    protocol: tcp\n"), &web(), &IMDS).allowed());
    assert!(!to(&rule("    protocol: UDP\n"), &web(), &IMDS).allowed());
    assert!(to(&rule("    notProtocol: UDP\n"), &web(), &IMDS).allowed());
    assert!(!to(&rule("    notProtocol: 6\n"), &web(), &IMDS).allowed());
    assert!(!to(&rule("    ipVersion: 6\n"), &web(), &IMDS).allowed());
    assert!(to(&rule("    ipVersion: 4\n"), &web(), &IMDS).allowed());
    // An ICMP match only matches ICMP packets.
    assert!(
        !to(
            &rule("    protocol: ICMP\n    icmp: {type: 8}\n"),
            &web(),
            &IMDS
        )
        .allowed()
    );
}

#[test]
fn kubernetes_network_policies_join_the_default_tier_at_order_1000() {
    // conversion.go K8sNetworkPolicyToCalico: "We insert all the NetworkPolicy Policies at
    // order 1000.0"; names.go: K8sNetworkPolicyNamePrefix = "knp.default."; TIER: "All
    // Policies created by Calico orchestrator integrations are created in the default
    // (last) Tier."; "Policies in each Tier are then processed in order."
    let knp = crate::manifest::parse(
        "k8s.yaml",
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: cluster-only, namespace: apps}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 0.0.0.0/0, except: [169.254.169.254/32]}
  - ports: [{port: 53, protocol: UDP}]
",
    );
    let np = knp
        .objects
        .iter()
        .find_map(|o| match o {
            crate::model::Object::NetworkPolicy(np) => Some(np.clone()),
            _ => None,
        })
        .expect("a NetworkPolicy");
    let converted = CalicoPolicy::from_kubernetes(&np);
    assert_eq!(converted.backend_name(), "knp.default.cluster-only");
    assert_eq!(
        (converted.tier.as_str(), converted.order),
        ("default", Some(1000.0))
    );
    let build = |extra: Vec<CalicoPolicy>| {
        let mut all = vec![converted.clone()];
        all.extend(extra);
        CalicoPolicies::build(all, vec![], vec![], BTreeMap::new())
    };
    let p = build(vec![]);
    let d = to(&p, &web(), &IMDS);
    assert_decision(&d, CalicoVerdict::EndOfTier, Some("default"), None, None);
    assert_eq!(
        d.selecting[0].to_string(),
        "NetworkPolicy apps/cluster-only"
    );
    let d = to(&p, &web(), &addr("10.0.0.10:53/UDP"));
    assert_decision(
        &d,
        CalicoVerdict::Allow,
        Some("default"),
        Some("cluster-only"),
        Some("egress[0]"),
    );
    assert!(to(&p, &web(), &addr("1.1.1.1:53/UDP")).allowed());
    // A Calico policy ordered after 1000 in the same tier still gets its turn: Kubernetes
    // isolation is only an end-of-tier drop.
    let gnp = |order: f64| {
        policy(&format!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: g}}\nspec:\n  order: {order}\n  egress:\n  - action: Allow\n    destination: {{nets: [169.254.169.254/32]}}\n"
        ))
    };
    assert_decision(
        &to(&build(vec![gnp(2000.0)]), &web(), &IMDS),
        CalicoVerdict::Allow,
        Some("default"),
        Some("g"),
        Some("egress[0]"),
    );
    // The converted pod selectors match pods only (orchestrator k8s), never a network set.
    let sel = CalicoPolicy::from_kubernetes(&crate::model::NetworkPolicy {
        egress: vec![crate::model::EgressRule {
            to: vec![crate::model::Peer::Selector {
                namespace_selector: Some(crate::model::LabelSelector::default()),
                pod_selector: None,
            }],
            ports: vec![],
        }],
        ..np.clone()
    });
    let set = object("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata: {name: all}\nspec: {nets: [0.0.0.0/0]}\n").unwrap();
    let CalicoObject::NetworkSet(set) = set else {
        panic!()
    };
    let p = CalicoPolicies::build(vec![sel], vec![], vec![set], BTreeMap::new());
    assert_eq!(to(&p, &web(), &IMDS).verdict, CalicoVerdict::EndOfTier);
    let server = pod("other", &[("app", "server")]);
    let dst = CalicoDest {
        ip: Some("10.244.2.7".parse().unwrap()),
        port: 80,
        protocol: Protocol::Tcp,
        endpoint: DestEndpoint::Workload(server.endpoint()),
    };
    assert!(decide(&p, &web().endpoint(), &dst).allowed());
}

#[test]
fn do_not_track_and_pre_dnat_never_apply_to_pods() {
    // GNP: "The doNotTrack and preDNAT and applyOnForward fields are meaningful only when
    // applying policy to a host endpoint."; felix/calc/event_sequencer.go puts them in
    // untracked / pre-DNAT tiers, which only host endpoints have.
    let p = cluster(&["
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: untracked}
spec:
  doNotTrack: true
  applyOnForward: true
  egress: [{action: Deny}]
"]);
    let d = to(&p, &web(), &IMDS);
    assert_decision(&d, CalicoVerdict::NotSelected, None, None, None);
    assert!(d.notes[0].contains("doNotTrack"), "{:?}", d.notes);
    // applyOnForward alone changes nothing for pods.
    let p = cluster(&["
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: fwd}
spec:
  applyOnForward: true
  egress: [{action: Deny}]
"]);
    assert_eq!(to(&p, &web(), &IMDS).verdict, CalicoVerdict::Deny);
}

#[test]
fn a_tier_without_a_tier_object_is_skipped() {
    // felix/calc (calc-graph dump): "tier metadata missing; packets will skip tier".
    let p = cluster(&["
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: ghost.deny}
spec:
  tier: ghost
  egress: [{action: Deny}]
"]);
    let d = to(&p, &web(), &IMDS);
    assert_decision(&d, CalicoVerdict::NotSelected, None, None, None);
    assert!(
        d.notes[0].contains("tier ghost has no Tier object"),
        "{:?}",
        d.notes
    );
}

#[test]
fn source_ports_are_the_pods_choice() {
    // GNP EntityRule "ports: Positive match on the specified ports" on the source side:
    // a pod binds any source port it likes, so an allow from port 53 opens IMDS.
    let p = cluster(&["
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: from-53}
spec:
  egress:
  - action: Allow
    protocol: TCP
    source: {ports: [53]}
"]);
    let d = to(&p, &web(), &IMDS);
    assert_decision(
        &d,
        CalicoVerdict::Allow,
        Some("default"),
        Some("from-53"),
        Some("egress[0]"),
    );
    assert_eq!(d.source_port, Some(53));
    assert!(
        d.reason()
            .ends_with("when the pod connects from source port 53"),
        "{}",
        d.reason()
    );
    // A deny on ephemeral source ports is sidestepped by picking another one.
    let p = cluster(&["
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-ephemeral}
spec:
  egress:
  - action: Deny
    protocol: TCP
    source: {ports: ['32768:60999']}
  - action: Allow
"]);
    let d = to(&p, &web(), &IMDS);
    assert!(d.allowed(), "{}", d.reason());
    assert_eq!(d.source_port, Some(32767));
    // Source nets use the pod's address, source selectors the pod's labels.
    let p = cluster(&["
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: src}
spec:
  egress:
  - action: Allow
    source: {nets: [10.244.0.0/16], selector: app == 'web'}
"]);
    assert!(to(&p, &web(), &IMDS).allowed());
    assert!(!to(&p, &pod("apps", &[("app", "db")]), &IMDS).allowed());
    let mut unknown = web();
    unknown.ips.clear();
    let d = to(&p, &unknown, &IMDS);
    assert!(!d.allowed());
    assert!(
        d.notes[0].contains("source.nets needs the pod's address"),
        "{:?}",
        d.notes
    );
}

#[test]
fn services_are_not_resolved() {
    let p = cluster(&["
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: svc, namespace: apps}
spec:
  egress:
  - action: Allow
    destination: {services: {name: api}}
"]);
    let d = to(&p, &web(), &IMDS);
    assert_eq!(d.verdict, CalicoVerdict::EndOfTier);
    assert!(d.notes[0].contains("Service apps/api"), "{:?}", d.notes);
}

#[test]
fn parse_defaults() {
    let p = policy(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: x}\n",
    );
    assert_eq!(p.tier, "default");
    assert_eq!(p.order, None);
    assert!(p.selector.is_all());
    assert_eq!(p.backend_name(), "default.x");
    assert_eq!(p.kind, PolicyKind::GlobalNetworkPolicy);
    let CalicoObject::Tier(t) =
        object("apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: t}\n").unwrap()
    else {
        panic!()
    };
    // TIER: defaultAction "Default: Deny"; order "nil (highest order)".
    assert_eq!((t.order, t.default_action), (None, TierAction::Deny));
    let p = policy(
        "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.x}
spec:
  tier: security
  egress:
  - action: Allow
    protocol: TCP
    destination:
      nets: [169.254.169.254]
      ports: [80, '8000:8080', http, '443']
",
    );
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let d = &p.egress[0].destination;
    assert_eq!(d.nets[0].to_string(), "169.254.169.254/32");
    let ports: Vec<String> = d.ports.iter().map(ToString::to_string).collect();
    assert_eq!(ports, ["80", "8000:8080", "http", "443"]);
    // Calico 3.29-3.31 names: `tier.name` outside the default tier.
    let p = policy(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: x}\nspec: {tier: security}\n",
    );
    assert!(
        p.warnings[0].contains("does not start with `security.`"),
        "{:?}",
        p.warnings
    );
    assert!(is_calico_kind("projectcalico.org/v3", "Tier"));
    assert!(!is_calico_kind("crd.projectcalico.org/v1", "Tier"));
}

#[test]
fn parse_errors_name_the_field_and_what_to_write() {
    let gnp = |spec: &str| {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: x}}\nspec:\n{spec}"
        )
    };
    assert_eq!(
        err(&gnp("  selector: app = 'web'\n")),
        "GlobalNetworkPolicy x: spec.selector: selector `app = 'web'`: column 5: expected `==`, found a single `=`"
    );
    let e = object(&gnp(
        "  egress: [{action: Allow, destination: {selector: \"a == 'b\"}}]\n",
    ))
    .unwrap_err();
    assert_eq!(e.field, "spec.egress[0].destination.selector");
    assert!(
        matches!(&e.problem, CalicoProblem::Selector { source, .. } if source.column == 6),
        "{e}"
    );
    assert!(err(&gnp("  egress: [{action: allow}]\n")).contains(
        "spec.egress[0].action: `allow` is not an action: write Allow, Deny, Log or Pass"
    ));
    assert!(
        err(&gnp(
            "  egress: [{action: Allow, destination: {ports: [80]}}]\n"
        ))
        .contains("numeric ports need a protocol")
    );
    assert!(
        err(&gnp(
            "  egress: [{action: Allow, protocol: ICMP, destination: {ports: [80]}}]\n"
        ))
        .contains("protocol ICMP has no ports")
    );
    assert!(
        err(&gnp(
            "  egress: [{action: Allow, protocol: TCP, destination: {ports: ['9:8']}}]\n"
        ))
        .contains("start is above its end")
    );
    assert!(
        err(&gnp(
            "  egress: [{action: Allow, destination: {nets: [10.0.0.0/8, 'fd00::/8']}}]\n"
        ))
        .contains("mixes IPv4 and IPv6")
    );
    assert!(
        err(&gnp(
            "  egress: [{action: Allow, destination: {nets: [10.0.0.0/33]}}]\n"
        ))
        .contains("is not a CIDR")
    );
    assert!(
        err(&gnp(
            "  egress: [{action: Allow, http: {methods: [GET]}}]\n"
        ))
        .contains("not allowed in egress rules")
    );
    assert!(
        err(&gnp(
            "  egress: [{action: Allow, destination: {selector: global()}}]\n"
        ))
        .contains("global() may only be used in namespaceSelector")
    );
    assert!(
        err(&gnp(
            "  egress: [{action: Allow, destination: {namespaceSelector: global() || a == 'b'}}]\n"
        ))
        .contains("global() must be the whole")
    );
    assert!(
        err(&gnp(
            "  egress: [{action: Allow, destination: {services: {name: api}}}]\n"
        ))
        .contains("must name the Service's namespace")
    );
    assert!(err(&gnp("  types: [egress]\n")).contains("spec.types[0]"));
    assert!(err(&gnp("  order: '10'\n")).contains("spec.order: expected a number"));
    assert!(
        err(&gnp(
            "  preDNAT: true\n  applyOnForward: true\n  egress: [{action: Deny}]\n"
        ))
        .contains("preDNAT policy cannot have egress")
    );
    assert!(err(&gnp("  doNotTrack: true\n")).contains("must be true when doNotTrack"));
    assert!(
        err(&gnp("  egress: [{action: Allow, protocol: 300}]\n"))
            .contains("`300` is not a protocol")
    );
    assert!(err("apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: t}\nspec: {defaultAction: Allow}\n").contains("write Deny or Pass"));
    assert!(
        err("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {}\n")
            .contains("metadata.name: missing")
    );
    // Ingress rules parse too, with their own checks.
    assert!(
        err(&gnp(
            "  ingress: [{action: Allow, destination: {services: {name: a, namespace: b}}}]\n"
        ))
        .contains("not allowed in an ingress rule's destination")
    );
    let ok = policy(&gnp(
        "  ingress:\n  - action: Allow\n    source: {serviceAccounts: {names: [a]}, namespaceSelector: all()}\n",
    ));
    assert_eq!(ok.ingress.len(), 1);
}
