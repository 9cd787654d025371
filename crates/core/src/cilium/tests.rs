//! The test table of Cilium's egress semantics. Every case cites the documentation (or,
//! where the documentation is silent, the source) sentence it checks.

use std::net::IpAddr;
use std::sync::Arc;

use super::*;
use crate::model::{EgressRule, LabelSelector, Labels, NetworkPolicy, Peer as NpPeer, Source};
use crate::target::Protocol;

const IMDS: &str = "169.254.169.254";

fn src_at(line: usize) -> Source {
    Source {
        file: Arc::from("test.yaml"),
        line,
    }
}

/// Every CNP/CCNP/CiliumCIDRGroup of a multi-document YAML text.
fn policies(yaml: &str) -> CiliumPolicies {
    let mut ps = Vec::new();
    let mut gs = Vec::new();
    for (i, doc) in yaml.split("\n---\n").enumerate() {
        let v: serde_json::Value = serde_norway::from_str(doc).expect("test YAML");
        let api = v["apiVersion"].as_str().unwrap_or("");
        let kind = v["kind"].as_str().unwrap_or("");
        match classify(api, kind).expect("a Cilium kind") {
            CiliumKind::CidrGroup => gs.push(parse_cidr_group(&v, src_at(i + 1)).unwrap()),
            _ => ps.push(parse(&v, src_at(i + 1)).unwrap_or_else(|e| panic!("{e}"))),
        }
    }
    CiliumPolicies::new(ps, gs)
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A pod of namespace `ns` with `pod` labels; its namespace carries the name label and
/// `team=<ns>`.
struct Pod {
    ns: String,
    labels: Labels,
    ns_labels: Labels,
    sa: Option<String>,
}

fn pod(ns: &str, pod: &[(&str, &str)]) -> Pod {
    Pod {
        ns: ns.to_string(),
        labels: labels(pod),
        ns_labels: labels(&[("kubernetes.io/metadata.name", ns), ("team", ns)]),
        sa: None,
    }
}

impl Pod {
    fn ep(&self) -> CiliumEndpoint<'_> {
        CiliumEndpoint {
            namespace: &self.ns,
            labels: &self.labels,
            namespace_labels: &self.ns_labels,
            service_account: self.sa.as_deref(),
        }
    }
}

fn web() -> Pod {
    pod("app", &[("app", "web")])
}

fn ext(ip: &str, port: u16, protocol: Protocol) -> CiliumDest<'static> {
    CiliumDest::External {
        ip: ip.parse::<IpAddr>().unwrap(),
        port,
        protocol,
    }
}

fn imds() -> CiliumDest<'static> {
    ext(IMDS, 80, Protocol::Tcp)
}

fn world_opts() -> CiliumOptions {
    CiliumOptions {
        link_local: LinkLocalAs::World,
        ..CiliumOptions::default()
    }
}

fn host_opts() -> CiliumOptions {
    CiliumOptions {
        link_local: LinkLocalAs::Host,
        ..CiliumOptions::default()
    }
}

fn run(
    ps: &CiliumPolicies,
    src: &Pod,
    dst: &CiliumDest<'_>,
    opts: &CiliumOptions,
) -> CiliumDecision {
    decide(ps, &src.ep(), dst, opts)
}

fn rule_of(d: &CiliumDecision) -> Option<String> {
    d.rule.as_ref().map(ToString::to_string)
}

const DENY_IMDS_CCNP: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: deny-imds}
spec:
  endpointSelector: {}
  egressDeny:
  - toCIDR: [169.254.169.254/32]
"#;

// ---------------------------------------------------------------------------------------
// Default deny and enableDefaultDeny

#[test]
fn no_policy_allows_everything() {
    // https://docs.cilium.io/en/latest/security/policy/intro/ : "endpoints have
    // unrestricted network access until selected by policy".
    let d = run(&CiliumPolicies::default(), &web(), &imds(), &world_opts());
    assert!(d.allowed);
    assert_eq!(d.outcome, Outcome::NotIsolated);
    assert_eq!(d.rule, None);
}

#[test]
fn an_egress_deny_alone_turns_on_default_deny() {
    // https://docs.cilium.io/en/latest/security/policy/deny/ : "Similarly to “allow”
    // policies, Pods will enter default-deny mode as soon a single policy selects it."
    // pkg/policy/api/rule_validation.go (Rule.Sanitize): the default of
    // enableDefaultDeny.egress is `len(r.Egress) > 0 || len(r.EgressDeny) > 0`.
    let ps = policies(DENY_IMDS_CCNP);
    let d = run(&ps, &web(), &imds(), &world_opts());
    assert!(!d.allowed);
    assert_eq!(d.outcome, Outcome::Denied);
    assert_eq!(
        rule_of(&d).as_deref(),
        Some("CiliumClusterwideNetworkPolicy deny-imds#egressDeny[0]")
    );
    let other = run(
        &ps,
        &web(),
        &ext("1.1.1.1", 443, Protocol::Tcp),
        &world_opts(),
    );
    assert!(!other.allowed, "{}", other.reason);
    assert_eq!(other.outcome, Outcome::DefaultDenied);
    assert_eq!(other.policy().unwrap().name, "deny-imds");
}

#[test]
fn enable_default_deny_false_keeps_default_allow_and_the_deny() {
    // https://github.com/cilium/cilium/blob/main/pkg/policy/api/rule.go (EnableDefaultDeny):
    // "If not specified, the default is true for each traffic direction that has rules,
    // and false otherwise." pkg/policy/repository.go: "Only non-default-deny rules are
    // present. Then, policy is enabled, but we must insert an additional allow-all rule."
    let ps = policies(&format!(
        "{DENY_IMDS_CCNP}  enableDefaultDeny: {{egress: false, ingress: false}}\n"
    ));
    let other = run(
        &ps,
        &web(),
        &ext("1.1.1.1", 443, Protocol::Tcp),
        &world_opts(),
    );
    assert!(other.allowed);
    assert_eq!(other.outcome, Outcome::DefaultAllow);
    let d = run(&ps, &web(), &imds(), &world_opts());
    assert!(!d.allowed);
    assert_eq!(d.outcome, Outcome::Denied);
}

