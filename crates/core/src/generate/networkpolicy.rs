//! `networking.k8s.io/v1` NetworkPolicy output: per namespace, a deny that keeps every
//! other destination open under every engine that enforces NetworkPolicy (Azure NPM,
//! Calico, Cilium, kube-network-policies), and allow policies for the expected pods.
//!
//! A NetworkPolicy cannot deny; it can only isolate a pod and then allow. So the deny
//! policy selects every pod of its namespace that no existing Egress policy isolates
//! (those keep their verdicts: adding an allow-almost-everything to them would re-open
//! what their policies close; more than one deny policy when that selection is not one
//! selector) and allows, rule by rule:
//!
//! 1. `0.0.0.0/0` less each IPv4 target address (`/32`): every other address, every
//!    port; `::/0` less each IPv6 target (`/128`) in a companion policy
//!    `imdsguard-deny-metadata-ipv6-sctp` selecting the same pods, with the SCTP
//!    entries of rule 2 (Azure NPM is IPv4-only and rejects a whole policy holding an
//!    IPv6 ipBlock, NPM on Windows rejects SCTP: apart, a rejection costs only the
//!    companion, and the deny still applies);
//! 2. for each target address, its ports and protocols that are *not* targets (all of
//!    UDP and SCTP when only TCP ports are targets; the other TCP ports as ranges with
//!    `endPort`, and single ports that matter, TCP 53, as entries of their own: Azure
//!    NPM ignores `endPort` and would keep only a range's first port);
//! 3. pods, explicitly (`namespaceSelector: {}`): some engines never match pod
//!    addresses with an ipBlock;
//! 4. DNS (UDP and TCP 53) to any destination;
//! 5. node-local DNS (169.254.20.10/32) and AKS LocalDNS (169.254.10.0/24), explicitly:
//!    some engines treat node-local addresses as the host, not as an ipBlock.
//!
//! None of these rules admits a target (a target inside rule 4 or 5 is cut out of it),
//! and policies add up, so the expected pods get an `imdsguard-allow-metadata-<rule>`
//! policy in each namespace their subject names, admitting exactly the targets.
//!
//! Sources: <https://kubernetes.io/docs/concepts/services-networking/network-policies/>
//! (isolation, additivity, `endPort`), Azure NPM's `endPort` limitation:
//! <https://learn.microsoft.com/en-us/azure/aks/use-network-policies>.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Value, json};

use super::complement::{atoms_of, complement};
use super::{Context, ExpectedSubject, Generated, TargetAddr, WarningKind, selector_json};
use crate::model::Requirement;
use crate::netpol::{self, Decision};
use crate::target::{Protocol, Target};

/// Node-local DNS (NodeLocal DNSCache's default address).
pub(crate) const NODE_LOCAL_DNS: &str = "169.254.20.10/32";
/// AKS LocalDNS.
pub(crate) const AKS_LOCAL_DNS: &str = "169.254.10.0/24";

/// Suffix of the deny's companion policy, which keeps IPv6 and SCTP open apart from the
/// deny: Azure NPM is IPv4-only and refuses a whole policy with an IPv6 ipBlock
/// (<https://github.com/Azure/azure-container-networking/pull/1738>), NPM on Windows
/// refuses SCTP (<https://learn.microsoft.com/en-us/azure/aks/use-network-policies>).
pub(crate) const EXTRA_SUFFIX: &str = "-ipv6-sctp";

const PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

