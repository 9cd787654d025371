//! Tests of the generator's objects, engine by engine, on small clusters.

use serde_json::json;

use super::*;
use crate::manifest::parse;
use crate::target::Cloud;

fn cluster(text: &str) -> Cluster {
    let l = parse("t.yaml", text);
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    Cluster::build(l.objects)
}

const CLUSTER: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: kube-system}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: agent, namespace: kube-system, labels: {app: agent}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop, labels: {app: web}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: job, namespace: batch}\n";

const RULES: &str = "rules:\n- name: agent\n  subjects: [{namespace: kube-system, podSelector: {matchLabels: {app: agent}}}]\n  paths: [/metadata/instance]\n";

fn opts(engine: OutputEngine, rules: Option<&str>) -> GenerateOptions {
    GenerateOptions {
        engine,
        targets: Cloud::Azure.targets(),
        expected: rules.map(|r| AccessRules::parse(r).expect("rules parse")),
        rules_source: rules.map(|_| "rules.yaml".to_string()),
    }
}

fn names(g: &Generated) -> Vec<String> {
    g.objects
        .iter()
        .map(|o| {
            let m = &o["metadata"];
            match m["namespace"].as_str() {
                Some(ns) => format!(
                    "{}:{ns}/{}",
                    o["kind"].as_str().unwrap(),
                    m["name"].as_str().unwrap()
                ),
                None => format!(
                    "{}:{}",
                    o["kind"].as_str().unwrap(),
                    m["name"].as_str().unwrap()
                ),
            }
        })
        .collect()
}

#[test]
fn engines_parse_and_print() {
    for e in OutputEngine::ALL {
        assert_eq!(e.as_str().parse::<OutputEngine>().unwrap(), e);
    }
    assert!("iptables".parse::<OutputEngine>().is_err());
}

#[test]
fn networkpolicy_per_namespace_with_allows_first() {
    let c = cluster(CLUSTER);
    let g = generate(&c, &opts(OutputEngine::NetworkPolicy, Some(RULES)));
    assert_eq!(
        names(&g),
        [
            "NetworkPolicy:batch/imdsguard-deny-metadata",
            "NetworkPolicy:batch/imdsguard-deny-metadata-ipv6-sctp",
            "NetworkPolicy:kube-system/imdsguard-allow-metadata-agent",
            "NetworkPolicy:kube-system/imdsguard-deny-metadata",
            "NetworkPolicy:kube-system/imdsguard-deny-metadata-ipv6-sctp",
            "NetworkPolicy:shop/imdsguard-deny-metadata",
            "NetworkPolicy:shop/imdsguard-deny-metadata-ipv6-sctp",
        ]
    );
    assert!(
        g.warnings
            .iter()
            .any(|w| w.kind == WarningKind::ImplicitNamespace && w.message.contains("batch")),
        "{:?}",
        g.warnings
    );
    let deny = &g.objects[0];
    assert_eq!(deny["metadata"]["labels"][MANAGED_BY_LABEL], MANAGED_BY);
    assert_eq!(
        deny["metadata"]["annotations"][RULES_ANNOTATION],
        "rules.yaml"
    );
    assert_eq!(deny["spec"]["podSelector"], json!({}));
    assert_eq!(deny["spec"]["policyTypes"], json!(["Egress"]));
    let egress = deny["spec"]["egress"].as_array().unwrap();
    assert_eq!(
        egress[0],
        json!({"to": [
            {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["168.63.129.16/32", "169.254.169.254/32"]}},
        ]})
    );
    // Azure NPM (IPv4 only) rejects a whole policy with an IPv6 ipBlock, NPM on Windows
    // SCTP: the deny holds neither, its companion both.
    let text = serde_json::to_string(deny).unwrap();
    assert!(!text.contains("::/0") && !text.contains("SCTP"), "{text}");
    let extra = &g.objects[1];
    assert_eq!(extra["spec"]["podSelector"], deny["spec"]["podSelector"]);
    assert_eq!(
        extra["spec"]["egress"][0],
        json!({"to": [{"ipBlock": {"cidr": "::/0"}}]})
    );
    assert!(
        extra["spec"]["egress"]
            .as_array()
            .unwrap()
            .iter()
            .skip(1)
            .all(|r| r["ports"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["protocol"] == "SCTP")),
        "{extra}"
    );
    assert!(
        g.warnings
            .iter()
            .any(|w| w.kind == WarningKind::EngineLimit && w.message.contains("Windows")),
        "{:?}",
        g.warnings
    );
    let allow = &g.objects[2];
    assert_eq!(
        allow["spec"]["podSelector"],
        json!({"matchLabels": {"app": "agent"}})
    );
    // IMDS only: the rules are about IMDS, WireServer stays denied to every pod.
    assert_eq!(
        allow["spec"]["egress"],
        json!([
            {"to": [{"ipBlock": {"cidr": "169.254.169.254/32"}}], "ports": [{"protocol": "TCP", "port": 80}]},
        ])
    );
    assert_eq!(
        allow["metadata"]["annotations"][TARGETS_ANNOTATION],
        "169.254.169.254:80/TCP"
    );
}