#[test]
fn default_deny_is_on_when_any_selecting_policy_asks_for_it() {
    // rule.go (EnableDefaultDeny): "If multiple policies apply to an endpoint, that
    // endpoint's default deny will be enabled if any policy requests it."
    let ps = policies(
        r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: open}
spec:
  endpointSelector: {}
  enableDefaultDeny: {egress: false}
  egress:
  - toCIDR: [1.1.1.1/32]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: strict, namespace: app}
spec:
  endpointSelector: {}
  egress:
  - toCIDR: [8.8.8.8/32]
"#,
    );
    let one = run(
        &ps,
        &web(),
        &ext("1.1.1.1", 53, Protocol::Udp),
        &world_opts(),
    );
    assert!(one.allowed);
    assert_eq!(
        rule_of(&one).as_deref(),
        Some("CiliumClusterwideNetworkPolicy open#egress[0]")
    );
    assert!(
        run(
            &ps,
            &web(),
            &ext("8.8.8.8", 53, Protocol::Udp),
            &world_opts()
        )
        .allowed
    );
    let d = run(
        &ps,
        &web(),
        &ext("9.9.9.9", 53, Protocol::Udp),
        &world_opts(),
    );
    assert!(!d.allowed);
    assert_eq!(
        d.isolating
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["strict"]
    );
}

#[test]
fn enable_default_deny_without_egress_rules_does_nothing_for_egress() {
    // pkg/policy/repository.go (computePolicyEnforcementAndRules): a rule counts for egress
    // only `if len(r.Egress) > 0 || len(r.EgressDeny) > 0`, and only then is its
    // `*r.EnableDefaultDeny.Egress` read.
    let ps = policies(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ingress-only, namespace: app}
spec:
  endpointSelector: {}
  enableDefaultDeny: {egress: true}
  ingress:
  - fromEntities: [cluster]
"#,
    );
    let d = run(&ps, &web(), &imds(), &world_opts());
    assert!(d.allowed);
    assert_eq!(d.outcome, Outcome::NotIsolated);
}

#[test]
fn an_empty_egress_rule_isolates_and_allows_nothing() {
    // https://docs.cilium.io/en/latest/security/policy/layer3/ (Ingress/Egress Default
    // Deny): "An endpoint can be put into the default deny mode at ingress or egress if a
    // rule selects the endpoint and contains the respective rule section ingress or
    // egress." The example writes `egress: [{}]`, which allows nothing (pkg/policy/rule.go
    // mergeEgress: an L3-only rule needs `len(toEndpoints) > 0`).
    let ps = policies(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: lockdown, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - {}
"#,
    );
    let d = run(&ps, &web(), &imds(), &world_opts());
    assert!(!d.allowed);
    assert_eq!(d.outcome, Outcome::DefaultDenied);
    // `egress: []` is no rule at all.
    let none = policies(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: n, namespace: app}\nspec:\n  endpointSelector: {}\n  egress: []\n",
    );
    assert!(run(&none, &web(), &imds(), &world_opts()).allowed);
}

// ---------------------------------------------------------------------------------------
// Deny beats allow; allows add up

#[test]
fn deny_beats_allow_in_any_policy() {
    // https://docs.cilium.io/en/latest/security/policy/deny/ : "Deny policies take
    // precedence over allow policies, regardless of whether they are a Cilium Network
    // Policy, a Clusterwide Cilium Network Policy or even a Kubernetes Network Policy."
    let ps = policies(&format!(
        "{DENY_IMDS_CCNP}---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: allow-all, namespace: app}}\nspec:\n  endpointSelector: {{}}\n  egress:\n  - toEntities: [all]\n"
    ));
    let d = run(&ps, &web(), &imds(), &world_opts());
    assert!(!d.allowed);
    assert_eq!(d.outcome, Outcome::Denied);
    // NetworkPolicy `egress: [{}]` does not re-open it either.
    let np = netpol(
        "app",
        "allow-egress",
        vec![EgressRule {
            to: vec![],
            ports: vec![],
        }],
    );
    let d = decide_with_netpol(&ps, &[&np], &web().ep(), &imds(), &world_opts());
    assert!(!d.allowed);
    assert_eq!(d.outcome, Outcome::Denied);
}

#[test]
fn allows_add_up_and_except_belongs_to_its_entry() {
    // https://docs.cilium.io/en/latest/security/policy/intro/ (Rule Basics): "If there is
    // an intersection between two or more rules, then traffic matching the union of those
    // rules will be allowed." pkg/policy/api/cidr.go (CIDRRule.ExceptCIDRs): "These
    // exceptions are only applied to the Cidr in this CIDRRule, and do not apply to any
    // other CIDR prefixes in any other CIDRRules."
    let except = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: internet, namespace: app}
spec:
  endpointSelector: {}
  egress:
  - toCIDRSet:
    - cidr: 0.0.0.0/0
      except: [169.254.169.254/32]
"#;
    let ps = policies(except);
    let d = run(&ps, &web(), &imds(), &world_opts());
    assert!(!d.allowed);
    assert_eq!(d.outcome, Outcome::DefaultDenied);
    assert!(
        run(
            &ps,
            &web(),
            &ext("1.1.1.1", 443, Protocol::Tcp),
            &world_opts()
        )
        .allowed
    );
    let ps = policies(&format!(
        "{except}---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: link-local, namespace: app}}\nspec:\n  endpointSelector: {{}}\n  egress:\n  - toCIDR: [169.254.0.0/16]\n"
    ));
    let d = run(&ps, &web(), &imds(), &world_opts());
    assert!(d.allowed);
    assert_eq!(
        rule_of(&d).as_deref(),
        Some("CiliumNetworkPolicy app/link-local#egress[0]")
    );
}

