//! The closed loop: audit the cluster plus the generated objects with the engine that
//! enforces them (`engine::Prepared::decide`, the audit's one composition): exactly the
//! expected pods reach the targets, and every other (pod, destination, port) of a
//! sample keeps the verdict it had before: pods, nodes, node-local DNS, Azure DNS and
//! external addresses, on the bundled example and on synthetic clusters.

use serde_json::json;

use super::*;
use crate::engine::{Destination, Engine, EngineSettings, Prepared, Source};
use crate::manifest::parse;
use crate::model::{Labels, Object};
use crate::target::Cloud;

const EXAMPLE: [&str; 8] = [
    include_str!("../../../../examples/aks-imds/00-namespaces.yaml"),
    include_str!("../../../../examples/aks-imds/10-kube-system.yaml"),
    include_str!("../../../../examples/aks-imds/20-monitoring.yaml"),
    include_str!("../../../../examples/aks-imds/30-default.yaml"),
    include_str!("../../../../examples/aks-imds/40-shop.yaml"),
    include_str!("../../../../examples/aks-imds/50-payments.yaml"),
    include_str!("../../../../examples/aks-imds/60-batch.yaml"),
    include_str!("../../../../examples/aks-imds/network-policy-deny-imds.yaml"),
];

/// The engines that enforce what each output engine writes.
fn enforcing(e: OutputEngine) -> Vec<Engine> {
    match e {
        // Not Cilium: its ipBlocks never match node addresses, so a NetworkPolicy cannot
        // keep pod-to-node traffic open there (docs/policy-generate.md: use --engine
        // cilium).
        OutputEngine::NetworkPolicy => vec![
            Engine::AzureNpm,
            Engine::KubeNetworkPolicies,
            Engine::Calico,
            Engine::Generic,
        ],
        OutputEngine::Cnp => vec![Engine::KubeNetworkPolicies, Engine::Calico, Engine::Generic],
        OutputEngine::Anp => vec![Engine::OvnKubernetes],
        OutputEngine::Calico => vec![Engine::Calico],
        OutputEngine::Cilium => vec![Engine::Cilium],
    }
}

/// Whether the rules expect pods of this shape, counting only the subjects `engine`
/// can express (the others are skipped with a warning, so their pods stay denied).
fn expected_by(
    rules: Option<&AccessRules>,
    engine: OutputEngine,
    shape: &crate::access::PodShapeRef<'_>,
) -> bool {
    rules.is_some_and(|r| {
        r.rules().iter().flat_map(|rule| &rule.subjects).any(|s| {
            let named_sa =
                !s.service_accounts.is_empty() && !s.service_accounts.iter().any(|a| a == "*");
            (engine.selects_service_accounts() || !named_sa) && s.matches_shape(shape)
        })
    })
}

fn objects(texts: &[&str]) -> Vec<Object> {
    let mut out = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        let l = parse(&format!("in{i}.yaml"), t);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        out.extend(l.objects);
    }
    out
}

/// Destinations whose verdict must not change (`azure_npm`: Azure NPM ignores
/// `endPort`, so the other ports of a target address are left out, as warned).
fn sample(c: &Cluster, azure_npm: bool) -> Vec<Destination> {
    let mut out: Vec<Destination> = [
        "169.254.20.10:53/UDP",
        "169.254.20.10:53/TCP",
        "169.254.10.11:53/UDP",
        "168.63.129.16:53/UDP",
        "168.63.129.16:53/TCP",
        "8.8.8.8:443/TCP",
        "[2001:db8::1]:443/TCP",
        "10.224.0.4:10250/TCP",
    ]
    .iter()
    .map(|t| Destination::External(t.parse().unwrap()))
    .collect();
    if !azure_npm {
        for t in ["169.254.169.254:8080/TCP", "168.63.129.16:8443/TCP"] {
            out.push(Destination::External(t.parse().unwrap()));
        }
    }
    for (ip, port) in [("10.224.0.4", 10250), ("10.224.0.5", 22)] {
        out.push(Destination::Node {
            ip: ip.parse().unwrap(),
            port,
            protocol: Protocol::Tcp,
            labels: Labels::from([("kubernetes.io/os".into(), "linux".into())]),
        });
    }
    for (i, w) in c.workloads.iter().enumerate() {
        for s in &w.shapes {
            for (port, protocol) in [(8080, Protocol::Tcp), (53, Protocol::Udp)] {
                out.push(Destination::Pod {
                    namespace: w.namespace.clone(),
                    labels: s.template.labels.clone(),
                    ns_labels: c.namespaces[&w.namespace].labels.clone(),
                    ip: Some(
                        format!("10.244.{}.{}", i / 250, i % 250 + 2)
                            .parse()
                            .unwrap(),
                    ),
                    port,
                    protocol,
                    named_ports: vec![],
                });
            }
        }
    }
    out
}

