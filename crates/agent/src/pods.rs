//! The agent's pods file: the proxy's pod index ([`PodIndex`]) plus, per pod, the
//! node-side interface its traffic enters on. The interface is kept here, next to the
//! index, so that the proxy's format stays as it is: the agent strips `interface` before
//! handing each entry to [`PodIndex::parse`].
//!
//! ```yaml
//! - {ip: 10.244.0.10, namespace: platform, name: allowed, interface: azvallowed}
//! - {ip: 10.244.0.11, namespace: shop, name: web, interface: azvweb, labels: {app: web}}
//! - {ip: 10.244.1.10, namespace: jobs, name: batch, interface: cbr0}   # kubenet: the bridge
//! ```
//!
//! A Kubernetes `PodList` works too; there the interface comes from the annotation
//! `imdsguard.io/interface`. A pod without an interface is known to the proxy but not to
//! nft: in proxy mode its traffic is dropped (its address cannot be bound to an
//! interface), which the agent logs.

use std::net::IpAddr;

use imdsguard_core::access::PodIndex;
use imdsguard_core::nft::AllowedPair;
use imdsguard_node::AllowSpec;
use serde_json::Value;

/// The annotation naming a pod's node-side interface in a Kubernetes `PodList`.
pub const INTERFACE_ANNOTATION: &str = "imdsguard.io/interface";

/// One pod of the node, as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The interface its traffic enters the node on (`azv…`, or the bridge), if given.
    pub interface: Option<String>,
    /// Its addresses.
    pub addrs: Vec<IpAddr>,
}

/// The pods the node hosts: the proxy's index and the (interface, address) pairs.
#[derive(Debug, Clone, Default)]
pub struct NodePods {
    /// The pod index the proxy identifies callers with.
    pub index: PodIndex,
    /// Every pod, with its interface.
    pub pods: Vec<NodePod>,
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn addrs_of(entry: &Value) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    if let Some(ip) = str_field(entry, "ip").and_then(|s| s.trim().parse().ok()) {
        out.push(ip);
    }
    if let Some(ips) = entry.get("ips").and_then(Value::as_array) {
        out.extend(
            ips.iter()
                .filter_map(Value::as_str)
                .filter_map(|s| s.trim().parse::<IpAddr>().ok()),
        );
    }
    out
}

fn k8s_pod(item: &Value) -> Option<NodePod> {
    if item
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k != "Pod")
        || item["spec"]["hostNetwork"].as_bool() == Some(true)
    {
        return None;
    }
    let meta = &item["metadata"];
    let mut addrs: Vec<IpAddr> = item["status"]["podIPs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["ip"].as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    if addrs.is_empty()
        && let Some(ip) = item["status"]["podIP"]
            .as_str()
            .and_then(|s| s.parse().ok())
    {
        addrs.push(ip);
    }
    Some(NodePod {
        namespace: str_field(meta, "namespace").unwrap_or("default").to_owned(),
        name: str_field(meta, "name")?.to_owned(),
        interface: meta["annotations"][INTERFACE_ANNOTATION]
            .as_str()
            .map(str::to_owned),
        addrs,
    })
}