#[test]
fn a_deny_on_ports_only_covers_every_destination_on_them() {
    // pkg/policy/rule.go (mergeEgress): "For L4 Policy, an empty slice of EndpointSelector
    // indicates that the rule allows all at L3".
    let ps = policies(
        r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: no-http}
spec:
  endpointSelector: {}
  enableDefaultDeny: {egress: false}
  egressDeny:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
"#,
    );
    assert!(
        !run(
            &ps,
            &web(),
            &ext("1.1.1.1", 80, Protocol::Tcp),
            &world_opts()
        )
        .allowed
    );
    assert!(
        run(
            &ps,
            &web(),
            &ext("1.1.1.1", 443, Protocol::Tcp),
            &world_opts()
        )
        .allowed
    );
    assert!(!run(&ps, &web(), &imds(), &host_opts()).allowed);
}

// ---------------------------------------------------------------------------------------
// CIDR rules, entities and the classification of link-local addresses

#[test]
fn cidr_rules_never_match_pods_or_nodes() {
    // https://docs.cilium.io/en/latest/security/policy/layer3/ : "By default, CIDR-based
    // selectors do not match in-cluster entities (pods or nodes)." and "This requires you
    // to configure Cilium with --policy-cidr-match-mode=nodes".
    let ps = policies(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ten, namespace: app}
spec:
  endpointSelector: {}
  egress:
  - toCIDR: [10.0.0.0/8]
"#,
    );
    assert!(
        run(
            &ps,
            &web(),
            &ext("10.1.2.3", 443, Protocol::Tcp),
            &world_opts()
        )
        .allowed
    );
    let db = pod("data", &[("app", "db")]);
    let to_pod = CiliumDest::Pod {
        endpoint: db.ep(),
        port: 5432,
        protocol: Protocol::Tcp,
        named_ports: &[],
    };
    assert!(!run(&ps, &web(), &to_pod, &world_opts()).allowed);
    let node_labels = labels(&[("kubernetes.io/hostname", "n2")]);
    let node = CiliumDest::Node {
        ip: "10.0.0.5".parse().unwrap(),
        port: 10250,
        protocol: Protocol::Tcp,
        labels: &node_labels,
        local: Some(false),
    };
    assert!(!run(&ps, &web(), &node, &world_opts()).allowed);
    let nodes_mode = CiliumOptions {
        cidr_selects_nodes: true,
        ..world_opts()
    };
    assert!(run(&ps, &web(), &node, &nodes_mode).allowed);
}

#[test]
fn world_covers_addresses_outside_the_cluster_only() {
    // https://docs.cilium.io/en/latest/security/policy/layer3/ (Entities based): "The
    // world entity corresponds to all endpoints outside of the cluster. Allowing to world
    // is identical to allowing to CIDR 0.0.0.0/0." and "The host entity includes the
    // local host."
    let ps = policies(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: internet, namespace: app}
spec:
  endpointSelector: {}
  egress:
  - toEntities: [world]
"#,
    );
    assert!(run(&ps, &web(), &imds(), &world_opts()).allowed);
    assert!(!run(&ps, &web(), &imds(), &host_opts()).allowed);
    let empty = Labels::new();
    let local = CiliumDest::Node {
        ip: "10.0.0.4".parse().unwrap(),
        port: 53,
        protocol: Protocol::Udp,
        labels: &empty,
        local: Some(true),
    };
    assert!(!run(&ps, &web(), &local, &world_opts()).allowed);
}

#[test]
fn a_host_allow_reaches_a_link_local_address_only_when_it_is_host() {
    // Smana/runlore#562 (GKE, Cilium): with `toEntities: [host]` the call to
    // 169.254.169.254 "FAILED (timeout)" while `toCIDR: [169.254.169.254/32]` "returned
    // the project id"; the EKS Pod Identity address 169.254.170.23 is `host`. Hence the
    // classification is a choice, and the default evaluates both.
    let ps = policies(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: node-dns, namespace: app}
spec:
  endpointSelector: {}
  egress:
  - toEntities: [host]
"#,
    );
    let world = run(&ps, &web(), &imds(), &world_opts());
    assert!(!world.allowed);
    assert_eq!(world.classified_as, Some(Entity::World));
    let host = run(&ps, &web(), &imds(), &host_opts());
    assert!(host.allowed);
    assert_eq!(host.classified_as, Some(Entity::Host));
    let either = run(&ps, &web(), &imds(), &CiliumOptions::default());
    assert!(either.allowed, "the cautious default reports it reachable");
    assert_eq!(either.classified_as, Some(Entity::Host));
    assert!(either.reason.contains("as `world`"), "{}", either.reason);
    assert!(matches!(
        either.notes.last(),
        Some(Note::Classification {
            used: Entity::Host,
            other: Entity::World,
            other_allowed: false,
            ..
        })
    ));
    // A non-link-local address is `world` whatever the option says.
    let wire = run(
        &ps,
        &web(),
        &ext("168.63.129.16", 80, Protocol::Tcp),
        &host_opts(),
    );
    assert_eq!(wire.classified_as, Some(Entity::World));
    assert!(!wire.allowed);
}

#[test]
fn a_cidr_deny_does_not_cover_a_host_classified_address() {
    // https://docs.cilium.io/en/latest/security/policy/layer3/ (IP/CIDR based): "CIDR
    // rules do not apply to traffic where both sides of the connection are either managed
    // by Cilium or use an IP belonging to a node in the cluster".
    let ps = policies(&format!(
        "{DENY_IMDS_CCNP}  enableDefaultDeny: {{egress: false}}\n"
    ));
    assert!(!run(&ps, &web(), &imds(), &world_opts()).allowed);
    assert!(run(&ps, &web(), &imds(), &host_opts()).allowed);
    let either = run(&ps, &web(), &imds(), &CiliumOptions::default());
    assert!(either.allowed);
    assert!(either.reason.contains("denied by"), "{}", either.reason);
}

