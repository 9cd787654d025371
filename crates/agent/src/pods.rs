//! The agent's pods: the core's [`PodIndex`] (one answer to "which pod is this?", see
//! [`imdsguard_core::pods`]), from the pods file or from Kubernetes. The pods file is
//! the proxy's, each entry with the node-side interface its traffic enters on:
//!
//! ```yaml
//! - {ip: 10.244.0.10, namespace: platform, name: allowed, interface: azvallowed}
//! - {ip: 10.244.0.11, namespace: shop, name: web, interface: azvweb, labels: {app: web}}
//! - {ip: 10.244.1.10, namespace: jobs, name: batch, interface: cbr0}   # kubenet: the bridge
//! ```
//!
//! A Kubernetes `PodList` works too; there the interface comes from the annotation
//! [`imdsguard_core::pods::INTERFACE_ANNOTATION`]. A pod without an interface is known
//! to the proxy but not to nft: in proxy mode its traffic is dropped (its address cannot
//! be bound to an interface), which the agent logs.

use imdsguard_core::access::{AccessRules, PodShapeRef};
use imdsguard_core::nft::SourcePair;
use imdsguard_core::pods::PodIndex;
use imdsguard_node::AllowSpec;

/// The allow set: the `IFACE=ADDR` entries, and the (interface, owned address) pairs of
/// the pods named by `NAMESPACE/NAME` entries (pods without an interface cannot be
/// allowlisted; a finished pod is no pod of the node).
pub fn allowed_pairs(pods: &PodIndex, specs: &[AllowSpec]) -> Vec<SourcePair> {
    let mut out: Vec<SourcePair> = specs
        .iter()
        .filter_map(|s| match s {
            AllowSpec::Pair(p) => Some(p.clone()),
            AllowSpec::Pod { .. } => None,
        })
        .collect();
    out.extend(pods.pairs_of(|p| specs.iter().any(|s| s.names_pod(&p.namespace, &p.name))));
    out.sort();
    out.dedup();
    out
}

/// The pairs of the pods a policy rule's subjects select ([`AccessRules::expecting`]: the
/// core's one reading of subjects, as the audit and the controller read them): expected
/// to reach the endpoints, so allowlisted in block mode.
pub fn policy_pairs(pods: &PodIndex, rules: &AccessRules) -> Vec<SourcePair> {
    if rules.is_empty() {
        return Vec::new();
    }
    pods.pairs_of(|p| !rules.expecting(&PodShapeRef::of(p)).is_empty())
}

