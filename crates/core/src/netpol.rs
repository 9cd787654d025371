//! Egress semantics of networking.k8s.io/v1 NetworkPolicy toward an address outside the
//! cluster: which policies isolate a pod, and which rule (if any) allows a target.
//!
//! Policies add up: a pod is egress-isolated when at least one Egress-typed policy of
//! its namespace selects it; then a target is allowed when any rule of any of those
//! policies admits it. Selector peers never match an external address; named ports never
//! match one either (they resolve on a destination pod).

use std::net::IpAddr;

use serde::Serialize;

use crate::cluster::Cluster;
use crate::engine::Destination;
use crate::model::{EgressRule, NetworkPolicy, Peer, PortSpec};
use crate::target::Target;

/// How an engine departs from the API's NetworkPolicy semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetpolOptions {
    /// `endPort` is ignored: a range admits its start port only (Azure NPM,
    /// <https://github.com/Azure/AKS/issues/2857>).
    pub ignore_end_port: bool,
    /// An ipBlock matches pod addresses too (the upstream e2e tests expect it; Cilium and
    /// netpol-analyzer do not). Only read for pod destinations.
    pub ip_block_matches_pods: bool,
    /// How the engine reads an ipBlock CIDR written in IPv4-mapped IPv6 form
    /// (`::ffff:169.254.169.254/128`, `::ffff:0:0/96`).
    pub mapped: MappedCidrs,
}

impl Default for NetpolOptions {
    fn default() -> Self {
        NetpolOptions {
            ignore_end_port: false,
            ip_block_matches_pods: true,
            mapped: MappedCidrs::Unknown,
        }
    }
}

/// How an engine reads a CIDR written in IPv4-mapped IPv6 form (`::ffff:a.b.c.d/N`,
/// N >= 96) when it decides an IPv4 packet. Kubernetes accepts such ipBlocks (with a
/// warning; refused for new objects only under the `StrictIPCIDRValidation` gate of
/// KEP-4858), and engines differ (docs/audit.md, "IPv4-mapped CIDRs").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MappedCidrs {
    /// As the IPv4 prefix it maps (`::ffff:169.254.169.254/128` is 169.254.169.254/32,
    /// `::ffff:0:0/96` is 0.0.0.0/0): Go's `net.ParseCIDR` and `IPNet.Contains`, used by
    /// kube-network-policies and Calico (libcalico-go's `IPNet.Version()` is 4 for it).
    AsIpv4,
    /// As an IPv6 prefix, which no IPv4 packet matches: Go's `netip.ParsePrefix`, used by
    /// Cilium (`labels.IPStringToLabel`).
    AsIpv6,
    /// Not known for this engine: read so that no access is hidden. A CIDR that grants
    /// access when it matches (an ipBlock's `cidr`) matches as [`MappedCidrs::AsIpv4`];
    /// one that withholds access when it matches (an `except`) matches nothing IPv4, so
    /// an except written in mapped form is never reported as blocking IPv4.
    #[default]
    Unknown,
}

/// The IPv4 prefix a CIDR written in IPv4-mapped IPv6 form stands for, as Go's `net`
/// package reads it: an IPv6 prefix of length >= 96 whose network lies in
/// `::ffff:0:0/96` is the IPv4 prefix of its last 32 bits with length - 96. Any other
/// prefix is returned as it is (host bits cleared for the mapped ones only).
pub fn fold_mapped_net(net: ipnet::IpNet) -> ipnet::IpNet {
    match net {
        ipnet::IpNet::V6(n) if n.prefix_len() >= 96 => match n.network().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, n.prefix_len() - 96)
                .map(|v| ipnet::IpNet::V4(v.trunc()))
                .unwrap_or(net),
            None => net,
        },
        _ => net,
    }
}

/// Whether a CIDR is written in IPv4-mapped IPv6 form ([`fold_mapped_net`] changes it).
pub fn is_mapped_net(net: &ipnet::IpNet) -> bool {
    fold_mapped_net(*net) != *net
}