pub(super) fn generate(ctx: &Context<'_>, out: &mut Generated) {
    let (deny_spec, extra_spec) = deny_spec(ctx);
    let allows = allow_policies(ctx, out);
    for (ns, info) in &ctx.cluster.namespaces {
        if info.source.is_none() {
            out.warn(
                WarningKind::ImplicitNamespace,
                format!(
                    "namespace {ns} is only referenced in the input, never declared: its policies are written, but apply only once the namespace exists"
                ),
            );
        }
        for (allow_ns, policy) in &allows {
            if allow_ns == ns {
                out.objects.push(policy.clone());
            }
        }
        // Pods an existing Egress policy isolates keep their verdicts: the deny would
        // add (policies add up) an allow of everything but the targets to them. It
        // selects the other pods, present and future: the complement of the isolating
        // policies' selectors, as one or more selectors.
        let isolating: Vec<Vec<Requirement>> = ctx
            .cluster
            .policies_in(ns)
            .iter()
            .map(|&i| &ctx.cluster.policies[i])
            .filter(|p| p.egress_type)
            .map(|p| atoms_of(&p.pod_selector))
            .collect();
        let selections = complement(&isolating);
        if selections.is_empty() {
            out.warn(
                WarningKind::NamespaceIsolated,
                format!(
                    "namespace {ns}: every pod is egress-isolated by an existing policy already, so no deny is written there; its policies decide (see reopens-target)"
                ),
            );
        }
        let many = selections.len() > 1;
        for (i, selection) in selections.iter().enumerate() {
            let name = if many {
                format!("{}-{i}", super::DENY_NAME)
            } else {
                super::DENY_NAME.to_string()
            };
            let mut spec = deny_spec.clone();
            spec["podSelector"] = selection.to_selector();
            out.objects.push(json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": ctx.metadata(&name, Some(ns), &ctx.all_addrs()),
                "spec": spec,
            }));
            // IPv6 and SCTP in a policy of their own: Azure NPM (IPv4 only) rejects a
            // policy with an IPv6 ipBlock as a whole, and NPM on Windows rejects SCTP;
            // apart, a rejection costs only this policy (IPv6 and SCTP then stay
            // denied: fail closed), never the deny.
            let mut extra = extra_spec.clone();
            extra["podSelector"] = selection.to_selector();
            out.objects.push(json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": ctx.metadata(&format!("{name}{EXTRA_SUFFIX}"), Some(ns), &ctx.all_addrs()),
                "spec": extra,
            }));
        }
    }
    if ctx.addrs.iter().any(|a| {
        let tcp = a.ports_of(Protocol::Tcp);
        !tcp.is_empty() && tcp.len() < 65535
    }) {
        let which: Vec<String> = ctx
            .addrs
            .iter()
            .filter(|a| !a.ports_of(Protocol::Tcp).is_empty())
            .map(|a| a.ip.to_string())
            .collect();
        out.warn(
            WarningKind::EngineLimit,
            format!(
                "Azure NPM ignores endPort: on {} only TCP 53 and the first port of each range of non-target TCP ports stay open there (UDP, every other address and DNS are unaffected)",
                which.join(", ")
            ),
        );
    }
    if !ctx.cluster.cilium.is_empty() {
        out.warn(
            WarningKind::EngineLimit,
            "the input holds Cilium policies, so the cluster likely runs Cilium, where an ipBlock never matches node or pod addresses (AKS: \"Network policies can't use ipBlock to allow access to node or pod IPs\", https://learn.microsoft.com/en-us/azure/aks/azure-cni-powered-by-cilium): the deny then cuts traffic to nodes and node-local addresses the ipBlocks were to keep open; use --engine cilium".into(),
        );
    }
    out.warn(
        WarningKind::EngineLimit,
        format!(
            "Azure NPM on Windows node pools rejects ipBlock `except`, SCTP and NotIn (https://learn.microsoft.com/en-us/azure/aks/use-network-policies): there the deny ({}) is not applied; on AKS with Windows node pools use Calico (--engine calico) or block the targets on the node; Azure NPM is IPv4-only: the IPv6 and SCTP allows are in the companion policy {}{EXTRA_SUFFIX}, whose rejection does not affect the deny",
            super::DENY_NAME,
            super::DENY_NAME,
        ),
    );
    reopen_warnings(ctx, out);
}

/// The deny policy's spec (the same in every namespace) and the spec of its companion
/// for IPv6 and SCTP ([`EXTRA_SUFFIX`]), which selects the same pods.
fn deny_spec(ctx: &Context<'_>) -> (Value, Value) {
    let mut egress = Vec::new();
    let mut extra = Vec::new();
    // 1. every other address: IPv4 here, IPv6 in the companion policy.
    let v4: Vec<String> = except_of(ctx, |ip| ip.is_ipv4());
    let v6: Vec<String> = except_of(ctx, |ip| ip.is_ipv6());
    egress.push(json!({"to": [ip_block("0.0.0.0/0", &v4)]}));
    extra.push(json!({"to": [ip_block("::/0", &v6)]}));
    // 2. the other ports of each target address (SCTP and IPv6 addresses in the
    // companion policy).
    for a in &ctx.addrs {
        let (sctp, ports): (Vec<Value>, Vec<Value>) = other_ports(a)
            .into_iter()
            .partition(|p| p["protocol"] == "SCTP");
        let (here, there) = if a.ip.is_ipv6() {
            (Vec::new(), [ports, sctp].concat())
        } else {
            (ports, sctp)
        };
        if !here.is_empty() {
            egress.push(json!({"to": [ip_block(&a.cidr(), &[])], "ports": here}));
        }
        if !there.is_empty() {
            extra.push(json!({"to": [ip_block(&a.cidr(), &[])], "ports": there}));
        }
    }
    // 3. pods.
    egress.push(json!({"to": [{"namespaceSelector": {}}]}));
    // 4. DNS to any destination. When a target is itself a DNS port, this rule would
    // re-open it: rules 1 to 3 and 5 already keep every other DNS server open.
    if !ctx
        .addrs
        .iter()
        .any(|a| a.ports.iter().any(|(_, p)| *p == 53))
    {
        egress.push(json!({"ports": [
            {"protocol": "UDP", "port": 53},
            {"protocol": "TCP", "port": 53},
        ]}));
    }
    // 5. node-local DNS, less any target inside it.
    let mut local = Vec::new();
    for block in [NODE_LOCAL_DNS, AKS_LOCAL_DNS] {
        let net: IpNet = block.parse().expect("constant CIDR");
        let inside: Vec<String> = ctx
            .addrs
            .iter()
            .filter(|a| net.contains(&a.ip))
            .map(TargetAddr::cidr)
            .collect();
        if inside.iter().any(|c| *c == block) {
            continue;
        }
        local.push(ip_block(block, &inside));
    }
    if !local.is_empty() {
        egress.push(json!({ "to": local }));
    }
    let spec = |egress: Vec<Value>| {
        json!({
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": egress,
        })
    };
    (spec(egress), spec(extra))
}

