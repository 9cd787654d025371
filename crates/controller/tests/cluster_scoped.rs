//! The dynamic apply path for a cluster-scoped engine: `--engine cnp` writes
//! ClusterNetworkPolicies (policy.networking.k8s.io/v1alpha2). The test control plane
//! has no network-policy-api CRDs, so the test installs a schemaless stand-in CRD of the
//! same group, version, kind and plural: it checks what the controller sends and keeps,
//! not the API's validation.

use std::time::{Duration, Instant};

use imdsguard_controller::{ControllerConfig, start};
use imdsguard_core::generate::OutputEngine;
use imdsguard_testkit::ControlPlane;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::Value;

const CNP_CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: clusternetworkpolicies.policy.networking.k8s.io
  annotations:
    api-approved.kubernetes.io: https://github.com/kubernetes-sigs/network-policy-api/pull/30
spec:
  group: policy.networking.k8s.io
  scope: Cluster
  names:
    kind: ClusterNetworkPolicy
    listKind: ClusterNetworkPolicyList
    plural: clusternetworkpolicies
    singular: clusternetworkpolicy
  versions:
  - name: v1alpha2
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
";

fn managed(cp: &ControlPlane) -> Vec<Value> {
    let out = cp.kubectl_ok(
        &[
            "get",
            "clusternetworkpolicies.policy.networking.k8s.io",
            "-l",
            "app.kubernetes.io/managed-by=imdsguard",
            "-o",
            "json",
        ],
        None,
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    v["items"].as_array().unwrap().clone()
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "not within 5 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs control plane"]
async fn the_cnp_engine_keeps_cluster_scoped_policies() {
    let cp = ControlPlane::dedicated("the_cnp_engine_keeps_cluster_scoped_policies");
    let crd = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/crds/metadataaccesspolicies.imdsguard.io.yaml"
    ))
    .unwrap();
    cp.apply(&crd);
    cp.apply(CNP_CRD);
    cp.wait_established(&[
        "crd/metadataaccesspolicies.imdsguard.io",
        "crd/clusternetworkpolicies.policy.networking.k8s.io",
    ]);
    cp.kubectl_ok(&["create", "namespace", "shop"], None);
    cp.apply("apiVersion: imdsguard.io/v1alpha1\nkind: MetadataAccessPolicy\nmetadata:\n  name: platform\nspec:\n  rules:\n  - name: app\n    subjects:\n    - namespace: shop\n      podSelector:\n        matchLabels:\n          app: allowed\n    paths: [\"/metadata/instance/compute\"]\n");
    let kc = Kubeconfig::read_from(cp.kubeconfig()).unwrap();
    let client = Client::try_from(
        Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .unwrap(),
    )
    .unwrap();
    let mut config = ControllerConfig::new(client, "cnp");
    config.engine = Some(OutputEngine::Cnp);
    config.lease_namespace = "default".into();
    config.debounce = Duration::from_millis(100);
    config.resync = Duration::from_secs(2);
    let ctl = start(config).await.unwrap();

    // An allow for the rule's subject and the deny for every pod, Admin tier.
    eventually("the allow and the deny", || {
        let names: Vec<String> = managed(&cp)
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        names
            .iter()
            .any(|n| n.starts_with("imdsguard-allow-metadata-"))
            && names
                .iter()
                .any(|n| n.starts_with("imdsguard-deny-metadata"))
    })
    .await;
    let objects = managed(&cp);
    assert!(
        objects.iter().all(|o| o["spec"]["tier"] == "Admin"),
        "{objects:?}"
    );
    let deny = objects
        .iter()
        .find(|o| {
            o["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("imdsguard-deny-metadata")
        })
        .unwrap()["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    // No NetworkPolicy is written by the cnp engine.
    let nps = cp.kubectl_ok(&["get", "networkpolicies", "-A", "-o", "name"], None);
    assert!(nps.trim().is_empty(), "{nps}");

    // Drift on a cluster-scoped object: deleted, restored.
    cp.kubectl_ok(
        &[
            "delete",
            "clusternetworkpolicies.policy.networking.k8s.io",
            &deny,
        ],
        None,
    );
    eventually("the deleted deny restored", || {
        managed(&cp)
            .iter()
            .any(|o| o["metadata"]["name"] == deny.as_str())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let writes = ctl.metrics().writes_total();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(ctl.metrics().writes_total(), writes, "a quiet resync wrote");

    // The MetadataAccessPolicy gone: everything generated goes.
    cp.kubectl_ok(&["delete", "metadataaccesspolicy", "platform"], None);
    eventually("every generated policy removed", || managed(&cp).is_empty()).await;
    ctl.shutdown().await;
}