#[test]
fn networkpolicy_never_cuts_node_local_dns_with_a_wide_except() {
    let c = cluster(CLUSTER);
    let g = generate(&c, &opts(OutputEngine::NetworkPolicy, None));
    let text = serde_json::to_string(&g.objects).unwrap();
    assert!(!text.contains("169.254.0.0/16"));
    assert!(text.contains("169.254.20.10/32"));
    assert!(text.contains("169.254.10.0/24"));
}

#[test]
fn cluster_scoped_engines_write_allow_then_deny() {
    let c = cluster(CLUSTER);
    let cnp = generate(&c, &opts(OutputEngine::Cnp, Some(RULES)));
    assert_eq!(
        names(&cnp),
        [
            "ClusterNetworkPolicy:imdsguard-allow-metadata-agent",
            "ClusterNetworkPolicy:imdsguard-deny-metadata"
        ]
    );
    assert_eq!(cnp.objects[0]["spec"]["priority"], 0);
    assert_eq!(cnp.objects[1]["spec"]["priority"], 1);
    assert_eq!(cnp.objects[1]["spec"]["tier"], "Admin");
    assert_eq!(cnp.objects[1]["spec"]["subject"], json!({"namespaces": {}}));
    assert_eq!(
        cnp.objects[1]["spec"]["egress"][1],
        json!({"name": "deny-169.254.169.254", "action": "Deny",
               "to": [{"networks": ["169.254.169.254/32"]}],
               "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]})
    );
    let anp = generate(&c, &opts(OutputEngine::Anp, Some(RULES)));
    assert_eq!(anp.objects[0]["spec"]["egress"][0]["action"], "Allow");
    assert_eq!(
        anp.objects[1]["spec"]["egress"][0]["ports"],
        json!([{"portNumber": {"protocol": "TCP", "port": 80}}, {"portNumber": {"protocol": "TCP", "port": 32526}}])
    );
}

#[test]
fn calico_tier_allow_deny_pass() {
    let c = cluster(CLUSTER);
    let g = generate(&c, &opts(OutputEngine::Calico, Some(RULES)));
    assert_eq!(
        names(&g),
        [
            "Tier:imdsguard",
            "GlobalNetworkPolicy:imdsguard.allow-metadata-agent",
            "GlobalNetworkPolicy:imdsguard.deny-metadata"
        ]
    );
    let allow = &g.objects[1]["spec"];
    assert_eq!(allow["selector"], "app == 'agent'");
    assert_eq!(
        allow["namespaceSelector"],
        "kubernetes.io/metadata.name in {'kube-system'}"
    );
    let deny = g.objects[2]["spec"]["egress"].as_array().unwrap();
    assert_eq!(deny.last().unwrap(), &json!({"action": "Pass"}));
    assert_eq!(
        deny[0],
        json!({"action": "Deny", "protocol": "TCP", "destination": {"nets": ["168.63.129.16/32"], "ports": [80, 32526]}})
    );
}

#[test]
fn cilium_selects_everyone_but_the_expected() {
    let c = cluster(CLUSTER);
    let g = generate(&c, &opts(OutputEngine::Cilium, Some(RULES)));
    assert_eq!(
        names(&g),
        [
            "CiliumClusterwideNetworkPolicy:imdsguard-allow-metadata-agent",
            "CiliumClusterwideNetworkPolicy:imdsguard-deny-metadata",
            "CiliumClusterwideNetworkPolicy:imdsguard-deny-metadata-0",
            "CiliumClusterwideNetworkPolicy:imdsguard-deny-metadata-1",
        ]
    );
    // The allow admits IMDS only: WireServer stays denied to every pod, the expected
    // ones included (the rules are about IMDS).
    assert_eq!(
        g.objects[0]["spec"]["egress"],
        json!([{"toCIDR": ["169.254.169.254/32"], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}])
    );
    assert_eq!(g.objects[1]["spec"]["endpointSelector"], json!({}));
    assert_eq!(
        g.objects[1]["spec"]["egressDeny"],
        json!([{"toCIDR": ["168.63.129.16/32"], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}, {"port": "32526", "protocol": "TCP"}]}]}])
    );
    // IMDS is denied to every pod but kube-system's app=agent, in two selections.
    assert_eq!(
        g.objects[2]["spec"]["endpointSelector"],
        json!({"matchExpressions": [{"key": "k8s:io.kubernetes.pod.namespace", "operator": "NotIn", "values": ["kube-system"]}]})
    );
    assert_eq!(
        g.objects[3]["spec"]["endpointSelector"],
        json!({"matchExpressions": [
            {"key": "app", "operator": "NotIn", "values": ["agent"]},
            {"key": "k8s:io.kubernetes.pod.namespace", "operator": "In", "values": ["kube-system"]},
        ]})
    );
    for o in &g.objects[2..] {
        assert_eq!(
            o["spec"]["egressDeny"],
            json!([{"toCIDR": ["169.254.169.254/32"], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}])
        );
    }
    assert!(
        g.objects
            .iter()
            .all(|o| o["spec"]["enableDefaultDeny"] == json!({"egress": false, "ingress": false}))
    );
    let none = generate(&c, &opts(OutputEngine::Cilium, None));
    assert_eq!(
        names(&none),
        ["CiliumClusterwideNetworkPolicy:imdsguard-deny-metadata"]
    );
    assert_eq!(none.objects[0]["spec"]["endpointSelector"], json!({}));
}