#[test]
fn all_and_cluster_entities() {
    // layer3 (Entities based): "The all entity represents the combination of all known
    // clusters as well world and whitelists all communication." and "Cluster is the
    // logical group of all network endpoints inside of the local cluster. This includes
    // all Cilium-managed endpoints of the local cluster, unmanaged endpoints in the local
    // cluster, as well as the host, remote-node, and init identities."
    let all = policies(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: all, namespace: app}\nspec:\n  endpointSelector: {}\n  egress:\n  - toEntities: [all]\n",
    );
    assert!(run(&all, &web(), &imds(), &world_opts()).allowed);
    assert!(run(&all, &web(), &imds(), &host_opts()).allowed);
    let cluster = policies(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: c, namespace: app}\nspec:\n  endpointSelector: {}\n  egress:\n  - toEntities: [cluster]\n",
    );
    assert!(!run(&cluster, &web(), &imds(), &world_opts()).allowed);
    assert!(run(&cluster, &web(), &imds(), &host_opts()).allowed);
    let db = pod("data", &[("app", "db")]);
    let to_pod = CiliumDest::Pod {
        endpoint: db.ep(),
        port: 5432,
        protocol: Protocol::Tcp,
        named_ports: &[],
    };
    assert!(run(&cluster, &web(), &to_pod, &world_opts()).allowed);
}

#[test]
fn world_ipv4_and_world_ipv6() {
    // pkg/policy/api/entity.go: "EntityWorldIPv4 is an entity that represents traffic
    // external to endpoint's cluster, specifically an IPv4 endpoint".
    let ps = policies(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: v4, namespace: app}\nspec:\n  endpointSelector: {}\n  egress:\n  - toEntities: [world-ipv4]\n",
    );
    assert!(
        run(
            &ps,
            &web(),
            &ext("1.1.1.1", 443, Protocol::Tcp),
            &world_opts()
        )
        .allowed
    );
    assert!(
        !run(
            &ps,
            &web(),
            &ext("2606:4700::1111", 443, Protocol::Tcp),
            &world_opts()
        )
        .allowed
    );
}

// ---------------------------------------------------------------------------------------
// Ports

#[test]
fn to_ports_protocols_ranges_and_names() {
    // https://docs.cilium.io/en/latest/security/policy/layer4/ : "Protocol is the L4
    // protocol. If omitted or empty, any protocol matches." and "EndPort is ignored if
    // Port is a named port."
    let ps = policies(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ports, namespace: app}
spec:
  endpointSelector: {}
  egress:
  - toEntities: [world]
    toPorts:
    - ports:
      - {port: "443", protocol: TCP}
      - {port: "53"}
      - {port: "8000", endPort: 8100, protocol: TCP}
      - {port: http, protocol: TCP}
"#,
    );
    let w = world_opts();
    assert!(run(&ps, &web(), &ext("1.1.1.1", 443, Protocol::Tcp), &w).allowed);
    assert!(!run(&ps, &web(), &ext("1.1.1.1", 443, Protocol::Udp), &w).allowed);
    assert!(run(&ps, &web(), &ext("1.1.1.1", 53, Protocol::Udp), &w).allowed);
    assert!(run(&ps, &web(), &ext("1.1.1.1", 53, Protocol::Sctp), &w).allowed);
    assert!(run(&ps, &web(), &ext("1.1.1.1", 8100, Protocol::Tcp), &w).allowed);
    assert!(!run(&ps, &web(), &ext("1.1.1.1", 8101, Protocol::Tcp), &w).allowed);
    // The named port `http` never matches an address outside the cluster.
    assert!(!run(&ps, &web(), &imds(), &w).allowed);
}

#[test]
fn named_ports_resolve_on_the_destination_pod() {
    // layer4: "Port can be an L4 port number, or a name in the form of "http" or
    // "http-8080"." Named ports resolve on the destination endpoint.
    let ps = policies(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: named, namespace: app}
spec:
  endpointSelector: {}
  egress:
  - toEndpoints: [{matchLabels: {app: api}}]
    toPorts:
    - ports: [{port: HTTP-Alt}]
"#,
    );
    let api = pod("app", &[("app", "api")]);
    let ports = vec![("http-alt".to_string(), Protocol::Tcp, 8080)];
    let dst = |port| CiliumDest::Pod {
        endpoint: api.ep(),
        port,
        protocol: Protocol::Tcp,
        named_ports: &ports,
    };
    assert!(run(&ps, &web(), &dst(8080), &world_opts()).allowed);
    assert!(!run(&ps, &web(), &dst(80), &world_opts()).allowed);
}

#[test]
fn a_rule_with_ports_and_no_peer_covers_every_destination() {
    // layer4 (Example L4): "The following rule limits all endpoints with the label
    // app=myService to only be able to emit packets using TCP on port 80, to any layer 3
    // destination".
    let ps = policies(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l4, namespace: app}
spec:
  endpointSelector: {}
  egress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
"#,
    );
    assert!(run(&ps, &web(), &imds(), &world_opts()).allowed);
    assert!(run(&ps, &web(), &imds(), &host_opts()).allowed);
    assert!(!run(&ps, &web(), &ext(IMDS, 443, Protocol::Tcp), &world_opts()).allowed);
}

#[test]
fn icmp_rules_do_not_allow_tcp() {
    // layer4 (Limit ICMP/ICMPv6 types): "If any ICMP policy is specified, layer 4 and ICMP
    // communication will be blocked unless it's related to a connection that is otherwise
    // allowed by the policy."
    let ps = policies(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ping, namespace: app}
spec:
  endpointSelector: {}
  egress:
  - toEntities: [world]
    icmps:
    - fields: [{type: 8, family: IPv4}]
"#,
    );
    assert!(!run(&ps, &web(), &imds(), &world_opts()).allowed);
}