/// Whether `net` contains `ip` (folded by [`crate::target::canonical_ip`]) as an engine
/// reading mapped CIDRs as `mapped` sees it; `grants`: a match grants access (an
/// ipBlock's `cidr`, an allow rule's peer) rather than withholding it (an `except`, a
/// deny), which decides [`MappedCidrs::Unknown`]. Families never mix otherwise: an IPv4
/// CIDR never contains an IPv6 address, nor `::/0` an IPv4 one.
pub fn net_contains(net: &ipnet::IpNet, ip: IpAddr, mapped: MappedCidrs, grants: bool) -> bool {
    let ip = crate::target::canonical_ip(ip);
    let folded = fold_mapped_net(*net);
    if folded == *net {
        return net.contains(&ip);
    }
    match mapped {
        MappedCidrs::AsIpv4 => folded.contains(&ip),
        MappedCidrs::AsIpv6 => net.contains(&ip),
        MappedCidrs::Unknown => grants && folded.contains(&ip),
    }
}

/// A policy and the index of one of its egress rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleRef {
    /// Index into [`Cluster::policies`].
    pub policy: usize,
    /// Index into that policy's `spec.egress`.
    pub rule: usize,
}

/// What NetworkPolicy says about one pod shape and one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No Egress-typed policy selects the pod: all egress is allowed. `ingress_only`
    /// lists the policies that select it but do not restrict egress.
    NotIsolated {
        /// Selecting policies whose types lack Egress (their egress rules are ignored).
        ingress_only: Vec<usize>,
    },
    /// Isolated, and these rules admit the target.
    Allowed {
        /// The policies that isolate the pod.
        isolating: Vec<usize>,
        /// Every rule that admits the target.
        by: Vec<RuleRef>,
    },
    /// Isolated, and no rule of the isolating policies admits the target.
    Denied {
        /// The policies that isolate the pod.
        isolating: Vec<usize>,
    },
}

impl Decision {
    /// Whether the target is allowed.
    pub fn allowed(&self) -> bool {
        !matches!(self, Decision::Denied { .. })
    }
}

/// Whether an ipBlock peer contains the address, CIDRs in IPv4-mapped form read as
/// IPv6 prefixes ([`MappedCidrs::AsIpv6`], Cilium's reading).
pub fn ip_block_contains(cidr: &ipnet::IpNet, except: &[ipnet::IpNet], ip: IpAddr) -> bool {
    ip_block_contains_with(cidr, except, ip, MappedCidrs::AsIpv6)
}

/// Whether an ipBlock peer contains the address, CIDRs in IPv4-mapped form read as
/// `mapped` says ([`net_contains`]: the `cidr` grants, the excepts withhold).
pub fn ip_block_contains_with(
    cidr: &ipnet::IpNet,
    except: &[ipnet::IpNet],
    ip: IpAddr,
    mapped: MappedCidrs,
) -> bool {
    net_contains(cidr, ip, mapped, true)
        && !except.iter().any(|e| net_contains(e, ip, mapped, false))
}

/// Whether an egress rule admits an external target.
pub fn rule_allows(rule: &EgressRule, target: &Target) -> bool {
    rule_allows_with(rule, target, NetpolOptions::default())
}

/// [`rule_allows`] with an engine's options.
pub fn rule_allows_with(rule: &EgressRule, target: &Target, opts: NetpolOptions) -> bool {
    let port_ok = rule.ports.is_empty()
        || rule
            .ports
            .iter()
            .any(|p| p.matches_with(target.protocol, target.port, opts.ignore_end_port));
    if !port_ok {
        return false;
    }
    rule.to.is_empty()
        || rule.to.iter().any(|peer| match peer {
            Peer::IpBlock { cidr, except } => {
                ip_block_contains_with(cidr, except, target.ip, opts.mapped)
            }
            Peer::Selector { .. } => false,
        })
}