#[test]
fn reopening_policies_and_host_network_are_warned() {
    let text = format!(
        "{CLUSTER}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: open, namespace: shop}}\nspec:\n  podSelector: {{}}\n  egress: [{{}}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: proxy, namespace: kube-system}}\nspec: {{hostNetwork: true}}\n"
    );
    let c = cluster(&text);
    let g = generate(&c, &opts(OutputEngine::NetworkPolicy, Some(RULES)));
    let reopen: Vec<&GenerateWarning> = g
        .warnings
        .iter()
        .filter(|w| w.kind == WarningKind::ReopensTarget)
        .collect();
    // The pod, and a new pod of the namespace.
    assert_eq!(reopen.len(), 2, "{:?}", g.warnings);
    assert!(
        reopen[0].message.starts_with("shop/web[Pod] ")
            && reopen[0].message.contains("shop/open#egress[0]")
    );
    assert!(reopen[1].message.starts_with("shop/<new pod> "));
    assert!(
        g.warnings.iter().any(|w| w.kind == WarningKind::HostNetwork
            && w.message.contains("kube-system/proxy[Pod]")
            && w.message.contains(
                "`imdsguard agent run` in block or proxy mode covers them by their pods' cgroups"
            )),
        "{:?}",
        g.warnings
    );
}