/// What one loop checked.
#[derive(Debug, Default)]
struct Checked {
    /// Verdicts compared before and after.
    compared: usize,
    /// (pod shape, target) pairs expected, and reaching the target after.
    expected: usize,
}

/// Runs the loop for one output engine.
fn closed_loop(input: &[Object], rules: Option<&AccessRules>, engine: OutputEngine) -> Checked {
    let before = Cluster::build(input.to_vec());
    let opts = GenerateOptions {
        engine,
        targets: Cloud::Azure.targets(),
        expected: rules.cloned(),
        rules_source: None,
    };
    let generated = generate(&before, &opts);
    let text = serde_json::to_string(
        &json!({"apiVersion": "v1", "kind": "List", "items": generated.objects}),
    )
    .unwrap();
    let l = parse("generated.json", &text);
    assert!(
        l.errors.is_empty(),
        "{engine}: the generated objects do not parse: {:?}",
        l.errors
    );
    let mut all = input.to_vec();
    all.extend(l.objects);
    let after = Cluster::build(all);
    let mut checked = Checked::default();
    for m in enforcing(engine) {
        let mut settings = EngineSettings::new(m);
        // The metadata addresses as plain AKS gives them: `world` (no node agent binds
        // them); with `host`, toCIDR denies do not apply (warned by the generator).
        settings.cilium_link_local = crate::cilium::LinkLocalAs::World;
        let (pb, pa) = (
            Prepared::new(&before, settings),
            Prepared::new(&after, settings),
        );
        let dsts = sample(&before, m == Engine::AzureNpm);
        // Every pod shape, and a new unlabelled pod in every namespace.
        let empty = Labels::new();
        let mut sources: Vec<(String, &Labels, &str, String)> = Vec::new();
        for w in &before.workloads {
            for s in &w.shapes {
                if !s.template.host_network {
                    sources.push((
                        w.namespace.clone(),
                        &s.template.labels,
                        &s.template.service_account,
                        w.id(),
                    ));
                }
            }
        }
        for ns in before.namespaces.keys() {
            sources.push((
                ns.clone(),
                &empty,
                crate::model::DEFAULT_SERVICE_ACCOUNT,
                format!("{ns}/<new pod>"),
            ));
        }
        for (ns, labels, account, id) in &sources {
            let src = Source {
                namespace: ns,
                labels,
                ns_labels: &before.namespaces[ns].labels,
                service_account: Some(account),
                host_network: false,
            };
            let shape = crate::access::PodShapeRef {
                namespace: ns,
                labels,
                service_account: Some(account),
            };
            let expected = expected_by(rules, engine, &shape);
            let (sb, sa) = (pb.select(&src), pa.select(&src));
            for t in &opts.targets {
                // Expected pods get an exception for Azure IMDS only.
                let expected = expected && is_expected_target(t);
                let d = pa.decide(&sa, &src, &Destination::External(*t));
                // NetworkPolicies add up: what an existing allow re-opens stays open, and
                // the generator names it in a warning.
                let warned = generated.warnings.iter().any(|w| {
                    w.kind == WarningKind::ReopensTarget && w.message.starts_with(&format!("{id} "))
                });
                assert!(
                    d.allowed == expected || (d.allowed && warned),
                    "{engine} under {m}: {id} -> {t}: expected {expected}, got {d:?}"
                );
                checked.expected += usize::from(expected);
            }
            for dst in &dsts {
                let b = pb.decide(&sb, &src, dst).allowed;
                let a = pa.decide(&sa, &src, dst).allowed;
                assert_eq!(
                    b, a,
                    "{engine} under {m}: {id} -> {dst:?}: {b} before, {a} after"
                );
                checked.compared += 1;
            }
        }
    }
    checked
}

