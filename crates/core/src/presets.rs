//! Access-rules files shipped with imdsguard (`presets/*.yaml` at the repository's root),
//! compiled in: `imdsguard audit --preset aks` reads them from here, so a preset is the
//! same text whatever the working directory. Each is an ordinary rules file
//! ([`crate::access::AccessRules::parse`], format in `docs/proxy.md`) whose entries cite
//! where their labels and needs come from (`docs/expected-access.md`).

/// The presets, by name, with their text.
pub const PRESETS: &[(&str, &str)] = &[("aks", include_str!("../../../presets/aks.yaml"))];

/// The text of the preset called `name`, if there is one.
pub fn preset(name: &str) -> Option<&'static str> {
    PRESETS
        .iter()
        .find_map(|(n, text)| (*n == name).then_some(*text))
}

/// The names of the presets, for help texts and error messages.
pub fn names() -> impl Iterator<Item = &'static str> {
    PRESETS.iter().map(|(n, _)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{AccessRules, PodShapeRef};
    use crate::model::Labels;

    fn aks() -> AccessRules {
        AccessRules::parse(preset("aks").expect("aks preset")).expect("the aks preset parses")
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expected_by(rules: &AccessRules, ns: &str, l: &Labels, sa: Option<&str>) -> Vec<String> {
        rules
            .expecting(&PodShapeRef {
                namespace: ns,
                labels: l,
                service_account: sa,
            })
            .iter()
            .map(|r| r.name.to_string())
            .collect()
    }

    /// The pod-template labels each add-on's source shows (cited in presets/aks.yaml),
    /// with the rule that must expect it. Extra labels a real pod carries
    /// (pod-template-hash, controller-revision-hash) must not matter.
    fn addons() -> Vec<(&'static str, &'static str, Labels, &'static str)> {
        vec![
            (
                "ama-logs DaemonSet",
                "ama-logs",
                labels(&[
                    ("component", "ama-logs-agent"),
                    ("tier", "node"),
                    ("kubernetes.azure.com/managedby", "aks"),
                    ("controller-revision-hash", "6d4b9c8f7"),
                ]),
                "aks-container-insights",
            ),
            (
                "ama-logs-rs Deployment",
                "ama-logs",
                labels(&[
                    ("rsName", "ama-logs-rs"),
                    ("kubernetes.azure.com/managedby", "aks"),
                    ("pod-template-hash", "5f7c9d"),
                ]),
                "aks-container-insights",
            ),
            (
                "ama-logs-windows DaemonSet",
                "ama-logs",
                labels(&[
                    ("component", "ama-logs-agent-windows"),
                    ("tier", "node-win"),
                    ("kubernetes.azure.com/managedby", "aks"),
                ]),
                "aks-container-insights",
            ),
            (
                "ingress-appgw-deployment",
                "default",
                labels(&[
                    ("app", "ingress-appgw"),
                    ("kubernetes.azure.com/managedby", "aks"),
                    ("pod-template-hash", "687df9db49"),
                ]),
                "aks-app-gateway-ingress",
            ),
            (
                "aks-secrets-store-provider-azure",
                "default",
                labels(&[("app", "secrets-store-provider-azure")]),
                "aks-keyvault-secrets-provider",
            ),
            (
                "azure-policy",
                "azure-policy",
                labels(&[("app", "azure-policy")]),
                "aks-azure-policy",
            ),
            (
                "aci-connector-linux",
                "aci-connector-linux",
                labels(&[
                    ("app", "aci-connector-linux"),
                    ("kubernetes.azure.com/managedby", "aks"),
                ]),
                "aks-virtual-node",
            ),
            (
                "cloud-node-manager",
                "cloud-node-manager",
                labels(&[("k8s-app", "cloud-node-manager")]),
                "aks-cloud-node-manager",
            ),
            (
                "cloud-node-manager-windows",
                "cloud-node-manager",
                labels(&[("k8s-app", "cloud-node-manager-windows")]),
                "aks-cloud-node-manager",
            ),
        ]
    }

    #[test]
    fn presets_are_found_by_name_and_parse() {
        assert_eq!(names().collect::<Vec<_>>(), ["aks"]);
        assert!(preset("gke").is_none());
        for (name, text) in PRESETS {
            let r = AccessRules::parse(text).unwrap_or_else(|e| panic!("preset {name}: {e}"));
            assert!(!r.is_empty(), "preset {name} has no rules");
        }
        assert_eq!(aks().len(), 6);
    }

    #[test]
    fn each_aks_addon_is_expected_in_kube_system_with_its_real_labels() {
        let rules = aks();
        for (what, sa, l, rule) in addons() {
            // With the service account its manifest names, and without one known.
            for sa in [Some(sa), None] {
                assert_eq!(
                    expected_by(&rules, "kube-system", &l, sa),
                    [rule],
                    "{what} (service account {sa:?})"
                );
            }
        }
    }

    #[test]
    fn look_alikes_are_not_expected() {
        let rules = aks();
        // The same labels in another namespace: anyone can label a pod like an add-on.
        for (what, sa, l, _) in addons() {
            for ns in ["default", "monitoring", "kube-public"] {
                assert!(
                    expected_by(&rules, ns, &l, Some(sa)).is_empty(),
                    "{what} in {ns}"
                );
            }
        }
        // In kube-system, pods that are not the add-ons.
        for l in [
            labels(&[("component", "ama-logs-agent")]), // tier and managedby missing
            labels(&[("component", "ama-logs-agent"), ("tier", "node")]),
            labels(&[("rsName", "ama-logs-rs")]),
            labels(&[("app", "ingress-appgw")]),
            labels(&[("app", "ingress-azure")]), // AGIC from Helm: not this preset
            labels(&[("app", "csi-secrets-store-provider-azure")]),
            labels(&[("app", "secrets-store-csi-driver")]),
            labels(&[("k8s-app", "kube-dns")]),
            labels(&[("app", "aci-connector-linux")]),
            labels(&[]),
        ] {
            assert!(
                expected_by(&rules, "kube-system", &l, Some("default")).is_empty(),
                "{l:?}"
            );
        }
    }
}