#[test]
fn the_aks_preset_needs_few_cilium_policies() {
    let rules = AccessRules::parse(crate::presets::preset("aks").unwrap()).unwrap();
    let c = cluster(CLUSTER);
    let g = generate(
        &c,
        &GenerateOptions {
            engine: OutputEngine::Cilium,
            targets: Cloud::Azure.targets(),
            expected: Some(rules),
            rules_source: Some("preset aks".into()),
        },
    );
    // Subjects that share label keys merge: 5 deny policies of IMDS for the pods that
    // are not AKS add-ons, and one of WireServer for every pod.
    let denies = g
        .objects
        .iter()
        .filter(|o| !o["spec"]["egressDeny"].is_null())
        .count();
    assert_eq!(denies, 6);
}

#[test]
fn exceptions_cover_azure_imds_only() {
    let c = cluster(CLUSTER);
    for engine in OutputEngine::ALL {
        let g = generate(&c, &opts(engine, Some(RULES)));
        let text = serde_json::to_string(&g.objects).unwrap();
        // Every allow names IMDS, never WireServer.
        for o in &g.objects {
            let name = o["metadata"]["name"].as_str().unwrap();
            if name.contains("allow-metadata") {
                let spec = o["spec"].to_string();
                assert!(spec.contains("169.254.169.254"), "{engine}: {o}");
                assert!(!spec.contains("168.63.129.16"), "{engine}: {o}");
            }
        }
        assert!(text.contains("168.63.129.16"), "{engine}");
        // Rules but no IMDS target: no exception, and a warning.
        let mut o = opts(engine, Some(RULES));
        o.targets = vec!["168.63.129.16:80".parse().unwrap()];
        let g = generate(&c, &o);
        assert!(
            g.objects
                .iter()
                .all(|o| !o["metadata"]["name"].as_str().unwrap().contains("allow")),
            "{engine}: {:?}",
            names(&g)
        );
        assert!(
            g.warnings
                .iter()
                .any(|w| w.kind == WarningKind::NoExpectedTarget),
            "{engine}: {:?}",
            g.warnings
        );
    }
}

#[test]
fn colliding_and_long_rule_names_get_distinct_object_names() {
    let long = "a-very-long-rule-name-that-goes-past-forty-characters";
    let rules = format!(
        "rules:\n- name: team.a\n  subjects: [{{namespace: shop}}]\n  paths: [/metadata/instance]\n- name: team-a\n  subjects: [{{namespace: shop}}]\n  paths: [/metadata/instance]\n- name: Team_A\n  subjects: [{{namespace: shop}}]\n  paths: [/metadata/instance]\n- name: {long}-1\n  subjects: [{{namespace: shop}}]\n  paths: [/metadata/instance]\n- name: {long}-2\n  subjects: [{{namespace: shop}}]\n  paths: [/metadata/instance]\n- name: plain\n  subjects: [{{namespace: shop}}]\n  paths: [/metadata/instance]\n"
    );
    let c = cluster(CLUSTER);
    for engine in OutputEngine::ALL {
        let g = generate(&c, &opts(engine, Some(&rules)));
        let names = names(&g);
        let unique: BTreeSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{engine}: {names:?}");
        let allows: Vec<&String> = names
            .iter()
            .filter(|n| n.contains("allow-metadata-"))
            .collect();
        assert!(allows.len() >= 6, "{engine}: {names:?}");
        // A name that collides with nothing and is short stays as it was.
        assert!(
            names.iter().any(|n| n.ends_with("allow-metadata-plain")),
            "{engine}: {names:?}"
        );
        for o in &g.objects {
            let name = o["metadata"]["name"].as_str().unwrap();
            assert!(name.len() <= 253, "{name}");
        }
    }
    let labels = unique_labels(["team.a", "team-a", "Team_A", "plain"].into_iter());
    assert!(labels["team.a"].starts_with("team-a-") && labels["team.a"].len() == 13);
    assert_ne!(labels["team.a"], labels["team-a"]);
    assert_ne!(labels["team-a"], labels["Team_A"]);
    assert_eq!(labels["plain"], "plain");
    // Stable across runs.
    assert_eq!(
        unique_labels(["team.a", "team-a"].into_iter())["team.a"],
        labels["team.a"]
    );
}

