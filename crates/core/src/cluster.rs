//! The cluster built from loaded objects: namespaces (declared and implicit, each with its
//! name label), workloads (pods grouped under their top-level owner), NetworkPolicies
//! sorted by namespace and name and indexed by namespace, the cluster-scoped policies of [`crate::tiered`] in precedence
//! order, and nodes.

use std::collections::{BTreeMap, HashMap};

use rayon::prelude::*;
use rustc_hash::FxHashMap;

use crate::calico::CalicoObjects;
use crate::cilium::CiliumPolicies;
use crate::model::{
    Controller, Labels, NAMESPACE_NAME_LABEL, NetworkPolicy, Node, Object, OwnerRef, Pod,
    PodTemplate, Source,
};
use crate::tiered::TieredPolicy;

/// A namespace of the cluster.
#[derive(Debug, Clone)]
pub struct NamespaceInfo {
    /// Name.
    pub name: String,
    /// Labels, including `kubernetes.io/metadata.name`.
    pub labels: Labels,
    /// Where it was declared; `None` when only referenced.
    pub source: Option<Source>,
}

/// One distinct pod shape of a workload (pods with equal labels, hostNetwork and service
/// account).
#[derive(Debug, Clone)]
pub struct PodShape {
    /// Labels, hostNetwork and service account.
    pub template: PodTemplate,
    /// How many Pod objects have this shape (0 when it comes only from a template).
    pub pods: usize,
}

/// A workload: the pods of one top-level owner (or a bare pod), named
/// `namespace/name[Kind]`.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Namespace.
    pub namespace: String,
    /// Owner name (or pod name for a bare pod).
    pub name: String,
    /// Owner kind (`Pod` for a bare pod).
    pub kind: String,
    /// Distinct pod shapes, from Pod objects and from controller templates.
    pub shapes: Vec<PodShape>,
    /// Where the workload's own object was read (the owner when present, else its first pod).
    pub source: Source,
}

impl Workload {
    /// `namespace/name[Kind]`.
    pub fn id(&self) -> String {
        format!("{}/{}[{}]", self.namespace, self.name, self.kind)
    }

    /// Whether any of its pods uses the node's network.
    pub fn host_network(&self) -> bool {
        self.shapes.iter().any(|s| s.template.host_network)
    }

    /// Number of Pod objects read for it.
    pub fn pod_count(&self) -> usize {
        self.shapes.iter().map(|s| s.pods).sum()
    }
}

/// The cluster as the audit sees it.
#[derive(Debug, Default)]
pub struct Cluster {
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, NamespaceInfo>,
    /// Workloads, sorted by namespace, name, kind.
    pub workloads: Vec<Workload>,
    /// NetworkPolicies (one per namespace and name, the last copy read), sorted by
    /// namespace and name: their semantics do not depend on order, so the order in which
    /// they are evaluated and named is canonical, not the input's.
    pub policies: Vec<NetworkPolicy>,
    /// Pods as read (one per namespace and name).
    pub pods: Vec<Pod>,
    /// Pod controllers as read (one per namespace, kind and name).
    pub controllers: Vec<Controller>,
    /// AdminNetworkPolicies, BaselineAdminNetworkPolicies and ClusterNetworkPolicies in
    /// input order (one per kind and name).
    pub tiered: Vec<TieredPolicy>,
    /// Nodes (one per name).
    pub nodes: Vec<Node>,
    /// CiliumNetworkPolicies, CiliumClusterwideNetworkPolicies and CiliumCIDRGroups.
    pub cilium: CiliumPolicies,
    /// Calico's GlobalNetworkPolicies, NetworkPolicies, Tiers and network sets, as read
    /// (`calico::CalicoPolicies::build` indexes them for an engine).
    pub calico: CalicoObjects,
    /// Policy indexes by namespace.
    policies_by_ns: HashMap<String, Vec<usize>>,
    /// Indexes into `tiered` by tier, then precedence (priority, kind, name).
    tiered_order: Vec<usize>,
}

type ControllerIndex<'a> = FxHashMap<(&'a str, &'a str, &'a str), &'a Controller>;

/// The pod shapes of one workload while the cluster is built, borrowing from the objects.
struct Group<'a> {
    shapes: Vec<(&'a PodTemplate, usize)>,
    source: &'a Source,
}

