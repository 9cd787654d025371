//! `imdsguard controller --cloud aws|gcp` against the real API server (a control plane
//! of each test's own: the controller owns every namespace and MetadataAccessPolicy
//! object). The generated deny-with-allowlist covers the cloud's targets on both
//! families (AWS: IMDS, the EKS Pod Identity agent and ECS task metadata on IPv4, IMDS
//! and the Pod Identity agent on IPv6; GCP: the metadata server on both), objects of
//! the cloud are applied and the others refused in their status (`Ready` false, reason
//! `OtherCloud`). No kubelet runs: the tests write pod status (phase).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use imdsguard_controller::{ControllerConfig, ControllerHandle, start};
use imdsguard_core::generate::OutputEngine;
use imdsguard_core::target::Cloud;
use imdsguard_testkit::ControlPlane;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::Value;

const DENY: &str = "imdsguard-deny-metadata";
/// The deny's companion for IPv6 (and SCTP): Azure NPM is IPv4-only and rejects a
/// policy with IPv6 blocks, so the core puts them apart.
const DENY_V6: &str = "imdsguard-deny-metadata-ipv6-sctp";
const LIMIT: Duration = Duration::from_secs(10);

async fn client(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("the kubeconfig reads");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("the kubeconfig is usable");
    Client::try_from(config).expect("a client")
}

async fn controller(cp: &ControlPlane, cloud: Cloud) -> ControllerHandle {
    let mut c = ControllerConfig::new(client(cp.kubeconfig()).await, "only").for_cloud(cloud);
    c.engine = Some(OutputEngine::NetworkPolicy);
    c.lease_namespace = "default".into();
    c.lease_duration = Duration::from_secs(3);
    c.lease_grace = Duration::from_secs(1);
    c.resync = Duration::from_secs(2);
    c.debounce = Duration::from_millis(100);
    start(c).await.expect("the controller starts")
}

fn get(cp: &ControlPlane, args: &[&str]) -> Option<Value> {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    let out = cp.kubectl(&a, None);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("NotFound"), "kubectl get {args:?}: {err}");
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).expect("kubectl prints JSON"))
}

async fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn running_pod(cp: &ControlPlane, ns: &str, name: &str, sa: &str) {
    cp.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    app: {sa}\nspec:\n  serviceAccountName: {sa}\n  containers:\n  - name: c\n    image: registry.invalid/none:1\n"
    ));
    cp.kubectl_ok(
        &[
            "patch",
            "pod",
            "-n",
            ns,
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Running"}}"#,
        ],
        None,
    );
}

fn condition<'a>(map: &'a Value, type_: &str) -> Option<&'a Value> {
    map.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Every `ipBlock.except` of a NetworkPolicy's egress rules.
fn excepts(policy: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for rule in policy["spec"]["egress"].as_array().into_iter().flatten() {
        for to in rule["to"].as_array().into_iter().flatten() {
            for e in to["ipBlock"]["except"].as_array().into_iter().flatten() {
                out.insert(e.as_str().unwrap().to_string());
            }
        }
    }
    out
}

