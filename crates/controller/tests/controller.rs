//! `imdsguard controller` against the real API server (a control plane of each test's
//! own: the controller owns every namespace and every MetadataAccessPolicy object).
//! No kubelet runs: the tests write pod status (phase) as the kubelet would.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use imdsguard_controller::{ControllerConfig, ControllerHandle, start};
use imdsguard_core::generate::OutputEngine;
use imdsguard_testkit::ControlPlane;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::Value;

const DENY: &str = "imdsguard-deny-metadata";
const LIMIT: Duration = Duration::from_secs(5);

async fn client(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("the kubeconfig reads");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("the kubeconfig is usable");
    Client::try_from(config).expect("a client")
}

async fn controller(cp: &ControlPlane, id: &str, exclude: &[&str]) -> ControllerHandle {
    let mut c = ControllerConfig::new(client(cp.kubeconfig()).await, id);
    c.engine = Some(OutputEngine::NetworkPolicy);
    c.exclude_namespaces = exclude.iter().map(|s| s.to_string()).collect();
    c.lease_namespace = "default".into();
    c.lease_duration = Duration::from_secs(3);
    c.lease_grace = Duration::from_secs(1);
    c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    c.resync = Duration::from_secs(2);
    c.debounce = Duration::from_millis(100);
    start(c).await.expect("the controller starts")
}

/// `kubectl get -o json`, or `None` when not found.
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

fn deny(cp: &ControlPlane, ns: &str) -> Option<Value> {
    get(cp, &["networkpolicy", "-n", ns, DENY])
}

