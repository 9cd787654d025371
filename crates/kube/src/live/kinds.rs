//! The kinds the core audit reads, and which of them the cluster serves (discovery).

use kube::discovery::{ApiResource, Discovery, Scope, verbs};

/// A kind the core audit reads, with the API versions it reads, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wanted {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Versions read, best first.
    pub versions: &'static [&'static str],
}

const fn w(group: &'static str, kind: &'static str, versions: &'static [&'static str]) -> Wanted {
    Wanted {
        group,
        kind,
        versions,
    }
}

/// Calico's API group (served by the Calico API server).
pub(crate) const CALICO_GROUP: &str = "projectcalico.org";
/// The CRDs behind it, which the audit does not read.
pub(crate) const CALICO_BACKING_GROUP: &str = "crd.projectcalico.org";
const CALICO_KINDS: [&str; 5] = [
    "GlobalNetworkPolicy",
    "NetworkPolicy",
    "Tier",
    "GlobalNetworkSet",
    "NetworkSet",
];

/// Everything `imdsguard_core::manifest` turns into audit objects (except Nodes, which
/// no verdict depends on), in the order a file dump would hold them: Namespaces first.
pub(crate) const WANTED: &[Wanted] = &[
    w("", "Namespace", &["v1"]),
    w("", "Pod", &["v1"]),
    w("", "ReplicationController", &["v1"]),
    w("apps", "Deployment", &["v1"]),
    w("apps", "ReplicaSet", &["v1"]),
    w("apps", "StatefulSet", &["v1"]),
    w("apps", "DaemonSet", &["v1"]),
    w("batch", "Job", &["v1"]),
    w("batch", "CronJob", &["v1"]),
    w("networking.k8s.io", "NetworkPolicy", &["v1"]),
    w(
        "policy.networking.k8s.io",
        "AdminNetworkPolicy",
        &["v1alpha1"],
    ),
    w(
        "policy.networking.k8s.io",
        "BaselineAdminNetworkPolicy",
        &["v1alpha1"],
    ),
    w(
        "policy.networking.k8s.io",
        "ClusterNetworkPolicy",
        &["v1beta1", "v1alpha2"],
    ),
    w(CALICO_GROUP, CALICO_KINDS[0], &["v3"]),
    w(CALICO_GROUP, CALICO_KINDS[1], &["v3"]),
    w(CALICO_GROUP, CALICO_KINDS[2], &["v3"]),
    w(CALICO_GROUP, CALICO_KINDS[3], &["v3"]),
    w(CALICO_GROUP, CALICO_KINDS[4], &["v3"]),
    w("cilium.io", "CiliumNetworkPolicy", &["v2"]),
    w("cilium.io", "CiliumClusterwideNetworkPolicy", &["v2"]),
    w("cilium.io", "CiliumCIDRGroup", &["v2", "v2alpha1"]),
];

/// A kind to list: its resource as discovered, and whether it is namespaced.
#[derive(Debug, Clone)]
pub struct KindToRead {
    /// Group, version, kind and plural as the server serves them.
    pub resource: ApiResource,
    /// Namespaced (listed per namespace with `-n`) or cluster-scoped.
    pub namespaced: bool,
    /// Calico's backing CRD (`crd.projectcalico.org/v1`): listed to count its objects,
    /// which the audit does not read.
    pub backing: bool,
}

impl KindToRead {
    /// `plural` (core group) or `plural.group`, as RBAC and kubectl name it.
    pub fn resource_name(&self) -> String {
        resource_name(&self.resource.plural, &self.resource.group)
    }
}

/// A group as messages name it.
fn group_label(group: &str) -> &str {
    if group.is_empty() { "core (v1)" } else { group }
}

/// `plural` or `plural.group`.
pub(crate) fn resource_name(plural: &str, group: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

/// A kind the audit reads that this cluster does not serve, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKind {
    /// `Kind` (`Kind.group` outside the core groups).
    pub kind: String,
    /// Why it was not read.
    pub reason: String,
}