fn except_of(ctx: &Context<'_>, family: impl Fn(&IpAddr) -> bool) -> Vec<String> {
    ctx.addrs
        .iter()
        .filter(|a| family(&a.ip))
        .map(TargetAddr::cidr)
        .collect()
}

fn ip_block(cidr: &str, except: &[String]) -> Value {
    if except.is_empty() {
        json!({"ipBlock": {"cidr": cidr}})
    } else {
        json!({"ipBlock": {"cidr": cidr, "except": except}})
    }
}

/// The port entries of a target address that are not targets.
pub(crate) fn other_ports(a: &TargetAddr) -> Vec<Value> {
    let mut out = Vec::new();
    for p in PROTOCOLS {
        let targets = a.ports_of(p);
        if targets.is_empty() {
            out.push(json!({"protocol": p.as_str()}));
            continue;
        }
        for (start, end) in ports_outside(&targets) {
            // Ports that matter get entries of their own (Azure NPM ignores endPort).
            let split = if p == Protocol::Tcp && start < 53 && 53 < end {
                vec![(start, 52), (53, 53), (54, end)]
            } else if p == Protocol::Tcp && start == 53 && end > 53 {
                vec![(53, 53), (54, end)]
            } else if p == Protocol::Tcp && end == 53 && start < 53 {
                vec![(start, 52), (53, 53)]
            } else {
                vec![(start, end)]
            };
            for (s, e) in split {
                out.push(if s == e {
                    json!({"protocol": p.as_str(), "port": s})
                } else {
                    json!({"protocol": p.as_str(), "port": s, "endPort": e})
                });
            }
        }
    }
    out
}

/// The port ranges of 1..=65535 outside `taken` (sorted).
pub(crate) fn ports_outside(taken: &[u16]) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    let mut next: u32 = 1;
    for &t in taken {
        if u32::from(t) > next {
            out.push((next as u16, t - 1));
        }
        next = u32::from(t) + 1;
    }
    if next <= 65535 {
        out.push((next as u16, 65535));
    }
    out
}

/// The allow policies, each with its namespace, in rule and subject order.
fn allow_policies(ctx: &Context<'_>, out: &mut Generated) -> Vec<(String, Value)> {
    let mut policies = Vec::new();
    if ctx.excepted.is_empty() {
        return policies;
    }
    for s in &ctx.subjects {
        if s.service_accounts().is_some() {
            skip_service_accounts(s, "NetworkPolicy", out);
            continue;
        }
        let namespaces: Vec<&String> = match s.namespaces() {
            None => ctx.cluster.namespaces.keys().collect(),
            Some(names) => {
                for n in names {
                    if !ctx.cluster.namespaces.contains_key(n) {
                        out.warn(
                            WarningKind::NamespaceNotFound,
                            format!(
                                "{} names namespace {n}, which is not in the input: no allow policy written there (generate again once it exists)",
                                s.describe()
                            ),
                        );
                    }
                }
                names
                    .iter()
                    .filter(|n| ctx.cluster.namespaces.contains_key(*n))
                    .collect()
            }
        };
        let pod_selector = s
            .subject
            .pod_selector
            .as_ref()
            .map(selector_json)
            .unwrap_or_else(|| json!({}));
        let egress: Vec<Value> = ctx
            .excepted
            .iter()
            .map(|a| json!({"to": [ip_block(&a.cidr(), &[])], "ports": target_ports(a)}))
            .collect();
        for ns in namespaces {
            policies.push((
                ns.clone(),
                json!({
                    "apiVersion": "networking.k8s.io/v1",
                    "kind": "NetworkPolicy",
                    "metadata": ctx.metadata(&s.object_name(), Some(ns), &ctx.excepted_addrs()),
                    "spec": {
                        "podSelector": pod_selector,
                        "policyTypes": ["Egress"],
                        "egress": egress,
                    },
                }),
            ));
        }
    }
    policies
}

