//! A Kubernetes `Pod` as the core's plain pod ([`NodePod`]), straight from the typed
//! object (pure, no IO, no text in between). Which pod owns which address is not
//! decided here: [`imdsguard_core::pods::PodIndex::from_pods`] does, with the same
//! policy as for a pods file.

use std::net::IpAddr;

use imdsguard_core::pods::{
    INTERFACE_ANNOTATION, NodePod, PodInfo, PodPhase, service_account_or_default,
};
use k8s_openapi::api::core::v1::Pod;

/// The core's view of `pod`: namespace (`default` when unset), name, labels, service
/// account, UID, phase, whether it is terminating (`deletionTimestamp`), hostNetwork,
/// its addresses (`status.podIPs`, then `status.podIP`; an unparsable one is logged and
/// left out) and the [`INTERFACE_ANNOTATION`]. `None` only for a pod without a name.
pub fn pod_to_node_pod(pod: &Pod) -> Option<NodePod> {
    let meta = &pod.metadata;
    let name = meta.name.as_deref().filter(|n| !n.is_empty())?;
    let namespace = meta
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let info = PodInfo {
        labels: meta.labels.clone().unwrap_or_default(),
        service_account: service_account_or_default(
            spec.and_then(|s| s.service_account_name.as_deref()),
        ),
        ..PodInfo::new(namespace, name)
    };
    let addrs = pod_addresses(pod);
    let mut out = NodePod::new(info, addrs);
    out.uid = meta.uid.clone();
    out.phase = PodPhase::parse(status.and_then(|s| s.phase.as_deref()));
    out.terminating = meta.deletion_timestamp.is_some();
    out.host_network = spec.and_then(|s| s.host_network) == Some(true);
    out.interface = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(INTERFACE_ANNOTATION))
        .filter(|s| !s.is_empty())
        .cloned();
    Some(out)
}