#[test]
fn example_with_the_aks_preset_for_every_engine() {
    let input = objects(&EXAMPLE);
    let rules = AccessRules::parse(crate::presets::preset("aks").unwrap()).unwrap();
    for engine in OutputEngine::ALL {
        let checked = closed_loop(&input, Some(&rules), engine);
        assert!(checked.compared > 100, "{engine}: {checked:?}");
        assert!(checked.expected > 0, "{engine}: {checked:?}");
        closed_loop(&input, None, engine);
    }
}

/// A small deterministic generator (xorshift) of clusters: namespaces with pods of a
/// few labels, existing policies of the kinds that matter (default deny, allow all,
/// deny-imds with except, selectors with NotIn), and rules expecting some of the pods.
fn synthetic(seed: u64) -> (Vec<Object>, AccessRules) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut rnd = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut text = String::new();
    let apps = ["web", "db", "agent", "cache"];
    let tiers = ["front", "back"];
    for n in 0..4 {
        let ns = format!("ns{n}");
        text.push_str(&format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{team: t{}}}}}\n", n % 2));
        for p in 0..5 {
            let app = apps[rnd(4) as usize];
            let tier = if rnd(3) == 0 {
                String::new()
            } else {
                format!(", tier: {}", tiers[rnd(2) as usize])
            };
            // Service accounts as written: serviceAccountName, the deprecated
            // serviceAccount, or none (`default`).
            let sa = match rnd(4) {
                0 => "\nspec: {serviceAccountName: reader}",
                1 => "\nspec: {serviceAccount: reader}",
                2 => "\nspec: {serviceAccountName: other}",
                _ => "",
            };
            text.push_str(&format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{p}, namespace: {ns}, labels: {{app: {app}{tier}}}}}{sa}\n"));
        }
        let np = |name: &str, body: &str| {
            format!(
                "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}"
            )
        };
        match rnd(5) {
            0 => text.push_str(&np("default-deny", "  podSelector: {}\n  policyTypes: [Egress]\n")),
            1 => text.push_str(&np("allow-web", "  podSelector: {matchLabels: {app: web}}\n  egress: [{}]\n")),
            2 => text.push_str(&np("deny-imds", "  podSelector: {matchExpressions: [{key: tier, operator: NotIn, values: [back]}]}\n  egress:\n  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [169.254.169.254/32]}}]\n  - ports: [{port: 53, protocol: UDP}]\n")),
            3 => text.push_str(&np("db-only", "  podSelector: {matchLabels: {app: db}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{podSelector: {matchLabels: {app: db}}}]\n")),
            _ => {}
        }
    }
    let rules = AccessRules::parse(&format!(
        "rules:\n- name: agents\n  subjects:\n  - {{namespace: ns{}, podSelector: {{matchLabels: {{app: agent}}}}}}\n  - {{namespace: '*', podSelector: {{matchExpressions: [{{key: app, operator: In, values: [cache]}}, {{key: tier, operator: Exists}}]}}}}\n  paths: [/metadata/instance]\n- name: readers\n  subjects:\n  - {{namespace: ns{}, serviceAccount: reader}}\n  - {{serviceAccount: other, podSelector: {{matchLabels: {{app: db}}}}}}\n  paths: [/metadata/instance]\n",
        rnd(4),
        rnd(4)
    ))
    .unwrap();
    (objects(&[&text]), rules)
}

#[test]
fn synthetic_clusters_for_every_engine() {
    for seed in 1..=12 {
        let (input, rules) = synthetic(seed);
        for engine in OutputEngine::ALL {
            closed_loop(&input, Some(&rules), engine);
        }
    }
}