/// The target ports of an address as NetworkPolicy port entries.
fn target_ports(a: &TargetAddr) -> Vec<Value> {
    a.ports
        .iter()
        .map(|(p, n)| json!({"protocol": p.as_str(), "port": n}))
        .collect()
}

pub(crate) fn skip_service_accounts(s: &ExpectedSubject<'_>, kind: &str, out: &mut Generated) {
    out.warn(
        WarningKind::SubjectNotExpressible,
        format!(
            "{} selects by service account, which a {kind} cannot express: skipped, so its pods stay denied (select them by pod labels in the rules file, or generate --engine calico or cilium, which select by service account)",
            s.describe()
        ),
    );
}

/// Existing NetworkPolicies that would still admit a target for pods that are not
/// expected: policies add up, so the generated deny does not close what they open. The
/// audit's own NetworkPolicy evaluation decides ([`netpol::decide`]).
fn reopen_warnings(ctx: &Context<'_>, out: &mut Generated) {
    let c = ctx.cluster;
    let targets: Vec<Target> = ctx
        .addrs
        .iter()
        .flat_map(|a| a.ports.iter().map(|(p, n)| Target::new(a.ip, *n, *p)))
        .collect();
    // Every pod shape, and a new pod without labels in every namespace.
    let empty = crate::model::PodTemplate {
        labels: crate::model::Labels::new(),
        host_network: false,
        service_account: crate::model::DEFAULT_SERVICE_ACCOUNT.to_owned(),
    };
    let mut sources: Vec<(&str, &crate::model::PodTemplate, String)> = Vec::new();
    for w in &c.workloads {
        for shape in &w.shapes {
            sources.push((&w.namespace, &shape.template, w.id()));
        }
    }
    for ns in c.namespaces.keys() {
        sources.push((ns, &empty, format!("{ns}/<new pod>")));
    }
    for (ns, template, id) in sources {
        if template.host_network {
            continue;
        }
        // An expected pod may reach the excepted targets; the others stay denied to it.
        let expected = ctx.expected(ns, template);
        let selecting = c.selecting(ns, &template.labels);
        let mut rules = Vec::new();
        let mut reopened = Vec::new();
        for t in targets.iter().filter(|t| !(expected && ctx.is_excepted(t))) {
            if let Decision::Allowed { by, .. } = netpol::decide(c, &selecting, t) {
                reopened.push(t.to_string());
                for r in by {
                    let name = format!("{}#egress[{}]", c.policies[r.policy].id(), r.rule);
                    if !rules.contains(&name) {
                        rules.push(name);
                    }
                }
            }
        }
        if !reopened.is_empty() {
            out.warn(
                WarningKind::ReopensTarget,
                format!(
                    "{id} would still reach {}: {} admit(s) it, and NetworkPolicies add up; narrow those rules (except the targets) or use a cluster-scoped engine (cnp, anp, calico, cilium)",
                    reopened.join(", "),
                    rules.join(", ")
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complement_of_ports() {
        assert_eq!(ports_outside(&[80]), [(1, 79), (81, 65535)]);
        assert_eq!(ports_outside(&[1, 65535]), [(2, 65534)]);
        assert_eq!(
            ports_outside(&[80, 81, 32526]),
            [(1, 79), (82, 32525), (32527, 65535)]
        );
        assert_eq!(ports_outside(&[]), [(1, 65535)]);
    }

    #[test]
    fn other_ports_keep_udp_and_tcp_53_as_their_own_entries() {
        let a = TargetAddr {
            ip: "168.63.129.16".parse().unwrap(),
            ports: [(Protocol::Tcp, 80), (Protocol::Tcp, 32526)].into(),
        };
        assert_eq!(
            Value::Array(other_ports(&a)),
            json!([
                {"protocol": "TCP", "port": 1, "endPort": 52},
                {"protocol": "TCP", "port": 53},
                {"protocol": "TCP", "port": 54, "endPort": 79},
                {"protocol": "TCP", "port": 81, "endPort": 32525},
                {"protocol": "TCP", "port": 32527, "endPort": 65535},
                {"protocol": "UDP"},
                {"protocol": "SCTP"},
            ])
        );
    }
}