#[test]
fn l7_rules_allow_at_l4_and_say_so() {
    // pkg/policy/api/l4.go (PortRule.Rules): "Rules is a list of additional port level
    // rules which must be met in order for the PortRule to allow the traffic."
    let ps = policies(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: http, namespace: app}
spec:
  endpointSelector: {}
  egress:
  - toCIDR: [169.254.169.254/32]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - method: GET
          path: /metadata/instance.*
"#,
    );
    let d = run(&ps, &web(), &imds(), &world_opts());
    assert!(d.allowed);
    assert!(d.reason.contains("HTTP rules"), "{}", d.reason);
    assert!(matches!(
        d.notes.as_slice(),
        [Note::L7Filtered {
            l7: L7Kind::Http,
            ..
        }]
    ));
}

// ---------------------------------------------------------------------------------------
// Peers that cannot be evaluated from manifests

#[test]
fn fqdn_rules_are_reported_not_guessed() {
    // https://docs.cilium.io/en/latest/security/policy/layer3/ (DNS based): "The IP
    // addresses provided in DNS responses are allowed by Cilium in a similar manner to IPs
    // in CIDR based policies."
    let ps = policies(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn, namespace: app}
spec:
  endpointSelector: {}
  egress:
  - toFQDNs:
    - matchName: api.example.com
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
"#,
    );
    let d = run(&ps, &web(), &imds(), &world_opts());
    assert!(!d.allowed);
    assert!(matches!(
        d.notes.as_slice(),
        [Note::Fqdn { names, .. }] if names == &["api.example.com".to_string()]
    ));
    assert!(d.notes[0].to_string().contains("cannot tell"));
}

#[test]
fn fqdn_rules_naming_a_metadata_endpoint_allow_it() {
    // https://docs.cilium.io/en/latest/security/policy/language/#dns-based: "The IP
    // addresses provided in DNS responses are allowed by Cilium in a similar manner to IPs
    // in CIDR based policies"; metadata.google.internal resolves to 169.254.169.254
    // (https://cloud.google.com/compute/docs/metadata/querying-metadata), the list the
    // ClusterNetworkPolicy domainNames peer uses too (tiered::metadata_names).
    let policy = |sel: &str| {
        policies(&format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: fqdn, namespace: app}}\nspec:\n  endpointSelector: {{}}\n  egress:\n  - toFQDNs: [{sel}]\n    toPorts:\n    - ports: [{{port: \"80\", protocol: TCP}}]\n"
        ))
    };
    // (selector, allows 169.254.169.254:80)
    let table = [
        ("{matchName: metadata.google.internal}", true),
        ("{matchName: Metadata.Google.Internal.}", true),
        ("{matchPattern: '*.google.internal'}", true),
        ("{matchPattern: 'metadata.*.internal'}", true),
        ("{matchPattern: 'meta*.google.internal'}", true),
        ("{matchPattern: '**.internal'}", true),
        ("{matchPattern: '*'}", true),
        // `*` stays inside one label.
        ("{matchPattern: '*.internal'}", false),
        ("{matchPattern: 'meta*'}", false),
        ("{matchName: google.internal}", false),
    ];
    for (sel, allows) in table {
        let ps = policy(sel);
        let d = run(&ps, &web(), &imds(), &world_opts());
        assert_eq!(d.allowed, allows, "{sel}: {d:?}");
        if allows {
            assert_eq!(d.rule.as_ref().map(|r| r.rule.as_str()), Some("egress[0]"));
            assert!(d.notes.is_empty(), "{sel}: {:?}", d.notes);
        }
        // The rule's ports still count.
        assert!(
            !run(
                &ps,
                &web(),
                &ext("169.254.169.254", 443, Protocol::Tcp),
                &world_opts()
            )
            .allowed
        );
    }
}

#[test]
fn cidr_groups_resolve_or_match_nothing() {
    // https://docs.cilium.io/en/latest/network/kubernetes/ciliumcidrgroup/ : "CiliumCIDRGroup
    // (CCG) is a feature that allows administrators to reference a group of CIDR blocks in
    // a CiliumNetworkPolicy." ... "CCGs may be selected by names or labels."
    let deny = r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: deny-metadata}
spec:
  endpointSelector: {}
  enableDefaultDeny: {egress: false}
  egressDeny:
  - toCIDRSet:
    - cidrGroupRef: metadata-endpoints
"#;
    let group = r#"
apiVersion: cilium.io/v2alpha1
kind: CiliumCIDRGroup
metadata: {name: metadata-endpoints, labels: {role: metadata}}
spec:
  externalCIDRs: [169.254.169.254/32]
"#;
    let ps = policies(&format!("{deny}---{group}"));
    assert!(!run(&ps, &web(), &imds(), &world_opts()).allowed);
    assert!(
        run(
            &ps,
            &web(),
            &ext("1.1.1.1", 80, Protocol::Tcp),
            &world_opts()
        )
        .allowed
    );
    // By label: the same group.
    let by_label = deny.replace(
        "cidrGroupRef: metadata-endpoints",
        "cidrGroupSelector: {matchLabels: {role: metadata}}",
    );
    let ps = policies(&format!("{by_label}---{group}"));
    let d = run(&ps, &web(), &imds(), &world_opts());
    assert!(!d.allowed);
    assert!(d.notes.is_empty(), "{:?}", d.notes);
    // Without the group, Cilium resolves the reference to no CIDR (the agent logs the
    // missing group, cilium/cilium#25020): the deny denies nothing, and says why.
    for text in [deny.to_string(), by_label] {
        let ps = policies(&text);
        let d = run(&ps, &web(), &imds(), &world_opts());
        assert!(d.allowed, "{text}");
        assert!(
            matches!(
                d.notes.as_slice(),
                [Note::CidrGroupUnresolved { deny: true, .. }]
            ),
            "{:?}",
            d.notes
        );
        assert!(d.notes[0].to_string().contains("the deny denies nothing"));
    }
    // An allow through a missing group matches nothing.
    let allow = policies(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a, namespace: app}\nspec:\n  endpointSelector: {}\n  egress:\n  - toCIDRSet:\n    - cidrGroupRef: missing\n",
    );
    let d = run(&allow, &web(), &imds(), &world_opts());
    assert!(!d.allowed);
    assert!(matches!(
        d.notes.as_slice(),
        [Note::CidrGroupUnresolved { deny: false, .. }]
    ));
}