/// Whether an egress rule of a policy of namespace `policy_ns` admits a destination:
/// an external one as [`rule_allows_with`]; a pod by its selectors (a `podSelector`-only
/// peer means the policy's own namespace), its named ports, and by ipBlock when
/// `opts.ip_block_matches_pods`; a node by ipBlock only.
pub fn rule_admits(
    rule: &EgressRule,
    policy_ns: &str,
    dst: &Destination,
    opts: NetpolOptions,
) -> bool {
    let (namespace, labels, ns_labels, named_ports) = match dst {
        Destination::External(t) => return rule_allows_with(rule, t, opts),
        Destination::Pod {
            namespace,
            labels,
            ns_labels,
            named_ports,
            ..
        } => (
            Some(namespace.as_str()),
            Some(labels),
            Some(ns_labels),
            &named_ports[..],
        ),
        Destination::Node { .. } => (None, None, None, &[][..]),
    };
    let (protocol, port) = dst.protocol_port();
    let port_ok = rule.ports.is_empty()
        || rule.ports.iter().any(|p| match &p.port {
            Some(PortSpec::Named(name)) => {
                p.protocol == protocol
                    && named_ports
                        .iter()
                        .any(|(n, pr, num)| n == name && *pr == protocol && *num == port)
            }
            _ => p.matches_with(protocol, port, opts.ignore_end_port),
        });
    if !port_ok {
        return false;
    }
    let ip = dst.ip();
    let is_pod = namespace.is_some();
    rule.to.is_empty()
        || rule.to.iter().any(|peer| match peer {
            Peer::IpBlock { cidr, except } => {
                (!is_pod || opts.ip_block_matches_pods)
                    && ip.is_some_and(|ip| ip_block_contains_with(cidr, except, ip, opts.mapped))
            }
            Peer::Selector {
                namespace_selector,
                pod_selector,
            } => match (namespace, labels, ns_labels) {
                (Some(ns), Some(labels), Some(ns_labels)) => {
                    let ns_ok = match namespace_selector {
                        Some(sel) => sel.matches(ns_labels),
                        None => ns == policy_ns,
                    };
                    ns_ok
                        && (namespace_selector.is_some() || pod_selector.is_some())
                        && pod_selector.as_ref().is_none_or(|s| s.matches(labels))
                }
                _ => false,
            },
        })
}

/// The rules of a policy that admit the target.
pub fn allowing_rules(policy: &NetworkPolicy, target: &Target) -> impl Iterator<Item = usize> {
    policy
        .egress
        .iter()
        .enumerate()
        .filter(move |(_, r)| rule_allows(r, target))
        .map(|(i, _)| i)
}

/// Decides a target for a pod selected by `selecting` (indexes of the policies of its
/// namespace whose podSelector matches it, as [`Cluster::selecting`] gives them).
pub fn decide(cluster: &Cluster, selecting: &[usize], target: &Target) -> Decision {
    decide_dst(
        cluster,
        selecting,
        &Destination::External(*target),
        NetpolOptions::default(),
    )
}

/// [`decide`] for any destination, with an engine's options.
pub fn decide_dst(
    cluster: &Cluster,
    selecting: &[usize],
    dst: &Destination,
    opts: NetpolOptions,
) -> Decision {
    let isolating: Vec<usize> = selecting
        .iter()
        .copied()
        .filter(|&i| cluster.policies[i].egress_type)
        .collect();
    if isolating.is_empty() {
        return Decision::NotIsolated {
            ingress_only: selecting.to_vec(),
        };
    }
    let by: Vec<RuleRef> = isolating
        .iter()
        .flat_map(|&policy| {
            let p = &cluster.policies[policy];
            p.egress
                .iter()
                .enumerate()
                .filter(move |(_, r)| rule_admits(r, &p.namespace, dst, opts))
                .map(move |(rule, _)| RuleRef { policy, rule })
        })
        .collect();
    if by.is_empty() {
        Decision::Denied { isolating }
    } else {
        Decision::Allowed { isolating, by }
    }
}

/// Why, in words, with the policies that decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// One sentence (naming at most the listing limit of policies and rules of each kind,
    /// then "and N more").
    pub reason: String,
    /// `namespace/name` of the deciding policies (the first ones, up to the limit).
    pub policies: Vec<String>,
    /// How many policies decided it (`policies` may list fewer).
    pub policy_count: usize,
    /// The deciding rules, as `namespace/name#egress[i]` (the first ones, up to the limit).
    pub rules: Vec<String>,
    /// How many rules decided it (`rules` may list fewer).
    pub rule_count: usize,
}