#[test]
fn cilium_output_always_names_its_minimum_version_and_preflight_check() {
    let c = cluster(CLUSTER);
    for rules in [None, Some(RULES)] {
        let g = generate(&c, &opts(OutputEngine::Cilium, rules));
        assert!(
            g.warnings.iter().any(|w| w.kind == WarningKind::EngineLimit
                && w.message.contains("Cilium 1.16")
                && w.message.contains(
                    "kubectl explain ciliumclusterwidenetworkpolicy.spec.enableDefaultDeny"
                )),
            "{:?}",
            g.warnings
        );
    }
}

#[test]
fn networkpolicy_output_on_a_cilium_cluster_suggests_engine_cilium() {
    let plain = generate(&cluster(CLUSTER), &opts(OutputEngine::NetworkPolicy, None));
    let has = |g: &Generated| {
        g.warnings.iter().any(|w| {
            w.kind == WarningKind::EngineLimit && w.message.contains("use --engine cilium")
        })
    };
    assert!(!has(&plain), "{:?}", plain.warnings);
    let cnp = "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  endpointSelector: {}\n  egress:\n  - toEntities: [world]\n";
    let c = cluster(&format!("{CLUSTER}{cnp}"));
    let g = generate(&c, &opts(OutputEngine::NetworkPolicy, None));
    assert!(has(&g), "{:?}", g.warnings);
}

/// An Admin-tier policy accepting everything for namespace `shop` at `priority`.
fn admin_open_shop(engine: OutputEngine, priority: u32) -> String {
    let (api, kind, tier, action) = if engine == OutputEngine::Cnp {
        (
            "v1alpha2",
            "ClusterNetworkPolicy",
            "tier: Admin\n  ",
            "Accept",
        )
    } else {
        ("v1alpha1", "AdminNetworkPolicy", "", "Allow")
    };
    format!(
        "{CLUSTER}---\napiVersion: policy.networking.k8s.io/{api}\nkind: {kind}\nmetadata: {{name: open-shop}}\nspec:\n  {tier}priority: {priority}\n  subject: {{namespaces: {{matchLabels: {{kubernetes.io/metadata.name: shop}}}}}}\n  egress: [{{name: open, action: {action}, to: [{{networks: [0.0.0.0/0]}}]}}]\n"
    )
}

fn warnings_of(g: &Generated, kind: WarningKind) -> Vec<&str> {
    g.warnings
        .iter()
        .filter(|w| w.kind == kind)
        .map(|w| w.message.as_str())
        .collect()
}

/// An existing Admin-tier policy at priority 3 that accepts everything for `shop`:
/// the generated objects take the numbers below it (0 and 1), so the deny comes first
/// and nothing is re-opened; at priority 0 there is no room: the generated objects skip
/// its number (no tie), and both the placement and the re-opened targets are warned,
/// naming it.
#[test]
fn admin_priorities_go_below_existing_admin_policies() {
    for engine in [OutputEngine::Cnp, OutputEngine::Anp] {
        let c = cluster(&admin_open_shop(engine, 3));
        let g = generate(&c, &opts(engine, Some(RULES)));
        let prios: Vec<&Value> = g.objects.iter().map(|o| &o["spec"]["priority"]).collect();
        assert_eq!(prios, [&json!(0), &json!(1)], "{engine}");
        assert!(
            warnings_of(&g, WarningKind::EngineLimit).is_empty(),
            "{engine}: {:?}",
            g.warnings
        );
        assert!(
            warnings_of(&g, WarningKind::ReopensTarget).is_empty(),
            "{engine}: {:?}",
            g.warnings
        );

        let c = cluster(&admin_open_shop(engine, 0));
        let g = generate(&c, &opts(engine, Some(RULES)));
        let prios: Vec<&Value> = g.objects.iter().map(|o| &o["spec"]["priority"]).collect();
        assert_eq!(prios, [&json!(1), &json!(2)], "{engine}");
        let kind = engine.policy_kind();
        let limit = warnings_of(&g, WarningKind::EngineLimit);
        assert!(
            limit
                .iter()
                .any(|m| m.contains(&format!("{kind}/open-shop (priority 0)"))),
            "{engine}: {:?}",
            g.warnings
        );
        let reopens = warnings_of(&g, WarningKind::ReopensTarget);
        // shop/web and a new pod in shop.
        assert_eq!(reopens.len(), 2, "{engine}: {:?}", g.warnings);
        for m in reopens {
            assert!(
                m.starts_with("shop/")
                    && m.contains("169.254.169.254:80/TCP")
                    && m.contains(&format!("{kind}/open-shop"))
                    && m.contains("admin tier"),
                "{engine}: {m}"
            );
        }
    }
}