// ---------------------------------------------------------------------------------------
// Selection: namespaces, label sources, identity labels, host policies

#[test]
fn a_cnp_selects_pods_of_its_own_namespace_only() {
    // https://docs.cilium.io/en/latest/security/policy/kubernetes/ : "The endpointSelector
    // always applies to pods of the namespace which is associated with the
    // CiliumNetworkPolicy resource itself."
    let ps = policies(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: lockdown, namespace: other}
spec:
  endpointSelector:
    matchLabels: {"k8s:io.kubernetes.pod.namespace": app}
  egress:
  - {}
"#,
    );
    let d = run(&ps, &web(), &imds(), &world_opts());
    assert!(d.allowed, "{}", d.reason);
    let p = &ps.namespaced["other"][0];
    assert!(p.specs[0].warnings[0].contains("own namespace `other`"));
    assert!(!run(&ps, &pod("other", &[]), &imds(), &world_opts()).allowed);
}

#[test]
fn to_endpoints_default_to_the_policy_namespace() {
    // kubernetes (Multi-Cluster): "If the namespace label of policy rules is omitted it
    // defaults to the same namespace where the policy itself is applied in"; a
    // clusterwide policy's selector only matches endpoints that have a namespace
    // (pkg/k8s/apis/cilium.io/utils/utils.go getEndpointSelector: "we are only allowing
    // traffic for cilium managed k8s endpoints").
    let yaml = |kind: &str, ns: &str, sel: &str| {
        format!(
            "apiVersion: cilium.io/v2\nkind: {kind}\nmetadata: {{name: p{ns}}}\nspec:\n  endpointSelector: {{}}\n  egress:\n  - toEndpoints: [{sel}]\n"
        )
    };
    let db = pod("data", &[("app", "db")]);
    let to_db = CiliumDest::Pod {
        endpoint: db.ep(),
        port: 5432,
        protocol: Protocol::Tcp,
        named_ports: &[],
    };
    let cnp = policies(
        &yaml("CiliumNetworkPolicy", "", "{}").replace("{name: p}", "{name: p, namespace: app}"),
    );
    assert!(!run(&cnp, &web(), &to_db, &world_opts()).allowed);
    let peer = web();
    let to_peer = CiliumDest::Pod {
        endpoint: peer.ep(),
        port: 80,
        protocol: Protocol::Tcp,
        named_ports: &[],
    };
    assert!(run(&cnp, &web(), &to_peer, &world_opts()).allowed);
    let cnp_ns = policies(
        &yaml(
            "CiliumNetworkPolicy",
            "",
            "{matchLabels: {io.kubernetes.pod.namespace: data}}",
        )
        .replace("{name: p}", "{name: p, namespace: app}"),
    );
    assert!(run(&cnp_ns, &web(), &to_db, &world_opts()).allowed);
    let ccnp = policies(&yaml("CiliumClusterwideNetworkPolicy", "", "{}"));
    assert!(run(&ccnp, &web(), &to_db, &world_opts()).allowed);
    // The empty selector of a CCNP's toEndpoints does not reach the world.
    assert!(!run(&ccnp, &web(), &imds(), &world_opts()).allowed);
}

#[test]
fn label_sources_namespace_labels_and_service_accounts() {
    // Selector keys carry a source (`k8s:`, `any:`, `reserved:`, none = any):
    // pkg/labels ParseSource; kubernetes (ServiceAccounts): "Cilium supports the
    // specification of network security policies based on the service account identity
    // of a pod."
    let sel = |s: &str| {
        policies(&format!(
            "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {{name: s}}\nspec:\n  endpointSelector: {s}\n  egress:\n  - {{}}\n"
        ))
    };
    let selects = |s: &str, p: &Pod| !run(&sel(s), p, &imds(), &world_opts()).allowed;
    let mut p = web();
    assert!(selects("{matchLabels: {\"k8s:app\": web}}", &p));
    assert!(selects("{matchLabels: {\"any:app\": web}}", &p));
    assert!(selects("{matchLabels: {app: web}}", &p));
    assert!(!selects("{matchLabels: {\"container:app\": web}}", &p));
    assert!(!selects("{matchLabels: {\"reserved:host\": \"\"}}", &p));
    assert!(selects(
        "{matchLabels: {\"k8s:io.cilium.k8s.namespace.labels.team\": app}}",
        &p
    ));
    assert!(selects(
        "{matchExpressions: [{key: \"k8s:io.kubernetes.pod.namespace\", operator: NotIn, values: [kube-system]}]}",
        &p
    ));
    assert!(selects(
        "{matchLabels: {io.cilium.k8s.policy.serviceaccount: default}}",
        &p
    ));
    p.sa = Some("imds-reader".into());
    assert!(selects(
        "{matchLabels: {io.cilium.k8s.policy.serviceaccount: imds-reader}}",
        &p
    ));
}

#[test]
fn labels_outside_the_identity_select_nothing() {
    // https://docs.cilium.io/en/stable/operations/performance/scalability/identity-relevant-labels/ :
    // "By default, Cilium considers all labels to be relevant for identities, with the
    // following exceptions" (among them `pod-template-hash` and `kubernetes.io` labels).
    let ps = policies(
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: s}\nspec:\n  endpointSelector: {matchLabels: {pod-template-hash: abc}}\n  egress:\n  - {}\n",
    );
    let p = pod("app", &[("app", "web"), ("pod-template-hash", "abc")]);
    assert!(run(&ps, &p, &imds(), &world_opts()).allowed);
    let unfiltered = CiliumOptions {
        identity_label_filter: false,
        ..world_opts()
    };
    assert!(!run(&ps, &p, &imds(), &unfiltered).allowed);
}

