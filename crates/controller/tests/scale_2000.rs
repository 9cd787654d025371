//! 2,000 namespaces created at once: every one carries its generated deny within 60 s,
//! and a resync afterwards writes nothing (issue 10's scale goal; docs/controller.md).

use std::time::{Duration, Instant};

use imdsguard_controller::{ControllerConfig, start};
use imdsguard_core::generate::OutputEngine;
use imdsguard_testkit::ControlPlane;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

const NAMESPACES: usize = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs control plane"]
async fn two_thousand_new_namespaces_are_protected_within_a_minute() {
    let cp = ControlPlane::dedicated("two_thousand_new_namespaces_are_protected_within_a_minute");
    cp.install_imdsguard_crd();
    cp.apply("apiVersion: imdsguard.io/v1alpha1\nkind: MetadataAccessPolicy\nmetadata:\n  name: platform\nspec:\n  rules:\n  - name: app\n    subjects:\n    - namespace: ns-0\n      podSelector:\n        matchLabels:\n          app: allowed\n    paths: [\"/metadata/instance/compute\"]\n");
    let kc = Kubeconfig::read_from(cp.kubeconfig()).unwrap();
    let client = Client::try_from(
        Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .unwrap(),
    )
    .unwrap();
    let mut config = ControllerConfig::new(client, "scale");
    config.engine = Some(OutputEngine::NetworkPolicy);
    config.lease_namespace = "default".into();
    config.resync = Duration::from_secs(3);
    let ctl = start(config).await.unwrap();
    while !ctl.is_leader() || !ctl.synced() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list: String = (0..NAMESPACES)
        .map(|i| format!("---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns-{i}\n"))
        .collect();
    let t0 = Instant::now();
    cp.kubectl_ok(&["create", "-f", "-"], Some(&list));
    let created = t0.elapsed();
    let count = || {
        let out = cp.kubectl_ok(
            &[
                "get",
                "networkpolicies",
                "-A",
                "-l",
                "app.kubernetes.io/managed-by=imdsguard",
                "--field-selector",
                "metadata.name=imdsguard-deny-metadata",
                "-o",
                "name",
            ],
            None,
        );
        out.lines().count()
    };
    loop {
        let n = count();
        // Every new namespace plus `default`.
        if n > NAMESPACES {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{n} of {} namespaces protected after 60 s",
            NAMESPACES + 1
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let took = t0.elapsed();
    eprintln!("namespaces created in {created:?}; all protected after {took:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = ctl.metrics().writes_total();
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        ctl.metrics().writes_total(),
        writes,
        "a resync with nothing changed wrote"
    );
    eprintln!(
        "{}",
        ctl.metrics()
            .encode()
            .lines()
            .filter(|l| l.contains("reconciles_total") || l.contains("writes_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Each deny written once: a reconcile waits for the watch to show its own writes,
    // so the next one (woken by more new namespaces) does not write them again.
    let applies: u64 = ctl
        .metrics()
        .encode()
        .lines()
        .filter(|l| l.starts_with("imdsguard_controller_writes_total{verb=\"apply\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum();
    let desired = ctl.last_outcome().expect("reconciled").desired as u64;
    // The deny and its IPv6/SCTP companion in every namespace (the new ones, default,
    // kube-public, kube-node-lease; kube-system is excluded by default), and the allow.
    assert_eq!(desired, 2 * (NAMESPACES as u64 + 3) + 1);
    assert!(
        applies <= desired,
        "{applies} applies for {desired} generated objects"
    );
    ctl.shutdown().await;
}