fn running_pod(cp: &ControlPlane, ns: &str, name: &str, app: &str) {
    cp.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    app: {app}\nspec:\n  containers:\n  - name: c\n    image: registry.invalid/none:1\n"
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

fn map_yaml(name: &str, ns: &str, app: &str, path: &str) -> String {
    format!(
        "apiVersion: imdsguard.io/v1alpha1\nkind: MetadataAccessPolicy\nmetadata:\n  name: {name}\nspec:\n  rules:\n  - name: app\n    subjects:\n    - namespace: {ns}\n      podSelector:\n        matchLabels:\n          app: {app}\n    paths: [\"{path}\"]\n"
    )
}

fn condition<'a>(map: &'a Value, type_: &str) -> Option<&'a Value> {
    map.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("the admin listener answers");
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn managed_policies(cp: &ControlPlane) -> Vec<String> {
    let list = get(
        cp,
        &[
            "networkpolicies",
            "-A",
            "-l",
            "app.kubernetes.io/managed-by=imdsguard",
        ],
    )
    .expect("a list");
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{}/{}",
                i["metadata"]["namespace"].as_str().unwrap(),
                i["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs control plane"]
async fn keeps_the_policies_in_every_namespace_and_reports() {
    let cp = ControlPlane::dedicated("keeps_the_policies_in_every_namespace_and_reports");
    cp.install_imdsguard_crd();
    for ns in ["shop", "skipme", "taken"] {
        cp.kubectl_ok(&["create", "namespace", ns], None);
    }
    // A user's policy under the generated name: never touched, reported.
    cp.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: imdsguard-deny-metadata\n  namespace: taken\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n",
    );
    let user_before = deny(&cp, "taken").unwrap();
    running_pod(&cp, "shop", "allowed", "allowed");
    cp.apply(&map_yaml(
        "platform",
        "shop",
        "allowed",
        "/metadata/instance/compute",
    ));

    let ctl = controller(&cp, "only", &["skipme"]).await;
    eventually("leader", LIMIT, || ctl.is_leader().then_some(())).await;
    for ns in ["shop", "default"] {
        eventually(&format!("the deny in {ns}"), LIMIT, || deny(&cp, ns)).await;
    }
    let allow = eventually("the allow for platform/app in shop", LIMIT, || {
        get(
            &cp,
            &[
                "networkpolicies",
                "-n",
                "shop",
                "-l",
                "app.kubernetes.io/managed-by=imdsguard",
            ],
        )
        .filter(|l| {
            l["items"].as_array().unwrap().iter().any(|i| {
                i["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .starts_with("imdsguard-allow-metadata-")
            })
        })
    })
    .await;
    assert!(!allow["items"].as_array().unwrap().is_empty());
    // A namespace created later.
    cp.kubectl_ok(&["create", "namespace", "later"], None);
    eventually("the deny in a namespace created later", LIMIT, || {
        deny(&cp, "later")
    })
    .await;
    // Excluded: nothing there.
    assert!(deny(&cp, "skipme").is_none());
    // The user's object: unchanged.
    let user_after = deny(&cp, "taken").unwrap();
    assert_eq!(
        user_before["metadata"]["resourceVersion"],
        user_after["metadata"]["resourceVersion"]
    );
    assert!(user_after["metadata"]["labels"].is_null());

    // Status.
    let status = eventually("status Ready and Conflicting", LIMIT, || {
        let m = get(&cp, &["metadataaccesspolicy", "platform"])?;
        (condition(&m, "Ready")?["status"] == "True"
            && condition(&m, "Conflicting")?["status"] == "True")
            .then_some(m)
    })
    .await;
    assert_eq!(status["status"]["observedGeneration"], 1);
    assert_eq!(status["status"]["engine"], "networkpolicy");
    assert_eq!(status["status"]["rules"][0]["name"], "app");
    assert_eq!(status["status"]["rules"][0]["selectedPods"], 1);
    let generated = status["status"]["generated"].as_array().unwrap();
    assert!(
        generated
            .iter()
            .any(|g| g["namespace"] == "later" && g["name"] == DENY),
        "{generated:?}"
    );
    let msg = condition(&status, "Conflicting").unwrap()["message"]
        .as_str()
        .unwrap();
    assert!(
        msg.contains("taken/imdsguard-deny-metadata"),
        "the conflict names namespace/policy: {msg}"
    );
    // The conflict as an Event, readable through the API.
    eventually("a MetadataPolicyConflict Event", LIMIT, || {
        let ev = get(
            &cp,
            &[
                "events.events.k8s.io",
                "-A",
                "--field-selector",
                "reason=MetadataPolicyConflict",
            ],
        )?;
        let items = ev["items"].as_array()?.clone();
        (items
            .iter()
            .any(|e| e["regarding"]["kind"] == "MetadataAccessPolicy")
            && items.iter().any(|e| {
                e["regarding"]["kind"] == "Namespace" && e["regarding"]["name"] == "taken"
            }))
        .then_some(())
    })
    .await;
    let admin = ctl.admin_addr().unwrap();
    let metrics = http_get(admin, "/metrics");
    assert!(
        metrics.contains("imdsguard_controller_conflicts{kind=\"name-taken\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("imdsguard_controller_leader 1"),
        "{metrics}"
    );

    // Drift: one deleted, one edited; both repaired within 5 s.
    cp.kubectl_ok(&["delete", "networkpolicy", "-n", "shop", DENY], None);
    cp.kubectl_ok(
        &[
            "patch",
            "networkpolicy",
            "-n",
            "later",
            DENY,
            "--type=merge",
            "-p",
            r#"{"spec":{"egress":[{}]}}"#,
        ],
        None,
    );
    let t0 = Instant::now();
    eventually("the deleted deny restored", LIMIT, || deny(&cp, "shop")).await;
    eventually("the edited deny restored", LIMIT, || {
        let d = deny(&cp, "later")?;
        (d["spec"]["egress"].as_array()?.len() > 1).then_some(())
    })
    .await;
    assert!(t0.elapsed() < LIMIT);

    // A resync with nothing changed writes nothing (resync is 2 s here).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = ctl.metrics().writes_total();
    let reconciles = |m: &str| {
        m.lines()
            .filter(|l| l.starts_with("imdsguard_controller_reconciles_total"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
            .sum::<u64>()
    };
    let before = reconciles(&ctl.metrics().encode());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        reconciles(&ctl.metrics().encode()) > before,
        "resyncs ran meanwhile"
    );
    assert_eq!(
        ctl.metrics().writes_total(),
        writes,
        "a resync with nothing changed wrote: {}",
        ctl.metrics().encode()
    );

    // Invalid rules: Ready False InvalidRules, nothing loosened.
    cp.apply(&map_yaml("bad", "shop", "other", "/not/imds"));
    let bad = eventually("Ready False InvalidRules", LIMIT, || {
        let m = get(&cp, &["metadataaccesspolicy", "bad"])?;
        (condition(&m, "Ready")?["reason"] == "InvalidRules").then_some(m)
    })
    .await;
    assert_eq!(condition(&bad, "Ready").unwrap()["status"], "False");
    assert!(
        condition(&bad, "Ready").unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("/not/imds")
    );
    let names: Vec<String> = managed_policies(&cp);
    assert!(
        !names.iter().any(|n| n.contains("bad")),
        "a refused object adds no allow: {names:?}"
    );

    // A user policy re-opening IMDS for a pod no rule expects: reopens-target.
    running_pod(&cp, "shop", "other", "other");
    cp.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: open-all\n  namespace: shop\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{}]\n",
    );
    let m = eventually("Conflicting names the re-opening policy", LIMIT, || {
        let m = get(&cp, &["metadataaccesspolicy", "platform"])?;
        let msg = condition(&m, "Conflicting")?["message"]
            .as_str()?
            .to_string();
        msg.contains("shop/open-all").then_some(msg)
    })
    .await;
    assert!(m.contains("shop/other"), "{m}");
    let metrics = http_get(admin, "/metrics");
    assert!(
        metrics.lines().any(|l| l
            .starts_with("imdsguard_controller_conflicts{kind=\"reopens-target\"}")
            && !l.ends_with(" 0")),
        "{metrics}"
    );

    // An expected workload still blocked (a user's egress isolation, and a subject
    // NetworkPolicy cannot express): expected-blocked, on the object whose rule expects it.
    cp.kubectl_ok(&["create", "namespace", "locked"], None);
    running_pod(&cp, "locked", "svc", "svc");
    cp.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: lockdown\n  namespace: locked\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n",
    );
    // By service account: NetworkPolicy cannot select by it, so no allow is written
    // and the user's isolation decides.
    cp.apply(
        "apiVersion: imdsguard.io/v1alpha1\nkind: MetadataAccessPolicy\nmetadata:\n  name: locked\nspec:\n  rules:\n  - name: app\n    subjects:\n    - namespace: locked\n      serviceAccount: default\n    paths: [\"/metadata/instance/compute\"]\n",
    );
    let m = eventually("Conflicting names the blocked workload", LIMIT, || {
        let m = get(&cp, &["metadataaccesspolicy", "locked"])?;
        let msg = condition(&m, "Conflicting")?["message"]
            .as_str()?
            .to_string();
        msg.contains("locked/svc").then_some(msg)
    })
    .await;
    assert!(
        m.contains("locked/app") && m.contains("locked/lockdown"),
        "{m}"
    );
    let metrics = http_get(admin, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("imdsguard_controller_conflicts{kind=\"expected-blocked\"} 1")),
        "{metrics}"
    );

    // Removal: the last MetadataAccessPolicy gone, everything generated goes.
    cp.kubectl_ok(
        &[
            "delete",
            "metadataaccesspolicy",
            "platform",
            "bad",
            "locked",
        ],
        None,
    );
    eventually("every generated policy removed", LIMIT, || {
        managed_policies(&cp).is_empty().then_some(())
    })
    .await;
    assert!(deny(&cp, "taken").is_some(), "the user's object stays");
    assert!(get(&cp, &["networkpolicy", "-n", "shop", "open-all"]).is_some());
    ctl.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs control plane"]