#[test]
fn host_policies_do_not_select_pods() {
    // https://docs.cilium.io/en/latest/security/policy/intro/ (Node Selector): "rather
    // than matching on labels associated with an endpoints, it instead applies to labels
    // associated with a node in the cluster." and "Node Selectors can only be used in
    // CiliumClusterwideNetworkPolicy."
    let ps = policies(
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: host-fw}\nspec:\n  nodeSelector: {}\n  egress:\n  - {}\n",
    );
    assert!(matches!(
        ps.clusterwide[0].specs[0].subject,
        Subject::Nodes(_)
    ));
    assert!(ps.clusterwide[0].rejected.is_none());
    assert!(run(&ps, &web(), &imds(), &world_opts()).allowed);
    let cnp = policies(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: h, namespace: app}\nspec:\n  nodeSelector: {}\n  egress:\n  - {}\n",
    );
    assert!(cnp.namespaced["app"][0].rejected.is_some());
}

#[test]
fn policies_the_agent_refuses_have_no_effect() {
    // pkg/policy/api/rule_validation.go (EgressRule.sanitize): "Combining %s and %s is not
    // supported yet" — the agent refuses the policy, which then enforces nothing.
    let ps = policies(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: mixed, namespace: app}
spec:
  endpointSelector: {}
  egressDeny:
  - toCIDR: [169.254.169.254/32]
    toEntities: [world]
"#,
    );
    let p = &ps.namespaced["app"][0];
    assert!(
        p.rejected
            .as_deref()
            .unwrap()
            .contains("combining toCIDR and toEntities"),
        "{:?}",
        p.rejected
    );
    let d = run(&ps, &web(), &imds(), &world_opts());
    assert!(d.allowed);
    assert!(matches!(d.notes.as_slice(), [Note::Rejected { .. }]));
}

#[test]
fn specs_lists_name_their_rules() {
    // pkg/k8s/apis/cilium.io/v2 (CiliumNetworkPolicy): "Specs is a list of desired Cilium
    // specific rule specification."
    let ps = policies(
        r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: multi}
specs:
- endpointSelector: {matchLabels: {app: other}}
  egressDeny:
  - toEntities: [world]
- endpointSelector: {matchLabels: {app: web}}
  egress:
  - toEntities: [world]
  egressDeny:
  - toCIDRSet: [{cidr: 169.254.0.0/16}]
"#,
    );
    let d = run(&ps, &web(), &imds(), &world_opts());
    assert_eq!(
        rule_of(&d).as_deref(),
        Some("CiliumClusterwideNetworkPolicy multi#specs[1].egressDeny[0]")
    );
    let ok = run(
        &ps,
        &web(),
        &ext("1.1.1.1", 443, Protocol::Tcp),
        &world_opts(),
    );
    assert_eq!(
        rule_of(&ok).as_deref(),
        Some("CiliumClusterwideNetworkPolicy multi#specs[1].egress[0]")
    );
}

// ---------------------------------------------------------------------------------------
// Kubernetes NetworkPolicy under Cilium

fn netpol(ns: &str, name: &str, egress: Vec<EgressRule>) -> NetworkPolicy {
    NetworkPolicy {
        namespace: ns.into(),
        name: name.into(),
        pod_selector: LabelSelector::default(),
        ingress_type: true,
        egress_type: true,
        policy_types_written: true,
        egress,
        source: src_at(1),
    }
}

fn ip_block(cidr: &str, except: &[&str]) -> NpPeer {
    NpPeer::IpBlock {
        cidr: cidr.parse().unwrap(),
        except: except.iter().map(|e| e.parse().unwrap()).collect(),
    }
}

#[test]
fn network_policy_isolation_and_allows_join_cilium_ones() {
    // https://docs.cilium.io/en/latest/security/policy/intro/ : "traffic matching the union
    // of those rules will be allowed" — Cilium imports NetworkPolicy into the same rule
    // repository (a NetworkPolicy with the Egress type puts the pod in default-deny).
    let deny_all = netpol("app", "deny-all", vec![]);
    let empty = CiliumPolicies::default();
    let d = decide_with_netpol(&empty, &[&deny_all], &web().ep(), &imds(), &world_opts());
    assert!(!d.allowed);
    assert_eq!(d.outcome, Outcome::DefaultDenied);
    assert_eq!(d.isolating[0].kind, PolicyKind::NetworkPolicy);
    let world = policies(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: w, namespace: app}\nspec:\n  endpointSelector: {}\n  egress:\n  - toEntities: [world]\n",
    );
    let d = decide_with_netpol(&world, &[&deny_all], &web().ep(), &imds(), &world_opts());
    assert!(d.allowed);
    // And the other way round: a NetworkPolicy allow under a Cilium default-deny.
    let lockdown = policies(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: l, namespace: app}\nspec:\n  endpointSelector: {}\n  egress:\n  - {}\n",
    );
    let open = netpol(
        "app",
        "to-internet",
        vec![EgressRule {
            to: vec![ip_block("0.0.0.0/0", &["10.0.0.0/8"])],
            ports: vec![],
        }],
    );
    let d = decide_with_netpol(&lockdown, &[&open], &web().ep(), &imds(), &world_opts());
    assert!(d.allowed);
    assert_eq!(
        rule_of(&d).as_deref(),
        Some("NetworkPolicy app/to-internet#egress[0]")
    );
    // NetworkPolicies of another namespace, or not selecting the pod, do nothing.
    let mut elsewhere = netpol("other", "deny-all", vec![]);
    assert!(decide_with_netpol(&empty, &[&elsewhere], &web().ep(), &imds(), &world_opts()).allowed);
    elsewhere.namespace = "app".into();
    elsewhere.pod_selector.match_labels = labels(&[("app", "db")]);
    assert!(decide_with_netpol(&empty, &[&elsewhere], &web().ep(), &imds(), &world_opts()).allowed);
}