/// The top-level owner (kind, name) of an object in `ns` whose direct owner is `owner`,
/// following ownerReferences through the controllers that were read.
fn top_owner<'a>(
    by_key: &ControllerIndex<'a>,
    ns: &'a str,
    owner: &'a OwnerRef,
) -> (&'a str, &'a str) {
    let mut kind: &str = if owner.kind.is_empty() {
        "Pod"
    } else {
        &owner.kind
    };
    let mut name: &str = &owner.name;
    for _ in 0..8 {
        match by_key.get(&(ns, kind, name)).and_then(|c| c.owner.as_ref()) {
            Some(next) if !next.kind.is_empty() => {
                kind = &next.kind;
                name = &next.name;
            }
            _ => break,
        }
    }
    (kind, name)
}

/// Adds a pod shape (or `pods` more pods of a known shape) to the workload `key`
/// (namespace, name, kind).
fn add_shape<'a>(
    groups: &mut FxHashMap<(&'a str, &'a str, &'a str), Group<'a>>,
    key: (&'a str, &'a str, &'a str),
    template: &'a PodTemplate,
    pods: usize,
    source: &'a Source,
) {
    let g = groups.entry(key).or_insert_with(|| Group {
        shapes: Vec::new(),
        source,
    });
    match g.shapes.iter_mut().find(|(s, _)| *s == template) {
        Some((_, n)) => *n += pods,
        None => g.shapes.push((template, pods)),
    }
}

/// Keeps the last of the objects that share a key, in input order.
fn last_copies<T: Send>(items: Vec<T>, key: impl Fn(&T) -> (&str, &str, &str)) -> Vec<T> {
    let mut last: FxHashMap<(&str, &str, &str), usize> =
        FxHashMap::with_capacity_and_hasher(items.len(), Default::default());
    for (i, item) in items.iter().enumerate() {
        last.insert(key(item), i);
    }
    if last.len() == items.len() {
        return items;
    }
    let mut keep = vec![false; items.len()];
    for &i in last.values() {
        keep[i] = true;
    }
    items
        .into_iter()
        .zip(keep)
        .filter_map(|(item, k)| k.then_some(item))
        .collect()
}

impl Cluster {
    /// Builds the cluster from loaded objects.
    ///
    /// The API server keeps one object per kind, namespace and name: an object read twice
    /// (the same file named twice, a copy in two folders) counts once, and the last copy
    /// wins, as with `kubectl apply`. Lookups borrow the objects' strings; each workload
    /// clones a pod template only once per distinct shape.
    pub fn build(objects: Vec<Object>) -> Cluster {
        let mut namespaces: BTreeMap<String, NamespaceInfo> = BTreeMap::new();
        let mut controllers: Vec<Controller> = Vec::new();
        let mut pods: Vec<Pod> = Vec::new();
        let mut policies: Vec<NetworkPolicy> = Vec::new();
        let mut tiered: Vec<TieredPolicy> = Vec::new();
        let mut nodes: Vec<Node> = Vec::new();
        let mut cilium_policies = Vec::new();
        let mut cilium_groups = Vec::new();
        let mut calico = CalicoObjects::default();
        for o in objects {
            match o {
                Object::Namespace(n) => {
                    let mut labels = n.labels;
                    labels.insert(NAMESPACE_NAME_LABEL.to_string(), n.name.clone());
                    namespaces.insert(
                        n.name.clone(),
                        NamespaceInfo {
                            name: n.name,
                            labels,
                            source: Some(n.source),
                        },
                    );
                }
                Object::Pod(p) => pods.push(p),
                Object::Controller(c) => controllers.push(c),
                Object::NetworkPolicy(p) => policies.push(p),
                Object::Tiered(p) => tiered.push(p),
                Object::Node(n) => nodes.push(n),
                Object::Cilium(p) => cilium_policies.push(p),
                Object::CiliumCidrGroup(g) => cilium_groups.push(g),
                Object::Calico(c) => calico.push(c),
            }
        }
        let tiered = last_copies(tiered, |p| (p.kind.as_str(), "", p.name.as_str()));
        let nodes = last_copies(nodes, |n| ("", "", n.name.as_str()));
        let mut tiered_order: Vec<usize> = (0..tiered.len()).collect();
        tiered_order.sort_by(|&a, &b| {
            let (a, b) = (&tiered[a], &tiered[b]);
            (a.tier, a.precedence()).cmp(&(b.tier, b.precedence()))
        });
        let (pods, (controllers, mut policies)) = rayon::join(
            || last_copies(pods, |p| (p.namespace.as_str(), "", p.name.as_str())),
            || {
                (
                    last_copies(controllers, |c| {
                        (c.namespace.as_str(), c.kind.as_str(), c.name.as_str())
                    }),
                    last_copies(policies, |p| (p.namespace.as_str(), "", p.name.as_str())),
                )
            },
        );
        // NetworkPolicies add up (a union of allows), so their order means nothing; keep
        // them by namespace and name, so that every list of them (the policies of a
        // namespace, those selecting a pod, the first one named as deciding) is the same
        // whatever order the input came in (files in folder order, a live cluster as the
        // API lists it).
        policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

        let by_key: ControllerIndex = controllers
            .iter()
            .map(|c| ((c.namespace.as_str(), c.kind.as_str(), c.name.as_str()), c))
            .collect();
        let mut groups: FxHashMap<(&str, &str, &str), Group> = FxHashMap::with_capacity_and_hasher(
            controllers.len() + pods.len() / 4,
            Default::default(),
        );
        for c in &controllers {
            let (kind, name) = match &c.owner {
                Some(o) if !o.kind.is_empty() => top_owner(&by_key, &c.namespace, o),
                _ => (c.kind.as_str(), c.name.as_str()),
            };
            // A CronJob's Jobs and a Deployment's ReplicaSets carry their owner's template;
            // adding it again merges into the same shape.
            add_shape(
                &mut groups,
                (&c.namespace, name, kind),
                &c.template,
                0,
                &c.source,
            );
        }
        // Owner resolution is independent per pod: done on every core.
        let owners: Vec<(&str, &str)> = pods
            .par_iter()
            .with_min_len(1024)
            .map(|p| match &p.owner {
                // Static pods are "owned" by their Node: they are workloads of their own.
                Some(o) if o.kind != "Node" => top_owner(&by_key, &p.namespace, o),
                _ => ("Pod", p.name.as_str()),
            })
            .collect();
        for (p, (kind, name)) in pods.iter().zip(owners) {
            add_shape(
                &mut groups,
                (&p.namespace, name, kind),
                &p.template,
                1,
                &p.source,
            );
        }
        let mut workloads: Vec<Workload> = groups
            .into_iter()
            .map(|((ns, name, kind), g)| {
                // A workload's source is its owner object's when that was read.
                let source = by_key
                    .get(&(ns, kind, name))
                    .map(|c| &c.source)
                    .unwrap_or(g.source)
                    .clone();
                Workload {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    kind: kind.to_string(),
                    shapes: g
                        .shapes
                        .into_iter()
                        .map(|(t, pods)| PodShape {
                            template: t.clone(),
                            pods,
                        })
                        .collect(),
                    source,
                }
            })
            .collect();
        workloads.sort_unstable_by(|a, b| {
            (&a.namespace, &a.name, &a.kind).cmp(&(&b.namespace, &b.name, &b.kind))
        });

        // Implicit namespaces: referenced by a workload or a policy.
        for ns in workloads
            .iter()
            .map(|w| &w.namespace)
            .chain(policies.iter().map(|p| &p.namespace))
        {
            if !namespaces.contains_key(ns) {
                namespaces.insert(
                    ns.clone(),
                    NamespaceInfo {
                        name: ns.clone(),
                        labels: Labels::from([(NAMESPACE_NAME_LABEL.to_string(), ns.clone())]),
                        source: None,
                    },
                );
            }
        }

        let mut policies_by_ns: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, p) in policies.iter().enumerate() {
            policies_by_ns
                .entry(p.namespace.clone())
                .or_default()
                .push(i);
        }
        drop(by_key);
        Cluster {
            namespaces,
            workloads,
            policies,
            pods,
            controllers,
            tiered,
            nodes,
            cilium: CiliumPolicies::new(cilium_policies, cilium_groups),
            calico,
            policies_by_ns,
            tiered_order,
        }
    }

    /// Indexes into [`Cluster::tiered`]: the Admin tier, then the Baseline tier, each in
    /// precedence order (priority, kind, name).
    pub fn tiered_order(&self) -> &[usize] {
        &self.tiered_order
    }

    /// Indexes of the policies of a namespace, by name.
    pub fn policies_in(&self, namespace: &str) -> &[usize] {
        self.policies_by_ns
            .get(namespace)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Indexes of the policies that select pods with these labels in this namespace, by
    /// name.
    pub fn selecting(&self, namespace: &str, labels: &Labels) -> Vec<usize> {
        self.policies_in(namespace)
            .iter()
            .copied()
            .filter(|&i| self.policies[i].pod_selector.matches(labels))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse;

    fn build(text: &str) -> Cluster {
        let l = parse("t.yaml", text);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        Cluster::build(l.objects)
    }

    #[test]
    fn owners_resolve_to_top_level() {
        let c = build(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  template:\n    metadata: {labels: {app: web}}\n---\napiVersion: apps/v1\nkind: ReplicaSet\nmetadata:\n  name: web-abc\n  namespace: shop\n  ownerReferences: [{kind: Deployment, name: web, controller: true}]\nspec:\n  template:\n    metadata: {labels: {app: web}}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: web-abc-1\n  namespace: shop\n  labels: {app: web}\n  ownerReferences: [{kind: ReplicaSet, name: web-abc, controller: true}]\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: orphan-x\n  namespace: shop\n  labels: {app: o}\n  ownerReferences: [{kind: ReplicaSet, name: orphan, controller: true}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: bare}\n",
        );
        let ids: Vec<String> = c.workloads.iter().map(Workload::id).collect();
        assert_eq!(
            ids,
            [
                "default/bare[Pod]",
                "shop/orphan[ReplicaSet]",
                "shop/web[Deployment]"
            ]
        );
        let web = &c.workloads[2];
        assert_eq!(web.shapes.len(), 1);
        assert_eq!(web.pod_count(), 1);
        assert_eq!(web.source.line, 1);
        // implicit namespaces get the name label
        assert_eq!(
            c.namespaces["shop"]
                .labels
                .get(NAMESPACE_NAME_LABEL)
                .map(String::as_str),
            Some("shop")
        );
        assert!(c.namespaces["default"].source.is_none());
    }

    #[test]
    fn an_object_read_twice_counts_once_and_the_last_copy_wins() {
        let pol = |cidr: &str| {
            format!(
                "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p}}\nspec:\n  podSelector: {{}}\n  egress: [{{to: [{{ipBlock: {{cidr: {cidr}}}}}]}}]\n"
            )
        };
        let pod = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: x}\n";
        let c = build(&format!(
            "{}{pod}{}{pod}",
            pol("10.0.0.0/8"),
            pol("0.0.0.0/0")
        ));
        assert_eq!(c.policies.len(), 1);
        assert_eq!(c.workloads.len(), 1);
        assert_eq!(c.workloads[0].pod_count(), 1);
        assert!(matches!(
            &c.policies[0].egress[0].to[0],
            crate::model::Peer::IpBlock { cidr, .. } if cidr.to_string() == "0.0.0.0/0"
        ));
    }

    #[test]
    fn network_policies_are_in_namespace_and_name_order_whatever_the_input_order() {
        use crate::netpol::{decide, explain};
        let deny = |ns: &str, name: &str| {
            format!(
                "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n"
            )
        };
        let names = [
            ("b", "zeta"),
            ("a", "mid"),
            ("b", "alpha"),
            ("a", "zz"),
            ("b", "mid"),
        ];
        let forward: String = names.iter().map(|(ns, n)| deny(ns, n)).collect();
        let backward: String = names.iter().rev().map(|(ns, n)| deny(ns, n)).collect();
        let imds = "169.254.169.254:80/TCP".parse().unwrap();
        for text in [forward, backward] {
            let c = build(&text);
            let ids: Vec<String> = c.policies.iter().map(NetworkPolicy::id).collect();
            assert_eq!(ids, ["a/mid", "a/zz", "b/alpha", "b/mid", "b/zeta"]);
            let named = |idx: &[usize]| -> Vec<String> {
                idx.iter().map(|&i| c.policies[i].id()).collect()
            };
            assert_eq!(named(c.policies_in("b")), ["b/alpha", "b/mid", "b/zeta"]);
            let selecting = c.selecting("b", &Labels::new());
            assert_eq!(named(&selecting), ["b/alpha", "b/mid", "b/zeta"]);
            // A denial by isolation names the isolating policies, first of all the first
            // by name.
            let e = explain(&c, &decide(&c, &selecting, &imds), None);
            assert_eq!(e.policies, ["b/alpha", "b/mid", "b/zeta"]);
            assert!(e.reason.contains("b/alpha, b/mid, b/zeta"), "{}", e.reason);
        }
    }

    #[test]
    fn cronjob_template_and_owner_without_kind() {
        let c = build(
            "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: nightly, namespace: b}\nspec:\n  jobTemplate:\n    spec:\n      template:\n        metadata: {labels: {job: n}}\n        spec: {hostNetwork: true}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p1\n  ownerReferences: [{name: sec, controller: true}]\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: etcd-node1\n  ownerReferences: [{kind: Node, name: node1, controller: true}]\n",
        );
        let ids: Vec<String> = c.workloads.iter().map(Workload::id).collect();
        assert_eq!(
            ids,
            [
                "b/nightly[CronJob]",
                "default/etcd-node1[Pod]",
                "default/sec[Pod]"
            ]
        );
        assert!(c.workloads[0].host_network());
    }
}