/// The first `limit` (all when `None`) of `items`, named.
pub fn first_names<T>(
    items: &[T],
    limit: Option<usize>,
    name: impl Fn(&T) -> String,
) -> Vec<String> {
    items
        .iter()
        .take(limit.unwrap_or(usize::MAX))
        .map(name)
        .collect()
}

/// `a, b, c` or, when `total` is more than listed, `a, b, c and 5 more`.
pub fn join_names(shown: &[String], total: usize) -> String {
    let list = shown.join(", ");
    match total.saturating_sub(shown.len()) {
        0 => list,
        more => format!("{list} and {more} more"),
    }
}

/// Explains a decision, naming at most `limit` policies and rules of each kind (all of
/// them when `None`), so that the text stays bounded when hundreds of policies select
/// the same pods.
pub fn explain(cluster: &Cluster, decision: &Decision, limit: Option<usize>) -> Explanation {
    let id = |&i: &usize| cluster.policies[i].id();
    match decision {
        Decision::NotIsolated { ingress_only } if ingress_only.is_empty() => Explanation {
            reason: "no NetworkPolicy with an Egress type selects it: all egress is allowed".into(),
            policies: vec![],
            policy_count: 0,
            rules: vec![],
            rule_count: 0,
        },
        Decision::NotIsolated { ingress_only } => {
            let names = first_names(ingress_only, limit, id);
            Explanation {
                reason: format!(
                    "selected only by policies without the Egress type ({}): egress is not restricted",
                    join_names(&names, ingress_only.len())
                ),
                policies: names,
                policy_count: ingress_only.len(),
                rules: vec![],
                rule_count: 0,
            }
        }
        Decision::Allowed { by, isolating } => {
            // `by` is grouped by policy, in the order of `isolating`.
            let mut allowing: Vec<usize> = by.iter().map(|r| r.policy).collect();
            allowing.dedup();
            let policies = first_names(&allowing, limit, id);
            let rules = first_names(by, limit, |r| {
                format!("{}#egress[{}]", cluster.policies[r.policy].id(), r.rule)
            });
            let mut sorted = allowing.clone();
            sorted.sort_unstable();
            let others: Vec<usize> = isolating
                .iter()
                .copied()
                .filter(|i| sorted.binary_search(i).is_err())
                .collect();
            let mut reason = format!("allowed by {}", join_names(&rules, by.len()));
            if !others.is_empty() {
                let names = first_names(&others, limit, id);
                reason.push_str(&format!(
                    "; policies add up, so the isolation by {} does not block it",
                    join_names(&names, others.len())
                ));
            }
            Explanation {
                reason,
                policy_count: allowing.len(),
                policies,
                rule_count: by.len(),
                rules,
            }
        }
        Decision::Denied { isolating } => {
            let names = first_names(isolating, limit, id);
            Explanation {
                reason: format!(
                    "egress-isolated by {} and none of their egress rules admits it",
                    join_names(&names, isolating.len())
                ),
                policies: names,
                policy_count: isolating.len(),
                rules: vec![],
                rule_count: 0,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse;
    use crate::model::Labels;

    const IMDS: &str = "169.254.169.254:80/TCP";

    fn cluster(policies: &str) -> Cluster {
        let l = parse("p.yaml", policies);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        Cluster::build(l.objects)
    }

    fn allowed(c: &Cluster, labels: &[(&str, &str)], target: &str) -> bool {
        let labels: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let sel = c.selecting("default", &labels);
        decide(c, &sel, &target.parse().unwrap()).allowed()
    }

    fn np(name: &str, body: &str) -> String {
        format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n{body}"
        )
    }

    #[test]
    fn no_policy_allows_all() {
        let c = cluster("apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n");
        assert!(allowed(&c, &[], IMDS));
    }

    #[test]
    fn ingress_only_does_not_restrict_egress() {
        let c = cluster(&np(
            "a",
            "  podSelector: {}\n  policyTypes: [Ingress]\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/8}}]\n",
        ));
        assert!(allowed(&c, &[], IMDS));
        let c = cluster(&np("a", "  podSelector: {}\n"));
        assert!(allowed(&c, &[], IMDS), "podSelector alone is ingress-only");
    }

    #[test]
    fn deny_all_and_allow_all() {
        let c = cluster(&np("a", "  podSelector: {}\n  policyTypes: [Egress]\n"));
        assert!(!allowed(&c, &[], IMDS));
        let c = cluster(&np(
            "a",
            "  podSelector: {}\n  policyTypes: [Egress]\n  egress: []\n",
        ));
        assert!(!allowed(&c, &[], IMDS));
        let c = cluster(&np("a", "  podSelector: {}\n  egress: [{}]\n"));
        assert!(allowed(&c, &[], IMDS));
    }

    #[test]
    fn except_and_additivity() {
        let deny = np(
            "deny",
            "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [169.254.169.254/32]}}]\n",
        );
        let c = cluster(&deny);
        assert!(!allowed(&c, &[], IMDS));
        assert!(allowed(&c, &[], "8.8.8.8:443/TCP"));
        assert!(
            !allowed(&c, &[], "169.254.169.254:53/UDP"),
            "except covers every port"
        );
        assert!(allowed(&c, &[], "169.254.169.253:80/TCP"));
        let reopen = np(
            "linklocal",
            "  podSelector: {matchLabels: {app: web}}\n  egress:\n  - to: [{ipBlock: {cidr: 169.254.0.0/16}}]\n    ports: [{port: 80}]\n",
        );
        let c = cluster(&format!("{deny}{reopen}"));
        assert!(allowed(&c, &[("app", "web")], IMDS));
        assert!(!allowed(&c, &[("app", "db")], IMDS));
        assert!(!allowed(&c, &[("app", "web")], "169.254.169.254:81/TCP"));
    }

    #[test]
    fn ports_protocols_ranges_named_and_selectors() {
        let c = cluster(&np(
            "p",
            "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - ports: [{port: 53, protocol: UDP}, {port: 32000, endPort: 32768}, {port: http}, {protocol: SCTP}]\n  - to: [{podSelector: {}}, {namespaceSelector: {}}]\n",
        ));
        assert!(allowed(&c, &[], "1.1.1.1:53/UDP"));
        assert!(!allowed(&c, &[], "1.1.1.1:53/TCP"));
        assert!(allowed(&c, &[], "168.63.129.16:32526/TCP"));
        assert!(
            !allowed(&c, &[], IMDS),
            "named port and selector peers never match"
        );
        assert!(allowed(&c, &[], "1.1.1.1:9/SCTP"));
    }

    #[test]
    fn ipv6_blocks_do_not_match_ipv4() {
        let c = cluster(&np(
            "v6",
            "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: '::/0', except: ['fd00:ec2::254/128']}}]\n",
        ));
        assert!(!allowed(&c, &[], IMDS));
        assert!(!allowed(&c, &[], "[fd00:ec2::254]:80/TCP"));
        assert!(allowed(&c, &[], "[fd00:ec2::1]:80/TCP"));
    }

    #[test]
    fn explanation_names_rules_and_additivity() {
        let text = format!(
            "{}{}",
            np("deny", "  podSelector: {}\n  policyTypes: [Egress]\n"),
            np(
                "open",
                "  podSelector: {}\n  egress: [{ports: [{port: 80}]}, {}]\n"
            )
        );
        let c = cluster(&text);
        let sel = c.selecting("default", &Labels::new());
        let t: Target = IMDS.parse().unwrap();
        let d = decide(&c, &sel, &t);
        let e = explain(&c, &d, None);
        assert_eq!((e.policy_count, e.rule_count), (1, 2));
        assert_eq!(e.policies, ["default/open"]);
        assert_eq!(
            e.rules,
            ["default/open#egress[0]", "default/open#egress[1]"]
        );
        assert!(e.reason.contains("default/deny"), "{}", e.reason);
        let e = explain(&c, &d, Some(1));
        assert_eq!(e.rules, ["default/open#egress[0]"]);
        assert_eq!(e.rule_count, 2);
        assert!(
            e.reason
                .starts_with("allowed by default/open#egress[0] and 1 more; policies add up"),
            "{}",
            e.reason
        );
    }

    /// How each reading of an IPv4-mapped CIDR decides IPv4 and IPv6 addresses: Go's
    /// net.IPNet.Contains (kube-network-policies' evaluateIPBlocks, libcalico-go) folds a
    /// mapped prefix of length >= 96 into IPv4; netip (Cilium) keeps it IPv6; the
    /// unknown reading lets a granting CIDR match and an excepting one match nothing.
    #[test]
    fn mapped_cidrs_per_reading() {
        use MappedCidrs::{AsIpv4, AsIpv6, Unknown};
        let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            fold_mapped_net(net("::ffff:169.254.169.254/128")),
            net("169.254.169.254/32")
        );
        assert_eq!(fold_mapped_net(net("::ffff:0:0/96")), net("0.0.0.0/0"));
        assert_eq!(
            fold_mapped_net(net("::ffff:a9fe:0/112")),
            net("169.254.0.0/16")
        );
        // Host bits are cleared as Go's ParseCIDR does.
        assert_eq!(
            fold_mapped_net(net("::ffff:169.254.169.254/104")),
            net("169.0.0.0/8")
        );
        for not_mapped in [
            "::/0",
            "::/64",
            "::ffff:0:0/95",
            "64:ff9b::/96",
            "fd00:ec2::254/128",
        ] {
            assert!(!is_mapped_net(&net(not_mapped)), "{not_mapped}");
        }
        for (cidr, addr, grants, as4, as6, unknown) in [
            // A mapped /128 is IMDS for Go's net package only.
            (
                "::ffff:169.254.169.254/128",
                "169.254.169.254",
                true,
                true,
                false,
                true,
            ),
            (
                "::ffff:169.254.169.254/128",
                "169.254.169.254",
                false,
                true,
                false,
                false,
            ),
            (
                "::ffff:169.254.169.254/128",
                "::ffff:169.254.169.254",
                false,
                true,
                false,
                false,
            ),
            ("::ffff:0:0/96", "169.254.170.23", false, true, false, false),
            ("::ffff:0:0/96", "10.0.0.1", true, true, false, true),
            (
                "::ffff:169.254.169.254/128",
                "169.254.169.253",
                true,
                false,
                false,
                false,
            ),
            // Never an IPv6 address, nor an IPv4 one from an IPv6 prefix below /96.
            ("::ffff:0:0/96", "fd00:ec2::254", true, false, false, false),
            ("::/0", "169.254.169.254", true, false, false, false),
            ("::/0", "fd00:ec2::254", true, true, true, true),
            ("0.0.0.0/0", "fd00:ec2::254", true, false, false, false),
            (
                "0.0.0.0/0",
                "::ffff:169.254.169.254",
                true,
                true,
                true,
                true,
            ),
            ("fd00::/8", "fd00:ec2::254", false, true, true, true),
            ("fd00::/16", "fd20:ce::254", false, false, false, false),
        ] {
            for (reading, want) in [(AsIpv4, as4), (AsIpv6, as6), (Unknown, unknown)] {
                assert_eq!(
                    net_contains(&net(cidr), ip(addr), reading, grants),
                    want,
                    "{cidr} {addr} grants={grants} {reading:?}"
                );
            }
        }
        // An ipBlock: 0.0.0.0/0 except the mapped IMDS.
        let cidr = net("0.0.0.0/0");
        let except = [net("::ffff:169.254.169.254/128")];
        let imds = ip("169.254.169.254");
        assert!(!ip_block_contains_with(&cidr, &except, imds, AsIpv4));
        assert!(ip_block_contains_with(&cidr, &except, imds, AsIpv6));
        assert!(ip_block_contains_with(&cidr, &except, imds, Unknown));
        // And `::/0` except fd00:ec2::254/128: exact on IPv6, nothing IPv4.
        let (cidr, except) = (net("::/0"), [net("fd00:ec2::254/128")]);
        for reading in [AsIpv4, AsIpv6, Unknown] {
            assert!(!ip_block_contains_with(
                &cidr,
                &except,
                ip("fd00:ec2::254"),
                reading
            ));
            assert!(ip_block_contains_with(
                &cidr,
                &except,
                ip("fd00:ec2::23"),
                reading
            ));
            assert!(!ip_block_contains_with(&cidr, &except, imds, reading));
        }
    }
}