#[test]
fn network_policy_ip_blocks_never_match_pods_or_the_host() {
    // https://github.com/cilium/cilium/issues/19601 : "Cilium doesn't support using ipBlock
    // statements to match on pod IPs today"; layer3: "Setting --policy-cidr-match-mode=nodes
    // permits selecting the apiserver via an ipBlock peer in a KubernetesNetworkPolicy."
    let everything = netpol(
        "app",
        "any-address",
        vec![EgressRule {
            to: vec![ip_block("0.0.0.0/0", &[])],
            ports: vec![],
        }],
    );
    let empty = CiliumPolicies::default();
    let db = pod("data", &[("app", "db")]);
    let to_pod = CiliumDest::Pod {
        endpoint: db.ep(),
        port: 5432,
        protocol: Protocol::Tcp,
        named_ports: &[],
    };
    assert!(
        !decide_with_netpol(&empty, &[&everything], &web().ep(), &to_pod, &world_opts()).allowed
    );
    assert!(
        !decide_with_netpol(&empty, &[&everything], &web().ep(), &imds(), &host_opts()).allowed
    );
    assert!(
        decide_with_netpol(&empty, &[&everything], &web().ep(), &imds(), &world_opts()).allowed
    );
    // A selector peer reaches the pod.
    let to_data = netpol(
        "app",
        "to-data",
        vec![EgressRule {
            to: vec![NpPeer::Selector {
                namespace_selector: Some(LabelSelector {
                    match_labels: labels(&[("team", "data")]),
                    ..LabelSelector::default()
                }),
                pod_selector: None,
            }],
            ports: vec![],
        }],
    );
    assert!(decide_with_netpol(&empty, &[&to_data], &web().ep(), &to_pod, &world_opts()).allowed);
}

// ---------------------------------------------------------------------------------------
// Parsing

#[test]
fn parse_errors_name_the_field() {
    // The CRD schema (pkg/policy/api/entity.go: "+kubebuilder:validation:Enum=all;world;...")
    // refuses unknown entities; a malformed CIDR or operator likewise.
    let bad = |yaml: &str| {
        let v: serde_json::Value = serde_norway::from_str(yaml).unwrap();
        parse(&v, src_at(1)).unwrap_err().to_string()
    };
    let head = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: app}\nspec:\n  endpointSelector: {}\n";
    let e = bad(&format!("{head}  egress:\n  - toEntities: [internet]\n"));
    assert!(
        e.starts_with(
            "CiliumNetworkPolicy app/p: egress[0].toEntities[0]: `internet` is not an entity"
        ),
        "{e}"
    );
    let e = bad(&format!(
        "{head}  egressDeny:\n  - toCIDR: [169.254.169.254/33]\n"
    ));
    assert!(
        e.contains("egressDeny[0].toCIDR[0]: `169.254.169.254/33` is not a CIDR"),
        "{e}"
    );
    let e = bad(&format!(
        "{head}  egress:\n  - toPorts: [{{ports: [{{port: \"99999\"}}]}}]\n"
    ));
    assert!(e.contains("egress[0].toPorts[0].ports[0].port"), "{e}");
    let e = bad(
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: p}\n",
    );
    assert!(e.contains("neither `spec` nor `specs`"), "{e}");
    let e = bad(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {matchExpressions: [{key: a, operator: in, values: [x]}]}\n",
    );
    assert!(
        e.contains("endpointSelector.matchExpressions[0].operator"),
        "{e}"
    );
    assert_eq!(
        classify("cilium.io/v2", "CiliumNetworkPolicy"),
        Some(CiliumKind::NetworkPolicy)
    );
    assert_eq!(
        classify("networking.k8s.io/v1", "CiliumNetworkPolicy"),
        None
    );
}

#[test]
fn parse_reads_every_field_the_audit_uses() {
    let v: serde_json::Value = serde_norway::from_str(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: web}}
  enableDefaultDeny: {egress: false}
  ingress: [{fromEntities: [world]}]
  egress:
  - toCIDR: [1.2.3.4]
    toPorts: [{ports: [{port: 443, protocol: tcp}], serverNames: [example.com]}]
  - toServices: [{k8sService: {serviceName: s, namespace: n}}]
  egressDeny:
  - toEntities: [host, remote-node, kube-apiserver]
"#,
    )
    .unwrap();
    let p = parse(&v, src_at(7)).unwrap();
    assert_eq!(p.id.namespace.as_deref(), Some("default"));
    assert_eq!(p.source.line, 7);
    let s = &p.specs[0];
    assert_eq!(s.at, "");
    assert_eq!(s.ingress, 1);
    assert_eq!(s.default_deny_egress, Some(false));
    assert!(!s.egress_default_deny());
    assert_eq!(
        s.egress[0].peer,
        Some(Peer::Cidr(vec![CidrRule::Cidr {
            cidr: "1.2.3.4/32".parse().unwrap(),
            except: vec![]
        }]))
    );
    assert_eq!(s.egress[0].to_ports[0].l7, Some(L7Kind::Sni));
    assert_eq!(
        s.egress[0].to_ports[0].ports[0],
        PortProtocol {
            port: PortSel::Number(443),
            end_port: None,
            protocol: L4Proto::Tcp
        }
    );
    assert_eq!(s.egress[1].peer, Some(Peer::Services(1)));
    assert_eq!(
        s.egress_deny[0].peer,
        Some(Peer::Entities(vec![
            Entity::Host,
            Entity::RemoteNode,
            Entity::KubeApiserver
        ]))
    );
}