/// Logs what the pod index left out (address conflicts, bad interfaces) and the pods
/// without an interface.
pub fn log_issues(pods: &PodIndex) {
    for issue in pods.issues() {
        tracing::warn!(issue = %issue, "pod index: left out");
    }
    for p in pods.without_interface() {
        tracing::warn!(pod = %p, "no interface for this pod: not a known pod (proxy mode drops its traffic)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "
- {ip: 10.244.0.10, namespace: platform, name: allowed, interface: azvallowed}
- {ip: 10.244.0.11, namespace: shop, name: web, interface: azvweb, labels: {app: web}}
- {ips: [10.244.1.10, 'fd00::10'], namespace: jobs, name: batch, interface: cbr0}
- {ip: 10.244.0.12, namespace: shop, name: api}
";

    fn pair(i: &str, a: &str) -> SourcePair {
        SourcePair::new(i, a.parse().unwrap()).unwrap()
    }

    #[test]
    fn interfaces_give_the_known_pairs_and_the_index_stays_the_proxys() {
        let pods = PodIndex::parse(FILE).unwrap();
        assert_eq!(pods.len(), 5);
        assert_eq!(
            pods.get("10.244.0.11".parse().unwrap())
                .unwrap()
                .labels
                .get("app")
                .map(String::as_str),
            Some("web")
        );
        assert_eq!(
            pods.known_pairs(),
            [
                pair("azvallowed", "10.244.0.10"),
                pair("azvweb", "10.244.0.11"),
                pair("cbr0", "10.244.1.10"),
                pair("cbr0", "fd00::10"),
            ]
        );
        assert_eq!(pods.without_interface(), ["shop/api"]);
        let specs = [
            imdsguard_node::parse_allow_spec("platform/allowed").unwrap(),
            imdsguard_node::parse_allow_spec("shop/*").unwrap(),
            imdsguard_node::parse_allow_spec("azvx=10.0.0.9").unwrap(),
        ];
        assert_eq!(
            allowed_pairs(&pods, &specs),
            [
                pair("azvallowed", "10.244.0.10"),
                pair("azvweb", "10.244.0.11"),
                pair("azvx", "10.0.0.9"),
            ]
        );
        let wrapped = format!("pods:\n{}", FILE.replace("\n-", "\n  -"));
        assert_eq!(PodIndex::parse(&wrapped).unwrap().known_pairs().len(), 4);
    }

    #[test]
    fn policy_subjects_select_pods_by_namespace_account_and_labels() {
        let pods = PodIndex::parse(FILE).unwrap();
        let rules = AccessRules::parse(
            "rules:
  - name: web
    subjects: [{namespace: shop, podSelector: {matchLabels: {app: web}}}]
    paths: [/metadata/instance/compute/location]
  - name: batch
    subjects: [{namespace: jobs, serviceAccount: default}]
    paths: [/metadata/instance/compute/location]
  - name: nobody
    subjects: [{namespace: platform, serviceAccount: other}]
    paths: [/metadata/instance/compute/location]
",
        )
        .unwrap();
        assert_eq!(
            policy_pairs(&pods, &rules),
            [
                pair("azvweb", "10.244.0.11"),
                pair("cbr0", "10.244.1.10"),
                pair("cbr0", "fd00::10"),
            ],
            "shop/api has no interface; platform/allowed's account is not `other`"
        );
        assert!(policy_pairs(&pods, &AccessRules::default()).is_empty());
    }

    #[test]
    fn bad_files_are_refused() {
        for bad in [
            "- {ip: 10.0.0.1, namespace: a, name: b, interface: 'azv*'}",
            "- {ip: 10.0.0.1, namespace: a, name: b, interface: [x]}",
            "- {ip: 10.0.0.1, namespace: a, name: b, interfce: azv1}",
            "- {ip: nope, namespace: a, name: b}",
            "42",
        ] {
            assert!(PodIndex::parse(bad).is_err(), "{bad}");
        }
        assert!(PodIndex::parse("").unwrap().pods().is_empty());
    }

    /// A finished pod named by `--allow` gets no pair, and the pod that reuses its
    /// address is the one known.
    #[test]
    fn a_finished_pod_is_not_allowlisted_and_its_successor_is_known() {
        let list = r#"{"kind": "PodList", "items": [
          {"metadata": {"name": "migrate", "namespace": "jobs",
             "annotations": {"imdsguard.io/interface": "azvold"}},
           "status": {"phase": "Succeeded", "podIP": "10.244.0.11"}},
          {"metadata": {"name": "web", "namespace": "shop",
             "annotations": {"imdsguard.io/interface": "azvweb"}},
           "status": {"phase": "Running", "podIP": "10.244.0.11"}},
          {"metadata": {"name": "ds", "namespace": "kube-system"}, "spec": {"hostNetwork": true},
           "status": {"podIP": "10.224.0.4"}}
        ]}"#;
        let pods = PodIndex::parse(list).unwrap();
        assert_eq!(pods.known_pairs(), [pair("azvweb", "10.244.0.11")]);
        assert_eq!(pods.len(), 1);
        let specs = [imdsguard_node::parse_allow_spec("jobs/migrate").unwrap()];
        assert!(allowed_pairs(&pods, &specs).is_empty());
    }
}