async fn one_replica_acts_and_the_other_takes_over() {
    let cp = ControlPlane::dedicated("one_replica_acts_and_the_other_takes_over");
    cp.install_imdsguard_crd();
    cp.kubectl_ok(&["create", "namespace", "shop"], None);
    cp.apply(&map_yaml(
        "platform",
        "shop",
        "allowed",
        "/metadata/instance/compute",
    ));
    let a = controller(&cp, "replica-a", &[]).await;
    // The other replica decides its engine as `audit` does: no Calico or Cilium in the
    // cluster, so NetworkPolicy.
    let mut config = ControllerConfig::new(client(cp.kubeconfig()).await, "replica-b");
    config.lease_namespace = "default".into();
    config.lease_duration = Duration::from_secs(3);
    config.lease_grace = Duration::from_secs(1);
    config.debounce = Duration::from_millis(100);
    assert_eq!(config.engine, None);
    let b = start(config).await.expect("the controller starts");
    assert_eq!(b.engine(), OutputEngine::NetworkPolicy);
    eventually("one leader", Duration::from_secs(10), || {
        (a.is_leader() || b.is_leader()).then_some(())
    })
    .await;
    assert!(!(a.is_leader() && b.is_leader()), "two leaders");
    eventually("the deny in shop", LIMIT, || deny(&cp, "shop")).await;
    let (first, second) = if a.is_leader() { (a, b) } else { (b, a) };
    // The standby writes nothing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(second.metrics().writes_total(), 0);
    assert!(first.metrics().writes_total() > 0);
    let lease = get(&cp, &["lease", "-n", "default", "imdsguard-controller"]).unwrap();
    let holder = lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap()
        .to_string();
    // Stop the leader: it releases the Lease; the other takes over and repairs drift.
    drop(first);
    eventually("the other replica leads", Duration::from_secs(10), || {
        second.is_leader().then_some(())
    })
    .await;
    let lease = get(&cp, &["lease", "-n", "default", "imdsguard-controller"]).unwrap();
    assert_ne!(lease["spec"]["holderIdentity"].as_str().unwrap(), holder);
    cp.kubectl_ok(&["delete", "networkpolicy", "-n", "shop", DENY], None);
    eventually("the new leader repairs the drift", LIMIT, || {
        deny(&cp, "shop")
    })
    .await;
    assert!(second.metrics().writes_total() > 0);
    second.shutdown().await;
}