/// The pod's addresses as its status gives them: `status.podIPs`, then `status.podIP`
/// when not already listed (a status written before dual-stack has it alone), each once,
/// in that order. One that does not read as an IP address is logged and left out; no
/// status or no address yet gives none.
pub fn pod_addresses(pod: &Pod) -> Vec<IpAddr> {
    let status = pod.status.as_ref();
    let listed = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .map(|p| p.ip.as_str());
    let single = status.and_then(|s| s.pod_ip.as_deref());
    let mut addrs: Vec<IpAddr> = Vec::new();
    for ip in listed.chain(single).filter(|s| !s.is_empty()) {
        match ip.trim().parse() {
            Ok(a) if !addrs.contains(&a) => addrs.push(a),
            Ok(_) => {}
            Err(_) => {
                let pod = format!(
                    "{}/{}",
                    pod.metadata
                        .namespace
                        .as_deref()
                        .filter(|n| !n.is_empty())
                        .unwrap_or("default"),
                    pod.metadata.name.as_deref().unwrap_or_default()
                );
                tracing::warn!(%pod, address = ip, "not an IP address: left out");
            }
        }
    }
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;
    use imdsguard_core::pods::PodIndex;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
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
        let k = pod_to_node_pod(&p).unwrap();
        assert_eq!(k.id(), "shop/web");
        assert_eq!(k.info.service_account, "web-sa");
        assert_eq!(k.info.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(k.uid.as_deref(), Some("u-1"));
        assert_eq!(k.addrs, [ip("10.244.0.11"), ip("fd00::11")]);
        assert_eq!(k.interface.as_deref(), Some("azvweb"));
        assert_eq!(k.phase, PodPhase::Running);
        assert!(k.claims_addresses() && !k.terminating && !k.host_network);
    }

    #[test]
    fn defaults_and_the_single_address() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "api"},
            "spec": {"containers": []},
            "status": {"phase": "Pending", "podIP": "10.244.0.12"}
        }));
        let k = pod_to_node_pod(&p).unwrap();
        assert_eq!(k.id(), "default/api");
        assert_eq!(k.info.service_account, "default");
        assert!(k.info.labels.is_empty() && k.uid.is_none() && k.interface.is_none());
        assert_eq!(k.addrs, [ip("10.244.0.12")]);
        assert!(pod_to_node_pod(&pod(serde_json::json!({"metadata": {}}))).is_none());
    }

    #[test]
    fn the_policy_facts_are_carried_to_the_core() {
        for (why, json, claims) in [
            (
                "hostNetwork",
                serde_json::json!({"metadata": {"name": "ds", "namespace": "kube-system"},
                    "spec": {"containers": [], "hostNetwork": true},
                    "status": {"phase": "Running", "podIP": "10.224.0.4"}}),
                false,
            ),
            (
                "succeeded",
                serde_json::json!({"metadata": {"name": "job", "namespace": "a"},
                    "status": {"phase": "Succeeded", "podIP": "10.244.0.13"}}),
                false,
            ),
            (
                "failed",
                serde_json::json!({"metadata": {"name": "job", "namespace": "a"},
                    "status": {"phase": "Failed", "podIP": "10.244.0.13"}}),
                false,
            ),
            (
                "terminating",
                serde_json::json!({"metadata": {"name": "t", "namespace": "a",
                        "deletionTimestamp": "2024-05-01T10:00:00Z"},
                    "status": {"phase": "Running", "podIP": "10.244.0.14"}}),
                true,
            ),
            (
                "no status",
                serde_json::json!({"metadata": {"name": "new", "namespace": "a"}}),
                true,
            ),
        ] {
            let k = pod_to_node_pod(&pod(json)).unwrap();
            assert_eq!(k.claims_addresses(), claims, "{why}");
        }
        let bad = pod(
            serde_json::json!({"metadata": {"name": "x", "namespace": "a"},
            "status": {"phase": "Running", "podIP": "nope"}}),
        );
        assert!(pod_to_node_pod(&bad).unwrap().addrs.is_empty());
    }

    /// The typed path and the text path give the same answer for the reported case: a
    /// completed Job pod and the running pod that reuses its address.
    #[test]
    fn a_completed_pod_and_its_successor_from_the_api() {
        let job = pod(serde_json::json!({
            "metadata": {"name": "migrate-28xk2", "namespace": "jobs"},
            "spec": {"containers": [], "restartPolicy": "Never"},
            "status": {"phase": "Succeeded", "podIP": "10.244.1.7", "podIPs": [{"ip": "10.244.1.7"}]}
        }));
        let api = pod(serde_json::json!({
            "metadata": {"name": "api", "namespace": "payments"},
            "spec": {"containers": [], "serviceAccountName": "api"},
            "status": {"phase": "Running", "podIP": "10.244.1.7", "podIPs": [{"ip": "10.244.1.7"}]}
        }));
        let idx = PodIndex::from_pods([&job, &api].into_iter().filter_map(pod_to_node_pod));
        assert_eq!(idx.get(ip("10.244.1.7")).unwrap().id(), "payments/api");
        assert!(idx.issues().is_empty());
    }

    #[test]
    fn addresses_from_the_status() {
        use k8s_openapi::api::core::v1::{PodIP, PodStatus};
        let with = |pod_ip: Option<&str>, pod_ips: Option<&[&str]>| Pod {
            status: Some(PodStatus {
                pod_ip: pod_ip.map(Into::into),
                pod_ips: pod_ips.map(|l| l.iter().map(|ip| PodIP { ip: (*ip).into() }).collect()),
                ..PodStatus::default()
            }),
            ..Pod::default()
        };
        let ips = |l: &[&str]| -> Vec<std::net::IpAddr> {
            l.iter().map(|s| s.parse().unwrap()).collect()
        };
        assert!(pod_addresses(&Pod::default()).is_empty());
        assert!(pod_addresses(&with(None, None)).is_empty());
        assert_eq!(
            pod_addresses(&with(
                Some("10.0.0.5"),
                Some(&["10.0.0.5", "fd00:10:244::5"])
            )),
            ips(&["10.0.0.5", "fd00:10:244::5"])
        );
        // podIP alone (an empty podIPs), and an address that does not read left out.
        assert_eq!(
            pod_addresses(&with(Some("10.0.0.5"), Some(&[]))),
            ips(&["10.0.0.5"])
        );
        assert_eq!(
            pod_addresses(&with(None, Some(&["not-an-ip", "fd00::5"]))),
            ips(&["fd00::5"])
        );
    }
}
