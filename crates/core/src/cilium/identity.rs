//! Security identities as Cilium sees them: the labels of a pod endpoint (its own,
//! filtered like Cilium's default identity-relevant label list, plus the namespace,
//! namespace labels, service account and cluster Cilium adds) and of the reserved
//! identities (`world`, `host`, `remote-node`), and how selectors and entities match them.

use std::net::IpAddr;

use super::CiliumOptions;
use super::model::{Entity, SelKey, SelReq, Selector};
use crate::model::{Labels, Operator};

/// Where a label comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Src {
    K8s,
    Reserved,
}

/// A set of identity labels.
#[derive(Debug, Clone, Default)]
pub(super) struct Identity {
    labels: Vec<(Src, String, String)>,
}

/// `k8s:` keys Cilium adds to every pod identity.
pub(super) const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
const NAMESPACE_LABELS: &str = "io.cilium.k8s.namespace.labels.";
const SERVICE_ACCOUNT: &str = "io.cilium.k8s.policy.serviceaccount";
const CLUSTER: &str = "io.cilium.k8s.policy.cluster";

/// Pod label keys Cilium leaves out of identities by default (prefixes): the default
/// identity-relevant label list of
/// <https://docs.cilium.io/en/stable/operations/performance/scalability/identity-relevant-labels/>,
/// plus Cilium's own `io.cilium.k8s` labels, which it drops from pods.
const IGNORED_PREFIXES: [&str; 15] = [
    "io.kubernetes",
    "kubernetes.io",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "batch.kubernetes.io/job-completion-index",
    "batch.kubernetes.io/controller-uid",
    "beta.kubernetes.io",
    "k8s.io",
    "pod-template-generation",
    "pod-template-hash",
    "controller-revision-hash",
    "annotation",
    "controller-uid",
    "etcd_node",
    "io.cilium.k8s",
];

/// Whether a pod label is part of the pod's identity.
pub(super) fn identity_relevant(key: &str, opts: &CiliumOptions) -> bool {
    !opts.identity_label_filter || !IGNORED_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// The pod labels that are part of the identity.
pub(super) fn relevant_labels(labels: &Labels, opts: &CiliumOptions) -> Labels {
    labels
        .iter()
        .filter(|(k, _)| identity_relevant(k, opts))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl Identity {
    /// A pod endpoint.
    pub(super) fn pod(
        namespace: &str,
        labels: &Labels,
        namespace_labels: &Labels,
        service_account: Option<&str>,
        opts: &CiliumOptions,
    ) -> Identity {
        let mut out = Vec::with_capacity(labels.len() + namespace_labels.len() + 3);
        for (k, v) in labels {
            if identity_relevant(k, opts) {
                out.push((Src::K8s, k.clone(), v.clone()));
            }
        }
        out.push((Src::K8s, POD_NAMESPACE.to_string(), namespace.to_string()));
        for (k, v) in namespace_labels {
            out.push((Src::K8s, format!("{NAMESPACE_LABELS}{k}"), v.clone()));
        }
        out.push((
            Src::K8s,
            SERVICE_ACCOUNT.to_string(),
            service_account.unwrap_or("default").to_string(),
        ));
        out.push((Src::K8s, CLUSTER.to_string(), opts.cluster_name.clone()));
        Identity { labels: out }
    }

    /// An address outside the cluster: `reserved:world` and the family's `world-ipv4` or
    /// `world-ipv6`.
    pub(super) fn world(ip: IpAddr) -> Identity {
        let family = if ip.is_ipv4() {
            "world-ipv4"
        } else {
            "world-ipv6"
        };
        Identity {
            labels: vec![
                (Src::Reserved, "world".into(), String::new()),
                (Src::Reserved, family.into(), String::new()),
            ],
        }
    }

    /// The local node, with its labels.
    pub(super) fn host(node_labels: &Labels) -> Identity {
        Identity::node("host", node_labels)
    }

    /// Another node, with its labels.
    pub(super) fn remote_node(node_labels: &Labels) -> Identity {
        Identity::node("remote-node", node_labels)
    }

    fn node(reserved: &str, node_labels: &Labels) -> Identity {
        let mut labels = vec![(Src::Reserved, reserved.to_string(), String::new())];
        labels.extend(
            node_labels
                .iter()
                .map(|(k, v)| (Src::K8s, k.clone(), v.clone())),
        );
        Identity { labels }
    }

    fn get(&self, key: &SelKey) -> Option<&str> {
        self.labels
            .iter()
            .find(|(src, k, _)| {
                k == key.key()
                    && match key {
                        SelKey::Any(_) => true,
                        SelKey::K8s(_) => *src == Src::K8s,
                        SelKey::Reserved(_) => *src == Src::Reserved,
                        SelKey::Other(..) => false,
                    }
            })
            .map(|(_, _, v)| v.as_str())
    }

    fn has_reserved(&self, name: &str) -> bool {
        self.labels
            .iter()
            .any(|(src, k, _)| *src == Src::Reserved && k == name)
    }

    /// Whether one requirement holds (Kubernetes semantics: `NotIn` and `DoesNotExist`
    /// hold when the label is missing).
    fn satisfies(&self, r: &SelReq) -> bool {
        let v = self.get(&r.key);
        match r.operator {
            Operator::In => v.is_some_and(|v| r.values.iter().any(|x| x == v)),
            Operator::NotIn => v.is_none_or(|v| r.values.iter().all(|x| x != v)),
            Operator::Exists => v.is_some(),
            Operator::DoesNotExist => v.is_none(),
        }
    }

    /// Whether the selector (and every extra requirement) selects this identity.
    pub(super) fn selected_by(&self, sel: &Selector, extra: &[&Selector]) -> bool {
        sel.requirements.iter().all(|r| self.satisfies(r))
            && extra
                .iter()
                .all(|s| s.requirements.iter().all(|r| self.satisfies(r)))
    }

    /// Whether `toEntities: [entity]` selects this identity.
    pub(super) fn is_entity(&self, entity: Entity, opts: &CiliumOptions) -> bool {
        match entity {
            Entity::All => true,
            Entity::World => {
                self.has_reserved("world")
                    || self.has_reserved("world-ipv4")
                    || self.has_reserved("world-ipv6")
            }
            Entity::WorldIpv4 => self.has_reserved("world-ipv4"),
            Entity::WorldIpv6 => self.has_reserved("world-ipv6"),
            Entity::Cluster => {
                [
                    "host",
                    "remote-node",
                    "init",
                    "ingress",
                    "health",
                    "unmanaged",
                    "kube-apiserver",
                ]
                .iter()
                .any(|r| self.has_reserved(r))
                    || self.get(&SelKey::K8s(CLUSTER.into())) == Some(opts.cluster_name.as_str())
            }
            other => self.has_reserved(other.as_str()),
        }
    }
}