impl NodePods {
    /// Reads a pods file (see the module documentation). Errors name the entry.
    pub fn parse(text: &str) -> Result<NodePods, String> {
        let value: Value =
            serde_norway::from_str(text).map_err(|e| format!("not YAML or JSON: {e}"))?;
        let mut pods = Vec::new();
        let index_text = match &value {
            Value::Object(map) if map.get("items").is_some_and(Value::is_array) => {
                pods.extend(
                    map["items"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(k8s_pod),
                );
                text.to_owned()
            }
            _ => {
                let (mut entries, wrapped) = match value {
                    Value::Array(items) => (items, false),
                    Value::Null => (Vec::new(), false),
                    Value::Object(mut map) => match map.remove("pods") {
                        Some(Value::Array(items)) => (items, true),
                        Some(Value::Null) => (Vec::new(), true),
                        _ => {
                            return Err(
                                "expected a list of pods, `pods: [...]`, or a Kubernetes PodList"
                                    .into(),
                            );
                        }
                    },
                    _ => {
                        return Err(
                            "expected a list of pods, `pods: [...]`, or a Kubernetes PodList"
                                .into(),
                        );
                    }
                };
                for (i, entry) in entries.iter_mut().enumerate() {
                    let interface = match entry.as_object_mut().and_then(|m| m.remove("interface"))
                    {
                        None | Some(Value::Null) => None,
                        Some(Value::String(s)) => Some(s),
                        Some(other) => {
                            return Err(format!(
                                "[{i}]: `interface` must be a string, not {other}"
                            ));
                        }
                    };
                    pods.push(NodePod {
                        namespace: str_field(entry, "namespace").unwrap_or("").to_owned(),
                        name: str_field(entry, "name").unwrap_or("").to_owned(),
                        interface,
                        addrs: addrs_of(entry),
                    });
                }
                let stripped = if wrapped {
                    serde_json::json!({ "pods": entries })
                } else {
                    Value::Array(entries)
                };
                stripped.to_string()
            }
        };
        let index = PodIndex::parse(&index_text).map_err(|e| e.to_string())?;
        for p in &pods {
            if let Some(iface) = &p.interface {
                for addr in &p.addrs {
                    AllowedPair::new(iface, *addr)
                        .map_err(|e| format!("pod {}/{}: {e}", p.namespace, p.name))?;
                }
            }
        }
        Ok(NodePods { index, pods })
    }

    /// Every (interface, address) pair of a pod with an interface: the known set.
    pub fn known_pairs(&self) -> Vec<AllowedPair> {
        let mut out: Vec<AllowedPair> = self
            .pods
            .iter()
            .filter_map(|p| Some((p.interface.as_deref()?, &p.addrs)))
            .flat_map(|(iface, addrs)| {
                addrs
                    .iter()
                    .filter_map(move |a| AllowedPair::new(iface, *a).ok())
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Pods without an interface (`namespace/name`): not in the known set.
    pub fn without_interface(&self) -> Vec<String> {
        self.pods
            .iter()
            .filter(|p| p.interface.is_none())
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect()
    }

    /// The allow set: the `IFACE=ADDR` entries, and the pairs of the pods named by
    /// `NAMESPACE/NAME` entries (pods without an interface cannot be allowlisted).
    pub fn allowed_pairs(&self, specs: &[AllowSpec]) -> Vec<AllowedPair> {
        let mut out: Vec<AllowedPair> = Vec::new();
        for spec in specs {
            match spec {
                AllowSpec::Pair(p) => out.push(p.clone()),
                AllowSpec::Pod { .. } => {
                    for pod in self
                        .pods
                        .iter()
                        .filter(|p| spec.names_pod(&p.namespace, &p.name))
                    {
                        if let Some(iface) = &pod.interface {
                            out.extend(
                                pod.addrs
                                    .iter()
                                    .filter_map(|a| AllowedPair::new(iface, *a).ok()),
                            );
                        }
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        out
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

    fn pair(i: &str, a: &str) -> AllowedPair {
        AllowedPair::new(i, a.parse().unwrap()).unwrap()
    }

    #[test]
    fn interfaces_give_the_known_pairs_and_the_index_stays_the_proxys() {
        let pods = NodePods::parse(FILE).unwrap();
        assert_eq!(pods.index.len(), 5);
        assert_eq!(
            pods.index
                .get("10.244.0.11".parse().unwrap())
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
            pods.allowed_pairs(&specs),
            [
                pair("azvallowed", "10.244.0.10"),
                pair("azvweb", "10.244.0.11"),
                pair("azvx", "10.0.0.9"),
            ]
        );
        let wrapped = format!("pods:\n{}", FILE.replace("\n-", "\n  -"));
        assert_eq!(NodePods::parse(&wrapped).unwrap().known_pairs().len(), 4);
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
            assert!(NodePods::parse(bad).is_err(), "{bad}");
        }
        assert!(NodePods::parse("").unwrap().pods.is_empty());
    }

    #[test]
    fn kubernetes_lists_take_the_interface_from_an_annotation() {
        let list = r#"{"kind": "PodList", "items": [
          {"metadata": {"name": "web", "namespace": "shop",
             "annotations": {"imdsguard.io/interface": "azvweb"}},
           "status": {"podIP": "10.244.0.11"}},
          {"metadata": {"name": "ds", "namespace": "kube-system"}, "spec": {"hostNetwork": true},
           "status": {"podIP": "10.224.0.4"}}
        ]}"#;
        let pods = NodePods::parse(list).unwrap();
        assert_eq!(pods.known_pairs(), [pair("azvweb", "10.244.0.11")]);
        assert_eq!(pods.index.len(), 1);
    }
}