/// A Calico tier `early` with order `order` whose policy allows everything for `shop`.
fn calico_open_shop(order: &str) -> String {
    format!(
        "{CLUSTER}---\napiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {{name: early}}\nspec: {{order: {order}}}\n---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: early.open}}\nspec:\n  tier: early\n  order: 1\n  namespaceSelector: kubernetes.io/metadata.name == 'shop'\n  selector: all()\n  types: [Egress]\n  egress: [{{action: Allow, destination: {{nets: [0.0.0.0/0]}}}}]\n"
    )
}

/// An existing tier at order 50 that allows everything for `shop`: the imdsguard tier
/// goes before it (25) and nothing is re-opened; at order 0 there is no room: the
/// placement and the re-opened targets are warned, naming the tier and the policy.
#[test]
fn calico_tier_goes_before_existing_tiers() {
    let c = cluster(&calico_open_shop("50"));
    let g = generate(&c, &opts(OutputEngine::Calico, Some(RULES)));
    assert_eq!(g.objects[0]["kind"], "Tier");
    assert_eq!(g.objects[0]["spec"]["order"], json!(25));
    assert!(
        warnings_of(&g, WarningKind::ReopensTarget).is_empty(),
        "{:?}",
        g.warnings
    );
    assert!(
        warnings_of(&g, WarningKind::EngineLimit).is_empty(),
        "{:?}",
        g.warnings
    );
    // Fractional orders: below 1.5 is 0.75.
    let g = generate(
        &cluster(&calico_open_shop("1.5")),
        &opts(OutputEngine::Calico, Some(RULES)),
    );
    assert_eq!(g.objects[0]["spec"]["order"], json!(0.75));
    // No existing tier, or none before 100: 100.
    let g = generate(&cluster(CLUSTER), &opts(OutputEngine::Calico, Some(RULES)));
    assert_eq!(g.objects[0]["spec"]["order"], json!(100));

    let g = generate(
        &cluster(&calico_open_shop("0")),
        &opts(OutputEngine::Calico, Some(RULES)),
    );
    assert_eq!(g.objects[0]["spec"]["order"], json!(0));
    let limit = warnings_of(&g, WarningKind::EngineLimit);
    assert!(
        limit.iter().any(|m| m.contains("Tier/early (order 0)")),
        "{:?}",
        g.warnings
    );
    let reopens = warnings_of(&g, WarningKind::ReopensTarget);
    assert_eq!(reopens.len(), 2, "{:?}", g.warnings);
    for m in reopens {
        assert!(
            m.starts_with("shop/")
                && m.contains("169.254.169.254:80/TCP")
                && m.contains("GlobalNetworkPolicy/early.open")
                && m.contains("calico:early tier"),
            "{m}"
        );
    }
}

/// Cilium output: an existing policy cannot re-open a target (a deny beats every
/// allow), so the same open-everything policy gives no reopens-target warning.
#[test]
fn cilium_output_is_not_reopened_by_an_allow() {
    let text = format!(
        "{CLUSTER}---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: open, namespace: shop}}\nspec:\n  endpointSelector: {{}}\n  egress: [{{toCIDR: [0.0.0.0/0]}}]\n"
    );
    let g = generate(&cluster(&text), &opts(OutputEngine::Cilium, Some(RULES)));
    assert!(
        warnings_of(&g, WarningKind::ReopensTarget).is_empty(),
        "{:?}",
        g.warnings
    );
}