/// Subjects naming service accounts: the service account a pod runs as comes from
/// `serviceAccountName`, else the deprecated `serviceAccount`, else `default`, for bare
/// pods and pod templates alike. Calico and Cilium select those pods exactly (they reach
/// the targets after, and nobody else does); NetworkPolicy, ClusterNetworkPolicy and
/// AdminNetworkPolicy cannot, so those pods stay denied there, as the generator warns.
#[test]
fn service_account_subjects() {
    let text = "\
apiVersion: v1\nkind: Namespace\nmetadata: {name: tools}\n---
apiVersion: v1\nkind: Namespace\nmetadata: {name: apps}\n---
apiVersion: v1\nkind: Pod\nmetadata: {name: named, namespace: tools, labels: {app: x}}\nspec: {serviceAccountName: reader}\n---
apiVersion: v1\nkind: Pod\nmetadata: {name: deprecated, namespace: tools, labels: {app: y}}\nspec: {serviceAccount: reader}\n---
apiVersion: v1\nkind: Pod\nmetadata: {name: both, namespace: tools, labels: {app: z}}\nspec: {serviceAccountName: other, serviceAccount: reader}\n---
apiVersion: v1\nkind: Pod\nmetadata: {name: plain, namespace: tools, labels: {app: x}}\n---
apiVersion: v1\nkind: Pod\nmetadata: {name: elsewhere, namespace: apps, labels: {app: x}}\nspec: {serviceAccountName: reader}\n---
apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: apps}
spec:\n  template:\n    metadata: {labels: {app: web}}\n    spec: {serviceAccountName: web-sa}\n";
    let input = objects(&[text]);
    let c = Cluster::build(input.clone());
    let sa = |ns: &str, name: &str| -> String {
        let w = c
            .workloads
            .iter()
            .find(|w| w.namespace == ns && w.name == name)
            .unwrap_or_else(|| panic!("{ns}/{name}"));
        w.shapes[0].template.service_account.clone()
    };
    assert_eq!(sa("tools", "named"), "reader");
    assert_eq!(sa("tools", "deprecated"), "reader");
    assert_eq!(sa("tools", "both"), "other");
    assert_eq!(sa("tools", "plain"), "default");
    assert_eq!(sa("apps", "web"), "web-sa");
    let rules = AccessRules::parse(
        "rules:\n- name: readers\n  subjects: [{namespace: tools, serviceAccount: reader}, {namespace: apps, serviceAccount: web-sa, podSelector: {matchLabels: {app: web}}}]\n  paths: [/metadata/instance]\n",
    )
    .unwrap();
    for engine in OutputEngine::ALL {
        let checked = closed_loop(&input, Some(&rules), engine);
        let g = generate(
            &c,
            &GenerateOptions {
                engine,
                targets: Cloud::Azure.targets(),
                expected: Some(rules.clone()),
                rules_source: None,
            },
        );
        let skipped = g
            .warnings
            .iter()
            .filter(|w| w.kind == WarningKind::SubjectNotExpressible)
            .count();
        if engine.selects_service_accounts() {
            // tools/named, tools/deprecated and apps/web, each to IMDS (WireServer stays
            // denied to them), under the one enforcing engine.
            assert_eq!(checked.expected, 3, "{engine}: {checked:?}");
            assert_eq!(skipped, 0, "{engine}: {:?}", g.warnings);
        } else {
            assert_eq!(checked.expected, 0, "{engine}: {checked:?}");
            assert_eq!(skipped, 2, "{engine}: {:?}", g.warnings);
        }
    }
}

/// Re-running on a dump that holds imdsguard's own output (input + first output) gives
/// the same objects as the input alone, for every engine: the generated objects are
/// left out ([`is_generated`]) before the cluster is built.
#[test]
fn rerun_on_own_output_gives_the_same_objects() {
    let rules = AccessRules::parse(crate::presets::preset("aks").unwrap()).unwrap();
    let (synth, synth_rules) = synthetic(7);
    for (input, rules) in [(objects(&EXAMPLE), rules), (synth, synth_rules)] {
        for engine in OutputEngine::ALL {
            let opts = GenerateOptions {
                engine,
                targets: Cloud::Azure.targets(),
                expected: Some(rules.clone()),
                rules_source: None,
            };
            let first = generate(&Cluster::build(input.clone()), &opts);
            let text = serde_json::to_string(
                &json!({"apiVersion": "v1", "kind": "List", "items": first.objects}),
            )
            .unwrap();
            let l = parse("generated.json", &text);
            assert!(l.errors.is_empty(), "{:?}", l.errors);
            assert!(l.objects.iter().all(is_generated), "{engine}");
            assert!(!input.iter().any(is_generated), "{engine}");
            let mut all = input.clone();
            all.extend(l.objects);
            // Without leaving them out, the re-run differs (the NetworkPolicy deny
            // isolates every pod, so a re-run writes no deny at all).
            if engine == OutputEngine::NetworkPolicy {
                let naive = generate(&Cluster::build(all.clone()), &opts);
                assert_ne!(naive.objects, first.objects, "{engine}");
            }
            all.retain(|o| !is_generated(o));
            let second = generate(&Cluster::build(all), &opts);
            assert_eq!(second.objects, first.objects, "{engine}");
            assert_eq!(second.warnings, first.warnings, "{engine}");
        }
    }
}