/// Which wanted kinds the discovered API serves (and with which version), and which not.
pub(crate) fn select(discovery: &Discovery) -> (Vec<KindToRead>, Vec<SkippedKind>) {
    let mut read = Vec::new();
    let mut skipped = Vec::new();
    for want in WANTED {
        let name = if want.group.is_empty() {
            want.kind.to_string()
        } else {
            format!("{}.{}", want.kind, want.group)
        };
        let Some(group) = discovery.get(want.group) else {
            let reason = if want.group == CALICO_GROUP && discovery.has_group(CALICO_BACKING_GROUP)
            {
                "the projectcalico.org/v3 API is not served (the Calico API server is not installed); its crd.projectcalico.org/v1 backing objects are counted but not audited: install the Calico API server, or audit a `calicoctl get -o yaml` dump".to_string()
            } else {
                format!(
                    "API group {} is not served (its CRD is not installed)",
                    group_label(want.group)
                )
            };
            skipped.push(SkippedKind { kind: name, reason });
            continue;
        };
        let found = want.versions.iter().find_map(|v| {
            group
                .versioned_resources(v)
                .into_iter()
                .find(|(ar, _)| ar.kind == want.kind)
        });
        match found {
            Some((resource, caps)) if caps.supports_operation(verbs::LIST) => {
                read.push(KindToRead {
                    namespaced: caps.scope == Scope::Namespaced,
                    resource,
                    backing: false,
                });
            }
            Some((resource, _)) => skipped.push(SkippedKind {
                kind: name,
                reason: format!("{} does not support list", resource.api_version),
            }),
            None => {
                let served: Vec<String> = group
                    .versions()
                    .filter(|v| {
                        group
                            .versioned_resources(v)
                            .iter()
                            .any(|(ar, _)| ar.kind == want.kind)
                    })
                    .map(|v| format!("{}/{v}", want.group))
                    .collect();
                let reason = if served.is_empty() {
                    format!(
                        "API group {} does not serve this kind",
                        group_label(want.group)
                    )
                } else {
                    format!(
                        "served as {} only; imdsguard reads {}",
                        served.join(", "),
                        want.versions
                            .iter()
                            .map(|v| format!("{}/{v}", want.group))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                skipped.push(SkippedKind { kind: name, reason });
            }
        }
    }
    // Calico's backing CRDs, when nothing serves the v3 API: listed so that the report
    // counts what it cannot audit (the core counts them as skipped kinds).
    if discovery.get(CALICO_GROUP).is_none()
        && let Some(group) = discovery.get(CALICO_BACKING_GROUP)
    {
        for (resource, caps) in group.versioned_resources("v1") {
            if CALICO_KINDS.contains(&resource.kind.as_str())
                && caps.supports_operation(verbs::LIST)
            {
                read.push(KindToRead {
                    namespaced: caps.scope == Scope::Namespaced,
                    resource,
                    backing: true,
                });
            }
        }
    }
    (read, skipped)
}

/// `plural.group` of every resource the server serves outside the core group (CRDs and
/// built-in APIs alike; subresources left out), sorted: what engine detection looks for
/// (e.g. `tiers.crd.projectcalico.org`, `ciliumnetworkpolicies.cilium.io`).
pub(crate) fn served_resources(discovery: &Discovery) -> Vec<String> {
    let mut out: Vec<String> = discovery
        .groups()
        .filter(|g| !g.name().is_empty())
        .flat_map(|g| {
            g.versions()
                .flat_map(|v| g.versioned_resources(v))
                .filter(|(ar, _)| !ar.plural.contains('/'))
                .map(|(ar, _)| resource_name(&ar.plural, &ar.group))
                .collect::<Vec<_>>()
        })
        .collect();
    out.sort();
    out.dedup();
    out
}
