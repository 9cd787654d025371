//! A Kubernetes `Pod` as the agent needs it (pure, no IO).

use std::net::IpAddr;

use imdsguard_core::access::PodInfo;
use k8s_openapi::api::core::v1::Pod;

/// The annotation naming a pod's node-side interface (as in the agent's pods file); when
/// set it wins over the route lookup.
pub const INTERFACE_ANNOTATION: &str = "imdsguard.io/interface";

/// A pod of the node, as the agent's pod index and nft sets need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubePod {
    /// Namespace, name, labels and service account (the proxy's view).
    pub info: PodInfo,
    /// The pod's UID (the Events' `involvedObject`), when the API gave one.
    pub uid: Option<String>,
    /// Its addresses (`status.podIPs`, else `status.podIP`), deduplicated, in order.
    pub addrs: Vec<IpAddr>,
    /// The `imdsguard.io/interface` annotation, if set.
    pub interface_annotation: Option<String>,
}

/// The agent's view of `pod`, or `None` for a pod it has nothing to do with: a
/// hostNetwork pod (it shares the node's address), a pod without an address yet, a
/// finished pod (`Succeeded` / `Failed`: its address may already be another pod's), or
/// a pod without a name.
pub fn pod_to_info(pod: &Pod) -> Option<KubePod> {
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network) == Some(true) {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let mut addrs: Vec<IpAddr> = Vec::new();
    let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
    for ip in listed.chain(status.pod_ip.as_deref()) {
        if let Ok(a) = ip.trim().parse::<IpAddr>()
            && !addrs.contains(&a)
        {
            addrs.push(a);
        }
    }
    if addrs.is_empty() {
        return None;
    }
    let meta = &pod.metadata;
    let service_account = spec
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    Some(KubePod {
        info: PodInfo {
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            name: meta.name.clone()?,
            labels: meta.labels.clone().unwrap_or_default(),
            service_account,
        },
        uid: meta.uid.clone(),
        addrs,
        interface_annotation: meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(INTERFACE_ANNOTATION))
            .filter(|s| !s.is_empty())
            .cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_running_pod_converts() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1",
                         "labels": {"app": "web"},
                         "annotations": {"imdsguard.io/interface": "azvweb"}},
            "spec": {"containers": [], "serviceAccountName": "web-sa", "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.244.0.11",
                       "podIPs": [{"ip": "10.244.0.11"}, {"ip": "fd00::11"}]}
        }));
        let k = pod_to_info(&p).unwrap();
        assert_eq!(k.info.id(), "shop/web");
        assert_eq!(k.info.service_account, "web-sa");
        assert_eq!(k.info.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(k.uid.as_deref(), Some("u-1"));
        assert_eq!(
            k.addrs,
            [
                "10.244.0.11".parse::<IpAddr>().unwrap(),
                "fd00::11".parse().unwrap()
            ]
        );
        assert_eq!(k.interface_annotation.as_deref(), Some("azvweb"));
    }

    #[test]
    fn defaults_and_the_single_address() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "api"},
            "spec": {"containers": []},
            "status": {"phase": "Pending", "podIP": "10.244.0.12"}
        }));
        let k = pod_to_info(&p).unwrap();
        assert_eq!(k.info.id(), "default/api");
        assert_eq!(k.info.service_account, "default");
        assert!(k.info.labels.is_empty() && k.uid.is_none() && k.interface_annotation.is_none());
        assert_eq!(k.addrs, ["10.244.0.12".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn skipped_pods() {
        for (why, json) in [
            (
                "hostNetwork",
                serde_json::json!({"metadata": {"name": "ds", "namespace": "kube-system"},
                    "spec": {"containers": [], "hostNetwork": true},
                    "status": {"phase": "Running", "podIP": "10.224.0.4"}}),
            ),
            (
                "no address yet",
                serde_json::json!({"metadata": {"name": "new", "namespace": "a"},
                    "spec": {"containers": []}, "status": {"phase": "Pending"}}),
            ),
            (
                "no status",
                serde_json::json!({"metadata": {"name": "new", "namespace": "a"}}),
            ),
            (
                "succeeded",
                serde_json::json!({"metadata": {"name": "job", "namespace": "a"},
                    "status": {"phase": "Succeeded", "podIP": "10.244.0.13"}}),
            ),
            (
                "failed",
                serde_json::json!({"metadata": {"name": "job", "namespace": "a"},
                    "status": {"phase": "Failed", "podIP": "10.244.0.13"}}),
            ),
            (
                "unparsable address",
                serde_json::json!({"metadata": {"name": "x", "namespace": "a"},
                    "status": {"phase": "Running", "podIP": "nope"}}),
            ),
        ] {
            assert_eq!(pod_to_info(&pod(json)), None, "{why}");
        }
    }
}