/// The generated objects in `ns` named `imdsguard-allow-metadata-*`.
fn allows(cp: &ControlPlane, ns: &str) -> Vec<Value> {
    get(
        cp,
        &[
            "networkpolicies",
            "-n",
            ns,
            "-l",
            "app.kubernetes.io/managed-by=imdsguard",
        ],
    )
    .map(|l| {
        l["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| {
                i["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .starts_with("imdsguard-allow-metadata-")
            })
            .cloned()
            .collect()
    })
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs control plane"]
async fn aws_denies_its_targets_on_both_families_and_refuses_azure_objects() {
    let cp = ControlPlane::dedicated(
        "aws_denies_its_targets_on_both_families_and_refuses_azure_objects",
    );
    cp.install_imdsguard_crd();
    cp.kubectl_ok(&["create", "namespace", "payments"], None);
    running_pod(&cp, "payments", "api-0", "api");
    running_pod(&cp, "payments", "batch-0", "batch");
    cp.apply(
        "apiVersion: imdsguard.io/v1alpha1\nkind: MetadataAccessPolicy\nmetadata:\n  name: eks\nspec:\n  cloud: aws\n  rules:\n  - name: imdsv2-token\n    subjects: [{namespace: payments, podSelector: {matchLabels: {app: api}}}]\n    methods: [PUT]\n    paths: [/latest/api/token]\n  - name: payments-role\n    subjects: [{namespace: payments, podSelector: {matchLabels: {app: api}}}]\n    paths: [/latest/meta-data/iam/security-credentials/eks-node-role]\n",
    );
    cp.apply(
        "apiVersion: imdsguard.io/v1alpha1\nkind: MetadataAccessPolicy\nmetadata:\n  name: azure-leftover\nspec:\n  rules:\n  - name: batch\n    subjects: [{namespace: payments, podSelector: {matchLabels: {app: batch}}}]\n    paths: [/metadata/instance/compute]\n",
    );

    let ctl = controller(&cp, Cloud::Aws).await;
    eventually("leader", LIMIT, || ctl.is_leader().then_some(())).await;
    let denied = eventually("the deny and its IPv6 companion in payments", LIMIT, || {
        let v4 = get(&cp, &["networkpolicy", "-n", "payments", DENY])?;
        let v6 = get(&cp, &["networkpolicy", "-n", "payments", DENY_V6])?;
        Some(
            excepts(&v4)
                .into_iter()
                .chain(excepts(&v6))
                .collect::<BTreeSet<_>>(),
        )
    })
    .await;
    for cidr in [
        "169.254.169.254/32",
        "169.254.170.23/32",
        "169.254.170.2/32",
        "fd00:ec2::254/128",
        "fd00:ec2::23/128",
    ] {
        assert!(
            denied.contains(cidr),
            "the deny does not except {cidr}: {denied:?}"
        );
    }
    assert!(
        !denied.contains("168.63.129.16/32"),
        "Azure's WireServer is no AWS target: {denied:?}"
    );

    // The AWS object's pods get an allow; the Azure object's do not.
    let allowed = eventually("an allow for eks's pods", LIMIT, || {
        let a = allows(&cp, "payments");
        (!a.is_empty()).then_some(a)
    })
    .await;
    let text = serde_json::to_string(&allowed).unwrap();
    assert!(
        text.contains("\"app\":\"api\""),
        "the allow selects the api pods: {text}"
    );
    assert!(
        !text.contains("\"app\":\"batch\""),
        "the refused object adds nothing: {text}"
    );

    let eks = eventually("eks Ready", LIMIT, || {
        let m = get(&cp, &["metadataaccesspolicy", "eks"])?;
        (condition(&m, "Ready")?["status"] == "True").then_some(m)
    })
    .await;
    let rules = eks["status"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert!(rules.iter().all(|r| r["selectedPods"] == 1), "{rules:?}");

    let refused = eventually("azure-leftover refused", LIMIT, || {
        let m = get(&cp, &["metadataaccesspolicy", "azure-leftover"])?;
        (condition(&m, "Ready")?["status"] == "False").then_some(m)
    })
    .await;
    let ready = condition(&refused, "Ready").unwrap();
    assert_eq!(ready["reason"], "OtherCloud", "{ready}");
    let msg = ready["message"].as_str().unwrap();
    assert!(
        msg.contains("spec.cloud is azure") && msg.contains("--cloud aws"),
        "{msg}"
    );
    assert!(refused["status"]["generated"].is_null(), "{refused}");
    ctl.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs control plane"]
async fn gcp_denies_the_metadata_server_on_both_families_and_refuses_aws_objects() {
    let cp = ControlPlane::dedicated(
        "gcp_denies_the_metadata_server_on_both_families_and_refuses_aws_objects",
    );
    cp.install_imdsguard_crd();
    cp.kubectl_ok(&["create", "namespace", "payments"], None);
    running_pod(&cp, "payments", "api-0", "api");
    cp.apply(
        "apiVersion: imdsguard.io/v1alpha1\nkind: MetadataAccessPolicy\nmetadata:\n  name: gke\nspec:\n  cloud: gcp\n  rules:\n  - name: payments-token\n    subjects: [{namespace: payments, podSelector: {matchLabels: {app: api}}}]\n    paths:\n    - /computeMetadata/v1/instance/service-accounts/default/token\n    - /computeMetadata/v1/instance/service-accounts/default/identity\n    audiences: [https://payments.example.com]\n",
    );
    cp.apply(
        "apiVersion: imdsguard.io/v1alpha1\nkind: MetadataAccessPolicy\nmetadata:\n  name: eks\nspec:\n  cloud: aws\n  rules:\n  - name: token\n    subjects: [{namespace: \"*\"}]\n    methods: [PUT]\n    paths: [/latest/api/token]\n",
    );
    let ctl = controller(&cp, Cloud::Gcp).await;
    eventually("leader", LIMIT, || ctl.is_leader().then_some(())).await;
    let denied = eventually("the deny and its IPv6 companion in payments", LIMIT, || {
        let v4 = get(&cp, &["networkpolicy", "-n", "payments", DENY])?;
        let v6 = get(&cp, &["networkpolicy", "-n", "payments", DENY_V6])?;
        Some(
            excepts(&v4)
                .into_iter()
                .chain(excepts(&v6))
                .collect::<BTreeSet<_>>(),
        )
    })
    .await;
    for cidr in ["169.254.169.254/32", "fd20:ce::254/128"] {
        assert!(denied.contains(cidr), "{cidr} not excepted: {denied:?}");
    }
    assert!(
        !denied.contains("169.254.170.23/32"),
        "the EKS Pod Identity agent is no GCP target: {denied:?}"
    );
    eventually("an allow for gke's pods", LIMIT, || {
        (!allows(&cp, "payments").is_empty()).then_some(())
    })
    .await;
    eventually("gke Ready", LIMIT, || {
        let m = get(&cp, &["metadataaccesspolicy", "gke"])?;
        (condition(&m, "Ready")?["status"] == "True").then_some(())
    })
    .await;
    let eks = eventually("eks refused", LIMIT, || {
        let m = get(&cp, &["metadataaccesspolicy", "eks"])?;
        (condition(&m, "Ready")?["reason"] == "OtherCloud").then_some(m)
    })
    .await;
    let msg = condition(&eks, "Ready").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("spec.cloud is aws") && msg.contains("--cloud gcp"),
        "{msg}"
    );
    ctl.shutdown().await;
}
